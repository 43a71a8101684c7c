//! The tar a staging container receives: `app/` (the validated package, repacked), `env/`,
//! `lifecycle/stage.sh` and an empty `out/`, plus `local-buildpacks/NAME` for each buildpack
//! pushed with the app.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::package::{self, VCAP_UID};
use crate::error::Result;

pub(super) const LIFECYCLE: &str = include_str!("../../../lifecycle/stage.sh");

/// The tar a staging container receives: `app/` (the validated package), `env/` and the lifecycle.
pub(super) fn build_input_tar(
    package: &Path,
    dest: &Path,
    env: &BTreeMap<String, String>,
    uploaded: &[(String, PathBuf)],
    limits: package::Limits,
) -> Result<()> {
    let mut builder = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(dest)?));
    // The repacked app goes first, into its own tar; then it is concatenated with the rest. Each
    // buildpack pushed with the app goes the same way, to local-buildpacks/NAME.
    let mut parts = vec![(package.to_path_buf(), "app".to_string())];
    for (name, pkg) in uploaded {
        parts.push((pkg.clone(), format!("local-buildpacks/{name}")));
    }
    for (i, (pkg_path, prefix)) in parts.iter().enumerate() {
        let part_tar = dest.with_extension(format!("part{i}.tar"));
        {
            let f = std::io::BufWriter::new(std::fs::File::create(&part_tar)?);
            let pkg = std::io::BufReader::new(std::fs::File::open(pkg_path)?);
            package::repack(pkg, f, prefix, limits)?;
        }
        if i == 1 {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_uid(VCAP_UID);
            h.set_gid(VCAP_UID);
            h.set_size(0);
            builder.append_data(&mut h, "local-buildpacks", std::io::empty())?;
        }
        append_tar(&mut builder, &part_tar)?;
        std::fs::remove_file(&part_tar)?;
    }
    fn append_tar<W: Write>(builder: &mut tar::Builder<W>, part: &Path) -> Result<()> {
        let mut a = tar::Archive::new(std::io::BufReader::new(std::fs::File::open(part)?));
        for entry in a.entries()? {
            let mut entry = entry?;
            let mut h = entry.header().clone();
            let path = entry.path()?.into_owned();
            if h.entry_type() == tar::EntryType::Symlink {
                let target = entry
                    .link_name()?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                builder.append_link(&mut h, &path, &target)?;
            } else {
                builder.append_data(&mut h, &path, &mut entry)?;
            }
        }
        Ok(())
    }
    let dir = |name: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_uid(VCAP_UID);
        h.set_gid(VCAP_UID);
        h.set_size(0);
        (h, name.to_string())
    };
    let file = |data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_uid(VCAP_UID);
        h.set_gid(VCAP_UID);
        h.set_size(data.len() as u64);
        h
    };
    for d in ["env", "lifecycle", "out"] {
        let (mut h, n) = dir(d);
        builder.append_data(&mut h, n, std::io::empty())?;
    }
    for (k, v) in env {
        let mut h = file(v.as_bytes(), 0o600);
        builder.append_data(&mut h, format!("env/{k}"), v.as_bytes())?;
    }
    let mut h = file(LIFECYCLE.as_bytes(), 0o755);
    builder.append_data(&mut h, "lifecycle/stage.sh", LIFECYCLE.as_bytes())?;
    builder.into_inner()?.flush()?;
    Ok(())
}

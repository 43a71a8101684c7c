//! `pier create-buildpack NAME PATH [--position N]`, and the packing and upload of a buildpack
//! folder that `update-buildpack` and `push -b ./path` share.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pier_api::buildpacks::check_buildpack_name;
use pier_api::CreateBuildpackRequest;

use crate::archive;
use crate::args::CreateBuildpackArgs;
use crate::client::Client;
use crate::output::Failure;

/// A buildpack ready to upload: a packed folder, or a .tgz as it is.
pub struct LocalBuildpack {
    pub path: PathBuf,
    file: std::fs::File,
    size: u64,
}

/// Checks `path` is a buildpack (a folder with an executable `bin/detect` and a build script, or a
/// `.tgz`/`.tar.gz` file) and packs it. Nothing is sent.
pub fn prepare(path: &Path) -> Result<LocalBuildpack> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Failure::new(format!(
            "the buildpack {} cannot be read: {e}",
            path.display()
        ))
        .hint("give a folder with bin/detect, or a .tgz of one")
    })?;
    if meta.is_file() {
        let name = path.to_string_lossy();
        if !(name.ends_with(".tgz") || name.ends_with(".tar.gz")) {
            return Err(Failure::new(format!(
                "{} is a file but not a .tgz or .tar.gz",
                path.display()
            ))
            .hint("give the buildpack's folder, or a gzipped tar of it (zip is not supported)")
            .into());
        }
        let file = std::fs::File::open(path)?;
        return Ok(LocalBuildpack {
            path: path.to_path_buf(),
            file,
            size: meta.len(),
        });
    }
    use std::os::unix::fs::PermissionsExt;
    let detect = path.join("bin/detect");
    let exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if !exec(&detect) {
        return Err(Failure::new(format!(
            "{} is not a buildpack: it has no executable bin/detect",
            path.display()
        ))
        .hint("a buildpack folder has bin/detect and bin/compile (or bin/supply, bin/finalize), chmod +x")
        .into());
    }
    if !["compile", "supply", "finalize"]
        .iter()
        .any(|s| exec(&path.join("bin").join(s)))
    {
        return Err(Failure::new(format!(
            "{} is not a buildpack: it has none of bin/compile, bin/supply or bin/finalize (executable)",
            path.display()
        ))
        .into());
    }
    let packed = archive::pack(path).with_context(|| format!("cannot pack {}", path.display()))?;
    Ok(LocalBuildpack {
        path: path.to_path_buf(),
        file: packed.file,
        size: packed.size,
    })
}

/// Uploads a prepared buildpack as a package; returns its sha256.
pub async fn upload(client: &Client, bp: LocalBuildpack) -> Result<String> {
    let file = tokio::fs::File::from_std(bp.file);
    let body = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
    let resp = client
        .upload_package(body, bp.size)
        .await
        .with_context(|| format!("uploading the buildpack {}", bp.path.display()))?;
    Ok(resp.sha256)
}

/// A buildpack name from a folder's name: lowercased, other characters as '-'.
pub fn name_from_path(path: &Path) -> String {
    // canonicalize so `.` and `..` name the folder they point at.
    let raw = path
        .canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "buildpack".into());
    let raw = raw
        .strip_suffix(".tar.gz")
        .or_else(|| raw.strip_suffix(".tgz"))
        .unwrap_or(&raw);
    let mut name: String = raw
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_start_matches(['-', '_', '.']).to_string();
    name.truncate(pier_api::buildpacks::MAX_BUILDPACK_NAME);
    if name.is_empty() {
        "buildpack".into()
    } else {
        name
    }
}

pub async fn run(args: CreateBuildpackArgs) -> Result<()> {
    check_buildpack_name(&args.name).map_err(Failure::new)?;
    if args.position == Some(0) {
        return Err(Failure::new("--position must be 1 or more (1 is tried first)").into());
    }
    let bp = prepare(&args.path)?;
    let client = super::connect()?;
    let sha = upload(&client, bp).await?;
    let created = client
        .create_buildpack(&CreateBuildpackRequest {
            name: args.name.clone(),
            package: sha,
            position: args.position,
            enabled: Some(!args.disable),
        })
        .await?;
    println!(
        "Created buildpack {} at position {}{} (scripts: {}).",
        created.name,
        created.position,
        if created.enabled { "" } else { ", disabled" },
        created.scripts.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_paths() {
        assert_eq!(name_from_path(Path::new("/x/My Buildpack")), "my-buildpack");
        assert_eq!(name_from_path(Path::new("/x/bp.tgz")), "bp");
    }

    #[test]
    fn refuses_folders_that_are_not_buildpacks() {
        let dir = tempfile::tempdir().unwrap();
        assert!(prepare(dir.path()).is_err());
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/detect"), "#!/bin/sh\n").unwrap();
        let err = prepare(dir.path()).err().unwrap().to_string();
        assert!(err.contains("bin/detect"), "not executable: {err}");
        assert!(prepare(&dir.path().join("missing")).is_err());
    }
}

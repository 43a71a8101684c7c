//! The platform image: Pier's own binaries in an image, to run the controller (and routers) as
//! containers, e.g. as a Docker Swarm service (docs/swarm.md).
//!
//! Its base, [`PLATFORM_BASE_IMAGE`], is built once like the stack (`stack/build-rootfs.sh`, from
//! the Debian mirror in the host's apt sources) with `iptables`, which the controller runs to keep
//! instances off the host (`--instance-host-access block`). `pier-controller build-platform-image`
//! then adds one layer holding the running `pier-controller` and the `pier-router` beside it, under
//! a tag made from their contents ([`image_name`]), so a rebuilt binary is a new image and the same
//! binaries are the same image.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use super::{ContainerRuntime, Labels, LayerImageSpec};

/// The base: Debian bookworm, the essentials and iptables. Bump the suffix when it changes.
pub const PLATFORM_BASE_IMAGE: &str = "pier-platform-base:bookworm-v1";
/// The repository of the images with binaries in them.
pub const PLATFORM_REPO: &str = "pier-platform";
/// Where the binaries are in the image (on its `PATH`).
pub const BIN_DIR: &str = "/usr/local/bin";
/// The label every platform image carries (`pier.image=platform`).
pub const IMAGE_LABEL: (&str, &str) = ("pier.image", "platform");

/// The binaries the image carries: this `pier-controller` and the `pier-router` built beside it.
pub fn binaries() -> anyhow::Result<Vec<PathBuf>> {
    let controller = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find the running pier-controller: {e}"))?;
    let router = controller.with_file_name("pier-router");
    if !router.is_file() {
        anyhow::bail!(
            "{} is missing: the platform image carries the pier-router built with this \
             pier-controller (cargo build --bins builds both)",
            router.display()
        );
    }
    Ok(vec![controller, router])
}

/// `pier-platform:<first 12 hex digits of the SHA-256 of the binaries>`.
pub fn image_name(binaries: &[PathBuf]) -> anyhow::Result<String> {
    let mut hash = sha2::Sha256::new();
    for b in binaries {
        let mut f = std::fs::File::open(b)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", b.display()))?;
        std::io::copy(&mut f, &mut hash)?;
        hash.update(file_name(b)?.as_bytes());
    }
    Ok(format!(
        "{PLATFORM_REPO}:{}",
        &hex::encode(hash.finalize())[..12]
    ))
}

fn file_name(path: &Path) -> anyhow::Result<&str> {
    path.file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("{} has no file name", path.display()))
}

/// Writes the layer (`usr/local/bin/<binary>` for each, root-owned, mode 0755) as an
/// uncompressed tar at `out`; returns its diff id (`sha256:<hex>` of the tar).
fn write_layer(binaries: &[PathBuf], out: &Path) -> anyhow::Result<String> {
    let mut tar = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(out)?));
    let mut dir = String::new();
    for part in BIN_DIR.trim_start_matches('/').split('/') {
        dir.push_str(part);
        dir.push('/');
        let mut h = header(tar::EntryType::Directory, 0);
        tar.append_data(&mut h, &dir, std::io::empty())?;
    }
    for b in binaries {
        let mut f = std::fs::File::open(b)?;
        let mut h = header(tar::EntryType::Regular, f.metadata()?.len());
        tar.append_data(&mut h, format!("{dir}{}", file_name(b)?), &mut f)?;
    }
    tar.into_inner()?.flush()?;
    let mut hash = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(out)?, &mut hash)?;
    Ok(format!("sha256:{}", hex::encode(hash.finalize())))
}

/// A root-owned entry, mode 0755, time 0 (the same binaries make the same layer).
fn header(kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

/// Makes the platform image of `binaries` on top of [`PLATFORM_BASE_IMAGE`] (built first when it
/// is missing: root, debootstrap, a few minutes) unless it is there already and `if_missing`;
/// returns its name.
pub async fn build(
    runtime: &dyn ContainerRuntime,
    binaries: &[PathBuf],
    if_missing: bool,
) -> anyhow::Result<String> {
    let name = image_name(binaries)?;
    if if_missing && runtime.image_exists(&name).await? {
        eprintln!("-----> The platform image {name} is already there");
        return Ok(name);
    }
    if !runtime.image_exists(PLATFORM_BASE_IMAGE).await? {
        super::stack::build_platform_base(runtime, PLATFORM_BASE_IMAGE).await?;
    }
    let work = tempfile::Builder::new()
        .prefix("pier-platform-")
        .tempdir()?;
    let layer = work.path().join("layer.tar");
    let (b, l) = (binaries.to_vec(), layer.clone());
    let diff_id = tokio::task::spawn_blocking(move || write_layer(&b, &l)).await??;
    let (repo, tag) = name.split_once(':').unwrap_or((PLATFORM_REPO, "latest"));
    runtime
        .add_layer(&LayerImageSpec {
            base: PLATFORM_BASE_IMAGE.into(),
            layer,
            diff_id,
            repo: repo.into(),
            tag: tag.into(),
            labels: Labels::from_map([(IMAGE_LABEL.0.to_string(), IMAGE_LABEL.1.to_string())]),
            user: "root".into(),
            working_dir: "/".into(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("making the platform image {name} failed: {e}"))?;
    eprintln!("-----> The platform image {name} is ready");
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bins(dir: &Path, a: &[u8], b: &[u8]) -> Vec<PathBuf> {
        let (pa, pb) = (dir.join("pier-controller"), dir.join("pier-router"));
        std::fs::write(&pa, a).unwrap();
        std::fs::write(&pb, b).unwrap();
        vec![pa, pb]
    }

    #[test]
    fn the_name_follows_the_binaries_contents() {
        let d = tempfile::tempdir().unwrap();
        let one = image_name(&bins(d.path(), b"controller 1", b"router 1")).unwrap();
        assert!(one.starts_with("pier-platform:"), "{one}");
        assert_eq!(one.len(), "pier-platform:".len() + 12);
        let again = image_name(&bins(d.path(), b"controller 1", b"router 1")).unwrap();
        assert_eq!(one, again, "the same binaries are the same image");
        let other = image_name(&bins(d.path(), b"controller 1", b"router 2")).unwrap();
        assert_ne!(one, other, "a rebuilt router is another image");
    }

    #[test]
    fn the_layer_holds_the_binaries_executable_under_usr_local_bin() {
        let d = tempfile::tempdir().unwrap();
        let b = bins(d.path(), b"#!/bin/sh\necho c\n", b"r");
        let out = d.path().join("layer.tar");
        let diff_id = write_layer(&b, &out).unwrap();
        let again = d.path().join("again.tar");
        assert_eq!(
            write_layer(&b, &again).unwrap(),
            diff_id,
            "the same layer twice"
        );
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(
            diff_id,
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)))
        );
        let mut archive = tar::Archive::new(&bytes[..]);
        let entries: Vec<(String, u32, u64, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("usr/".to_string(), 0o755, 0, 0),
                ("usr/local/".to_string(), 0o755, 0, 0),
                ("usr/local/bin/".to_string(), 0o755, 0, 0),
                ("usr/local/bin/pier-controller".to_string(), 0o755, 0, 0),
                ("usr/local/bin/pier-router".to_string(), 0o755, 0, 0),
            ]
        );
    }
}

//! Changing the installed buildpacks: create, update (move, enable/disable, new files), delete.
//!
//! Everything is checked before anything changes: a refused request leaves the registry and the
//! buildpack folders as they were. New files are unpacked beside the live folder and swapped in
//! with a rename, so a staging that is reading the old folder never sees half a buildpack.

use std::path::{Path as FsPath, PathBuf};

use pier_api::buildpacks::check_buildpack_name;
use pier_api::{BuildpackResponse, CreateBuildpackRequest, ErrorCode, UpdateBuildpackRequest};
use time::OffsetDateTime;

use super::buildpacks::{fix_modes, BuildpackRecord, Buildpacks, Registry};
use super::package::Limits;
use crate::error::{Error, Result};
use crate::store::BlobStore;

const SCRIPTS: [&str; 5] = ["detect", "supply", "finalize", "compile", "release"];

fn scripts_of(dir: &FsPath) -> Vec<String> {
    SCRIPTS
        .iter()
        .filter(|s| dir.join("bin").join(s).is_file())
        .map(|s| s.to_string())
        .collect()
}

fn response(reg: &Registry, i: usize) -> BuildpackResponse {
    let b = &reg.list[i];
    BuildpackResponse {
        name: b.name.clone(),
        position: i as u32 + 1,
        enabled: b.enabled,
        builtin: b.builtin,
        sha256: b.sha256.clone(),
        scripts: scripts_of(&reg.dir.join(&b.name)),
        updated_at: b.updated_at,
    }
}

fn find(reg: &Registry, name: &str) -> Result<usize> {
    reg.list.iter().position(|b| b.name == name).ok_or_else(|| {
        Error::api(
            ErrorCode::NotFound,
            format!("buildpack {name} not found; pier buildpacks lists the installed ones"),
        )
    })
}

fn check_position(p: Option<u32>) -> Result<()> {
    if p == Some(0) {
        return Err(Error::bad_request(
            "position must be 1 or more (1 is tried first)",
        ));
    }
    Ok(())
}

impl Buildpacks {
    /// Every installed buildpack in position order.
    pub fn list(&self) -> Vec<BuildpackResponse> {
        self.with(|r| Ok((0..r.list.len()).map(|i| response(r, i)).collect()))
            .unwrap_or_default()
    }

    /// Installs the uploaded package `req.package` as buildpack `req.name`.
    pub async fn create(
        &self,
        req: &CreateBuildpackRequest,
        blobs: &BlobStore,
        limits: Limits,
    ) -> Result<BuildpackResponse> {
        check_buildpack_name(&req.name).map_err(|e| Error::api(ErrorCode::InvalidName, e))?;
        check_position(req.position)?;
        let (dir, exists) = self.with(|r| Ok((r.dir.clone(), r.get(&req.name).is_some())))?;
        if exists {
            return Err(Error::api(
                ErrorCode::Conflict,
                format!(
                    "buildpack {} already exists; change it with pier update-buildpack {}",
                    req.name, req.name
                ),
            ));
        }
        let staged = unpack_package(blobs, limits, &req.package, &dir).await?;
        let rec = BuildpackRecord {
            name: req.name.clone(),
            enabled: req.enabled.unwrap_or(true),
            builtin: false,
            sha256: Some(req.package.clone()),
            updated_at: OffsetDateTime::now_utc(),
        };
        let resp = self.with(|r| {
            // Checked again under the lock: two creates of one name race here, not on the folder.
            if r.get(&req.name).is_some() {
                return Err(Error::api(
                    ErrorCode::Conflict,
                    format!("buildpack {} already exists", req.name),
                ));
            }
            swap_in(&staged, &r.dir.join(&req.name))?;
            r.place(rec, req.position);
            r.save()?;
            Ok(response(r, find(r, &req.name)?))
        });
        let _ = std::fs::remove_dir_all(staged.parent().unwrap_or(&staged));
        let resp = resp?;
        tracing::info!(buildpack = %resp.name, position = resp.position, "buildpack created");
        Ok(resp)
    }

    /// Moves, enables/disables, or replaces the files of an admin buildpack.
    pub async fn update(
        &self,
        name: &str,
        req: &UpdateBuildpackRequest,
        blobs: &BlobStore,
        limits: Limits,
    ) -> Result<BuildpackResponse> {
        check_position(req.position)?;
        let (dir, builtin) = self.with(|r| {
            let i = find(r, name)?;
            Ok((r.dir.clone(), r.list[i].builtin))
        })?;
        if req.position.is_none() && req.package.is_none() && req.enabled.is_none() {
            return Err(Error::bad_request(
                "nothing to change: give a position, a package (new files) or enabled",
            ));
        }
        if builtin && req.package.is_some() {
            return Err(Error::bad_request(format!(
                "{name} is a built-in buildpack: its files ship with Pier and can't be replaced; \
                 create your own with pier create-buildpack and give it an earlier position"
            )));
        }
        let staged = match &req.package {
            Some(sha) => Some(unpack_package(blobs, limits, sha, &dir).await?),
            None => None,
        };
        let resp = self.with(|r| {
            let i = find(r, name)?;
            let mut rec = r.list[i].clone();
            if let Some(staged) = &staged {
                swap_in(staged, &r.dir.join(name))?;
                rec.sha256 = req.package.clone();
            }
            if let Some(e) = req.enabled {
                rec.enabled = e;
            }
            rec.updated_at = OffsetDateTime::now_utc();
            r.place(rec, req.position);
            r.save()?;
            Ok(response(r, find(r, name)?))
        });
        if let Some(staged) = &staged {
            let _ = std::fs::remove_dir_all(staged.parent().unwrap_or(staged));
        }
        resp
    }

    /// Removes an admin buildpack.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.with(|r| {
            let i = find(r, name)?;
            if r.list[i].builtin {
                return Err(Error::bad_request(format!(
                    "{name} is a built-in buildpack and can't be deleted; disable it with \
                     pier update-buildpack {name} --disable"
                )));
            }
            r.list.remove(i);
            r.save()?;
            // Renamed away first, so a staging starting now doesn't see a half-deleted folder.
            let live = r.dir.join(name);
            let gone = r
                .dir
                .join(format!(".deleted-{name}-{}", uuid::Uuid::new_v4().simple()));
            if std::fs::rename(&live, &gone).is_ok() {
                let _ = std::fs::remove_dir_all(&gone);
            }
            Ok(())
        })?;
        tracing::info!(buildpack = %name, "buildpack deleted");
        Ok(())
    }
}

/// Unpacks a package blob into a fresh folder beside `dir` (same filesystem, for the rename) and
/// returns the buildpack's root in it: the package's root, or its only folder (a release tarball).
async fn unpack_package(
    blobs: &BlobStore,
    limits: Limits,
    sha: &str,
    dir: &FsPath,
) -> Result<PathBuf> {
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::bad_request(format!(
            "package {sha:?} is not a sha256; upload the buildpack with POST /v1/packages first"
        )));
    }
    if !blobs.exists(sha) {
        return Err(Error::api(
            ErrorCode::NotFound,
            format!("package {sha} not found; upload it again"),
        ));
    }
    let pkg = blobs.path(sha)?;
    let max = limits;
    let work = dir.join(format!(".new-{}", uuid::Uuid::new_v4().simple()));
    let w = work.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<PathBuf> {
        std::fs::create_dir_all(&w)?;
        let clean = w.join("clean.tar");
        {
            let out = std::io::BufWriter::new(std::fs::File::create(&clean)?);
            let gz = std::io::BufReader::new(std::fs::File::open(&pkg)?);
            super::package::repack(gz, out, "root", max)?;
        }
        tar::Archive::new(std::io::BufReader::new(std::fs::File::open(&clean)?)).unpack(&w)?;
        std::fs::remove_file(&clean)?;
        let mut root = w.join("root");
        if !root.join("bin").is_dir() {
            let subdirs: Vec<PathBuf> = std::fs::read_dir(&root)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            if let [only] = subdirs.as_slice() {
                if only.join("bin").is_dir() {
                    root = only.clone();
                }
            }
        }
        let scripts = scripts_of(&root);
        let builds = ["supply", "finalize", "compile"]
            .iter()
            .any(|s| scripts.iter().any(|x| x == s));
        if !root.join("bin").is_dir() || !scripts.iter().any(|s| s == "detect") || !builds {
            return Err(Error::api(
                ErrorCode::InvalidPackage,
                format!(
                    "this is not a buildpack: it needs bin/detect and bin/compile (or bin/supply \
                     and/or bin/finalize) at its root; found {}",
                    if scripts.is_empty() {
                        "no bin/ scripts".to_string()
                    } else {
                        format!("bin/{}", scripts.join(", bin/"))
                    }
                ),
            ));
        }
        fix_modes(&root)?;
        Ok(root)
    })
    .await
    .map_err(|e| Error::Other(format!("unpacking the buildpack failed: {e}")))?;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

/// Puts `staged` at `live`, replacing what was there with renames only.
fn swap_in(staged: &FsPath, live: &FsPath) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(staged, std::fs::Permissions::from_mode(0o755))?;
    if live.exists() {
        let name = live.file_name().and_then(|n| n.to_str()).unwrap_or("bp");
        let old = live.with_file_name(format!(".old-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::rename(live, &old)?;
        std::fs::rename(staged, live)?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(staged, live)?;
    }
    Ok(())
}

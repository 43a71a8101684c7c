//! The installed buildpacks: the built-ins (embedded in the binary, written to
//! `DATA_DIR/buildpacks/NAME` at start) and admin-created ones side by side, mounted read-only into
//! staging. Their order, positions and enabled flags are the [`Registry`] in
//! `DATA_DIR/buildpacks.json`, owned by [`Buildpacks`] (one per controller, in its state: no
//! process-wide global).
//!
//! An app with no buildpacks named is detected over the enabled ones in position order; named
//! ones (`-b`) run without detection, every one but the last supplying. Buildpacks pushed with the
//! app (`-b ./path`, `NAME@sha256:HEX`) are package blobs, repacked into the staging tar under
//! `/tmp/local-buildpacks/NAME`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use include_dir::{include_dir, Dir};
use pier_api::ErrorCode;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::store::BlobStore;

static BUILTIN_BUILDPACKS: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../buildpacks");

/// Built-in buildpacks in their default detection order (Cloud Foundry's relative order; `binary`
/// never detects and must be named).
pub const BUILTIN_ORDER: &[&str] = &["staticfile", "java", "nodejs", "python", "binary"];

/// One installed buildpack, in [`Registry`] order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildpackRecord {
    pub name: String,
    pub enabled: bool,
    pub builtin: bool,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The installed buildpacks in position order, saved as `DATA_DIR/buildpacks.json`.
#[derive(Debug, Clone)]
pub struct Registry {
    pub file: PathBuf,
    pub dir: PathBuf,
    pub list: Vec<BuildpackRecord>,
}

impl Registry {
    /// Writes the list atomically (temp file + rename).
    pub fn save(&self) -> Result<()> {
        let tmp = self.file.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&self.list)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.file)?;
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&BuildpackRecord> {
        self.list.iter().find(|b| b.name == name)
    }

    /// Moves (or inserts) `rec` to the 1-based `position`; past the end means last.
    pub fn place(&mut self, rec: BuildpackRecord, position: Option<u32>) {
        let old = self.list.iter().position(|b| b.name == rec.name);
        if let Some(i) = old {
            self.list.remove(i);
        }
        let at = match (position, old) {
            (Some(p), _) => (p.max(1) as usize - 1).min(self.list.len()),
            (None, Some(i)) => i.min(self.list.len()),
            (None, None) => self.list.len(),
        };
        self.list.insert(at, rec);
    }

    /// Names detection tries when the app names none: the enabled ones, in position order.
    pub fn detect_order(&self) -> Vec<String> {
        self.list
            .iter()
            .filter(|b| b.enabled)
            .map(|b| b.name.clone())
            .collect()
    }
}

/// Writes the built-in buildpacks into `DATA_DIR/buildpacks`, where staging mounts them read-only,
/// and loads the buildpack registry (adding built-ins it doesn't list yet, dropping admin
/// buildpacks whose folder is gone).
fn install_buildpacks(data_dir: &Path) -> Result<Registry> {
    let dir = write_builtins(data_dir)?;
    // Leftovers of an update or delete that was cut short.
    for e in std::fs::read_dir(&dir)?.flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let file = data_dir.join("buildpacks.json");
    let mut list: Vec<BuildpackRecord> = match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    list.retain(|b| {
        if b.builtin {
            BUILTIN_ORDER.contains(&b.name.as_str())
        } else {
            dir.join(&b.name).join("bin").is_dir()
        }
    });
    for name in BUILTIN_ORDER {
        if !list.iter().any(|b| b.name == *name) {
            list.push(BuildpackRecord {
                name: name.to_string(),
                enabled: true,
                builtin: true,
                sha256: None,
                updated_at: OffsetDateTime::now_utc(),
            });
        }
    }
    let reg = Registry { file, dir, list };
    reg.save()?;
    Ok(reg)
}

/// Makes a buildpack folder readable by the staging user: folders and programs 0755 (everything
/// under `bin/`, and files that had an execute bit), other files 0644.
pub fn fix_modes(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.is_dir() {
            fix_modes(&path)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        } else {
            let in_bin = path
                .parent()
                .and_then(|d| d.file_name())
                .is_some_and(|n| n == "bin");
            let exec = in_bin || meta.permissions().mode() & 0o111 != 0;
            let mode = if exec { 0o755 } else { 0o644 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

fn write_builtins(data_dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = data_dir.join("buildpacks");
    for name in BUILTIN_ORDER {
        let src = BUILTIN_BUILDPACKS
            .get_dir(name)
            .ok_or_else(|| Error::Other(format!("built-in buildpack {name} is not embedded")))?;
        let dest = dir.join(name);
        if dest.exists() {
            std::fs::remove_dir_all(&dest)?;
        }
        write_dir(src, &dir)?;
        // Executable bits are not embedded: everything under a bin/ folder is a program.
        fix_modes(&dest)?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

fn write_dir(d: &Dir<'_>, root: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(root.join(d.path()))?;
    for f in d.files() {
        std::fs::write(root.join(f.path()), f.contents())?;
    }
    for sub in d.dirs() {
        write_dir(sub, root)?;
    }
    Ok(())
}

/// What a staging runs: `PIER_BUILDPACKS` entries, whether the user named them, and the uploaded
/// buildpacks to put in the staging tar (name, package sha256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub order: Vec<String>,
    pub explicit: bool,
    pub uploaded: Vec<(String, String)>,
}

/// The registry, shared by staging and the buildpack endpoints.
pub struct Buildpacks {
    registry: Mutex<Registry>,
}

impl Buildpacks {
    /// Writes the built-ins into `DATA_DIR/buildpacks` and loads the registry.
    pub fn install(data_dir: &Path) -> Result<Buildpacks> {
        Ok(Buildpacks {
            registry: Mutex::new(install_buildpacks(data_dir)?),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the registry, under its lock (changes are saved by `f`).
    pub fn with<T>(&self, f: impl FnOnce(&mut Registry) -> Result<T>) -> Result<T> {
        f(&mut self.lock())
    }

    /// Where the buildpack folders are (mounted read-only into staging).
    pub fn dir(&self) -> PathBuf {
        self.lock().dir.clone()
    }

    /// The registry file's bytes: part of what a droplet is made from.
    pub fn fingerprint(&self) -> Vec<u8> {
        std::fs::read(&self.lock().file).unwrap_or_default()
    }

    /// Checks buildpack names a user asked for against those installed. Buildpacks uploaded with the
    /// app (`NAME@sha256:HEX`) only need the right form here; staging finds their package.
    pub fn check(&self, names: &[String]) -> Result<()> {
        let installed: Vec<String> = self.lock().list.iter().map(|b| b.name.clone()).collect();
        let mut seen = std::collections::BTreeSet::new();
        for n in names {
            let name = match pier_api::buildpacks::parse_uploaded_buildpack(n) {
                Some((name, _)) => name,
                None if n.contains('@') || n.contains('/') => {
                    return Err(Error::bad_request(format!(
                    "buildpack {n:?} is neither an installed buildpack's name nor NAME@sha256:HEX \
                     (a folder pushed with -b ./path); URLs are not supported, staging is offline"
                )))
                }
                None if !installed.contains(n) => {
                    return Err(Error::bad_request(format!(
                        "unknown buildpack {n:?}; installed: {} (pier buildpacks lists them)",
                        installed.join(", ")
                    )))
                }
                None => n.as_str(),
            };
            if !seen.insert(name) {
                return Err(Error::bad_request(format!(
                    "buildpack {name:?} is named twice; each buildpack can run once"
                )));
            }
        }
        Ok(())
    }

    /// Resolves an app's buildpack list against the registry and the blob store.
    pub fn resolve(&self, app_buildpacks: &[String], blobs: &BlobStore) -> Result<Resolved> {
        if app_buildpacks.is_empty() {
            let order = self.lock().detect_order();
            if order.is_empty() {
                return Err(Error::api(
                    ErrorCode::NoBuildpack,
                    "every buildpack is disabled, so none can detect the app; enable one with \
                 pier update-buildpack NAME --enable, or name one with -b",
                ));
            }
            return Ok(Resolved {
                order,
                explicit: false,
                uploaded: Vec::new(),
            });
        }
        let mut out = Resolved {
            order: Vec::new(),
            explicit: true,
            uploaded: Vec::new(),
        };
        for entry in app_buildpacks {
            if let Some((name, sha)) = pier_api::buildpacks::parse_uploaded_buildpack(entry) {
                if !blobs.exists(sha) {
                    return Err(Error::api(
                    ErrorCode::StagingFailed,
                    format!(
                        "the buildpack {name} pushed with the app (package {}) is no longer stored; \
                         push again with -b ./path/to/{name}",
                        &sha[..12]
                    ),
                ));
                }
                out.order.push(format!("/tmp/local-buildpacks/{name}"));
                out.uploaded.push((name.to_string(), sha.to_string()));
            } else {
                let known = self.lock().get(entry).is_some();
                if !known {
                    return Err(Error::api(
                        ErrorCode::StagingFailed,
                        format!(
                        "the app names buildpack {entry:?}, which is not installed (any more); \
                         push with -b NAME of one pier buildpacks lists"
                    ),
                    ));
                }
                out.order.push(entry.clone());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_positions() {
        let rec = |n: &str| BuildpackRecord {
            name: n.into(),
            enabled: true,
            builtin: false,
            sha256: None,
            updated_at: OffsetDateTime::now_utc(),
        };
        let mut r = Registry {
            file: PathBuf::new(),
            dir: PathBuf::new(),
            list: vec![rec("a"), rec("b")],
        };
        r.place(rec("c"), Some(1));
        r.place(rec("d"), Some(99));
        r.place(rec("e"), None);
        let names = |r: &Registry| r.list.iter().map(|b| b.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&r), ["c", "a", "b", "d", "e"]);
        // Moving keeps one entry; no position keeps the place.
        r.place(rec("e"), Some(2));
        let mut off = rec("a");
        off.enabled = false;
        r.place(off, None);
        assert_eq!(names(&r), ["c", "e", "a", "b", "d"]);
        assert_eq!(r.detect_order(), ["c", "e", "b", "d"]);
    }

    #[test]
    fn builtin_buildpacks_are_embedded_and_installed() {
        let dir = tempfile::tempdir().unwrap();
        let bps = Buildpacks::install(dir.path()).unwrap();
        let bp = bps.dir();
        for name in BUILTIN_ORDER {
            use std::os::unix::fs::PermissionsExt;
            let detect = bp.join(name).join("bin/detect");
            let mode = std::fs::metadata(&detect).unwrap().permissions().mode();
            assert_eq!(mode & 0o111, 0o111, "{} is executable", detect.display());
        }
        assert!(bps.check(&["python".into()]).is_ok());
        assert!(bps.check(&["cobol".into()]).is_err());
        assert!(bps.check(&["python".into(), "python".into()]).is_err());
    }
}

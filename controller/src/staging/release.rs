//! What a staging leaves in `/tmp/out`: the droplet, the buildpack's name, its `bin/release`
//! YAML and the app's Procfile.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use pier_api::ErrorCode;

use crate::error::{Error, Result};
use crate::store::blobs::{BlobStore, PendingBlob};

/// Largest metadata file a staging may leave (`release.yml`, `Procfile`, `buildpack`).
pub(super) const MAX_METADATA_BYTES: u64 = 1024 * 1024;

/// What a staging left: the droplet (not yet committed), the buildpack's name, the process types.
pub(super) type Outputs = (PendingBlob, String, BTreeMap<String, String>);

/// Reads what the staging left in `dir` (the host side of its `/tmp/out`): `droplet.tgz`, at most
/// `max_droplet` bytes, into a pending blob, and the metadata files. Whatever a hostile buildpack
/// put there is untrusted: only those names at the top are read, each opened without following a
/// link and without blocking (a FIFO or a device fails, it cannot hang the controller), and read
/// only when it is a regular file; sizes are bounded while reading, not trusted from `stat`.
pub(super) fn read_output_dir(blobs: &BlobStore, dir: &Path, max_droplet: u64) -> Result<Outputs> {
    let droplet = match open_regular(&dir.join("droplet.tgz"), "droplet.tgz")? {
        Some(file) => {
            let mut limited = file.take(max_droplet + 1);
            let blob = blobs.write_reader(&mut limited)?;
            if blob.size > max_droplet {
                return Err(Error::api(
                    ErrorCode::StagingFailed,
                    format!(
                        "the staging output (droplet and metadata) is larger than the \
                         controller's limit of {max_droplet} bytes (--max-droplet-bytes); make \
                         the app smaller"
                    ),
                ));
            }
            blob
        }
        None => {
            return Err(Error::api(
                ErrorCode::StagingFailed,
                "staging produced no droplet",
            ))
        }
    };
    let meta = |name: &str| -> Result<String> {
        let mut text = String::new();
        if let Some(mut file) = open_regular(&dir.join(name), name)? {
            read_metadata(&mut file, name, &mut text)?;
        }
        Ok(text)
    };
    let buildpack = meta("buildpack")?;
    let mut types = parse_release(&meta("release.yml")?)?;
    types.extend(parse_procfile(&meta("Procfile")?)?);
    Ok((droplet, buildpack.trim().to_string(), types))
}

/// `path` opened for reading when it is a regular file; `None` when it does not exist.
fn open_regular(path: &Path, name: &str) -> Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(not_a_file(name)),
        Err(e) => return Err(e.into()),
    };
    if !file.metadata()?.file_type().is_file() {
        return Err(not_a_file(name));
    }
    Ok(Some(file))
}

fn not_a_file(name: &str) -> Error {
    Error::api(
        ErrorCode::StagingFailed,
        format!("the staging left {name} as something other than a regular file (a link?)"),
    )
}

fn read_metadata(entry: &mut impl Read, name: &str, into: &mut String) -> Result<()> {
    let mut limited = entry.take(MAX_METADATA_BYTES + 1);
    let mut bytes = Vec::new();
    limited.read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_METADATA_BYTES {
        return Err(metadata_too_large(name));
    }
    *into = String::from_utf8_lossy(&bytes).into_owned();
    Ok(())
}

fn metadata_too_large(name: &str) -> Error {
    Error::api(
        ErrorCode::StagingFailed,
        format!(
            "the staging left a {name} larger than {} KiB; a buildpack's {name} is a few lines",
            MAX_METADATA_BYTES / 1024
        ),
    )
}

/// `default_process_types` from a buildpack's `bin/release` YAML.
pub fn parse_release(yaml: &str) -> Result<BTreeMap<String, String>> {
    if yaml.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    #[derive(serde::Deserialize)]
    struct Release {
        #[serde(default)]
        default_process_types: Option<BTreeMap<String, String>>,
    }
    let r: Release = serde_yaml_ng::from_str(yaml).map_err(|e| {
        Error::api(
            ErrorCode::StagingFailed,
            format!("the buildpack's bin/release printed invalid YAML: {e}"),
        )
    })?;
    Ok(r.default_process_types.unwrap_or_default())
}

/// A Procfile: `type: command` per line; `#` comments and blank lines are skipped.
pub fn parse_procfile(text: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((kind, cmd)) = line.split_once(':') else {
            return Err(Error::api(
                ErrorCode::StagingFailed,
                format!(
                    "Procfile line {}: expected `type: command`, got {line:?}",
                    n + 1
                ),
            ));
        };
        let kind = kind.trim();
        if kind.parse::<pier_api::ProcessType>().is_err() {
            return Err(Error::api(
                ErrorCode::StagingFailed,
                format!(
                    "Procfile line {}: {kind:?} is not a valid process type",
                    n + 1
                ),
            ));
        }
        out.insert(kind.to_string(), cmd.trim().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(e: Error) -> String {
        e.to_api().message
    }

    #[test]
    fn outputs_are_read_from_the_folder_as_untrusted_files() {
        let data = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(data.path()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let d = out.path();
        // Nothing there: no droplet.
        let e = read_output_dir(&blobs, d, 1024).unwrap_err();
        assert!(message(e).contains("staging produced no droplet"));
        std::fs::write(d.join("droplet.tgz"), b"droplet").unwrap();
        std::fs::write(d.join("buildpack"), b"python\n").unwrap();
        std::fs::write(d.join("Procfile"), b"web: python3 app.py\n").unwrap();
        let (blob, bp, types) = read_output_dir(&blobs, d, 1024).unwrap();
        assert_eq!(blob.size, 7);
        assert_eq!(bp, "python");
        assert_eq!(types["web"], "python3 app.py");
        // Larger than the limit.
        let e = read_output_dir(&blobs, d, 3).unwrap_err();
        assert!(message(e).contains("larger than the controller's limit of 3 bytes"));
        // A link to a host file is not followed, for the droplet or for metadata.
        let secret = out
            .path()
            .join("..")
            .join(format!("secret-{}", std::process::id()));
        std::fs::write(&secret, b"host secret").unwrap();
        std::fs::remove_file(d.join("buildpack")).unwrap();
        std::os::unix::fs::symlink(&secret, d.join("buildpack")).unwrap();
        let e = read_output_dir(&blobs, d, 1024).unwrap_err();
        assert!(message(e).contains("buildpack as something other than a regular file"));
        std::fs::remove_file(d.join("buildpack")).unwrap();
        std::fs::remove_file(d.join("droplet.tgz")).unwrap();
        std::os::unix::fs::symlink(&secret, d.join("droplet.tgz")).unwrap();
        let e = read_output_dir(&blobs, d, 1024).unwrap_err();
        assert!(message(e).contains("droplet.tgz as something other than a regular file"));
        std::fs::remove_file(&secret).unwrap();
        // A FIFO fails at once instead of blocking the reader.
        std::fs::remove_file(d.join("droplet.tgz")).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(d.join("droplet.tgz"))
            .status()
            .unwrap();
        assert!(made.success());
        let e = read_output_dir(&blobs, d, 1024).unwrap_err();
        assert!(message(e).contains("droplet.tgz as something other than a regular file"));
        // A folder where a file should be.
        std::fs::remove_file(d.join("droplet.tgz")).unwrap();
        std::fs::create_dir(d.join("droplet.tgz")).unwrap();
        let e = read_output_dir(&blobs, d, 1024).unwrap_err();
        assert!(message(e).contains("droplet.tgz as something other than a regular file"));
    }

    #[test]
    fn release_and_procfile() {
        let r = parse_release("---\ndefault_process_types:\n  web: python3 app.py\n").unwrap();
        assert_eq!(r["web"], "python3 app.py");
        assert!(parse_release("").unwrap().is_empty());
        assert!(parse_release(": : :").is_err());
        let p = parse_procfile("# c\nweb: gunicorn app:app\n\nworker: python3 w.py\n").unwrap();
        assert_eq!(p["web"], "gunicorn app:app");
        assert_eq!(p["worker"], "python3 w.py");
        assert!(parse_procfile("nonsense").is_err());
    }
}

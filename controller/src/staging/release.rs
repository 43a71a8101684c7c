//! What a staging leaves in `/tmp/out`: the droplet, the buildpack's name, its `bin/release`
//! YAML and the app's Procfile.

use std::collections::BTreeMap;
use std::io::Read;

use pier_api::ErrorCode;

use crate::error::{Error, Result};
use crate::store::blobs::{BlobStore, PendingBlob};

/// Largest metadata file a staging may leave (`release.yml`, `Procfile`, `buildpack`).
pub(super) const MAX_METADATA_BYTES: u64 = 1024 * 1024;

/// What a staging left: the droplet (not yet committed), the buildpack's name, the process types.
pub(super) type Outputs = (PendingBlob, String, BTreeMap<String, String>);

/// Reads `/tmp/out` as a tar (entries `out/NAME`; blocking): the droplet goes to a pending blob;
/// the metadata files, each at most [`MAX_METADATA_BYTES`] (refused from the entry's header), are
/// parsed. Files anywhere else are ignored.
pub(super) fn read_outputs(blobs: &BlobStore, tar: impl Read) -> Result<Outputs> {
    let mut a = tar::Archive::new(std::io::BufReader::new(tar));
    let mut droplet = None;
    let mut buildpack = String::new();
    let mut release = String::new();
    let mut procfile = String::new();
    for entry in a.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path()?.into_owned();
        let mut parts = path
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        let (Some(dir), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if dir != "out" {
            continue;
        }
        let into = match name.as_str() {
            "droplet.tgz" => {
                droplet = Some(blobs.write_reader(&mut entry)?);
                continue;
            }
            "buildpack" => &mut buildpack,
            "release.yml" => &mut release,
            "Procfile" => &mut procfile,
            _ => continue,
        };
        if entry.size() > MAX_METADATA_BYTES {
            return Err(metadata_too_large(&name));
        }
        read_metadata(&mut entry, &name, into)?;
    }
    let droplet = droplet
        .ok_or_else(|| Error::api(ErrorCode::StagingFailed, "staging produced no droplet"))?;
    let mut types = parse_release(&release)?;
    types.extend(parse_procfile(&procfile)?);
    Ok((droplet, buildpack.trim().to_string(), types))
}

/// Reads one metadata file, refusing one over [`MAX_METADATA_BYTES`] before reading it.
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

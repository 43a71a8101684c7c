//! What a staging leaves in `/tmp/out`: the droplet, the buildpack's name, its `bin/release`
//! YAML and the app's Procfile.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use pier_api::ErrorCode;

use crate::error::{Error, Result};
use crate::store::blobs::{BlobStore, PendingBlob};

/// Reads `/tmp/out` as downloaded: the droplet goes to a pending blob; the rest is parsed.
pub(super) fn read_outputs(
    blobs: &BlobStore,
    out_tar: &Path,
) -> Result<(PendingBlob, String, BTreeMap<String, String>)> {
    let mut a = tar::Archive::new(std::io::BufReader::new(std::fs::File::open(out_tar)?));
    let mut droplet = None;
    let mut buildpack = String::new();
    let mut release = String::new();
    let mut procfile = String::new();
    for entry in a.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        match path.file_name().and_then(|n| n.to_str()) {
            Some("droplet.tgz") => droplet = Some(blobs.write_reader(&mut entry)?),
            Some("buildpack") => {
                entry.read_to_string(&mut buildpack)?;
            }
            Some("release.yml") => {
                entry.read_to_string(&mut release)?;
            }
            Some("Procfile") => {
                entry.read_to_string(&mut procfile)?;
            }
            _ => {}
        }
    }
    let droplet = droplet
        .ok_or_else(|| Error::api(ErrorCode::StagingFailed, "staging produced no droplet"))?;
    let mut types = parse_release(&release)?;
    types.extend(parse_procfile(&procfile)?);
    Ok((droplet, buildpack.trim().to_string(), types))
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

//! Admin buildpacks (`/v1/buildpacks`) and the buildpack references an app's `buildpacks` list holds.
//!
//! An app's `buildpacks` entries are either the name of an installed buildpack (built-in or
//! admin-created) or a buildpack uploaded with the app (`pier push -b ./path`), written
//! `NAME@sha256:HEX`: the folder was packed and uploaded with `POST /v1/packages` like an app.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The longest buildpack name.
pub const MAX_BUILDPACK_NAME: usize = 63;

/// Checks a buildpack name: 1-63 of `a-z 0-9 _ - .`, starting with a letter or digit.
pub fn check_buildpack_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_BUILDPACK_NAME
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' || c == '.'
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "buildpack name {name:?} is invalid: use 1 to {MAX_BUILDPACK_NAME} lowercase letters, \
             digits, '_', '-' or '.', starting with a letter or digit"
        ))
    }
}

/// A buildpack uploaded with an app: `NAME@sha256:HEX` → (NAME, HEX).
pub fn parse_uploaded_buildpack(s: &str) -> Option<(&str, &str)> {
    let (name, hex) = s.split_once("@sha256:")?;
    let hex_ok = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    (check_buildpack_name(name).is_ok() && hex_ok).then_some((name, hex))
}

/// The reference an app stores for a buildpack uploaded with it.
pub fn uploaded_buildpack_ref(name: &str, sha256: &str) -> String {
    format!("{name}@sha256:{sha256}")
}

/// One installed buildpack (`GET /v1/buildpacks`, in position order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildpackResponse {
    pub name: String,
    /// 1-based; detection tries buildpacks in this order.
    pub position: u32,
    /// A disabled buildpack is skipped by detection but can still be named with `-b`.
    pub enabled: bool,
    /// Shipped with Pier (can be moved or disabled, not replaced or deleted).
    pub builtin: bool,
    /// sha256 of the uploaded package an admin buildpack was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The scripts it has: `detect`, `supply`, `finalize`, `compile`, `release`.
    #[serde(default)]
    pub scripts: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// `POST /v1/buildpacks`: install a buildpack from a package uploaded with `POST /v1/packages`
/// (a gzipped tar of the buildpack's folder, `bin/detect` at its root or one folder down).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBuildpackRequest {
    pub name: String,
    pub package: String,
    /// 1-based position; default: last. A position past the end means last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// `PUT /v1/buildpacks/{name}`: move, enable/disable, or replace the files (admin buildpacks only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBuildpackRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_uploaded_refs() {
        assert!(check_buildpack_name("my-bp_2.0").is_ok());
        for bad in ["", "-x", "Upper", "a/b", &"a".repeat(64)] {
            assert!(check_buildpack_name(bad).is_err(), "{bad}");
        }
        let hex = "a".repeat(64);
        let r = uploaded_buildpack_ref("local-bp", &hex);
        assert_eq!(
            parse_uploaded_buildpack(&r),
            Some(("local-bp", hex.as_str()))
        );
        assert_eq!(parse_uploaded_buildpack("python"), None);
        assert_eq!(parse_uploaded_buildpack("x@sha256:12"), None);
    }
}

//! Orgs and spaces: an org holds spaces, a space holds apps. App names are unique per space;
//! every app endpoint acts in the space named by the query parameters `org` and `space` (both
//! default to `default`, the org and space a new platform starts with).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::quotas::{QuotaResponse, QuotaUsage};

/// The query parameters that pick the space an app endpoint acts in.
pub const ORG_PARAM: &str = "org";
pub const SPACE_PARAM: &str = "space";

/// `POST /v1/orgs` and `POST /v1/orgs/{org}/spaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateNamedRequest {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgResponse {
    pub name: String,
    pub guid: String,
    /// Its spaces' names, sorted.
    pub spaces: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The org's quota; `None` is unlimited.
    #[serde(default)]
    pub quota: Option<QuotaResponse>,
    /// What the org's spaces use together.
    #[serde(default)]
    pub usage: QuotaUsage,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceResponse {
    pub name: String,
    pub guid: String,
    /// The org's name.
    pub org: String,
    /// Its apps' names, sorted.
    pub apps: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The space's own quota; `None` is unlimited (the org's quota still applies).
    #[serde(default)]
    pub quota: Option<QuotaResponse>,
    #[serde(default)]
    pub usage: QuotaUsage,
}

//! Quotas: named limits a platform admin defines and assigns to orgs and spaces. Each limit is
//! optional (absent or `null` = unlimited). What counts: memory and instances of started apps
//! (standby instances do not count), apps, and mapped routes. A change that would take a space or
//! its org over its quota is refused with [`crate::ErrorCode::QuotaExceeded`] before anything
//! is written or started.

use serde::{Deserialize, Serialize};

/// The limits of a quota; `None` is unlimited. `PUT /v1/quotas/{name}` sends these and replaces
/// all four.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaLimits {
    /// Total memory of every instance of every started app, in MiB.
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// Total instances of every started app (all process types).
    #[serde(default)]
    pub instances: Option<u64>,
    /// Number of apps, started or not.
    #[serde(default)]
    pub apps: Option<u64>,
    /// Number of routes mapped to apps.
    #[serde(default)]
    pub routes: Option<u64>,
}

/// `POST /v1/quotas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateQuotaRequest {
    pub name: String,
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub instances: Option<u64>,
    #[serde(default)]
    pub apps: Option<u64>,
    #[serde(default)]
    pub routes: Option<u64>,
}

impl CreateQuotaRequest {
    pub fn limits(&self) -> QuotaLimits {
        QuotaLimits {
            memory_mb: self.memory_mb,
            instances: self.instances,
            apps: self.apps,
            routes: self.routes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaResponse {
    pub name: String,
    pub limits: QuotaLimits,
    /// The orgs it is assigned to, sorted.
    #[serde(default)]
    pub orgs: Vec<String>,
    /// The spaces it is assigned to, as `org/space`, sorted.
    #[serde(default)]
    pub spaces: Vec<String>,
}

/// `PUT /v1/orgs/{org}/quota` and `PUT /v1/orgs/{org}/spaces/{space}/quota`: the quota to assign,
/// or `null` to remove it (unlimited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignQuotaRequest {
    pub quota: Option<String>,
}

/// What an org or a space uses, counted as its quota counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaUsage {
    pub memory_mb: u64,
    pub instances: u64,
    pub apps: u64,
    pub routes: u64,
}

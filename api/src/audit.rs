//! The platform's audit log: one [`AuditEntry`] per change made through the API (every `POST`,
//! `PUT`, `PATCH` and `DELETE`, whatever its answer), per refused request (401, 403), and per
//! login at `/oauth/token`, successful or not. `GET /v1/audit` (platform admin) lists them newest
//! first. Bodies are never recorded (they carry passwords and env values), nor query strings.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The most entries one `GET /v1/audit` answers, and the default.
pub const AUDIT_LIMIT_MAX: usize = 10_000;
pub const AUDIT_LIMIT_DEFAULT: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// `admin`, a user's name, `router`, or `unknown` (no valid token).
    pub actor: String,
    /// What was done: `METHOD PATH` for API calls (the path without its query), or `login`,
    /// `login failed`, `refresh`, `refresh failed`, `logout` at the OAuth endpoints.
    pub action: String,
    pub method: String,
    pub path: String,
    /// The org and space the request acted in, when it names them (app endpoints: their
    /// `?org=&space=`, each `default` when not given; org and space endpoints: their path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<String>,
    /// The name of what it acted on (an app, org, space, user, quota, buildpack; the user name
    /// given at a login), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The HTTP status of the answer.
    pub status: u16,
}

/// `GET /v1/audit?since=RFC3339&limit=N`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    #[serde(default)]
    pub limit: Option<usize>,
}

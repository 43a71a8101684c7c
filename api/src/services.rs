//! Service instances and bindings. A service instance belongs to a space; an app of that space is
//! bound to it, and each binding reaches the app's instances as an entry of `VCAP_SERVICES`
//! (Cloud Foundry's shape) with its next deployment. Two kinds: the user-provided service
//! (credentials the user gives, as a JSON object) and the managed one, which a service broker
//! provisions ([`crate::brokers`]).
//!
//! Endpoints (space endpoints: `?org=&space=`):
//! - `GET /v1/service-instances` → `Vec<`[`ServiceInstanceResponse`]`>`
//! - `POST /v1/service-instances` [`CreateServiceInstanceRequest`] → 201
//! - `GET`/`PATCH`/`DELETE /v1/service-instances/{name}` ([`UpdateUserProvidedRequest`]); DELETE
//!   is 409 while an app is bound
//! - `PUT`/`DELETE /v1/apps/{name}/bindings/{service}` → [`BindingResponse`]; 204 (PUT is 409 when
//!   already bound)

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The label of user-provided services in `VCAP_SERVICES`.
pub const USER_PROVIDED: &str = "user-provided";

/// A user-provided service's fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserProvided {
    /// Any JSON object.
    #[serde(default)]
    pub credentials: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syslog_drain_url: Option<String>,
}

/// `POST /v1/service-instances`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceInstanceRequest {
    pub name: String,
    pub user_provided: UserProvided,
}

/// `PATCH /v1/service-instances/{name}`: each field given replaces the old one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserProvidedRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syslog_drain_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceInstanceResponse {
    pub name: String,
    pub guid: String,
    /// `user-provided` or `managed`.
    pub kind: String,
    /// Shown to the platform admin and the space's developers; to others every value is
    /// `[PRIVATE DATA HIDDEN]`.
    pub credentials: serde_json::Map<String, serde_json::Value>,
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syslog_drain_url: Option<String>,
    /// The apps bound to it, by name.
    pub bound_apps: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// A managed instance's offering, plan, broker and last operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<crate::ManagedInfo>,
}

/// The kind of a managed service instance (one a broker provisions).
pub const MANAGED: &str = "managed";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingResponse {
    pub guid: String,
    pub app: String,
    pub service_instance: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

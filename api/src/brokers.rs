//! Service brokers (the Open Service Broker API, v2.17), the marketplace they make, access to
//! their plans, managed service instances and service keys.
//!
//! Endpoints:
//! - `GET`/`POST /v1/service-brokers`, `PUT`/`DELETE /v1/service-brokers/{name}`: platform-wide
//!   brokers (the platform admin; the list shows space-scoped ones too)
//!   ([`CreateServiceBrokerRequest`], [`UpdateServiceBrokerRequest`] → [`ServiceBrokerResponse`])
//! - `GET`/`POST /v1/space-service-brokers`, `PUT`/`DELETE /v1/space-service-brokers/{name}`
//!   (`?org=&space=`): brokers of one space (seen by its members, changed by its
//!   SpaceDevelopers), their plans seen there only
//! - `GET /v1/marketplace` (`?org=&space=`, `&offering=`) → `Vec<`[`MarketplaceOffering`]`>`
//! - `POST /v1/service-access` [`ServiceAccessRequest`] → [`ServiceAccessResponse`] (admin)
//! - `POST /v1/service-instances` with [`CreateManagedInstanceRequest`] provisions;
//!   `PATCH /v1/service-instances/{name}` with [`UpdateManagedInstanceRequest`] updates; DELETE
//!   deprovisions (202 while the broker works)
//! - `PUT /v1/apps/{name}/bindings/{service}` takes an optional [`BindRequest`]
//! - `GET /v1/service-instances/{name}/keys` (`?key=NAME`: that key, with its credentials),
//!   `PUT`/`DELETE /v1/service-instances/{name}/keys/{key}` ([`CreateServiceKeyRequest`] →
//!   [`ServiceKeyResponse`])

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The OSB API version Pier speaks (the `X-Broker-API-Version` header).
pub const OSB_API_VERSION: &str = "2.17";

/// `POST /v1/service-brokers` (or `/v1/space-service-brokers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceBrokerRequest {
    pub name: String,
    pub url: String,
    pub username: String,
    pub password: String,
}

/// `PUT /v1/service-brokers/{name}`: new URL and credentials; the catalog is fetched again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateServiceBrokerRequest {
    pub url: String,
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceBrokerResponse {
    pub name: String,
    pub guid: String,
    pub url: String,
    pub username: String,
    /// `ORG/SPACE` for a space-scoped broker, `None` for a platform-wide one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<String>,
    /// Its offerings' names.
    pub offerings: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A plan as the marketplace shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketplacePlan {
    pub name: String,
    pub description: String,
    pub free: bool,
    /// Who may use it: `all`, `none` (the admin only), `limited` (the orgs listed) or `space`
    /// (a space-scoped broker's).
    pub access: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orgs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketplaceOffering {
    /// The offering's name: its label in `VCAP_SERVICES`.
    pub name: String,
    pub description: String,
    pub broker: String,
    pub tags: Vec<String>,
    pub bindable: bool,
    pub plan_updateable: bool,
    /// The plans the caller sees.
    pub plans: Vec<MarketplacePlan>,
}

/// `POST /v1/service-access`: enables (or disables) an offering's plans, for every org or one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccessRequest {
    pub offering: String,
    /// One plan; all of the offering's when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// One org; every org when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// With an org: the broker whose offering it is, when names clash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    pub enable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccessResponse {
    pub offering: String,
    pub broker: String,
    pub plans: Vec<MarketplacePlan>,
}

/// `POST /v1/service-instances` for an instance a broker provisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateManagedInstanceRequest {
    pub name: String,
    pub offering: String,
    pub plan: String,
    /// When two brokers offer the same offering name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// Given to the broker as the OSB `parameters` (a JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// `PATCH /v1/service-instances/{name}` of a managed instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateManagedInstanceRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

/// The last operation on a managed instance, as Cloud Foundry shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastOperation {
    /// `create`, `update` or `delete`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `in progress`, `succeeded` or `failed`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl std::fmt::Display for LastOperation {
    /// `create in progress`, `create succeeded`, `create failed: <description>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.state)?;
        match &self.description {
            Some(d) if self.state == "failed" && !d.is_empty() => write!(f, ": {d}"),
            _ => Ok(()),
        }
    }
}

/// What a managed instance is, in [`crate::ServiceInstanceResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedInfo {
    pub offering: String,
    pub plan: String,
    pub broker: String,
    pub last_operation: LastOperation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_url: Option<String>,
    /// Its service keys, by name.
    #[serde(default)]
    pub keys: Vec<String>,
}

/// The optional body of `PUT /v1/apps/{name}/bindings/{service}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The optional body of `PUT /v1/service-instances/{name}/keys/{key}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceKeyRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceKeyResponse {
    pub name: String,
    pub guid: String,
    pub service_instance: String,
    /// Shown to those who see env values (else each value is `[PRIVATE DATA HIDDEN]`); empty
    /// in lists.
    pub credentials: serde_json::Map<String, serde_json::Value>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

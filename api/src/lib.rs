//! Wire types of Pier's HTTP API and the validated names they carry.
//!
//! This crate is data only: serde types, newtypes that can only hold valid values, and the error
//! body every endpoint returns. The CLI, the controller, the router and the tests all speak through
//! these types, so a change here is a change to the protocol.
//!
//! Endpoints (all under the controller's API address, JSON unless noted, `Authorization: Bearer`
//! required except on `/v1/info`):
//!
//! | method and path                         | body → answer                                          |
//! |-----------------------------------------|--------------------------------------------------------|
//! | `GET  /v1/info`                         | → [`InfoResponse`]                                     |
//! | `POST /v1/packages`                     | gzipped tar (streamed) → [`PackageResponse`]           |
//! | `GET  /v1/apps`                         | → `Vec<`[`AppResponse`]`>`                             |
//! | `PUT  /v1/apps/{name}`                  | [`AppConfigRequest`] → [`AppResponse`] (create/update) |
//! | `GET  /v1/apps/{name}`                  | `?stats=true` (sampled use), `?wait_after=V&wait_secs=S` (long-poll) → [`AppResponse`] |
//! | `DELETE /v1/apps/{name}`                | → 204                                                  |
//! | `POST /v1/apps/{name}/builds`           | [`BuildRequest`] → NDJSON stream of [`BuildEvent`]     |
//! | `POST /v1/apps/{name}/actions/{action}` | `start` `stop` `restart` → [`AppResponse`]             |
//! | `PUT  /v1/apps/{name}/processes/{type}` | [`ProcessConfigRequest`] → [`AppResponse`] (scale)     |
//! | `POST /v1/apps/{name}/deployments`      | [`DeployRequest`] → [`DeploymentResponse`]             |
//! | `GET  /v1/apps/{name}/deployments`      | → `Vec<`[`DeploymentResponse`]`>` newest first         |
//! | `POST /v1/apps/{name}/deployments/{id}/{cancel,continue}` | → [`DeploymentResponse`]     |
//! | `GET  /v1/apps/{name}/revisions`        | → `Vec<`[`RevisionResponse`]`>` newest first           |
//! | `GET  /v1/apps/{name}/events`           | → `Vec<`[`AppEvent`]`>` newest first                   |
//! | `GET  /v1/apps/{name}/logs`             | → `Vec<`[`LogLine`]`>` the buffered lines              |
//! | `GET  /v1/apps/{name}/logs/stream`      | `?after=SEQ` or `?recent=N` → SSE of [`LogEvent`]      |
//! | `POST /v1/router/logs`                  | [`RouterLogBatch`] → 204 (standalone router's RTR)     |
//! | `GET  /v1/buildpacks`                  | → `Vec<`[`BuildpackResponse`]`>` in position order     |
//! | `POST /v1/buildpacks`                  | [`CreateBuildpackRequest`] → [`BuildpackResponse`]     |
//! | `PUT/DELETE /v1/buildpacks/{name}`     | [`UpdateBuildpackRequest`] → [`BuildpackResponse`]; 204 |
//! | `DELETE /v1/apps/{name}/cache`          | → 204: clears the app's buildpack cache                |
//! | `POST/DELETE /v1/apps/{name}/routes`    | [`RouteRequest`] → [`AppResponse`] (map, unmap)        |
//! | `GET  /v1/route-mappings`               | → `Vec<`[`RouteMapping`]`>`                            |
//! | `GET  /v1/routes?epoch=E&version=V`     | → [`RouteTable`]; long-polls while the table is at V   |
//! | `GET/POST /v1/orgs`                     | [`CreateNamedRequest`] → [`OrgResponse`] (list, create) |
//! | `GET/DELETE /v1/orgs/{org}`             | → [`OrgResponse`]; 204 (deletes its spaces and apps)   |
//! | `GET/POST /v1/orgs/{org}/spaces`        | [`CreateNamedRequest`] → [`SpaceResponse`]              |
//! | `GET/DELETE /v1/orgs/{org}/spaces/{space}` | → [`SpaceResponse`]; 204 (deletes its apps)         |
//! | `GET/POST /v1/quotas`                   | [`CreateQuotaRequest`] → [`QuotaResponse`] (list, create) |
//! | `GET/PUT/DELETE /v1/quotas/{name}`      | [`QuotaLimits`] → [`QuotaResponse`]; 204 (409 while assigned) |
//! | `PUT /v1/orgs/{org}/quota`              | [`AssignQuotaRequest`] → [`OrgResponse`]               |
//! | `PUT /v1/orgs/{org}/spaces/{space}/quota` | [`AssignQuotaRequest`] → [`SpaceResponse`]           |
//!
//! Every `/v1/apps/...` endpoint acts in one space, picked by `?org=ORG&space=SPACE` (both default
//! to `default`); `/v1/apps` lists that space's apps.
//! | `POST /oauth/token` (no bearer)         | form `grant_type=password\|refresh_token` → [`TokenResponse`] / [`OAuthError`] |
//! | `POST /oauth/revoke` (no bearer)        | form `token=REFRESH` → 200 (RFC 7009)                  |
//! | `GET  /v1/whoami`                       | → [`WhoAmIResponse`]                                   |
//! | `GET/POST /v1/users`                    | [`CreateUserRequest`] → `Vec<`[`UserResponse`]`>`; [`UserResponse`] (201) |
//! | `DELETE /v1/users/{name}`               | → 204 (its sessions are revoked)                       |
//! | `PUT  /v1/users/{name}/password`        | [`SetPasswordRequest`] → 204                           |
//! | `GET  /v1/audit?since=T&limit=N`        | → `Vec<`[`AuditEntry`]`>` newest first (platform admin) |

pub mod apps;
pub mod audit;
pub mod brokers;
pub mod buildpacks;
pub mod deployments;
pub mod error;
pub mod logs;
pub mod names;
pub mod orgs;
pub mod quotas;
pub mod roles;
pub mod routes;
pub mod services;
pub mod size;
pub mod users;
pub mod vocab;

pub use apps::*;
pub use audit::{AuditEntry, AuditQuery, AUDIT_LIMIT_DEFAULT, AUDIT_LIMIT_MAX};
pub use brokers::{
    BindRequest, CreateManagedInstanceRequest, CreateServiceBrokerRequest, CreateServiceKeyRequest,
    LastOperation, ManagedInfo, MarketplaceOffering, MarketplacePlan, ServiceAccessRequest,
    ServiceAccessResponse, ServiceBrokerResponse, ServiceKeyResponse, UpdateManagedInstanceRequest,
    UpdateServiceBrokerRequest, OSB_API_VERSION,
};
pub use buildpacks::{BuildpackResponse, CreateBuildpackRequest, UpdateBuildpackRequest};
pub use deployments::*;
pub use error::{ApiError, ErrorCode};
pub use logs::{
    LogDrop, LogEvent, LogLine, LogStream, RouterLogBatch, RouterLogDropped, RouterLogLine,
};
pub use names::{AppName, NameError, ProcessType};
pub use orgs::{CreateNamedRequest, OrgResponse, SpaceResponse};
pub use quotas::{AssignQuotaRequest, CreateQuotaRequest, QuotaLimits, QuotaResponse, QuotaUsage};
pub use roles::{Role, RoleHolder, ALL_ROLES};
pub use routes::{
    is_internal_host, Backend, Balancing, RouteEntry, RouteMapping, RouteRequest, RouteSpec,
    RouteTable, INTERNAL_DOMAIN, INTERNAL_PORT,
};
pub use services::{
    BindingResponse, CreateServiceInstanceRequest, ServiceInstanceResponse,
    UpdateUserProvidedRequest, UserProvided, MANAGED, USER_PROVIDED,
};
pub use size::parse_size_mb;
pub use users::{
    CreateUserRequest, OAuthError, SetPasswordRequest, TokenResponse, UserName, UserNameError,
    UserResponse, WhoAmIResponse,
};
pub use vocab::{AppAction, DeploymentAction, EventKind, LogSource};

/// Header the router puts on every response it generates itself, naming the cause.
pub const ROUTER_ERROR_HEADER: &str = "x-pier-router-error";

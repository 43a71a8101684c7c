//! The HTTP API (axum): one module per resource. Handlers parse the request, call one service
//! function (`apps/`, `staging/`, `logs/`), and present the answer; they hold no platform logic.
//!
//! Every endpoint but `GET /v1/info` and the OAuth endpoints (`/oauth/token`, `/oauth/revoke`,
//! [`oauth`]) needs a token ([`auth`]): the admin token, the router token, or a user's access
//! token, which the middleware turns into a [`crate::users::Principal`] in the request's
//! extensions. Then the policy ([`crate::policy`], applied by [`authorize`]) decides whether that
//! caller may call that endpoint there. Errors are
//! [`crate::error::Error`], whose `IntoResponse` maps each code to one status and never shows
//! internals. Uses: `apps/` (the app service), `logs/` (log readers), `staging/` (buildpacks),
//! `store/` (blobs, for uploads), `instances/` (the route table), `network/` (router acks).

use std::sync::Arc;

use axum::middleware;
use axum::routing::get;
use axum::{Json, Router};
use pier_api::InfoResponse;
use tokio_util::sync::CancellationToken;

use crate::apps::AppService;
use crate::deployments::RequestStats;
use crate::error::{Error, Result};
use crate::instances::Routing;
use crate::logs::LogBroker;
use crate::network::addresses::AddressPool;
use crate::staging::Buildpacks;
use crate::store::BlobStore;

mod apps;
mod audit;
pub mod auth;
mod authorize;
mod brokers;
mod buildpacks;
mod builds;
mod deployments;
mod logs;
mod oauth;
mod orgs;
mod quotas;
mod roles;
mod routes;
pub mod serve;
mod services;
mod users;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub apps: Arc<AppService>,
    pub tenancy: Arc<crate::tenancy::Tenancy>,
    pub logs: Arc<LogBroker>,
    pub routing: Arc<Routing>,
    pub addresses: Arc<AddressPool>,
    pub buildpacks: Arc<Buildpacks>,
    pub blobs: BlobStore,
    pub stats: Arc<RequestStats>,
    pub tokens: auth::Tokens,
    pub users: Arc<crate::users::Users>,
    pub audit: crate::store::AuditStore,
    pub roles: Arc<crate::roles::Roles>,
    pub limits: Limits,
    pub stack_image: String,
    pub shutdown: CancellationToken,
}

/// Upload limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_package_bytes: u64,
    pub package_limits: crate::staging::package::Limits,
}

pub fn router(state: ApiState) -> Router {
    let authed = Router::new()
        .merge(apps::routes())
        .merge(builds::routes())
        .merge(deployments::routes())
        .merge(routes::routes())
        .merge(logs::routes())
        .merge(buildpacks::routes())
        .merge(orgs::routes())
        .merge(users::routes())
        .merge(quotas::routes())
        .merge(roles::routes())
        .merge(services::routes())
        .merge(brokers::routes())
        .merge(audit::routes())
        // After routing (so the route's pattern is known): the policy decides.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            authorize::authorize,
        ))
        // Between the two: who the token is, for the audit log (refusals by the policy too).
        .layer(middleware::from_fn(audit::note_principal))
        // Before it: who the token is.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/v1/info", get(info))
        .merge(oauth::routes())
        .merge(authed)
        .fallback(|| async { Error::not_found("endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), audit::record))
        .with_state(state)
}

type S = axum::extract::State<ApiState>;

/// A JSON request body; an empty body is `{}`.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    if body.is_empty() {
        return serde_json::from_slice(b"{}").map_err(|e| Error::bad_request(e.to_string()));
    }
    serde_json::from_slice(body)
        .map_err(|e| Error::bad_request(format!("invalid request body: {e}")))
}

/// A JSON request body that must be there.
pub(crate) fn json_body_strict<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::bad_request(format!("invalid request body: {e}")))
}

async fn info(axum::extract::State(s): S) -> Json<InfoResponse> {
    let settings = s.apps.settings();
    Json(InfoResponse {
        name: "pier".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        domain: settings.domain.clone(),
        router_url: settings.url_for(&settings.domain, ""),
        stack_image: s.stack_image.clone(),
        max_package_bytes: s.limits.max_package_bytes,
    })
}

#[cfg(test)]
mod audit_tests;
#[cfg(test)]
mod brokers_tests;
#[cfg(test)]
mod env_tests;
#[cfg(test)]
mod internal_routes_tests;
#[cfg(test)]
mod orgs_tests;
#[cfg(test)]
mod quotas_tests;
#[cfg(test)]
mod roles_tests;
#[cfg(test)]
mod services_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod users_tests;

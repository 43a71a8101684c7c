//! Routes: mapping them to apps (`/v1/apps/{name}/routes`, `/v1/route-mappings`) and the route
//! table standalone routers follow (`GET /v1/routes`, a long-poll).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use pier_api::{AppResponse, ErrorCode, RouteMapping, RouteRequest, RouteTable};
use serde::Deserialize;

use super::{json_body, ApiState};
use crate::error::{Error, Result};
use crate::tenancy::Scope;

type S = State<ApiState>;

/// How long a long-poll is held when the caller's table is current.
const HOLD: Duration = Duration::from_secs(25);

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/apps/{name}/routes", post(map).delete(unmap))
        .route("/v1/route-mappings", get(mappings))
        .route("/v1/routes", get(table))
}

async fn map(
    State(s): S,
    at: Scope,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<AppResponse>> {
    let req: RouteRequest = json_body(&body)?;
    Ok(Json(s.apps.route(&at, &name, req.route, true).await?))
}

async fn unmap(
    State(s): S,
    at: Scope,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<AppResponse>> {
    let req: RouteRequest = json_body(&body)?;
    Ok(Json(s.apps.route(&at, &name, req.route, false).await?))
}

async fn mappings(State(s): S, at: Scope) -> Result<Json<Vec<RouteMapping>>> {
    Ok(Json(s.apps.route_mappings(&at)?))
}

#[derive(Deserialize)]
struct RoutesQuery {
    epoch: Option<String>,
    version: Option<u64>,
    /// A standalone router's id: its (epoch, version) acknowledges every table up to it, which
    /// lets released instance addresses out of quarantine (`network/addresses.rs`).
    router: Option<String>,
    /// Comma-separated: instances no longer in that table the router still has requests in
    /// flight to; a removed instance is drained until no router names it (`drain.rs`).
    draining: Option<String>,
}

/// Most instances one poll may name as draining.
const MAX_DRAINING: usize = 10_000;

fn valid_router_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Long-poll: answers at once when the caller's table is stale, else when it changes or after
/// [`HOLD`].
async fn table(State(s): S, Query(q): Query<RoutesQuery>) -> Result<Response> {
    if let Some(id) = &q.router {
        if !valid_router_id(id) {
            return Err(Error::bad_request(
                "router must be 1-64 letters, digits, `-`, `_` or `.` (pier-router sends a uuid)",
            ));
        }
        let draining: Vec<String> = q
            .draining
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect();
        if draining.len() > MAX_DRAINING || !draining.iter().all(|d| valid_router_id(d)) {
            return Err(Error::bad_request(format!(
                "draining must be at most {MAX_DRAINING} instance ids (letters, digits, `-`, `_`, \
                 `.`), comma-separated"
            )));
        }
        s.addresses.router_polled(
            id,
            q.epoch.as_deref().unwrap_or_default(),
            q.version.unwrap_or(0),
            draining,
        );
    }
    let mut rx = s.routing.subscribe();
    let stale = |t: &Option<Arc<RouteTable>>| match t {
        None => false,
        Some(t) => Some(&t.epoch) != q.epoch.as_ref() || Some(t.version) != q.version,
    };
    let _ = tokio::time::timeout(HOLD, async { rx.wait_for(stale).await.map(|_| ()) }).await;
    match s.routing.current() {
        Some(t) => Ok(Json(t.as_ref().clone()).into_response()),
        None => Err(Error::api(
            ErrorCode::Unavailable,
            "the route table is not ready yet; retry",
        )),
    }
}

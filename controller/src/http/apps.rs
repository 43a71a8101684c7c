//! `/v1/apps`: list, get, create/update, delete, actions, processes, events, env.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use pier_api::{
    AppConfigRequest, AppEvent, AppResponse, DeployRequest, EnvPatchRequest, EnvResponse,
    ProcessConfigRequest,
};
use serde::Deserialize;

use super::{json_body, ApiState};
use crate::error::Result;
use crate::tenancy::Scope;

type S = State<ApiState>;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/apps", get(list))
        .route("/v1/apps/{name}", get(get_app).put(put_app).delete(delete))
        .route("/v1/apps/{name}/actions/{action}", post(action))
        .route("/v1/apps/{name}/events", get(events))
        .route("/v1/apps/{name}/env", get(env).patch(patch_env))
        .route("/v1/apps/{name}/processes/{process}", put(put_process))
}

async fn list(State(s): S, at: Scope) -> Result<Json<Vec<AppResponse>>> {
    Ok(Json(s.apps.list(&at)?))
}

#[derive(Deserialize)]
struct AppQuery {
    #[serde(default)]
    stats: bool,
    /// Answer once the change counter is past this (`state_version` of an earlier answer).
    wait_after: Option<u64>,
    /// The longest wait, in seconds (at most [`MAX_WAIT_SECS`]).
    wait_secs: Option<u64>,
}

/// A long-poll answers within this, changed or not (well inside the connection idle timeout).
const MAX_WAIT_SECS: u64 = 30;

async fn get_app(
    State(s): S,
    at: Scope,
    Path(name): Path<String>,
    Query(q): Query<AppQuery>,
) -> Result<Json<AppResponse>> {
    let wait =
        std::time::Duration::from_secs(q.wait_secs.unwrap_or(MAX_WAIT_SECS).min(MAX_WAIT_SECS));
    Ok(Json(
        s.apps.get(&at, &name, q.stats, q.wait_after, wait).await?,
    ))
}

async fn put_app(
    State(s): S,
    at: Scope,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<AppResponse>> {
    // The name is checked before the body.
    crate::apps::parse_name(&name)?;
    let req: AppConfigRequest = json_body(&body)?;
    Ok(Json(s.apps.put(&at, &name, req).await?))
}

async fn delete(State(s): S, at: Scope, Path(name): Path<String>) -> Result<Response> {
    s.apps.delete(&at, &name).await?;
    Ok(http::StatusCode::NO_CONTENT.into_response())
}

async fn action(
    State(s): S,
    at: Scope,
    Path((name, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<AppResponse>> {
    let req = || json_body::<DeployRequest>(&body);
    Ok(Json(s.apps.action(&at, &name, &action, req).await?))
}

async fn put_process(
    State(s): S,
    at: Scope,
    Path((name, process)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<AppResponse>> {
    let req: ProcessConfigRequest = json_body(&body)?;
    Ok(Json(s.apps.scale(&at, &name, &process, req).await?))
}

async fn events(State(s): S, at: Scope, Path(name): Path<String>) -> Result<Json<Vec<AppEvent>>> {
    Ok(Json(s.apps.events(&at, &name)?))
}

async fn env(State(s): S, at: Scope, Path(name): Path<String>) -> Result<Json<EnvResponse>> {
    Ok(Json(s.apps.env(&at, &name)?))
}

async fn patch_env(
    State(s): S,
    at: Scope,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<EnvResponse>> {
    crate::apps::parse_name(&name)?;
    // serde's words can quote what it could not read (a value in the wrong place): say where
    // instead, so no value ends up in an error.
    let req: EnvPatchRequest = serde_json::from_slice(&body).map_err(|e| {
        crate::error::Error::bad_request(format!(
            "invalid request body at line {} column {}: expected {{\"var\": {{\"NAME\": \"value\" or null}}}}",
            e.line(),
            e.column()
        ))
    })?;
    Ok(Json(s.apps.patch_env(&at, &name, req).await?))
}

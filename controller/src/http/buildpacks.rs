//! Buildpack endpoints:
//!
//! - `GET /v1/buildpacks`: every installed buildpack in position order ([`BuildpackResponse`]).
//! - `POST /v1/buildpacks` ([`CreateBuildpackRequest`]): installs a package uploaded with
//!   `POST /v1/packages` (a gzipped tar of the buildpack folder) as `NAME` at a position.
//! - `PUT /v1/buildpacks/{name}` ([`UpdateBuildpackRequest`]): moves, enables/disables, or replaces
//!   the files of an admin buildpack (built-ins can be moved and disabled only).
//! - `DELETE /v1/buildpacks/{name}`: removes an admin buildpack.
//! - `DELETE /v1/apps/{name}/cache`: clears the app's buildpack cache (its Docker volume).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Json, Router};
use bytes::Bytes;
use pier_api::{BuildpackResponse, CreateBuildpackRequest, UpdateBuildpackRequest};

use super::{json_body_strict, ApiState};
use crate::error::Result;
use crate::tenancy::Scope;

type S = State<ApiState>;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/buildpacks", get(list).post(create))
        .route("/v1/buildpacks/{name}", put(update).delete(remove))
        .route("/v1/apps/{name}/cache", delete(clear_cache))
}

async fn list(State(s): S) -> Json<Vec<BuildpackResponse>> {
    Json(s.buildpacks.list())
}

async fn create(State(s): S, body: Bytes) -> Result<Json<BuildpackResponse>> {
    let req: CreateBuildpackRequest = json_body_strict(&body)?;
    Ok(Json(s.apps.create_buildpack(&req).await?))
}

async fn update(
    State(s): S,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<BuildpackResponse>> {
    let req: UpdateBuildpackRequest = json_body_strict(&body)?;
    Ok(Json(s.apps.update_buildpack(&name, &req).await?))
}

async fn remove(State(s): S, Path(name): Path<String>) -> Result<Response> {
    s.buildpacks.remove(&name)?;
    Ok(http::StatusCode::NO_CONTENT.into_response())
}

async fn clear_cache(State(s): S, at: Scope, Path(name): Path<String>) -> Result<Response> {
    s.apps.clear_cache(&at, &name).await?;
    Ok(http::StatusCode::NO_CONTENT.into_response())
}

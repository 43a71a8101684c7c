//! `/v1/apps/{name}/deployments` and `/revisions`.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use pier_api::{DeployRequest, DeploymentResponse, RevisionResponse};

use super::{json_body, ApiState};
use crate::error::Result;
use crate::tenancy::Scope;

type S = State<ApiState>;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/apps/{name}/deployments", get(list).post(create))
        .route("/v1/apps/{name}/deployments/{id}/{action}", post(act))
        .route("/v1/apps/{name}/revisions", get(revisions))
}

async fn create(
    State(s): S,
    at: Scope,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<DeploymentResponse>> {
    let req: DeployRequest = json_body(&body)?;
    Ok(Json(s.apps.deploy(&at, &name, req).await?))
}

async fn list(
    State(s): S,
    at: Scope,
    Path(name): Path<String>,
) -> Result<Json<Vec<DeploymentResponse>>> {
    Ok(Json(s.apps.deployments(&at, &name)?))
}

async fn act(
    State(s): S,
    at: Scope,
    Path((name, id, action)): Path<(String, String, String)>,
) -> Result<Json<DeploymentResponse>> {
    Ok(Json(
        s.apps.deployment_action(&at, &name, &id, &action).await?,
    ))
}

async fn revisions(
    State(s): S,
    at: Scope,
    Path(name): Path<String>,
) -> Result<Json<Vec<RevisionResponse>>> {
    Ok(Json(s.apps.revisions(&at, &name)?))
}

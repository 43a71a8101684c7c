//! `/v1/quotas` (define, change, delete named quotas) and `/v1/orgs/{org}/quota`,
//! `/v1/orgs/{org}/spaces/{space}/quota` (assign one, or none). Enforcement is in
//! [`crate::quota`]; the use against the quota is shown by `GET /v1/orgs/{org}` and
//! `GET /v1/orgs/{org}/spaces/{space}`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use bytes::Bytes;
use http::StatusCode;
use pier_api::{
    AssignQuotaRequest, CreateQuotaRequest, OrgResponse, QuotaLimits, QuotaResponse, SpaceResponse,
};

use super::orgs::Who;
use super::{json_body_strict, ApiState};
use crate::error::Result;

type S = State<ApiState>;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/quotas", get(list).post(create))
        .route("/v1/quotas/{name}", get(show).put(update).delete(delete))
        .route("/v1/orgs/{org}/quota", put(assign_org))
        .route("/v1/orgs/{org}/spaces/{space}/quota", put(assign_space))
}

async fn list(State(s): S) -> Result<Json<Vec<QuotaResponse>>> {
    Ok(Json(s.apps.quotas().list()?))
}

async fn create(State(s): S, body: Bytes) -> Result<Response> {
    let req: CreateQuotaRequest = json_body_strict(&body)?;
    let q = s.apps.quotas().create(&req)?;
    Ok((StatusCode::CREATED, Json(q)).into_response())
}

async fn show(State(s): S, Path(name): Path<String>) -> Result<Json<QuotaResponse>> {
    Ok(Json(s.apps.quotas().get(&name)?))
}

async fn update(State(s): S, Path(name): Path<String>, body: Bytes) -> Result<Json<QuotaResponse>> {
    let limits: QuotaLimits = json_body_strict(&body)?;
    Ok(Json(s.apps.quotas().update(&name, limits)?))
}

async fn delete(State(s): S, Path(name): Path<String>) -> Result<Response> {
    s.apps.quotas().delete(&name)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn assign_org(
    State(s): S,
    Who(who): Who,
    Path(org): Path<String>,
    body: Bytes,
) -> Result<Json<OrgResponse>> {
    let req: AssignQuotaRequest = json_body_strict(&body)?;
    let org = s.tenancy.org(&org)?;
    let org = s
        .tenancy
        .set_org_quota(&org, req.quota.as_deref(), &who)
        .await?;
    Ok(Json(s.tenancy.org_response(&org)?))
}

async fn assign_space(
    State(s): S,
    Who(who): Who,
    Path((org, space)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<SpaceResponse>> {
    let req: AssignQuotaRequest = json_body_strict(&body)?;
    let (org, space) = s.tenancy.space(&org, &space)?;
    let space = s
        .tenancy
        .set_space_quota(&org, &space, req.quota.as_deref(), &who)
        .await?;
    Ok(Json(s.tenancy.space_response(&org, &space)?))
}

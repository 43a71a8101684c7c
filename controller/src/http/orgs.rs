//! `/v1/orgs` and `/v1/orgs/{org}/spaces`: list, create, show, delete; a user's lists hold only
//! the orgs and spaces they see. Also the extractors of what the authorization middleware found:
//! [`Scope`] (the space an app endpoint acts in, named by `?org=&space=`), [`Access`] and [`Who`].

use axum::extract::{FromRequestParts, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http::request::Parts;
use http::StatusCode;
use pier_api::{CreateNamedRequest, OrgResponse, SpaceResponse};

use super::authorize::Access;
use super::{json_body_strict, ApiState};
use crate::error::{Error, Result};
use crate::events::Actor;
use crate::store::OrgRecord;
use crate::tenancy::Scope;

type S = State<ApiState>;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/orgs", get(list_orgs).post(create_org))
        .route("/v1/orgs/{org}", get(get_org).delete(delete_org))
        .route("/v1/orgs/{org}/spaces", get(list_spaces).post(create_space))
        .route(
            "/v1/orgs/{org}/spaces/{space}",
            get(get_space).delete(delete_space),
        )
}

/// Who the request's token belongs to (the authorization middleware puts it in the extensions).
pub(super) fn actor(parts: &Parts) -> Actor {
    parts
        .extensions
        .get::<Actor>()
        .cloned()
        .unwrap_or(Actor::Platform)
}

/// The space an app endpoint acts in, as the authorization middleware resolved it (from
/// `?org=&space=`) and checked the caller against.
impl FromRequestParts<ApiState> for Scope {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &ApiState) -> Result<Scope> {
        parts.extensions.get::<Scope>().cloned().ok_or_else(|| {
            Error::Other(
                "no scope: the endpoint is not a space endpoint in the policy table".into(),
            )
        })
    }
}

/// What the caller sees, as the authorization middleware found it.
impl FromRequestParts<ApiState> for Access {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &ApiState) -> Result<Access> {
        parts.extensions.get::<Access>().cloned().ok_or_else(|| {
            Error::Other("no access: the authorization middleware did not run".into())
        })
    }
}

/// The request's actor, as an extractor.
pub(super) struct Who(pub Actor);

impl FromRequestParts<ApiState> for Who {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &ApiState) -> Result<Who> {
        Ok(Who(actor(parts)))
    }
}

/// The org as `access` may see it: only the spaces they see.
fn org_response(s: &ApiState, access: &Access, org: &OrgRecord) -> Result<OrgResponse> {
    let mut resp = s.tenancy.org_response(org)?;
    if access.grants.is_some() {
        let seen: Vec<String> = s
            .tenancy
            .spaces(org)?
            .into_iter()
            .filter(|sp| access.sees_space(sp))
            .map(|sp| sp.name)
            .collect();
        resp.spaces.retain(|n| seen.contains(n));
    }
    Ok(resp)
}

async fn list_orgs(State(s): S, access: Access) -> Result<Json<Vec<OrgResponse>>> {
    let orgs = s.tenancy.orgs()?;
    Ok(Json(
        orgs.iter()
            .filter(|o| access.sees_org(o))
            .map(|o| org_response(&s, &access, o))
            .collect::<Result<_>>()?,
    ))
}

async fn create_org(State(s): S, Who(who): Who, body: Bytes) -> Result<Response> {
    let req: CreateNamedRequest = json_body_strict(&body)?;
    let org = s.tenancy.create_org(&req.name, &who).await?;
    Ok((StatusCode::CREATED, Json(s.tenancy.org_response(&org)?)).into_response())
}

async fn get_org(
    State(s): S,
    access: Access,
    Path(org): Path<String>,
) -> Result<Json<OrgResponse>> {
    let org = s.tenancy.org(&org)?;
    Ok(Json(org_response(&s, &access, &org)?))
}

async fn delete_org(State(s): S, Who(who): Who, Path(org): Path<String>) -> Result<Response> {
    let org = s.tenancy.org(&org)?;
    s.tenancy.delete_org(&org, &who).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_spaces(
    State(s): S,
    access: Access,
    Path(org): Path<String>,
) -> Result<Json<Vec<SpaceResponse>>> {
    let org = s.tenancy.org(&org)?;
    let spaces = s.tenancy.spaces(&org)?;
    Ok(Json(
        spaces
            .iter()
            .filter(|sp| access.sees_space(sp))
            .map(|sp| s.tenancy.space_response(&org, sp))
            .collect::<Result<_>>()?,
    ))
}

async fn create_space(
    State(s): S,
    Who(who): Who,
    Path(org): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let org = s.tenancy.org(&org)?;
    let req: CreateNamedRequest = json_body_strict(&body)?;
    let space = s.tenancy.create_space(&org, &req.name, &who).await?;
    let resp = s.tenancy.space_response(&org, &space)?;
    Ok((StatusCode::CREATED, Json(resp)).into_response())
}

async fn get_space(
    State(s): S,
    Path((org, space)): Path<(String, String)>,
) -> Result<Json<SpaceResponse>> {
    let (org, space) = s.tenancy.space(&org, &space)?;
    Ok(Json(s.tenancy.space_response(&org, &space)?))
}

async fn delete_space(
    State(s): S,
    Who(who): Who,
    Path((org, space)): Path<(String, String)>,
) -> Result<Response> {
    let (org, space) = s.tenancy.space(&org, &space)?;
    s.tenancy.delete_space(&org, &space, &who).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

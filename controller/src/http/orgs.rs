//! `/v1/orgs` and `/v1/orgs/{org}/spaces`: list, create, show, delete. Also the [`Scope`]
//! extractor every app endpoint takes: the space named by `?org=&space=` (each `default` when
//! not given) and who is asking.

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http::request::Parts;
use http::StatusCode;
use pier_api::{CreateNamedRequest, OrgResponse, SpaceResponse};
use serde::Deserialize;

use super::{json_body_strict, ApiState};
use crate::error::{Error, Result};
use crate::events::Actor;
use crate::tenancy::Scope;
use crate::users::Principal;

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

#[derive(Deserialize)]
struct TargetQuery {
    org: Option<String>,
    space: Option<String>,
}

/// Who the request's token belongs to: the [`Principal`] the auth middleware put in the
/// extensions. Every route here is behind it; without one (a test calling a handler directly)
/// it is the admin, as before users existed.
pub(super) fn actor(parts: &Parts) -> Actor {
    parts
        .extensions
        .get::<Principal>()
        .map_or(Actor::Admin, Actor::of)
}

impl FromRequestParts<ApiState> for Scope {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Scope> {
        let q: TargetQuery = Query::try_from_uri(&parts.uri)
            .map(|Query(q)| q)
            .map_err(|e| Error::bad_request(format!("invalid query: {e}")))?;
        s.tenancy
            .scope(q.org.as_deref(), q.space.as_deref(), actor(parts))
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

async fn list_orgs(State(s): S) -> Result<Json<Vec<OrgResponse>>> {
    let orgs = s.tenancy.orgs()?;
    Ok(Json(
        orgs.iter()
            .map(|o| s.tenancy.org_response(o))
            .collect::<Result<_>>()?,
    ))
}

async fn create_org(State(s): S, Who(who): Who, body: Bytes) -> Result<Response> {
    let req: CreateNamedRequest = json_body_strict(&body)?;
    let org = s.tenancy.create_org(&req.name, &who).await?;
    Ok((StatusCode::CREATED, Json(s.tenancy.org_response(&org)?)).into_response())
}

async fn get_org(State(s): S, Path(org): Path<String>) -> Result<Json<OrgResponse>> {
    let org = s.tenancy.org(&org)?;
    Ok(Json(s.tenancy.org_response(&org)?))
}

async fn delete_org(State(s): S, Who(who): Who, Path(org): Path<String>) -> Result<Response> {
    let org = s.tenancy.org(&org)?;
    s.tenancy.delete_org(&org, &who).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_spaces(State(s): S, Path(org): Path<String>) -> Result<Json<Vec<SpaceResponse>>> {
    let org = s.tenancy.org(&org)?;
    let spaces = s.tenancy.spaces(&org)?;
    Ok(Json(
        spaces
            .iter()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_actor_is_the_principal_of_the_request() {
        let at = |p: Option<Principal>| {
            let mut req = http::Request::new(());
            if let Some(p) = p {
                req.extensions_mut().insert(p);
            }
            actor(&req.into_parts().0)
        };
        let alice = Principal::User {
            guid: "g".into(),
            name: "alice".into(),
        };
        assert_eq!(at(Some(alice)), Actor::User("alice".into()));
        assert_eq!(at(Some(Principal::Admin)), Actor::Admin);
        assert_eq!(at(Some(Principal::Router)), Actor::Platform);
        assert_eq!(at(None), Actor::Admin);
    }
}

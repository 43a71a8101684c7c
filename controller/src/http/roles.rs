//! Role endpoints: who holds which role in an org or a space, and giving and taking roles.
//!
//! - `GET /v1/orgs/{org}/users`, `GET /v1/orgs/{org}/spaces/{space}/users` →
//!   `Vec<`[`RoleHolder`]`>`: the users holding roles there, by name.
//! - `PUT`/`DELETE /v1/orgs/{org}/users/{user}/roles/{role}` and
//!   `PUT`/`DELETE /v1/orgs/{org}/spaces/{space}/users/{user}/roles/{role}` → 204: give or take
//!   away; both are idempotent. An unknown role is a 400 listing the known ones, an unknown user
//!   a 404 naming them.
//!
//! Who may call them is the policy's ([`crate::policy`]): org managers give org roles and every
//! space role of their org, space managers the roles of their space.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use http::StatusCode;
use pier_api::{Role, RoleHolder};

use super::orgs::Who;
use super::ApiState;
use crate::error::{Error, Result};
use crate::roles::Target;

type S = State<ApiState>;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/orgs/{org}/users", get(org_users))
        .route(
            "/v1/orgs/{org}/users/{user}/roles/{role}",
            put(set_org_role).delete(unset_org_role),
        )
        .route("/v1/orgs/{org}/spaces/{space}/users", get(space_users))
        .route(
            "/v1/orgs/{org}/spaces/{space}/users/{user}/roles/{role}",
            put(set_space_role).delete(unset_space_role),
        )
}

fn role(name: &str) -> Result<Role> {
    name.parse::<Role>()
        .map_err(|e| Error::bad_request(e.to_string()))
}

async fn org_users(State(s): S, Path(org): Path<String>) -> Result<Json<Vec<RoleHolder>>> {
    let org = s.tenancy.org(&org)?;
    Ok(Json(s.roles.holders(Target::Org(&org))?))
}

async fn space_users(
    State(s): S,
    Path((org, space)): Path<(String, String)>,
) -> Result<Json<Vec<RoleHolder>>> {
    let (org, space) = s.tenancy.space(&org, &space)?;
    Ok(Json(s.roles.holders(Target::Space(&org, &space))?))
}

fn org_role(
    s: &ApiState,
    who: Who,
    params: (String, String, String),
    set: bool,
) -> Result<Response> {
    let (org, user, r) = params;
    let r = role(&r)?;
    let org = s.tenancy.org(&org)?;
    let at = Target::Org(&org);
    if set {
        s.roles.set(&s.users, &user, at, r, &who.0)?;
    } else {
        s.roles.unset(&s.users, &user, at, r, &who.0)?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn set_org_role(
    State(s): S,
    who: Who,
    Path(p): Path<(String, String, String)>,
) -> Result<Response> {
    org_role(&s, who, p, true)
}

async fn unset_org_role(
    State(s): S,
    who: Who,
    Path(p): Path<(String, String, String)>,
) -> Result<Response> {
    org_role(&s, who, p, false)
}

type SpaceRoleParams = (String, String, String, String);

fn space_role(s: &ApiState, who: Who, params: SpaceRoleParams, set: bool) -> Result<Response> {
    let (org, space, user, r) = params;
    let r = role(&r)?;
    let (org, space) = s.tenancy.space(&org, &space)?;
    let at = Target::Space(&org, &space);
    if set {
        s.roles.set(&s.users, &user, at, r, &who.0)?;
    } else {
        s.roles.unset(&s.users, &user, at, r, &who.0)?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn set_space_role(State(s): S, who: Who, Path(p): Path<SpaceRoleParams>) -> Result<Response> {
    space_role(&s, who, p, true)
}

async fn unset_space_role(
    State(s): S,
    who: Who,
    Path(p): Path<SpaceRoleParams>,
) -> Result<Response> {
    space_role(&s, who, p, false)
}

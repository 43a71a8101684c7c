//! The authorization middleware: every request that passed the token check ([`super::auth`]) is
//! looked up in [`crate::policy::ENDPOINTS`] by its method and route pattern, the org and space it
//! acts in are resolved (from the path, or `?org=&space=` for app endpoints), and the caller's
//! roles there decide: allowed, 404 (what they cannot see, with the same message as what does not
//! exist) or 403. An endpoint missing from the table is refused to everyone.
//!
//! What passes carries the [`Actor`] (who, for events), an [`Access`] (what they can see, for the
//! lists) and, for space endpoints, the resolved [`Scope`] (with whether env values are shown) in
//! its extensions.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{MatchedPath, Query, RawPathParams, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pier_api::ErrorCode;
use serde::Deserialize;

use super::ApiState;
use crate::error::{Error, Result};
use crate::events::Actor;
use crate::policy::{self, Action, Caller, Decision, Endpoint, Level};
use crate::roles::Grants;
use crate::store::{OrgRecord, SpaceRecord};
use crate::tenancy::Scope;
use crate::users::Principal;

/// Who a request is and what they see, for handlers.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    /// `None`: everything (the admin, the router); else what the user's roles show.
    pub grants: Option<Arc<Grants>>,
}

impl Access {
    pub(crate) fn sees_org(&self, org: &OrgRecord) -> bool {
        self.grants.as_ref().is_none_or(|g| g.sees_org(org))
    }

    pub(crate) fn sees_space(&self, space: &SpaceRecord) -> bool {
        self.grants.as_ref().is_none_or(|g| g.sees_space(space))
    }
}

#[derive(Deserialize)]
struct TargetQuery {
    org: Option<String>,
    space: Option<String>,
}

pub(super) async fn authorize(
    State(s): State<ApiState>,
    path: MatchedPath,
    params: RawPathParams,
    mut req: Request,
    next: Next,
) -> Response {
    let params: HashMap<String, String> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match admit(&s, path.as_str(), &params, &mut req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Decides one request and puts [`Access`] (and [`Scope`]) in its extensions when it may pass.
fn admit(
    s: &ApiState,
    path: &str,
    params: &HashMap<String, String>,
    req: &mut Request,
) -> Result<()> {
    let method = req.method().as_str().to_string();
    let ep = policy::endpoint(&method, path).ok_or_else(|| {
        tracing::error!(%method, %path, "endpoint missing from the policy table");
        Error::Other(format!("{method} {path} is not in the policy table"))
    })?;
    let principal = req
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Error::Other("no principal: the token check did not run".into()))?;
    let (caller, actor, grants) = match &principal {
        Principal::Admin => (Caller::Admin, Actor::Admin, None),
        Principal::Router => (Caller::Router, Actor::Platform, None),
        Principal::User { guid, name } => (
            Caller::User,
            Actor::User(name.clone()),
            Some(Arc::new(s.roles.grants(guid)?)),
        ),
    };
    // Refuse the router before resolving anything, so it learns no names either.
    if caller == Caller::Router && ep.action.level() != Level::Platform {
        return Err(forbidden(&principal, ep));
    }
    let (org, space) = target(s, ep, params, req.uri())?;
    let mut standing = grants
        .as_ref()
        .map(|g| {
            g.standing(
                org.as_ref().map(|o| o.guid.as_str()),
                space.as_ref().map(|s| s.guid.as_str()),
            )
        })
        .unwrap_or_default();
    standing.own = matches!(&principal, Principal::User { name, .. }
        if ep.action == Action::ChangePassword && params.get("name") == Some(name));
    match standing.decide(caller, ep.action) {
        Decision::Allow => {}
        Decision::Forbidden => return Err(forbidden(&principal, ep)),
        Decision::Hidden => return Err(hidden(&standing, org.as_ref(), space.as_ref())),
    }
    let sees_env = caller == Caller::Admin || standing.sees_env();
    if let (Some(org), Some(space)) = (org, space) {
        req.extensions_mut().insert(Scope {
            org,
            space,
            actor: actor.clone(),
            sees_env,
        });
    }
    req.extensions_mut().insert(actor);
    req.extensions_mut().insert(Access { grants });
    Ok(())
}

/// The org and space an endpoint acts in: named in the path, or for app endpoints by the query
/// (each `default` when not given). A 404 when one does not exist.
fn target(
    s: &ApiState,
    ep: &Endpoint,
    params: &HashMap<String, String>,
    uri: &http::Uri,
) -> Result<(Option<OrgRecord>, Option<SpaceRecord>)> {
    match ep.action.level() {
        Level::Public | Level::Platform => Ok((None, None)),
        Level::Org => {
            let org = params.get("org").map(String::as_str).unwrap_or_default();
            Ok((Some(s.tenancy.org(org)?), None))
        }
        Level::Space => {
            let (org, space) = match (params.get("org"), params.get("space")) {
                (Some(o), Some(sp)) => s.tenancy.space(o, sp)?,
                _ => {
                    let q: TargetQuery = Query::try_from_uri(uri)
                        .map(|Query(q)| q)
                        .map_err(|e| Error::bad_request(format!("invalid query: {e}")))?;
                    s.tenancy.target(q.org.as_deref(), q.space.as_deref())?
                }
            };
            Ok((Some(org), Some(space)))
        }
    }
}

/// What a user who cannot see the org or space is told: what they would be told if it did not
/// exist.
fn hidden(
    standing: &policy::Standing,
    org: Option<&OrgRecord>,
    space: Option<&SpaceRecord>,
) -> Error {
    let org_name = org.map(|o| o.name.as_str()).unwrap_or_default();
    match space {
        Some(sp) if standing.sees_org() => Error::api(
            ErrorCode::NotFound,
            format!("space {} not found in org {org_name}", sp.name),
        ),
        _ => Error::api(ErrorCode::NotFound, format!("org {org_name} not found")),
    }
}

fn forbidden(who: &Principal, ep: &Endpoint) -> Error {
    let what = format!("{} {}", ep.method, ep.path);
    let msg = match who {
        Principal::Router => super::auth::ROUTER_ONLY.to_string(),
        Principal::Admin => format!("{what} is refused"),
        Principal::User { name, .. } => {
            let roles = ep.action.roles();
            if roles.is_empty() {
                format!(
                    "{name} may not call {what}: it needs {}",
                    ep.action.describe()
                )
            } else {
                let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
                format!(
                    "{name} may not call {what}: it needs the role {} (or the platform admin)",
                    names.join(" or ")
                )
            }
        }
    };
    Error::api(ErrorCode::Forbidden, msg)
}

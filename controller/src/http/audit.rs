//! The audit trail: [`record`], a middleware around the whole API, writes one
//! [`AuditEntry`] per request worth auditing, and `GET /v1/audit` lists them (platform admin, as the policy table says).
//!
//! ```text
//! request ─► record ─► (oauth) ──────────────────────────────► handler ─► answer ─► record writes
//!              │ puts a Seen slot                                                 │ actor: the slot,
//!              └──────► require_token ─► note_principal ─► handler                 │ else the OAuth
//!                       (Principal)      (fills the slot)                          │ note, else unknown
//! ```
//!
//! A request the token middleware refuses (401, or 403 for a call its principal may not make)
//! never reaches `note_principal`; for those, `record` checks the bearer token itself, so a valid
//! token refused is still named and only a missing or bad one is `unknown`.
//!
//! Worth auditing: every `POST`, `PUT`, `PATCH`, `DELETE` (whatever the answer, refusals
//! included) except the router's access-log posts, and every request answered 401 or 403 (a
//! token refused, or a call its principal may not make). Never recorded: bodies (passwords, env
//! values) and query strings (only `org` and `space` are read from it). A login at
//! `/oauth/token` is `login` or `login failed` (`refresh`, `refresh failed` for the refresh grant)
//! with the user name given as its target; `/oauth/revoke` is `logout`.
//!
//! Failing to write an entry is logged, never an error of the request.

use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Query, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use http::{header, Method, StatusCode, Uri};
use pier_api::{AuditEntry, AuditQuery, AUDIT_LIMIT_DEFAULT, AUDIT_LIMIT_MAX};
use time::OffsetDateTime;

use super::ApiState;
use crate::error::{Error, Result};
use crate::users::Principal;

/// The longest path recorded; longer ones are cut.
const MAX_PATH: usize = 256;
/// The largest 201 answer read for the name of what it created.
const MAX_ANSWER: usize = 64 * 1024;

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/v1/audit", get(list))
}

/// The platform admin only: the policy table (`policy::Action::ReadAudit`) decides.
async fn list(
    State(s): State<ApiState>,
    q: std::result::Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>> {
    let Query(q) = q.map_err(|e| {
        Error::bad_request(format!(
            "invalid query: {}; since is an RFC 3339 time like 2026-12-01T10:00:00Z",
            e.body_text()
        ))
    })?;
    let limit = q
        .limit
        .unwrap_or(AUDIT_LIMIT_DEFAULT)
        .clamp(1, AUDIT_LIMIT_MAX);
    Ok(Json(s.audit.list(q.since, limit)?))
}

/// Who the token middleware found, for [`record`] (which runs outside it).
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Option<String>>>);

/// What the OAuth endpoints say about a login, in their answer's extensions (they have no
/// principal): who, if it worked, and what.
#[derive(Clone, Debug)]
pub(super) struct LoginNote {
    pub actor: Option<String>,
    pub action: &'static str,
    pub target: Option<String>,
}

/// Layered inside the token middleware: copies the request's [`Principal`] for [`record`].
pub(super) async fn note_principal(req: Request, next: Next) -> Response {
    if let (Some(seen), Some(p)) = (
        req.extensions().get::<Seen>(),
        req.extensions().get::<Principal>(),
    ) {
        *seen.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(p.actor());
    }
    next.run(req).await
}

fn mutating(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

fn worth_recording(method: &Method, path: &str, status: StatusCode) -> bool {
    let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    // The router posts its access logs every few seconds: noise, unless refused.
    if path == "/v1/router/logs" {
        return refused;
    }
    mutating(method) || refused
}

/// The middleware around the whole API.
pub(super) async fn record(State(s): State<ApiState>, mut req: Request, next: Next) -> Response {
    let time = OffsetDateTime::now_utc();
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let bearer = req.headers().get(header::AUTHORIZATION).cloned();
    let seen = Seen::default();
    req.extensions_mut().insert(seen.clone());
    let resp = next.run(req).await;
    let status = resp.status();
    if !worth_recording(&method, uri.path(), status) {
        return resp;
    }
    let actor = seen.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    // Refused before the principal got through (a call it may not make): who it was anyway.
    let actor = actor.or_else(|| bearer.and_then(|h| token_actor(&s, &h)));
    let note = resp.extensions().get::<LoginNote>().cloned();
    let (resp, answered) = created_name(resp, uri.path()).await;
    let (org, space) = org_and_space(&uri);
    let path: String = uri.path().chars().take(MAX_PATH).collect();
    let entry = AuditEntry {
        time,
        actor: actor
            .or_else(|| note.as_ref().and_then(|n| n.actor.clone()))
            .unwrap_or_else(|| "unknown".into()),
        action: note
            .as_ref()
            .map_or_else(|| format!("{method} {path}"), |n| n.action.to_string()),
        method: method.to_string(),
        target: note
            .and_then(|n| n.target)
            .or_else(|| target_in_path(uri.path()))
            .or(answered),
        path,
        org,
        space,
        status: status.as_u16(),
    };
    if let Err(e) = s.audit.add(&entry).await {
        tracing::warn!(error = %e, action = %entry.action, "could not write the audit entry");
    }
    resp
}

/// Who a refused request's bearer token is, when it is valid.
fn token_actor(s: &ApiState, h: &http::HeaderValue) -> Option<String> {
    let token = h.to_str().ok()?.strip_prefix("Bearer ")?.trim();
    super::auth::principal(s, token).ok().map(|p| p.actor())
}

/// The collections whose next path segment names what a request acts on.
const NAMED: &[&str] = &["apps", "orgs", "spaces", "users", "quotas", "buildpacks"];

/// The name of what the path acts on: the segment after the last named collection
/// (`/v1/apps/web/actions/start` → `web`, `/v1/orgs/acme/spaces/dev/quota` → `dev`); none for
/// a collection.
fn target_in_path(path: &str) -> Option<String> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // A collection itself (`POST /v1/orgs/acme/spaces`): what it made is in the answer.
    if segs.last().is_some_and(|l| NAMED.contains(l)) {
        return None;
    }
    segs.windows(2)
        .rev()
        .find(|w| NAMED.contains(&w[0]))
        .map(|w| decode(w[1]))
}

/// A path segment, percent-decoded when that gives UTF-8 (names are plain ASCII).
fn decode(seg: &str) -> String {
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| seg.to_string())
}

/// The org and space named by the path (`/v1/orgs/{org}[/spaces/{space}]`) or, for the app
/// endpoints, by `?org=&space=` (each `default` when not given, as the endpoints take it).
fn org_and_space(uri: &Uri) -> (Option<String>, Option<String>) {
    let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["v1", "orgs", org, "spaces", space, ..] => (Some(decode(org)), Some(decode(space))),
        ["v1", "orgs", org, ..] => (Some(decode(org)), None),
        ["v1", "apps", ..] | ["v1", "route-mappings"] => {
            #[derive(serde::Deserialize)]
            struct Target {
                org: Option<String>,
                space: Option<String>,
            }
            let q = Query::<Target>::try_from_uri(uri).map(|Query(q)| q).ok();
            let (org, space) = q.map_or((None, None), |q| (q.org, q.space));
            use crate::store::tenancy::{DEFAULT_ORG, DEFAULT_SPACE};
            (
                Some(org.unwrap_or_else(|| DEFAULT_ORG.into())),
                Some(space.unwrap_or_else(|| DEFAULT_SPACE.into())),
            )
        }
        _ => (None, None),
    }
}

/// For a 201 to a collection (`POST /v1/orgs`): the `name` in the answer, which is small JSON
/// with no secrets (the request body, which may have some, is never read). The answer is put
/// back as it was.
async fn created_name(resp: Response, path: &str) -> (Response, Option<String>) {
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let small = http_body::Body::size_hint(resp.body())
        .exact()
        .is_some_and(|n| n <= MAX_ANSWER as u64);
    if resp.status() != StatusCode::CREATED || !json || !small || target_in_path(path).is_some() {
        return (resp, None);
    }
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ANSWER).await else {
        // Cannot happen for an answer of known size under the limit; the body is gone.
        return (Response::from_parts(parts, axum::body::Body::empty()), None);
    };
    let name = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("name")?.as_str().map(str::to_string));
    (
        Response::from_parts(parts, axum::body::Body::from(bytes)),
        name,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_come_from_the_path() {
        for (path, want) in [
            ("/v1/apps/web", Some("web")),
            ("/v1/apps/web/actions/start", Some("web")),
            ("/v1/apps/web/deployments/current/cancel", Some("web")),
            ("/v1/orgs/acme", Some("acme")),
            ("/v1/orgs/acme/quota", Some("acme")),
            ("/v1/orgs/acme/spaces/dev/quota", Some("dev")),
            ("/v1/users/al%40ice/password", Some("al@ice")),
            ("/v1/quotas/small", Some("small")),
            ("/v1/orgs", None),
            ("/v1/orgs/acme/spaces", None),
            ("/v1/packages", None),
            ("/oauth/token", None),
        ] {
            assert_eq!(target_in_path(path).as_deref(), want, "{path}");
        }
    }

    #[test]
    fn org_and_space_from_path_or_query() {
        let at = |u: &str| org_and_space(&u.parse().unwrap());
        let s = |v: &str| Some(v.to_string());
        assert_eq!(at("/v1/orgs/acme/spaces/dev"), (s("acme"), s("dev")));
        assert_eq!(at("/v1/orgs/acme"), (s("acme"), None));
        assert_eq!(at("/v1/apps/web?org=acme&space=dev"), (s("acme"), s("dev")));
        assert_eq!(at("/v1/apps/web"), (s("default"), s("default")));
        assert_eq!(at("/v1/users/alice"), (None, None));
    }

    #[test]
    fn what_is_worth_recording() {
        let ok = StatusCode::OK;
        assert!(worth_recording(&Method::PUT, "/v1/apps/a", ok));
        assert!(worth_recording(
            &Method::DELETE,
            "/v1/apps/a",
            StatusCode::NOT_FOUND
        ));
        assert!(!worth_recording(&Method::GET, "/v1/apps/a", ok));
        assert!(!worth_recording(
            &Method::GET,
            "/v1/apps/a",
            StatusCode::NOT_FOUND
        ));
        assert!(worth_recording(
            &Method::GET,
            "/v1/users",
            StatusCode::FORBIDDEN
        ));
        assert!(worth_recording(
            &Method::GET,
            "/v1/apps",
            StatusCode::UNAUTHORIZED
        ));
        assert!(!worth_recording(
            &Method::POST,
            "/v1/router/logs",
            StatusCode::NO_CONTENT
        ));
        assert!(worth_recording(
            &Method::POST,
            "/v1/router/logs",
            StatusCode::UNAUTHORIZED
        ));
    }
}

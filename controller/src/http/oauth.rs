//! The OAuth 2 endpoints, in the shape Cloud Foundry's UAA serves them (no bearer token needed):
//!
//! - `POST /oauth/token`, form-urlencoded: `grant_type=password&username=U&password=P` or
//!   `grant_type=refresh_token&refresh_token=R`, for the client `cf` with an empty secret (as
//!   HTTP Basic `cf:`, as `client_id=cf`, or not said). Answers [`TokenResponse`]; refusals are
//!   [`OAuthError`]s: 400 `invalid_request` / `unsupported_grant_type` / `invalid_grant`, 401
//!   `unauthorized` (bad credentials, or a locked account, saying until when) / `invalid_client`,
//!   429 `too_many_requests` with `Retry-After` (too many failed logins from the address).
//! - `POST /oauth/revoke` (RFC 7009), form `token=REFRESH`: ends that login session; its access
//!   tokens stop working at their next request. 200 whether or not the token was valid.
//!
//! A failed login's answer is held back [`crate::users::FAILED_LOGIN_DELAY`] (200 ms), so
//! guessing is slow even below the limits. Passwords and tokens are never logged or echoed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Form, Json, Router};
use base64::Engine as _;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use pier_api::{OAuthError, TokenResponse};
use serde::Deserialize;

use super::audit::LoginNote;
use super::ApiState;
use crate::users::{rfc3339, tokens, Grant, LoginError, Users};

type S = State<ApiState>;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/oauth/revoke", post(revoke))
}

/// The token request's fields (no `Debug`: it holds a password).
#[derive(Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    username: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

#[derive(Deserialize)]
struct RevokeForm {
    token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// A refusal in OAuth's shape.
struct Failure {
    status: StatusCode,
    error: &'static str,
    description: String,
    retry_after: Option<u64>,
    /// A failed login: answered after the delay.
    slow: bool,
}

impl Failure {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Failure {
        Failure {
            status,
            error,
            description: description.into(),
            retry_after: None,
            slow: false,
        }
    }

    fn slow(mut self) -> Failure {
        self.slow = true;
        self
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = OAuthError {
            error: self.error.into(),
            error_description: self.description,
        };
        let mut resp = (self.status, no_store(), Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

fn no_store() -> [(header::HeaderName, &'static str); 2] {
    [
        (header::CACHE_CONTROL, "no-store"),
        (header::PRAGMA, "no-cache"),
    ]
}

fn bad_form(e: FormRejection) -> Failure {
    Failure::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        format!(
            "send the request as application/x-www-form-urlencoded ({})",
            e.body_text()
        ),
    )
}

/// The client must be `cf` with an empty secret, if it says who it is.
fn check_client(
    headers: &HeaderMap,
    id: Option<&str>,
    secret: Option<&str>,
) -> Result<(), Failure> {
    let refused = || {
        Failure::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            format!(
                "the only client is {:?} with an empty secret",
                tokens::CLIENT_ID
            ),
        )
    };
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let basic = v
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(refused)?;
        if basic != format!("{}:", tokens::CLIENT_ID) {
            return Err(refused());
        }
    }
    if id.is_some_and(|id| id != tokens::CLIENT_ID) || secret.is_some_and(|s| !s.is_empty()) {
        return Err(refused());
    }
    Ok(())
}

fn client_ip(peer: Option<Extension<ConnectInfo<SocketAddr>>>) -> IpAddr {
    peer.map_or(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        |Extension(ConnectInfo(a))| a.ip(),
    )
}

async fn token(
    State(s): S,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let (refresh, claimed) = match &form {
        Ok(Form(f)) => (
            f.grant_type.as_deref() == Some("refresh_token"),
            f.username.clone(),
        ),
        Err(_) => (false, None),
    };
    let mut resp = answer_token(&s, &headers, peer, form).await;
    // For the audit log: who logged in, or which name failed (never the password).
    let ok = resp.status().is_success();
    let actor = resp.extensions().get::<LoggedIn>().map(|l| l.0.clone());
    let note = LoginNote {
        target: claimed.or_else(|| actor.clone()),
        actor,
        action: match (refresh, ok) {
            (false, true) => "login",
            (false, false) => "login failed",
            (true, true) => "refresh",
            (true, false) => "refresh failed",
        },
    };
    resp.extensions_mut().insert(note);
    resp
}

/// The user a token was granted to, in the answer's extensions.
#[derive(Clone)]
struct LoggedIn(String);

async fn answer_token(
    s: &ApiState,
    headers: &HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    match grant(&s.users, headers, client_ip(peer), form).await {
        Ok(g) => {
            let who = LoggedIn(g.claims.user_name.clone());
            let body = TokenResponse {
                access_token: g.access_token,
                token_type: "bearer".into(),
                refresh_token: g.refresh_token,
                expires_in: g.expires_in,
                scope: g.claims.scope.join(" "),
                jti: g.claims.jti,
            };
            let mut resp = (StatusCode::OK, no_store(), Json(body)).into_response();
            resp.extensions_mut().insert(who);
            resp
        }
        Err(f) => {
            if f.slow {
                tokio::time::sleep(s.users.settings().failed_login_delay).await;
            }
            f.into_response()
        }
    }
}

async fn grant(
    users: &Arc<Users>,
    headers: &HeaderMap,
    from: IpAddr,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Result<Grant, Failure> {
    let Form(f) = form.map_err(bad_form)?;
    check_client(headers, f.client_id.as_deref(), f.client_secret.as_deref())?;
    let missing = |what: &str| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{what} is missing"),
        )
    };
    let users = users.clone();
    let result = match f.grant_type.as_deref() {
        Some("password") => {
            let name = f.username.ok_or_else(|| missing("username"))?;
            let password = f.password.ok_or_else(|| missing("password"))?;
            tokio::task::spawn_blocking(move || users.password_grant(&name, &password, from)).await
        }
        Some("refresh_token") => {
            let refresh = f.refresh_token.ok_or_else(|| missing("refresh_token"))?;
            tokio::task::spawn_blocking(move || users.refresh_grant(&refresh)).await
        }
        Some(other) => {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type {other:?} is not supported: use password or refresh_token"),
            ))
        }
        None => return Err(missing("grant_type")),
    };
    let result = result.map_err(|e| internal(&e.to_string()))?;
    result.map_err(refusal)
}

fn internal(why: &str) -> Failure {
    tracing::error!(error = why, "token request failed");
    Failure::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "internal error in the controller; see its log",
    )
}

fn refusal(e: LoginError) -> Failure {
    match e {
        LoginError::BadCredentials => {
            Failure::new(StatusCode::UNAUTHORIZED, "unauthorized", "Bad credentials").slow()
        }
        LoginError::Locked { until } => Failure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!(
                "Your account has been locked because of too many failed attempts to login; it \
                 is locked until {}",
                rfc3339(until)
            ),
        )
        .slow(),
        LoginError::TooManyFromAddress { retry_after } => Failure {
            retry_after: Some(retry_after),
            ..Failure::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                format!("too many failed logins from this address: try again in {retry_after} s"),
            )
        }
        .slow(),
        LoginError::InvalidGrant(why) => {
            Failure::new(StatusCode::BAD_REQUEST, "invalid_grant", why).slow()
        }
        LoginError::Internal(e) => internal(&e.to_string()),
    }
}

async fn revoke(
    State(s): S,
    headers: HeaderMap,
    form: Result<Form<RevokeForm>, FormRejection>,
) -> Response {
    let f = match form {
        Ok(Form(f)) => f,
        Err(e) => return bad_form(e).into_response(),
    };
    if let Err(e) = check_client(&headers, f.client_id.as_deref(), f.client_secret.as_deref()) {
        return e.into_response();
    }
    let Some(token) = f.token else {
        return Failure::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is missing",
        )
        .into_response();
    };
    match s.users.revoke_session(&token) {
        // RFC 7009: an unknown token is not an error (it is revoked either way).
        Ok(who) => {
            let mut resp = (StatusCode::OK, no_store()).into_response();
            resp.extensions_mut().insert(LoginNote {
                actor: who.clone(),
                action: "logout",
                target: who,
            });
            resp
        }
        Err(e) => internal(&e.to_string()).into_response(),
    }
}

//! Tokens: 256 random bits each, generated on first start. Only their sha256 is stored; a token
//! itself is written once to the data dir (mode 0600) for the operator to read.
//!
//! - The admin token (`DATA_DIR/admin-token`) may do everything.
//! - The router token (`DATA_DIR/router-token`) is what a standalone `pier-router` needs: it may
//!   read the route table (`GET /v1/routes`) and post access logs (`POST /v1/router/logs`), and
//!   nothing else (403), so a router host holds no control over the platform.
//! - A user's access token (a JWT from `POST /oauth/token`, checked by `users/`) is that user;
//!   until roles exist a user may only call `GET /v1/whoami` and change their own password.
//!
//! Every request that passes carries a [`Principal`] in its extensions.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pier_api::ErrorCode;
use sha2::{Digest, Sha256};

use super::ApiState;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::users::{Principal, TokenError};

const HASH_KEY: &str = "admin_token_sha256";
const ROUTER_HASH_KEY: &str = "router_token_sha256";

pub struct TokenSetup {
    /// The token, when it was made by this start (it can't be recovered from the hash later).
    pub new_token: Option<String>,
    pub token_file: PathBuf,
    pub hash: [u8; 32],
}

/// The hashes of the tokens the API accepts.
#[derive(Debug, Clone, Copy)]
pub struct Tokens {
    pub admin: [u8; 32],
    pub router: [u8; 32],
}

/// The endpoints the router token may call.
fn router_may(method: &http::Method, path: &str) -> bool {
    matches!(
        (method, path),
        (&http::Method::GET, "/v1/routes") | (&http::Method::POST, "/v1/router/logs")
    )
}

pub(crate) fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Loads the admin token's hash, generating the token on first start.
pub fn ensure_token(store: &Store, data_dir: &Path) -> Result<TokenSetup> {
    ensure(store, &data_dir.join("admin-token"), HASH_KEY)
}

/// Loads the router token's hash, generating the token on first start.
pub fn ensure_router_token(store: &Store, data_dir: &Path) -> Result<TokenSetup> {
    ensure(store, &data_dir.join("router-token"), ROUTER_HASH_KEY)
}

fn ensure(store: &Store, token_file: &Path, key: &str) -> Result<TokenSetup> {
    let token_file = token_file.to_path_buf();
    if let Some(h) = store.meta_get(key)? {
        if let Ok(h) = <[u8; 32]>::try_from(h.as_slice()) {
            return Ok(TokenSetup {
                new_token: None,
                token_file,
                hash: h,
            });
        }
    }
    let bytes: [u8; 32] = rand::random();
    let token = format!("pier_{}", hex::encode(bytes));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&token_file)?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    let h = hash(&token);
    store.meta_put(key, &h)?;
    Ok(TokenSetup {
        new_token: Some(token),
        token_file,
        hash: h,
    })
}

/// Compares a presented token with the stored hash in constant time.
pub fn check(expected: &[u8; 32], presented: &str) -> bool {
    let got = hash(presented);
    got.iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Lets a request through only with `Authorization: Bearer <token>` of a token that may call
/// that endpoint, and puts who it is ([`Principal`]) in the request's extensions: the admin
/// token, the router token, or a user's access token (a JWT, see `users/`).
pub(super) async fn require_token(
    State(s): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let principal = match presented {
        None => Err(Error::api(
            ErrorCode::Unauthorized,
            "missing token: send `Authorization: Bearer TOKEN`, or run pier login --api URL --token TOKEN",
        )),
        Some(t) => principal(&s, t),
    };
    let principal = match principal {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = may_call(&principal, req.method(), req.uri().path()) {
        return e.into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// Who a presented token is.
pub(super) fn principal(s: &ApiState, token: &str) -> Result<Principal> {
    if check(&s.tokens.admin, token) {
        return Ok(Principal::Admin);
    }
    if check(&s.tokens.router, token) {
        return Ok(Principal::Router);
    }
    // A JWT has three dot-separated parts; Pier's own tokens have none.
    if token.split('.').count() != 3 {
        return Err(Error::api(
            ErrorCode::Unauthorized,
            "the token is wrong; use the admin token pier-controller printed (it is in its data \
             dir's admin-token file): pier login --api URL --token TOKEN, or log in as a user: \
             pier login --api URL -u NAME",
        ));
    }
    s.users.verify_access(token).map_err(|e| match e {
        TokenError::Expired => Error::api(
            ErrorCode::TokenExpired,
            "the access token expired: refresh it at POST /oauth/token, or run pier login again",
        ),
        TokenError::Invalid(why) => Error::api(
            ErrorCode::Unauthorized,
            format!("the access token is not valid: {why}; run pier login again"),
        ),
    })
}

/// Whether `who` may call the endpoint at all. The router token has its two endpoints; a user,
/// until roles and their policy exist, only the ones about themselves. The policy table replaces
/// this function (and [`require_admin`]).
pub(crate) fn may_call(who: &Principal, method: &http::Method, path: &str) -> Result<()> {
    match who {
        Principal::Admin => Ok(()),
        Principal::Router if router_may(method, path) => Ok(()),
        Principal::Router => Err(Error::api(
            ErrorCode::Forbidden,
            "this is the router token: it can read the route table and post access logs, \
             nothing else; use the admin token for this",
        )),
        Principal::User { name, .. } if user_may(method, path, name) => Ok(()),
        Principal::User { .. } => Err(Error::api(
            ErrorCode::Forbidden,
            "a user may for now only see who they are (GET /v1/whoami) and change their own \
             password; the rest needs the admin token until roles come with the policy",
        )),
    }
}

/// The endpoints any logged-in user may call, before roles.
fn user_may(method: &http::Method, path: &str, name: &str) -> bool {
    match *method {
        http::Method::GET => path == "/v1/whoami" || path == "/v1/info",
        http::Method::PUT => path
            .strip_prefix("/v1/users/")
            .and_then(|rest| rest.strip_suffix("/password"))
            .is_some_and(|n| n == name),
        _ => false,
    }
}

/// The one check the users-admin endpoints make: only the platform admin.
pub(crate) fn require_admin(who: &Principal) -> Result<()> {
    match who {
        Principal::Admin => Ok(()),
        _ => Err(Error::api(
            ErrorCode::Forbidden,
            "only the platform admin (the admin token) may manage users; roles come with the policy",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_is_made_once_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let first = ensure_token(&store, dir.path()).unwrap();
        let token = first.new_token.clone().unwrap();
        assert_eq!(token.len(), 5 + 64);
        let mode = std::fs::metadata(&first.token_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(check(&first.hash, &token));
        assert!(!check(&first.hash, "pier_wrong"));
        let again = ensure_token(&store, dir.path()).unwrap();
        assert!(again.new_token.is_none());
        assert_eq!(again.hash, first.hash);
    }
}

//! Tokens: 256 random bits each, generated on first start. Only their sha256 is stored; a token
//! itself is written once to the data dir (mode 0600) for the operator to read.
//!
//! - The admin token (`DATA_DIR/admin-token`) may do everything.
//! - The router token (`DATA_DIR/router-token`) is what a standalone `pier-router` needs: the
//!   policy lets it read the route table (`GET /v1/routes`) and post access logs
//!   (`POST /v1/router/logs`), and nothing else (403), so a router host holds no control over the
//!   platform.
//! - A user's access token (a JWT from `POST /oauth/token`, checked by `users/`) is that user,
//!   with the roles they hold ([`crate::policy`]).
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

/// What the router token is told when it calls anything but its two endpoints.
pub(super) const ROUTER_ONLY: &str = "this is the router token: it can read the route table and \
     post access logs, nothing else; use the admin token for this";

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

/// Lets a request through only with `Authorization: Bearer <token>` of a valid token, and puts
/// who it is ([`Principal`]) in the request's extensions: the admin token, the router token, or a
/// user's access token (a JWT, see `users/`). What each may call is decided next, by the policy
/// ([`super::authorize`]).
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
    if principal == Principal::Router
        && !crate::policy::router_may(req.method().as_str(), req.uri().path())
    {
        return Error::api(ErrorCode::Forbidden, ROUTER_ONLY).into_response();
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

//! The admin token: 256 random bits, generated on first start. Only its sha256 is stored; the token
//! itself is written once to `DATA_DIR/admin-token` (mode 0600) for the operator to read.

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

const HASH_KEY: &str = "admin_token_sha256";

pub struct TokenSetup {
    /// The token, when it was made by this start (it can't be recovered from the hash later).
    pub new_token: Option<String>,
    pub token_file: PathBuf,
    pub hash: [u8; 32],
}

pub(crate) fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Loads the token hash, generating a token on first start.
pub fn ensure_token(store: &Store, data_dir: &Path) -> Result<TokenSetup> {
    let token_file = data_dir.join("admin-token");
    if let Some(h) = store.meta_get(HASH_KEY)? {
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
    store.meta_put(HASH_KEY, &h)?;
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

/// Lets a request through only with `Authorization: Bearer <the admin token>`.
pub(super) async fn require_token(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if check(&s.token_hash, t.trim()) => next.run(req).await,
        Some(_) => Error::api(
            ErrorCode::Unauthorized,
            "the token is wrong; use the admin token pier-controller printed (it is in its data \
             dir's admin-token file): pier login --api URL --token TOKEN",
        )
        .into_response(),
        None => Error::api(
            ErrorCode::Unauthorized,
            "missing token: send `Authorization: Bearer TOKEN`, or run pier login --api URL --token TOKEN",
        )
        .into_response(),
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

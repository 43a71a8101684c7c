//! Users, their logins and their tokens (the HTTP side is `http/oauth.rs` and `http/users.rs`).
//!
//! ```text
//! POST /oauth/token (password) ─► address limit ─► lockout ─► argon2id verify ─► session
//!                                                                                 │
//!        access token: JWT HS256, 600 s, claims as UAA's + sid ◄──────────────────┤
//!        refresh token: "<sid>.<256 random bits, hex>", only its sha256 stored ◄──┘
//! POST /oauth/token (refresh_token) ─► session's hash matches ─► rotated: new refresh token
//! every API request with a JWT ─► signature, exp (Clock), session exists, user exists
//! ```
//!
//! Invariants:
//! - No password, and no refresh token, is ever stored, logged or put in an error: the store
//!   holds argon2id hashes and sha256s. A login for a name that does not exist still verifies
//!   one (fixed) hash, so the time taken does not tell which names exist.
//! - An access token works only while its session does: revoking the session (`pier logout`,
//!   deleting the user) ends its access tokens at their next request, not at their `exp`.
//! - A refresh token works once: refreshing replaces the session's hash in a compare-and-swap,
//!   so of two refreshes with one token only one gets a new pair.
//! - Time is the [`Clock`]'s, so tests move it by hand.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pier_api::{ErrorCode, UserName};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::store::{SessionRecord, Store, UserRecord, UserStore};

pub mod limits;
pub mod password;
pub mod tokens;

pub use limits::{AddressLimiter, Lockout};
pub use tokens::{Claims, Keys, TokenError};

/// Who made a request, as the API's authentication found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The bootstrap admin token: the platform admin.
    Admin,
    /// The router token.
    Router,
    /// A user's access token.
    User { guid: String, name: String },
}

impl Principal {
    /// Who did it, for events and logs: `admin`, `router` or the user's name.
    pub fn actor(&self) -> String {
        match self {
            Principal::Admin => "admin".into(),
            Principal::Router => "router".into(),
            Principal::User { name, .. } => name.clone(),
        }
    }
}

/// The time, in unix seconds.
pub trait Clock: Send + Sync {
    fn now(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }
}

/// A clock that moves only when told (tests).
#[derive(Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    pub fn at(secs: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock(secs.into()))
    }
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Lifetimes and delays.
#[derive(Debug, Clone, Copy)]
pub struct UserSettings {
    pub access_token_ttl_secs: u64,
    pub refresh_token_ttl_secs: u64,
    /// How long a failed login's answer is held back (the handler sleeps it).
    pub failed_login_delay: Duration,
}

pub const DEFAULT_ACCESS_TOKEN_TTL_SECS: u64 = 600;
pub const DEFAULT_REFRESH_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;
pub const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(200);

impl Default for UserSettings {
    fn default() -> Self {
        UserSettings {
            access_token_ttl_secs: DEFAULT_ACCESS_TOKEN_TTL_SECS,
            refresh_token_ttl_secs: DEFAULT_REFRESH_TOKEN_TTL_SECS,
            failed_login_delay: FAILED_LOGIN_DELAY,
        }
    }
}

/// Why a grant was refused (the OAuth handler words it).
#[derive(Debug)]
pub enum LoginError {
    /// Wrong name or password (never says which).
    BadCredentials,
    /// Locked after failed logins, until then (unix seconds).
    Locked {
        until: i64,
    },
    /// Too many failed logins from this address: try again in that many seconds.
    TooManyFromAddress {
        retry_after: u64,
    },
    /// A refresh token that is not (or no longer) valid, and why.
    InvalidGrant(&'static str),
    Internal(Error),
}

impl From<Error> for LoginError {
    fn from(e: Error) -> Self {
        LoginError::Internal(e)
    }
}

/// What a successful grant hands out.
pub struct Grant {
    pub access_token: String,
    pub refresh_token: String,
    pub claims: Claims,
    pub expires_in: u64,
}

const SIGNING_KEY: &str = "access_token_signing_key";

pub struct Users {
    store: UserStore,
    keys: Keys,
    clock: Arc<dyn Clock>,
    settings: UserSettings,
    lockout: Lockout,
    addresses: AddressLimiter,
    /// Verified for names that do not exist.
    dummy_hash: String,
    /// Read-modify-writes of a user record (failures, lock, password) one at a time.
    writes: Mutex<()>,
}

/// The signing key: made at the first start (32 random bytes), kept in `meta`.
fn signing_key(store: &Store) -> Result<Vec<u8>> {
    if let Some(k) = store.meta_get(SIGNING_KEY)?.filter(|k| k.len() == 32) {
        return Ok(k);
    }
    let key: [u8; 32] = rand::random();
    store.meta_put(SIGNING_KEY, &key)?;
    Ok(key.to_vec())
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn response(u: &UserRecord, now: i64) -> pier_api::UserResponse {
    let at = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    pier_api::UserResponse {
        name: u.name.clone(),
        guid: u.guid.clone(),
        created_at: at(u.created_at),
        locked_until: u.locked_until.filter(|&t| t > now).map(at),
    }
}

/// RFC 3339 of unix seconds, for messages.
pub fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

impl Users {
    pub fn open(store: &Store, settings: UserSettings, clock: Arc<dyn Clock>) -> Result<Users> {
        Ok(Users {
            store: store.users()?,
            keys: Keys::new(&signing_key(store)?),
            clock,
            settings,
            lockout: Lockout::default(),
            addresses: AddressLimiter::default(),
            dummy_hash: password::hash("pier: no such user, the same work as for one")?,
            writes: Mutex::new(()),
        })
    }

    pub fn settings(&self) -> UserSettings {
        self.settings
    }

    fn write_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The user named `name`, or a 404 naming them.
    pub fn user(&self, name: &str) -> Result<UserRecord> {
        self.store
            .get(name)?
            .ok_or_else(|| Error::not_found(format!("user {name}")))
    }

    /// Adds a user (argon2id takes ~tens of ms: call from a blocking thread).
    pub fn create(&self, name: &str, password: &str) -> Result<pier_api::UserResponse> {
        let name: UserName = name.parse().map_err(|e: pier_api::UserNameError| {
            Error::api(ErrorCode::InvalidName, e.to_string())
        })?;
        if let Some(why) = pier_api::users::password_problem(password) {
            return Err(Error::bad_request(why));
        }
        if self.store.get(name.as_str())?.is_some() {
            return Err(exists(&name));
        }
        let now = self.clock.now();
        let user = UserRecord {
            guid: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            password_hash: password::hash(password)?,
            created_at: now,
            failed_logins: vec![],
            locked_until: None,
        };
        if !self.store.insert_new(&user)? {
            return Err(exists(&name));
        }
        tracing::info!(user = %name, guid = %user.guid, "user created");
        Ok(response(&user, now))
    }

    /// Every user, by name.
    pub fn list(&self) -> Result<Vec<pier_api::UserResponse>> {
        let now = self.clock.now();
        Ok(self
            .store
            .list()?
            .iter()
            .map(|u| response(u, now))
            .collect())
    }

    /// Deletes the user and revokes every session of theirs; the deleted user's guid.
    pub fn delete(&self, name: &str) -> Result<String> {
        let _w = self.write_lock();
        let guid = self.user(name)?.guid;
        if !self.store.delete(name)? {
            return Err(Error::not_found(format!("user {name}")));
        }
        tracing::info!(user = %name, "user deleted, sessions revoked");
        Ok(guid)
    }

    /// Sets a password: the user's own change needs `old`; the admin's (`by_admin`) does not,
    /// and revokes the user's sessions (an admin resets a password when it may be known).
    pub fn set_password(
        &self,
        name: &str,
        old: Option<&str>,
        new: &str,
        by_admin: bool,
    ) -> Result<()> {
        let user = self.user(name)?;
        if let Some(why) = pier_api::users::password_problem(new) {
            return Err(Error::bad_request(format!(
                "{why}; the password was not changed"
            )));
        }
        if !by_admin {
            let old = old.ok_or_else(|| {
                Error::bad_request(
                    "give the current password (old_password) to change it; the password was \
                     not changed",
                )
            })?;
            if !password::verify(&user.password_hash, old) {
                return Err(Error::api(
                    ErrorCode::Forbidden,
                    "the old password is wrong; the password was not changed",
                ));
            }
        }
        let hash = password::hash(new)?;
        let _w = self.write_lock();
        let mut user = self.user(name)?;
        user.password_hash = hash;
        self.store.put(&user)?;
        if by_admin {
            let n = self.store.delete_sessions_of(&user.guid)?;
            tracing::info!(user = %name, sessions_revoked = n, "password set by the admin");
        } else {
            tracing::info!(user = %name, "password changed by the user");
        }
        Ok(())
    }

    /// The `password` grant: a new session for `name` if `password` is theirs and neither the
    /// address nor the account is held back. Slow (argon2id): call from a blocking thread.
    pub fn password_grant(
        &self,
        name: &str,
        password: &str,
        from: IpAddr,
    ) -> Result<Grant, LoginError> {
        let now = self.clock.now();
        if let Some(retry_after) = self.addresses.retry_after(from, now) {
            return Err(LoginError::TooManyFromAddress { retry_after });
        }
        let found = match name.parse::<UserName>() {
            Ok(n) => self.store.get(n.as_str())?,
            Err(_) => None,
        };
        let Some(user) = found else {
            password::verify(&self.dummy_hash, password);
            self.addresses.fail(from, now);
            return Err(LoginError::BadCredentials);
        };
        if let Some(until) = self.lockout.locked_until(&user, now) {
            self.addresses.fail(from, now);
            return Err(LoginError::Locked { until });
        }
        let ok = password::verify(&user.password_hash, password);
        let _w = self.write_lock();
        // Again under the lock: another login may have counted a failure meanwhile.
        let mut user = match self.store.get(&user.name)? {
            Some(u) if u.guid == user.guid => u,
            _ => return Err(LoginError::BadCredentials),
        };
        if !ok {
            self.addresses.fail(from, now);
            let locked = self.lockout.fail(&mut user, now);
            self.store.put(&user)?;
            tracing::info!(user = %user.name, %from, locked_until = ?locked.map(rfc3339),
                "failed login");
            return Err(match locked {
                Some(until) => LoginError::Locked { until },
                None => LoginError::BadCredentials,
            });
        }
        if self.lockout.succeed(&mut user) {
            self.store.put(&user)?;
        }
        drop(_w);
        let sid = uuid::Uuid::new_v4().simple().to_string();
        let refresh = new_refresh_token(&sid);
        let session = SessionRecord {
            user_guid: user.guid.clone(),
            user_name: user.name.clone(),
            refresh_sha256: sha256_hex(&refresh),
            created_at: now,
            expires_at: now.saturating_add(self.settings.refresh_token_ttl_secs as i64),
        };
        self.store.put_session(&sid, &session)?;
        tracing::info!(user = %user.name, session = %sid, "logged in");
        self.grant(&user, &sid, refresh, "password", now)
    }

    /// The `refresh_token` grant: a new access token and a new refresh token (the old one stops
    /// working).
    pub fn refresh_grant(&self, refresh_token: &str) -> Result<Grant, LoginError> {
        let now = self.clock.now();
        let (sid, session) = self.session_of(refresh_token)?;
        if session.expires_at <= now {
            self.store.delete_session(&sid)?;
            return Err(LoginError::InvalidGrant(
                "the refresh token expired: log in again",
            ));
        }
        let user = match self.store.get(&session.user_name)? {
            Some(u) if u.guid == session.user_guid => u,
            _ => {
                self.store.delete_session(&sid)?;
                return Err(LoginError::InvalidGrant("the user no longer exists"));
            }
        };
        let refresh = new_refresh_token(&sid);
        let next = SessionRecord {
            refresh_sha256: sha256_hex(&refresh),
            ..session.clone()
        };
        if !self.store.swap_session(&sid, &session, &next)? {
            return Err(LoginError::InvalidGrant(
                "the refresh token was already used: log in again",
            ));
        }
        self.grant(&user, &sid, refresh, "refresh_token", now)
    }

    /// The session a refresh token names, if the token is its current one.
    fn session_of(&self, refresh_token: &str) -> Result<(String, SessionRecord), LoginError> {
        const INVALID: &str =
            "the refresh token is not valid (revoked, already used, or never issued here): log in again";
        let sid = refresh_token
            .split_once('.')
            .map(|(sid, _)| sid)
            .ok_or(LoginError::InvalidGrant(INVALID))?;
        let session = self
            .store
            .session(sid)?
            .ok_or(LoginError::InvalidGrant(INVALID))?;
        if !same(&session.refresh_sha256, &sha256_hex(refresh_token)) {
            return Err(LoginError::InvalidGrant(INVALID));
        }
        Ok((sid.to_string(), session))
    }

    /// Revokes the session of a refresh token (RFC 7009): true if there was one.
    pub fn revoke(&self, refresh_token: &str) -> Result<bool> {
        self.revoke_session(refresh_token).map(|who| who.is_some())
    }

    /// Revokes the session of a refresh token: whose it was, if there was one.
    pub fn revoke_session(&self, refresh_token: &str) -> Result<Option<String>> {
        match self.session_of(refresh_token) {
            Ok((sid, session)) => {
                self.store.delete_session(&sid)?;
                tracing::info!(user = %session.user_name, session = %sid, "logged out");
                Ok(Some(session.user_name))
            }
            Err(LoginError::Internal(e)) => Err(e),
            Err(_) => Ok(None),
        }
    }

    fn grant(
        &self,
        user: &UserRecord,
        sid: &str,
        refresh_token: String,
        grant_type: &str,
        now: i64,
    ) -> Result<Grant, LoginError> {
        let ttl = self.settings.access_token_ttl_secs;
        let claims = Claims {
            jti: uuid::Uuid::new_v4().simple().to_string(),
            sub: user.guid.clone(),
            user_id: user.guid.clone(),
            user_name: user.name.clone(),
            scope: tokens::USER_SCOPES.iter().map(|s| s.to_string()).collect(),
            client_id: tokens::CLIENT_ID.into(),
            cid: tokens::CLIENT_ID.into(),
            azp: tokens::CLIENT_ID.into(),
            grant_type: grant_type.into(),
            iat: now,
            exp: now.saturating_add(ttl as i64),
            iss: tokens::ISSUER.into(),
            zid: "uaa".into(),
            aud: vec!["cloud_controller".into(), "openid".into()],
            sid: sid.into(),
        };
        Ok(Grant {
            access_token: self.keys.sign(&claims)?,
            refresh_token,
            claims,
            expires_in: ttl,
        })
    }

    /// Who an access token is: its signature and expiry are good, and its session and user still
    /// exist.
    pub fn verify_access(&self, token: &str) -> Result<Principal, TokenError> {
        let internal = |e: Error| TokenError::Invalid(format!("it could not be checked ({e})"));
        let now = self.clock.now();
        let claims = self.keys.decode(token, now)?;
        match self.store.session(&claims.sid).map_err(internal)? {
            Some(s) if s.user_guid == claims.user_id && s.expires_at > now => {}
            _ => {
                return Err(TokenError::Invalid(
                    "its login session ended (pier logout, or the user was deleted)".into(),
                ))
            }
        }
        match self.store.get(&claims.user_name).map_err(internal)? {
            Some(u) if u.guid == claims.user_id => Ok(Principal::User {
                guid: u.guid,
                name: u.name,
            }),
            _ => Err(TokenError::Invalid("its user no longer exists".into())),
        }
    }

    /// Forgets sessions that can no longer be refreshed.
    pub fn prune_sessions(&self) -> Result<usize> {
        self.store.prune_sessions(self.clock.now())
    }
}

fn exists(name: &UserName) -> Error {
    Error::api(
        ErrorCode::Conflict,
        format!("user {name} already exists; nothing was changed"),
    )
}

/// `<sid>.<256 random bits, hex>`: the session id finds the session, the random part proves it.
fn new_refresh_token(sid: &str) -> String {
    let secret: [u8; 32] = rand::random();
    format!("{sid}.{}", hex::encode(secret))
}

#[cfg(test)]
mod tests;

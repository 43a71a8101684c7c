//! Users, logins and tokens on the wire: the user-admin bodies (`/v1/users`), `/v1/whoami`, and
//! the OAuth 2 answers of `/oauth/token` in the shape Cloud Foundry's UAA gives them, so `cf`-style
//! tools can be pointed at Pier later.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The fewest characters a password may have.
pub const MIN_PASSWORD_LEN: usize = 8;
/// The most characters a password may have (argon2 takes any length; this bounds the work a
/// request can ask for).
pub const MAX_PASSWORD_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserNameError {
    #[error("user name must not be empty")]
    Empty,
    #[error("user name {0:?} is longer than 64 characters")]
    TooLong(String),
    #[error(
        "user name {0:?} is invalid: use lowercase letters, digits, '.', '_', '-' and '@', \
         starting with a letter or digit"
    )]
    Invalid(String),
}

/// A user's login name: 1 to 64 lowercase letters, digits, `.`, `_`, `-` or `@`, starting with a
/// letter or digit (so an e-mail address in lowercase is one, and a name is safe in a URL path).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserName(String);

impl UserName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UserName {
    type Err = UserNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(UserNameError::Empty);
        }
        if s.chars().count() > 64 {
            return Err(UserNameError::TooLong(s.to_string()));
        }
        let allowed = |b: u8| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-' | b'@')
        };
        let first_ok = s
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !first_ok || !s.bytes().all(allowed) {
            return Err(UserNameError::Invalid(s.to_string()));
        }
        Ok(UserName(s.to_string()))
    }
}

impl TryFrom<String> for UserName {
    type Error = UserNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<UserName> for String {
    fn from(n: UserName) -> String {
        n.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a password is refused before it is hashed, if it is.
pub fn password_problem(password: &str) -> Option<String> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_LEN {
        Some(format!(
            "the password is too short: use at least {MIN_PASSWORD_LEN} characters"
        ))
    } else if n > MAX_PASSWORD_LEN {
        Some(format!(
            "the password is too long: use at most {MAX_PASSWORD_LEN} characters"
        ))
    } else {
        None
    }
}

/// `POST /v1/users`. Names are checked by the controller (a bad one is a 400 that says why).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateUserRequest {
    pub name: String,
    pub password: String,
}

/// `PUT /v1/users/{name}/password`: a user changing their own gives the old one; the platform
/// admin sets anyone's without it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPasswordRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_password: Option<String>,
    pub password: String,
}

// Passwords never reach a log through a `{:?}`.
impl fmt::Debug for CreateUserRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateUserRequest")
            .field("name", &self.name)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl fmt::Debug for SetPasswordRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetPasswordRequest")
            .field(
                "old_password",
                &self.old_password.as_ref().map(|_| "<hidden>"),
            )
            .field("password", &"<hidden>")
            .finish()
    }
}

/// A user as `GET /v1/users` and `POST /v1/users` show it (never its password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserResponse {
    pub name: String,
    pub guid: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Set while the account is locked after too many failed logins.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub locked_until: Option<OffsetDateTime>,
}

/// `GET /v1/whoami`: who the presented token is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmIResponse {
    /// The user's name, or `admin` for the admin token.
    pub user_name: String,
    /// The user's guid; empty for the admin token.
    pub user_id: String,
    /// True for the platform admin.
    pub admin: bool,
}

/// The answer of `POST /oauth/token`, as UAA gives it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: String,
    pub refresh_token: String,
    /// Seconds the access token is valid for.
    pub expires_in: u64,
    /// The granted scopes, space-separated.
    pub scope: String,
    /// The access token's id.
    pub jti: String,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"<hidden>")
            .field("refresh_token", &"<hidden>")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .field("jti", &self.jti)
            .finish()
    }
}

/// An OAuth 2 error body (RFC 6749 §5.2), as `/oauth/token` and `/oauth/revoke` answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{error}: {error_description}")]
pub struct OAuthError {
    /// `invalid_grant`, `unauthorized`, `invalid_request`, `unsupported_grant_type`,
    /// `invalid_client` or `too_many_requests`.
    pub error: String,
    pub error_description: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_checked() {
        for ok in ["alice", "a", "bob.smith@example.com", "x_y-z", "0day"] {
            assert_eq!(ok.parse::<UserName>().unwrap().as_str(), ok);
        }
        assert_eq!("".parse::<UserName>(), Err(UserNameError::Empty));
        let long = "a".repeat(65);
        assert!(matches!(
            long.parse::<UserName>(),
            Err(UserNameError::TooLong(_))
        ));
        assert!("a".repeat(64).parse::<UserName>().is_ok());
        for bad in ["Alice", "-bob", ".x", "@x", "a b", "a/b", "é", "a:b", "_a"] {
            let e = bad.parse::<UserName>().unwrap_err();
            assert!(
                e.to_string().contains("lowercase letters, digits"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn passwords_are_checked_for_length() {
        assert!(password_problem("1234567")
            .unwrap()
            .contains("at least 8 characters"));
        assert_eq!(password_problem("12345678"), None);
        assert!(password_problem(&"x".repeat(1025)).is_some());
    }

    #[test]
    fn requests_hide_passwords_from_debug() {
        let r = CreateUserRequest {
            name: "a".into(),
            password: "s3cret-pass".into(),
        };
        assert!(!format!("{r:?}").contains("s3cret"));
        let r = SetPasswordRequest {
            old_password: Some("old-s3cret".into()),
            password: "new-s3cret".into(),
        };
        assert!(!format!("{r:?}").contains("s3cret"));
    }
}

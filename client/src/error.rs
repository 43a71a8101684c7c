//! [`ClientError`]: every way a call can fail, in three families a caller can tell apart.

use std::time::Duration;

use pier_api::{ApiError, ErrorCode};
use reqwest::StatusCode;

/// Why a call failed.
///
/// - The controller refused: [`ClientError::Api`] (a 4xx/5xx with the `{"code", "message"}` body
///   every endpoint sends) or [`ClientError::Http`] (a 4xx/5xx whose body is not one, say from a
///   proxy in front of the controller).
/// - The request never got an answer: [`ClientError::Unreachable`] (nothing accepted the
///   connection), [`ClientError::Timeout`], [`ClientError::Transport`] (cut off, or anything else
///   below HTTP).
/// - The answer came but cannot be used: [`ClientError::Decode`], [`ClientError::TooLarge`].
///
/// [`ClientError::BadUrl`] is the one error a client can have before it sends anything.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{error}")]
    Api {
        url: String,
        status: StatusCode,
        error: ApiError,
    },
    #[error("the controller answered {status}: {body}")]
    Http {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("cannot reach the Pier controller at {url}: is pier-controller running?")]
    Unreachable {
        url: String,
        /// What the connect attempt reported (refused, no route, a connect timeout, ...). Not
        /// part of the message: the message says what to check.
        reason: String,
    },
    #[error("the controller at {url} did not answer within {} s", after.as_secs())]
    Timeout { url: String, after: Duration },
    #[error("the request to {url} failed: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the controller sent an answer that cannot be decoded ({what}): {detail}")]
    Decode { what: &'static str, detail: String },
    #[error("the controller's answer ({what}) is larger than the limit of {limit} bytes")]
    TooLarge { what: &'static str, limit: usize },
    #[error(
        "controller URL {url:?} is not valid ({reason}): use a base URL like http://127.0.0.1:9000"
    )]
    BadUrl { url: String, reason: BaseUrlError },
}

impl ClientError {
    /// The HTTP status, when the controller answered with a refusal.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } | ClientError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API error code, when the controller sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        self.api_error().map(|e| e.code)
    }

    /// The controller's base URL the failed call went to.
    pub fn url(&self) -> Option<&str> {
        match self {
            ClientError::Api { url, .. }
            | ClientError::Http { url, .. }
            | ClientError::Unreachable { url, .. }
            | ClientError::Timeout { url, .. }
            | ClientError::Transport { url, .. }
            | ClientError::BadUrl { url, .. } => Some(url),
            ClientError::Decode { .. } | ClientError::TooLarge { .. } => None,
        }
    }

    /// The decoded refusal, when the controller sent one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api { error, .. } => Some(error),
            _ => None,
        }
    }

    /// True for a missing or refused token (401; 403 from a proxy that checks tokens).
    pub fn is_unauthorized(&self) -> bool {
        matches!(
            self.status(),
            Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        )
    }

    /// True when nothing accepted the connection: the controller is down or elsewhere.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}

/// Why a base URL is refused (see [`check_base_url`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaseUrlError {
    #[error("{0}")]
    Parse(String),
    #[error("the scheme must be http or https")]
    Scheme,
    #[error("it has no host")]
    NoHost,
}

/// Checks a controller base URL: it parses, its scheme is `http` or `https` (TLS comes with the
/// transport's TLS feature; nothing here assumes `http://`), and it names a host.
pub fn check_base_url(base: &str) -> Result<(), BaseUrlError> {
    let url = reqwest::Url::parse(base).map_err(|e| BaseUrlError::Parse(e.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(BaseUrlError::Scheme);
    }
    if url.host_str().is_none() {
        return Err(BaseUrlError::NoHost);
    }
    Ok(())
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

use serde::{Deserialize, Serialize};

/// What went wrong, in a form a program can match on. Each code has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthorized,
    /// The access token (a user's JWT) expired: a client holding a refresh token gets a new one
    /// at `POST /oauth/token` and tries again; otherwise the user logs in again.
    TokenExpired,
    /// The token is valid but may not do this (the router token outside its two endpoints).
    Forbidden,
    NotFound,
    InvalidName,
    InvalidRequest,
    InvalidPackage,
    PayloadTooLarge,
    Conflict,
    /// The change would take a space or an org over its quota; the message names the quota, the
    /// limit, the use and what the change needs.
    QuotaExceeded,
    NoBuildpack,
    StagingFailed,
    Unavailable,
    /// A service broker (or another upstream) failed or answered what the OSB API does not
    /// allow; the message names it and what was wrong.
    BadGateway,
    Internal,
}

impl ErrorCode {
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized | ErrorCode::TokenExpired => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::InvalidName | ErrorCode::InvalidRequest => 400,
            ErrorCode::InvalidPackage
            | ErrorCode::NoBuildpack
            | ErrorCode::StagingFailed
            | ErrorCode::QuotaExceeded => 422,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Conflict => 409,
            ErrorCode::Unavailable => 503,
            ErrorCode::BadGateway => 502,
            ErrorCode::Internal => 500,
        }
    }
}

/// The JSON body of every error the API returns: `{"code": "not_found", "message": "..."}`.
/// Messages say what failed and, where there is one, what to do about it; they carry no internals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

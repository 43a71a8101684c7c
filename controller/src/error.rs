//! The controller's errors and how each maps onto the API's error codes.

use axum::response::{IntoResponse, Response};
use axum::Json;
use pier_api::{ApiError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A refusal the user can act on; the message is shown as is.
    #[error("{0}")]
    Api(#[from] ApiError),
    #[error("store: {0}")]
    Store(#[from] sled::Error),
    #[error("runtime: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn api(code: ErrorCode, message: impl Into<String>) -> Error {
        Error::Api(ApiError::new(code, message))
    }
    pub fn not_found(what: impl std::fmt::Display) -> Error {
        Error::api(ErrorCode::NotFound, format!("{what} not found"))
    }
    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::api(ErrorCode::InvalidRequest, message)
    }

    /// What the user sees: refusals as they are, internal failures without internals, except
    /// that a full disk says so (the user can act on it; "internal error" would hide it).
    pub fn to_api(&self) -> ApiError {
        match self {
            Error::Api(e) => e.clone(),
            other if other.is_no_space() => ApiError::new(
                ErrorCode::Unavailable,
                "the controller's data dir has no space left on its disk: nothing was stored; \
                 free some space there (or grow the disk) and try again",
            ),
            other => ApiError::new(
                ErrorCode::Internal,
                format!(
                    "internal error in the controller ({}); see its log",
                    other.kind()
                ),
            ),
        }
    }

    /// ENOSPC (or a quota's EDQUOT) anywhere in the error.
    pub fn is_no_space(&self) -> bool {
        fn io(e: &std::io::Error) -> bool {
            matches!(e.raw_os_error(), Some(28 | 122))
                || e.kind() == std::io::ErrorKind::StorageFull
                || e.to_string().contains("No space left on device")
        }
        match self {
            Error::Io(e) => io(e),
            Error::Store(sled::Error::Io(e)) => io(e),
            Error::Runtime(e) => e.to_string().contains("No space left on device"),
            Error::Other(s) => s.contains("No space left on device"),
            _ => false,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Error::Api(_) => "api",
            Error::Store(_) => "store",
            Error::Runtime(_) => "docker",
            Error::Io(_) => "i/o",
            Error::Json(_) => "encoding",
            Error::Other(_) => "other",
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = self.to_api();
        let status = http::StatusCode::from_u16(body.code.status())
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        (status, Json(body)).into_response()
    }
}

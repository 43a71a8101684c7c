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
    /// A refusal of `/oauth/token` or `/oauth/revoke`, in OAuth's `{"error", "error_description"}`.
    #[error("{}", error.error_description)]
    OAuth {
        url: String,
        status: StatusCode,
        error: pier_api::OAuthError,
    },
    /// The access token expired and the refresh token could not renew it.
    #[error("the login at {url} has expired and could not be renewed ({reason}): run `pier login` again")]
    LoginExpired { url: String, reason: String },
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
    #[error("TLS with the controller at {url} failed: {reason}")]
    Tls {
        url: String,
        /// What went wrong, in words: the certificate is not trusted, is for another name, has
        /// expired; or the other end does not speak TLS.
        reason: String,
        /// The certificate is not signed by a CA the client trusts: a CA certificate to add
        /// would fix it.
        untrusted: bool,
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
    #[error("the CA certificate file {} cannot be used: {reason}", file.display())]
    CaCert {
        file: std::path::PathBuf,
        reason: String,
    },
    #[error(
        "controller URL {url:?} is not valid ({reason}): use a base URL like http://127.0.0.1:9000"
    )]
    BadUrl { url: String, reason: BaseUrlError },
}

impl ClientError {
    /// The HTTP status, when the controller answered with a refusal.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. }
            | ClientError::Http { status, .. }
            | ClientError::OAuth { status, .. } => Some(*status),
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
            | ClientError::OAuth { url, .. }
            | ClientError::LoginExpired { url, .. }
            | ClientError::Http { url, .. }
            | ClientError::Unreachable { url, .. }
            | ClientError::Tls { url, .. }
            | ClientError::Timeout { url, .. }
            | ClientError::Transport { url, .. }
            | ClientError::BadUrl { url, .. } => Some(url),
            ClientError::Decode { .. }
            | ClientError::TooLarge { .. }
            | ClientError::CaCert { .. } => None,
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

    /// True when the TLS handshake failed: an untrusted or wrong certificate, or no TLS there.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientError::Tls { .. })
    }
}

/// The TLS failure somewhere in `e`'s chain of causes, said in words, if there is one.
pub(crate) fn tls_failure(e: &reqwest::Error) -> Option<(String, bool)> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some((describe_tls(tls), is_untrusted(tls)));
        }
        // io::Error's `source` skips the error it wraps (hyper-rustls nests two): descend into it.
        next = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

fn is_untrusted(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature
        )
    )
}

fn describe_tls(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer | C::BadSignature => format!(
                "the controller's certificate is not trusted: it is not signed by a CA this \
                 client knows ({c:?})"
            ),
            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                "the controller's certificate is not valid for this host name ({c:?}): use the \
                 name the certificate was issued for"
            ),
            C::Expired | C::ExpiredContext { .. } => {
                format!("the controller's certificate has expired ({c:?})")
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                format!("the controller's certificate is not valid yet ({c:?})")
            }
            c => format!("the controller's certificate is not valid: {c:?}"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "the other end does not speak TLS ({e}): is the controller serving https? Use http:// \
             if it was started without --tls-cert"
        ),
        e => e.to_string(),
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

/// True when `base` is `http://` to a host that is not this machine's loopback: a token sent
/// there crosses a network in clear text. Loopback is `localhost` (and `*.localhost`, RFC 6761),
/// 127.0.0.0/8 and `::1` (also as `::ffff:127.x.y.z`); any other name or address is remote,
/// without a DNS lookup. An unparsable URL is not judged (it is refused elsewhere).
pub fn is_cleartext_remote(base: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(base.trim()) else {
        return false;
    };
    if url.scheme() != "http" {
        return false;
    }
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => !ip.to_canonical().is_loopback(),
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            !(name == "localhost" || name.ends_with(".localhost"))
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleartext_is_judged_by_scheme_and_host() {
        for remote in [
            "http://10.0.0.5:9000",
            "http://192.0.2.2:9000/",
            "http://pier.example.com",
            "http://[2001:db8::1]:9000",
            "http://0.0.0.0:9000",
            "http://localhost.example.com",
        ] {
            assert!(is_cleartext_remote(remote), "{remote} is remote");
        }
        for local in [
            "http://127.0.0.1:9000",
            "http://127.0.0.2:9000",
            "http://localhost:9000",
            "http://LOCALHOST.:9000",
            "http://api.localhost:9000",
            "http://[::1]:9000",
            "http://[::ffff:127.0.0.1]:9000",
            "https://10.0.0.5:9000",
            "https://pier.example.com",
            "not a url",
        ] {
            assert!(
                !is_cleartext_remote(local),
                "{local} is not cleartext to a remote"
            );
        }
    }
}

//! The CLI's side of [`pier_client`]: a client for the configured controller, and how the
//! client's errors read to someone at a terminal (which command to run next).

use std::sync::atomic::{AtomicBool, Ordering};

use pier_api::ErrorCode;
use pier_client::StatusCode;
pub use pier_client::{Client, ClientError};

use crate::config::Target;

/// A client that introduces itself as this `pier`, for `target`'s controller, with its CA
/// certificate. Warns (once per command, on stderr) before a token goes in clear text to a host
/// other than this one, and when certificates are not checked.
pub fn connect(target: &Target) -> Result<Client, ClientError> {
    static CLEARTEXT_WARNED: AtomicBool = AtomicBool::new(false);
    static SKIP_WARNED: AtomicBool = AtomicBool::new(false);
    if let Some(warning) = cleartext_warning(target) {
        if !CLEARTEXT_WARNED.swap(true, Ordering::Relaxed) {
            eprintln!("{warning}");
        }
    }
    if target.skip_ssl_validation && !SKIP_WARNED.swap(true, Ordering::Relaxed) {
        eprintln!(
            "warning: not checking the certificate of {} (logged in with --skip-ssl-validation); \
             anyone in between can read the token",
            target.api
        );
    }
    let mut builder = Client::builder(&target.api);
    if let Some((refresh, path)) = &target.session {
        let path = path.clone();
        builder = builder.session(Some(refresh.clone()), move |t| save_renewed(&path, t));
    }
    builder
        .token(target.token.clone())
        .ca_cert_file(target.ca_cert.clone())
        .danger_skip_tls_verify(target.skip_ssl_validation)
        .space(target.org.clone(), target.space.clone())
        .user_agent(concat!("pier/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Writes a renewed pair into the config file (a failure is said, not fatal: this command has
/// its token; the next one would log in again).
fn save_renewed(path: &std::path::Path, t: &pier_api::TokenResponse) {
    let saved = crate::config::load(path).and_then(|mut file| {
        file.token = Some(t.access_token.clone());
        file.refresh_token = Some(t.refresh_token.clone());
        crate::config::save(path, &file)
    });
    if let Err(e) = saved {
        eprintln!(
            "warning: cannot save the renewed login to {}: {e:#}",
            path.display()
        );
    }
}

/// The warning due before `target`'s token is sent, if it would cross a network unencrypted.
pub fn cleartext_warning(target: &Target) -> Option<String> {
    (target.token.is_some() && pier_client::is_cleartext_remote(&target.api)).then(|| {
        format!(
            "warning: sending the token in clear text to {}; use https (pier-controller \
             --tls-cert/--tls-key)",
            target.api
        )
    })
}

/// The message `pier` prints instead of the client's own, where it has a better one.
pub fn message(e: &ClientError) -> Option<String> {
    match e {
        ClientError::LoginExpired { .. } => None,
        e if e.code() == Some(ErrorCode::TokenExpired) => Some(format!(
            "your login at {} has expired: run `pier login --api {} -u NAME` again",
            e.url().unwrap_or_default(),
            e.url().unwrap_or_default()
        )),
        e if e
            .api_error()
            .is_some_and(|a| a.message.contains("access token")) =>
        {
            Some(format!(
                "the controller refused your login ({}): run `pier login --api {} -u NAME` again",
                e,
                e.url().unwrap_or_default()
            ))
        }
        e if e.status() == Some(StatusCode::UNAUTHORIZED) => Some(format!(
            "the controller refused the token: run `pier login --api {} --token TOKEN` with the \
             token pier-controller printed",
            e.url().unwrap_or_default()
        )),
        ClientError::Decode { what, detail } => Some(format!(
            "the controller sent an answer pier cannot read ({what}): {detail}"
        )),
        ClientError::Tls { url, reason, .. } => Some(format!(
            "cannot connect securely to the controller at {url}: {reason}"
        )),
        _ => None,
    }
}

/// What to do next, where there is something.
pub fn hint(e: &ClientError) -> Option<String> {
    if e.is_unreachable() {
        return Some(
            "start it, or point pier at the right address with `pier login --api URL --token \
             TOKEN` or PIER_API"
                .to_string(),
        );
    }
    if let ClientError::Tls {
        untrusted: true, ..
    }
    | ClientError::CaCert { .. } = e
    {
        return Some(
            "log in again with `pier login --api URL --token TOKEN --ca-cert FILE`, FILE being \
             the CA certificate (or the self-signed certificate) pier-controller serves, or set \
             PIER_CA_CERT"
                .to_string(),
        );
    }
    (e.code() == Some(ErrorCode::NotFound)).then(|| "`pier apps` lists the apps that exist".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_token_says_how_to_log_in() {
        let e = ClientError::Http {
            url: "http://c:9000".into(),
            status: StatusCode::UNAUTHORIZED,
            body: "Unauthorized".into(),
        };
        assert_eq!(
            message(&e).unwrap(),
            "the controller refused the token: run `pier login --api http://c:9000 --token TOKEN` \
             with the token pier-controller printed"
        );
        assert_eq!(hint(&e), None);
    }

    #[test]
    fn only_a_token_in_clear_text_to_another_host_warns() {
        let target = |api: &str, token: Option<&str>| Target {
            api: api.into(),
            token: token.map(Into::into),
            ..Target::default()
        };
        assert_eq!(
            cleartext_warning(&target("http://10.0.0.5:9000", Some("t"))).unwrap(),
            "warning: sending the token in clear text to http://10.0.0.5:9000; use https \
             (pier-controller --tls-cert/--tls-key)"
        );
        assert_eq!(
            cleartext_warning(&target("http://10.0.0.5:9000", None)),
            None
        );
        assert_eq!(
            cleartext_warning(&target("https://10.0.0.5:9000", Some("t"))),
            None
        );
        assert_eq!(
            cleartext_warning(&target("http://127.0.0.1:9000", Some("t"))),
            None
        );
        assert_eq!(
            cleartext_warning(&target("http://localhost:9000", Some("t"))),
            None
        );
    }
}

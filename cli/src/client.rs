//! The CLI's side of [`pier_client`]: a client for the configured controller, and how the
//! client's errors read to someone at a terminal (which command to run next).

use pier_api::ErrorCode;
use pier_client::StatusCode;
pub use pier_client::{Client, ClientError};

/// A client that introduces itself as this `pier`.
pub fn connect(api: &str, token: Option<String>) -> Result<Client, ClientError> {
    Client::builder(api)
        .token(token)
        .user_agent(concat!("pier/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The message `pier` prints instead of the client's own, where it has a better one.
pub fn message(e: &ClientError) -> Option<String> {
    match e {
        e if e.status() == Some(StatusCode::UNAUTHORIZED) => Some(format!(
            "the controller refused the token: run `pier login --api {} --token TOKEN` with the \
             token pier-controller printed",
            e.url().unwrap_or_default()
        )),
        ClientError::Decode { what, detail } => Some(format!(
            "the controller sent an answer pier cannot read ({what}): {detail}"
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
}

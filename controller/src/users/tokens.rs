//! Access tokens: JWTs signed with HS256 under one 32-byte key the controller makes at its first
//! start (kept in the store's `meta` tree), with claims in the shape UAA gives them, plus `sid`,
//! the login session they belong to.
//!
//! Decoding refuses any algorithm but HS256 (a header saying `none`, or RS256, is refused before
//! the signature is looked at), a bad signature, and a token whose `exp` is not after the
//! [`Clock`](super::Clock)'s now (no leeway). Whether the session and the user still exist is
//! the caller's check ([`super::Users::verify_access`]).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The `iss` of every token.
pub const ISSUER: &str = "pier";
/// The OAuth client every login is for (Cloud Foundry's CLI's, with an empty secret).
pub const CLIENT_ID: &str = "cf";
/// What a user's token may be used for, as UAA names it.
pub const USER_SCOPES: [&str; 3] = ["openid", "cloud_controller.read", "cloud_controller.write"];

/// An access token's claims, as UAA's (RFC 7519 names where there is one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub jti: String,
    /// The user's guid.
    pub sub: String,
    pub user_id: String,
    pub user_name: String,
    pub scope: Vec<String>,
    pub client_id: String,
    pub cid: String,
    pub azp: String,
    /// `password` or `refresh_token`.
    pub grant_type: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub zid: String,
    pub aud: Vec<String>,
    /// The login session: revoking it ends its access tokens too.
    pub sid: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Expired,
    Invalid(String),
}

/// The signing key, both ways.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Keys {
    pub fn new(secret: &[u8]) -> Keys {
        Keys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    pub fn sign(&self, claims: &Claims) -> Result<String> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| Error::Other(format!("cannot sign an access token: {e}")))
    }

    /// The claims of a token this key signed, that has not expired at `now` (unix seconds).
    pub fn decode(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(format!("it is not a JWT ({e})")))?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::Invalid(format!(
                "it is signed with {:?}; Pier's tokens are HS256",
                header.alg
            )));
        }
        let mut v = Validation::new(Algorithm::HS256);
        // Expiry is checked against the controller's clock below, exactly (leeway 0).
        v.validate_exp = false;
        v.leeway = 0;
        v.validate_aud = false;
        v.set_required_spec_claims(&["exp", "iat", "sub", "iss"]);
        v.set_issuer(&[ISSUER]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map_err(|e| {
            TokenError::Invalid(match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    "its signature is not this controller's".to_string()
                }
                _ => format!("it cannot be read ({e})"),
            })
        })?;
        if now >= data.claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    use super::*;

    pub(crate) fn claims(exp: i64) -> Claims {
        Claims {
            jti: "j".into(),
            sub: "g".into(),
            user_id: "g".into(),
            user_name: "alice".into(),
            scope: vec!["openid".into()],
            client_id: CLIENT_ID.into(),
            cid: CLIENT_ID.into(),
            azp: CLIENT_ID.into(),
            grant_type: "password".into(),
            iat: exp - 600,
            exp,
            iss: ISSUER.into(),
            zid: "uaa".into(),
            aud: vec!["cloud_controller".into()],
            sid: "s".into(),
        }
    }

    /// A token with the given header and the claims, signed (or not) by hand.
    pub(crate) fn hand_made(header: &str, claims: &Claims, signature: &str) -> String {
        format!(
            "{}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
        )
    }

    #[test]
    fn a_signed_token_decodes_until_it_expires() {
        let keys = Keys::new(&[7; 32]);
        let t = keys.sign(&claims(1000)).unwrap();
        assert_eq!(keys.decode(&t, 999).unwrap(), claims(1000));
        assert_eq!(keys.decode(&t, 1000), Err(TokenError::Expired), "no leeway");
        assert_eq!(keys.decode(&t, 5000), Err(TokenError::Expired));
    }

    #[test]
    fn another_key_none_and_other_algorithms_are_refused() {
        let keys = Keys::new(&[7; 32]);
        let other = Keys::new(&[8; 32]).sign(&claims(1000)).unwrap();
        match keys.decode(&other, 1) {
            Err(TokenError::Invalid(why)) => assert!(why.contains("signature"), "{why}"),
            r => panic!("{r:?}"),
        }
        let none = hand_made(r#"{"alg":"none","typ":"JWT"}"#, &claims(1000), "");
        assert!(matches!(keys.decode(&none, 1), Err(TokenError::Invalid(_))));
        // HS512 under the same secret: a valid signature, a refused algorithm.
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims(1000),
            &EncodingKey::from_secret(&[7; 32]),
        )
        .unwrap();
        match keys.decode(&hs512, 1) {
            Err(TokenError::Invalid(why)) => assert!(why.contains("HS512"), "{why}"),
            r => panic!("{r:?}"),
        }
        // A good token whose claims were changed after signing.
        let good = keys.sign(&claims(1000)).unwrap();
        let sig = good.rsplit('.').next().unwrap();
        let mut forged = claims(1000);
        forged.user_name = "admin".into();
        let forged = hand_made(r#"{"alg":"HS256","typ":"JWT"}"#, &forged, sig);
        assert!(matches!(
            keys.decode(&forged, 1),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            keys.decode("not.a.jwt", 1),
            Err(TokenError::Invalid(_))
        ));
    }
}

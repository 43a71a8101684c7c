//! The client renews a user's expired access token once, with its refresh token, and says to log
//! in again when that fails. Against a fake controller on 127.0.0.1:0.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: panicking is failing

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use pier_client::{Client, ClientError};

#[derive(Default)]
struct Seen {
    refreshes: Mutex<Vec<String>>,
}

async fn whoami(headers: HeaderMap) -> Response {
    if headers["authorization"] == "Bearer new-access" {
        return Json(serde_json::json!({"user_name": "alice", "user_id": "g", "admin": false}))
            .into_response();
    }
    let body = serde_json::json!({"code": "token_expired", "message": "the access token expired"});
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

async fn token(
    State(seen): State<Arc<Seen>>,
    Form(f): Form<std::collections::HashMap<String, String>>,
) -> Response {
    let r = f.get("refresh_token").cloned().unwrap_or_default();
    seen.refreshes.lock().unwrap().push(r.clone());
    if f.get("grant_type").map(String::as_str) == Some("refresh_token") && r == "r1" {
        return Json(serde_json::json!({
            "access_token": "new-access", "token_type": "bearer", "refresh_token": "r2",
            "expires_in": 600, "scope": "openid", "jti": "j"
        }))
        .into_response();
    }
    let body = serde_json::json!({"error": "invalid_grant", "error_description": "the refresh token is not valid"});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

async fn fake() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/oauth/token", post(token))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test]
async fn an_expired_token_is_renewed_once_and_the_new_pair_handed_over() {
    let (url, seen) = fake().await;
    let saved = Arc::new(Mutex::new(None));
    let s = saved.clone();
    let client = Client::builder(&url)
        .token(Some("old-access".into()))
        .session(Some("r1".into()), move |t| {
            *s.lock().unwrap() = Some((t.access_token.clone(), t.refresh_token.clone()))
        })
        .build()
        .unwrap();
    assert_eq!(client.whoami().await.unwrap().user_name, "alice");
    assert_eq!(client.token().as_deref(), Some("new-access"));
    assert_eq!(
        saved.lock().unwrap().clone(),
        Some(("new-access".to_string(), "r2".to_string()))
    );
    // Now current: no second refresh.
    client.whoami().await.unwrap();
    assert_eq!(
        seen.refreshes.lock().unwrap().clone(),
        vec!["r1".to_string()]
    );
}

#[tokio::test]
async fn a_failed_renewal_says_to_log_in_again() {
    let (url, _) = fake().await;
    let client = Client::builder(&url)
        .token(Some("old-access".into()))
        .session(Some("revoked".into()), |_| panic!("nothing to save"))
        .build()
        .unwrap();
    let e = client.whoami().await.unwrap_err();
    assert!(matches!(e, ClientError::LoginExpired { .. }), "{e:?}");
    assert!(e.to_string().contains("run `pier login` again"), "{e}");
    assert!(e.to_string().contains("not valid"), "{e}");
    // Without a refresh token the expiry is the controller's refusal as it is.
    let plain = Client::new(&url, Some("old-access".into())).unwrap();
    let e = plain.whoami().await.unwrap_err();
    assert_eq!(e.code(), Some(pier_api::ErrorCode::TokenExpired), "{e:?}");
}

//! Handler tests of users, logins and tokens: the real axum router with `oneshot`, a temporary
//! store, and (for expiry) a clock moved by hand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Request, StatusCode};
use serde_json::{json, Value};

use crate::testkit::TestPlatform;
use crate::users::{ManualClock, UserSettings, Users};

const PW: &str = "Tr0ub4dor-and-3";

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Value,
    took: Duration,
}

async fn form(p: &TestPlatform, path: &str, body: &str, basic: bool) -> Answer {
    use tower::ServiceExt as _;
    let mut req = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/x-www-form-urlencoded");
    if basic {
        req = req.header("authorization", "Basic Y2Y6"); // cf:
    }
    let req = req.body(Body::from(body.to_string())).unwrap();
    let started = Instant::now();
    let resp = p.router.clone().oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        took: started.elapsed(),
    }
}

async fn login(p: &TestPlatform, name: &str, pw: &str) -> Answer {
    form(
        p,
        "/oauth/token",
        &format!("grant_type=password&username={name}&password={pw}"),
        true,
    )
    .await
}

async fn create_user(p: &TestPlatform, name: &str) {
    let (s, v) = p
        .call(
            "POST",
            "/v1/users",
            Some(json!({"name": name, "password": PW})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// Swaps the platform's users service for one on a clock the test moves.
fn manual_clock(p: &mut TestPlatform) -> Arc<ManualClock> {
    let clock = ManualClock::at(time::OffsetDateTime::now_utc().unix_timestamp());
    let users = Users::open(&p.store, UserSettings::default(), clock.clone()).unwrap();
    p.parts.api.users = Arc::new(users);
    p.router = crate::http::router(p.parts.api.clone());
    clock
}

#[tokio::test]
async fn a_password_login_answers_as_uaa_and_the_token_is_the_user() {
    let p = TestPlatform::new().await;
    create_user(&p, "alice").await;
    let a = login(&p, "alice", PW).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["token_type"], "bearer");
    assert_eq!(a.body["expires_in"], 600);
    assert_eq!(
        a.body["scope"],
        "openid cloud_controller.read cloud_controller.write"
    );
    assert!(a.body["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert_eq!(a.headers["cache-control"], "no-store");
    let access = a.body["access_token"].as_str().unwrap().to_string();
    assert_eq!(access.split('.').count(), 3, "a JWT");
    let (s, v) = p.call_with("GET", "/v1/whoami", None, Some(&access)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["user_name"], "alice");
    assert_eq!(v["admin"], false);
    assert!(!v["user_id"].as_str().unwrap().is_empty());
    let (_, v) = p.call("GET", "/v1/whoami", None).await;
    assert_eq!(
        v,
        json!({"user_name": "admin", "user_id": "", "admin": true})
    );
    // With no role: the platform admin's endpoints are refused saying what they need; the
    // default space is not seen (404, as if it did not exist).
    for (m, path) in [
        ("GET", "/v1/users"),
        ("POST", "/v1/users"),
        ("DELETE", "/v1/users/alice"),
        ("PUT", "/v1/users/bob/password"),
        ("GET", "/v1/routes"),
    ] {
        let (s, v) = p.call_with(m, path, None, Some(&access)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{m} {path}: {v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("alice may not call"),
            "{v}"
        );
    }
    let (s, v) = p.call_with("GET", "/v1/apps", None, Some(&access)).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["message"], "org default not found");
    // A refresh: a new pair, the old refresh token refused.
    let refresh = a.body["refresh_token"].as_str().unwrap();
    let b = form(
        &p,
        "/oauth/token",
        &format!("grant_type=refresh_token&refresh_token={refresh}"),
        false,
    )
    .await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.body);
    assert_ne!(b.body["refresh_token"], a.body["refresh_token"]);
    let again = form(
        &p,
        "/oauth/token",
        &format!("grant_type=refresh_token&refresh_token={refresh}"),
        false,
    )
    .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(again.body["error"], "invalid_grant");
}

#[tokio::test]
async fn bad_token_requests_are_refused_in_oauth_shape() {
    let p = TestPlatform::new().await;
    create_user(&p, "alice").await;
    let cases = [
        (
            "grant_type=client_credentials",
            true,
            400,
            "unsupported_grant_type",
        ),
        ("username=alice", true, 400, "invalid_request"),
        (
            "grant_type=password&username=alice",
            true,
            400,
            "invalid_request",
        ),
        (
            "grant_type=refresh_token&refresh_token=x.y",
            true,
            400,
            "invalid_grant",
        ),
        (
            "grant_type=password&username=alice&password=x&client_id=other",
            false,
            401,
            "invalid_client",
        ),
        (
            "grant_type=password&username=alice&password=wrong-one",
            true,
            401,
            "unauthorized",
        ),
        (
            "grant_type=password&username=nobody&password=wrong-one",
            true,
            401,
            "unauthorized",
        ),
    ];
    for (body, basic, status, error) in cases {
        let a = form(&p, "/oauth/token", body, basic).await;
        assert_eq!(a.status.as_u16(), status, "{body}: {}", a.body);
        assert_eq!(a.body["error"], error, "{body}");
        assert!(a.body["error_description"].is_string(), "{body}");
    }
    // The same answer whether or not the name exists.
    let known = login(&p, "alice", "wrong-one").await;
    let unknown = login(&p, "nobody", "wrong-one").await;
    assert_eq!(known.body, unknown.body);
}

#[tokio::test]
async fn five_failed_logins_lock_the_account_and_say_until_when() {
    let p = TestPlatform::new().await;
    create_user(&p, "alice").await;
    for _ in 0..4 {
        let a = login(&p, "alice", "not-the-password").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(a.body["error_description"], "Bad credentials");
        assert!(a.took >= Duration::from_millis(200), "slowed: {:?}", a.took);
    }
    let a = login(&p, "alice", "not-the-password").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let msg = a.body["error_description"].as_str().unwrap();
    assert!(msg.contains("locked") && msg.contains("until 20"), "{msg}");
    let until = msg.rsplit(' ').next().unwrap();
    let until =
        time::OffsetDateTime::parse(until, &time::format_description::well_known::Rfc3339).unwrap();
    let in_secs = (until - time::OffsetDateTime::now_utc()).whole_seconds();
    assert!((295..=300).contains(&in_secs), "{in_secs}");
    // The right password is refused while locked; the admin sees the lock.
    let a = login(&p, "alice", PW).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.body["error_description"]
        .as_str()
        .unwrap()
        .contains("locked"));
    let (_, users) = p.call("GET", "/v1/users", None).await;
    assert!(users[0]["locked_until"].is_string(), "{users}");
}

#[tokio::test]
async fn ten_failures_from_one_address_answer_429_with_retry_after() {
    let p = TestPlatform::new().await;
    create_user(&p, "alice").await;
    for i in 0..10 {
        let a = login(&p, &format!("nobody{i}"), "whatever-it-is").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{i}");
    }
    let a = login(&p, "alice", PW).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
    assert_eq!(a.body["error"], "too_many_requests");
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // alice herself is not locked by it.
    let (_, users) = p.call("GET", "/v1/users", None).await;
    assert!(users[0]["locked_until"].is_null(), "{users}");
}

#[tokio::test]
async fn an_expired_token_is_refused_with_its_own_code_and_logout_ends_the_session() {
    let mut p = TestPlatform::new().await;
    let clock = manual_clock(&mut p);
    create_user(&p, "alice").await;
    let a = login(&p, "alice", PW).await;
    let access = a.body["access_token"].as_str().unwrap().to_string();
    let refresh = a.body["refresh_token"].as_str().unwrap().to_string();
    clock.advance(600);
    let (s, v) = p.call_with("GET", "/v1/whoami", None, Some(&access)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["code"], "token_expired");
    assert!(v["message"].as_str().unwrap().contains("pier login"), "{v}");
    // Revoking (logout) ends the session: refresh and access tokens alike.
    let b = form(
        &p,
        "/oauth/token",
        &format!("grant_type=refresh_token&refresh_token={refresh}"),
        true,
    )
    .await;
    let access = b.body["access_token"].as_str().unwrap().to_string();
    let refresh = b.body["refresh_token"].as_str().unwrap().to_string();
    let r = form(&p, "/oauth/revoke", &format!("token={refresh}"), true).await;
    assert_eq!(r.status, StatusCode::OK);
    let (s, v) = p.call_with("GET", "/v1/whoami", None, Some(&access)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["code"], "unauthorized");
    assert!(
        v["message"].as_str().unwrap().contains("session ended"),
        "{v}"
    );
    let c = form(
        &p,
        "/oauth/token",
        &format!("grant_type=refresh_token&refresh_token={refresh}"),
        true,
    )
    .await;
    assert_eq!(c.body["error"], "invalid_grant");
}

#[tokio::test]
async fn user_admin_refusals_say_why_and_change_nothing() {
    let p = TestPlatform::new().await;
    create_user(&p, "alice").await;
    let before = p.store.users().unwrap().list().unwrap();
    let cases = [
        (
            json!({"name": "Alice", "password": PW}),
            400,
            "lowercase letters",
        ),
        (
            json!({"name": "a b", "password": PW}),
            400,
            "lowercase letters",
        ),
        (
            json!({"name": "bob", "password": "1234567"}),
            400,
            "at least 8 characters",
        ),
        (
            json!({"name": "alice", "password": PW}),
            409,
            "already exists",
        ),
        (json!({"name": "bob"}), 400, "password"),
    ];
    for (body, status, msg) in cases {
        let (s, v) = p.call("POST", "/v1/users", Some(body.clone())).await;
        assert_eq!(s.as_u16(), status, "{body}: {v}");
        assert!(v["message"].as_str().unwrap().contains(msg), "{body}: {v}");
        assert!(
            !v.to_string().contains(PW),
            "{body}: the password came back"
        );
    }
    let (s, v) = p.call("DELETE", "/v1/users/nobody", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // Alice's own password: the old one is needed and checked.
    let a = login(&p, "alice", PW).await;
    let access = a.body["access_token"].as_str().unwrap().to_string();
    let put = |body: Value| body.to_string().into_bytes();
    let (s, v) = p
        .call_with(
            "PUT",
            "/v1/users/alice/password",
            Some(put(
                json!({"old_password": "wrong-old-one", "password": "brand-new-pass"}),
            )),
            Some(&access),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("old password is wrong"));
    let (s, v) = p
        .call_with(
            "PUT",
            "/v1/users/alice/password",
            Some(put(json!({"password": "brand-new-pass"}))),
            Some(&access),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(p.store.users().unwrap().list().unwrap(), before);
    let (s, _) = p
        .call_with(
            "PUT",
            "/v1/users/alice/password",
            Some(put(
                json!({"old_password": PW, "password": "brand-new-pass"}),
            )),
            Some(&access),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        login(&p, "alice", "brand-new-pass").await.status,
        StatusCode::OK
    );
    // The admin sets it without the old one, and deletes her: her token stops working.
    let (s, _) = p
        .call(
            "PUT",
            "/v1/users/alice/password",
            Some(json!({"password": "admin-set-pass"})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let a = login(&p, "alice", "admin-set-pass").await;
    let access = a.body["access_token"].as_str().unwrap().to_string();
    let (s, _) = p.call("DELETE", "/v1/users/alice", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = p.call_with("GET", "/v1/whoami", None, Some(&access)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (_, v) = p.call("GET", "/v1/users", None).await;
    assert_eq!(v, json!([]));
}

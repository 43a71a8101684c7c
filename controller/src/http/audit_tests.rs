//! Handler tests of the audit trail: the real axum router with `oneshot` on a temporary store.
//! Who (admin, a user, unknown), what, on what, where and the status are recorded for changes,
//! refusals and logins; reads are not; no password or query string is ever written; only the
//! admin reads it, filtered by time.

use axum::body::Body;
use http::{Request, StatusCode};
use serde_json::{json, Value};

use crate::testkit::TestPlatform;

const PW: &str = "Audit-pw-7731-unique";
const NEW_PW: &str = "Audit-new-9043-unique";
const WRONG: &str = "Audit-wrong-5512-unique";

async fn login(p: &TestPlatform, name: &str, pw: &str) -> (StatusCode, Value) {
    use tower::ServiceExt as _;
    let req = Request::builder()
        .method("POST")
        .uri("/oauth/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", "Basic Y2Y6")
        .body(Body::from(format!(
            "grant_type=password&username={name}&password={pw}"
        )))
        .unwrap();
    let resp = p.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn logout(p: &TestPlatform, refresh: &str) -> StatusCode {
    use tower::ServiceExt as _;
    let req = Request::builder()
        .method("POST")
        .uri("/oauth/revoke")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={refresh}")))
        .unwrap();
    p.router.clone().oneshot(req).await.unwrap().status()
}

/// The whole log, newest first, as the admin reads it.
async fn audit(p: &TestPlatform, query: &str) -> Vec<Value> {
    let (s, v) = p.call("GET", &format!("/v1/audit{query}"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array().unwrap().clone()
}

/// The fields a test compares: actor, action, target, status.
fn brief(e: &Value) -> (String, String, String, u64) {
    (
        e["actor"].as_str().unwrap().to_string(),
        e["action"].as_str().unwrap().to_string(),
        e["target"].as_str().unwrap_or("-").to_string(),
        e["status"].as_u64().unwrap(),
    )
}

fn b(actor: &str, action: &str, target: &str, status: u64) -> (String, String, String, u64) {
    (actor.into(), action.into(), target.into(), status)
}

#[tokio::test]
async fn changes_logins_and_refusals_are_recorded_with_who_did_them() {
    let p = TestPlatform::new().await;
    let (s, v) = p
        .call(
            "POST",
            "/v1/users",
            Some(json!({"name": "alice", "password": PW})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = p
        .call("POST", "/v1/orgs", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = p
        .call("POST", "/v1/orgs/acme/spaces", Some(json!({"name": "dev"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // An app change in a space, with something secret-looking in the query.
    let (s, v) = p
        .call(
            "PUT",
            "/v1/apps/web?org=acme&space=dev&token=q-secret",
            Some(json!({})),
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
    // Reads are not recorded.
    assert_eq!(p.call("GET", "/v1/orgs", None).await.0, StatusCode::OK);

    let (s, t) = login(&p, "alice", PW).await;
    assert_eq!(s, StatusCode::OK, "{t}");
    let alice = t["access_token"].as_str().unwrap().to_string();
    let (s, _) = login(&p, "alice", WRONG).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let body = json!({"old_password": PW, "password": NEW_PW}).to_string();
    let (s, v) = p
        .call_with(
            "PUT",
            "/v1/users/alice/password",
            Some(body.into_bytes()),
            Some(&alice),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, t2) = login(&p, "alice", NEW_PW).await;
    assert_eq!(s, StatusCode::OK, "{t2}");
    let refresh = t2["refresh_token"].as_str().unwrap();
    assert_eq!(logout(&p, refresh).await, StatusCode::OK);

    // Refused: recorded with the status, and nothing changed.
    let (s, _) = p
        .call_with("DELETE", "/v1/users/alice", None, Some(&alice))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = p.call("GET", "/v1/users", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(p
        .parts
        .api
        .users
        .list()
        .unwrap()
        .iter()
        .any(|u| u.name == "alice"));
    let (s, _) = p
        .call_with(
            "POST",
            "/v1/orgs",
            Some(br#"{"name":"evil"}"#.to_vec()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        p.call("GET", "/v1/orgs/evil", None).await.0,
        StatusCode::NOT_FOUND
    );
    // A user may not read the log: refused, and shown nothing of it.
    let (s, v) = p.call_with("GET", "/v1/audit", None, Some(&alice)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v.is_object() && v.get("code").is_some(),
        "an error, no entries: {v}"
    );

    assert_recorded(&p).await;
}

/// What `changes_logins_and_refusals_are_recorded_with_who_did_them` did, as the log has it.
async fn assert_recorded(p: &TestPlatform) {
    let log = audit(p, "").await;
    let got: Vec<_> = log.iter().rev().map(brief).collect();
    assert_eq!(
        got,
        [
            b("admin", "POST /v1/users", "alice", 201),
            b("admin", "POST /v1/orgs", "acme", 201),
            b("admin", "POST /v1/orgs/acme/spaces", "dev", 201),
            b("admin", "PUT /v1/apps/web", "web", 200),
            b("alice", "login", "alice", 200),
            b("unknown", "login failed", "alice", 401),
            b("alice", "PUT /v1/users/alice/password", "alice", 204),
            b("alice", "login", "alice", 200),
            b("alice", "logout", "alice", 200),
            b("alice", "DELETE /v1/users/alice", "alice", 403),
            b("unknown", "POST /v1/orgs", "-", 401),
            b("alice", "GET /v1/audit", "-", 403),
        ]
    );
    let app = &log[log.len() - 4];
    assert_eq!(
        (app["org"].as_str(), app["space"].as_str()),
        (Some("acme"), Some("dev"))
    );
    assert_eq!(app["path"], "/v1/apps/web", "no query string");
    let space = &log[log.len() - 3];
    assert_eq!(space["org"], "acme");
    // No password, and nothing of the query string, anywhere in it.
    let text = serde_json::to_string(&log).unwrap();
    for secret in [PW, NEW_PW, WRONG, "q-secret"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

#[tokio::test]
async fn the_log_is_read_since_a_time_and_limited() {
    let p = TestPlatform::new().await;
    for name in ["one", "two", "three", "four"] {
        let (s, v) = p
            .call("POST", "/v1/orgs", Some(json!({"name": name})))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let log = audit(&p, "").await;
    assert_eq!(log.len(), 4);
    // Since the time of the second: the second, third and fourth.
    let since = log[2]["time"].as_str().unwrap();
    let q = format!("?since={}", since.replace(':', "%3A").replace('+', "%2B"));
    let names: Vec<_> = audit(&p, &q)
        .await
        .iter()
        .map(|e| e["target"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["four", "three", "two"]);
    let names: Vec<_> = audit(&p, "?limit=1")
        .await
        .iter()
        .map(|e| e["target"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["four"]);
    let future = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let q = format!(
        "?since={}",
        future
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
            .replace(':', "%3A")
    );
    assert!(audit(&p, &q).await.is_empty());
    let (s, v) = p.call("GET", "/v1/audit?since=yesterday", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["message"].as_str().unwrap().contains("RFC 3339"), "{v}");
}

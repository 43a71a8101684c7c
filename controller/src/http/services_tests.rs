//! User-provided services and bindings through the real axum router with the fake runtime:
//! `VCAP_SERVICES` in Cloud Foundry's shape reaching instances with the next deployment,
//! refusals that change nothing, and services going with their space.

use http::StatusCode;
use serde_json::{json, Value};

use crate::runtime::Kind;
use crate::testkit::TestPlatform;

async fn deployed(p: &TestPlatform, app: &str) {
    for _ in 0..500 {
        let (_, d) = p
            .call("GET", &format!("/v1/apps/{app}/deployments"), None)
            .await;
        if d[0]["state"] == "SUCCEEDED" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the deployment of {app} did not end");
}

fn vcap_services(p: &TestPlatform) -> Value {
    let r = p.fake.running(Kind::Instance);
    assert_eq!(r.len(), 1, "{r:?}");
    let e = r[0]
        .1
        .env
        .iter()
        .find_map(|e| e.strip_prefix("VCAP_SERVICES="))
        .unwrap();
    serde_json::from_str(e).unwrap()
}

async fn smtp(p: &TestPlatform) {
    let body = json!({"name": "smtp", "user_provided": {
        "credentials": {"host": "mail", "password": "s3cret"}, "tags": ["mail"]}});
    let (s, v) = p.call("POST", "/v1/service-instances", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn a_binding_reaches_instances_as_vcap_services_with_the_next_deployment() {
    let p = TestPlatform::new().await;
    p.push("web").await;
    deployed(&p, "web").await;
    smtp(&p).await;
    assert_eq!(vcap_services(&p), json!({}));
    let (s, b) = p.call("PUT", "/v1/apps/web/bindings/smtp", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["service_instance"], "smtp");
    let (_, svc) = p.call("GET", "/v1/service-instances/smtp", None).await;
    assert_eq!(svc["bound_apps"], json!(["web"]));
    let (_, env) = p.call("GET", "/v1/apps/web/env", None).await;
    assert_eq!(env["deployed"], false, "bound, not yet deployed: {env}");

    let (s, d) = p
        .call("POST", "/v1/apps/web/deployments", Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["reason"], "revision 2: services changed");
    p.eventually("the instance with the binding", || {
        let r = p.fake.running(Kind::Instance);
        (r.len() == 1 && r[0].1.env.iter().any(|e| e.contains("s3cret"))).then_some(())
    })
    .await;
    deployed(&p, "web").await;
    let ups = &vcap_services(&p)["user-provided"][0];
    assert_eq!(ups["name"], "smtp");
    assert_eq!(ups["label"], "user-provided");
    assert_eq!(
        ups["credentials"],
        json!({"host": "mail", "password": "s3cret"})
    );
    assert_eq!(ups["tags"], json!(["mail"]));
    assert_eq!(ups["binding_guid"], b["guid"]);
    // Events name the service, never its credentials.
    let (_, events) = p.call("GET", "/v1/apps/web/events", None).await;
    assert!(events.to_string().contains("bound to service smtp"));
    assert!(!events.to_string().contains("s3cret"));

    let (s, _) = p.call("DELETE", "/v1/apps/web/bindings/smtp", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    p.call("POST", "/v1/apps/web/deployments", Some(json!({})))
        .await;
    p.eventually("the instance without it", || {
        let r = p.fake.running(Kind::Instance);
        (r.len() == 1 && !r[0].1.env.iter().any(|e| e.contains("s3cret"))).then_some(())
    })
    .await;
    // Unbound: the service may go.
    let (s, v) = p.call("DELETE", "/v1/service-instances/smtp", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
}

/// Each refused request: method, path, body, status, what the message says.
type Refusal = (
    &'static str,
    &'static str,
    Option<Value>,
    StatusCode,
    &'static str,
);

fn refusal_cases() -> Vec<Refusal> {
    let big = "x".repeat(70 * 1024);
    vec![
        (
            "DELETE",
            "/v1/service-instances/smtp",
            None,
            StatusCode::CONFLICT,
            "is bound to web",
        ),
        (
            "PUT",
            "/v1/apps/web/bindings/smtp",
            None,
            StatusCode::CONFLICT,
            "already bound",
        ),
        (
            "POST",
            "/v1/service-instances",
            Some(json!({"name": "smtp", "user_provided": {}})),
            StatusCode::CONFLICT,
            "already exists",
        ),
        (
            "POST",
            "/v1/service-instances",
            Some(json!({"name": "bad name!", "user_provided": {}})),
            StatusCode::BAD_REQUEST,
            "is invalid",
        ),
        (
            "POST",
            "/v1/service-instances",
            Some(json!({"name": "x", "user_provided": {"credentials": "s3cret"}})),
            StatusCode::BAD_REQUEST,
            "expected {\"name\"",
        ),
        (
            "POST",
            "/v1/service-instances",
            Some(json!({"name": "x", "user_provided": {"credentials": {"k": big}}})),
            StatusCode::BAD_REQUEST,
            "at most 65536",
        ),
        (
            "POST",
            "/v1/service-instances",
            Some(json!({"name": "x"})),
            StatusCode::BAD_REQUEST,
            "missing field `user_provided`",
        ),
        (
            "PATCH",
            "/v1/service-instances/smtp",
            Some(json!({"credentials": ["s3cret"]})),
            StatusCode::BAD_REQUEST,
            "expected {\"credentials\"",
        ),
        (
            "PATCH",
            "/v1/service-instances/smtp",
            Some(json!({"syslog_drain_url": "ftp://x"})),
            StatusCode::BAD_REQUEST,
            "syslog_drain_url must",
        ),
        (
            "PATCH",
            "/v1/service-instances/nope",
            Some(json!({})),
            StatusCode::NOT_FOUND,
            "service instance nope not found",
        ),
        (
            "PUT",
            "/v1/apps/web/bindings/nope",
            None,
            StatusCode::NOT_FOUND,
            "service instance nope not found",
        ),
        (
            "PUT",
            "/v1/apps/nope/bindings/smtp",
            None,
            StatusCode::NOT_FOUND,
            "app nope not found",
        ),
        (
            "DELETE",
            "/v1/apps/web/bindings/nope",
            None,
            StatusCode::NOT_FOUND,
            "service instance nope not found",
        ),
    ]
}

#[tokio::test]
async fn refused_service_requests_say_why_without_credentials_and_change_nothing() {
    let p = TestPlatform::new().await;
    p.push("web").await;
    smtp(&p).await;
    let (s, _) = p.call("PUT", "/v1/apps/web/bindings/smtp", None).await;
    assert_eq!(s, StatusCode::OK);
    let before = (
        p.call("GET", "/v1/service-instances", None).await.1,
        p.store.default_space_app("web").unwrap().unwrap(),
    );
    let cases = refusal_cases();
    for (m, path, body, want, says) in cases {
        let (s, v) = p.call(m, path, body.clone()).await;
        assert_eq!(s, want, "{m} {path} {body:?}: {v}");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains(says), "{m} {path}: {msg}");
        assert!(!msg.contains("s3cret"), "a credential leaked: {msg}");
    }
    let after = (
        p.call("GET", "/v1/service-instances", None).await.1,
        p.store.default_space_app("web").unwrap().unwrap(),
    );
    assert_eq!(after, before, "a refused request changed something");
}

#[tokio::test]
async fn services_are_per_space_and_go_with_their_space_and_their_apps_bindings_with_the_app() {
    let p = TestPlatform::new().await;
    p.call("POST", "/v1/orgs", Some(json!({"name": "acme"})))
        .await;
    p.call("POST", "/v1/orgs/acme/spaces", Some(json!({"name": "dev"})))
        .await;
    let q = "?org=acme&space=dev";
    let body = json!({"name": "smtp", "user_provided": {"credentials": {"a": 1}}});
    let (s, _) = p
        .call("POST", &format!("/v1/service-instances{q}"), Some(body))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // Not in the default space, so the default space's app cannot bind it.
    p.push("web").await;
    let (s, v) = p.call("PUT", "/v1/apps/web/bindings/smtp", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (_, list) = p.call("GET", "/v1/service-instances", None).await;
    assert_eq!(list, json!([]));
    // An app's delete takes its bindings.
    p.push_at("worker", q, None).await;
    let (s, _) = p
        .call("PUT", &format!("/v1/apps/worker/bindings/smtp{q}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = p.call("DELETE", &format!("/v1/apps/worker{q}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, svc) = p
        .call("GET", &format!("/v1/service-instances/smtp{q}"), None)
        .await;
    assert_eq!(svc["bound_apps"], json!([]));
    // Deleting the space deletes its services.
    let space = p
        .store
        .space_named(&p.store.org_named("acme").unwrap().unwrap().guid, "dev")
        .unwrap()
        .unwrap();
    p.call("DELETE", "/v1/orgs/acme/spaces/dev", None).await;
    assert!(p.store.services_of(&space.guid).unwrap().is_empty());
}

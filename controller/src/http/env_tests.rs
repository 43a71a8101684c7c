//! `GET`/`PATCH /v1/apps/{name}/env` through the real axum router with the fake runtime: changes
//! stored and named (never valued) in events, reaching instances with the next deployment as an
//! "env changed" revision; refusals changing nothing; values hidden from auditors.

use http::StatusCode;
use serde_json::{json, Value};

use crate::runtime::Kind;
use crate::testkit::TestPlatform;

async fn patch(p: &TestPlatform, body: Value) -> (StatusCode, Value) {
    p.call("PATCH", "/v1/apps/web/env", Some(body)).await
}

/// Waits until the app's newest deployment is over.
async fn deployed(p: &TestPlatform) {
    for _ in 0..500 {
        let (_, d) = p.call("GET", "/v1/apps/web/deployments", None).await;
        if d[0]["state"] != "DEPLOYING" && d[0]["state"] != "deploying" {
            assert_eq!(
                d[0]["state"].as_str().unwrap().to_lowercase(),
                "succeeded",
                "{d}"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the deployment did not end");
}

fn instance_env(p: &TestPlatform) -> Vec<String> {
    let running = p.fake.running(Kind::Instance);
    assert_eq!(running.len(), 1);
    running[0].1.env.clone()
}

#[tokio::test]
async fn set_env_is_stored_named_in_events_and_deployed_as_an_env_changed_revision() {
    let p = TestPlatform::new().await;
    p.push("web").await;
    deployed(&p).await;
    let (s, v) = patch(&p, json!({"var": {"GREETING": "hi-s3cret", "OTHER": "x"}})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["environment_variables"]["GREETING"], "hi-s3cret");
    assert_eq!(v["deployed"], false, "stored, not yet deployed");
    let vcap: Value =
        serde_json::from_str(v["system_env"]["VCAP_APPLICATION"].as_str().unwrap()).unwrap();
    assert_eq!(vcap["space_name"], "default");
    assert_eq!(vcap["organization_name"], "default");
    assert_eq!(vcap["application_name"], "web");
    assert!(!instance_env(&p).iter().any(|e| e.starts_with("GREETING=")));
    // The event names the variables, not their values.
    let (_, events) = p.call("GET", "/v1/apps/web/events", None).await;
    let texts = events.to_string();
    assert!(texts.contains("env: GREETING set, OTHER set"), "{texts}");
    assert!(!texts.contains("hi-s3cret"), "{texts}");
    let (_, logs) = p.call("GET", "/v1/apps/web/logs", None).await;
    assert!(!logs.to_string().contains("hi-s3cret"), "{logs}");
    // Nor in any file of the data dir: the store keeps env values sealed.
    p.store.flush().unwrap();
    for (path, bytes) in &crate::testkit::files_under(p.data_dir()) {
        assert!(
            !crate::testkit::contains(bytes, b"hi-s3cret"),
            "the value is in {}",
            path.display()
        );
    }

    let (s, d) = p
        .call("POST", "/v1/apps/web/deployments", Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    p.eventually("the new instance with the env", || {
        let r = p.fake.running(Kind::Instance);
        (r.len() == 1 && r[0].1.env.iter().any(|e| e == "GREETING=hi-s3cret")).then_some(())
    })
    .await;
    let (_, revs) = p.call("GET", "/v1/apps/web/revisions", None).await;
    assert_eq!(revs[0]["description"], "env changed", "{revs}");
    assert!(!revs.to_string().contains("hi-s3cret"));
    deployed(&p).await;
    let (_, v) = p.call("GET", "/v1/apps/web/env", None).await;
    assert_eq!(v["deployed"], true, "{v}");

    // Unsetting with null; a var not set is no change (no event).
    let (_, before) = p.call("GET", "/v1/apps/web/events", None).await;
    let (s, v) = patch(&p, json!({"var": {"OTHER": null, "NEVER": null}})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["environment_variables"], json!({"GREETING": "hi-s3cret"}));
    let (_, after) = p.call("GET", "/v1/apps/web/events", None).await;
    assert_eq!(
        after.as_array().unwrap().len(),
        before.as_array().unwrap().len() + 1
    );
    assert!(
        after[0]["message"]
            .as_str()
            .unwrap()
            .contains("env: OTHER unset"),
        "{after}"
    );
    let (s, _) = patch(&p, json!({"var": {"NEVER": null}})).await;
    assert_eq!(s, StatusCode::OK);
    let (_, again) = p.call("GET", "/v1/apps/web/events", None).await;
    assert_eq!(again, after, "no change, no event");
}

#[tokio::test]
async fn refused_env_changes_say_why_without_the_value_and_change_nothing() {
    let p = TestPlatform::new().await;
    p.push("web").await;
    patch(&p, json!({"var": {"KEEP": "kept"}})).await;
    let before = p.store.default_space_app("web").unwrap().unwrap();
    let too_many: serde_json::Map<String, Value> =
        (0..101).map(|i| (format!("V{i}"), json!("x"))).collect();
    let cases = [
        (
            json!({"var": {"1BAD": "s3cret"}}),
            "env var name \"1BAD\" is invalid",
        ),
        (
            json!({"var": {"VCAP_SERVICES": "s3cret"}}),
            "set by the platform",
        ),
        (json!({"var": {"PORT": null}}), "set by the platform"),
        (json!({"var": {"OK": "s3cret\u{0}"}}), "contains a NUL byte"),
        (json!({"var": {"OK": 5}}), "expected {\"var\""),
        (json!({"var": "s3cret"}), "expected {\"var\""),
        (json!({"vars": {"OK": "s3cret"}}), "expected {\"var\""),
        (json!({"var": too_many}), "at most 100 env vars"),
    ];
    for (body, says) in cases {
        let (s, v) = patch(&p, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains(says), "{body}: {msg}");
        assert!(!msg.contains("s3cret"), "the value leaked: {msg}");
    }
    let (s, v) = p
        .call(
            "PATCH",
            "/v1/apps/nope/env",
            Some(json!({"var": {"A": "b"}})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let after = p.store.default_space_app("web").unwrap().unwrap();
    assert_eq!(after.env, before.env);
    assert_eq!(after.updated_at, before.updated_at, "nothing written");
    assert!(p.store.default_space_app("nope").unwrap().is_none());
}

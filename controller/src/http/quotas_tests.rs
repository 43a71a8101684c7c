//! Quotas through the real axum router with the fake runtime: defining and assigning them, and
//! every change that would go over one refused before anything is written or started.

use http::StatusCode;
use serde_json::{json, Value};

use crate::runtime::Kind;
use crate::testkit::TestPlatform;

const DEV: &str = "?org=acme&space=dev";
const PROD: &str = "?org=acme&space=prod";

/// Org acme with spaces dev and prod.
async fn acme() -> TestPlatform {
    let p = TestPlatform::new().await;
    let (s, v) = p
        .call("POST", "/v1/orgs", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for space in ["dev", "prod"] {
        let (s, v) = p
            .call(
                "POST",
                "/v1/orgs/acme/spaces",
                Some(json!({ "name": space })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    p
}

async fn quota(p: &TestPlatform, body: Value) {
    let (s, v) = p.call("POST", "/v1/quotas", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// Assigns quota `q` at `path` (`/v1/orgs/acme` or `/v1/orgs/acme/spaces/dev`).
async fn assign(p: &TestPlatform, path: &str, q: Option<&str>) -> Value {
    let (s, v) = p
        .call("PUT", &format!("{path}/quota"), Some(json!({ "quota": q })))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// Asserts a 422 quota_exceeded whose message is `message`.
fn refused(s: StatusCode, v: &Value, message: &str) {
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["code"], "quota_exceeded", "{v}");
    let got = v["message"].as_str().unwrap_or_default();
    assert!(got.starts_with(message), "{got}");
}

async fn running(p: &TestPlatform, n: usize) {
    p.eventually(&format!("{n} running instances"), || {
        (p.fake.running(Kind::Instance).len() == n).then_some(())
    })
    .await;
}

fn app_names(p: &TestPlatform, space: &str) -> Vec<String> {
    let org = p.store.org_named("acme").unwrap().unwrap();
    let space = p.store.space_named(&org.guid, space).unwrap().unwrap();
    let mut names: Vec<String> = (p.store.list_space_apps(&space.guid).unwrap())
        .into_iter()
        .map(|a| a.name.to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_push_over_the_memory_quota_is_refused_and_nothing_is_created_or_started() {
    let p = acme().await;
    quota(&p, json!({"name": "small", "memory_mb": 1024})).await;
    assign(&p, "/v1/orgs/acme", Some("small")).await;
    p.push_at("a", DEV, Some(json!({"memory_mb": 512}))).await;
    running(&p, 1).await;
    // The push's first step, creating the app, is refused: nothing is made.
    let (s, v) = p
        .call(
            "PUT",
            &format!("/v1/apps/b{DEV}"),
            Some(json!({"memory_mb": 768})),
        )
        .await;
    refused(
        s,
        &v,
        "org acme's quota small allows 1024 MiB of memory; 512 MiB is in use and this needs 768 \
         MiB more",
    );
    assert_eq!(app_names(&p, "dev"), ["a"], "no app b");
    let (s, _) = p.call("GET", &format!("/v1/apps/b{DEV}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(p.fake.running(Kind::Instance).len(), 1, "nothing started");
    let (_, org) = p.call("GET", "/v1/orgs/acme", None).await;
    assert_eq!(org["usage"]["memory_mb"], 512);
    assert_eq!(org["usage"]["apps"], 1);
    assert_eq!(org["quota"]["name"], "small");
    assert_eq!(org["quota"]["limits"]["memory_mb"], 1024);
    assert_eq!(org["quota"]["limits"]["apps"], Value::Null, "unlimited");
    // One that fits is pushed and runs.
    p.push_at("b", DEV, Some(json!({"memory_mb": 512}))).await;
    running(&p, 2).await;
}

#[tokio::test]
async fn starting_a_stopped_app_over_the_memory_quota_is_refused_and_it_stays_stopped() {
    let p = acme().await;
    quota(&p, json!({"name": "small", "memory_mb": 1024})).await;
    assign(&p, "/v1/orgs/acme/spaces/dev", Some("small")).await;
    p.push_at("a", DEV, Some(json!({"memory_mb": 512}))).await;
    p.push_at("b", DEV, Some(json!({"memory_mb": 512}))).await;
    running(&p, 2).await;
    let (s, v) = p
        .call("POST", &format!("/v1/apps/b/actions/stop{DEV}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    running(&p, 1).await;
    // Stopped, b's memory is free: a scales into it.
    let (s, v) = p
        .call(
            "PUT",
            &format!("/v1/apps/a/processes/web{DEV}"),
            Some(json!({"instances": 2})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    running(&p, 2).await;
    let before = p.store.list_apps().unwrap();
    for action in ["start", "restart"] {
        let (s, v) = p
            .call("POST", &format!("/v1/apps/b/actions/{action}{DEV}"), None)
            .await;
        refused(
            s,
            &v,
            "space dev of org acme's quota small allows 1024 MiB of memory; 1024 MiB is in use \
             and this needs 512 MiB more",
        );
    }
    let (s, v) = p
        .call(
            "POST",
            &format!("/v1/apps/b/deployments{DEV}"),
            Some(json!({})),
        )
        .await;
    refused(s, &v, "space dev of org acme's quota small allows 1024 MiB");
    assert_eq!(p.store.list_apps().unwrap(), before, "nothing written");
    let (_, b) = p.call("GET", &format!("/v1/apps/b{DEV}"), None).await;
    assert_eq!(b["state"], "STOPPED");
    assert_eq!(p.fake.running(Kind::Instance).len(), 2, "nothing started");
}

#[tokio::test]
async fn scaling_within_the_instance_quota_works_and_over_it_is_refused_with_instances_unchanged() {
    let p = acme().await;
    quota(
        &p,
        json!({"name": "three", "instances": 3, "memory_mb": 4096}),
    )
    .await;
    assign(&p, "/v1/orgs/acme/spaces/dev", Some("three")).await;
    p.push_at("a", DEV, Some(json!({"memory_mb": 256}))).await;
    let scale = |body: Value| {
        let p = &p;
        async move {
            p.call("PUT", &format!("/v1/apps/a/processes/web{DEV}"), Some(body))
                .await
        }
    };
    let (s, v) = scale(json!({"instances": 3})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    running(&p, 3).await;
    let before = p.store.list_apps().unwrap();
    let (s, v) = scale(json!({"instances": 4})).await;
    refused(
        s,
        &v,
        "space dev of org acme's quota three allows 3 instances; 3 are in use and this needs 1 \
         more",
    );
    // Memory per instance counts times the instances: 3 × 2048 MiB is over 4096.
    let (s, v) = scale(json!({"memory_mb": 2048})).await;
    refused(
        s,
        &v,
        "space dev of org acme's quota three allows 4096 MiB of memory; 768 MiB is in use and \
         this needs 5376 MiB more",
    );
    assert_eq!(p.store.list_apps().unwrap(), before, "nothing written");
    let (_, a) = p.call("GET", &format!("/v1/apps/a{DEV}"), None).await;
    assert_eq!(a["processes"][0]["instances"], 3);
    assert_eq!(p.fake.running(Kind::Instance).len(), 3);
    // Down always works, and within the quota again up.
    let (s, v) = scale(json!({"instances": 1, "memory_mb": 1024})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = scale(json!({"instances": 3})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, space) = p.call("GET", "/v1/orgs/acme/spaces/dev", None).await;
    assert_eq!(
        space["usage"],
        json!({"memory_mb": 3072, "instances": 3, "apps": 1, "routes": 1})
    );
}

#[tokio::test]
async fn app_count_and_route_count_limits_refuse_and_write_nothing() {
    let p = acme().await;
    quota(&p, json!({"name": "tiny", "apps": 1, "routes": 2})).await;
    assign(&p, "/v1/orgs/acme", Some("tiny")).await;
    let (s, v) = p.call("PUT", &format!("/v1/apps/a{DEV}"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = p
        .call(
            "PUT",
            &format!("/v1/apps/b{PROD}"),
            Some(json!({"no_route": true})),
        )
        .await;
    refused(
        s,
        &v,
        "org acme's quota tiny allows 1 apps; 1 is in use and this needs 1 more",
    );
    assert!(app_names(&p, "prod").is_empty(), "no app b");
    // a has its default route; one more fits, a third does not.
    let map = |host: &'static str| {
        let p = &p;
        async move {
            p.call(
                "POST",
                &format!("/v1/apps/a/routes{DEV}"),
                Some(json!({ "route": host })),
            )
            .await
        }
    };
    let (s, v) = map("two.example.test").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let before = p.store.list_apps().unwrap();
    let (s, v) = map("three.example.test").await;
    refused(
        s,
        &v,
        "org acme's quota tiny allows 2 routes; 2 are in use and this needs 1 more",
    );
    // Through PUT too.
    let (s, v) = p
        .call(
            "PUT",
            &format!("/v1/apps/a{DEV}"),
            Some(json!({"routes": ["three.example.test"]})),
        )
        .await;
    refused(s, &v, "org acme's quota tiny allows 2 routes");
    assert_eq!(p.store.list_apps().unwrap(), before, "nothing written");
    let (_, a) = p.call("GET", &format!("/v1/apps/a{DEV}"), None).await;
    assert_eq!(a["routes"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn space_and_org_quotas_both_apply_and_the_tighter_refuses() {
    let p = acme().await;
    quota(&p, json!({"name": "org-2g", "memory_mb": 2048})).await;
    quota(&p, json!({"name": "space-512", "memory_mb": 512})).await;
    assign(&p, "/v1/orgs/acme", Some("org-2g")).await;
    assign(&p, "/v1/orgs/acme/spaces/dev", Some("space-512")).await;
    p.push_at("a", DEV, Some(json!({"memory_mb": 512}))).await;
    // The space's quota is the tighter in dev.
    let (s, v) = p
        .call(
            "PUT",
            &format!("/v1/apps/b{DEV}"),
            Some(json!({"memory_mb": 256})),
        )
        .await;
    refused(
        s,
        &v,
        "space dev of org acme's quota space-512 allows 512 MiB of memory; 512 MiB is in use and \
         this needs 256 MiB more",
    );
    // prod has no quota of its own; the org's counts dev's use too.
    p.push_at("c", PROD, Some(json!({"memory_mb": 1024}))).await;
    let (s, v) = p
        .call(
            "PUT",
            &format!("/v1/apps/d{PROD}"),
            Some(json!({"memory_mb": 1024})),
        )
        .await;
    refused(
        s,
        &v,
        "org acme's quota org-2g allows 2048 MiB of memory; 1536 MiB is in use and this needs \
         1024 MiB more",
    );
    assert_eq!(app_names(&p, "dev"), ["a"]);
    assert_eq!(app_names(&p, "prod"), ["c"]);
    running(&p, 2).await;
    let (_, org) = p.call("GET", "/v1/orgs/acme", None).await;
    assert_eq!(org["usage"]["memory_mb"], 1536);
    let (_, space) = p.call("GET", "/v1/orgs/acme/spaces/dev", None).await;
    assert_eq!(space["quota"]["name"], "space-512");
    assert_eq!(space["usage"]["memory_mb"], 512);
    // Without the space's quota only the org's applies.
    assign(&p, "/v1/orgs/acme/spaces/dev", None).await;
    p.push_at("b", DEV, Some(json!({"memory_mb": 256}))).await;
}

#[tokio::test]
async fn quotas_are_listed_changed_and_deleted_only_when_unused() {
    let p = acme().await;
    quota(&p, json!({"name": "small", "memory_mb": 1024})).await;
    let (s, v) = p
        .call("POST", "/v1/quotas", Some(json!({"name": "small"})))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = p
        .call(
            "POST",
            "/v1/quotas",
            Some(json!({"name": "Bad!", "apps": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = p
        .call(
            "POST",
            "/v1/quotas",
            Some(json!({"name": "x", "memory": 1})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "an unknown field is refused: {v}"
    );
    // Assigning a quota that does not exist changes nothing.
    let before = p.store.list_orgs().unwrap();
    let (s, v) = p
        .call("PUT", "/v1/orgs/acme/quota", Some(json!({"quota": "nope"})))
        .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (StatusCode::NOT_FOUND, Some("quota nope not found"))
    );
    assert_eq!(p.store.list_orgs().unwrap(), before);
    assign(&p, "/v1/orgs/acme", Some("small")).await;
    assign(&p, "/v1/orgs/acme/spaces/dev", Some("small")).await;
    let (_, list) = p.call("GET", "/v1/quotas", None).await;
    assert_eq!(list[0]["orgs"], json!(["acme"]));
    assert_eq!(list[0]["spaces"], json!(["acme/dev"]));
    let (s, v) = p.call("DELETE", "/v1/quotas/small", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(
        v["message"],
        "quota small is assigned to org acme, space acme/dev; assign them another quota (or \
         none) first"
    );
    assert!(p.store.get_quota("small").unwrap().is_some(), "still there");
    // Limits are replaced by PUT; lowering below use is allowed.
    let (s, v) = p
        .call("PUT", "/v1/quotas/small", Some(json!({"apps": 0})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["limits"],
        json!({"memory_mb": null, "instances": null, "apps": 0, "routes": null})
    );
    assign(&p, "/v1/orgs/acme", None).await;
    assign(&p, "/v1/orgs/acme/spaces/dev", None).await;
    let (s, v) = p.call("DELETE", "/v1/quotas/small", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert!(p.store.get_quota("small").unwrap().is_none());
    let (s, _) = p.call("GET", "/v1/quotas/small", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

//! Orgs, spaces and the space every app endpoint acts in, through the real axum router with the
//! fake runtime.

use http::StatusCode;
use serde_json::{json, Value};

use crate::runtime::Kind;
use crate::testkit::TestPlatform;

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["name"].as_str().map(str::to_string))
        .collect()
}

async fn org_and_space(p: &TestPlatform, org: &str, space: &str) {
    let (s, v) = p
        .call("POST", "/v1/orgs", Some(json!({ "name": org })))
        .await;
    assert!(s == StatusCode::CREATED || s == StatusCode::CONFLICT, "{v}");
    let (s, v) = p
        .call(
            "POST",
            &format!("/v1/orgs/{org}/spaces"),
            Some(json!({ "name": space })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn a_new_platform_has_the_default_org_and_space_and_orgs_can_be_made() {
    let p = TestPlatform::new().await;
    let (s, v) = p.call("GET", "/v1/orgs", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(names(&v), ["default"]);
    assert_eq!(v[0]["spaces"], json!(["default"]));
    org_and_space(&p, "acme", "dev").await;
    org_and_space(&p, "acme", "prod").await;
    let (s, v) = p.call("GET", "/v1/orgs/acme", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["spaces"], json!(["dev", "prod"]));
    let (s, v) = p.call("GET", "/v1/orgs/acme/spaces/dev", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["org"].as_str(), v["apps"].clone()),
        (Some("acme"), json!([]))
    );
    let (_, v) = p.call("GET", "/v1/orgs", None).await;
    assert_eq!(names(&v), ["acme", "default"]);
}

#[tokio::test]
async fn bad_or_taken_org_and_space_names_are_refused_and_nothing_is_made() {
    let p = TestPlatform::new().await;
    org_and_space(&p, "acme", "dev").await;
    let before = (p.store.list_orgs().unwrap(), p.store.list_spaces().unwrap());
    let cases = [
        (
            "/v1/orgs",
            json!({"name": "acme"}),
            StatusCode::CONFLICT,
            "org acme already exists",
        ),
        (
            "/v1/orgs",
            json!({"name": "Bad_Name"}),
            StatusCode::BAD_REQUEST,
            "org name \"Bad_Name\" is invalid",
        ),
        (
            "/v1/orgs",
            json!({"name": ""}),
            StatusCode::BAD_REQUEST,
            "org name \"\" is invalid",
        ),
        (
            "/v1/orgs",
            json!({"nom": "x"}),
            StatusCode::BAD_REQUEST,
            "invalid request body",
        ),
        (
            "/v1/orgs/acme/spaces",
            json!({"name": "dev"}),
            StatusCode::CONFLICT,
            "space dev already exists in org acme",
        ),
        (
            "/v1/orgs/acme/spaces",
            json!({"name": "../x"}),
            StatusCode::BAD_REQUEST,
            "space name \"../x\" is invalid",
        ),
        (
            "/v1/orgs/nope/spaces",
            json!({"name": "dev"}),
            StatusCode::NOT_FOUND,
            "org nope not found",
        ),
    ];
    for (path, body, status, message) in cases {
        let (s, v) = p.call("POST", path, Some(body.clone())).await;
        assert_eq!(s, status, "{path} {body}: {v}");
        let got = v["message"].as_str().unwrap_or_default();
        assert!(got.contains(message), "{path} {body}: {got}");
    }
    let after = (p.store.list_orgs().unwrap(), p.store.list_spaces().unwrap());
    assert_eq!(after, before, "nothing was written");
}

#[tokio::test]
async fn app_names_are_per_space_and_an_app_is_seen_only_in_its_space() {
    let p = TestPlatform::new().await;
    org_and_space(&p, "acme", "dev").await;
    let dev = "?org=acme&space=dev";
    p.push("web").await;
    // The same name in another space; its default route is the first app's, so it asks for none.
    p.push_at("web", dev, Some(json!({"no_route": true}))).await;
    p.eventually("two instances", || {
        (p.fake.running(Kind::Instance).len() == 2).then_some(())
    })
    .await;
    let (_, default_web) = p.call("GET", "/v1/apps/web", None).await;
    let (_, dev_web) = p.call("GET", &format!("/v1/apps/web{dev}"), None).await;
    assert_ne!(default_web["guid"], dev_web["guid"], "two apps");
    assert_eq!(dev_web["routes"], json!([]));
    let (_, list) = p.call("GET", &format!("/v1/apps{dev}"), None).await;
    assert_eq!(names(&list), ["web"]);
    assert_eq!(list[0]["guid"], dev_web["guid"], "the space's own app");
    // An app of another space is not found there, by every app endpoint.
    org_and_space(&p, "acme", "prod").await;
    let prod = "?org=acme&space=prod";
    for (method, path) in [
        ("GET", "/v1/apps/web"),
        ("PUT", "/v1/apps/web/processes/web"),
        ("POST", "/v1/apps/web/actions/stop"),
        ("GET", "/v1/apps/web/events"),
        ("GET", "/v1/apps/web/logs"),
        ("GET", "/v1/apps/web/logs/stream"),
        ("GET", "/v1/apps/web/revisions"),
        ("GET", "/v1/apps/web/deployments"),
        ("POST", "/v1/apps/web/builds"),
        ("DELETE", "/v1/apps/web/cache"),
        ("POST", "/v1/apps/web/routes"),
        ("DELETE", "/v1/apps/web"),
    ] {
        let body = match method {
            "PUT" => Some(json!({"instances": 3})),
            "POST" if path.ends_with("routes") => Some(json!({"route": "x.localhost"})),
            _ => None,
        };
        let (s, v) = p.call(method, &format!("{path}{prod}"), body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {v}");
        assert_eq!(v["message"], "app web not found", "{method} {path}");
    }
    let (_, list) = p.call("GET", &format!("/v1/apps{prod}"), None).await;
    assert_eq!(list, json!([]));
    assert_eq!(p.fake.running(Kind::Instance).len(), 2, "nothing stopped");
}

#[tokio::test]
async fn a_route_of_another_space_is_refused_without_naming_its_app() {
    let p = TestPlatform::new().await;
    org_and_space(&p, "acme", "dev").await;
    p.push("secret-name").await;
    let before = p.store.list_apps().unwrap();
    let (s, v) = p
        .call(
            "PUT",
            "/v1/apps/other?org=acme&space=dev",
            Some(json!({"routes": ["secret-name.localhost"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let msg = v["message"].as_str().unwrap();
    assert_eq!(
        msg,
        "route secret-name.localhost is already mapped to an app in another space"
    );
    assert_eq!(p.store.list_apps().unwrap(), before, "nothing created");
    // Within one space the holder is named, as before.
    let (s, v) = p
        .call(
            "PUT",
            "/v1/apps/other",
            Some(json!({"routes": ["secret-name.localhost"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .ends_with("to app secret-name"),
        "{v}"
    );
}

#[tokio::test]
async fn an_unknown_org_or_space_in_the_query_is_a_404_naming_it() {
    let p = TestPlatform::new().await;
    for (q, message) in [
        ("?org=nope", "org nope not found"),
        (
            "?org=default&space=nope",
            "space nope not found in org default",
        ),
        ("?space=nope", "space nope not found in org default"),
    ] {
        let (s, v) = p.call("PUT", &format!("/v1/apps/web{q}"), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{q}: {v}");
        assert_eq!(v["message"], message);
    }
    assert!(p.store.list_apps().unwrap().is_empty(), "nothing created");
}

#[tokio::test]
async fn deleting_a_space_deletes_its_apps_and_deleting_an_org_its_spaces() {
    let p = TestPlatform::new().await;
    org_and_space(&p, "acme", "dev").await;
    org_and_space(&p, "acme", "prod").await;
    p.push_at("one", "?org=acme&space=dev", None).await;
    p.push_at("two", "?org=acme&space=prod", None).await;
    p.push("kept").await;
    p.eventually("three instances", || {
        (p.fake.running(Kind::Instance).len() == 3).then_some(())
    })
    .await;
    let (s, v) = p.call("DELETE", "/v1/orgs/acme/spaces/dev", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, _) = p.call("GET", "/v1/apps/one?org=acme&space=dev", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    p.eventually("one's instance gone", || {
        (p.fake.running(Kind::Instance).len() == 2).then_some(())
    })
    .await;
    let (s, v) = p.call("DELETE", "/v1/orgs/acme", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, _) = p.call("GET", "/v1/orgs/acme", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let apps: Vec<String> = p
        .store
        .list_apps()
        .unwrap()
        .iter()
        .map(|a| a.name.to_string())
        .collect();
    assert_eq!(apps, ["kept"], "only the default space's app is left");
    assert_eq!(p.store.list_spaces().unwrap().len(), 1);
    p.eventually("two's instance gone", || {
        (p.fake.running(Kind::Instance).len() == 1).then_some(())
    })
    .await;
}

//! Every refusal answers the spec's status with a description naming the problem, and creates
//! nothing: no container, no volume, no record.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn refusals_create_nothing() {
    let f = Fixture::new().await;
    let put = |q: &str| format!("/v2/service_instances/r1{q}");
    let body = f.provision_body(PG, PG_SMALL);

    let (s, b) = f.call(Method::PUT, &put(""), Some(body.clone())).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (422, Some("AsyncRequired")),
        "{b}"
    );

    let mut unknown_plan = body.clone();
    unknown_plan["plan_id"] = json!("huge");
    let (s, b) = f
        .call(
            Method::PUT,
            &put("?accepts_incomplete=true"),
            Some(unknown_plan),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        b["description"]
            .as_str()
            .unwrap()
            .contains("unknown plan_id \"huge\""),
        "{b}"
    );

    let mut unknown_service = body.clone();
    unknown_service["service_id"] = json!("mysql");
    let (s, b) = f
        .call(
            Method::PUT,
            &put("?accepts_incomplete=true"),
            Some(unknown_service),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        b["description"]
            .as_str()
            .unwrap()
            .contains("unknown service_id \"mysql\""),
        "{b}"
    );

    let mut params = body.clone();
    params["parameters"] = json!({"size": 3});
    let (s, b) = f
        .call(Method::PUT, &put("?accepts_incomplete=true"), Some(params))
        .await;
    assert_eq!(s, 400);
    assert!(
        b["description"]
            .as_str()
            .unwrap()
            .contains("unknown parameter \"size\""),
        "{b}"
    );

    let mut params = body.clone();
    params["parameters"] = json!([1]);
    let (s, b) = f
        .call(Method::PUT, &put("?accepts_incomplete=true"), Some(params))
        .await;
    assert_eq!(s, 400);
    assert!(
        b["description"]
            .as_str()
            .unwrap()
            .contains("parameters must be a JSON object"),
        "{b}"
    );

    let (s, b) = f
        .call(
            Method::PUT,
            &put("?accepts_incomplete=true"),
            Some(json!({"service_id": PG, "plan_id": PG_SMALL})),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        b["description"]
            .as_str()
            .unwrap()
            .contains("space_guid is missing"),
        "{b}"
    );

    let mut elsewhere = body.clone();
    elsewhere["context"]["space_guid"] = json!("no-such-space");
    let (s, b) = f
        .call(
            Method::PUT,
            &put("?accepts_incomplete=true"),
            Some(elsewhere),
        )
        .await;
    assert_eq!(s, 500);
    assert!(
        b["description"]
            .as_str()
            .unwrap()
            .contains("no Docker network for the space no-such-space"),
        "{b}"
    );

    let r = f
        .http
        .put(format!("{}{}", f.url, put("?accepts_incomplete=true")))
        .basic_auth("pier", Some("s3cret"))
        .header("X-Broker-API-Version", "2.17")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not JSON"));

    // Auth and version.
    let r = f
        .http
        .get(format!("{}/v2/catalog", f.url))
        .basic_auth("pier", Some("wrong"))
        .header("X-Broker-API-Version", "2.17")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = f
        .http
        .get(format!("{}/v2/catalog", f.url))
        .basic_auth("pier", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let r = f
        .http
        .get(format!("{}/v2/catalog", f.url))
        .basic_auth("pier", Some("s3cret"))
        .header("X-Broker-API-Version", "3.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let (s, catalog) = f.call(Method::GET, "/v2/catalog", None).await;
    assert_eq!(s, 200);
    assert_eq!(catalog["services"][0]["name"], "postgresql");

    // Unknown things.
    let (s, _) = f
        .call(
            Method::DELETE,
            "/v2/service_instances/nope?service_id=x&plan_id=y",
            None,
        )
        .await;
    assert_eq!(s, 410);
    let (s, _) = f
        .call(
            Method::GET,
            "/v2/service_instances/nope/last_operation",
            None,
        )
        .await;
    assert_eq!(s, 410);
    let (s, _) = f
        .call(
            Method::DELETE,
            "/v2/service_instances/nope/service_bindings/b?service_id=x&plan_id=y",
            None,
        )
        .await;
    assert_eq!(s, 410);
    let (s, b) = f.bind("nope", "b", PG, PG_SMALL).await;
    assert_eq!(s, 404, "{b}");
    let (s, _) = f
        .call(
            Method::PATCH,
            "/v2/service_instances/nope?accepts_incomplete=true",
            Some(json!({"service_id": PG})),
        )
        .await;
    assert_eq!(s, 404);

    let (containers, volumes) = f.objects();
    assert!(
        containers.is_empty() && volumes.is_empty(),
        "{containers:?} {volumes:?}"
    );
    assert!(f.broker.instance("r1").await.is_none());
    let state = std::fs::read_to_string(f.data.path().join("broker.json")).unwrap_or_default();
    assert!(!state.contains("r1"), "{state}");
}

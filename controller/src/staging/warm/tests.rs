//! Warm staging containers through the API, on the fake runtime.

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use serde_json::json;

use crate::runtime::{ContainerSpec, Kind, Networking};
use crate::testkit::{successful_staging, TestPlatform};

/// A platform keeping up to `max` warm stagers, and the specs its stagings ran in, in order.
async fn platform(max: usize) -> (TestPlatform, Arc<Mutex<Vec<ContainerSpec>>>) {
    let p = TestPlatform::with_config(|c| c.warm_stagers = max).await;
    let ran = Arc::new(Mutex::new(Vec::new()));
    let seen = ran.clone();
    p.fake.on_start(Kind::Staging, move |spec| {
        seen.lock().unwrap().push(spec.clone());
        successful_staging()
    });
    (p, ran)
}

async fn warm_of(p: &TestPlatform, app: &str) -> (String, ContainerSpec) {
    p.eventually("a warm staging container", || {
        p.fake
            .running(Kind::WarmStaging)
            .into_iter()
            .find(|(_, s)| s.labels.get(crate::runtime::labels::keys::APP) == Some(app))
    })
    .await
}

async fn build(p: &TestPlatform, app: &str, source: &[u8]) {
    let sha = p.upload(&[("app.py", source)]).await;
    let (s, v) = p
        .call(
            "POST",
            &format!("/v1/apps/{app}/builds"),
            Some(json!({ "package": sha })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let done = v.as_array().and_then(|e| e.last()).cloned();
    assert!(
        done.is_some_and(|d| d.get("done").is_some()),
        "build did not finish: {v}"
    );
}

#[tokio::test]
async fn a_re_push_stages_in_the_container_made_ahead_of_it() {
    let (p, ran) = platform(2).await;
    p.push("hello").await;
    let (warm, spec) = warm_of(&p, "hello").await;
    // The container a cold staging makes, waiting on stdin for its go.
    let cold = ran.lock().unwrap()[0].clone();
    assert!(
        cold.open_stdin && spec.open_stdin,
        "both read their input on stdin"
    );
    assert_eq!(spec.cmd, cold.cmd);
    assert_ne!(spec.name, cold.name);
    assert_eq!(spec.labels.kind(), Some(Kind::WarmStaging));
    assert!(super::same_settings(&spec, &cold), "{spec:?} vs {cold:?}");
    assert_eq!(spec.networking, Networking::Disabled);
    assert_eq!(spec.user, "vcap");
    // A reconcile pass leaves it be.
    p.parts.reconciler.once().await.unwrap();
    assert!(p
        .fake
        .running(Kind::WarmStaging)
        .iter()
        .any(|(id, _)| *id == warm));

    build(&p, "hello", b"print('changed')").await;
    let runs = ran.lock().unwrap().clone();
    assert_eq!(runs.len(), 2, "one script run per staging");
    assert_eq!(
        runs[1].name, spec.name,
        "the second staging ran in the warm container"
    );
    assert!(p.fake.removed().contains(&warm), "used once, then removed");
    // And the next one is made for the staging after.
    let (next, _) = warm_of(&p, "hello").await;
    assert_ne!(next, warm);
}

#[tokio::test]
async fn other_settings_stage_cold_and_the_stale_warm_container_goes() {
    let (p, ran) = platform(2).await;
    p.push("hello").await;
    let (warm, _) = warm_of(&p, "hello").await;
    let (s, v) = p
        .call(
            "PATCH",
            "/v1/apps/hello/env",
            Some(json!({"var": {"GREETING": "hi"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    build(&p, "hello", b"print('changed')").await;
    let runs = ran.lock().unwrap().clone();
    assert_eq!(
        runs[1].labels.kind(),
        Some(Kind::Staging),
        "staged in a new container"
    );
    assert!(runs[1].env.iter().any(|e| e == "GREETING=hi"));
    p.eventually("the stale warm container removed", || {
        p.fake.removed().contains(&warm).then_some(())
    })
    .await;
    let (_, fresh) = warm_of(&p, "hello").await;
    assert!(fresh.env.iter().any(|e| e == "GREETING=hi"));
}

#[tokio::test]
async fn a_warm_container_that_died_is_replaced_by_a_cold_staging() {
    let (p, ran) = platform(2).await;
    p.push("hello").await;
    let (warm, _) = warm_of(&p, "hello").await;
    p.fake.vanish(&warm);
    build(&p, "hello", b"print('changed')").await;
    assert_eq!(ran.lock().unwrap()[1].labels.kind(), Some(Kind::Staging));
}

#[tokio::test]
async fn at_most_max_are_kept_and_delete_and_clear_cache_remove_theirs() {
    let (p, _) = platform(1).await;
    p.push("a").await;
    let (warm_a, _) = warm_of(&p, "a").await;
    p.push("b").await;
    let (warm_b, _) = warm_of(&p, "b").await;
    p.eventually("a's warm container evicted", || {
        p.fake.removed().contains(&warm_a).then_some(())
    })
    .await;
    let (s, v) = p.call("DELETE", "/v1/apps/b/cache", None).await;
    assert!(s.is_success(), "{s} {v}");
    assert!(
        p.fake.removed().contains(&warm_b),
        "removed before its cache volume"
    );

    build(&p, "b", b"print('again')").await;
    let (warm_b2, spec) = warm_of(&p, "b").await;
    let volume = spec
        .labels
        .get(crate::runtime::labels::keys::VOLUME)
        .unwrap()
        .to_string();
    let (s, v) = p.call("DELETE", "/v1/apps/b", None).await;
    assert!(s.is_success(), "{s} {v}");
    assert!(p.fake.removed().contains(&warm_b2));
    assert!(p.fake.running(Kind::Staging).is_empty());
    assert!(
        !p.fake.volumes().contains(&volume),
        "the cache volume went with the app"
    );
}

#[tokio::test]
async fn a_re_push_at_once_waits_for_the_container_being_prepared() {
    let (p, ran) = platform(2).await;
    p.push("hello").await;
    build(&p, "hello", b"print('changed')").await;
    let runs = ran.lock().unwrap().clone();
    assert_eq!(
        runs[1].labels.kind(),
        Some(Kind::WarmStaging),
        "{:?}",
        runs[1]
    );
}

#[tokio::test]
async fn a_reconcile_pass_while_one_is_being_made_leaves_it_be() {
    let (p, ran) = platform(2).await;
    let gate = p.fake.hold_starts(Kind::WarmStaging);
    p.push("hello").await;
    // Created, its start held: not in the list of warm containers yet.
    let made = p
        .eventually("a warm staging container created", || {
            p.fake
                .containers()
                .into_iter()
                .find(|(_, s, running)| s.labels.kind() == Some(Kind::WarmStaging) && !running)
                .map(|(id, _, _)| id)
        })
        .await;
    p.parts.reconciler.once().await.unwrap();
    assert!(
        !p.fake.removed().contains(&made),
        "the reconciler removed it"
    );
    gate.add_permits(1);
    let (warm, _) = warm_of(&p, "hello").await;
    assert_eq!(warm, made);
    build(&p, "hello", b"print('changed')").await;
    assert_eq!(
        ran.lock().unwrap()[1].labels.kind(),
        Some(Kind::WarmStaging)
    );
}

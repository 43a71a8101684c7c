//! Handler tests: the API against a temporary store and the fake runtime (no Docker), through
//! the real axum router with `oneshot`.

use std::time::Duration;

use http::StatusCode;
use pier_api::EventKind;
use serde_json::{json, Value};

use crate::runtime::fake::{Op, Script};
use crate::runtime::{Kind, Stream};
use crate::testkit::{TestPlatform, TOKEN};

fn kinds(events: &Value) -> Vec<String> {
    events
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn every_endpoint_but_info_needs_the_token() {
    let p = TestPlatform::new().await;
    let (s, v) = p.call_with("GET", "/v1/info", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["domain"], "localhost");
    for path in [
        "/v1/apps",
        "/v1/routes",
        "/v1/buildpacks",
        "/v1/apps/x/logs",
    ] {
        let (s, v) = p.call_with("GET", path, None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(v["code"], "unauthorized");
        assert!(v["message"].as_str().unwrap().contains("missing token"));
        let (s, v) = p.call_with("GET", path, None, Some("pier_wrong")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
        assert!(v["message"]
            .as_str()
            .unwrap()
            .contains("the token is wrong"));
    }
    let (s, _) = p.call_with("GET", "/v1/apps", None, Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = p.call("GET", "/v1/nothing-here", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["code"], "not_found");
}

#[tokio::test]
async fn the_router_token_reads_routes_and_posts_access_logs_and_nothing_else() {
    let p = TestPlatform::new().await;
    p.push("web").await;
    p.eventually("running", || {
        (p.fake.running(Kind::Instance).len() == 1).then_some(())
    })
    .await;
    let r = Some(crate::testkit::ROUTER_TOKEN);
    let (s, v) = p.call_with("GET", "/v1/routes", None, r).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["routes"][0]["host"], "web.localhost");
    let app = p.store.default_space_app("web").unwrap().unwrap();
    let batch = json!({"router_index": 2, "lines": [{"app_guid": app.guid, "time": "2026-12-01T00:00:00Z", "text": "GET / 200"}]});
    let (s, _) = p
        .call_with(
            "POST",
            "/v1/router/logs",
            Some(batch.to_string().into_bytes()),
            r,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let before = p.store.list_apps().unwrap();
    for (method, path) in [
        ("GET", "/v1/apps"),
        ("GET", "/v1/apps/web"),
        ("DELETE", "/v1/apps/web"),
        ("PUT", "/v1/apps/evil"),
        ("POST", "/v1/apps/web/actions/stop"),
        ("GET", "/v1/apps/web/logs"),
        ("POST", "/v1/packages"),
        ("POST", "/v1/routes"),
    ] {
        let (s, v) = p.call_with(method, path, None, r).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path}: {v}");
        assert_eq!(v["code"], "forbidden");
        assert!(
            v["message"].as_str().unwrap().contains("router token"),
            "{v}"
        );
    }
    assert_eq!(p.store.list_apps().unwrap(), before, "nothing changed");
    assert_eq!(p.fake.running(Kind::Instance).len(), 1, "nothing stopped");
}

#[tokio::test]
async fn refused_app_configs_write_nothing() {
    let p = TestPlatform::new().await;
    let bad = [
        ("/v1/apps/Bad_Name", json!({}), "invalid_name"),
        (
            "/v1/apps/ok",
            json!({"instances": 100000}),
            "invalid_request",
        ),
        ("/v1/apps/ok", json!({"memory_mb": 1}), "invalid_request"),
        (
            "/v1/apps/ok",
            json!({"env": {"1BAD": "x"}}),
            "invalid_request",
        ),
        (
            "/v1/apps/ok",
            json!({"env": {"PORT": "1"}}),
            "invalid_request",
        ),
        (
            "/v1/apps/ok",
            json!({"buildpacks": ["cobol"]}),
            "invalid_request",
        ),
        (
            "/v1/apps/ok",
            json!({"routes": ["api.localhost"]}),
            "invalid_request",
        ),
        (
            "/v1/apps/ok",
            json!({"unknown_field": 1, "instances": "x"}),
            "invalid_request",
        ),
    ];
    for (path, body, code) in bad {
        let (s, v) = p.call("PUT", path, Some(body.clone())).await;
        assert!(s.is_client_error(), "{path} {body}: {s}");
        assert_eq!(v["code"], code, "{path} {body}: {v}");
    }
    assert!(
        p.store.list_apps().unwrap().is_empty(),
        "nothing was written"
    );
    assert!(p.fake.containers().is_empty(), "nothing was started");
}

#[tokio::test]
async fn a_route_belongs_to_one_app() {
    let p = TestPlatform::new().await;
    let (s, _) = p.call("PUT", "/v1/apps/a", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = p
        .call(
            "PUT",
            "/v1/apps/b",
            Some(json!({"routes": ["a.localhost"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("already mapped to app a"));
    assert_eq!(p.store.list_apps().unwrap().len(), 1, "b was not created");
    let (s, v) = p
        .call(
            "POST",
            "/v1/apps/a/routes",
            Some(json!({"route": "extra.localhost/api"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = p.call("GET", "/v1/route-mappings", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    let (s, v) = p
        .call(
            "DELETE",
            "/v1/apps/a/routes",
            Some(json!({"route": "nope.localhost"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}

#[tokio::test]
async fn push_stages_starts_and_routes_an_instance() {
    let p = TestPlatform::new().await;
    let events = p.push("hello").await;
    let events = events.as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["log"]["text"] == "-----> Python app detected"),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["log"]["stream"] == "ERR"),
        "stderr kept apart"
    );
    let done = &events.last().unwrap()["done"];
    assert_eq!(done["buildpack"], "python");
    assert_eq!(done["process_types"]["web"], "python3 app.py");
    // The staging container is gone; one instance runs, healthy and routed.
    assert!(p.fake.running(Kind::Staging).is_empty());
    let running = p
        .eventually("one running instance", || {
            let r = p.fake.running(Kind::Instance);
            (r.len() == 1).then_some(r)
        })
        .await;
    let (id, spec) = &running[0];
    assert_eq!(spec.user, "vcap");
    assert!(spec.env.iter().any(|e| e == "PORT=8080"));
    assert!(spec
        .env
        .iter()
        .any(|e| e == "PIER_START_COMMAND=python3 app.py"));
    assert!(
        p.fake.uploads(id).is_empty(),
        "no copy of the droplet per instance"
    );
    assert!(
        spec.image.starts_with("pier-test/hello:"),
        "the app's image: {}",
        spec.image
    );
    assert_eq!(p.fake.app_images(), vec![spec.image.clone()]);
    p.eventually("RUNNING", || {
        let t = p.parts.routing.current()?;
        let r = t.routes.iter().find(|r| r.host == "hello.localhost")?;
        (r.backends.len() == 1).then_some(())
    })
    .await;
    let inst = p.instances("hello").await;
    assert_eq!(inst[0]["state"], "RUNNING");
    let (_, ev) = p.call("GET", "/v1/apps/hello/events", None).await;
    let k = kinds(&ev);
    for want in ["created", "staging", "staged", "deployment_started"] {
        assert!(k.iter().any(|x| x == want), "{want} in {k:?}");
    }
}

#[tokio::test]
async fn a_failed_staging_is_reported_and_nothing_runs() {
    let p = TestPlatform::new().await;
    p.fake.on_start(Kind::Staging, |_| Script {
        output: vec![(Stream::Out, "-----> No buildpack detected\n".into())],
        files: vec![],
        exit: Some(222),
    });
    p.call("PUT", "/v1/apps/nope", None).await;
    let sha = p.upload(&[("README", b"hi")]).await;
    let (s, events) = p
        .call(
            "POST",
            "/v1/apps/nope/builds",
            Some(json!({"package": sha})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let last = events.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["error"]["code"], "no_buildpack", "{last}");
    let app = p.store.default_space_app("nope").unwrap().unwrap();
    assert!(app.droplet.is_none() && app.staging.is_none());
    assert!(
        p.fake.containers().is_empty(),
        "the staging container was removed"
    );
    let (_, ev) = p.call("GET", "/v1/apps/nope/events", None).await;
    assert!(kinds(&ev).contains(&"staging_failed".to_string()));
}

#[tokio::test]
async fn a_saved_change_is_answered_even_when_the_runtime_fails() {
    let p = TestPlatform::new().await;
    p.push("web").await;
    p.eventually("running", || {
        (p.fake.running(Kind::Instance).len() == 1).then_some(())
    })
    .await;
    // Docker stops answering: the scale is saved and answered, and says what happened.
    p.fake.fail_next(Op::List, 1);
    let (s, v) = p
        .call(
            "PUT",
            "/v1/apps/web/processes/web",
            Some(json!({"instances": 2})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let app = p.store.default_space_app("web").unwrap().unwrap();
    assert_eq!(app.web().unwrap().instances, 2, "the change is saved");
    let (_, ev) = p.call("GET", "/v1/apps/web/events", None).await;
    let failed = ev
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == EventKind::ConvergenceFailed.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("a convergence_failed event in {ev}"));
    assert!(failed["message"]
        .as_str()
        .unwrap()
        .contains("the change is saved"));
    // The next pass converges.
    p.parts.reconciler.once().await.unwrap();
    p.eventually("two running", || {
        (p.fake.running(Kind::Instance).len() == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn delete_removes_everything_and_finishes_later_when_the_runtime_fails() {
    let p = TestPlatform::new().await;
    p.push("gone").await;
    p.eventually("running", || {
        (p.fake.running(Kind::Instance).len() == 1).then_some(())
    })
    .await;
    let app = p.store.default_space_app("gone").unwrap().unwrap();
    let droplet = app.droplet.clone().unwrap().sha256;
    assert!(p.blobs.exists(&droplet));
    assert_eq!(p.fake.volumes().len(), 1, "the cache volume");
    // The delete's own cleanup and the pass it runs both fail to remove the volume.
    p.fake.fail_next(Op::RemoveVolume, 2);
    let (s, v) = p.call("DELETE", "/v1/apps/gone", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, _) = p.call("GET", "/v1/apps/gone", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(p.fake.containers().is_empty(), "its instance is gone");
    assert_eq!(p.fake.volumes().len(), 1, "the volume removal failed");
    assert_eq!(p.store.cleanups().unwrap().len(), 1, "and is queued");
    p.parts.reconciler.once().await.unwrap();
    assert!(p.fake.volumes().is_empty());
    assert!(!p.blobs.exists(&droplet));
    assert!(p.store.cleanups().unwrap().is_empty());
    let t = p.parts.routing.current().unwrap();
    assert!(t.routes.is_empty(), "its route is gone");
}

#[tokio::test]
async fn scale_stop_and_unknown_actions() {
    let p = TestPlatform::new().await;
    p.push("s").await;
    let (s, v) = p
        .call(
            "PUT",
            "/v1/apps/s/processes/web",
            Some(json!({"instances": 3})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    p.eventually("three running", || {
        (p.fake.running(Kind::Instance).len() == 3).then_some(())
    })
    .await;
    let (s, v) = p
        .call(
            "PUT",
            "/v1/apps/s/processes/worker",
            Some(json!({"instances": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("has no process type"));
    let (s, v) = p.call("POST", "/v1/apps/s/actions/explode", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("use start, stop or restart"));
    let (s, _) = p.call("POST", "/v1/apps/s/actions/stop", None).await;
    assert_eq!(s, StatusCode::OK);
    p.eventually("stopped", || {
        p.fake.running(Kind::Instance).is_empty().then_some(())
    })
    .await;
    let (s, v) = p
        .call("POST", "/v1/apps/s/deployments/current/pause", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}

#[tokio::test]
async fn a_second_build_while_one_runs_is_refused() {
    let p = TestPlatform::new().await;
    // A staging that keeps running until told.
    p.fake.on_start(Kind::Staging, |_| Script {
        output: vec![],
        files: vec![],
        exit: None,
    });
    p.call("PUT", "/v1/apps/busy", None).await;
    let sha = p.upload(&[("app.py", b"x")]).await;
    let first = {
        use tower::ServiceExt as _;
        let req = http::Request::builder()
            .method("POST")
            .uri("/v1/apps/busy/builds")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(axum::body::Body::from(json!({"package": sha}).to_string()))
            .unwrap();
        p.router.clone().oneshot(req).await.unwrap()
    };
    assert_eq!(first.status(), StatusCode::OK);
    let staging = p
        .eventually("staging runs", || {
            p.fake.running(Kind::Staging).into_iter().next()
        })
        .await;
    let (s, v) = p
        .call(
            "POST",
            "/v1/apps/busy/builds",
            Some(json!({"package": sha})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    // The staging the reconciler sees as active is left alone.
    p.parts.reconciler.once().await.unwrap();
    assert_eq!(p.fake.running(Kind::Staging).len(), 1);
    p.fake.exit(&staging.0, 1, false);
    drop(first);
}

#[tokio::test]
async fn an_instance_that_never_gets_healthy_is_crashed_with_the_reason() {
    let p = TestPlatform::new().await;
    p.probe.all_unhealthy();
    p.call(
        "PUT",
        "/v1/apps/sick",
        Some(json!({"health_check": {"type": "port", "timeout_secs": 1, "invocation_timeout_secs": 1}})),
    )
    .await;
    let sha = p.upload(&[("app.py", b"x")]).await;
    p.call(
        "POST",
        "/v1/apps/sick/builds",
        Some(json!({"package": sha})),
    )
    .await;
    let (s, _) = p.call("POST", "/v1/apps/sick/actions/start", None).await;
    assert_eq!(s, StatusCode::OK);
    let mut reason = String::new();
    for _ in 0..500 {
        let inst = p.instances("sick").await;
        if let Some(r) = inst.first().and_then(|i| i["reason"].as_str()) {
            reason = r.to_string();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        reason.contains("health check (TCP connect to port 8080) did not pass within 1 s"),
        "{reason:?}"
    );
    assert!(
        p.parts.routing.current().unwrap().routes[0]
            .backends
            .is_empty(),
        "never routed"
    );
}

/// Pushes `app` with a staging that does what `script` says; the build's events.
async fn stage_with(p: &TestPlatform, app: &str, script: Script) -> Vec<Value> {
    p.fake.on_start(Kind::Staging, move |_| script.clone());
    p.call("PUT", &format!("/v1/apps/{app}"), None).await;
    let sha = p.upload(&[("app.py", b"x")]).await;
    let (s, events) = p
        .call(
            "POST",
            &format!("/v1/apps/{app}/builds"),
            Some(json!({"package": sha})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{events}");
    events.as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn staging_output_is_bounded_per_line_and_in_total() {
    let p = TestPlatform::with_config(|c| c.max_staging_output_bytes = 1024 * 1024).await;
    let mut script = crate::testkit::successful_staging();
    // 3 MiB with no newline, then a line that would fit.
    script.output = vec![
        (Stream::Out, "x".repeat(3 * 1024 * 1024)),
        (Stream::Out, "\nafter\n".into()),
    ];
    let events = stage_with(&p, "loud", script).await;
    let lines: Vec<&Value> = events.iter().filter_map(|e| e.get("log")).collect();
    let shown: usize = lines
        .iter()
        .filter(|l| l["source"] == "STG/0")
        .map(|l| l["text"].as_str().unwrap().len())
        .sum();
    assert!(
        lines
            .iter()
            .all(|l| l["text"].as_str().unwrap().len() <= pier_api::logs::MAX_LINE_BYTES),
        "every line is cut at the log's line limit"
    );
    assert!(shown <= 1024 * 1024, "at most the limit is shown: {shown}");
    let notices: Vec<&str> = lines
        .iter()
        .filter(|l| l["source"] == "LGR")
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert!(notices[0].contains("more than 1 MiB"), "{notices:?}");
    assert!(
        notices[1].contains("lines (") && notices[1].contains("not shown"),
        "{notices:?}"
    );
    assert!(
        events.last().unwrap().get("done").is_some(),
        "the staging still succeeds"
    );
}

#[tokio::test]
async fn oversized_metadata_and_droplets_fail_the_staging_clearly() {
    let p = TestPlatform::with_config(|c| c.max_droplet_bytes = 64 * 1024).await;
    let mut big_release = crate::testkit::successful_staging();
    big_release.files[2].1 = vec![b'#'; 2 * 1024 * 1024];
    let ev = stage_with(&p, "meta", big_release).await;
    let err = &ev.last().unwrap()["error"];
    assert_eq!(err["code"], "staging_failed");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("release.yml larger than 1024 KiB"),
        "{err}"
    );

    let mut big_droplet = crate::testkit::successful_staging();
    big_droplet.files[0].1 = vec![0u8; 128 * 1024];
    let ev = stage_with(&p, "fat", big_droplet).await;
    let err = &ev.last().unwrap()["error"];
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("larger than the controller's limit of 65536 bytes"),
        "{err}"
    );
    // Neither left a droplet, and only the uploaded packages are stored.
    for app in ["meta", "fat"] {
        let a = p.store.default_space_app(app).unwrap().unwrap();
        assert!(a.droplet.is_none(), "{app}");
    }
    // A release.yml anywhere but at the top of /tmp/out is not read.
    let mut nested = crate::testkit::successful_staging();
    nested.files[2].0 = "/tmp/out/sub/release.yml".into();
    let ev = stage_with(&p, "nested", nested).await;
    let done = &ev.last().unwrap()["done"];
    assert!(done["process_types"].get("web").is_none(), "{done}");
}

#[tokio::test]
async fn packages_no_build_used_are_collected_after_the_grace_period() {
    let p = TestPlatform::with_config(|c| c.package_gc_grace_secs = 0).await;
    p.push("kept").await;
    let app = p.store.default_space_app("kept").unwrap().unwrap();
    let stray = p.upload(&[("never.py", b"built")]).await;
    assert!(p.blobs.exists(&stray));
    let gone = p.parts.reconciler.collect_garbage().unwrap();
    assert_eq!(gone, 1, "only the stray upload");
    assert!(!p.blobs.exists(&stray));
    assert!(
        p.blobs.exists(app.package.as_deref().unwrap()),
        "the app's package stays"
    );
    assert!(
        p.blobs.exists(&app.droplet.unwrap().sha256),
        "its droplet stays"
    );
}

#[tokio::test]
async fn hostile_packages_are_refused_and_nothing_is_stored() {
    let p = TestPlatform::with_config(|c| c.max_package_entries = 100).await;
    let names: Vec<String> = (0..150).map(|i| format!("f{i}")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let (s, v) = p
        .call_with(
            "POST",
            "/v1/packages",
            Some(crate::testkit::targz(&files)),
            Some(TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("more than 100 entries"),
        "{v}"
    );
    assert!(p.blobs.list().unwrap().is_empty(), "nothing stored");
}

#[tokio::test]
async fn instances_get_cpu_shares_by_memory_and_the_network_is_isolated() {
    let p = TestPlatform::with_config(|c| c.instance_max_cpus = 0.5).await;
    p.call("PUT", "/v1/apps/w", Some(json!({"memory_mb": 1024})))
        .await;
    let sha = p.upload(&[("app.py", b"x")]).await;
    p.call("POST", "/v1/apps/w/builds", Some(json!({"package": sha})))
        .await;
    p.call("POST", "/v1/apps/w/actions/start", None).await;
    let (_, spec) = p
        .eventually("running", || {
            p.fake.running(Kind::Instance).into_iter().next()
        })
        .await;
    assert_eq!(spec.cpu_shares, Some(1024), "1 share per MiB");
    assert_eq!(spec.nano_cpus, Some(500_000_000), "the hard cap");
    assert_eq!(spec.memory_mb, 1024);
    let crate::runtime::Networking::Fixed { network, .. } = &spec.networking else {
        panic!("on the instance network")
    };
    assert_eq!(
        p.fake.isolation(network),
        Some(crate::runtime::HostAccess::Block),
        "blocked from the host by default"
    );
}

/// A staging whose droplet differs every time (so each push is a new revision).
fn counting_staging() -> impl Fn(&crate::runtime::ContainerSpec) -> Script {
    let n = std::sync::atomic::AtomicUsize::new(0);
    move |_| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut s = crate::testkit::successful_staging();
        s.files[0].1 = crate::testkit::targz(&[("app/app.py", format!("print({i})").as_bytes())]);
        s
    }
}

#[tokio::test]
async fn app_images_are_made_once_and_go_with_their_droplets() {
    let p = TestPlatform::with_config(|c| c.revisions_kept = 2).await;
    p.fake.on_start(Kind::Staging, counting_staging());
    p.call("PUT", "/v1/apps/img", None).await;
    let mut images = Vec::new();
    for i in 0..3 {
        let sha = p.upload(&[("app.py", format!("v{i}").as_bytes())]).await;
        let (_, ev) = p
            .call("POST", "/v1/apps/img/builds", Some(json!({"package": sha})))
            .await;
        assert!(
            ev.as_array().unwrap().last().unwrap().get("done").is_some(),
            "{ev}"
        );
        let (s, v) = p.call("POST", "/v1/apps/img/actions/start", None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let image = p
            .eventually("the new revision runs", || {
                let r = p.fake.running(Kind::Instance);
                (r.len() == 1 && !images.contains(&r[0].1.image)).then(|| r[0].1.image.clone())
            })
            .await;
        images.push(image);
        for _ in 0..500 {
            let (_, d) = p.call("GET", "/v1/apps/img/deployments", None).await;
            if d[0]["state"] == "SUCCEEDED" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    // Two revisions are kept: the first one's droplet and image are gone.
    p.parts.reconciler.collect_images().await.unwrap();
    let now = p.fake.app_images();
    assert!(
        !now.contains(&images[0]),
        "the pruned revision's image went: {now:?}"
    );
    assert!(
        now.contains(&images[1]) && now.contains(&images[2]),
        "{now:?}"
    );
    // Removed behind the platform's back: made again before the next start.
    p.fake.forget_image(&images[2]);
    let (s, _) = p
        .call(
            "PUT",
            "/v1/apps/img/processes/web",
            Some(json!({"instances": 2})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    p.eventually("two instances", || {
        (p.fake.running(Kind::Instance).len() == 2).then_some(())
    })
    .await;
    assert!(
        p.fake.app_images().contains(&images[2]),
        "made again from the droplet"
    );
    // Deleting the app takes its images.
    let (s, _) = p.call("DELETE", "/v1/apps/img", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(p.fake.app_images().is_empty(), "{:?}", p.fake.app_images());
}

#[tokio::test]
async fn a_droplet_that_would_escape_its_layer_fails_the_build_and_leaves_no_image() {
    let p = TestPlatform::new().await;
    let mut s = crate::testkit::successful_staging();
    s.files[0].1 = crate::staging::package::tests::raw_tar(&[(
        "../../etc/cron.d/evil",
        tar::EntryType::Regular,
        b"* * * * * root sh",
        None,
    )]);
    let ev = stage_with(&p, "evil", s).await;
    let err = &ev.last().unwrap()["error"];
    assert_eq!(err["code"], "staging_failed", "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("the droplet cannot become an image"),
        "{err}"
    );
    assert!(p.fake.app_images().is_empty());
    let app = p.store.default_space_app("evil").unwrap().unwrap();
    assert!(app.droplet.is_none());
    p.parts.reconciler.collect_garbage().unwrap();
    assert_eq!(
        p.blobs.list().unwrap().len(),
        1,
        "only the package is stored; the droplet went"
    );
}

#[tokio::test]
async fn stats_are_the_latest_background_sample() {
    use crate::runtime::Sample;
    let p = TestPlatform::new().await;
    p.push("s").await;
    let (id, _) = p
        .eventually("running", || {
            p.fake.running(Kind::Instance).into_iter().next()
        })
        .await;
    p.eventually("RUNNING", || {
        let t = p.parts.routing.current()?;
        (t.routes.iter().any(|r| r.backends.len() == 1)).then_some(())
    })
    .await;
    // Before the first sample: a running instance, no figures (and no waiting for them).
    let (s, v) = p.call("GET", "/v1/apps/s?stats=true", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["instances"][0]["stats"].is_null(), "{v}");
    let at = |cpu: u64, system: u64| Sample {
        cpu_total_ns: cpu,
        system_ns: system,
        online_cpus: 2,
        memory_bytes: 50 << 20,
        memory_limit_bytes: 256 << 20,
    };
    p.fake.set_sample(&id, at(0, 0));
    p.parts.instances.sample_usage_once().await;
    // A quarter of two CPUs' time since the previous sample: half a core.
    p.fake.set_sample(&id, at(250, 1000));
    p.parts.instances.sample_usage_once().await;
    let (_, v) = p.call("GET", "/v1/apps/s?stats=true", None).await;
    let st = &v["instances"][0]["stats"];
    assert_eq!(st["cpu_percent"], 50.0, "{v}");
    assert_eq!(st["memory_bytes"], 50 << 20);
    assert_eq!(st["disk_bytes"], 4096, "walked on the first sample");
    assert!(st["sampled_at"].is_string(), "{v}");
    // Without ?stats the figures are left out.
    let (_, v) = p.call("GET", "/v1/apps/s", None).await;
    assert!(v["instances"][0]["stats"].is_null(), "{v}");
}

#[tokio::test]
async fn a_long_poll_answers_at_the_next_change() {
    let p = TestPlatform::new().await;
    p.call("PUT", "/v1/apps/lp", None).await;
    let (_, v) = p.call("GET", "/v1/apps/lp", None).await;
    let seen = v["state_version"].as_u64().expect("a version");
    assert!(seen > 0);
    // Nothing changes: the answer comes at the wait's end, with the same version.
    let t = std::time::Instant::now();
    let (s, v) = p
        .call(
            "GET",
            &format!("/v1/apps/lp?wait_after={seen}&wait_secs=1"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state_version"].as_u64(), Some(seen));
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    // A change while waiting: answered at once, with the change in it.
    let waiter = {
        let router = p.router.clone();
        tokio::spawn(async move {
            use tower::ServiceExt as _;
            let req = axum::http::Request::get(format!("/v1/apps/lp?wait_after={seen}"))
                .header("authorization", format!("Bearer {}", crate::testkit::TOKEN))
                .body(axum::body::Body::empty())
                .unwrap();
            let resp = router.oneshot(req).await.unwrap();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&body).unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    p.call("PUT", "/v1/apps/lp", Some(json!({"memory_mb": 512})))
        .await;
    let v = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken by the change")
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(v["state_version"].as_u64().unwrap() > seen);
    assert_eq!(v["processes"][0]["memory_mb"], 512);
    // Refusals come at once: a bad counter, a name that cannot exist, an unknown app.
    let t = std::time::Instant::now();
    let (s, _) = p.call("GET", "/v1/apps/lp?wait_after=soon", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = p.call("GET", "/v1/apps/No_Such?wait_after=1", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = p
        .call(
            "GET",
            &format!("/v1/apps/nosuch?wait_after={seen}&wait_secs=5"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

/// The built-in brokers' service containers carry this controller's labels; the reconciler
/// leaves them alone (other containers of no known use are removed) and keeps their addresses.
#[tokio::test]
async fn the_reconciler_leaves_service_containers_alone() {
    use crate::runtime::labels::keys;
    use crate::runtime::{ContainerRuntime as _, ContainerSpec, Labels, Networking};
    let p = TestPlatform::new().await;
    let spec = |name: &str, labels: Labels| ContainerSpec {
        name: name.into(),
        image: crate::runtime::stack::DEFAULT_STACK_IMAGE.into(),
        cmd: vec![],
        env: vec![],
        user: "root".into(),
        working_dir: "/".into(),
        labels,
        memory_mb: 256,
        pids_limit: 512,
        networking: Networking::Disabled,
        mounts: vec![],
        publish_8080: false,
        init: false,
        stop_timeout: None,
        cpu_shares: None,
        nano_cpus: None,
        open_stdin: false,
    };
    let service = Labels::new("test", Kind::Service).with(keys::INSTANCE, "svc-1");
    let svc = p.fake.create(&spec("pg", service)).await.unwrap();
    p.fake.start(&svc).await.unwrap();
    let other = Labels::new("test", Kind::AppImage);
    let junk = p.fake.create(&spec("junk", other)).await.unwrap();
    p.parts.reconciler.once().await.unwrap();
    let left: Vec<String> = p
        .fake
        .containers()
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    assert_eq!(
        left,
        vec![svc.clone()],
        "the service container stays, the other goes"
    );
    assert!(p.fake.removed().contains(&junk));
}

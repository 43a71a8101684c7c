//! The built-in PostgreSQL and Redis brokers end to end: the real binaries, Docker and servers.
//! The controller starts the brokers and registers them, so the marketplace has both with no
//! operator step; examples/services-app, bound to them, reaches them by name on its space's
//! network. A row survives a restage, a controller kill -9 and a restart of the service container;
//! a Redis counter is shared by two instances; deleting the service removes its data.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::time::Duration;

use pier_e2e::*;
use serde_json::Value;

fn api(p: &Platform, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let (s, _, text) = http_request(
        method,
        &format!("{}{path}", p.api),
        None,
        Some(&p.token),
        &[("content-type", "application/json")],
        bytes.as_bytes(),
    );
    (
        s,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `pier create-service OFFERING PLAN NAME --wait`, which returns once the broker is done.
fn create_service(p: &Platform, offering: &str, plan: &str, name: &str, dir: &std::path::Path) {
    let out = p.pier_ok(&["create-service", offering, plan, name, "--wait"], dir);
    let (_, b) = api(p, "GET", &format!("/v1/service-instances/{name}"), None);
    assert_eq!(
        b["managed"]["last_operation"]["state"], "succeeded",
        "{out}\n{b}"
    );
}

fn service_containers(p: &Platform) -> Vec<String> {
    p.containers()
        .into_iter()
        .filter(|(_, l)| l.get("pier.kind").map(String::as_str) == Some("service"))
        .map(|(id, _)| id)
        .collect()
}

fn volumes(p: &Platform) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["volume", "ls", "-q", "--filter"])
        .arg(format!("label=pier.controller={}", p.controller_id))
        .arg("--filter")
        .arg("label=pier.kind=service")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// `GET path` through the router until it answers 200 with `want` in it.
fn until_body(p: &Platform, host: &str, path: &str, want: &str) -> String {
    eventually(Duration::from_secs(90), want, || {
        let (s, b) = p.get_via_router(host, path);
        (s == 200 && b.contains(want)).then_some(b)
    })
}

#[test]
fn a_postgresql_row_survives_restage_controller_kill_and_service_restart() {
    let mut p = Platform::start();
    let app = copy_dir(&repo_root().join("examples").join("services-app"));
    let dir = app.path();
    // No operator step: the built-in brokers are registered and their plans enabled.
    let market = p.pier_ok(&["marketplace"], dir);
    for want in ["postgresql", "redis", "small", "medium", "pier-services"] {
        assert!(market.contains(want), "{want} missing from:\n{market}");
    }

    p.pier_ok(&["push", "shop"], dir);
    create_service(&p, "postgresql", "small", "db", dir);
    p.pier_ok(&["bind-service", "shop", "db"], dir);
    let env = p.pier_ok(&["env", "shop"], dir);
    assert!(
        env.contains("\"label\": \"postgresql\"") || env.contains("\"label\":\"postgresql\""),
        "{env}"
    );
    // The app itself reads DATABASE_URL, which the binding sets.
    assert!(env.contains("jdbcUrl"), "{env}");
    until_body(&p, "shop.localhost", "/rows?add=first", "rows=first");

    p.pier_ok(&["restage", "shop"], dir);
    until_body(&p, "shop.localhost", "/rows", "rows=first");

    p.controller.take().unwrap().kill9();
    p.start_controller();
    until_body(
        &p,
        "shop.localhost",
        "/rows?add=second",
        "rows=first,second",
    );

    let containers = service_containers(&p);
    assert_eq!(containers.len(), 1, "{containers:?}");
    let out = std::process::Command::new("docker")
        .args(["restart", &containers[0]])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    until_body(&p, "shop.localhost", "/rows", "rows=first,second");

    // Deleting the service (once unbound) removes the server and its data.
    p.pier_ok(&["unbind-service", "shop", "db"], dir);
    p.pier_ok(&["delete-service", "db", "-f"], dir);
    eventually(
        Duration::from_secs(60),
        "the service's container and volume go",
        || (service_containers(&p).is_empty() && volumes(&p).is_empty()).then_some(()),
    );
}

#[test]
fn a_redis_counter_is_shared_by_two_instances() {
    let p = Platform::start();
    let app = copy_dir(&repo_root().join("examples").join("services-app"));
    let dir = app.path();
    p.pier_ok(&["push", "counter", "-i", "2"], dir);
    create_service(&p, "redis", "small", "cache", dir);
    p.pier_ok(&["bind-service", "counter", "cache"], dir);
    let env = p.pier_ok(&["env", "counter"], dir);
    assert!(env.contains("\"label\": \"redis\""), "{env}");
    let mut seen = std::collections::BTreeSet::new();
    let mut last = 0;
    for _ in 0..20 {
        let b = until_body(&p, "counter.localhost", "/incr", "count=");
        let n: u64 = b
            .split("count=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{b}"));
        assert_eq!(n, last + 1, "the counter skipped or went back: {b}");
        last = n;
        seen.insert(b.split("instance=").nth(1).unwrap().trim().to_string());
    }
    assert_eq!(
        seen.len(),
        2,
        "one instance answered every request: {seen:?}"
    );
}

//! The PostgreSQL broker against real Docker and a real PostgreSQL: provision, bind, connect from
//! the space's network, plan limits, revocation on unbind, data across restarts, deprovision.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

fn psql(f: &Fixture, uri: &str, sql: &str) -> (bool, String) {
    f.on_network(&[
        "psql",
        uri,
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-Atc",
        sql,
    ])
}

#[tokio::test]
async fn provision_bind_unbind_deprovision() {
    let mut f = Fixture::new().await;
    let id = "0f8e0c2e-pg-1";
    // While the server starts, last_operation says so and when to ask again.
    let (s, b) = f
        .call(
            Method::PUT,
            &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
            Some(f.provision_body(PG, PG_SMALL)),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let r = f
        .http
        .get(format!(
            "{}/v2/service_instances/{id}/last_operation",
            f.url
        ))
        .basic_auth("pier", Some("s3cret"))
        .header("X-Broker-API-Version", API_VERSION)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers().get("retry-after").unwrap(), "1");
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["state"],
        "in progress"
    );
    let last = f.follow(id, b["operation"].as_str().unwrap()).await;
    assert_eq!(last["state"], "succeeded", "{last}");
    let inst = f.broker.instance(id).await.unwrap();

    // The plan's limits are the container's and the server's.
    let (_, mem) = docker_cli(&[
        "inspect",
        "-f",
        "{{.HostConfig.Memory}} {{.HostConfig.RestartPolicy.Name}}",
        &inst.container,
    ]);
    assert_eq!(mem.trim(), format!("{} unless-stopped", 256 * 1024 * 1024));
    let (_, labels) = docker_cli(&["inspect", "-f", "{{index .Config.Labels \"pier.controller\"}} {{index .Config.Labels \"pier.kind\"}} {{index .Config.Labels \"pier.plan\"}}", &inst.container]);
    assert_eq!(labels.trim(), format!("{} service small", f.controller_id));

    // Identical again: 200; the same id with another plan: 409, and nothing new is made.
    let body = f.provision_body(PG, PG_SMALL);
    let path = format!("/v2/service_instances/{id}?accepts_incomplete=true");
    let (s, _) = f.call(Method::PUT, &path, Some(body)).await;
    assert_eq!(s, 200);
    let (s, b) = f
        .call(Method::PUT, &path, Some(f.provision_body(PG, PG_MEDIUM)))
        .await;
    assert_eq!(s, 409, "{b}");
    let (containers, volumes) = f.objects();
    assert_eq!(
        (containers.len(), volumes.len()),
        (1, 1),
        "{containers:?} {volumes:?}"
    );

    // Bind: the app's own role; it reaches the server by name from the space's network.
    let (s, b1) = f.bind(id, "bind-1", PG, PG_SMALL).await;
    assert_eq!(s, 201, "{b1}");
    let c1 = &b1["credentials"];
    assert_eq!(c1["host"], inst.container.as_str());
    assert_eq!(c1["port"], 5432);
    assert_eq!(c1["name"], "db");
    let uri1 = c1["uri"].as_str().unwrap().to_string();
    assert!(uri1.starts_with("postgres://b_bind1:"), "{uri1}");
    assert!(c1["jdbcUrl"].as_str().unwrap().starts_with(&format!(
        "jdbc:postgresql://{}:5432/db?user=b_bind1&password=",
        inst.container
    )));
    let (ok, out) = psql(
        &f,
        &uri1,
        "CREATE TABLE t (x int); INSERT INTO t VALUES (42); SELECT x FROM t",
    );
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "42");
    let (_, max) = psql(&f, &uri1, "SHOW max_connections");
    assert_eq!(max.trim(), "23", "20 for the plan, 3 for the broker");

    // The same binding again: 200 with the same credentials; another: its own role, same data.
    let (s, again) = f.bind(id, "bind-1", PG, PG_SMALL).await;
    assert_eq!((s, &again["credentials"]), (200, c1));
    let (s, b2) = f.bind(id, "bind-2", PG, PG_SMALL).await;
    assert_eq!(s, 201, "{b2}");
    let uri2 = b2["credentials"]["uri"].as_str().unwrap().to_string();
    assert_ne!(uri1, uri2);
    let (ok, out) = psql(
        &f,
        &uri2,
        "INSERT INTO t VALUES (43); SELECT count(*) FROM t",
    );
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "2");

    // A session of the first binding, open while it is unbound.
    let label = format!("pier.controller={}", f.controller_id);
    let (ok, session) = docker_cli(&[
        "run",
        "-d",
        "--label",
        &label,
        "--network",
        &f.network,
        "--user",
        "nobody",
        pier_broker::image::DEFAULT_IMAGE,
        "psql",
        &uri1,
        "-c",
        "SELECT pg_sleep(120)",
    ]);
    assert!(ok, "{session}");
    let session = session.trim().to_string();
    let mut open = false;
    for _ in 0..50 {
        let (_, n) = psql(
            &f,
            &uri2,
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'b_bind1'",
        );
        if n.trim() == "1" {
            open = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(open, "the first binding's session never showed up");

    // Unbind revokes: its session is ended, the old credentials no longer connect.
    let (s, _) = f.call(Method::DELETE, &format!("/v2/service_instances/{id}/service_bindings/bind-1?service_id={PG}&plan_id={PG_SMALL}"), None).await;
    assert_eq!(s, 200);
    let (ok, out) = psql(&f, &uri1, "SELECT 1");
    assert!(!ok, "the unbound role still connects: {out}");
    assert!(out.contains("password authentication failed"), "{out}");
    let (_, code) = docker_cli(&["wait", &session]);
    assert_ne!(code.trim(), "0", "the session outlived its binding");
    let (_, logs) = docker_cli(&["logs", &session]);
    assert!(logs.contains("terminating connection"), "{logs}");
    docker_cli(&["rm", "-f", &session]);
    let (s, _) = f.call(Method::DELETE, &format!("/v2/service_instances/{id}/service_bindings/bind-1?service_id={PG}&plan_id={PG_SMALL}"), None).await;
    assert_eq!(s, 410);

    // The data survives a restart of the container and of the broker.
    let (ok, out) = docker_cli(&["restart", &inst.container]);
    assert!(ok, "{out}");
    f.restart_broker().await;
    let mut tries = 0;
    let out = loop {
        let (ok, out) = psql(&f, &uri2, "SELECT sum(x) FROM t");
        if ok || tries > 60 {
            break out;
        }
        tries += 1;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert_eq!(out.trim(), "85");
    let (s, again) = f.bind(id, "bind-2", PG, PG_SMALL).await;
    assert_eq!((s, &again["credentials"]), (200, &b2["credentials"]));

    // Plan change: a new container on the same volume, with the new limits.
    let (s, b) = f
        .call(
            Method::PATCH,
            &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
            Some(json!({"service_id": PG, "plan_id": PG_MEDIUM})),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let last = f.follow(id, b["operation"].as_str().unwrap()).await;
    assert_eq!(last["state"], "succeeded", "{last}");
    let (ok, out) = psql(
        &f,
        &uri2,
        "SELECT current_setting('max_connections'), sum(x) FROM t",
    );
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "103|85");

    // Deprovision: the container and its volume (the data) are gone.
    let (s, _) = f.call(Method::DELETE, &format!("/v2/service_instances/{id}?service_id={PG}&plan_id={PG_MEDIUM}&accepts_incomplete=true"), None).await;
    assert_eq!(s, 200);
    let (containers, volumes) = f.objects();
    assert!(
        containers.is_empty() && volumes.is_empty(),
        "{containers:?} {volumes:?}"
    );
    let (s, _) = f
        .call(
            Method::GET,
            &format!("/v2/service_instances/{id}/last_operation"),
            None,
        )
        .await;
    assert_eq!(s, 410);
    let (s, _) = f
        .call(
            Method::DELETE,
            &format!("/v2/service_instances/{id}?service_id={PG}&plan_id={PG_MEDIUM}"),
            None,
        )
        .await;
    assert_eq!(s, 410);
}

#[tokio::test]
async fn a_server_that_does_not_come_up_fails_and_leaves_nothing() {
    // PostgreSQL's initdb alone takes longer than this.
    let f = Fixture::with_timeout(std::time::Duration::from_millis(300)).await;
    let id = "pg-too-slow";
    let last = f.provision(id, PG, PG_SMALL).await;
    assert_eq!(last["state"], "failed", "{last}");
    let d = last["description"].as_str().unwrap();
    assert!(d.contains("did not accept connections within 0 s"), "{d}");
    let (containers, volumes) = f.objects();
    assert!(
        containers.is_empty() && volumes.is_empty(),
        "{containers:?} {volumes:?}"
    );
    // The same request again is refused until it is deprovisioned; deprovisioning forgets it.
    let path = format!("/v2/service_instances/{id}?accepts_incomplete=true");
    let (s, b) = f
        .call(Method::PUT, &path, Some(f.provision_body(PG, PG_SMALL)))
        .await;
    assert_eq!(s, 409, "{b}");
    let (s, _) = f
        .call(
            Method::DELETE,
            &format!("/v2/service_instances/{id}?service_id={PG}&plan_id={PG_SMALL}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert!(f.broker.instance(id).await.is_none());
}

//! The Redis broker against real Docker and a real Redis: provision, per-binding ACL users,
//! limits, revocation on unbind, persistence, deprovision.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

mod common;

use common::*;
use reqwest::Method;

fn redis(f: &Fixture, uri: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = vec!["redis-cli", "--no-auth-warning", "-u", uri];
    cmd.extend_from_slice(args);
    f.on_network(&cmd)
}

#[tokio::test]
async fn provision_bind_unbind_deprovision() {
    let mut f = Fixture::new().await;
    let id = "redis-1";
    let last = f.provision(id, REDIS, REDIS_SMALL).await;
    assert_eq!(last["state"], "succeeded", "{last}");
    let inst = f.broker.instance(id).await.unwrap();

    let (s, b1) = f.bind(id, "rb-1", REDIS, REDIS_SMALL).await;
    assert_eq!(s, 201, "{b1}");
    let c = &b1["credentials"];
    assert_eq!(c["host"], inst.container.as_str());
    assert_eq!(c["port"], 6379);
    let uri1 = c["uri"].as_str().unwrap().to_string();
    assert!(uri1.starts_with("redis://b-rb1:"), "{uri1}");
    let (_, out) = redis(&f, &uri1, &["INCR", "counter"]);
    assert_eq!(out.trim(), "1");
    let (_, out) = redis(&f, &uri1, &["INCR", "counter"]);
    assert_eq!(out.trim(), "2");
    // The plan's limits; and no admin commands for a binding.
    let (_, out) = redis(&f, &uri1, &["CONFIG", "GET", "maxclients"]);
    assert!(out.contains("NOPERM"), "a binding may run CONFIG: {out}");
    let (_, limits) = docker_cli(&["inspect", "-f", "{{.HostConfig.Memory}}", &inst.container]);
    assert_eq!(limits.trim(), (256u64 * 1024 * 1024).to_string());
    // Nobody gets in without credentials: the default user is off.
    let host = format!("redis://{}:6379", inst.container);
    let (_, out) = redis(&f, &host, &["GET", "counter"]);
    assert!(out.contains("NOAUTH") || out.contains("WRONGPASS"), "{out}");

    let (s, b2) = f.bind(id, "rb-2", REDIS, REDIS_SMALL).await;
    assert_eq!(s, 201, "{b2}");
    let uri2 = b2["credentials"]["uri"].as_str().unwrap().to_string();

    // Unbind revokes the first user's credentials; the second's still work.
    let (s, _) = f.call(Method::DELETE, &format!("/v2/service_instances/{id}/service_bindings/rb-1?service_id={REDIS}&plan_id={REDIS_SMALL}"), None).await;
    assert_eq!(s, 200);
    let (_, out) = redis(&f, &uri1, &["GET", "counter"]);
    assert!(
        out.contains("WRONGPASS"),
        "the unbound user still authenticates: {out}"
    );

    // The ACL users and the data survive a restart of the container and of the broker.
    let (ok, out) = docker_cli(&["restart", &inst.container]);
    assert!(ok, "{out}");
    f.restart_broker().await;
    let mut tries = 0;
    let out = loop {
        let (_, out) = redis(&f, &uri2, &["GET", "counter"]);
        if out.trim() == "2" || tries > 60 {
            break out;
        }
        tries += 1;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert_eq!(out.trim(), "2");
    let (_, out) = redis(&f, &uri1, &["GET", "counter"]);
    assert!(
        out.contains("WRONGPASS"),
        "revoked user back after a restart: {out}"
    );

    let (s, _) = f
        .call(
            Method::DELETE,
            &format!("/v2/service_instances/{id}?service_id={REDIS}&plan_id={REDIS_SMALL}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (containers, volumes) = f.objects();
    assert!(
        containers.is_empty() && volumes.is_empty(),
        "{containers:?} {volumes:?}"
    );
}

//! Internal routes (`apps.internal`) through the API: mapped as routes, listed with the app's own
//! port, given to the DNS server (running instances only) and never to the routers; a path, a
//! port or the bare domain is refused with nothing changed.

use axum::http::StatusCode;
use serde_json::json;

use crate::network::dns::Lookup;
use crate::runtime::{Kind, Networking};
use crate::testkit::TestPlatform;

/// The running instance's address and network.
fn instance(p: &TestPlatform) -> (String, std::net::Ipv4Addr) {
    let running = p.fake.running(Kind::Instance);
    assert_eq!(running.len(), 1);
    let Networking::Fixed { network, ip } = running[0].1.networking.clone() else {
        panic!("instances have a fixed address")
    };
    (network, ip)
}

#[tokio::test]
async fn an_internal_route_names_the_healthy_instances_and_stays_out_of_the_routers_table() {
    let p = TestPlatform::new().await;
    p.push("hello").await;
    p.eventually("hello routed", || {
        let t = p.parts.routing.current()?;
        let r = t.routes.iter().find(|r| r.host == "hello.localhost")?;
        (r.backends.len() == 1).then_some(())
    })
    .await;
    let (network, ip) = instance(&p);
    let names = p.parts.routing.internal();
    assert_eq!(
        names.borrow().lookup(&network, "hello.apps.internal"),
        Lookup::Unknown
    );

    let (s, v) = p
        .call(
            "POST",
            "/v1/apps/hello/routes",
            Some(json!({"route": "Hello.Apps.Internal"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        v["routes"]
            .as_array()
            .unwrap()
            .contains(&json!("http://hello.apps.internal:8080")),
        "{v}"
    );
    assert_eq!(
        names.borrow().lookup(&network, "HELLO.apps.internal."),
        Lookup::Found(vec![ip])
    );
    assert_eq!(
        names
            .borrow()
            .lookup("pier-test-other", "hello.apps.internal"),
        Lookup::Unknown
    );
    let table = p.parts.routing.current().unwrap();
    assert!(
        table
            .routes
            .iter()
            .all(|r| !r.host.ends_with("apps.internal")),
        "{:?}",
        table.routes
    );
    let (s, m) = p.call("GET", "/v1/route-mappings", None).await;
    assert_eq!(s, StatusCode::OK, "{m}");
    let internal: Vec<_> = m
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["route"] == "hello.apps.internal")
        .collect();
    assert_eq!(internal.len(), 1, "{m}");
    assert_eq!(internal[0]["url"], "http://hello.apps.internal:8080");

    // (An instance failing its health checks leaves the names: instances/tests.rs, on paused
    // time.)
    // Stopped: the name stays, with no address; unmapped: unknown.
    let (s, _) = p.call("POST", "/v1/apps/hello/actions/stop", None).await;
    assert_eq!(s, StatusCode::OK);
    p.eventually("stopped app unnamed", || {
        (names.borrow().lookup(&network, "hello.apps.internal") == Lookup::Found(vec![]))
            .then_some(())
    })
    .await;
    let (s, v) = p
        .call(
            "DELETE",
            "/v1/apps/hello/routes",
            Some(json!({"route": "hello.apps.internal"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        names.borrow().lookup(&network, "hello.apps.internal"),
        Lookup::Unknown
    );
}

#[tokio::test]
async fn internal_routes_with_a_path_a_port_or_no_host_are_refused_with_nothing_changed() {
    let p = TestPlatform::new().await;
    p.push("hello").await;
    p.eventually("hello routed", || {
        let t = p.parts.routing.current()?;
        let r = t.routes.iter().find(|r| r.host == "hello.localhost")?;
        (r.backends.len() == 1).then_some(())
    })
    .await;
    let before = p.store.list_apps().unwrap();
    let (_, events_before) = p.call("GET", "/v1/apps/hello/events", None).await;
    let table_before = p.parts.routing.current().unwrap().version;
    let names_before = p.parts.routing.internal().borrow().clone();
    let cases = [
        (
            "hello.apps.internal/api",
            "has a path: internal routes (apps.internal) take none",
        ),
        (
            "apps.internal",
            "has no host name: internal routes are HOST.apps.internal",
        ),
        ("hello.apps.internal:8080", "has a port (8080)"),
    ];
    for (route, why) in cases {
        let (s, v) = p
            .call(
                "POST",
                "/v1/apps/hello/routes",
                Some(json!({"route": route})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{route}: {v}");
        assert!(v["message"].as_str().unwrap().contains(why), "{route}: {v}");
        // The same routes in an app's config (as a manifest gives them): no app is made.
        let (s, v) = p
            .call("PUT", "/v1/apps/other", Some(json!({"routes": [route]})))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{route}: {v}");
        assert!(v["message"].as_str().unwrap().contains(why), "{route}: {v}");
    }
    assert_eq!(p.store.list_apps().unwrap(), before, "nothing was written");
    let (_, events_after) = p.call("GET", "/v1/apps/hello/events", None).await;
    assert_eq!(events_after, events_before, "no event");
    assert_eq!(p.parts.routing.current().unwrap().version, table_before);
    assert_eq!(*p.parts.routing.internal().borrow().clone(), *names_before);
    assert_eq!(
        p.fake.running(Kind::Instance).len(),
        1,
        "nothing was started"
    );
}

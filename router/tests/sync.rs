//! Route sync against a fake controller (axum), including the controller going away.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::controller::*;
use common::*;
use http::StatusCode;
use pier_api::RouteTable;
use pier_router::{follow_controller, ProxyOptions, SyncOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn sync_opts(addr: SocketAddr) -> SyncOptions {
    SyncOptions {
        controller: format!("http://{addr}"),
        token: TOKEN.into(),
        request_timeout: Duration::from_secs(5),
        max_backoff: Duration::from_millis(200),
        ..SyncOptions::default()
    }
}

async fn wait_version(
    rx: &mut watch::Receiver<Option<Arc<RouteTable>>>,
    epoch: &str,
    version: u64,
) {
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|t| matches!(t, Some(t) if t.epoch == epoch && t.version == version)),
    )
    .await
    .expect("table arrived in time")
    .expect("sender alive");
}

async fn follows_updates(unchanged: Unchanged) {
    let backend = named_backend("a").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let ctl = fake_controller(
        listener,
        RouteTable {
            epoch: "e1".into(),
            version: 1,
            routes: vec![],
        },
        unchanged,
    )
    .await;
    let (tx, mut rx) = watch::channel(None);
    let stop = CancellationToken::new();
    let task = tokio::spawn(follow_controller(sync_opts(ctl.addr), tx, stop.clone()));
    wait_version(&mut rx, "e1", 1).await;

    // A few quiet long-polls (held, then answered "unchanged") change nothing.
    ctl.wait_polls(3).await;
    assert_eq!(rx.borrow().as_ref().map(|t| t.version), Some(1));

    ctl.publish(
        "e1",
        2,
        vec![route("a.localhost", "", "a", &[backend.addr])],
    );
    wait_version(&mut rx, "e1", 2).await;
    assert_eq!(
        rx.borrow().as_ref().map(|t| t.routes.len()),
        Some(1),
        "the new table's routes arrived"
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("sync stopped on cancel")
        .expect("join");
}

#[tokio::test]
async fn sync_follows_the_controller_with_304_for_unchanged() {
    follows_updates(Unchanged::NotModified).await;
}

#[tokio::test]
async fn sync_follows_the_controller_with_same_table_for_unchanged() {
    follows_updates(Unchanged::SameTable).await;
}

#[tokio::test]
async fn router_keeps_serving_while_the_controller_is_away() {
    let backend = named_backend("a").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let ctl_addr = listener.local_addr().expect("addr");
    let ctl = fake_controller(
        listener,
        RouteTable {
            epoch: "e1".into(),
            version: 7,
            routes: vec![route("app.localhost", "", "app", &[backend.addr])],
        },
        Unchanged::NotModified,
    )
    .await;
    let router = start_router(None, ProxyOptions::default()).await;
    let stop = CancellationToken::new();
    let mut rx = router.tables.subscribe();
    tokio::spawn(follow_controller(
        sync_opts(ctl_addr),
        router.tables.clone(),
        stop.clone(),
    ));
    wait_version(&mut rx, "e1", 7).await;
    assert_eq!(
        get(&router, "app.localhost", "/").await.status,
        StatusCode::OK
    );

    // The controller errors for a while: the table stays, traffic flows.
    ctl.ctl.failing.store(true, Ordering::SeqCst);
    let before = ctl.ctl.polls.load(Ordering::SeqCst);
    ctl.wait_polls(before + 3).await;
    assert_eq!(rx.borrow().as_ref().map(|t| t.version), Some(7));
    assert_eq!(
        get(&router, "app.localhost", "/").await.status,
        StatusCode::OK
    );

    // Then it is gone altogether (connections dropped, port closed).
    ctl.kill();
    drop(ctl);
    assert_eq!(
        get(&router, "app.localhost", "/").await.status,
        StatusCode::OK
    );
    assert_eq!(rx.borrow().as_ref().map(|t| t.version), Some(7));

    // A restarted controller (new epoch, version back to 1) is picked up.
    let listener = TcpListener::bind(ctl_addr)
        .await
        .expect("rebind controller port");
    let ctl = fake_controller(
        listener,
        RouteTable {
            epoch: "e2".into(),
            version: 1,
            routes: vec![],
        },
        Unchanged::NotModified,
    )
    .await;
    wait_version(&mut rx, "e2", 1).await;
    assert_eq!(
        get(&router, "app.localhost", "/").await.status,
        StatusCode::NOT_FOUND
    );
    stop.cancel();
    drop(ctl);
}

#[tokio::test]
async fn wrong_token_never_publishes_a_table() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let ctl = fake_controller(listener, RouteTable::default(), Unchanged::NotModified).await;
    let (tx, rx) = watch::channel(None);
    let stop = CancellationToken::new();
    let opts = SyncOptions {
        token: "wrong".into(),
        ..sync_opts(ctl.addr)
    };
    tokio::spawn(follow_controller(opts, tx, stop.clone()));
    ctl.wait_polls(2).await;
    assert!(rx.borrow().is_none());
    stop.cancel();
}

/// A standalone router tells the controller which instances it still has requests in flight to
/// after a table removed them, and says again, at once, when those requests end: the controller
/// drains an instance on that acknowledgement before stopping it.
#[tokio::test]
async fn polls_name_removed_instances_with_requests_in_flight_until_they_end() {
    let (held, release) = held_backend().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let table = |version, routes| RouteTable {
        epoch: "e1".into(),
        version,
        routes,
    };
    let ctl = fake_controller(
        listener,
        table(1, vec![route("held.localhost", "", "held", &[held.addr])]),
        Unchanged::NotModified,
    )
    .await;
    let opts = ProxyOptions::default();
    let in_flight = opts.in_flight.clone();
    let router = start_router(None, opts).await;
    let stop = CancellationToken::new();
    let sync = SyncOptions {
        in_flight: in_flight.clone(),
        ..sync_opts(ctl.addr)
    };
    let mut rx = router.tables.subscribe();
    tokio::spawn(follow_controller(sync, router.tables.clone(), stop.clone()));
    wait_version(&mut rx, "e1", 1).await;
    // A request the instance holds.
    let url = format!("http://{}/", router.addr);
    let request = tokio::spawn(get_owned(url, "held.localhost"));
    tokio::time::timeout(Duration::from_secs(5), async {
        while in_flight.count("held-inst-0") == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the request reached the instance");
    // The controller removes the instance: the next poll names it.
    ctl.publish("e1", 2, vec![]);
    wait_version(&mut rx, "e1", 2).await;
    let named = |ctl: &FakeController| {
        ctl.ctl
            .draining
            .lock()
            .expect("lock")
            .last()
            .is_some_and(|d| d == "held-inst-0")
    };
    tokio::time::timeout(Duration::from_secs(5), async {
        while !named(&ctl) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a poll named the draining instance");
    // The request ends: a poll says so within moments, not at the next table.
    release.send_replace(true);
    assert_eq!(request.await.expect("join").status, StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(2), async {
        // Every poll while the request was held named it; the first one after names nothing.
        while !ctl
            .ctl
            .draining
            .lock()
            .expect("lock")
            .last()
            .is_some_and(|d| d.is_empty())
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the end of the drain was reported promptly");
    stop.cancel();
}

//! Route sync against a fake controller (axum), including the controller going away.

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

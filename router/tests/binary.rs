//! The real `pier-router` binary: starts on port 0, follows a fake controller, drains on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::controller::*;
use common::*;
use http::{Request, StatusCode};
use pier_api::RouteTable;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

#[tokio::test]
async fn binary_follows_the_controller_and_exits_on_sigterm() {
    let backend = named_backend("a").await;
    let ctl = fake_controller(
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        RouteTable {
            epoch: "e".into(),
            version: 1,
            routes: vec![route("app.localhost", "", "app", &[backend.addr])],
        },
        Unchanged::NotModified,
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write token");

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pier-router"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--controller")
        .arg(format!("http://{}", ctl.addr))
        .arg("--token-file")
        .arg(&token_file)
        .env_remove("PIER_ROUTER_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start pier-router");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next_line().await.expect("read").expect("a line");
    let addr = first
        .strip_prefix("pier-router listening on ")
        .expect("listening line")
        .to_string();
    let admin_line = lines.next_line().await.expect("read").expect("a line");
    let admin = admin_line
        .strip_prefix("pier-router admin listening on ")
        .expect("admin line")
        .to_string();

    // The table arrives over the long-poll: until then 503 table_loading, then 200.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ans = send(
            Request::get(format!("http://{addr}/"))
                .header("host", "app.localhost")
                .body(empty())
                .expect("request"),
        )
        .await;
        if ans.status == StatusCode::OK {
            assert_eq!(ans.backend(), "a");
            break;
        }
        assert_eq!(ans.status, StatusCode::SERVICE_UNAVAILABLE, "{}", ans.body);
        assert!(Instant::now() < deadline, "table never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = send(
        Request::get(format!("http://{admin}/metrics"))
            .body(empty())
            .expect("request"),
    )
    .await;
    assert!(
        metrics
            .body
            .contains("pier_router_requests_total{app=\"app\",status=\"200\"} 1"),
        "{}",
        metrics.body
    );

    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exited after SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn binary_refuses_to_start_without_a_token() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pier-router"))
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("PIER_ROUTER_TOKEN")
        .env_remove("PIER_ROUTER_TOKEN_FILE")
        .output()
        .await
        .expect("run pier-router");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--token"), "{err}");
}

/// The binary on a fixed route table with `threads` threads, and the address it printed it
/// listens on.
async fn start_on_routes_file(
    routes: &std::path::Path,
    threads: u32,
) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pier-router"))
        .args(["--listen", "127.0.0.1:0", "--threads", &threads.to_string()])
        .arg("--routes-file")
        .arg(routes)
        .env_remove("PIER_ROUTER_TOKEN")
        .env_remove("PIER_ROUTER_TOKEN_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start pier-router");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next_line().await.expect("read").expect("a line");
    let addr = first
        .strip_prefix("pier-router listening on ")
        .unwrap_or_else(|| panic!("a listening line, not {first:?}"))
        .to_string();
    (child, addr)
}

#[tokio::test]
async fn binary_with_a_routes_file_drains_in_flight_requests_on_sigterm() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let (arrived_tx, mut arrived_rx) = tokio::sync::mpsc::channel::<()>(1);
    let slow = spawn_backend(move |_req: http::Request<hyper::body::Incoming>| {
        let mut release = release_rx.clone();
        let arrived = arrived_tx.clone();
        async move {
            let _ = arrived.send(()).await;
            let _ = release.wait_for(|v| *v).await;
            http::Response::new(full("done"))
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = routes_file(
        dir.path(),
        vec![route("slow.localhost", "", "slow", &[slow.addr])],
    );
    let (mut child, addr) = start_on_routes_file(&routes, 2).await;

    let url = format!("http://{addr}/");
    let in_flight = tokio::spawn(async move {
        send(
            Request::get(url)
                .header("host", "slow.localhost")
                .body(empty())
                .expect("request"),
        )
        .await
    });
    arrived_rx
        .recv()
        .await
        .expect("request reached the backend");

    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    // Still draining: the listener is closed to new clients soon after the signal…
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // …while the request in flight finishes, and then the process exits cleanly.
    release_tx.send_replace(true);
    let ans = in_flight.await.expect("join");
    assert_eq!(ans.status, StatusCode::OK);
    assert_eq!(ans.body, "done");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exited after draining")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

/// A supervisor may stop the router the moment it says it is listening: the SIGTERM handler is
/// in place by then, so the signal stops it cleanly (exit 0) instead of killing it. Repeated,
/// because the race it guards against is short.
#[tokio::test]
async fn binary_stopped_right_after_its_listening_line_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = routes_file(dir.path(), vec![]);
    for round in 0..10 {
        let (mut child, _) = start_on_routes_file(&routes, 1).await;
        let pid = child.id().expect("pid").to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(killed.success());
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("exited after SIGTERM")
            .expect("wait");
        assert!(status.success(), "round {round}: {status:?}");
    }
}

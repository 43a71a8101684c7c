//! How long the router holds what a client opens: an idle HTTP/2 connection, a request body
//! that stalls, the connections to instances per client connection and in total, and the
//! process's open-file limit. Short timeouts here; the defaults are in `docs/router.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use pier_api::ROUTER_ERROR_HEADER;
use pier_router::ProxyOptions;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The HTTP/2 client preface and an empty SETTINGS frame (RFC 9113 §3.4, §6.5).
const PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Reads until the router closes the connection; fails after `within`.
async fn closed_within(s: &mut TcpStream, within: Duration, what: &str) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| panic!("{what}: the router kept the connection open"))
        .ok();
    out
}

/// An h2c connection to the router; the connection's task ends when the router closes it.
async fn h2_connect(
    router: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<TestBody>,
    tokio::task::JoinHandle<()>,
) {
    let s = TcpStream::connect(router).await.expect("connect");
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .expect("h2 handshake");
    (
        send,
        tokio::spawn(async move {
            let _ = conn.await;
        }),
    )
}

#[tokio::test]
async fn idle_http2_connections_are_closed() {
    let a = named_backend("a").await;
    let r = start_router(
        Some(vec![route("a.localhost", "", "a", &[a.addr])]),
        ProxyOptions {
            header_read_timeout: Duration::from_millis(300),
            ..ProxyOptions::default()
        },
    )
    .await;
    // The preface and SETTINGS, then nothing: closed like a half-sent HTTP/1 head.
    let started = Instant::now();
    let mut s = TcpStream::connect(r.addr).await.expect("connect");
    s.write_all(PREFACE_AND_SETTINGS).await.expect("write");
    closed_within(&mut s, Duration::from_secs(5), "preface only").await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed too early"
    );

    // One request, then silence: closed too, once no stream is open.
    let (mut send, conn) = h2_connect(r.addr).await;
    let resp = send
        .send_request(Request::get("http://a.localhost/").body(empty()).unwrap())
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.expect("body");
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("idle h2 connection closed by the router")
        .expect("join");
}

#[tokio::test]
async fn an_open_stream_keeps_an_http2_connection() {
    // A response that takes longer than the idle timeout is not cut by it.
    let slow = spawn_backend(|_req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        Response::new(full("late"))
    })
    .await;
    let r = start_router(
        Some(vec![route("s.localhost", "", "s", &[slow.addr])]),
        ProxyOptions {
            header_read_timeout: Duration::from_millis(300),
            ..ProxyOptions::default()
        },
    )
    .await;
    let (mut send, _conn) = h2_connect(r.addr).await;
    let resp = send
        .send_request(Request::get("http://s.localhost/").body(empty()).unwrap())
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"late");
}

/// A backend that reads the whole request body before answering with its length.
async fn body_backend() -> FakeBackend {
    spawn_backend(|req: Request<Incoming>| async move {
        match req.into_body().collect().await {
            Ok(b) => Response::new(full(format!("{}", b.to_bytes().len()))),
            Err(_) => Response::new(full("broken")),
        }
    })
    .await
}

#[tokio::test]
async fn a_stalled_request_body_gets_408() {
    let b = body_backend().await;
    let r = start_router(
        Some(vec![route("b.localhost", "", "b", &[b.addr])]),
        ProxyOptions {
            body_read_timeout: Duration::from_millis(300),
            ..ProxyOptions::default()
        },
    )
    .await;
    // HTTP/1: 3 of 100 bytes, then nothing.
    let started = Instant::now();
    let mut s = TcpStream::connect(r.addr).await.expect("connect");
    s.write_all(b"POST / HTTP/1.1\r\nHost: b.localhost\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .expect("write");
    let out = closed_within(&mut s, Duration::from_secs(5), "stalled body").await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(
        out.contains(&format!("{ROUTER_ERROR_HEADER}: body_timeout")),
        "{out}"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));

    // A body that keeps coming, slower than the timeout in total but never idle that long,
    // goes through.
    let mut s = TcpStream::connect(r.addr).await.expect("connect");
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: b.localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        s.write_all(b"x").await.expect("write");
    }
    let out = closed_within(&mut s, Duration::from_secs(5), "slow body").await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("\r\n\r\n5"), "{out}");

    // HTTP/2: one frame of the body, then nothing.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
        .await
        .expect("send");
    let body = StreamBody::new(tokio_stream_from(rx)).boxed();
    let (mut send, _conn) = h2_connect(r.addr).await;
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        send.send_request(Request::post("http://b.localhost/").body(body).unwrap()),
    )
    .await
    .expect("answered while the body stalls")
    .expect("response");
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(
        resp.headers()
            .get(ROUTER_ERROR_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some("body_timeout")
    );
    drop(tx);
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn one_http2_client_uses_a_bounded_number_of_instance_connections() {
    let (held, release) = held_backend().await;
    let a = named_backend("a").await;
    let r = start_router(
        Some(vec![
            route("h.localhost", "", "h", &[held.addr]),
            route("a.localhost", "", "a", &[a.addr]),
        ]),
        ProxyOptions {
            max_upstream_per_client: 2,
            ..ProxyOptions::default()
        },
    )
    .await;
    let (mut send, _conn) = h2_connect(r.addr).await;
    // One request first, so the client has the router's SETTINGS (with the stream limit)
    // before it opens more; streams it opened before would be refused (REFUSED_STREAM).
    let first = send
        .send_request(Request::get("http://a.localhost/").body(empty()).unwrap())
        .await
        .expect("response");
    first.into_body().collect().await.expect("body");
    let mut requests = Vec::new();
    for _ in 0..6 {
        let mut send = send.clone();
        requests.push(tokio::spawn(async move {
            let req = Request::get("http://h.localhost/").body(empty()).unwrap();
            send.send_request(req).await.map(|r| r.status())
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        held.hits.load(Ordering::SeqCst),
        2,
        "streams beyond the limit reached the instance"
    );
    release.send_replace(true);
    for req in requests {
        assert_eq!(req.await.expect("join").expect("response"), StatusCode::OK);
    }
    assert_eq!(held.hits.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn instance_connections_are_bounded_in_total() {
    let (held, release) = held_backend().await;
    let r = start_router(
        Some(vec![route("h.localhost", "", "h", &[held.addr])]),
        ProxyOptions {
            max_upstream_connections: 2,
            connect_timeout: Duration::from_millis(300),
            ..ProxyOptions::default()
        },
    )
    .await;
    // Four HTTP/1 clients, each on its own connection: two get an instance connection, the
    // others wait up to the connect timeout and get 503.
    let mut requests = Vec::new();
    for _ in 0..4 {
        let addr = r.addr;
        requests.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\nHost: h.localhost\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
            (Instant::now(), String::from_utf8_lossy(&out).into_owned())
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(held.hits.load(Ordering::SeqCst), 2, "over the limit");
    let released = Instant::now();
    release.send_replace(true);
    let mut ok = 0;
    let mut limited = 0;
    for req in requests {
        let (at, out) = req.await.expect("join");
        if out.starts_with("HTTP/1.1 200") {
            ok += 1;
        } else {
            assert!(out.starts_with("HTTP/1.1 503"), "{out}");
            assert!(out.contains("upstream_limit"), "{out}");
            assert!(at < released, "the 503 came only after the release");
            limited += 1;
        }
    }
    assert_eq!((ok, limited), (2, 2));
    // The permits come back: the next request is served.
    assert_eq!(get(&r, "h.localhost", "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_binary_raises_its_open_file_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = routes_file(dir.path(), vec![]);
    // Started with a soft limit of 256, as many shells and service managers leave it.
    let script = format!(
        "ulimit -Sn 256 && exec {} --listen 127.0.0.1:0 --threads 1 --routes-file {}",
        env!("CARGO_BIN_EXE_pier-router"),
        routes.display()
    );
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start pier-router");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next_line().await.expect("read").expect("a line");
    assert!(first.starts_with("pier-router listening on "), "{first}");
    let pid = child.id().expect("pid");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    assert_eq!(soft, hard, "{line}");
    assert_ne!(soft, "256", "{line}");
    let _ = child.kill().await;
}

//! What an app learns about a request and its response framing when the client or the
//! instance is hostile: the host the request is routed by, the forwarded headers only a
//! trusted proxy may set, and a response with both `Content-Length` and `Transfer-Encoding`.
//! Spoken on raw sockets, since well-behaved clients never send these.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use pier_router::ProxyOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Writes `req` and reads until the router closes the connection.
async fn exchange(router: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(router).await.expect("connect");
    s.write_all(req).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the router closed the connection")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// One request over a new h2c (prior knowledge) connection to the router.
pub async fn h2_send(
    router: SocketAddr,
    req: Request<TestBody>,
) -> http::Response<hyper::body::Incoming> {
    let s = TcpStream::connect(router).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .expect("answered in time")
        .expect("h2 response")
}

/// The JSON body of a `named_backend`'s answer in a raw response.
fn backend_json(raw: &str) -> serde_json::Value {
    let (_, body) = raw.split_once("\r\n\r\n").expect("a response");
    serde_json::from_str(body).unwrap_or_else(|_| panic!("backend JSON: {raw}"))
}

const SPOOFED: &[u8] = b"GET http://app.localhost/x HTTP/1.1\r\nHost: evil.example\r\n\
    X-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n\
    Forwarded: host=evil.example;proto=https\r\nX-Forwarded-For: 192.0.2.9\r\n\
    Connection: close\r\n\r\n";

#[tokio::test]
async fn the_absolute_form_target_names_the_host_and_clients_cannot_forge_forwarded_headers() {
    let app = named_backend("app").await;
    let evil = named_backend("evil").await;
    let routes = vec![
        route("app.localhost", "", "app", &[app.addr]),
        route("evil.example", "", "evil", &[evil.addr]),
    ];
    let r = start_router(Some(routes), ProxyOptions::default()).await;

    // RFC 9112 §3.2.2: the target's authority replaces Host, for routing and for the app.
    let raw = exchange(r.addr, SPOOFED).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("x-backend: app\r\n"), "{raw}");
    let h = &backend_json(&raw)["headers"];
    assert_eq!(h["host"], "app.localhost", "{h}");
    assert_eq!(h["x-forwarded-host"], "app.localhost", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert!(h.get("forwarded").is_none(), "{h}");
    // X-Forwarded-For is appended to, as gorouter does: the last entry is the router's own.
    assert_eq!(h["x-forwarded-for"], "192.0.2.9, 127.0.0.1", "{h}");
    assert_eq!(evil.hits.load(Ordering::SeqCst), 0);

    // The same over HTTP/2: `:authority` is the host, and the client's forwarded headers go.
    let resp = h2_send(
        r.addr,
        Request::get("http://app.localhost/x")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "https")
            .header("forwarded", "host=evil.example")
            .body(empty())
            .expect("request"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let h = &v["headers"];
    assert_eq!(v["name"], "app");
    assert_eq!(h["host"], "app.localhost", "{h}");
    assert_eq!(h["x-forwarded-host"], "app.localhost", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert!(h.get("forwarded").is_none(), "{h}");
}

#[tokio::test]
async fn a_trusted_proxy_keeps_its_forwarded_headers_but_not_the_host() {
    let app = named_backend("app").await;
    let r = start_router(
        Some(vec![route("app.localhost", "", "app", &[app.addr])]),
        ProxyOptions {
            trusted_proxies: vec!["127.0.0.0/8".parse().expect("cidr")],
            ..ProxyOptions::default()
        },
    )
    .await;
    let raw = exchange(r.addr, SPOOFED).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let h = &backend_json(&raw)["headers"];
    assert_eq!(h["host"], "app.localhost", "{h}");
    assert_eq!(h["x-forwarded-host"], "evil.example", "{h}");
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
    assert_eq!(h["forwarded"], "host=evil.example;proto=https", "{h}");
    assert_eq!(h["x-forwarded-for"], "192.0.2.9, 127.0.0.1", "{h}");
}

/// A backend that answers every request on a connection with `Content-Length` and
/// `Transfer-Encoding: chunked` both, and counts the connections it accepted.
async fn both_framings_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        got.drain(..end + 4);
                        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\
                            Transfer-Encoding: chunked\r\nX-Backend: both\r\n\r\n\
                            3\r\nabc\r\n0\r\n\r\n";
                        if s.write_all(resp).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_response_with_both_framings_reaches_the_client_with_only_the_routers() {
    let (backend, accepted) = both_framings_backend().await;
    let r = start_router(
        Some(vec![route("both.localhost", "", "both", &[backend])]),
        ProxyOptions::default(),
    )
    .await;
    // Two requests on one client connection: each answer is chunked and has no length, and
    // the instance's connection is not used again after a message that may be smuggling.
    let mut s = TcpStream::connect(r.addr).await.expect("connect");
    let req = b"GET / HTTP/1.1\r\nHost: both.localhost\r\n\r\n";
    let mut answers = Vec::new();
    for _ in 0..2 {
        s.write_all(req).await.expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"0\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("answered in time")
                .expect("read");
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        answers.push(String::from_utf8_lossy(&got).into_owned());
    }
    for raw in &answers {
        let lower = raw.to_ascii_lowercase();
        assert!(lower.starts_with("http/1.1 200"), "{raw}");
        assert!(
            !lower.contains("content-length"),
            "both framings passed on: {raw}"
        );
        assert_eq!(
            lower.matches("transfer-encoding: chunked").count(),
            1,
            "{raw}"
        );
        assert!(raw.ends_with("\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), "{raw}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the connection was reused"
    );

    // An HTTP/2 client gets no Content-Length either, and the whole decoded body.
    let req = Request::get("http://both.localhost/").body(empty());
    let resp = h2_send(r.addr, req.expect("request")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("content-length").is_none(), "{resp:?}");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"abc");
}

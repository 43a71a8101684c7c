//! HTTP/1 details of the router's own engine, spoken byte by byte on raw sockets: pipelining,
//! HEAD, HTTP/1.0 clients, `Expect: 100-continue`, chunked uploads and close-delimited
//! responses.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

mod common;

use std::time::Duration;

use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pier_router::ProxyOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend echoing the method, the path and the request body, with a Content-Length.
async fn echo_backend() -> FakeBackend {
    spawn_backend(|req: Request<Incoming>| async move {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let body = req.into_body().collect().await.expect("body").to_bytes();
        Response::builder()
            .header("x-backend", "echo")
            .body(full(format!(
                "{method} {path} {}",
                String::from_utf8_lossy(&body)
            )))
            .expect("response")
    })
    .await
}

/// Writes `req`, then reads until the router closes the connection or `wait` passes.
async fn exchange(router: std::net::SocketAddr, req: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(router).await.expect("connect");
    s.write_all(req).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from `s` until what came so far satisfies `done`; fails if the router closes first
/// or takes more than 5 s for a read.
async fn read_until(s: &mut TcpStream, what: &str, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&got) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{what} in time: {}", String::from_utf8_lossy(&got)))
            .expect("read");
        assert!(
            n > 0,
            "closed before {what}: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// The end of a chunked body.
fn last_chunk(got: &[u8]) -> bool {
    got.ends_with(b"0\r\n\r\n")
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_head_has_no_body() {
    let echo = echo_backend().await;
    let r = start_router(
        Some(vec![route("e.localhost", "", "echo", &[echo.addr])]),
        ProxyOptions::default(),
    )
    .await;
    let req = b"GET /one HTTP/1.1\r\nHost: e.localhost\r\n\r\n\
        HEAD /two HTTP/1.1\r\nHost: e.localhost\r\n\r\n\
        POST /three HTTP/1.1\r\nHost: e.localhost\r\nContent-Length: 5\r\n\r\nhello\
        GET /four HTTP/1.1\r\nHost: e.localhost\r\nConnection: close\r\n\r\n";
    let ans = exchange(r.addr, req, Duration::from_secs(5)).await;
    assert_eq!(ans.matches("HTTP/1.1 200").count(), 4, "{ans}");
    let one = ans.find("GET /one ").expect(&ans);
    let three = ans.find("POST /three hello").expect(&ans);
    let four = ans.find("GET /four ").expect(&ans);
    assert!(one < three && three < four, "in order: {ans}");
    // The HEAD answer carries the length of the GET's body but no body: nothing of it shows.
    assert!(!ans.contains("HEAD /two"), "{ans}");
    assert_eq!(echo.hits.load(std::sync::atomic::Ordering::SeqCst), 4);
}

#[tokio::test]
async fn http10_clients_get_their_body_and_a_close() {
    // A backend answering with a chunked (streamed) body: an HTTP/1.0 client cannot take
    // chunks, so it gets the bare body, delimited by the router closing the connection.
    let chunky = spawn_backend(|_req: Request<Incoming>| async move {
        let frames = futures_util::stream::iter(
            ["part one, ", "part two"]
                .map(|s| Ok::<_, BoxError>(hyper::body::Frame::data(bytes::Bytes::from(s)))),
        );
        Response::new(BodyExt::boxed(http_body_util::StreamBody::new(frames)))
    })
    .await;
    let r = start_router(
        Some(vec![route("c.localhost", "", "chunky", &[chunky.addr])]),
        ProxyOptions::default(),
    )
    .await;
    let ans = exchange(
        r.addr,
        b"GET / HTTP/1.0\r\nHost: c.localhost\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let lower = ans.to_ascii_lowercase();
    assert!(ans.starts_with("HTTP/1.1 200"), "{ans}");
    assert!(!lower.contains("transfer-encoding"), "{ans}");
    assert!(lower.contains("connection: close"), "{ans}");
    assert!(ans.ends_with("\r\n\r\npart one, part two"), "{ans}");

    // The same to an HTTP/1.1 client: chunked again, and the connection stays open.
    let mut s = TcpStream::connect(r.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: c.localhost\r\n\r\n")
        .await
        .expect("write");
    let got = read_until(&mut s, "the last chunk", last_chunk).await;
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(!text.contains("connection: close"), "{text}");
}

#[tokio::test]
async fn expect_continue_and_chunked_uploads_reach_the_app_whole() {
    let echo = echo_backend().await;
    let r = start_router(
        Some(vec![route("e.localhost", "", "echo", &[echo.addr])]),
        ProxyOptions::default(),
    )
    .await;
    // Expect: the router answers 100 when it is ready for the body, then the app's answer.
    let mut s = TcpStream::connect(r.addr).await.expect("connect");
    s.write_all(
        b"PUT /up HTTP/1.1\r\nHost: e.localhost\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .expect("write head");
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("100 in time")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue\r\n\r\n"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"data").await.expect("write body");
    read_until(&mut s, "the app's answer", |got| {
        String::from_utf8_lossy(got).contains("PUT /up data")
    })
    .await;

    // A chunked upload with extensions and trailers: the app gets the decoded body.
    let ans = exchange(
        r.addr,
        b"POST /c HTTP/1.1\r\nHost: e.localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nX-Trailer: t\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(ans.contains("POST /c abcdefg"), "{ans}");

    // A malformed chunk: 400 when nothing was answered yet, and the app is not asked again.
    let before = echo.hits.load(std::sync::atomic::Ordering::SeqCst);
    let ans = exchange(
        r.addr,
        b"POST /bad HTTP/1.1\r\nHost: e.localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(ans.starts_with("HTTP/1.1 400"), "{ans}");
    assert!(ans.contains("chunk size is not hexadecimal"), "{ans}");
    assert!(!ans.contains("POST /bad"), "{ans}");
    assert!(
        echo.hits.load(std::sync::atomic::Ordering::SeqCst) <= before + 1,
        "at most the one request"
    );
}

#[tokio::test]
async fn a_response_delimited_by_close_reaches_the_client_whole() {
    // An instance speaking HTTP/1.0 style: no length, body until it closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    let r = start_router(
        Some(vec![route("old.localhost", "", "old", &[addr])]),
        ProxyOptions::default(),
    )
    .await;
    let mut s = TcpStream::connect(r.addr).await.expect("connect");
    for round in 0..2 {
        // Chunked to an HTTP/1.1 client, so its connection can carry the next request.
        s.write_all(b"GET / HTTP/1.1\r\nHost: old.localhost\r\n\r\n")
            .await
            .expect("write");
        let got = read_until(&mut s, &format!("round {round}'s last chunk"), last_chunk).await;
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.contains("\r\n\r\nd\r\nuntil the end\r\n0\r\n\r\n"),
            "{text}"
        );
    }
}

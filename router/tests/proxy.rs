//! The router on port 0 against fake backends.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use pier_api::ROUTER_ERROR_HEADER;
use pier_router::{AccessLogEntry, ProxyOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn routes_by_host() {
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let r = start_router(
        Some(vec![
            route("a.localhost", "", "a", &[a.addr]),
            route("b.localhost", "", "b", &[b.addr]),
        ]),
        ProxyOptions::default(),
    )
    .await;
    assert_eq!(get(&r, "a.localhost:8080", "/").await.backend(), "a");
    assert_eq!(get(&r, "B.LOCALHOST", "/x").await.backend(), "b");
    let ans = get(&r, "a.localhost", "/some/path?q=1").await;
    assert_eq!(ans.status, StatusCode::OK);
    assert_eq!(ans.json()["path"], "/some/path");
}

#[tokio::test]
async fn longest_path_prefix_wins() {
    let root = named_backend("root").await;
    let api = named_backend("api").await;
    let r = start_router(
        Some(vec![
            route("h.localhost", "", "root", &[root.addr]),
            route("h.localhost", "/api", "api", &[api.addr]),
        ]),
        ProxyOptions::default(),
    )
    .await;
    assert_eq!(get(&r, "h.localhost", "/").await.backend(), "root");
    assert_eq!(get(&r, "h.localhost", "/api").await.backend(), "api");
    assert_eq!(get(&r, "h.localhost", "/api/users").await.backend(), "api");
    assert_eq!(get(&r, "h.localhost", "/apix").await.backend(), "root");
}

#[tokio::test]
async fn round_robin_across_two_backends() {
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let r = start_router(
        Some(vec![route("rr.localhost", "", "rr", &[a.addr, b.addr])]),
        ProxyOptions::default(),
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(get(&r, "rr.localhost", "/").await.backend());
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), 5);
    assert_eq!(b.hits.load(Ordering::SeqCst), 5);
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1], "round-robin alternates: {seen:?}");
    }
}

#[tokio::test]
async fn unknown_host_is_404_naming_the_host() {
    let a = named_backend("a").await;
    let r = start_router(
        Some(vec![route("a.localhost", "", "a", &[a.addr])]),
        ProxyOptions::default(),
    )
    .await;
    let ans = get(&r, "Nope.localhost:8080", "/").await;
    assert_eq!(ans.status, StatusCode::NOT_FOUND);
    assert_eq!(
        ans.body.trim(),
        "Requested route ('nope.localhost') does not exist."
    );
    assert_eq!(
        ans.header(ROUTER_ERROR_HEADER).as_deref(),
        Some("unknown_route")
    );
    assert!(ans.header("x-vcap-request-id").is_some());
    assert_eq!(a.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn route_without_instances_is_503() {
    let r = start_router(
        Some(vec![route("empty.localhost", "", "empty", &[])]),
        ProxyOptions::default(),
    )
    .await;
    let ans = get(&r, "empty.localhost", "/").await;
    assert_eq!(ans.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        ans.header(ROUTER_ERROR_HEADER).as_deref(),
        Some("no_instances")
    );
    assert!(ans.body.contains("empty"), "{}", ans.body);
}

#[tokio::test]
async fn before_the_table_loads_answers_503_not_404_then_updates_apply() {
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let r = start_router(None, ProxyOptions::default()).await;
    let ans = get(&r, "a.localhost", "/").await;
    assert_eq!(ans.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        ans.header(ROUTER_ERROR_HEADER).as_deref(),
        Some("table_loading")
    );

    r.set_table(vec![route("app.localhost", "", "app", &[a.addr])]);
    assert_eq!(get(&r, "app.localhost", "/").await.backend(), "a");

    // The app moves to another instance: the very next request follows.
    r.set_table(vec![route("app.localhost", "", "app", &[b.addr])]);
    assert_eq!(get(&r, "app.localhost", "/").await.backend(), "b");

    // Route removed: now it is unknown.
    r.set_table(vec![]);
    assert_eq!(
        get(&r, "app.localhost", "/").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn forwarded_headers_are_set_and_hop_by_hop_removed() {
    let a = named_backend("a").await;
    let r = start_router(
        Some(vec![route("h.localhost", "", "app", &[a.addr])]),
        ProxyOptions::default(),
    )
    .await;
    let ans = send(
        Request::get(r.url("/"))
            .header("host", "h.localhost:8080")
            .header("x-forwarded-for", "203.0.113.7")
            .header("connection", "x-secret-hop")
            .header("x-secret-hop", "1")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("x-app-header", "kept")
            .body(empty())
            .expect("request"),
    )
    .await;
    assert_eq!(ans.status, StatusCode::OK);
    let body = ans.json();
    let h = &body["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "h.localhost:8080");
    assert_eq!(h["host"], "h.localhost:8080");
    let start: u64 = h["x-request-start"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("x-request-start is ms");
    assert!(start > 1_600_000_000_000);
    assert_eq!(h["x-cf-applicationid"], "guid-app");
    assert_eq!(h["x-cf-instanceindex"], "0");
    assert_eq!(h["x-cf-instanceid"], "app-inst-0");
    assert!(h["traceparent"]
        .as_str()
        .is_some_and(|t| t.starts_with("00-")));
    assert_eq!(h["x-app-header"], "kept");
    assert!(h.get("x-secret-hop").is_none());
    assert!(h.get("proxy-authorization").is_none());
    let id = h["x-vcap-request-id"].as_str().expect("request id");
    assert_eq!(ans.header("x-vcap-request-id").as_deref(), Some(id));

    // An incoming request id is kept, and the proto a trusted proxy sends (from anyone else
    // it is the router's: tests/forwarding.rs).
    let r = start_router(
        Some(vec![route("h.localhost", "", "app", &[a.addr])]),
        ProxyOptions {
            trusted_proxies: vec!["127.0.0.1/32".parse().expect("cidr")],
            ..ProxyOptions::default()
        },
    )
    .await;
    let ans = send(
        Request::get(r.url("/"))
            .header("host", "h.localhost")
            .header("x-vcap-request-id", "keep-me-123")
            .header("x-forwarded-proto", "https")
            .body(empty())
            .expect("request"),
    )
    .await;
    let h = &ans.json()["headers"];
    assert_eq!(h["x-vcap-request-id"], "keep-me-123");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(
        ans.header("x-vcap-request-id").as_deref(),
        Some("keep-me-123")
    );
}

#[tokio::test]
async fn connect_refused_is_retried_on_another_instance() {
    let live = named_backend("live").await;
    let dead = closed_port().await;
    let r = start_router(
        Some(vec![route("h.localhost", "", "app", &[dead, live.addr])]),
        ProxyOptions::default(),
    )
    .await;
    for _ in 0..6 {
        let ans = send(
            Request::post(r.url("/"))
                .header("host", "h.localhost")
                .body(full("payload"))
                .expect("request"),
        )
        .await;
        assert_eq!(ans.status, StatusCode::OK, "{}", ans.body);
        assert_eq!(ans.backend(), "live");
    }
    // Round-robin reaches the dead one within two requests; after that it is skipped for 30 s.
    assert_eq!(r.metrics.retries(), 1);
    assert_eq!(live.hits.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn all_instances_refusing_is_502() {
    let r = start_router(
        Some(vec![route(
            "h.localhost",
            "",
            "app",
            &[closed_port().await, closed_port().await],
        )]),
        ProxyOptions::default(),
    )
    .await;
    let ans = get(&r, "h.localhost", "/").await;
    assert_eq!(ans.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        ans.header(ROUTER_ERROR_HEADER).as_deref(),
        Some("backend_error")
    );
}

/// A backend that reads a request head and some body, then resets the connection.
async fn resetting_backend() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => seen.extend_from_slice(&buf[..k]),
                    }
                }
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                drop(s);
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn post_reset_after_sending_is_not_retried() {
    let (a, na) = resetting_backend().await;
    let (b, nb) = resetting_backend().await;
    let r = start_router(
        Some(vec![route("h.localhost", "", "app", &[a, b])]),
        ProxyOptions::default(),
    )
    .await;
    let ans = send(
        Request::post(r.url("/orders"))
            .header("host", "h.localhost")
            .body(full("charge the card once"))
            .expect("request"),
    )
    .await;
    assert_eq!(ans.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        ans.header(ROUTER_ERROR_HEADER).as_deref(),
        Some("backend_error")
    );
    assert_eq!(
        na.load(Ordering::SeqCst) + nb.load(Ordering::SeqCst),
        1,
        "the request reached exactly one instance"
    );
    assert_eq!(r.metrics.retries(), 0);
}

#[tokio::test]
async fn malformed_response_is_502_for_that_request_only() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 ???\r\nbroken\r\n\r\n").await;
            });
        }
    });
    let good = named_backend("good").await;
    let r = start_router(
        Some(vec![
            route("bad.localhost", "", "bad", &[addr]),
            route("good.localhost", "", "good", &[good.addr]),
        ]),
        ProxyOptions::default(),
    )
    .await;
    let ans = get(&r, "bad.localhost", "/").await;
    assert_eq!(ans.status, StatusCode::BAD_GATEWAY);
    assert_eq!(get(&r, "good.localhost", "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn slow_instance_gets_504() {
    let slow = spawn_backend(|_req: Request<Incoming>| async {
        std::future::pending::<()>().await;
        Response::new(empty())
    })
    .await;
    let r = start_router(
        Some(vec![route("slow.localhost", "", "slow", &[slow.addr])]),
        ProxyOptions {
            upstream_timeout: Duration::from_millis(200),
            ..ProxyOptions::default()
        },
    )
    .await;
    let ans = get(&r, "slow.localhost", "/").await;
    assert_eq!(ans.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        ans.header(ROUTER_ERROR_HEADER).as_deref(),
        Some("upstream_timeout")
    );
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let echo = spawn_backend(|req: Request<Incoming>| async move {
        Response::new(req.into_body().map_err(BoxError::from).boxed())
    })
    .await;
    let r = start_router(
        Some(vec![route("echo.localhost", "", "echo", &[echo.addr])]),
        ProxyOptions::default(),
    )
    .await;

    // Send one chunk, then wait for it to come back before sending the rest: a router that
    // buffered either body would deadlock here instead.
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 50 * 1024 * 1024;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let body = BodyExt::boxed(StreamBody::new(tokio_stream_from(rx)));
    let req = Request::post(r.url("/upload"))
        .header("host", "echo.localhost")
        .body(body)
        .expect("request");
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    tx.send(Ok(Frame::data(chunk.clone()))).await.expect("send");
    let resp = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("response headers before the upload finished")
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut received = 0usize;
    while received < CHUNK {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("first chunk echoed before the upload finished")
            .expect("frame")
            .expect("frame ok");
        received += frame.data_ref().map(|d| d.len()).unwrap_or(0);
    }
    let sender = tokio::spawn(async move {
        let mut sent = CHUNK;
        while sent < TOTAL {
            if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                break;
            }
            sent += CHUNK;
        }
    });
    while let Some(frame) = body.frame().await {
        received += frame
            .expect("frame")
            .data_ref()
            .map(|d| d.len())
            .unwrap_or(0);
    }
    sender.await.expect("sender");
    assert_eq!(received, TOTAL);
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn upgrade_is_passed_through() {
    // A backend that answers 101 and then echoes raw bytes, like a WebSocket echo server.
    let ws = spawn_backend(|mut req: Request<Incoming>| async move {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = hyper_util::rt::TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(empty())
            .expect("response")
    })
    .await;
    let r = start_router(
        Some(vec![route("ws.localhost", "", "ws", &[ws.addr])]),
        ProxyOptions::default(),
    )
    .await;
    let mut s = TcpStream::connect(r.addr).await.expect("connect");
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.expect("read head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s.write_all(b"ping through the router")
        .await
        .expect("write");
    let mut echoed = [0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echoed, b"ping through the router");
}

#[tokio::test]
async fn sticky_sessions_follow_the_vcap_id_cookie() {
    let mk = |name: &'static str| {
        spawn_backend(move |_req: Request<Incoming>| async move {
            Response::builder()
                .header("x-backend", name)
                .header("set-cookie", "JSESSIONID=s1; Path=/; HttpOnly")
                .body(empty())
                .expect("response")
        })
    };
    let a = mk("a").await;
    let b = mk("b").await;
    let r = start_router(
        Some(vec![route("s.localhost", "", "s", &[a.addr, b.addr])]),
        ProxyOptions::default(),
    )
    .await;
    let first = get(&r, "s.localhost", "/").await;
    let cookie = first
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__VCAP_ID__="))
        .expect("sticky cookie")
        .to_string();
    let pair = cookie.split(';').next().expect("pair").to_string();
    for _ in 0..6 {
        let ans = send(
            Request::get(r.url("/"))
                .header("host", "s.localhost")
                .header("cookie", format!("JSESSIONID=s1; {pair}"))
                .body(empty())
                .expect("request"),
        )
        .await;
        assert_eq!(ans.backend(), first.backend());
    }
    // The instance is gone: another one answers.
    let remaining = if first.backend() == "a" {
        b.addr
    } else {
        a.addr
    };
    r.set_table(vec![route("s.localhost", "", "s2", &[remaining])]);
    let ans = send(
        Request::get(r.url("/"))
            .header("host", "s.localhost")
            .header("cookie", pair)
            .body(empty())
            .expect("request"),
    )
    .await;
    assert_eq!(ans.status, StatusCode::OK);
    assert_ne!(ans.backend(), first.backend());
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let a = named_backend("a").await;
    let r = start_router(
        Some(vec![route("h2.localhost", "", "a", &[a.addr])]),
        ProxyOptions::default(),
    )
    .await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    let resp = client
        .request(
            Request::get(r.url("/x"))
                .header("host", "h2.localhost")
                .body(empty())
                .expect("request"),
        )
        .await
        .expect("h2 response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["name"], "a");
    assert_eq!(v["path"], "/x");
}

#[tokio::test]
async fn access_log_hook_sees_each_request() {
    let a = named_backend("a").await;
    let entries: Arc<Mutex<Vec<AccessLogEntry>>> = Arc::default();
    let sink = Arc::clone(&entries);
    let r = start_router(
        Some(vec![route("log.localhost", "", "logged", &[a.addr])]),
        ProxyOptions {
            access_log: Some(Arc::new(move |e: AccessLogEntry| {
                sink.lock().expect("lock").push(e)
            })),
            ..ProxyOptions::default()
        },
    )
    .await;
    let ans = get(&r, "log.localhost", "/hello?x=1").await;
    let _ = get(&r, "missing.localhost", "/").await;
    let entries = entries.lock().expect("lock").clone();
    assert_eq!(entries.len(), 2);
    let e = &entries[0];
    assert_eq!(e.app.as_deref(), Some("logged"));
    assert_eq!(e.app_guid.as_deref(), Some("guid-logged"));
    assert_eq!(e.instance_index, Some(0));
    assert_eq!(e.method, "GET");
    assert_eq!(e.path, "/hello?x=1");
    assert_eq!(e.status, 200);
    assert_eq!(e.bytes_sent as usize, ans.body.len());
    assert_eq!(e.x_forwarded_for, "127.0.0.1");
    assert_eq!(Some(e.request_id.clone()), ans.header("x-vcap-request-id"));
    assert!(e.to_rtr_line().contains("\"GET /hello?x=1\" 200"));
    assert_eq!(entries[1].status, 404);
    assert_eq!(entries[1].router_error, Some("unknown_route"));
    assert_eq!(r.metrics.requests("logged", 200), 1);
}

#[tokio::test]
async fn oversized_headers_431_crlf_400_and_no_smuggling() {
    let a = named_backend("a").await;
    let r = start_router(
        Some(vec![route("h.localhost", "", "a", &[a.addr])]),
        ProxyOptions {
            max_header_bytes: 8192,
            ..ProxyOptions::default()
        },
    )
    .await;
    let raw = |req: Vec<u8>| {
        let addr = r.addr;
        async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(&req).await.expect("write");
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let big = format!(
        "GET / HTTP/1.1\r\nHost: h.localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let ans = raw(big.into_bytes()).await;
    assert!(ans.starts_with("HTTP/1.1 431"), "{ans}");

    // Content-Length with Transfer-Encoding: refused with 400 before anything reaches the app,
    // and the connection is closed, so nothing can be smuggled behind the body.
    let smuggle = b"POST / HTTP/1.1\r\nHost: h.localhost\r\nContent-Length: 40\r\n\
        Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h.localhost\r\n\r\n"
        .to_vec();
    let ans = raw(smuggle).await;
    assert!(ans.starts_with("HTTP/1.1 400"), "{ans}");
    assert!(ans.contains("x-pier-router-error: bad_request"), "{ans}");
    assert!(
        ans.contains("Content-Length together with Transfer-Encoding"),
        "{ans}"
    );
    assert_eq!(
        ans.matches("HTTP/1.1 ").count(),
        1,
        "one response, then close: {ans}"
    );
    assert_eq!(a.hits.load(Ordering::SeqCst), 0, "nothing reached the app");
    // Differing lengths and codings other than chunked: 400 as well.
    for bad in [
        "POST / HTTP/1.1\r\nHost: h.localhost\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "POST / HTTP/1.1\r\nHost: h.localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h.localhost\r\nHost: other.localhost\r\n\r\n",
    ] {
        let ans = raw(bad.as_bytes().to_vec()).await;
        assert!(ans.starts_with("HTTP/1.1 400"), "{bad:?}: {ans}");
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), 0, "nothing reached the app");
    // A well-formed request on a fresh connection still gets through.
    let ans =
        raw(b"GET / HTTP/1.1\r\nHost: h.localhost\r\nConnection: close\r\n\r\n".to_vec()).await;
    assert!(ans.starts_with("HTTP/1.1 200"), "{ans}");
    assert_eq!(a.hits.load(Ordering::SeqCst), 1);

    let crlf = b"GET / HTTP/1.1\r\nHost: h.localhost\r\nX-A: a\rb\r\n\r\n".to_vec();
    let ans = raw(crlf).await;
    assert!(ans.starts_with("HTTP/1.1 400"), "{ans}");
    assert_eq!(a.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let (arrived_tx, mut arrived_rx) = tokio::sync::mpsc::channel::<()>(1);
    let slow = spawn_backend(move |_req: Request<Incoming>| {
        let mut release = release_rx.clone();
        let arrived = arrived_tx.clone();
        async move {
            let _ = arrived.send(()).await;
            let _ = release.wait_for(|v| *v).await;
            Response::new(full("done"))
        }
    })
    .await;
    let mut r = start_router(
        Some(vec![route("d.localhost", "", "d", &[slow.addr])]),
        ProxyOptions::default(),
    )
    .await;
    let url = r.url("/");
    let in_flight = tokio::spawn(async move {
        send(
            Request::get(url)
                .header("host", "d.localhost")
                .body(empty())
                .expect("request"),
        )
        .await
    });
    arrived_rx
        .recv()
        .await
        .expect("request reached the backend");
    r.shutdown.cancel();
    // New connections are refused once the listener is gone; the in-flight one still finishes.
    release_tx.send_replace(true);
    let ans = in_flight.await.expect("task");
    assert_eq!(ans.status, StatusCode::OK);
    assert_eq!(ans.body, "done");
    let task = r.task.take().expect("task");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve returned after draining")
        .expect("join")
        .expect("serve ok");
}

#[tokio::test]
async fn slow_or_idle_clients_are_cut_off_by_the_header_read_timeout() {
    let a = named_backend("a").await;
    let r = start_router(
        Some(vec![route("h.localhost", "", "a", &[a.addr])]),
        ProxyOptions {
            header_read_timeout: Duration::from_millis(200),
            ..ProxyOptions::default()
        },
    )
    .await;
    // Slowloris: half a request head, then nothing. The router closes the connection.
    let mut s = TcpStream::connect(r.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: h.localhost\r\nX-Slow: ")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("connection closed by the router")
        .ok();
    assert_eq!(a.hits.load(Ordering::SeqCst), 0);

    // Idle keep-alive: one request, then silence; the router closes it too.
    let mut s = TcpStream::connect(r.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: h.localhost\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("idle connection closed by the router")
        .ok();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let a = named_backend("a").await;
    let r = start_router(
        Some(vec![route("h.localhost", "", "a", &[a.addr])]),
        ProxyOptions {
            max_connections: 1,
            ..ProxyOptions::default()
        },
    )
    .await;
    let request = b"GET / HTTP/1.1\r\nHost: h.localhost\r\n\r\n";
    let mut first = TcpStream::connect(r.addr).await.expect("connect");
    first.write_all(request).await.expect("write");
    let mut buf = [0u8; 12];
    first.read_exact(&mut buf).await.expect("first answered");
    assert_eq!(&buf, b"HTTP/1.1 200");

    let mut second = TcpStream::connect(r.addr).await.expect("connect (backlog)");
    second.write_all(request).await.expect("write");
    let waited =
        tokio::time::timeout(Duration::from_millis(300), second.read_exact(&mut buf)).await;
    assert!(
        waited.is_err(),
        "second connection served while the first holds the only slot"
    );
    drop(first);
    tokio::time::timeout(Duration::from_secs(5), second.read_exact(&mut buf))
        .await
        .expect("served once the first closed")
        .expect("read");
    assert_eq!(&buf, b"HTTP/1.1 200");
}

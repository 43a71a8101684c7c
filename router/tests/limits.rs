//! Per-route balancing, the maximum request time and "never misroute" across table updates.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use pier_api::{Backend, Balancing, RouteEntry, ROUTER_ERROR_HEADER};
use pier_router::ProxyOptions;

#[tokio::test]
async fn least_connections_route_sends_new_requests_to_the_idle_instance() {
    // `slow` holds every request until released; `fast` answers at once.
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let slow = spawn_backend(move |_req: Request<Incoming>| {
        let mut release = release_rx.clone();
        async move {
            let _ = release.wait_for(|v| *v).await;
            Response::builder()
                .header("x-backend", "slow")
                .body(empty())
                .expect("response")
        }
    })
    .await;
    let fast = named_backend("fast").await;
    let entry = RouteEntry {
        balancing: Balancing::LeastConnections,
        ..route("lc.localhost", "", "lc", &[slow.addr, fast.addr])
    };
    let r = start_router(Some(vec![entry]), ProxyOptions::default()).await;

    // Park one request on `slow` (whichever instance the random start picks first, keep sending
    // until one is parked there).
    let mut parked = Vec::new();
    while slow.hits.load(Ordering::SeqCst) == 0 {
        let url = r.url("/");
        let req = Request::get(url)
            .header("host", "lc.localhost")
            .body(empty())
            .expect("request");
        parked.push(tokio::spawn(send(req)));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every further request goes to the instance with nothing in flight.
    for _ in 0..6 {
        assert_eq!(get(&r, "lc.localhost", "/").await.backend(), "fast");
    }
    assert_eq!(slow.hits.load(Ordering::SeqCst), 1);
    release_tx.send_replace(true);
    for p in parked {
        assert_eq!(p.await.expect("join").status, StatusCode::OK);
    }
}

#[tokio::test]
async fn the_in_flight_handle_counts_requests_and_wakes_a_drain_when_they_end() {
    // An embedder (the controller) keeps a clone of the handle it passes in the options.
    let in_flight = pier_router::InFlight::default();
    let (held, release_tx) = held_backend().await;
    let opts = ProxyOptions {
        in_flight: in_flight.clone(),
        ..ProxyOptions::default()
    };
    let r = start_router(
        Some(vec![route("held.localhost", "", "held", &[held.addr])]),
        opts,
    )
    .await;
    let request = tokio::spawn(get_owned(r.url("/"), "held.localhost"));
    while held.hits.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(in_flight.count("held-inst-0"), 1);
    let far = tokio::time::Instant::now() + Duration::from_secs(30);
    let drain = {
        let in_flight = in_flight.clone();
        tokio::spawn(async move { in_flight.wait_idle("held-inst-0", far).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!drain.is_finished(), "the request is still in flight");
    release_tx.send_replace(true);
    assert_eq!(request.await.expect("join").status, StatusCode::OK);
    assert!(drain.await.expect("join"), "woken once the request ended");
    assert_eq!(in_flight.count("held-inst-0"), 0);
}

/// A backend that sends its headers at once, then one chunk every 50 ms for ever.
async fn endless_backend() -> FakeBackend {
    spawn_backend(|_req: Request<Incoming>| async move {
        let chunks = futures_util::stream::unfold(0u64, |n| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from(format!("{n}\n")))),
                n + 1,
            ))
        });
        Response::new(StreamBody::new(chunks).boxed())
    })
    .await
}

#[tokio::test]
async fn max_request_time_cuts_off_a_streaming_response() {
    let b = endless_backend().await;
    let r = start_router(
        Some(vec![route("s.localhost", "", "s", &[b.addr])]),
        ProxyOptions {
            max_request_time: Duration::from_millis(400),
            ..ProxyOptions::default()
        },
    )
    .await;
    let started = Instant::now();
    let resp = client()
        .request(
            Request::get(r.url("/"))
                .header("host", "s.localhost")
                .body(empty())
                .expect("request"),
        )
        .await
        .expect("headers");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .expect("the router ended the response");
    assert!(body.is_err(), "a cut-off response must not look complete");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn max_request_time_bounds_the_wait_for_headers_too() {
    let (silent, _never_tx) = held_backend().await;
    let r = start_router(
        Some(vec![route("s.localhost", "", "s", &[silent.addr])]),
        ProxyOptions {
            upstream_timeout: Duration::from_secs(60),
            max_request_time: Duration::from_millis(300),
            ..ProxyOptions::default()
        },
    )
    .await;
    let started = Instant::now();
    let ans = get(&r, "s.localhost", "/").await;
    assert_eq!(ans.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        ans.header(ROUTER_ERROR_HEADER).as_deref(),
        Some("upstream_timeout")
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Never misroute: an address that changes hands between tables is only ever used for the app
/// the newest table gives it to, whatever the client's cookies or the router's memory say.
#[tokio::test]
async fn a_reused_address_only_gets_the_new_owners_traffic() {
    // One listening socket plays both lives of the port: first app `old`'s instance, then (after
    // the table moves it) app `new`'s instance.
    let port = named_backend("port").await;
    let other_old = named_backend("other-old").await;
    let backend = |id: &str, addr, index| Backend {
        addr,
        instance_id: id.into(),
        index,
        weight: 1,
    };
    let r = start_router(
        Some(vec![RouteEntry {
            backends: vec![backend("old-0", port.addr, 0)],
            ..route("old.localhost", "", "old", &[])
        }]),
        ProxyOptions::default(),
    )
    .await;
    // A client of `old` gets pinned to instance old-0 at the address.
    let first = get(&r, "old.localhost", "/").await;
    assert_eq!(first.backend(), "port");
    assert_eq!(
        first.json()["headers"]["x-cf-instanceid"].as_str(),
        Some("old-0")
    );

    // old-0 dies; its address is reused by new-0 of app `new`; `old` runs elsewhere.
    r.set_table(vec![
        RouteEntry {
            backends: vec![backend("old-1", other_old.addr, 1)],
            ..route("old.localhost", "", "old", &[])
        },
        RouteEntry {
            backends: vec![backend("new-0", port.addr, 0)],
            ..route("new.localhost", "", "new", &[])
        },
    ]);
    let hits_before = port.hits.load(Ordering::SeqCst);
    for _ in 0..5 {
        // The pinned client of `old` is not sent to the address it was pinned to.
        let ans = send(
            Request::get(r.url("/"))
                .header("host", "old.localhost")
                .header("cookie", "JSESSIONID=s; __VCAP_ID__=old-0")
                .body(empty())
                .expect("request"),
        )
        .await;
        assert_eq!(ans.status, StatusCode::OK);
        assert_eq!(ans.backend(), "other-old");
    }
    assert_eq!(port.hits.load(Ordering::SeqCst), hits_before);

    // The address's new owner gets its own traffic, told which instance it was meant for.
    let ans = get(&r, "new.localhost", "/").await;
    assert_eq!(ans.backend(), "port");
    assert_eq!(
        ans.json()["headers"]["x-cf-instanceid"].as_str(),
        Some("new-0")
    );
    assert_eq!(
        ans.json()["headers"]["x-cf-applicationid"].as_str(),
        Some("guid-new")
    );

    // `old` scaled to zero: 503, never the reused address.
    r.set_table(vec![
        route("old.localhost", "", "old", &[]),
        RouteEntry {
            backends: vec![backend("new-0", port.addr, 0)],
            ..route("new.localhost", "", "new", &[])
        },
    ]);
    let hits_before = port.hits.load(Ordering::SeqCst);
    let ans = send(
        Request::get(r.url("/"))
            .header("host", "old.localhost")
            .header("cookie", "__VCAP_ID__=old-0")
            .body(empty())
            .expect("request"),
    )
    .await;
    assert_eq!(ans.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(port.hits.load(Ordering::SeqCst), hits_before);
}

/// The failed-instance memory is keyed by instance id: a new instance on an address whose
/// previous instance refused connections is used at once.
#[tokio::test]
async fn a_new_instance_on_a_failed_address_is_not_skipped() {
    let dead = closed_port().await;
    let alive = named_backend("alive").await;
    let r = start_router(
        Some(vec![RouteEntry {
            backends: vec![
                Backend {
                    addr: dead,
                    instance_id: "gone-0".into(),
                    index: 0,
                    weight: 1,
                },
                Backend {
                    addr: alive.addr,
                    instance_id: "alive-1".into(),
                    index: 1,
                    weight: 1,
                },
            ],
            ..route("f.localhost", "", "f", &[])
        }]),
        ProxyOptions::default(),
    )
    .await;
    // Until the dead instance has been tried (and remembered as failed), keep asking.
    while r.metrics.retries() == 0 {
        assert_eq!(get(&r, "f.localhost", "/").await.backend(), "alive");
    }
    // A new instance now listens on the dead address.
    let listener = tokio::net::TcpListener::bind(dead).await;
    let Ok(listener) = listener else {
        return; // the port was taken by someone else meanwhile: nothing to check
    };
    drop(listener);
    let reborn = spawn_backend_on(dead, "reborn").await;
    r.set_table(vec![RouteEntry {
        backends: vec![
            Backend {
                addr: dead,
                instance_id: "reborn-0".into(),
                index: 0,
                weight: 1,
            },
            Backend {
                addr: alive.addr,
                instance_id: "alive-1".into(),
                index: 1,
                weight: 1,
            },
        ],
        ..route("f.localhost", "", "f", &[])
    }]);
    // Round-robin over two usable instances: the reborn one answers within two requests (it
    // would be skipped for 30 s if the memory were keyed by address).
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(get(&r, "f.localhost", "/").await.backend());
    }
    assert!(seen.iter().any(|b| b == "reborn"), "{seen:?}");
    drop(reborn);
}

/// Connections to instances are kept alive and reused; one the instance closes is not.
#[tokio::test]
async fn instance_connections_are_pooled_and_closed_ones_dropped() {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    // `/close` answers and closes its connection.
                    let mut resp = Response::builder().header("x-backend", "pooled");
                    if req.uri().path() == "/close" {
                        resp = resp.header("connection", "close");
                    }
                    Ok::<_, std::convert::Infallible>(resp.body(full("ok")).expect("response"))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let r = start_router(
        Some(vec![route("p.localhost", "", "p", &[addr])]),
        ProxyOptions::default(),
    )
    .await;
    for _ in 0..20 {
        assert_eq!(get(&r, "p.localhost", "/").await.status, StatusCode::OK);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one kept-alive connection"
    );
    assert_eq!(
        get(&r, "p.localhost", "/close").await.status,
        StatusCode::OK
    );
    for _ in 0..5 {
        assert_eq!(get(&r, "p.localhost", "/").await.status, StatusCode::OK);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a new one after the close"
    );
}

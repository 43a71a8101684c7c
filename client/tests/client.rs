//! The client against a fake controller (axum on port 0): paths, queries, tokens, error decoding,
//! limits and the two streams.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use pier_api::{
    AppName, BuildEvent, BuildRequest, ErrorCode, LogEvent, RouteTable, RouterLogBatch,
};
use pier_client::{Client, ClientError, LogStart, RoutesAnswer, RoutesPoll};

#[derive(Default)]
struct Seen {
    queries: Vec<HashMap<String, String>>,
    auth: Vec<Option<String>>,
    lengths: Vec<Option<String>>,
}

type Shared = Arc<Mutex<Seen>>;

fn note(seen: &Shared, q: HashMap<String, String>, h: &HeaderMap) {
    let mut s = seen.lock().unwrap();
    s.queries.push(q);
    s.auth.push(
        h.get("authorization")
            .map(|v| v.to_str().unwrap().to_string()),
    );
    s.lengths.push(
        h.get("content-length")
            .map(|v| v.to_str().unwrap().to_string()),
    );
}

async fn routes(
    State(seen): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    h: HeaderMap,
) -> Response {
    let version: u64 = q["version"].parse().unwrap();
    let big = q["epoch"] == "big";
    note(&seen, q, &h);
    if version == 7 {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut table = RouteTable {
        epoch: "e 1&x".into(),
        version: 8,
        routes: vec![],
    };
    if big {
        table.epoch = "x".repeat(10_000);
    }
    axum::Json(table).into_response()
}

async fn fake() -> (String, Shared) {
    let seen: Shared = Arc::default();
    let app = Router::new()
        .route("/v1/routes", get(routes))
        .route(
            "/v1/apps/{name}",
            get(|| async {
                (
                    StatusCode::NOT_FOUND,
                    r#"{"code":"not_found","message":"app \"nope\" not found"}"#,
                )
            }),
        )
        .route(
            "/v1/apps",
            get(|| async { (StatusCode::BAD_GATEWAY, "upstream went away") }),
        )
        .route(
            "/v1/info",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "{}"
            }),
        )
        .route(
            "/v1/router/logs",
            post(
                |State(seen): State<Shared>, h: HeaderMap, body: String| async move {
                    note(&seen, HashMap::new(), &h);
                    let _: RouterLogBatch = serde_json::from_str(&body).unwrap();
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/v1/packages",
            post(
                |State(seen): State<Shared>, h: HeaderMap, body: axum::body::Bytes| async move {
                    note(&seen, HashMap::new(), &h);
                    axum::Json(serde_json::json!({"sha256": "abc", "size": body.len()}))
                },
            ),
        )
        .route(
            "/v1/apps/{name}/builds",
            post(|| async {
                // Lines split across writes, the way a slow staging sends them.
                let chunks = [
                    r#"{"log":{"seq":1,"time":"2026-11-25T12:00:05Z","source":"STG/0","stream":"OUT","text":"-----> Python"#,
                    "\"}}\n",
                    r#"{"done":{"sha256":"d","buildpack":"python","created_at":"2026-11-25T12:00:06Z"}}"#,
                    "\n",
                ];
                let body = futures_util::stream::iter(chunks).then(|c| async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, std::convert::Infallible>(c)
                });
                Body::from_stream(body)
            }),
        )
        .route(
            "/v1/apps/{name}/logs/stream",
            get(
                |State(seen): State<Shared>, Query(q): Query<HashMap<String, String>>, h: HeaderMap| async move {
                    note(&seen, q, &h);
                    let line = r#"{"type":"line","seq":12,"time":"2026-11-25T12:00:05Z","source":"RTR/0","stream":"OUT","text":"GET /"}"#;
                    format!("id: 11\n\n: keep-alive\n\nid: 12\ndata: {line}\n\n")
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn name(s: &str) -> AppName {
    s.parse().unwrap()
}

#[tokio::test]
async fn refusals_are_decoded_with_their_status() {
    let (url, _) = fake().await;
    let c = Client::new(&url, Some("t".into())).unwrap();
    let e = c.app(&name("nope")).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    assert_eq!(e.to_string(), "app \"nope\" not found");
    let e = c.apps().await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Http { status, body, .. } if *status == StatusCode::BAD_GATEWAY && body == "upstream went away"),
        "{e:?}"
    );
    assert_eq!(e.code(), None);
}

#[tokio::test]
async fn no_answer_is_unreachable_or_a_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let e = Client::new(&url, None).unwrap().info().await.unwrap_err();
    assert!(e.is_unreachable(), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("cannot reach the Pier controller at {url}: is pier-controller running?")
    );

    let (url, _) = fake().await;
    let c = Client::new(&url, None)
        .unwrap()
        .with_timeout(Some(Duration::from_millis(200)));
    let e = c.info().await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Timeout { after, .. } if *after == Duration::from_millis(200)),
        "{e:?}"
    );
}

#[tokio::test]
async fn the_route_long_poll_sends_its_position_and_bounds_the_table() {
    let (url, seen) = fake().await;
    let c = Client::new(&url, Some("tok".into())).unwrap();
    let poll = RoutesPoll {
        epoch: "e 1&x",
        version: 7,
        router: Some("r1"),
        max_bytes: 4096,
        draining: &[],
    };
    assert_eq!(
        c.poll_routes(&poll).await.unwrap(),
        RoutesAnswer::NotModified
    );
    let answer = c
        .poll_routes(&RoutesPoll { version: 3, ..poll })
        .await
        .unwrap();
    assert!(matches!(answer, RoutesAnswer::Table(t) if t.version == 8 && t.epoch == "e 1&x"));
    let e = c
        .poll_routes(&RoutesPoll {
            epoch: "big",
            version: 3,
            ..poll
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::TooLarge { limit: 4096, .. }),
        "{e:?}"
    );
    let s = seen.lock().unwrap();
    assert_eq!(
        s.queries[0]["epoch"], "e 1&x",
        "the epoch survives encoding"
    );
    assert_eq!(s.queries[0]["version"], "7");
    assert_eq!(s.queries[0]["router"], "r1");
    assert_eq!(s.auth[0].as_deref(), Some("Bearer tok"));
}

#[tokio::test]
async fn uploads_carry_their_length_and_router_logs_their_token() {
    let (url, seen) = fake().await;
    let c = Client::new(&url, Some("tok".into())).unwrap();
    let chunks: Vec<std::io::Result<bytes::Bytes>> = vec![
        Ok(bytes::Bytes::from_static(b"abc")),
        Ok(bytes::Bytes::from_static(b"defg")),
    ];
    let pkg = c
        .upload_package(futures_util::stream::iter(chunks), 7)
        .await
        .unwrap();
    assert_eq!(pkg.size, 7);
    c.send_router_logs(&RouterLogBatch::default())
        .await
        .unwrap();
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.lengths[0].as_deref(), Some("7"));
        assert_eq!(s.auth[1].as_deref(), Some("Bearer tok"));
    }
    // No token, no header.
    Client::new(&url, Some(String::new()))
        .unwrap()
        .send_router_logs(&RouterLogBatch::default())
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap().auth[2], None);
}

#[tokio::test]
async fn builds_and_logs_are_typed_streams() {
    let (url, seen) = fake().await;
    let c = Client::new(&url, None).unwrap();
    let events: Vec<BuildEvent> = c
        .build(&name("hello"), &BuildRequest::default())
        .await
        .unwrap()
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert!(matches!(&events[0], BuildEvent::Log(l) if l.text == "-----> Python"));
    assert!(matches!(&events[1], BuildEvent::Done(d) if d.buildpack == "python"));
    assert_eq!(events.len(), 2);

    let mut logs = c
        .log_stream(&name("hello"), LogStart::After(10))
        .await
        .unwrap();
    let first = logs.next().await.unwrap().unwrap();
    assert!(
        matches!(&first, LogEvent::Line(l) if l.source == pier_api::LogSource::Router(0) && l.seq == 12)
    );
    assert!(logs.next().await.is_none());
    assert_eq!(logs.last_event_id(), Some(12));
    c.log_stream(&name("hello"), LogStart::Recent(Some(0)))
        .await
        .unwrap();
    let s = seen.lock().unwrap();
    assert_eq!(s.queries[0]["after"], "10");
    assert_eq!(s.queries[1]["recent"], "0");
}

//! Test harness: the router in-process on port 0, fake hyper backends, a small client.
#![allow(dead_code)]

pub mod controller;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pier_api::{Backend, RouteEntry, RouteTable};
use pier_router::{serve, Metrics, ProxyOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// The router under test.
pub struct RouterHandle {
    pub addr: SocketAddr,
    pub tables: watch::Sender<Option<Arc<RouteTable>>>,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<std::io::Result<()>>>,
    pub metrics: Arc<Metrics>,
}

impl RouterHandle {
    pub fn set_table(&self, routes: Vec<RouteEntry>) {
        let version = self
            .tables
            .borrow()
            .as_ref()
            .map(|t| t.version)
            .unwrap_or(0)
            + 1;
        self.tables.send_replace(Some(Arc::new(RouteTable {
            epoch: "test".into(),
            version,
            routes,
        })));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for RouterHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn start_router(routes: Option<Vec<RouteEntry>>, opts: ProxyOptions) -> RouterHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind router");
    let addr = listener.local_addr().expect("router addr");
    let table = routes.map(|routes| {
        Arc::new(RouteTable {
            epoch: "test".into(),
            version: 1,
            routes,
        })
    });
    let (tx, rx) = watch::channel(table);
    let shutdown = CancellationToken::new();
    let metrics = Arc::clone(&opts.metrics);
    let task = tokio::spawn(serve(listener, rx, opts, shutdown.clone()));
    RouterHandle {
        addr,
        tables: tx,
        shutdown,
        task: Some(task),
        metrics,
    }
}

/// `dir/routes.json`: a fixed route table (`--routes-file`) of `routes`.
pub fn routes_file(dir: &std::path::Path, routes: Vec<RouteEntry>) -> std::path::PathBuf {
    let path = dir.join("routes.json");
    let table = RouteTable {
        epoch: "file".into(),
        version: 1,
        routes,
    };
    std::fs::write(&path, serde_json::to_vec(&table).expect("json")).expect("write routes");
    path
}

pub fn route(host: &str, path: &str, app: &str, backends: &[SocketAddr]) -> RouteEntry {
    RouteEntry {
        host: host.into(),
        path: path.into(),
        app: app.into(),
        app_guid: format!("guid-{app}"),
        backends: backends
            .iter()
            .enumerate()
            .map(|(i, a)| Backend {
                addr: *a,
                instance_id: format!("{app}-inst-{i}"),
                index: i as u32,
                weight: 1,
            })
            .collect(),
        balancing: Default::default(),
    }
}

/// A fake instance.
pub struct FakeBackend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub shutdown: CancellationToken,
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Serves `handler` over HTTP/1.1 on a fresh port.
pub async fn spawn_backend<F, Fut>(handler: F) -> FakeBackend
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    serve_backend(listener, handler)
}

/// Like [`named_backend`], on a given address (a port reused by a new instance).
pub async fn spawn_backend_on(addr: SocketAddr, name: &'static str) -> FakeBackend {
    let listener = TcpListener::bind(addr).await.expect("bind backend");
    serve_backend(listener, named_handler(name))
}

fn serve_backend<F, Fut>(listener: TcpListener, handler: F) -> FakeBackend
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let addr = listener.local_addr().expect("backend addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let (h, s) = (Arc::clone(&hits), shutdown.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = s.cancelled() => return,
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            };
            let handler = handler.clone();
            let h = Arc::clone(&h);
            let s = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    h.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades();
                tokio::select! {
                    _ = conn => {}
                    _ = s.cancelled() => {}
                }
            });
        }
    });
    FakeBackend {
        addr,
        hits,
        shutdown,
    }
}

/// A backend answering with JSON: its name, the path and the request headers it saw.
/// A backend that holds every request until `true` is sent on the returned channel.
pub async fn held_backend() -> (FakeBackend, tokio::sync::watch::Sender<bool>) {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let held = spawn_backend(move |_req: Request<Incoming>| {
        let mut release = release_rx.clone();
        async move {
            let _ = release.wait_for(|v| *v).await;
            Response::new(empty())
        }
    })
    .await;
    (held, release_tx)
}

pub async fn get_owned(url: String, host: &'static str) -> Answer {
    let req = Request::get(url)
        .header("host", host)
        .body(empty())
        .expect("request");
    send(req).await
}

pub async fn named_backend(name: &'static str) -> FakeBackend {
    spawn_backend(named_handler(name)).await
}

fn named_handler(
    name: &'static str,
) -> impl Fn(Request<Incoming>) -> std::pin::Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    move |req: Request<Incoming>| {
        Box::pin(async move {
            let headers: HashMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = serde_json::json!({
                "name": name,
                "path": req.uri().path(),
                "headers": headers,
            });
            Response::builder()
                .header("content-type", "application/json")
                .header("x-backend", name)
                .body(full(body.to_string()))
                .expect("response")
        })
    }
}

/// A free port with nothing listening on it.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("backend JSON")
    }

    pub fn backend(&self) -> String {
        self.headers
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

pub async fn send(req: Request<TestBody>) -> Answer {
    let resp = tokio::time::timeout(Duration::from_secs(20), client().request(req))
        .await
        .expect("router answered in time")
        .expect("request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(router: &RouterHandle, host: &str, path: &str) -> Answer {
    send(
        Request::get(router.url(path))
            .header("host", host)
            .body(empty())
            .expect("request"),
    )
    .await
}

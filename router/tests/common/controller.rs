//! A fake controller serving `GET /v1/routes` long-polls (axum), which can fail or vanish.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use pier_api::RouteTable;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "s3cret";

#[derive(Clone, Copy)]
pub enum Unchanged {
    NotModified,
    SameTable,
}

pub struct Ctl {
    pub table: watch::Sender<RouteTable>,
    pub hold: Duration,
    pub unchanged: Unchanged,
    /// While set, every poll gets 503.
    pub failing: std::sync::atomic::AtomicBool,
    pub polls: AtomicUsize,
    pub polled: Notify,
    /// The `draining` parameter of every poll, in order (empty when absent).
    pub draining: std::sync::Mutex<Vec<String>>,
}

async fn routes(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    ctl.draining
        .lock()
        .expect("lock")
        .push(q.get("draining").cloned().unwrap_or_default());
    ctl.polls.fetch_add(1, Ordering::SeqCst);
    ctl.polled.notify_waiters();
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer s3cret") {
        return (StatusCode::UNAUTHORIZED, "{\"code\":\"unauthorized\"}").into_response();
    }
    if ctl.failing.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance").into_response();
    }
    let epoch = q.get("epoch").cloned().unwrap_or_default();
    let version = q.get("version").cloned().unwrap_or_default();
    let differs = move |t: &RouteTable| t.epoch != epoch || t.version.to_string() != version;
    let mut rx = ctl.table.subscribe();
    if !differs(&rx.borrow()) {
        let _ = tokio::time::timeout(ctl.hold, rx.wait_for(|t| differs(t))).await;
    }
    let t = rx.borrow().clone();
    if differs(&t) {
        return Json(t).into_response();
    }
    match ctl.unchanged {
        Unchanged::NotModified => StatusCode::NOT_MODIFIED.into_response(),
        Unchanged::SameTable => Json(t).into_response(),
    }
}

pub struct FakeController {
    pub addr: SocketAddr,
    pub ctl: Arc<Ctl>,
    pub stop: CancellationToken,
}

impl FakeController {
    /// Gone for good: listener closed and every open connection dropped.
    pub fn kill(&self) {
        self.stop.cancel();
    }

    pub fn publish(&self, epoch: &str, version: u64, routes: Vec<pier_api::RouteEntry>) {
        self.ctl.table.send_replace(RouteTable {
            epoch: epoch.into(),
            version,
            routes,
        });
    }

    pub async fn wait_polls(&self, n: usize) {
        loop {
            let notified = self.ctl.polled.notified();
            if self.ctl.polls.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::timeout(Duration::from_secs(10), notified)
                .await
                .expect("controller polled in time");
        }
    }
}

impl Drop for FakeController {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn fake_controller(
    listener: TcpListener,
    initial: RouteTable,
    unchanged: Unchanged,
) -> FakeController {
    let addr = listener.local_addr().expect("addr");
    let (table, _) = watch::channel(initial);
    let ctl = Arc::new(Ctl {
        table,
        hold: Duration::from_millis(300),
        unchanged,
        failing: false.into(),
        polls: AtomicUsize::new(0),
        polled: Notify::new(),
        draining: Default::default(),
    });
    let app = axum::Router::new()
        .route("/v1/routes", axum::routing::get(routes))
        .with_state(Arc::clone(&ctl));
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = s.cancelled() => return,
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            };
            let svc = TowerToHyperService::new(app.clone());
            let s = s.clone();
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = s.cancelled() => {}
                }
            });
        }
    });
    FakeController { addr, ctl, stop }
}

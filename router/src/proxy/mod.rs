//! What both engines share about a request once its head is read: the route table (built
//! once per published table), the route and instance for the request, the retry rule and the
//! memory of refused instances, the answers the router makes itself, and the access log. The
//! HTTP/1 engine (`h1`) and the HTTP/2 path (`h2`) each move bytes their own
//! way and ask this module every question whose answer must not depend on the protocol.
//!
//! ```text
//! route_for: host (Host or :authority) ─▶ table lookup ─▶ route ─▶ Attempts::next ─▶ instance
//!              │                            │                 ▲            │
//!              ▼                            ▼                 └── connect failed, no byte sent:
//!        400 no Host,                404 unknown_route            mark it failed 30 s, next one
//!        503 table_loading           503 no_instances             (≤ max_attempts, ≤ instances)
//! ```
//!
//! Invariants:
//! - Every response the router makes itself (`Refusal`) carries
//!   [`pier_api::ROUTER_ERROR_HEADER`] naming the cause, a plain-text body, and the request id.
//! - Before the first table arrives, every request gets 503 `table_loading`, never 404.
//! - What the router remembers about an instance (refused connects, sticky sessions) is keyed by
//!   instance id as well as address, so a new instance on a reused address starts clean.
//! - Each request is counted in flight on its instance ([`crate::table::Route::start_request`])
//!   from the attempt that picks it until its response ends; the access log entry and the
//!   metrics are written once, when the response is done or abandoned (`RequestLog`).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use pier_api::{RouteTable, ROUTER_ERROR_HEADER};
use tokio::sync::{watch, Semaphore};

use crate::h2::upstream::Pool;
use crate::idle::UpstreamLimit;
use crate::in_flight::InFlight;
use crate::table::{Route, Table};

mod log;
mod options;

pub use crate::headers::X_VCAP_REQUEST_ID;
pub(crate) use log::RequestLog;
pub use log::{AccessLog, AccessLogEntry};
pub use options::ProxyOptions;

/// Boxed error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of every response the proxy returns.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
/// The table as the controller publishes it: `None` until the first table is known.
pub type TableReceiver = watch::Receiver<Option<Arc<RouteTable>>>;

/// Causes named in the [`ROUTER_ERROR_HEADER`] of responses the router makes itself.
pub mod cause {
    pub const UNKNOWN_ROUTE: &str = "unknown_route";
    pub const NO_INSTANCES: &str = "no_instances";
    pub const TABLE_LOADING: &str = "table_loading";
    pub const BACKEND_ERROR: &str = "backend_error";
    pub const UPSTREAM_TIMEOUT: &str = "upstream_timeout";
    /// Not a response: a streaming response cut off at the maximum request time (access log
    /// and metrics only).
    pub const REQUEST_TIMEOUT: &str = "request_timeout";
    pub const BAD_REQUEST: &str = "bad_request";
    /// 408: the request body stalled past the body read timeout.
    pub const BODY_TIMEOUT: &str = "body_timeout";
    /// 503: the router's limit on connections to instances is reached.
    pub const UPSTREAM_LIMIT: &str = "upstream_limit";
}

/// Builds a [`Table`] once per published [`RouteTable`], on the first request that sees it, so
/// a table sent on the watch channel applies to the very next request.
struct TableCache {
    rx: TableReceiver,
    built: RwLock<Option<(Arc<RouteTable>, Arc<Table>)>>,
    /// Where every table built here takes its in-flight counters.
    in_flight: InFlight,
}

impl TableCache {
    fn current(&self) -> Option<Arc<Table>> {
        let src = self.rx.borrow().clone()?;
        if let Some((s, t)) = &*self.built.read().unwrap_or_else(|e| e.into_inner()) {
            if Arc::ptr_eq(s, &src) {
                return Some(Arc::clone(t));
            }
        }
        let mut built = self.built.write().unwrap_or_else(|e| e.into_inner());
        if let Some((s, t)) = &*built {
            if Arc::ptr_eq(s, &src) {
                return Some(Arc::clone(t));
            }
        }
        let table = Arc::new(Table::new(&src, &self.in_flight));
        tracing::info!(epoch = %table.epoch, version = table.version, routes = table.len(),
            "route table loaded");
        *built = Some((src, Arc::clone(&table)));
        Some(table)
    }
}

/// What every proxy thread shares: the built table (with its balancing state) and the memory of
/// failed instances.
pub(crate) struct Shared {
    tables: TableCache,
    /// Instances that refused a connection, by address, with the instance id and when.
    failed: Mutex<HashMap<SocketAddr, (String, Instant)>>,
    failed_count: AtomicU64,
    /// One permit per open connection to an instance ([`ProxyOptions::max_upstream_connections`]).
    upstream: Arc<Semaphore>,
}

impl Shared {
    pub(crate) fn new(
        tables: TableReceiver,
        in_flight: InFlight,
        max_upstream_connections: usize,
    ) -> Arc<Self> {
        Arc::new(Shared {
            tables: TableCache {
                rx: tables,
                built: RwLock::new(None),
                in_flight,
            },
            failed: Mutex::new(HashMap::new()),
            failed_count: AtomicU64::new(0),
            upstream: Arc::new(Semaphore::new(max_upstream_connections.max(1))),
        })
    }
}

/// The proxy service shared by every connection of one runtime. Its client's pooled
/// connections are driven by tasks on the runtime that opened them, so each thread of
/// [`crate::serve_threads`] has its own `Proxy` over one [`Shared`].
pub(crate) struct Proxy {
    /// Connections to instances for the HTTP/2 path ([`crate::h2`]).
    pub(crate) pool: Arc<Pool>,
    /// Idle connections of the HTTP/1 engine ([`crate::h1`]).
    pub(crate) h1_pool: crate::h1::Pool,
    shared: Arc<Shared>,
    pub(crate) opts: ProxyOptions,
}

/// A request the router answers itself instead of forwarding.
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) cause: &'static str,
    pub(crate) message: String,
}

impl Refusal {
    /// 503 `upstream_limit`: no connection to an instance could be had in time.
    pub(crate) fn upstream_limit() -> Self {
        Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            cause: cause::UPSTREAM_LIMIT,
            message: "The router has too many connections to app instances open; try again.".into(),
        }
    }

    /// 408 `body_timeout`: the client stopped sending its request body.
    pub(crate) fn body_timeout() -> Self {
        Refusal {
            status: StatusCode::REQUEST_TIMEOUT,
            cause: cause::BODY_TIMEOUT,
            message: "The request body stopped arriving.".into(),
        }
    }

    /// 400 `bad_request`, saying why.
    pub(crate) fn bad_request(why: &str) -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            cause: cause::BAD_REQUEST,
            message: format!("Bad request: {why}."),
        }
    }
}

/// The instances one request tries, in turn. Only a connection that could not be opened (so
/// no byte of the request was written) leads to another attempt; there are at most
/// [`ProxyOptions::max_attempts`], never more than the route has instances, and the sticky
/// instance comes first.
pub(crate) struct Attempts<'a> {
    proxy: &'a Proxy,
    route: &'a Arc<Route>,
    sticky: Option<String>,
    max: usize,
    tried: Vec<usize>,
    last_error: Option<String>,
}

impl<'a> Attempts<'a> {
    pub(crate) fn new(proxy: &'a Proxy, route: &'a Arc<Route>, sticky: Option<String>) -> Self {
        let max = proxy.opts.max_attempts.clamp(1, route.backends.len());
        Attempts {
            proxy,
            route,
            sticky,
            max,
            tried: Vec::with_capacity(max),
            last_error: None,
        }
    }

    /// The backend the next attempt goes to, counted in flight on it and named in the log
    /// from now on; `None` when no attempt is left.
    pub(crate) fn next(&mut self, log: &mut RequestLog) -> Option<usize> {
        if self.tried.len() >= self.max {
            return None;
        }
        let attempt = self.tried.len();
        let i =
            self.proxy
                .pick_backend(self.route, self.sticky.as_deref(), attempt, &self.tried)?;
        self.tried.push(i);
        log.set_backend(&self.route.backends[i]);
        log.in_flight = Some(self.route.start_request(i));
        Some(i)
    }

    /// Whether another attempt may follow the current one.
    pub(crate) fn more_left(&self) -> bool {
        self.tried.len() < self.max
    }

    /// The current attempt, on backend `i`, could not open a connection.
    pub(crate) fn connect_failed(
        &mut self,
        i: usize,
        error: &dyn fmt::Display,
        log: &mut RequestLog,
    ) {
        let retrying = self.more_left();
        self.proxy
            .connect_failed(self.route, &self.route.backends[i], error, retrying);
        log.in_flight = None;
        self.last_error = Some(error.to_string());
    }

    /// No instance accepted a connection: logged, and the answer.
    pub(crate) fn exhausted(self) -> Refusal {
        tracing::warn!(app = %self.route.app, attempts = self.tried.len(),
            error = %self.last_error.unwrap_or_default(), "no instance accepted a connection");
        Refusal {
            status: StatusCode::BAD_GATEWAY,
            cause: cause::BACKEND_ERROR,
            message: "No instance of the app accepted a connection.".into(),
        }
    }
}

impl Proxy {
    pub(crate) fn with_shared(shared: Arc<Shared>, opts: ProxyOptions) -> Self {
        let limit = UpstreamLimit {
            permits: Arc::clone(&shared.upstream),
            wait: opts.connect_timeout,
        };
        let pool = Pool::new(
            opts.connect_timeout,
            opts.pool_idle_timeout,
            opts.pool_max_idle_per_host,
            limit.clone(),
        );
        let h1_pool =
            crate::h1::Pool::new(opts.pool_idle_timeout, opts.pool_max_idle_per_host, limit);
        Proxy {
            pool,
            h1_pool,
            shared,
            opts,
        }
    }

    pub(crate) fn options(&self) -> &ProxyOptions {
        &self.opts
    }

    fn is_failed(&self, b: &pier_api::Backend, now: Instant) -> bool {
        if self.shared.failed_count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let failed = self.shared.failed.lock().unwrap_or_else(|e| e.into_inner());
        matches!(failed.get(&b.addr), Some((id, until)) if *id == b.instance_id && *until > now)
    }

    /// The route for a request, or why there is none (no host, no table yet, unknown route, no
    /// instances).
    pub(crate) fn route_for(&self, host: Option<&str>, path: &str) -> Result<Arc<Route>, Refusal> {
        let Some(host) = host else {
            return Err(Refusal {
                status: StatusCode::BAD_REQUEST,
                cause: cause::BAD_REQUEST,
                message: "Request has no Host header.".into(),
            });
        };
        let Some(table) = self.shared.tables.current() else {
            return Err(Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                cause: cause::TABLE_LOADING,
                message: "The router is loading its route table; try again in a moment.".into(),
            });
        };
        let Some(route) = table.lookup(host, path).cloned() else {
            let shown = crate::table::normalize_host(host).to_ascii_lowercase();
            return Err(Refusal {
                status: StatusCode::NOT_FOUND,
                cause: cause::UNKNOWN_ROUTE,
                message: format!("Requested route ('{shown}') does not exist."),
            });
        };
        if route.backends.is_empty() {
            return Err(Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                cause: cause::NO_INSTANCES,
                message: format!(
                    "Requested route ('{}{}') has no available instances of app '{}'.",
                    route.host, route.path, route.app
                ),
            });
        }
        Ok(route)
    }

    /// The backend for attempt `attempt`: the sticky instance first (if it is still a backend
    /// of this route and has not failed), else the balancer's pick among untried instances that
    /// have not failed recently, else any untried one.
    pub(crate) fn pick_backend(
        &self,
        route: &Route,
        sticky: Option<&str>,
        attempt: usize,
        tried: &[usize],
    ) -> Option<usize> {
        let now = Instant::now();
        sticky
            .filter(|_| attempt == 0)
            .and_then(|id| route.find_instance(id))
            .filter(|&i| !self.is_failed(&route.backends[i], now))
            .or_else(|| route.pick(|i, b| !tried.contains(&i) && !self.is_failed(b, now)))
            // Every untried instance failed recently: trying one beats refusing outright.
            .or_else(|| route.pick(|i, _| !tried.contains(&i)))
    }

    /// A connection to `backend` could not be opened: skip it for a while, count a retry if
    /// another attempt follows.
    pub(crate) fn connect_failed(
        &self,
        route: &Route,
        backend: &pier_api::Backend,
        error: &dyn fmt::Display,
        retrying: bool,
    ) {
        tracing::warn!(app = %route.app, instance = backend.index, addr = %backend.addr,
            error = %error, "instance refused the connection; skipping it for a while");
        self.mark_failed(backend);
        if retrying {
            self.opts.metrics.record_retry();
        }
    }

    /// The request may have reached `backend` and it failed to answer: logged, and the answer
    /// (502: a request that may have reached an app is never replayed).
    pub(crate) fn instance_failed(
        &self,
        route: &Route,
        backend: &pier_api::Backend,
        error: &dyn fmt::Display,
        log: &RequestLog,
    ) -> Refusal {
        tracing::warn!(app = %route.app, instance = backend.index, addr = %backend.addr,
            error = %error, elapsed_ms = log.elapsed().as_millis() as u64,
            "request to instance failed");
        Refusal {
            status: StatusCode::BAD_GATEWAY,
            cause: cause::BACKEND_ERROR,
            message: "The app's instance failed to answer the request.".into(),
        }
    }

    /// `backend` did not answer within the upstream timeout or the request's maximum time:
    /// logged, and the answer (504).
    pub(crate) fn instance_timed_out(&self, route: &Route, backend: &pier_api::Backend) -> Refusal {
        tracing::warn!(app = %route.app, instance = backend.index, addr = %backend.addr,
            timeout_ms = self.opts.upstream_timeout.as_millis() as u64,
            max_request_ms = self.opts.max_request_time.as_millis() as u64,
            "instance did not answer in time");
        Refusal {
            status: StatusCode::GATEWAY_TIMEOUT,
            cause: cause::UPSTREAM_TIMEOUT,
            message: "The app's instance did not answer in time.".into(),
        }
    }

    fn mark_failed(&self, b: &pier_api::Backend) {
        let now = Instant::now();
        let mut failed = self.shared.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed.retain(|_, (_, until)| *until > now);
        failed.insert(
            b.addr,
            (b.instance_id.clone(), now + self.opts.failed_backend_ttl),
        );
        self.shared
            .failed_count
            .store(failed.len() as u64, Ordering::Relaxed);
    }
}

/// A router-generated response: status, cause header, plain-text body.
pub fn error_response(
    status: StatusCode,
    cause: &'static str,
    message: String,
) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(message + "\n"))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(ROUTER_ERROR_HEADER, HeaderValue::from_static(cause));
    resp
}

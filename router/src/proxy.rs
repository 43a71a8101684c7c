//! The proxy: one request in, one response out, bodies streamed both ways.
//!
//! ```text
//! client ─▶ resolve host ─▶ table lookup ─▶ pick backend ─▶ pooled client ─▶ instance
//!           (Host or :authority)  │              │  ▲                │
//!                                 │              │  └── connect failed, body untouched:
//!                                 │              │      mark instance failed 30 s, next one
//!                                 ▼              ▼      (at most `max_attempts`, ≤ instances)
//!                  404 unknown_route    503 no_instances / table_loading
//! ```
//!
//! Invariants:
//! - Bodies are never buffered: the client's body is handed to the instance's connection as a
//!   stream, and the instance's body back to the client the same way.
//! - A request is only retried when none of its bytes can have reached an instance: the pooled
//!   client reports a connect error *and* the request body was never polled. The body sits in a
//!   shared slot that the first poll empties, so a second attempt is impossible once it started.
//! - Every response the router makes itself carries [`pier_api::ROUTER_ERROR_HEADER`] naming the
//!   cause, a plain-text body, and the request id.
//! - Before the first table arrives, every request gets 503 `table_loading`, never 404.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use pier_api::{RouteTable, ROUTER_ERROR_HEADER};
use tokio::sync::watch;

use crate::headers::{
    self, forwarded_for_from, request_id_from, sticky_cookie, sticky_instance_from, Forwarded,
    RequestField, Sent,
};
use crate::metrics::Metrics;
use crate::table::{InFlight, Route, Table};
use crate::upstream::{Lease, Pool};

/// Boxed error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of every response the proxy returns.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
/// The table as the controller publishes it: `None` until the first table is known.
pub type TableReceiver = watch::Receiver<Option<Arc<RouteTable>>>;

pub use crate::headers::X_VCAP_REQUEST_ID;

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
}

/// One finished request, as handed to an [`AccessLog`].
#[derive(Debug, Clone)]
pub struct AccessLogEntry {
    /// When the router received the request.
    pub started_at: SystemTime,
    /// The app's name and guid; `None` when no route matched.
    pub app: Option<String>,
    pub app_guid: Option<String>,
    /// The instance that answered (the last one tried); `None` when none was reached.
    pub instance_index: Option<u32>,
    pub instance_id: Option<String>,
    pub backend_addr: Option<SocketAddr>,
    pub host: String,
    pub method: String,
    /// Path and query as the client sent them.
    pub path: String,
    pub status: u16,
    /// Request body bytes read from the client.
    pub bytes_received: u64,
    /// Response body bytes sent to the client.
    pub bytes_sent: u64,
    /// From receiving the request until the response body ended (or was abandoned).
    pub duration: Duration,
    pub client_addr: SocketAddr,
    /// The `X-Forwarded-For` value sent to the instance.
    pub x_forwarded_for: String,
    pub request_id: String,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    /// Set when the router generated the response itself.
    pub router_error: Option<&'static str>,
}

impl AccessLogEntry {
    /// A gorouter-style access log line, as Cloud Foundry shows under the `RTR` source.
    pub fn to_rtr_line(&self) -> String {
        let q = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
        format!(
            "{host} - \"{method} {path}\" {status} {recv} {sent} \"{referer}\" \"{ua}\" \"{client}\" \"{backend}\" \
             x_forwarded_for:\"{xff}\" vcap_request_id:\"{rid}\" response_time:{secs:.6} app_id:\"{app}\" \
             app_index:\"{index}\"{err}",
            host = self.host,
            method = self.method,
            path = self.path,
            status = self.status,
            recv = self.bytes_received,
            sent = self.bytes_sent,
            referer = q(&self.referer),
            ua = q(&self.user_agent),
            client = self.client_addr,
            backend = self
                .backend_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            xff = self.x_forwarded_for,
            rid = self.request_id,
            secs = self.duration.as_secs_f64(),
            app = q(&self.app_guid),
            index = self
                .instance_index
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into()),
            err = self
                .router_error
                .map(|c| format!(" x_pier_router_error:\"{c}\""))
                .unwrap_or_default(),
        )
    }
}

/// Receives one call per finished request. Calls happen on the proxy's tasks: return quickly
/// (hand the entry to a channel if the work is slow).
pub trait AccessLog: Send + Sync + 'static {
    fn log(&self, entry: AccessLogEntry);
}

impl<F: Fn(AccessLogEntry) + Send + Sync + 'static> AccessLog for F {
    fn log(&self, entry: AccessLogEntry) {
        self(entry)
    }
}

/// Everything tunable about the proxy and its listener. `Default` gives gorouter-like values.
#[derive(Clone)]
pub struct ProxyOptions {
    /// Time allowed to open a TCP connection to an instance (a timeout counts as a connect
    /// failure and is retried).
    pub connect_timeout: Duration,
    /// Time allowed for an instance to send response headers after the request started; past
    /// it the client gets 504.
    pub upstream_timeout: Duration,
    /// Longest a request may take from arrival until its response body ends (gorouter's request
    /// timeout). A request still waiting for the instance's headers then gets 504; a response
    /// already streaming is cut off. Upgraded (WebSocket) connections are not limited by it.
    pub max_request_time: Duration,
    /// Attempts per request, counting the first (never more than the route has instances).
    pub max_attempts: usize,
    /// How long an instance that refused a connection is skipped.
    pub failed_backend_ttl: Duration,
    /// Idle keep-alive connections kept per instance.
    pub pool_max_idle_per_host: usize,
    /// How long an idle pooled connection to an instance is kept.
    pub pool_idle_timeout: Duration,
    /// Time a client has to send a request's headers (against slowloris).
    pub header_read_timeout: Duration,
    /// Largest request head accepted (request line plus headers); bigger gets 431.
    pub max_header_bytes: usize,
    /// Client connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
    /// Accept HTTP/2 (h2c, prior knowledge) from clients besides HTTP/1.
    pub http2: bool,
    /// Called once per finished request.
    pub access_log: Option<Arc<dyn AccessLog>>,
    /// Where counters go; clone the `Arc` before handing the options over to read them.
    pub metrics: Arc<Metrics>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(900),
            max_request_time: Duration::from_secs(900),
            max_attempts: 3,
            failed_backend_ttl: Duration::from_secs(30),
            pool_max_idle_per_host: 100,
            pool_idle_timeout: Duration::from_secs(90),
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(20),
            http2: true,
            access_log: None,
            metrics: Arc::new(Metrics::default()),
        }
    }
}

impl fmt::Debug for ProxyOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("upstream_timeout", &self.upstream_timeout)
            .field("max_request_time", &self.max_request_time)
            .field("max_attempts", &self.max_attempts)
            .field("failed_backend_ttl", &self.failed_backend_ttl)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("max_connections", &self.max_connections)
            .field("drain_timeout", &self.drain_timeout)
            .field("http2", &self.http2)
            .field("access_log", &self.access_log.is_some())
            .finish()
    }
}

/// Builds a [`Table`] once per published [`RouteTable`], on the first request that sees it, so
/// a table sent on the watch channel applies to the very next request.
struct TableCache {
    rx: TableReceiver,
    built: RwLock<Option<(Arc<RouteTable>, Arc<Table>)>>,
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
        let table = Arc::new(Table::new(&src));
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
}

impl Shared {
    pub(crate) fn new(tables: TableReceiver) -> Arc<Self> {
        Arc::new(Shared {
            tables: TableCache {
                rx: tables,
                built: RwLock::new(None),
            },
            failed: Mutex::new(HashMap::new()),
            failed_count: AtomicU64::new(0),
        })
    }
}

/// The proxy service shared by every connection of one runtime. Its client's pooled
/// connections are driven by tasks on the runtime that opened them, so each thread of
/// [`crate::serve_threads`] has its own `Proxy` over one [`Shared`].
pub(crate) struct Proxy {
    pool: Arc<Pool>,
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
        let pool = Pool::new(
            opts.connect_timeout,
            opts.pool_idle_timeout,
            opts.pool_max_idle_per_host,
        );
        let h1_pool = crate::h1::Pool::new(opts.pool_idle_timeout, opts.pool_max_idle_per_host);
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

    /// Serves one request. Never fails: every error becomes a response.
    pub(crate) async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        client_addr: SocketAddr,
        https: bool,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started) + self.opts.max_request_time;
        let request_id = request_id(req.headers());
        let host = request_host(&req);
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut log = RequestLog::new(
            &self,
            req.method().as_str(),
            path_and_query,
            (
                req.headers()
                    .get(header::USER_AGENT)
                    .map(HeaderValue::as_bytes),
                req.headers()
                    .get(header::REFERER)
                    .map(HeaderValue::as_bytes),
            ),
            host.as_deref(),
            client_addr,
            request_id.clone(),
        );
        let route = match self.route_for(host.as_deref(), req.uri().path()) {
            Ok(route) => route,
            Err(r) => return Ok(log.router_error(r.status, r.cause, r.message)),
        };
        let host = host.unwrap_or_default();
        log.set_route(&route);

        // An HTTP/1 upgrade (WebSocket): keep Connection/Upgrade for the instance, and splice the
        // two connections together once it answers 101.
        let upgrade = upgrade_protocol(&req).map(|proto| (proto, hyper::upgrade::on(&mut req)));

        let (parts, body) = req.into_parts();
        let sticky = sticky_instance(&parts.headers);
        let xff = forwarded_for(&parts.headers, client_addr);
        log.set_xff(&xff);
        let mut headers = parts.headers;
        upstream_headers(
            &mut headers,
            &Forwarded {
                host: &host,
                xff: &xff,
                https,
                request_id: &request_id,
                app_guid: route.app_guid_header(),
                upgrade: upgrade.as_ref().map(|(p, _)| p.as_bytes()),
            },
        );
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));

        let slot = BodySlot::new(body);
        log.received = Some(Arc::clone(&slot.received));
        let attempts = self.opts.max_attempts.clamp(1, route.backends.len());
        let mut tried: Vec<usize> = Vec::with_capacity(attempts);
        let mut last_error: Option<crate::upstream::Error> = None;
        for attempt in 0..attempts {
            let choice = self.pick_backend(&route, sticky.as_deref(), attempt, &tried);
            let Some(i) = choice else { break };
            tried.push(i);
            let backend = &route.backends[i];
            log.set_backend(backend);

            // Only a connect failure leads to another attempt: the last one can have the
            // headers themselves instead of a copy.
            let mut up_headers = if attempt + 1 < attempts {
                headers.clone()
            } else {
                std::mem::take(&mut headers)
            };
            headers::instance_fields(backend.index, route.instance_id_header(i), |name, value| {
                insert(&mut up_headers, name, value)
            });
            let mut up = Request::new(slot.body());
            *up.method_mut() = parts.method.clone();
            // Origin-form: the instance learns the host from the Host header.
            *up.uri_mut() = Uri::from(path_and_query.clone());
            *up.version_mut() = Version::HTTP_11;
            *up.headers_mut() = up_headers;

            log.in_flight = Some(route.start_request(i));
            let sent = Instant::now();
            // One timer for both limits: whichever comes first.
            let wait_until =
                (tokio::time::Instant::from_std(sent) + self.opts.upstream_timeout).min(deadline);
            let result =
                tokio::time::timeout_at(wait_until, self.pool.send(backend.addr, up)).await;
            match result {
                Ok(Ok((resp, lease))) => {
                    self.opts.metrics.record_upstream_latency(sent.elapsed());
                    return Ok(self.respond(resp, lease, upgrade, backend, deadline, log));
                }
                Ok(Err(e)) if e.is_connect() && !slot.started() => {
                    self.connect_failed(&route, backend, &error_chain(&e), attempt + 1 < attempts);
                    last_error = Some(e);
                }
                Ok(Err(e)) => {
                    tracing::warn!(app = %route.app, instance = backend.index, addr = %backend.addr,
                        error = %error_chain(&e), elapsed_ms = started.elapsed().as_millis() as u64,
                        "request to instance failed");
                    return Ok(log.router_error(
                        StatusCode::BAD_GATEWAY,
                        cause::BACKEND_ERROR,
                        "The app's instance failed to answer the request.".into(),
                    ));
                }
                Err(_) => {
                    tracing::warn!(app = %route.app, instance = backend.index, addr = %backend.addr,
                        timeout_ms = self.opts.upstream_timeout.as_millis() as u64,
                        max_request_ms = self.opts.max_request_time.as_millis() as u64,
                        "instance did not answer in time");
                    return Ok(log.router_error(
                        StatusCode::GATEWAY_TIMEOUT,
                        cause::UPSTREAM_TIMEOUT,
                        "The app's instance did not answer in time.".into(),
                    ));
                }
            }
        }
        tracing::warn!(app = %route.app, attempts = tried.len(),
            error = %last_error.as_ref().map(|e| error_chain(e as &dyn std::error::Error)).unwrap_or_default(),
            "no instance accepted a connection");
        Ok(log.router_error(
            StatusCode::BAD_GATEWAY,
            cause::BACKEND_ERROR,
            "No instance of the app accepted a connection.".into(),
        ))
    }

    fn respond(
        &self,
        mut resp: Response<Incoming>,
        lease: Lease,
        upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
        backend: &pier_api::Backend,
        deadline: tokio::time::Instant,
        mut log: RequestLog,
    ) -> Response<ProxyBody> {
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upgrade_requested = upgrade.is_some();
        // An upgraded connection belongs to the tunnel now; otherwise it is reusable once the
        // body has ended.
        let mut lease = (!switching).then_some(lease);
        if resp.body().is_end_stream() {
            if let Some(l) = lease.take() {
                l.release();
            }
        }
        match upgrade {
            Some((_, client_side)) if switching => {
                let backend_side = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    match tokio::try_join!(client_side, backend_side) {
                        Ok((c, b)) => {
                            let mut c = TokioIo::new(c);
                            let mut b = TokioIo::new(b);
                            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut b).await {
                                tracing::debug!(error = %e, "upgraded connection ended");
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                    }
                });
            }
            _ => {}
        }
        let tunnel = switching && upgrade_requested;
        let (mut parts, body) = resp.into_parts();
        response_headers(
            &mut parts.headers,
            tunnel,
            &log.request_id,
            &backend.instance_id,
        );
        log.status = parts.status.as_u16();
        let body = LoggedBody {
            inner: body.map_err(BoxError::from).boxed_unsync(),
            log: Some(log),
            deadline: Some(deadline),
            timer: None,
            lease,
        };
        Response::from_parts(parts, body.boxed_unsync())
    }
}

/// Per-request accounting, finished (logged and counted) when the response body is done or
/// dropped.
pub(crate) struct RequestLog {
    metrics: Arc<Metrics>,
    sink: Option<Arc<dyn AccessLog>>,
    started: Instant,
    app: Option<Arc<Route>>,
    pub(crate) status: u16,
    pub(crate) bytes_sent: u64,
    pub(crate) received: Option<Arc<AtomicU64>>,
    pub(crate) request_id: HeaderValue,
    /// Holds the backend's in-flight count (least-connections) until the response ends.
    pub(crate) in_flight: Option<InFlight>,
    entry: Option<Box<AccessLogEntry>>,
    finished: bool,
}

impl RequestLog {
    pub(crate) fn new(
        proxy: &Proxy,
        method: &str,
        path_and_query: &str,
        user_agent_and_referer: (Option<&[u8]>, Option<&[u8]>),
        host: Option<&str>,
        client_addr: SocketAddr,
        request_id: HeaderValue,
    ) -> Self {
        let sink = proxy.opts.access_log.clone();
        let entry = sink.as_ref().map(|_| {
            let text = |v: Option<&[u8]>| v.map(|b| String::from_utf8_lossy(b).into_owned());
            let (user_agent, referer) = user_agent_and_referer;
            Box::new(AccessLogEntry {
                started_at: SystemTime::now(),
                app: None,
                app_guid: None,
                instance_index: None,
                instance_id: None,
                backend_addr: None,
                host: host.unwrap_or_default().to_string(),
                method: method.to_string(),
                path: path_and_query.to_string(),
                status: 0,
                bytes_received: 0,
                bytes_sent: 0,
                duration: Duration::ZERO,
                client_addr,
                x_forwarded_for: String::new(),
                request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
                user_agent: text(user_agent),
                referer: text(referer),
                router_error: None,
            })
        });
        RequestLog {
            metrics: Arc::clone(&proxy.opts.metrics),
            sink,
            started: Instant::now(),
            app: None,
            status: 0,
            bytes_sent: 0,
            received: None,
            request_id,
            in_flight: None,
            entry,
            finished: false,
        }
    }

    pub(crate) fn set_route(&mut self, route: &Arc<Route>) {
        if let Some(e) = &mut self.entry {
            e.app = Some(route.app.clone());
            e.app_guid = Some(route.app_guid.clone());
        }
        self.app = Some(Arc::clone(route));
    }

    pub(crate) fn set_xff(&mut self, xff: &str) {
        if let Some(e) = &mut self.entry {
            e.x_forwarded_for = xff.to_string();
        }
    }

    pub(crate) fn set_backend(&mut self, b: &pier_api::Backend) {
        if let Some(e) = &mut self.entry {
            e.instance_index = Some(b.index);
            e.instance_id = Some(b.instance_id.clone());
            e.backend_addr = Some(b.addr);
        }
    }

    /// Time since the request arrived.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records that the router answered `status` itself, for `cause`.
    pub(crate) fn refused(&mut self, status: StatusCode, cause: &'static str) {
        self.metrics.record_router_error(cause);
        self.status = status.as_u16();
        if let Some(e) = &mut self.entry {
            e.router_error = Some(cause);
        }
    }

    /// A response body cut off at the maximum request time.
    pub(crate) fn timed_out(&mut self) {
        self.metrics.record_router_error(cause::REQUEST_TIMEOUT);
        if let Some(e) = &mut self.entry {
            e.router_error = Some(cause::REQUEST_TIMEOUT);
        }
        tracing::warn!(app = %self.app.as_ref().map(|r| r.app.as_str()).unwrap_or(""),
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "response cut off: the request took longer than the maximum request time");
    }

    fn router_error(
        mut self,
        status: StatusCode,
        cause: &'static str,
        message: String,
    ) -> Response<ProxyBody> {
        self.refused(status, cause);
        let mut resp = error_response(status, cause, message);
        resp.headers_mut()
            .insert(X_VCAP_REQUEST_ID, self.request_id.clone());
        let (parts, body) = resp.into_parts();
        Response::from_parts(
            parts,
            LoggedBody {
                inner: body,
                log: Some(self),
                deadline: None,
                timer: None,
                lease: None,
            }
            .boxed_unsync(),
        )
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.finish();
    }
}

impl RequestLog {
    /// Counts the request and hands its access log entry over (once; dropping does it too).
    /// Called before the last write of a response, so the figures are there by the time the
    /// client has its answer.
    pub(crate) fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let app = self.app.as_ref().map(|r| r.app.as_str()).unwrap_or("");
        self.metrics.record_request(app, self.status);
        if let (Some(sink), Some(mut entry)) = (self.sink.take(), self.entry.take()) {
            entry.status = self.status;
            entry.bytes_sent = self.bytes_sent;
            entry.bytes_received = self
                .received
                .as_ref()
                .map(|r| r.load(Ordering::Relaxed))
                .unwrap_or(0);
            entry.duration = self.started.elapsed();
            sink.log(*entry);
        }
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

pin_project_lite::pin_project! {
    /// Counts response bytes, finishing the log when dropped, and ends the response with an
    /// error (the client sees the connection cut) once the request's deadline has passed.
    struct LoggedBody {
        #[pin]
        inner: ProxyBody,
        log: Option<RequestLog>,
        deadline: Option<tokio::time::Instant>,
        // Armed only when the body first has to wait, so a response that is already complete
        // (the common small one) never touches the timer wheel.
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        // The instance connection this body comes from, released to the pool when it ends;
        // dropped (closing the connection) if the body is abandoned or fails.
        lease: Option<Lease>,
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(timer) = this.timer.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err(request_timed_out(this.log))));
            }
        }
        let res = this.inner.as_mut().poll_frame(cx);
        if res.is_pending() && this.timer.is_none() {
            if let Some(deadline) = *this.deadline {
                let mut timer = Box::pin(tokio::time::sleep_until(deadline));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(request_timed_out(this.log))));
                }
                *this.timer = Some(timer);
            }
        }
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(log)) = (frame.data_ref(), this.log.as_mut()) {
                    log.bytes_sent += data.len() as u64;
                }
                if this.lease.is_some() && this.inner.is_end_stream() {
                    if let Some(l) = this.lease.take() {
                        l.release();
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(l) = this.lease.take() {
                    l.release();
                }
            }
            Poll::Ready(Some(Err(_))) => *this.lease = None,
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn request_timed_out(log: &mut Option<RequestLog>) -> BoxError {
    if let Some(log) = log {
        log.timed_out();
    }
    "the request took longer than the router's maximum request time".into()
}

/// The client's request body, waiting for whichever attempt first polls it.
struct BodySlot {
    slot: Arc<Mutex<Option<Incoming>>>,
    received: Arc<AtomicU64>,
}

impl BodySlot {
    fn new(body: Incoming) -> Self {
        BodySlot {
            slot: Arc::new(Mutex::new(Some(body))),
            received: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A body for one attempt; only the first attempt that polls gets the client's bytes.
    fn body(&self) -> SlotBody {
        SlotBody {
            state: SlotState::Waiting(Arc::clone(&self.slot)),
            received: Arc::clone(&self.received),
        }
    }

    /// Whether an attempt has started reading the body (so bytes may have reached an instance).
    fn started(&self) -> bool {
        self.slot.lock().map(|s| s.is_none()).unwrap_or(true)
    }
}

enum SlotState {
    Waiting(Arc<Mutex<Option<Incoming>>>),
    Taken(Incoming),
    Gone,
}

/// The upstream request body: the client's [`Incoming`], taken from the slot on first poll.
pub(crate) struct SlotBody {
    state: SlotState,
    received: Arc<AtomicU64>,
}

impl SlotBody {
    fn with_inner<T>(&self, f: impl FnOnce(&Incoming) -> T, default: T) -> T {
        match &self.state {
            SlotState::Taken(b) => f(b),
            SlotState::Waiting(slot) => match slot.lock() {
                Ok(g) => g.as_ref().map(f).unwrap_or(default),
                Err(_) => default,
            },
            SlotState::Gone => default,
        }
    }
}

impl Body for SlotBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let SlotState::Waiting(slot) = &self.state {
            let taken = slot.lock().ok().and_then(|mut g| g.take());
            self.state = match taken {
                Some(b) => SlotState::Taken(b),
                None => SlotState::Gone,
            };
        }
        match &mut self.state {
            SlotState::Taken(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        self.received.fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            _ => Poll::Ready(Some(Err(
                "request body was already sent to another instance".into(),
            ))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.with_inner(Body::is_end_stream, false)
    }

    fn size_hint(&self) -> SizeHint {
        self.with_inner(Body::size_hint, SizeHint::default())
    }
}

/// The host the client asked for: the Host header, else the URI's authority (HTTP/2).
fn request_host<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()))
}

/// The incoming request id if it is sane, else a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    request_id_from(headers.get(&X_VCAP_REQUEST_ID).map(HeaderValue::as_bytes))
}

/// The X-Forwarded-For value to send: the incoming one(s) with the client's address appended.
fn forwarded_for(headers: &HeaderMap, client: SocketAddr) -> String {
    forwarded_for_from(
        headers
            .get_all(headers::Set::ForwardedFor.name())
            .iter()
            .map(HeaderValue::as_bytes),
        client,
    )
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers::has_token(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
        token.as_bytes(),
    )
}

/// The protocol an HTTP/1.1 client asks to upgrade to, if any.
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || !connection_has(req.headers(), "upgrade") {
        return None;
    }
    if req.method() == Method::CONNECT {
        return None;
    }
    req.headers().get(header::UPGRADE).cloned()
}

/// The request headers an instance gets from an HTTP/2 client: the policy of
/// [`crate::headers`] applied to hyper's map (the HTTP/1 engine applies it to raw fields in
/// `h1::fields`). The per-instance headers are added per attempt.
fn upstream_headers(headers: &mut HeaderMap, fwd: &Forwarded<'_>) {
    strip_hop_by_hop(headers);
    let mut sent = Sent::default();
    let mut dropped = Vec::new();
    for name in headers.keys() {
        match headers::request_field(name.as_str().as_bytes()) {
            RequestField::Drop => dropped.push(name.clone()),
            RequestField::Settles(s) => sent.mark(s),
            RequestField::Keep => {}
        }
    }
    for name in dropped {
        headers.remove(name);
    }
    fwd.each(sent, |name, value| insert(headers, name, value));
}

/// Sets `name` (a lowercase constant of [`crate::headers`]) to `value`, replacing what was there.
fn insert(headers: &mut HeaderMap, name: &'static str, value: &[u8]) {
    if let Ok(v) = HeaderValue::from_bytes(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// The response headers an HTTP/2 client gets: the policy of [`crate::headers`] applied to
/// hyper's map. `tunnel`: a 101 to an upgrade, which keeps the hop-by-hop headers.
fn response_headers(
    headers: &mut HeaderMap,
    tunnel: bool,
    request_id: &HeaderValue,
    instance_id: &str,
) {
    let named = if tunnel {
        Vec::new()
    } else {
        connection_named(headers)
    };
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            !headers::response_field_passes(k.as_str().as_bytes(), tunnel, |n| {
                named
                    .iter()
                    .any(|h| n.eq_ignore_ascii_case(h.as_str().as_bytes()))
            })
        })
        .cloned()
        .collect();
    for name in dropped {
        headers.remove(name);
    }
    headers.insert(X_VCAP_REQUEST_ID, request_id.clone());
    add_sticky_cookie(headers, instance_id);
}

/// The headers `Connection` names.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers::list_items(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    )
    .filter_map(|t| HeaderName::from_bytes(t).ok())
    .collect()
}

/// Removes hop-by-hop headers ([`crate::headers::HOP_BY_HOP`]), including every header named
/// in `Connection`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in connection_named(headers) {
        headers.remove(name);
    }
    for name in headers::HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The instance id of a `__VCAP_ID__` cookie on the request.
fn sticky_instance(headers: &HeaderMap) -> Option<String> {
    sticky_instance_from(
        headers
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes),
    )
}

/// When the app starts a session (`Set-Cookie: JSESSIONID=…`), pin the client to this instance
/// with a `__VCAP_ID__` cookie carrying the same attributes.
fn add_sticky_cookie(headers: &mut HeaderMap, instance_id: &str) {
    let set_cookies = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(HeaderValue::as_bytes);
    if let Some(cookie) = sticky_cookie(set_cookies, instance_id) {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            headers.append(header::SET_COOKIE, v);
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_those_named_in_connection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_for_appends() {
        const X_FORWARDED_FOR: &str = "x-forwarded-for";
        let client: SocketAddr = ([10, 0, 0, 9], 5000).into();
        let mut h = HeaderMap::new();
        assert_eq!(forwarded_for(&h, client), "10.0.0.9");
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        assert_eq!(forwarded_for(&h, client), "1.1.1.1, 2.2.2.2, 10.0.0.9");
    }

    #[test]
    fn request_id_kept_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(X_VCAP_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(X_VCAP_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }

    #[test]
    fn sticky_cookie_parsing_and_setting() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __VCAP_ID__=inst-7; JSESSIONID=x"),
        );
        assert_eq!(sticky_instance(&h).as_deref(), Some("inst-7"));

        let mut resp = HeaderMap::new();
        add_sticky_cookie(&mut resp, "inst-7");
        assert!(resp.get(header::SET_COOKIE).is_none());
        resp.insert(
            header::SET_COOKIE,
            HeaderValue::from_static("JSESSIONID=abc; Path=/app; Max-Age=60"),
        );
        add_sticky_cookie(&mut resp, "inst-7");
        let all: Vec<_> = resp.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1], "__VCAP_ID__=inst-7; Path=/app; Max-Age=60");
    }
}

/// What the HTTP/2 path sends, for tests that hold it against the HTTP/1 engine.
#[cfg(test)]
pub(crate) mod probe {
    use http::{HeaderMap, HeaderValue};

    use super::{insert, response_headers, upstream_headers};
    use crate::headers::{instance_fields, Forwarded};

    /// The `(lowercase name, value)` headers an instance gets for a request with `headers`,
    /// sent to instance `index`/`id`.
    pub(crate) fn request_fields(
        mut headers: HeaderMap,
        fwd: &Forwarded<'_>,
        index: u32,
        id: &HeaderValue,
    ) -> Vec<(String, String)> {
        upstream_headers(&mut headers, fwd);
        instance_fields(index, id, |name, value| insert(&mut headers, name, value));
        pairs(&headers)
    }

    /// The `(lowercase name, value)` headers a client gets for a response with `headers` from
    /// instance `instance_id`.
    pub(crate) fn response_fields(
        mut headers: HeaderMap,
        tunnel: bool,
        request_id: &HeaderValue,
        instance_id: &str,
    ) -> Vec<(String, String)> {
        response_headers(&mut headers, tunnel, request_id, instance_id);
        pairs(&headers)
    }

    fn pairs(headers: &HeaderMap) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(n, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (n.as_str().to_string(), v)
            })
            .collect()
    }
}

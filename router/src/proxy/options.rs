//! Everything tunable about the proxy and its listeners.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::AccessLog;
use crate::in_flight::InFlight;
use crate::metrics::Metrics;

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
    /// Time a client has to send a request's headers (against slowloris); also how long an
    /// idle client connection is kept: HTTP/1 between requests, HTTP/2 with no stream open
    /// (from the preface on, so a client that sends the preface and SETTINGS and then nothing
    /// is closed after it too).
    pub header_read_timeout: Duration,
    /// Longest a request body may go without a byte from the client (HTTP/1 and HTTP/2); the
    /// exchange is then aborted, with 408 if the instance had not answered yet.
    pub body_read_timeout: Duration,
    /// Connections to instances open at once, idle pooled ones included, over all threads and
    /// protocols. When a new one is needed at the limit, an idle one of the same thread is
    /// closed first; failing that the request waits for one up to the connect timeout (as
    /// Envoy queues pending requests at its circuit breaker), then gets 503 `upstream_limit`.
    pub max_upstream_connections: usize,
    /// Connections to instances one client connection may use at once. An HTTP/1 client uses
    /// one at a time; for HTTP/2 this is the concurrent stream limit the router announces
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`), since each stream uses its own.
    pub max_upstream_per_client: usize,
    /// Largest request head accepted (request line plus headers); bigger gets 431.
    pub max_header_bytes: usize,
    /// Client connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
    /// Accept HTTP/2 (h2c, prior knowledge) from clients besides HTTP/1.
    pub http2: bool,
    /// Client addresses (CIDR ranges) whose `X-Forwarded-Host`, `X-Forwarded-Proto` and
    /// `Forwarded` are passed on: proxies in front of the router. From anyone else the router
    /// sets the first two itself and leaves `Forwarded` out. Empty (the default): trust no one.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Called once per finished request.
    pub access_log: Option<Arc<dyn AccessLog>>,
    /// Where counters go; clone the `Arc` before handing the options over to read them.
    pub metrics: Arc<Metrics>,
    /// Requests in flight per instance. Clone it before handing the options over to read the
    /// counts or wait for an instance to be idle ([`InFlight::wait_idle`]), as a controller
    /// does before it stops an instance.
    pub in_flight: InFlight,
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
            body_read_timeout: Duration::from_secs(60),
            max_upstream_connections: 10_000,
            max_upstream_per_client: 128,
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(20),
            http2: true,
            trusted_proxies: Vec::new(),
            access_log: None,
            metrics: Arc::new(Metrics::default()),
            in_flight: InFlight::default(),
        }
    }
}

impl ProxyOptions {
    /// Whether a client at `ip` is a trusted proxy ([`ProxyOptions::trusted_proxies`]).
    #[inline]
    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        if self.trusted_proxies.is_empty() {
            return false;
        }
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
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
            .field("body_read_timeout", &self.body_read_timeout)
            .field("max_upstream_connections", &self.max_upstream_connections)
            .field("max_upstream_per_client", &self.max_upstream_per_client)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("max_connections", &self.max_connections)
            .field("drain_timeout", &self.drain_timeout)
            .field("http2", &self.http2)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("access_log", &self.access_log.is_some())
            .finish()
    }
}

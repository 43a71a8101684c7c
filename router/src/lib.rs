//! Pier's router: routes HTTP requests by Host and path prefix to app instances.
//!
//! ```text
//!                       watch::Sender<Option<Arc<RouteTable>>>
//!   controller ──────────────┬───────────────────────────────────────┐
//!   (in-process: send        │ standalone: sync::follow_controller   │
//!    tables directly)        │ long-polls GET /v1/routes             ▼
//!                            └──────────────────────────▶ watch::Receiver ──▶ serve()
//!                                                                          │
//!   client ──HTTP/1.x──▶ accept ─▶ h1 engine (one task: parse, route, both hops) ─▶ instance
//!          └─h2c / ALPN h2─▶ hyper ─▶ h2::handle ─▶ Table::lookup ─▶ pooled client ─▶ instance
//! ```
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | `server` | listeners, accept loops, TLS, the thread-per-core data plane, drain, `/metrics` |
//! | `h1/` | the HTTP/1 engine: serve loop and exchange, heads, fields, bodies, its pool |
//! | `h2/` | the HTTP/2 path on hyper: `handle`, its bodies, hyper's client pool |
//! | `proxy/` | shared by both engines: routing, retries, [`ProxyOptions`], the access log |
//! | `headers` | the one header policy: hop-by-hop, forwarded headers, sticky cookies |
//! | `table` | the route table: lookup and balancing, pure data |
//! | `in_flight` | requests in flight per instance ([`InFlight`]) |
//! | `sync` | following the controller's route long-poll |
//! | `metrics`, `idle` | counters; idle connection pools |
//!
//! # Entry points (what an embedding controller calls)
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use pier_router::{serve, ProxyOptions};
//! use tokio_util::sync::CancellationToken;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! println!("router on {}", listener.local_addr()?);
//! let (tables, rx) = tokio::sync::watch::channel(None); // None: answer 503 until loaded
//! let shutdown = CancellationToken::new();
//! let router = tokio::spawn(serve(listener, rx, ProxyOptions::default(), shutdown.clone()));
//! // whenever routes change:
//! tables.send_replace(Some(Arc::new(pier_api::RouteTable::default())));
//! // on exit: stop accepting, drain up to ProxyOptions::drain_timeout
//! shutdown.cancel();
//! # let _ = router.await;
//! # Ok(()) }
//! ```
//!
//! - [`serve`]`(listener, table_rx, opts, shutdown) -> io::Result<()>`: the data plane, on the
//!   caller's runtime.
//! - [`serve_threads`]`(bind_reuseport(addr, n)?, table_rx, opts, shutdown)`: the same on `n`
//!   single-threaded runtimes (the standalone binary's mode: nginx-like, faster per request).
//! - [`serve_tls`]`(listener, load_tls(cert, key)?, table_rx, opts, shutdown)`: [`serve`] behind
//!   TLS termination (rustls; one certificate, e.g. a wildcard for the default domain).
//! - [`follow_controller`]`(SyncOptions, table_tx, shutdown)`: standalone mode, feeds the channel
//!   from the controller's `GET /v1/routes` long-poll and keeps the last table when it is away.
//! - [`serve_admin`]`(listener, metrics, shutdown)`: `/metrics` in Prometheus text; share the
//!   `Arc<Metrics>` in [`ProxyOptions::metrics`].
//! - [`InFlight`]: requests in flight per instance; pass one in [`ProxyOptions::in_flight`] and
//!   keep a clone to read [`InFlight::count`] or await [`InFlight::wait_idle`] before stopping an
//!   instance the table no longer lists.
//! - [`AccessLog`]: optional per-request callback ([`AccessLogEntry::to_rtr_line`] formats a
//!   Cloud Foundry `RTR` line); set [`ProxyOptions::access_log`].
//!
//! # Behaviour
//! - Lookup: Host (lowercased, port stripped), then the longest path prefix on a segment boundary.
//! - Load balancing per route ([`pier_api::RouteEntry::balancing`]): round-robin from a random
//!   start (default), or least-connections (fewest requests in flight through this router).
//! - Errors the router makes carry `x-pier-router-error`: 404 `unknown_route`, 503
//!   `no_instances`, 503 `table_loading` (never 404 before the first table), 502 `backend_error`,
//!   504 `upstream_timeout`, 400 `bad_request`, 408 `body_timeout` (the request body stalled),
//!   503 `upstream_limit` (too many connections to instances open).
//! - The host routed by is an absolute-form target's authority, else Host (HTTP/2: Host, else
//!   `:authority`); the app gets it as Host, and X-Forwarded-Host/-Proto are the
//!   router's unless the client is in [`ProxyOptions::trusted_proxies`].
//! - Retries: only connect failures with the request body untouched, at most 3 attempts and never
//!   more than the route has instances; an instance that refused is skipped for 30 s.
//! - Sticky sessions: `JSESSIONID` from the app → `__VCAP_ID__` cookie naming the instance.
//!
//! # Never misrouting after a port is reused
//! A backend is an (address, instance id) pair. The router can only be wrong about an address
//! while it holds a stale table, so the invariant is split between the two sides:
//! - the controller holds a released host port back from reuse for longer than a router may hold a
//!   stale table without having talked to it (quarantine), and publishes a removal before the
//!   container is gone;
//! - the router publishes every change it learns at once (long-poll), sends `X-CF-InstanceID` on
//!   every request so an app or a check can verify it, and keys its failed-instance memory by
//!   instance id so a new instance on a reused port is not penalised for the old one.
//!
//! The full list of invariants on both sides, the hardening rules with their defaults, and
//! which malformed requests get 400 (`Content-Length` with `Transfer-Encoding` among them):
//! `docs/router.md`.

mod h1;
mod h2;
mod headers;
mod idle;
mod in_flight;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod sync;
pub mod table;

pub use in_flight::{InFlight, InFlightGuard};
pub use metrics::Metrics;
pub use proxy::{cause, AccessLog, AccessLogEntry, ProxyOptions, TableReceiver};
pub use server::{bind_reuseport, load_tls, serve, serve_admin, serve_threads, serve_tls};
pub use sync::{follow_controller, SyncOptions};
pub use table::{Balancing, Table};

/// SIGTERM or SIGINT, whichever comes first (its name), with both handlers registered before
/// this returns. Call it before announcing the process: a signal sent the moment the listening
/// line is printed then stops it cleanly instead of killing it (the default action), which it
/// did while the handler was registered by a task that had not run yet.
pub fn stop_signals() -> std::io::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// Raises this process's open-file soft limit (`RLIMIT_NOFILE`) to its hard limit, as nginx's
/// `worker_rlimit_nofile` would: every client and instance connection is a file, and the usual
/// soft limit of 1024 is far below `--max-connections`. Returns the soft limit before and
/// after; call it once at start and log the result.
pub fn raise_open_file_limit() -> std::io::Result<(u64, u64)> {
    let (before, _hard) = rlimit::Resource::NOFILE.get()?;
    let after = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok((before, after))
}

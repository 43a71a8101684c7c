//! The listeners: accept loop, per-connection HTTP/1.1 + h2c serving, graceful drain, and the
//! admin listener with `/metrics`.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::proxy::{Proxy, ProxyBody, ProxyOptions, TableReceiver};

/// Serves the proxy on `listener` until `shutdown` is cancelled, then stops accepting and lets
/// in-flight requests finish for up to [`ProxyOptions::drain_timeout`].
///
/// `table` carries the controller's route table; while it holds `None` every request gets 503
/// `table_loading`. A new value applies to the next request.
pub async fn serve(
    listener: TcpListener,
    table: TableReceiver,
    opts: ProxyOptions,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let proxy = Arc::new(Proxy::new(table, opts));
    let opts = proxy.options().clone();
    let metrics = Arc::clone(&opts.metrics);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(opts.header_read_timeout)
        .max_buf_size(opts.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(opts.max_header_bytes.min(u32::MAX as usize) as u32)
        .max_concurrent_streams(256);
    if !opts.http2 {
        builder = builder.http1_only();
    }
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "router accepting connections");

    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let proxy = Arc::clone(&proxy);
        let svc = service_fn(move |req: Request<Incoming>| Arc::clone(&proxy).handle(req, peer));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        let metrics = Arc::clone(&metrics);
        metrics.connection_opened();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
            metrics.connection_closed();
            drop(permit);
        });
    }

    drop(listener);
    tracing::info!(
        in_flight = graceful.count(),
        grace_ms = opts.drain_timeout.as_millis() as u64,
        "router stopped accepting; draining"
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("router drained"),
        _ = tokio::time::sleep(opts.drain_timeout) => {
            tracing::warn!("drain timeout passed; closing remaining connections");
        }
    }
    Ok(())
}

/// Serves `GET /metrics` (Prometheus text) and `GET /health` on `listener` until `shutdown`.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let metrics = Arc::clone(&metrics);
        let svc = service_fn(move |req: Request<Incoming>| {
            let metrics = Arc::clone(&metrics);
            async move { Ok::<_, Infallible>(admin(req, &metrics)) }
        });
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

fn admin(req: Request<Incoming>, metrics: &Metrics) -> Response<ProxyBody> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        "/health" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    resp
}

//! The listeners: accept loop, per-connection HTTP/1.1 + h2c serving, graceful drain, and the
//! admin listener with `/metrics`.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::h1;
use crate::metrics::Metrics;
use crate::proxy::{Proxy, ProxyBody, ProxyOptions, Shared, TableReceiver};

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
    let permits = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let proxy = Arc::new(Proxy::with_shared(
        Shared::new(table, opts.in_flight.clone(), opts.max_upstream_connections),
        opts,
    ));
    serve_with(listener, None, proxy, permits, shutdown).await
}

/// Like [`serve`], terminating TLS first (see [`load_tls`]). Clients get HTTP/2 or HTTP/1.1 by
/// ALPN and instances see `X-Forwarded-Proto: https`.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    table: TableReceiver,
    opts: ProxyOptions,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let proxy = Arc::new(Proxy::with_shared(
        Shared::new(table, opts.in_flight.clone(), opts.max_upstream_connections),
        opts,
    ));
    serve_with(
        listener,
        Some(TlsAcceptor::from(tls)),
        proxy,
        permits,
        shutdown,
    )
    .await
}

/// A TLS server configuration from a PEM certificate chain and its PEM private key (PKCS#8,
/// PKCS#1 or SEC1). One certificate serves every host name, so for the default domain give it a
/// wildcard (`*.apps.example.com`); clients check the name, the router does not.
pub fn load_tls(cert_file: &Path, key_file: &Path) -> io::Result<Arc<rustls::ServerConfig>> {
    let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} {}: {e}", path.display()),
        )
    };
    let certs = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| bad("cannot read the certificate file", cert_file, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("cannot parse the certificate file", cert_file, &e))?;
    if certs.is_empty() {
        return Err(bad(
            "no certificate in",
            cert_file,
            &"expected PEM `BEGIN CERTIFICATE` blocks",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| bad("cannot read a private key from", key_file, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            bad(
                "the certificate and key do not match or are unusable:",
                key_file,
                &e,
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Binds `addr` `threads` times with `SO_REUSEPORT` (port 0: the first socket picks the port and
/// the others join it), so the kernel spreads new connections over [`serve_threads`]' threads.
pub fn bind_reuseport(addr: SocketAddr, threads: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut addr = addr;
    let mut out = Vec::with_capacity(threads.max(1));
    for _ in 0..threads.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// The standalone router's data plane: one single-threaded runtime per listener (as from
/// [`bind_reuseport`]), like nginx's workers. Each thread owns its connections and its pool of
/// connections to instances, so a request never crosses threads; the table, its balancing state,
/// the failed-instance memory, the connection limit and the metrics are shared. Blocks until every
/// thread has drained after `shutdown`.
///
/// Measured against [`serve`] on tokio's work-stealing runtime, this took about a quarter off
/// the CPU time per proxied request (`bench/router.sh`).
///
/// With `tls`, thread `i` also serves `tls.0[i]` (bound the same way), terminating TLS with
/// `tls.1`.
pub fn serve_threads(
    listeners: Vec<std::net::TcpListener>,
    tls: Option<(Vec<std::net::TcpListener>, Arc<rustls::ServerConfig>)>,
    table: TableReceiver,
    opts: ProxyOptions,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let shared = Shared::new(table, opts.in_flight.clone(), opts.max_upstream_connections);
    let permits = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let mut threads = Vec::with_capacity(listeners.len());
    let (mut tls_listeners, acceptor) = match tls {
        Some((l, config)) => (l.into_iter(), Some(TlsAcceptor::from(config))),
        None => (Vec::new().into_iter(), None),
    };
    for (i, listener) in listeners.into_iter().enumerate() {
        let tls = tls_listeners.next().zip(acceptor.clone());
        let (shared, opts, permits, shutdown) = (
            Arc::clone(&shared),
            opts.clone(),
            Arc::clone(&permits),
            shutdown.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("pier-router-{i}"))
            .spawn(move || -> io::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    let proxy = Arc::new(Proxy::with_shared(shared, opts));
                    let plain = serve_with(
                        listener,
                        None,
                        Arc::clone(&proxy),
                        Arc::clone(&permits),
                        shutdown.clone(),
                    );
                    match tls {
                        Some((l, acceptor)) => {
                            let l = TcpListener::from_std(l)?;
                            let secure = serve_with(l, Some(acceptor), proxy, permits, shutdown);
                            let (a, b) = tokio::join!(plain, secure);
                            a.and(b)
                        }
                        None => plain.await,
                    }
                })
            })?;
        threads.push(thread);
    }
    let mut result = Ok(());
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // One thread failing takes the others down: a router on half its threads
                // would quietly serve some clients worse.
                shutdown.cancel();
                result = Err(e);
            }
            Err(_) => {
                shutdown.cancel();
                result = Err(io::Error::other("a router thread panicked"));
            }
        }
    }
    result
}

async fn serve_with(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    proxy: Arc<Proxy>,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let opts = proxy.options().clone();
    let metrics = Arc::clone(&opts.metrics);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    // Each stream uses its own connection to an instance, so the stream limit is the limit on
    // instance connections per client connection. Pings find dead peers with streams open;
    // an idle connection is closed by `serve_h2`'s own timer (a live client answers pings).
    h2.timer(TokioTimer::new())
        .max_header_list_size(opts.max_header_bytes.min(u32::MAX as usize) as u32)
        .max_concurrent_streams(opts.max_upstream_per_client.clamp(1, u32::MAX as usize) as u32)
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let h2 = Arc::new(h2);
    let tasks = TaskTracker::new();
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
        let (proxy, h2, tls, shutdown) = (
            Arc::clone(&proxy),
            Arc::clone(&h2),
            tls.clone(),
            shutdown.clone(),
        );
        let metrics = Arc::clone(&metrics);
        metrics.connection_opened();
        tasks.spawn(async move {
            serve_client(stream, peer, tls, proxy, h2, shutdown).await;
            metrics.connection_closed();
            drop(permit);
        });
    }

    drop(listener);
    tasks.close();
    tracing::info!(
        connections = tasks.len(),
        grace_ms = opts.drain_timeout.as_millis() as u64,
        "router stopped accepting; draining"
    );
    tokio::select! {
        _ = tasks.wait() => tracing::info!("router drained"),
        _ = tokio::time::sleep(opts.drain_timeout) => {
            tracing::warn!("drain timeout passed; closing remaining connections");
        }
    }
    Ok(())
}

/// One client connection: TLS handshake if any, then the HTTP/1 engine, or hyper's HTTP/2 for
/// ALPN `h2` and for the h2c preface.
async fn serve_client(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    proxy: Arc<Proxy>,
    h2: Arc<http2::Builder<TokioExecutor>>,
    shutdown: CancellationToken,
) {
    let http2 = proxy.options().http2;
    let read_buf = || BytesMut::with_capacity(8 * 1024);
    match tls {
        None => {
            let mut io = stream;
            match h1::serve(&proxy, &mut io, read_buf(), peer, false, &shutdown).await {
                Ok(h1::Ended::Http2(pre)) => {
                    let io = Prefixed::new(pre.freeze(), ClientIo::Plain(io));
                    serve_h2(&h2, io, proxy, peer, false, &shutdown).await;
                }
                Ok(h1::Ended::Closed) => {}
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error")
                }
            }
        }
        Some(acceptor) => {
            // The handshake is bounded like a request head.
            let limit = proxy.options().header_read_timeout;
            let mut io = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            if http2 && io.get_ref().1.alpn_protocol() == Some(b"h2") {
                let io = Prefixed::new(Bytes::new(), ClientIo::Tls(Box::new(io)));
                return serve_h2(&h2, io, proxy, peer, true, &shutdown).await;
            }
            match h1::serve(&proxy, &mut io, read_buf(), peer, true, &shutdown).await {
                Ok(h1::Ended::Http2(pre)) => {
                    let io = Prefixed::new(pre.freeze(), ClientIo::Tls(Box::new(io)));
                    serve_h2(&h2, io, proxy, peer, true, &shutdown).await;
                }
                Ok(h1::Ended::Closed) => {}
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error")
                }
            }
        }
    }
}

/// How often an HTTP/2 client connection that sent nothing is pinged.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// An HTTP/2 client connection through hyper and [`crate::h2::handle`]; on shutdown it is told to
/// go away (GOAWAY), and the streams in flight finish. With no stream open for the header read
/// timeout (from the preface on, so also before the first request) it is told to go away too,
/// and closed if it has not gone within that time again.
async fn serve_h2(
    builder: &http2::Builder<TokioExecutor>,
    io: Prefixed<ClientIo>,
    proxy: Arc<Proxy>,
    peer: SocketAddr,
    https: bool,
    shutdown: &CancellationToken,
) {
    let idle_after = proxy.options().header_read_timeout;
    let streams = Arc::new(Streams::default());
    let svc = {
        let streams = Arc::clone(&streams);
        service_fn(move |req: Request<Incoming>| {
            let open = Streams::open(&streams);
            let resp = crate::h2::handle(Arc::clone(&proxy), req, peer, https);
            async move {
                let resp = resp.await?;
                Ok::<_, Infallible>(resp.map(|body| {
                    StreamBody {
                        inner: body,
                        _open: open,
                    }
                    .boxed_unsync()
                }))
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        _ = streams.idle_for(idle_after) => {
            tracing::debug!(%peer, "HTTP/2 client connection idle; closing it");
            conn.as_mut().graceful_shutdown();
            // A client that never answers the GOAWAY's ping keeps hyper waiting: bounded too.
            match tokio::time::timeout(idle_after, conn).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP/2 client connection ended with an error");
    }
}

/// The streams open on one HTTP/2 client connection: from the request reaching the service
/// until its response body is done or dropped.
#[derive(Default)]
struct Streams {
    open: std::sync::atomic::AtomicUsize,
    /// Bumped whenever a stream opens, so a timer can tell the connection was used.
    opened: std::sync::atomic::AtomicU64,
    closed: tokio::sync::Notify,
}

/// One open stream; closes it when dropped.
struct OpenStream(Arc<Streams>);

impl Streams {
    fn open(this: &Arc<Self>) -> OpenStream {
        use std::sync::atomic::Ordering::SeqCst;
        this.open.fetch_add(1, SeqCst);
        this.opened.fetch_add(1, SeqCst);
        OpenStream(Arc::clone(this))
    }

    /// Returns once no stream has been open for `idle`.
    async fn idle_for(&self, idle: Duration) {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.open.load(SeqCst) > 0 {
                closed.await;
                continue;
            }
            let opened = self.opened.load(SeqCst);
            tokio::time::sleep(idle).await;
            if self.open.load(SeqCst) == 0 && self.opened.load(SeqCst) == opened {
                return;
            }
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        if self
            .0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.closed.notify_waiters();
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its stream counted open until it is done or dropped.
    struct StreamBody {
        #[pin]
        inner: ProxyBody,
        _open: OpenStream,
    }
}

impl hyper::body::Body for StreamBody {
    type Data = Bytes;
    type Error = crate::proxy::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A stream whose first bytes were already read: they are read again first.
struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    fn new(prefix: Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A client connection, plain or TLS: one type for hyper's connection either way.
enum ClientIo {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientIo::Plain(s) => s.is_write_vectored(),
            ClientIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
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

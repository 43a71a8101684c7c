//! Serving the API: our own accept loop over hyper, so that a client cannot hold the controller's
//! connections (and with them the API) by being slow.
//!
//! - At most `max_connections` at once: past it, new connections wait in the kernel's backlog
//!   until one closes (nothing is accepted that cannot be served).
//! - A request head must arrive within `header_timeout` (hyper's header read timeout), or the
//!   connection is closed: a half-sent head is not held open.
//! - A connection with no request or response in progress and no bytes moving for `idle_timeout`
//!   is closed. A response still streaming (a build's output, a log stream, a long-poll being
//!   held) counts as in progress, however quiet it is.
//! - On shutdown, connections finish what they are doing, up to [`DRAIN`].
//! - With TLS (`--tls-cert`/`--tls-key`), the handshake must finish within `header_timeout` too,
//!   or the connection is closed: a client that opens TCP and stalls the handshake is not held
//!   open either. The handshake holds a connection slot like any other connection.

use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long connections may finish their requests after shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// The API's connection limits, and its TLS when it has a certificate.
#[derive(Clone)]
pub struct ServeOptions {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Serve HTTPS only (None: plain HTTP).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("header_timeout", &self.header_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A TLS server configuration from a PEM certificate chain and its PEM private key (PKCS#8,
/// PKCS#1 or SEC1). Every error names the file at fault.
pub fn load_tls(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(e, cert_file, "certificate"))?;
    if certs.is_empty() {
        anyhow::bail!(
            "--tls-cert {}: no certificate in it (expected PEM `BEGIN CERTIFICATE` blocks)",
            cert_file.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| pem_error(e, key_file, "key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the TLS provider offers no protocol version")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            anyhow::anyhow!(
                "--tls-key {} does not fit --tls-cert {} or is unusable: {e}",
                key_file.display(),
                cert_file.display()
            )
        })?;
    // HTTP/1.1 only: the head and idle timeouts above are HTTP/1's.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn pem_error(e: rustls::pki_types::pem::Error, file: &Path, what: &str) -> anyhow::Error {
    use rustls::pki_types::pem::Error;
    let flag = if what == "key" {
        "--tls-key"
    } else {
        "--tls-cert"
    };
    let why = match e {
        Error::Io(e) => format!("cannot read it: {e}"),
        Error::NoItemsFound => "no PEM private key in it (expected `BEGIN PRIVATE KEY`, \
                                 `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY`)"
            .to_string(),
        e => format!("not a PEM {what} file: {e}"),
    };
    anyhow::anyhow!("{flag} {}: {why}", file.display())
}

/// Serves `app` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    opts: ServeOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let tasks = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (app, opts, shutdown) = (app.clone(), opts.clone(), shutdown.clone());
        tasks.spawn(async move {
            accepted(stream, app, opts, shutdown).await;
            drop(permit);
        });
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(DRAIN, tasks.wait()).await.is_err() {
        tracing::warn!("API connections still open after the drain; closing them");
    }
    Ok(())
}

/// What a connection is doing: requests whose response has not ended, and when bytes last moved.
struct Activity {
    started: Instant,
    /// Milliseconds after `started` of the last read or write.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    fn idle(&self, limit: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && self.idle_for() >= limit
    }
}

/// One accepted connection: the TLS handshake if there is TLS, then HTTP.
async fn accepted(
    stream: TcpStream,
    app: axum::Router,
    opts: ServeOptions,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let activity = Arc::new(Activity {
        started: Instant::now(),
        last_ms: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
    });
    let tracked = Tracked {
        inner: stream,
        activity: activity.clone(),
    };
    match opts.tls.clone() {
        None => connection(tracked, peer, activity, app, opts, shutdown).await,
        Some(acceptor) => {
            let handshake = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(opts.header_timeout, acceptor.accept(tracked)) => r,
            };
            match handshake {
                Ok(Ok(tls)) => connection(tls, peer, activity, app, opts, shutdown).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "API TLS handshake failed"),
                Err(_) => tracing::debug!("API TLS handshake timed out"),
            }
        }
    }
}

/// Handlers find the client's address as axum's `ConnectInfo<SocketAddr>` (the login limits
/// count failures per address).
async fn connection<I>(
    io: I,
    peer: Option<std::net::SocketAddr>,
    activity: Arc<Activity>,
    app: axum::Router,
    opts: ServeOptions,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let a = activity.clone();
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        use tower::ServiceExt as _;
        let a = a.clone();
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        let app = app.clone();
        let mut req = req.map(Body::new);
        if let Some(peer) = peer {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
        }
        async move {
            let resp = app.oneshot(req).await;
            // The request is in flight until its response body ends (or is dropped).
            let guard = InFlight(a);
            resp.map(|r| {
                r.map(|b| {
                    Body::new(GuardedBody {
                        inner: b,
                        _guard: guard,
                    })
                })
            })
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(opts.idle_timeout));
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "API connection ended");
                }
                return;
            }
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick(), if !closing => {
                if activity.idle(opts.idle_timeout) {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Counts one request as in flight until dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A response body that keeps its request in flight while it streams.
struct GuardedBody {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's socket, noting when bytes move.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn start(opts: ServeOptions) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/", get(|| async { "ok" }))
            // A response that stays quiet longer than the idle timeout, then ends.
            .route(
                "/slow",
                get(|| async {
                    let s = futures_util::stream::once(async {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        Ok::<_, std::convert::Infallible>(Bytes::from_static(b"late"))
                    });
                    Body::from_stream(s)
                }),
            );
        let sd = CancellationToken::new();
        tokio::spawn(serve(listener, app, opts, sd.clone()));
        (addr, sd)
    }

    /// True when the server closed the connection (EOF or reset) within `within`.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }

    const OPTS: ServeOptions = ServeOptions {
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        max_connections: 64,
        tls: None,
    };

    #[tokio::test]
    async fn half_sent_heads_are_closed_after_the_header_timeout() {
        let (addr, _sd) = start(OPTS).await;
        let mut conns = Vec::new();
        for _ in 0..20 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
            conns.push(s);
        }
        let started = Instant::now();
        for s in &mut conns {
            assert!(
                closed_within(s, Duration::from_secs(5)).await,
                "a half-sent head is closed"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn idle_keep_alive_connections_close_but_quiet_responses_do_not() {
        let (addr, _sd) = start(OPTS).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        assert!(
            closed_within(&mut s, Duration::from_secs(4)).await,
            "idle keep-alive closed"
        );
        // A response quiet for 3 s (longer than the idle timeout) is not cut.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(6);
        while !String::from_utf8_lossy(&got).contains("late") && Instant::now() < deadline {
            let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(
                n > 0,
                "closed before the response ended: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        assert!(String::from_utf8_lossy(&got).contains("late"));
    }

    /// A self-signed certificate for 127.0.0.1, written to `dir`: (cert file, key file, cert PEM).
    fn test_cert(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.cert.pem()).unwrap();
        std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
        (c, k, cert.cert.pem())
    }

    async fn tls_client(
        addr: std::net::SocketAddr,
        ca_pem: &str,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        connector.connect(name, tcp).await.unwrap()
    }

    #[tokio::test]
    async fn tls_serves_https_and_keeps_every_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, pem) = test_cert(dir.path());
        let opts = ServeOptions {
            tls: Some(load_tls(&cert, &key).unwrap().into()),
            ..OPTS
        };
        let (addr, _sd) = start(opts).await;

        // A request over TLS is served; the idle connection is then closed.
        let mut s = tls_client(addr, &pem).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let deadline = Instant::now() + Duration::from_secs(4);
        let closed = loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => break false,
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) => continue,
            }
        };
        assert!(closed, "an idle TLS connection is closed");

        // TCP opened, handshake never finished (nothing sent, or half a ClientHello): closed
        // after the head timeout, not held.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
            .await
            .unwrap();
        let started = Instant::now();
        assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
        assert!(closed_within(&mut half, Duration::from_secs(5)).await);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(3),
            "closed after {took:?}, the head timeout is 1 s"
        );

        // Plain HTTP to the TLS port gets no answer.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), plain.read_to_end(&mut got)).await;
        assert!(!String::from_utf8_lossy(&got).contains("200"));
    }

    #[tokio::test]
    async fn tls_handshakes_count_against_the_connection_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, pem) = test_cert(dir.path());
        let opts = ServeOptions {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            max_connections: 1,
            tls: Some(load_tls(&cert, &key).unwrap().into()),
        };
        let (addr, _sd) = start(opts).await;
        let stalled = TcpStream::connect(addr).await.unwrap();
        let pem2 = pem.clone();
        let mut waiting = tokio::spawn(async move { tls_client(addr, &pem2).await });
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut waiting)
                .await
                .is_err(),
            "a stalled handshake holds the only slot"
        );
        drop(stalled);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("served once the slot is free")
            .unwrap();
    }

    #[test]
    fn bad_certificate_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = test_cert(dir.path());
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let other_key = dir.path().join("other-key.pem");
        std::fs::write(&other_key, other.key_pair.serialize_pem()).unwrap();

        let err = |c: &Path, k: &Path| format!("{:#}", load_tls(c, k).unwrap_err());
        let e = err(&missing, &key);
        assert!(
            e.contains("--tls-cert") && e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );
        let e = err(&garbage, &key);
        assert!(
            e.contains("--tls-cert") && e.contains("garbage.pem") && e.contains("no certificate"),
            "{e}"
        );
        let e = err(&cert, &missing);
        assert!(e.contains("--tls-key") && e.contains("missing.pem"), "{e}");
        let e = err(&cert, &garbage);
        assert!(
            e.contains("--tls-key")
                && e.contains("garbage.pem")
                && e.contains("no PEM private key"),
            "{e}"
        );
        // The cert file given as the key: it holds no key.
        let e = err(&cert, &cert);
        assert!(e.contains("--tls-key") && e.contains("cert.pem"), "{e}");
        let e = err(&cert, &other_key);
        assert!(
            e.contains("does not fit") && e.contains("other-key.pem"),
            "{e}"
        );
        assert!(load_tls(&cert, &key).is_ok());
    }

    #[test]
    fn one_tls_flag_without_the_other_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = test_cert(dir.path());
        let mut config = crate::config::Config::for_tests(dir.path().join("data"));
        config.tls_cert = Some(cert.clone());
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains("--tls-cert needs --tls-key"), "{e}");
        config.tls_cert = None;
        config.tls_key = Some(key.clone());
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains("--tls-key needs --tls-cert"), "{e}");
        config.tls_cert = Some(dir.path().join("nope.pem"));
        let e = format!("{:#}", config.validate().unwrap_err());
        assert!(e.contains("nope.pem"), "{e}");
        config.tls_cert = Some(cert);
        config.validate().unwrap();
        assert_eq!(config.api_scheme(), "https");
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_for_a_free_one() {
        let opts = ServeOptions {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            max_connections: 2,
            tls: None,
        };
        let (addr, _sd) = start(opts).await;
        let a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        assert!(
            tokio::time::timeout(Duration::from_millis(500), c.read(&mut buf))
                .await
                .is_err(),
            "the third connection is not served while two are open"
        );
        drop(a);
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("served once one closed")
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
}

//! Connections to instances: HTTP/1.1 over TCP, kept alive and pooled per address.
//!
//! ```text
//! send(addr, req) ─▶ idle connection for addr? ──yes─▶ send on it ─┐
//!                        │ no (or it closed before the request was written: req comes back)
//!                        ▼                                          │
//!                    connect (timeout) ─▶ handshake ─▶ send ────────┤
//!                        │ refused / timed out                      ▼
//!                        ▼                               response; the connection goes back to
//!                  Error::Connect (retryable:            the pool when the caller says the
//!                  no byte was written)                  response body ended ([`Lease::release`])
//! ```
//!
//! Why not hyper-util's pooled client: that one spawns a task per request to notice when the
//! connection is free again and goes through a shared pool with futures per checkout. Here the
//! response body's wrapper knows exactly when the body ended, and a pool belongs to one runtime
//! (one per thread in [`crate::serve_threads`]), so its lock is never contended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::SlotBody;
use crate::idle::{IdlePool, UpstreamLimit};

/// Why a request did not get a response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// No connection could be opened: nothing was sent, so another instance may be tried.
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// At the limit on connections to instances, and none came free in time: nothing was sent.
    #[error("no connection to {addr}: the limit on connections to instances is reached")]
    Limit { addr: SocketAddr },
    /// The request may have reached the instance.
    #[error("request to {addr}: {source}")]
    Request {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

impl Error {
    /// Whether no byte of the request can have reached the instance.
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, Error::Connect { .. })
    }
}

pub(crate) struct Pool {
    idle: IdlePool<SendRequest<SlotBody>>,
    connect_timeout: Duration,
    limit: UpstreamLimit,
}

/// A connection in use by one request; [`Lease::release`] once its response body has ended.
pub(crate) struct Lease {
    pool: Arc<Pool>,
    addr: SocketAddr,
    sender: SendRequest<SlotBody>,
}

impl Lease {
    /// Puts the connection back for the next request to the same address.
    pub(crate) fn release(self) {
        self.pool.put(self.addr, self.sender);
    }
}

impl Pool {
    pub(crate) fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle_per_addr: usize,
        limit: UpstreamLimit,
    ) -> Arc<Self> {
        Arc::new(Pool {
            idle: IdlePool::new(idle_timeout, max_idle_per_addr),
            connect_timeout,
            limit,
        })
    }

    /// Sends `req` (origin-form URI, Host set) to `addr` on a pooled or new connection.
    pub(crate) async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<SlotBody>,
    ) -> Result<(Response<Incoming>, Lease), Error> {
        // Pooled connections first. One the instance closed while idle hands the request back
        // unsent; then the next one, or a new connection, gets it.
        while let Some(mut sender) = self.take(addr) {
            // A released connection is normally ready at once; if its task has not caught up
            // yet, give it a moment rather than the request's whole timeout.
            let ready = match sender.ready().now_or_never() {
                Some(r) => r.is_ok(),
                None => matches!(
                    tokio::time::timeout(Duration::from_secs(1), sender.ready()).await,
                    Ok(Ok(()))
                ),
            };
            if !ready {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(addr, sender))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => {
                        return Err(Error::Request {
                            addr,
                            source: e.into_error(),
                        })
                    }
                },
            }
        }
        let mut sender = self.connect(addr).await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, self.lease(addr, sender))),
            Err(source) => Err(Error::Request { addr, source }),
        }
    }

    fn lease(self: &Arc<Self>, addr: SocketAddr, sender: SendRequest<SlotBody>) -> Lease {
        Lease {
            pool: Arc::clone(self),
            addr,
            sender,
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<SlotBody>, Error> {
        let connect_err = |source| Error::Connect { addr, source };
        // An idle connection dropped here closes when its task notices, giving its permit
        // back to the waiting request.
        let permit = self
            .limit
            .acquire(|| self.idle.drop_oldest())
            .await
            .ok_or(Error::Limit { addr })?;
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                connect_err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", self.connect_timeout),
                ))
            })?
            .map_err(connect_err)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_err(std::io::Error::other(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "connection to instance ended with an error");
            }
            drop(permit);
        });
        Ok(sender)
    }

    /// The most recently used idle connection to `addr` that is still open and fresh.
    fn take(&self, addr: SocketAddr) -> Option<SendRequest<SlotBody>> {
        self.idle.take(addr, |sender| !sender.is_closed())
    }

    fn put(&self, addr: SocketAddr, sender: SendRequest<SlotBody>) {
        if !sender.is_closed() {
            self.idle.put(addr, sender);
        }
    }
}

//! Sending a request to an instance: its head as instances get it, the attempts, and the
//! connection for each (a pooled one first).
//!
//! Invariant: another attempt follows only when no byte of the request can have reached an
//! instance: its connection could not be opened, or a pooled connection turned out to be closed
//! before the first byte was written (then a new connection to the same instance is opened,
//! which is not another attempt).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::connection::{answer, Connection, Request, Step};
use super::fields::{put_field, put_request_fields};
use super::head::Framing;
use super::upstream::{ConnectError, UpConn};
use crate::headers::{forwarded_for_from, instance_fields, Forwarded};
use crate::proxy::{Attempts, Refusal};
use crate::table::Route;

/// A request whose head (and what had arrived of its body) is with an instance.
pub(super) struct Sent {
    /// The backend it went to.
    pub(super) i: usize,
    pub(super) conn: UpConn,
    /// Body bytes still to come from the client (length-framed bodies).
    pub(super) left: u64,
}

/// Why a request did not reach an instance.
enum SendError {
    /// No connection could be opened: nothing was written, another instance may be tried.
    Connect(io::Error),
    /// Writing failed: part of the request may have reached the instance.
    Write(io::Error),
    /// At the limit on connections to instances: nothing was written, and no other instance
    /// is tried (the limit is the router's, not the instance's).
    Limit,
}

impl<C: AsyncRead + AsyncWrite + Unpin> Connection<'_, C> {
    /// Sends the request's head, with what has arrived of a length-framed body, to the first
    /// instance that takes it.
    pub(super) async fn forward(
        &mut self,
        req: &mut Request,
        route: &Arc<Route>,
    ) -> io::Result<Step<Sent>> {
        let head = head_for_instances(req, route, self.peer, self.https, self.trusted);
        let mut attempts = Attempts::new(self.proxy, route, req.sticky.take());
        while let Some(i) = attempts.next(&mut req.log) {
            let backend = &route.backends[i];
            let mut out = BytesMut::with_capacity(head.len() + 160);
            out.put_slice(&head);
            instance_fields(backend.index, route.instance_id_header(i), |name, value| {
                put_field(&mut out, name.as_bytes(), value)
            });
            out.put_slice(b"\r\n");
            // A length-framed body already read goes out with the head, in one write.
            let in_head = match req.framing {
                Framing::Length(n) => n.min(self.rd.len() as u64) as usize,
                _ => 0,
            };
            out.put_slice(&self.rd[..in_head]);
            let conn = match self.send(backend.addr, &out).await {
                Ok(conn) => conn,
                Err(SendError::Connect(e)) => {
                    attempts.connect_failed(i, &e, &mut req.log);
                    continue;
                }
                Err(SendError::Limit) => {
                    req.log.in_flight = None;
                    return self
                        .refuse(req, &Refusal::upstream_limit())
                        .await
                        .map(Step::Done);
                }
                Err(SendError::Write(e)) => {
                    let refusal = self.proxy.instance_failed(route, backend, &e, &req.log);
                    let _ = answer(self.client, &mut req.log, &refusal, true).await;
                    return Ok(Step::Done(false));
                }
            };
            self.rd.advance(in_head);
            req.received.fetch_add(in_head as u64, Ordering::Relaxed);
            let left = match req.framing {
                Framing::Length(n) => n - in_head as u64,
                _ => 0,
            };
            return Ok(Step::Go(Sent { i, conn, left }));
        }
        let refusal = attempts.exhausted();
        self.refuse(req, &refusal).await.map(Step::Done)
    }

    /// Writes `out` to `addr` on a pooled connection, or a new one if there is none or the
    /// instance closed the pooled one before it took the first byte (nothing reached the app).
    async fn send(&self, addr: SocketAddr, out: &[u8]) -> Result<UpConn, SendError> {
        if let Some(mut conn) = self.proxy.h1_pool.take(addr) {
            if let Ok(n @ 1..) = conn.stream.write(out).await {
                conn.stream
                    .write_all(&out[n..])
                    .await
                    .map_err(SendError::Write)?;
                return Ok(conn);
            }
        }
        let pool = &self.proxy.h1_pool;
        let mut conn = match pool.connect(addr, self.proxy.opts.connect_timeout).await {
            Ok(conn) => conn,
            Err(ConnectError::Limit) => return Err(SendError::Limit),
            Err(ConnectError::Io(e)) => return Err(SendError::Connect(e)),
        };
        conn.stream.write_all(out).await.map_err(SendError::Write)?;
        Ok(conn)
    }
}

/// The request head as every instance gets it, but for the per-instance fields and the empty
/// line that ends it.
fn head_for_instances(
    req: &mut Request,
    route: &Route,
    peer: SocketAddr,
    https: bool,
    trusted: bool,
) -> BytesMut {
    let xff = forwarded_for_from(req.fields.values(b"x-forwarded-for"), peer);
    req.log.set_xff(&xff);
    let mut out = BytesMut::with_capacity(req.fields.head.len() + 512);
    out.put_slice(req.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(req.path_and_query.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    let fwd = Forwarded {
        host: req.host.as_deref().unwrap_or_default(),
        trusted,
        xff: &xff,
        https,
        request_id: &req.log.request_id,
        app_guid: route.app_guid_header(),
        upgrade: req.upgrade(),
    };
    put_request_fields(&mut out, &req.fields, &fwd, req.framing == Framing::Chunked);
    out
}

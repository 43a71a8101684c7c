//! The response: read from the instance, checked, its head rewritten for the client and its
//! body relayed in the framing the client can read.
//!
//! Invariants: the router answers 502 or 504 itself only while nothing of the instance's
//! response has been written to the client; an instance connection goes back to the pool only
//! when its response was read to its end and nothing follows it.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant as Deadline;
use tokio_util::sync::CancellationToken;

use super::body::{BodyCopy, INSTANCE_EOF};
use super::connection::answer;
use super::fields::{put_response_fields, put_router_response_fields, put_status_line};
use super::head::{parse_response, response_framing, Framing, ResponseHead};
use super::timer::{read_more, Timer};
use crate::proxy::{Proxy, RequestLog};
use crate::table::Route;

/// What the response phase needs to know about its request.
pub(super) struct Exchange<'a> {
    pub(super) proxy: &'a Proxy,
    pub(super) route: &'a Arc<Route>,
    /// The backend the request went to.
    pub(super) i: usize,
    pub(super) http11: bool,
    pub(super) client_keep_alive: bool,
    pub(super) head_request: bool,
    /// Whether the client asked for an upgrade (so a 101 is expected, not an error).
    pub(super) upgrade: bool,
    pub(super) shutdown: &'a CancellationToken,
    pub(super) deadline: Deadline,
    /// When the request was out, for the upstream latency.
    pub(super) sent_at: Instant,
}

pub(super) enum Outcome {
    /// The response was delivered (or the exchange ended): whether the client connection can
    /// carry another request, and whether the instance connection can go back to the pool.
    Done { client_open: bool, reusable: bool },
    /// 101 was passed on: splice the two connections.
    Upgraded,
}

impl Outcome {
    /// The exchange ended badly: neither connection carries another request.
    const FAILED: Outcome = Outcome::Done {
        client_open: false,
        reusable: false,
    };
}

/// The two ends of the response's way: the instance's connection (after what `up_buf` already
/// holds of it) and the client's.
pub(super) struct Relay<'a, R, W> {
    pub(super) up: &'a mut R,
    pub(super) up_buf: &'a mut BytesMut,
    pub(super) client: &'a mut W,
    pub(super) log: &'a mut RequestLog,
    pub(super) timer: &'a mut Timer,
}

/// How a response reaches the client.
struct Delivery {
    body: Framing,
    /// Whether the body is chunked again for the client (an HTTP/1.1 client, and a body the
    /// instance chunked or delimited by closing).
    chunk_out: bool,
    close_client: bool,
    /// Whether the instance keeps its connection open after this response.
    upstream_keep_alive: bool,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Relay<'_, R, W> {
    /// Reads the instance's response and writes it to the client.
    pub(super) async fn respond(&mut self, x: &Exchange<'_>) -> io::Result<Outcome> {
        let Some(resp) = self.read_head(x).await? else {
            return Ok(Outcome::FAILED);
        };
        x.proxy
            .opts
            .metrics
            .record_upstream_latency(x.sent_at.elapsed());
        let body = match response_framing(&resp, x.head_request) {
            Ok(f) => f,
            Err(why) => return self.failed(x, &invalid(why)).await,
        };
        let switching = resp.status == StatusCode::SWITCHING_PROTOCOLS;
        if switching && !x.upgrade {
            let e = invalid("101 to a request without Upgrade".into());
            return self.failed(x, &e).await;
        }
        // Both framings (RFC 9112 §6.3): Transfer-Encoding wins, and since the message may be
        // a smuggling attempt, the instance's connection is not used again after it.
        // (Only a coded body can have both: a length-framed one has no Transfer-Encoding.)
        let both_framings = matches!(body, Framing::Chunked | Framing::Close)
            && resp.fields.first(b"transfer-encoding").is_some()
            && resp.fields.first(b"content-length").is_some();
        let upstream_keep_alive = !switching
            && !both_framings
            && if resp.http11 {
                !resp.fields.has_token(b"connection", b"close")
            } else {
                resp.fields.has_token(b"connection", b"keep-alive")
            };
        self.log.status = resp.status.as_u16();
        let unframed = matches!(body, Framing::Chunked | Framing::Close);
        let d = Delivery {
            body,
            chunk_out: unframed && x.http11,
            close_client: !x.client_keep_alive
                || x.shutdown.is_cancelled()
                || (unframed && !x.http11),
            upstream_keep_alive,
        };
        let out = self.head_for_client(x, &resp, &d);
        if switching {
            self.client.write_all(&out).await?;
            return Ok(Outcome::Upgraded);
        }
        match self.relay_body(x, &d, out).await {
            Ok(()) => Ok(Outcome::Done {
                client_open: !d.close_client,
                reusable: d.upstream_keep_alive
                    && d.body != Framing::Close
                    && self.up_buf.is_empty(),
            }),
            Err(e) => {
                if e.kind() == io::ErrorKind::TimedOut {
                    self.log.timed_out();
                } else {
                    tracing::debug!(error = %e, "response not delivered");
                }
                Ok(Outcome::FAILED)
            }
        }
    }

    /// The response head, within the upstream timeout and the request's deadline; interim
    /// (1xx) answers are passed on to an HTTP/1.1 client. `None`: the instance failed, and the
    /// client has been answered.
    async fn read_head(&mut self, x: &Exchange<'_>) -> io::Result<Option<ResponseHead>> {
        let opts = &x.proxy.opts;
        let deadline = (Deadline::now() + opts.upstream_timeout).min(x.deadline);
        loop {
            match parse_response(self.up_buf) {
                Ok(Some(h))
                    if h.status.is_informational()
                        && h.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    if x.http11 {
                        let mut out = BytesMut::with_capacity(256);
                        put_status_line(&mut out, h.status, h.reason());
                        put_response_fields(&mut out, &h, false);
                        out.put_slice(b"\r\n");
                        self.client.write_all(&out).await?;
                    }
                    continue;
                }
                Ok(Some(h)) => return Ok(Some(h)),
                Ok(None) => {}
                Err(why) => return self.failed(x, &invalid(why)).await.map(|_| None),
            }
            match read_more(self.up, self.up_buf, deadline, self.timer).await {
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the instance closed the connection without answering",
                    );
                    return self.failed(x, &e).await.map(|_| None);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    let refusal = x.proxy.instance_timed_out(x.route, &x.route.backends[x.i]);
                    answer(self.client, self.log, &refusal, true).await?;
                    return Ok(None);
                }
                Err(e) => return self.failed(x, &e).await.map(|_| None),
            }
        }
    }

    /// The instance failed after the request may have reached it: 502 if nothing was sent to
    /// the client yet (never a replay), and both connections close.
    async fn failed(&mut self, x: &Exchange<'_>, e: &io::Error) -> io::Result<Outcome> {
        let refusal = x
            .proxy
            .instance_failed(x.route, &x.route.backends[x.i], e, self.log);
        let _ = answer(self.client, self.log, &refusal, true).await;
        Ok(Outcome::FAILED)
    }

    /// The response head as the client gets it.
    fn head_for_client(&self, x: &Exchange<'_>, resp: &ResponseHead, d: &Delivery) -> BytesMut {
        let switching = resp.status == StatusCode::SWITCHING_PROTOCOLS;
        let mut out = BytesMut::with_capacity(resp.fields.head.len() + 128);
        put_status_line(&mut out, resp.status, resp.reason());
        put_response_fields(&mut out, resp, switching);
        let instance_id = &x.route.backends[x.i].instance_id;
        put_router_response_fields(&mut out, resp, &self.log.request_id, instance_id);
        if d.chunk_out {
            out.put_slice(b"transfer-encoding: chunked\r\n");
        }
        if !switching {
            if d.close_client {
                out.put_slice(b"connection: close\r\n");
            } else if !x.http11 {
                out.put_slice(b"connection: keep-alive\r\n");
            }
        }
        out.put_slice(b"\r\n");
        out
    }

    /// Writes `out` (the head) and the body after it: what has arrived goes out with the head,
    /// in one write.
    async fn relay_body(
        &mut self,
        x: &Exchange<'_>,
        d: &Delivery,
        mut out: BytesMut,
    ) -> io::Result<()> {
        let left = match d.body {
            Framing::None => {
                self.log.finish();
                return self.client.write_all(&out).await;
            }
            Framing::Length(n) => {
                let take = n.min(self.up_buf.len() as u64) as usize;
                out.put_slice(&self.up_buf[..take]);
                self.up_buf.advance(take);
                self.log.bytes_sent += take as u64;
                if take as u64 == n {
                    self.log.finish();
                }
                self.client.write_all(&out).await?;
                n - take as u64
            }
            Framing::Chunked | Framing::Close => 0,
        };
        let copy = BodyCopy {
            from: &mut *self.up,
            buf: &mut *self.up_buf,
            to: &mut *self.client,
            deadline: x.deadline,
            // A response may pause for as long as the app likes (long polls, event streams),
            // up to the maximum request time.
            idle: None,
            timer: &mut *self.timer,
            count: |n| self.log.bytes_sent += n,
            eof: INSTANCE_EOF,
        };
        match d.body {
            Framing::Chunked => copy.chunked(out, d.chunk_out).await,
            Framing::Close => copy.until_close(out, d.chunk_out).await,
            Framing::None | Framing::Length(_) => copy.length(left).await,
        }
    }
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

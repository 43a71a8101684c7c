//! One client connection: the serve loop, and each exchange on it from the request head to the
//! end of the response.
//!
//! ```text
//! serve: read_head ─▶ exchange ─▶ (keep-alive) read_head ─▶ …
//! exchange: admit ─▶ route ─▶ forward (forward.rs) ─▶ relay: respond (respond.rs)
//!                                                      ├ with the rest of the body, both ways
//!                                                      └ or splice, after a 101
//! ```
//!
//! Every phase that ends the exchange early has answered the client already and says whether
//! the connection can carry another request ([`Step::Done`]).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use http::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant as Deadline;
use tokio_util::sync::CancellationToken;

use super::body::{skip_buffered_body, BodyCopy, BodyState, BODY_IDLE, CLIENT_EOF};
use super::fields::{error_bytes, Fields};
use super::forward::Sent;
use super::head::{parse_request, request_framing, Framing, HeadError, RequestHead};
use super::respond::{Exchange, Outcome, Relay};
use super::timer::{read_more, Timer};
use super::upstream::UpConn;
use super::{H2_PREFACE, READ_SIZE};
use crate::headers::{request_id_from, sticky_instance_from};
use crate::proxy::{cause, Proxy, Refusal, RequestLog};
use crate::table::Route;

/// How a connection ended.
pub(crate) enum Ended {
    /// Closed (by either side, or after an error answer).
    Closed,
    /// The client sent the HTTP/2 preface: serve it as h2c; the bytes read so far come first.
    Http2(BytesMut),
}

/// One client connection, as each exchange on it sees it.
pub(super) struct Connection<'a, C> {
    pub(super) proxy: &'a Proxy,
    pub(super) client: &'a mut C,
    /// Bytes read from the client and not used yet.
    pub(super) rd: BytesMut,
    pub(super) peer: SocketAddr,
    pub(super) https: bool,
    /// Whether the client's address is in a trusted proxy range (its forwarded headers kept).
    pub(super) trusted: bool,
    pub(super) shutdown: &'a CancellationToken,
    /// Bounds the reads of request heads and of responses (one timer per connection).
    pub(super) timer: Timer,
    /// Still telling an HTTP/2 preface from a request.
    sniffing: bool,
}

/// How a phase of an exchange went.
pub(super) enum Step<T> {
    /// On to the next phase with this.
    Go(T),
    /// The exchange is over and answered; whether the client connection can carry another.
    Done(bool),
}

/// What the engine makes of a parsed head.
enum Admission {
    Admitted(Request),
    /// Answered with the refusal, and the connection closed: a body that may follow cannot be
    /// told from the next request.
    Refused(RequestLog, Refusal),
}

/// A request the engine accepted, with its accounting, as the phases after parsing need it.
pub(super) struct Request {
    pub(super) method: Method,
    /// The target in origin form (`/path?query`).
    pub(super) path_and_query: String,
    pub(super) http11: bool,
    pub(super) fields: Fields,
    /// The host the client asked for (an absolute-form target's, else Host).
    pub(super) host: Option<String>,
    pub(super) framing: Framing,
    /// Whether the client wants its connection kept open after this exchange.
    pub(super) keep_alive: bool,
    /// Whether the client asks for an upgrade ([`Request::upgrade`]).
    upgrade: bool,
    /// The instance a `__VCAP_ID__` cookie asks for.
    pub(super) sticky: Option<String>,
    /// When the maximum request time runs out.
    pub(super) deadline: Deadline,
    pub(super) log: RequestLog,
    /// Request body bytes read from the client, for the access log.
    pub(super) received: Arc<AtomicU64>,
}

impl Request {
    pub(super) fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p)
    }

    /// The protocol of the upgrade the client asks for, if it asks for one.
    pub(super) fn upgrade(&self) -> Option<&[u8]> {
        self.upgrade
            .then(|| self.fields.first(b"upgrade"))
            .flatten()
    }

    fn expects_continue(&self) -> bool {
        self.framing != Framing::None
            && self
                .fields
                .first(b"expect")
                .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"))
    }
}

/// Serves one HTTP/1 client connection until it closes. `rd` holds bytes already read.
pub(crate) async fn serve<C>(
    proxy: &Proxy,
    client: &mut C,
    rd: BytesMut,
    peer: SocketAddr,
    https: bool,
    shutdown: &CancellationToken,
) -> io::Result<Ended>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let opts = &proxy.opts;
    let mut conn = Connection {
        proxy,
        client,
        rd,
        peer,
        https,
        trusted: opts.is_trusted(peer.ip()),
        shutdown,
        timer: Timer::new(Deadline::now() + opts.header_read_timeout),
        sniffing: opts.http2,
    };
    loop {
        let head = match conn.read_head().await? {
            Ok(head) => head,
            Err(ended) => return Ok(ended),
        };
        let keep_alive = conn.exchange(head).await?;
        if !keep_alive || shutdown.is_cancelled() {
            let _ = conn.client.shutdown().await;
            return Ok(Ended::Closed);
        }
    }
}

impl<C: AsyncRead + AsyncWrite + Unpin> Connection<'_, C> {
    /// The next request head, within the header read timeout (which also bounds an idle
    /// keep-alive connection), or how the connection ended instead. Shutdown closes a
    /// connection that is between requests.
    async fn read_head(&mut self) -> io::Result<Result<RequestHead, Ended>> {
        let opts = &self.proxy.opts;
        let deadline = Deadline::now() + opts.header_read_timeout;
        loop {
            if self.sniffing && !self.rd.is_empty() {
                let n = self.rd.len().min(H2_PREFACE.len());
                if self.rd[..n] != H2_PREFACE[..n] {
                    self.sniffing = false;
                } else if n == H2_PREFACE.len() {
                    return Ok(Err(Ended::Http2(std::mem::take(&mut self.rd))));
                }
            }
            if !self.sniffing && !self.rd.is_empty() {
                match parse_request(&mut self.rd, opts.max_header_bytes) {
                    Ok(Some(head)) => {
                        self.sniffing = false;
                        return Ok(Ok(head));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.refuse_head(e).await?;
                        return Ok(Err(Ended::Closed));
                    }
                }
            }
            let read = if self.rd.is_empty() {
                tokio::select! {
                    biased;
                    r = read_more(self.client, &mut self.rd, deadline, &mut self.timer) => r,
                    _ = self.shutdown.cancelled() => return Ok(Err(Ended::Closed)),
                }
            } else {
                read_more(self.client, &mut self.rd, deadline, &mut self.timer).await
            };
            match read {
                Ok(0) => return Ok(Err(Ended::Closed)),
                Ok(_) => {}
                // Slow or idle past the header read timeout: close, as nginx does.
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(Err(Ended::Closed)),
                Err(e) => return Err(e),
            }
        }
    }

    /// A head that cannot be parsed: nothing can be routed or logged, so it is answered here
    /// and the connection closed.
    async fn refuse_head(&mut self, e: HeadError) -> io::Result<()> {
        let (status, message) = match e {
            HeadError::TooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "Request header fields too large.".to_string(),
            ),
            HeadError::Bad(why) => (StatusCode::BAD_REQUEST, format!("Bad request: {why}.")),
        };
        self.proxy
            .opts
            .metrics
            .record_router_error(cause::BAD_REQUEST);
        let out = error_bytes(status, cause::BAD_REQUEST, None, &message, true);
        self.client.write_all(&out).await
    }

    /// One request and its response. Returns whether the client connection can carry another.
    async fn exchange(&mut self, head: RequestHead) -> io::Result<bool> {
        let mut req = match self.admit(head) {
            Admission::Admitted(req) => req,
            Admission::Refused(mut log, refusal) => {
                answer(self.client, &mut log, &refusal, true).await?;
                return Ok(false);
            }
        };
        let route = match self.proxy.route_for(req.host.as_deref(), req.path()) {
            Ok(route) => route,
            Err(refusal) => return self.refuse(&mut req, &refusal).await,
        };
        req.log.set_route(&route);
        let sent = match self.forward(&mut req, &route).await? {
            Step::Go(sent) => sent,
            Step::Done(keep_alive) => return Ok(keep_alive),
        };
        self.relay(req, &route, sent).await
    }

    /// Starts the request's accounting and checks what the parser leaves to the engine: its
    /// framing, a single Host, and no CONNECT.
    fn admit(&self, head: RequestHead) -> Admission {
        let started = Instant::now();
        let RequestHead {
            method,
            path_and_query,
            target_host,
            http11,
            fields,
        } = head;
        let request_id = request_id_from(fields.first(b"x-vcap-request-id"));
        let host: Option<String> = target_host.or_else(|| {
            fields
                .first(b"host")
                .and_then(|v| std::str::from_utf8(v).ok())
                .filter(|h| !h.is_empty())
                .map(str::to_string)
        });
        let mut log = RequestLog::new(
            self.proxy,
            method.as_str(),
            &path_and_query,
            (fields.first(b"user-agent"), fields.first(b"referer")),
            host.as_deref(),
            self.peer,
            request_id,
        );
        let received = Arc::new(AtomicU64::new(0));
        log.received = Some(Arc::clone(&received));
        let framing = request_framing(&fields, http11).and_then(|f| {
            if fields.values(b"host").count() > 1 {
                Err("several Host headers".to_string())
            } else {
                Ok(f)
            }
        });
        let framing = match framing {
            Ok(f) => f,
            Err(why) => return Admission::Refused(log, Refusal::bad_request(&why)),
        };
        if method == Method::CONNECT {
            let refusal = Refusal {
                status: StatusCode::METHOD_NOT_ALLOWED,
                cause: cause::BAD_REQUEST,
                message: "CONNECT is not supported.".into(),
            };
            return Admission::Refused(log, refusal);
        }
        let keep_alive = if http11 {
            !fields.has_token(b"connection", b"close")
        } else {
            fields.has_token(b"connection", b"keep-alive")
        };
        // A request with a body is not upgraded: the body would be the start of the tunnel.
        let upgrade =
            http11 && framing == Framing::None && fields.has_token(b"connection", b"upgrade");
        Admission::Admitted(Request {
            sticky: sticky_instance_from(fields.values(b"cookie")),
            deadline: Deadline::from_std(started) + self.proxy.opts.max_request_time,
            method,
            path_and_query,
            http11,
            fields,
            host,
            framing,
            keep_alive,
            upgrade,
            log,
            received,
        })
    }

    /// Answers a request that reaches no instance. A body that is already here is skipped;
    /// one still coming closes the connection.
    pub(super) async fn refuse(
        &mut self,
        req: &mut Request,
        refusal: &Refusal,
    ) -> io::Result<bool> {
        let body = skip_buffered_body(&mut self.rd, req.framing);
        let close = body == BodyState::Unread || !req.keep_alive;
        answer(self.client, &mut req.log, refusal, close).await?;
        Ok(!close)
    }

    /// The whole head (and what had arrived of the body) is with the instance: relays the
    /// response, with the rest of the body if there is more.
    async fn relay(
        &mut self,
        mut req: Request,
        route: &Arc<Route>,
        sent: Sent,
    ) -> io::Result<bool> {
        let Sent { i, mut conn, left } = sent;
        let x = Exchange {
            proxy: self.proxy,
            route,
            i,
            http11: req.http11,
            client_keep_alive: req.keep_alive,
            head_request: req.method == Method::HEAD,
            upgrade: req.upgrade().is_some(),
            shutdown: self.shutdown,
            deadline: req.deadline,
            sent_at: Instant::now(),
        };
        if left > 0 || req.framing == Framing::Chunked {
            return self.relay_with_body(&x, req, conn, left).await;
        }
        let UpConn { stream, buf, .. } = &mut conn;
        let mut relay = Relay {
            up: stream,
            up_buf: buf,
            client: &mut *self.client,
            log: &mut req.log,
            timer: &mut self.timer,
        };
        match relay.respond(&x).await? {
            Outcome::Done {
                client_open,
                reusable,
            } => {
                if reusable {
                    self.proxy.h1_pool.put(route.backends[i].addr, conn);
                }
                Ok(client_open)
            }
            Outcome::Upgraded => {
                drop(req);
                self.splice(conn).await?;
                Ok(false)
            }
        }
    }

    /// After a 101: what either side sent after the heads goes first, then the two connections
    /// are spliced until either closes.
    async fn splice(&mut self, mut conn: UpConn) -> io::Result<()> {
        if !self.rd.is_empty() {
            conn.stream.write_all(&self.rd).await?;
            self.rd.clear();
        }
        if !conn.buf.is_empty() {
            self.client.write_all(&conn.buf).await?;
            conn.buf.clear();
        }
        if let Err(e) = tokio::io::copy_bidirectional(self.client, &mut conn.stream).await {
            tracing::debug!(error = %e, "upgraded connection ended");
        }
        Ok(())
    }

    /// A body still coming: forwards it while the response is read and sent back (an instance
    /// may answer, and stream, before the upload ends), both directions in this task.
    async fn relay_with_body(
        &mut self,
        x: &Exchange<'_>,
        mut req: Request,
        mut conn: UpConn,
        left: u64,
    ) -> io::Result<bool> {
        if req.expects_continue() {
            self.client
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
        }
        let (outcome, body_read) = {
            let Connection {
                client, rd, timer, ..
            } = self;
            let (mut client_r, mut client_w) = tokio::io::split(&mut **client);
            let UpConn { stream, buf, .. } = &mut conn;
            let (mut up_r, mut up_w) = stream.split();
            let mut body_timer = Timer::new(x.deadline);
            let received = &req.received;
            let copy = BodyCopy {
                from: &mut client_r,
                buf: rd,
                to: &mut up_w,
                deadline: x.deadline,
                idle: Some(self.proxy.opts.body_read_timeout),
                timer: &mut body_timer,
                count: |n| {
                    received.fetch_add(n, Ordering::Relaxed);
                },
                eof: CLIENT_EOF,
            };
            let framing = req.framing;
            let body = async move {
                match framing {
                    Framing::Chunked => {
                        copy.chunked(BytesMut::with_capacity(READ_SIZE + 64), true)
                            .await
                    }
                    _ => copy.length(left).await,
                }
            };
            let mut relay = Relay {
                up: &mut up_r,
                up_buf: buf,
                client: &mut client_w,
                log: &mut req.log,
                timer,
            };
            let resp = relay.respond(x);
            tokio::pin!(body, resp);
            let mut body_read = false;
            let outcome = loop {
                tokio::select! {
                    r = &mut body, if !body_read => match r {
                        Ok(()) => body_read = true,
                        // The client went away or sent a malformed body: the exchange is over.
                        Err(e) => break Err(e),
                    },
                    r = &mut resp => break r,
                }
            };
            (outcome, body_read)
        };
        self.finish_with_body(x, req, conn, outcome, body_read)
            .await
    }

    /// After a response that went out while the request body was still coming: the instance
    /// connection is reused and the client's kept only if the body was read to its end.
    async fn finish_with_body(
        &mut self,
        x: &Exchange<'_>,
        mut req: Request,
        conn: UpConn,
        outcome: io::Result<Outcome>,
        body_read: bool,
    ) -> io::Result<bool> {
        match outcome {
            Ok(Outcome::Done {
                client_open,
                reusable,
            }) => {
                if reusable && body_read {
                    self.proxy.h1_pool.put(x.route.backends[x.i].addr, conn);
                }
                Ok(client_open && body_read)
            }
            // An upgrade carries no request body, so it is never answered here.
            Ok(Outcome::Upgraded) => Ok(false),
            Err(e) => {
                tracing::debug!(error = %e,
                    "request body not forwarded, or response not delivered");
                // A malformed chunked body before the instance answered: 400 (the instance's
                // connection, with its half-sent request, is dropped).
                if e.kind() == io::ErrorKind::InvalidData && req.log.status == 0 {
                    let refusal = Refusal::bad_request(&e.to_string());
                    let _ = answer(self.client, &mut req.log, &refusal, true).await;
                }
                // A body that stalled before the instance answered: 408, as nginx answers
                // past its client_body_timeout. Past the maximum request time the connection
                // just closes, as before.
                if e.kind() == io::ErrorKind::TimedOut
                    && e.to_string() == BODY_IDLE
                    && req.log.status == 0
                {
                    let refusal = Refusal::body_timeout();
                    let _ = answer(self.client, &mut req.log, &refusal, true).await;
                }
                Ok(false)
            }
        }
    }
}

/// Answers the request with a response the router makes itself, counted and logged first.
pub(super) async fn answer<W: AsyncWrite + Unpin>(
    client: &mut W,
    log: &mut RequestLog,
    refusal: &Refusal,
    close: bool,
) -> io::Result<()> {
    log.refused(refusal.status, refusal.cause);
    let out = error_bytes(
        refusal.status,
        refusal.cause,
        Some(&log.request_id),
        &refusal.message,
        close,
    );
    log.finish();
    client.write_all(&out).await
}

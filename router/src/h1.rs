//! The HTTP/1 engine: one task per client connection parses the client's requests, writes them
//! to a pooled connection to the instance and copies the response back, both hops driven by
//! the same future, like one nginx event handler.
//!
//! ```text
//! client ──read──▶ [rd] ─httparse─▶ head ─▶ route, pick ─▶ write head (+ buffered body) ──▶ instance
//!    ▲                                                       stream the rest of the body ──▶
//!    └──── write head (+ buffered body) ◀─ rewrite ◀─httparse─ [up.buf] ◀──read───────────┘
//!          stream the rest of the body ◀────────────────────────────────
//! ```
//!
//! Why not hyper on both sides (as the router first did): a hyper server connection, a hyper
//! client connection and the proxy's service are three state machines and two tasks, with
//! channels between them and a wake-up per hand-over; here one future owns both sockets and a
//! request costs its syscalls, two parses and two header rewrites. HTTP/2 clients (h2c prior
//! knowledge, or ALPN `h2` over TLS) still go through hyper and [`Proxy::handle`].
//!
//! What the engine enforces (the rules are listed in `docs/router.md`):
//! - request framing: `Content-Length` together with `Transfer-Encoding` is 400, as are differing
//!   `Content-Length`s, a transfer coding other than a single `chunked`, several `Host` headers,
//!   a malformed head and a control character in a header value; a head over the limit is 431;
//! - chunked bodies are decoded and re-encoded ([`crate::chunked`]), never passed through raw;
//! - a request is retried on another instance only when its connection could not be opened (no
//!   byte written); a pooled connection that turns out to be closed before the first byte is
//!   written is replaced by a new connection to the same instance;
//! - an instance's malformed response is 502 for that request, and its connection is dropped;
//! - a client connection is closed after any response whose request body was not read to its
//!   end, so no byte of a body is ever parsed as a request.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::HeaderValue;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant as Deadline;
use tokio_util::sync::CancellationToken;

use crate::chunked::{self, Chunk, Decoder};
use crate::idle::IdlePool;
use crate::proxy::{
    cause, forwarded_for_from, request_id_from, sticky_cookie, sticky_instance_from, traceparent,
    Proxy, RequestLog,
};

/// Most headers in a request or response head.
const MAX_HEADERS: usize = 100;
/// Bytes asked of the kernel per read.
const READ_SIZE: usize = 16 * 1024;
/// Largest response head accepted from an instance.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a connection ended.
pub(crate) enum Ended {
    /// Closed (by either side, or after an error answer).
    Closed,
    /// The client sent the HTTP/2 preface: serve it as h2c; the bytes read so far come first.
    Http2(BytesMut),
}

// ---------------------------------------------------------------------------------------------
// Connections to instances

/// A connection to an instance with what has been read from it but not yet used.
pub(crate) struct UpConn {
    stream: TcpStream,
    buf: BytesMut,
}

/// Idle keep-alive connections to instances. An idle connection the instance closed is
/// readable (EOF), one with unexpected bytes too: either is dropped instead of used.
pub(crate) struct Pool(IdlePool<UpConn>);

impl Pool {
    pub(crate) fn new(idle_timeout: Duration, max_idle_per_addr: usize) -> Self {
        Pool(IdlePool::new(idle_timeout, max_idle_per_addr))
    }

    fn take(&self, addr: SocketAddr) -> Option<UpConn> {
        self.0.take(addr, |conn| {
            let mut probe = [0u8; 1];
            matches!(conn.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        })
    }

    fn put(&self, addr: SocketAddr, conn: UpConn) {
        self.0.put(addr, conn)
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<UpConn> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ))
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(UpConn {
        stream,
        buf: BytesMut::with_capacity(READ_SIZE),
    })
}

// ---------------------------------------------------------------------------------------------
// Heads

/// How a message's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the instance closes the connection (responses only).
    Close,
}

struct RequestHead {
    method: http::Method,
    /// The target in origin form (`/path?query`).
    path_and_query: String,
    /// Host from an absolute-form target, which wins over the Host header.
    target_host: Option<String>,
    http11: bool,
    fields: Fields,
}

/// The fields of a head as received: its bytes, and where each name and value is. The router
/// reads them and copies the ones it keeps straight to the other side (no header map).
struct Fields {
    head: Bytes,
    spans: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

impl Fields {
    /// Records the fields httparse found in `buf` (httparse checked that names are tokens and
    /// that values hold no CR, LF or other control character but tab).
    fn new(buf: &[u8], parsed: &[httparse::Header<'_>]) -> Self {
        let base = buf.as_ptr() as usize;
        let span = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        Fields {
            head: Bytes::new(),
            spans: parsed
                .iter()
                .map(|h| (span(h.name.as_bytes()), span(h.value)))
                .collect(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans
            .iter()
            .map(|(n, v)| (&self.head[n.clone()], &self.head[v.clone()]))
    }

    /// Every value of the field `name` (lowercase).
    fn values<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    fn first(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Whether a list-valued field (`Connection`) has `token`.
    fn has_token(&self, name: &[u8], token: &[u8]) -> bool {
        list_items(self.values(name)).any(|t| t.eq_ignore_ascii_case(token))
    }
}

enum HeadError {
    /// 431: the head is over the limit.
    TooLarge,
    /// 400, with the reason.
    Bad(String),
}

/// Parses a request head at the front of `rd`; on success the head is taken out of `rd`.
fn parse_request(rd: &mut BytesMut, max: usize) -> Result<Option<RequestHead>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(rd) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if rd.len() >= max {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            }
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Bad(format!("malformed request: {e}"))),
    };
    if len > max {
        return Err(HeadError::TooLarge);
    }
    let method = http::Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Bad("malformed request method".into()))?;
    let http11 = req.version == Some(1);
    let target = req.path.unwrap_or("/");
    let (path_and_query, target_host) = if target.starts_with('/') || target == "*" {
        (target.to_string(), None)
    } else {
        let uri: http::Uri = target
            .parse()
            .map_err(|_| HeadError::Bad("malformed request target".into()))?;
        let pq = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        (pq, uri.authority().map(|a| a.as_str().to_string()))
    };
    let mut fields = Fields::new(rd, req.headers);
    fields.head = rd.split_to(len).freeze();
    Ok(Some(RequestHead {
        method,
        path_and_query,
        target_host,
        http11,
        fields,
    }))
}

/// The framing of a request's body (RFC 9112 §6.3), refusing the ambiguous ones.
fn request_framing(fields: &Fields, http11: bool) -> Result<Framing, String> {
    if fields.first(b"transfer-encoding").is_some() {
        if fields.first(b"content-length").is_some() {
            return Err("Content-Length together with Transfer-Encoding".into());
        }
        if !http11 {
            return Err("Transfer-Encoding in an HTTP/1.0 request".into());
        }
        let mut codings = list_items(fields.values(b"transfer-encoding"));
        let ok = matches!(codings.next(), Some(c) if c.eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none();
        if !ok {
            return Err("unsupported Transfer-Encoding (only a single chunked)".into());
        }
        return Ok(Framing::Chunked);
    }
    match parse_content_length(fields.values(b"content-length"))? {
        None | Some(0) => Ok(Framing::None),
        Some(n) => Ok(Framing::Length(n)),
    }
}

fn parse_content_length<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<u64>, String> {
    let mut found: Option<u64> = None;
    for v in values {
        for part in v.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err("malformed Content-Length".into());
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("malformed Content-Length")?;
            if found.is_some_and(|f| f != n) {
                return Err("differing Content-Length values".into());
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// A response head as the instance sent it; its fields are copied to the client one by one,
/// leaving out the hop-by-hop ones.
struct ResponseHead {
    status: StatusCode,
    http11: bool,
    reason: std::ops::Range<usize>,
    fields: Fields,
}

impl ResponseHead {
    fn values<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields.values(name)
    }

    fn reason(&self) -> &[u8] {
        &self.fields.head[self.reason.clone()]
    }
}

/// The comma-separated elements of a list-valued field's values, trimmed, empty ones skipped.
fn list_items<'a>(values: impl Iterator<Item = &'a [u8]>) -> impl Iterator<Item = &'a [u8]> {
    values
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Parses a response head at the front of `buf`; on success the head is taken out of `buf`.
fn parse_response(buf: &mut BytesMut) -> Result<Option<ResponseHead>, String> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => {
            return Err("response head too large".into())
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed response: {e}")),
    };
    let status = StatusCode::from_u16(resp.code.unwrap_or(0))
        .map_err(|_| "malformed response status".to_string())?;
    let http11 = resp.version == Some(1);
    let reason = resp.reason.map_or(0..0, |r| {
        let start = r.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + r.len()
    });
    let mut fields = Fields::new(buf, resp.headers);
    fields.head = buf.split_to(len).freeze();
    Ok(Some(ResponseHead {
        status,
        http11,
        reason,
        fields,
    }))
}

/// The framing of a response's body (RFC 9112 §6.3).
fn response_framing(head: &ResponseHead, head_request: bool) -> Result<Framing, String> {
    let s = head.status.as_u16();
    if head_request || (100..200).contains(&s) || s == 204 || s == 304 {
        return Ok(Framing::None);
    }
    if head.values(b"transfer-encoding").next().is_some() {
        return Ok(match list_items(head.values(b"transfer-encoding")).last() {
            Some(c) if c.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            _ => Framing::Close,
        });
    }
    match parse_content_length(head.values(b"content-length"))? {
        Some(0) => Ok(Framing::None),
        Some(n) => Ok(Framing::Length(n)),
        None => Ok(Framing::Close),
    }
}

/// What the router adds to a request it forwards.
struct UpstreamExtras<'a> {
    host: &'a str,
    xff: &'a str,
    https: bool,
    request_id: &'a HeaderValue,
    app_guid: &'a [u8],
    /// The protocol of an upgrade the client asked for.
    upgrade: Option<&'a [u8]>,
    chunked: bool,
}

/// Fields the router sets on every forwarded request, replacing what the client sent.
const SET_BY_ROUTER: [&[u8]; 7] = [
    b"expect",
    b"x-forwarded-for",
    b"x-vcap-request-id",
    b"x-cf-applicationid",
    b"x-cf-instanceindex",
    b"x-cf-instanceid",
    b"content-length",
];

/// Writes the request's fields for the instance, in one pass, with the same policy as
/// [`crate::proxy::upstream_headers`] (the HTTP/2 path's): hop-by-hop fields, those named in
/// `Connection` and `Expect` left out; `X-Forwarded-For` (appended to), the request id and
/// `X-CF-ApplicationID` set; `Host`, `X-Forwarded-Proto`, `X-Forwarded-Host`,
/// `X-Request-Start` and `traceparent` added when the client sent none; `Connection: upgrade`
/// kept for an upgrade. `Content-Length` is written again by the router for a length-framed
/// body (the parsed value), and `Transfer-Encoding: chunked` for a chunked one.
fn put_request_fields(out: &mut BytesMut, fields: &Fields, x: &UpstreamExtras<'_>) {
    let named: Vec<&[u8]> = list_items(fields.values(b"connection")).collect();
    let (mut host, mut proto, mut fwd_host, mut start, mut trace) =
        (false, false, false, false, false);
    let mut length: Option<&[u8]> = None;
    for (name, value) in fields.iter() {
        if name.eq_ignore_ascii_case(b"content-length") {
            length.get_or_insert(value);
        }
        if HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
            || SET_BY_ROUTER.iter().any(|h| name.eq_ignore_ascii_case(h))
            || named.iter().any(|h| name.eq_ignore_ascii_case(h))
        {
            continue;
        }
        host |= name.eq_ignore_ascii_case(b"host");
        proto |= name.eq_ignore_ascii_case(b"x-forwarded-proto");
        fwd_host |= name.eq_ignore_ascii_case(b"x-forwarded-host");
        start |= name.eq_ignore_ascii_case(b"x-request-start");
        trace |= name.eq_ignore_ascii_case(b"traceparent");
        put_field(out, name, value);
    }
    if let Some(len) = length.filter(|_| !x.chunked) {
        // Checked by `request_framing`: every value is the same number.
        let first = len
            .split(|&b| b == b',')
            .next()
            .unwrap_or(b"0")
            .trim_ascii();
        put_field(out, b"content-length", first);
    }
    if x.chunked {
        put_field(out, b"transfer-encoding", b"chunked");
    }
    if let Some(protocol) = x.upgrade {
        put_field(out, b"connection", b"upgrade");
        put_field(out, b"upgrade", protocol);
    }
    if !host {
        put_field(out, b"host", x.host.as_bytes());
    }
    put_field(out, b"x-forwarded-for", x.xff.as_bytes());
    if !proto {
        put_field(
            out,
            b"x-forwarded-proto",
            if x.https { b"https" } else { b"http" },
        );
    }
    if !fwd_host {
        put_field(out, b"x-forwarded-host", x.host.as_bytes());
    }
    if !start {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        put_field(out, b"x-request-start", ms.to_string().as_bytes());
    }
    put_field(out, b"x-vcap-request-id", x.request_id.as_bytes());
    if !trace {
        put_field(out, b"traceparent", traceparent().as_bytes());
    }
    put_field(out, b"x-cf-applicationid", x.app_guid);
}

fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Hop-by-hop fields (RFC 9110 §7.6.1), never passed on.
const HOP_BY_HOP: [&[u8]; 9] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
];

/// Writes the fields of `head` for the client: all of them for a 101 (the upgrade needs
/// `Connection` and `Upgrade`), otherwise without the hop-by-hop ones and those that
/// `Connection` names; an `X-Vcap-Request-Id` from the instance is replaced by the router's.
fn put_response_fields(out: &mut BytesMut, head: &ResponseHead, keep_hop_by_hop: bool) {
    let named: Vec<&[u8]> = if keep_hop_by_hop {
        Vec::new()
    } else {
        list_items(head.values(b"connection")).collect()
    };
    for (name, value) in head.fields.iter() {
        let hop = !keep_hop_by_hop
            && (HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
                || named.iter().any(|h| name.eq_ignore_ascii_case(h)));
        if hop || name.eq_ignore_ascii_case(b"x-vcap-request-id") {
            continue;
        }
        put_field(out, name, value);
    }
}

fn put_status_line(out: &mut BytesMut, status: StatusCode, reason: &[u8]) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    let reason = if reason.is_empty() {
        status.canonical_reason().unwrap_or("").as_bytes()
    } else {
        reason
    };
    out.put_slice(reason);
    out.put_slice(b"\r\n");
}

thread_local! {
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
}

/// `Date: …` for responses the router makes, formatted once a second per thread.
fn put_date(out: &mut BytesMut) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1.is_empty() {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        out.put_slice(b"date: ");
        out.put_slice(d.1.as_bytes());
        out.put_slice(b"\r\n");
    });
}

/// A response the router makes itself: status, cause header, request id, plain-text body.
fn error_bytes(
    status: StatusCode,
    cause: &str,
    request_id: Option<&HeaderValue>,
    message: &str,
    close: bool,
) -> BytesMut {
    let mut out = BytesMut::with_capacity(256 + message.len());
    put_status_line(&mut out, status, b"");
    out.put_slice(b"content-type: text/plain; charset=utf-8\r\n");
    out.put_slice(pier_api::ROUTER_ERROR_HEADER.as_bytes());
    out.put_slice(b": ");
    out.put_slice(cause.as_bytes());
    out.put_slice(b"\r\n");
    if let Some(id) = request_id {
        out.put_slice(b"x-vcap-request-id: ");
        out.put_slice(id.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(format!("content-length: {}\r\n", message.len() + 1).as_bytes());
    if close {
        out.put_slice(b"connection: close\r\n");
    }
    put_date(&mut out);
    out.put_slice(b"\r\n");
    out.put_slice(message.as_bytes());
    out.put_u8(b'\n');
    out
}

// ---------------------------------------------------------------------------------------------
// The connection loop

/// One timer per connection (and one more for a request body forwarded while the response
/// streams), re-armed lazily: waiting with a later deadline than the armed one touches nothing,
/// and when the timer fires early it is moved to the deadline that applies then. A timer per read
/// would cost a timer-wheel insert and removal each time, and often a wake-up of the runtime's
/// driver (an eventfd write) when the new deadline is the earliest.
pub(crate) struct Timer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    at: Deadline,
}

impl Timer {
    fn new(at: Deadline) -> Self {
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            at,
        }
    }

    /// `fut`'s output, or `None` once `deadline` has passed.
    async fn within<F: std::future::Future>(
        &mut self,
        deadline: Deadline,
        fut: F,
    ) -> Option<F::Output> {
        if deadline < self.at {
            self.sleep.as_mut().reset(deadline);
            self.at = deadline;
        }
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return Some(out),
                _ = self.sleep.as_mut() => {
                    if Deadline::now() >= deadline {
                        return None;
                    }
                    self.sleep.as_mut().reset(deadline);
                    self.at = deadline;
                }
            }
        }
    }
}

/// Reads more into `buf`; `Ok(0)` is end of stream. Past `deadline`: `TimedOut`.
async fn read_more<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    deadline: Deadline,
    timer: &mut Timer,
) -> io::Result<usize> {
    buf.reserve(READ_SIZE);
    match timer.within(deadline, io.read_buf(buf)).await {
        Some(r) => r,
        None => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
    }
}

/// Serves one HTTP/1 client connection until it closes. `rd` holds bytes already read.
pub(crate) async fn serve<C>(
    proxy: &Proxy,
    client: &mut C,
    mut rd: BytesMut,
    peer: SocketAddr,
    https: bool,
    shutdown: &CancellationToken,
) -> io::Result<Ended>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let opts = &proxy.opts;
    let mut first = true;
    let mut timer = Timer::new(Deadline::now() + opts.header_read_timeout);
    loop {
        // The request head, within the header read timeout (which also bounds an idle
        // keep-alive connection). Shutdown closes a connection that is between requests.
        let head_deadline = Deadline::now() + opts.header_read_timeout;
        let head = loop {
            if first && opts.http2 && !rd.is_empty() {
                let n = rd.len().min(H2_PREFACE.len());
                if rd[..n] == H2_PREFACE[..n] {
                    if n == H2_PREFACE.len() {
                        return Ok(Ended::Http2(rd));
                    }
                } else {
                    first = false;
                }
            }
            // Still telling an HTTP/2 preface from a request: read on.
            let sniffing = first && opts.http2;
            if !sniffing && !rd.is_empty() {
                match parse_request(&mut rd, opts.max_header_bytes) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(e) => {
                        // Nothing can be routed: answered here, and the connection closed.
                        let (status, message) = match e {
                            HeadError::TooLarge => (
                                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                                "Request header fields too large.".to_string(),
                            ),
                            HeadError::Bad(why) => {
                                (StatusCode::BAD_REQUEST, format!("Bad request: {why}."))
                            }
                        };
                        opts.metrics.record_router_error(cause::BAD_REQUEST);
                        let out = error_bytes(status, cause::BAD_REQUEST, None, &message, true);
                        client.write_all(&out).await?;
                        return Ok(Ended::Closed);
                    }
                }
            }
            let read = if rd.is_empty() {
                tokio::select! {
                    biased;
                    r = read_more(client, &mut rd, head_deadline, &mut timer) => r,
                    _ = shutdown.cancelled() => return Ok(Ended::Closed),
                }
            } else {
                read_more(client, &mut rd, head_deadline, &mut timer).await
            };
            match read {
                Ok(0) => return Ok(Ended::Closed),
                Ok(_) => {}
                // Slow or idle past the header read timeout: close, as nginx does.
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(Ended::Closed),
                Err(e) => return Err(e),
            }
        };
        first = false;
        let keep_alive = exchange(
            proxy, client, &mut rd, head, peer, https, shutdown, &mut timer,
        )
        .await?;
        if !keep_alive || shutdown.is_cancelled() {
            let _ = client.shutdown().await;
            return Ok(Ended::Closed);
        }
    }
}

/// What became of the request body.
#[derive(PartialEq, Eq)]
enum BodyState {
    /// Read to its end (or there was none).
    Done,
    /// Not (completely) read: the connection cannot carry another request.
    Unread,
}

/// One request and its response. Returns whether the client connection can carry another.
#[allow(clippy::too_many_arguments)]
async fn exchange<C>(
    proxy: &Proxy,
    client: &mut C,
    rd: &mut BytesMut,
    head: RequestHead,
    peer: SocketAddr,
    https: bool,
    shutdown: &CancellationToken,
    timer: &mut Timer,
) -> io::Result<bool>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let opts = &proxy.opts;
    let started = Instant::now();
    let deadline = Deadline::from_std(started) + opts.max_request_time;
    let RequestHead {
        method,
        path_and_query,
        target_host,
        http11,
        fields,
    } = head;
    let request_id = request_id_from(fields.first(b"x-vcap-request-id"));
    let host_count = fields.values(b"host").count();
    let host: Option<String> = target_host.or_else(|| {
        fields
            .first(b"host")
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|h| !h.is_empty())
            .map(str::to_string)
    });
    let mut log = RequestLog::new(
        proxy,
        method.as_str(),
        &path_and_query,
        (fields.first(b"user-agent"), fields.first(b"referer")),
        host.as_deref(),
        peer,
        request_id.clone(),
    );
    let received = Arc::new(AtomicU64::new(0));
    log.received = Some(Arc::clone(&received));
    let client_keep_alive = if http11 {
        !fields.has_token(b"connection", b"close")
    } else {
        fields.has_token(b"connection", b"keep-alive")
    };

    let framing = match request_framing(&fields, http11).and_then(|f| {
        if host_count > 1 {
            Err("several Host headers".to_string())
        } else {
            Ok(f)
        }
    }) {
        Ok(f) => f,
        Err(why) => {
            answer(
                client,
                &mut log,
                StatusCode::BAD_REQUEST,
                cause::BAD_REQUEST,
                &format!("Bad request: {why}."),
                true,
            )
            .await?;
            return Ok(false);
        }
    };
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query.as_str(), |(p, _)| p);
    if method == http::Method::CONNECT {
        answer(
            client,
            &mut log,
            StatusCode::METHOD_NOT_ALLOWED,
            cause::BAD_REQUEST,
            "CONNECT is not supported.",
            true,
        )
        .await?;
        return Ok(false);
    }
    let route = match proxy.route_for(host.as_deref(), path) {
        Ok(r) => r,
        Err(r) => {
            // A body that is already here is skipped; one still coming closes the connection.
            let body = skip_buffered_body(rd, framing);
            let close = body == BodyState::Unread || !client_keep_alive;
            answer(client, &mut log, r.status, r.cause, &r.message, close).await?;
            return Ok(!close);
        }
    };
    log.set_route(&route);
    let host = host.unwrap_or_default();

    let upgrade =
        (http11 && fields.has_token(b"connection", b"upgrade") && framing == Framing::None)
            .then(|| fields.first(b"upgrade"))
            .flatten();
    let expect_continue = framing != Framing::None
        && fields
            .first(b"expect")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    let sticky = sticky_instance_from(fields.values(b"cookie"));
    let xff = forwarded_for_from(fields.values(b"x-forwarded-for"), peer);
    log.set_xff(&xff);
    let mut common = BytesMut::with_capacity(fields.head.len() + 512);
    common.put_slice(method.as_str().as_bytes());
    common.put_u8(b' ');
    common.put_slice(path_and_query.as_bytes());
    common.put_slice(b" HTTP/1.1\r\n");
    put_request_fields(
        &mut common,
        &fields,
        &UpstreamExtras {
            host: &host,
            xff: &xff,
            https,
            request_id: &request_id,
            app_guid: route.app_guid_header().as_bytes(),
            upgrade,
            chunked: framing == Framing::Chunked,
        },
    );

    // Attempts: only a connection that could not be opened leads to another one.
    let attempts = opts.max_attempts.clamp(1, route.backends.len());
    let mut tried: Vec<usize> = Vec::with_capacity(attempts);
    let mut last_error: Option<io::Error> = None;
    let mut sent: Option<(usize, UpConn, u64)> = None;
    for attempt in 0..attempts {
        let Some(i) = proxy.pick_backend(&route, sticky.as_deref(), attempt, &tried) else {
            break;
        };
        tried.push(i);
        let backend = &route.backends[i];
        log.set_backend(backend);
        log.in_flight = Some(route.start_request(i));
        let mut out = BytesMut::with_capacity(common.len() + 160);
        out.put_slice(&common);
        out.put_slice(b"x-cf-instanceindex: ");
        out.put_slice(backend.index.to_string().as_bytes());
        out.put_slice(b"\r\nx-cf-instanceid: ");
        out.put_slice(route.instance_id_header(i).as_bytes());
        out.put_slice(b"\r\n\r\n");
        // A length-framed body already read goes out with the head, in one write.
        let mut body_in_head = 0usize;
        if let Framing::Length(n) = framing {
            body_in_head = (n.min(rd.len() as u64)) as usize;
            out.put_slice(&rd[..body_in_head]);
        }
        // A pooled connection first; if the instance closed it before the first byte was
        // written, a new connection to the same instance (nothing reached the app).
        let mut conn = proxy.h1_pool.take(backend.addr);
        let mut written = false;
        if let Some(c) = conn.as_mut() {
            match c.stream.write(&out).await {
                Ok(n) if n > 0 => {
                    written = true;
                    if n < out.len() {
                        if let Err(e) = c.stream.write_all(&out[n..]).await {
                            return upstream_failed(client, &route, i, &mut log, &e)
                                .await
                                .map(|()| false);
                        }
                    }
                }
                _ => conn = None,
            }
        }
        if conn.is_none() {
            match connect(backend.addr, opts.connect_timeout).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    proxy.connect_failed(&route, backend, &e, attempt + 1 < attempts);
                    log.in_flight = None;
                    last_error = Some(e);
                    continue;
                }
            }
        }
        let Some(mut conn) = conn else { continue };
        if !written {
            if let Err(e) = conn.stream.write_all(&out).await {
                return upstream_failed(client, &route, i, &mut log, &e)
                    .await
                    .map(|()| false);
            }
        }
        rd.advance(body_in_head);
        received.fetch_add(body_in_head as u64, std::sync::atomic::Ordering::Relaxed);
        let left = match framing {
            Framing::Length(n) => n - body_in_head as u64,
            _ => 0,
        };
        sent = Some((i, conn, left));
        break;
    }
    let Some((i, mut conn, left)) = sent else {
        let e = last_error.map(|e| e.to_string()).unwrap_or_default();
        tracing::warn!(app = %route.app, attempts = tried.len(), error = %e,
            "no instance accepted a connection");
        let body = skip_buffered_body(rd, framing);
        let close = body == BodyState::Unread || !client_keep_alive;
        answer(
            client,
            &mut log,
            StatusCode::BAD_GATEWAY,
            cause::BACKEND_ERROR,
            "No instance of the app accepted a connection.",
            close,
        )
        .await?;
        return Ok(!close);
    };
    let ctx = Exchange {
        proxy,
        route: &route,
        i,
        http11,
        client_keep_alive,
        head_request: method == http::Method::HEAD,
        upgrade: upgrade.is_some(),
        shutdown,
        deadline,
        sent_at: Instant::now(),
    };

    // The whole request is out: read the response.
    let more_body = left > 0 || framing == Framing::Chunked;
    if !more_body {
        let UpConn { stream, buf } = &mut conn;
        return match respond(&ctx, stream, buf, client, &mut log, timer).await? {
            Outcome::Done {
                client_open,
                reusable,
            } => {
                if reusable {
                    proxy.h1_pool.put(route.backends[i].addr, conn);
                }
                Ok(client_open)
            }
            Outcome::Upgraded => {
                // What either side sent after the heads goes first, then the two are spliced.
                if !rd.is_empty() {
                    conn.stream.write_all(rd).await?;
                    rd.clear();
                }
                if !conn.buf.is_empty() {
                    client.write_all(&conn.buf).await?;
                    conn.buf.clear();
                }
                drop(log);
                if let Err(e) = tokio::io::copy_bidirectional(client, &mut conn.stream).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
                Ok(false)
            }
        };
    }

    // A body still coming: forward it while the response is read and sent back (an instance may
    // answer, and stream, before the upload ends), both directions in this task.
    if expect_continue {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let (outcome, body_read) = {
        let (mut client_r, mut client_w) = tokio::io::split(&mut *client);
        let UpConn { stream, buf } = &mut conn;
        let (mut up_r, mut up_w) = stream.split();
        let mut body_timer = Timer::new(deadline);
        let body = async {
            let count = |n| {
                received.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            };
            match framing {
                Framing::Chunked => {
                    let out = BytesMut::with_capacity(READ_SIZE + 64);
                    copy_chunked(
                        &mut client_r,
                        rd,
                        &mut up_w,
                        out,
                        true,
                        deadline,
                        count,
                        CLIENT_EOF,
                        &mut body_timer,
                    )
                    .await
                }
                _ => {
                    copy_length(
                        &mut client_r,
                        rd,
                        &mut up_w,
                        left,
                        deadline,
                        count,
                        CLIENT_EOF,
                        &mut body_timer,
                    )
                    .await
                }
            }
        };
        let resp = respond(&ctx, &mut up_r, buf, &mut client_w, &mut log, timer);
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
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            tracing::debug!(error = %e, "request body not forwarded, or response not delivered");
            // A malformed chunked body before the instance answered: 400 (the instance's
            // connection, with its half-sent request, is dropped).
            if e.kind() == io::ErrorKind::InvalidData && log.status == 0 {
                let why = format!("Bad request: {e}.");
                let _ = answer(
                    client,
                    &mut log,
                    StatusCode::BAD_REQUEST,
                    cause::BAD_REQUEST,
                    &why,
                    true,
                )
                .await;
            }
            return Ok(false);
        }
    };
    match outcome {
        Outcome::Done {
            client_open,
            reusable,
        } => {
            if reusable && body_read {
                proxy.h1_pool.put(route.backends[i].addr, conn);
            }
            Ok(client_open && body_read)
        }
        // An upgrade carries no request body, so it is never answered here.
        Outcome::Upgraded => Ok(false),
    }
}

/// What the response phase needs to know about its request.
struct Exchange<'a> {
    proxy: &'a Proxy,
    route: &'a Arc<crate::table::Route>,
    i: usize,
    http11: bool,
    client_keep_alive: bool,
    head_request: bool,
    upgrade: bool,
    shutdown: &'a CancellationToken,
    deadline: Deadline,
    sent_at: Instant,
}

enum Outcome {
    /// The response was delivered (or the exchange ended): whether the client connection can
    /// carry another request, and whether the instance connection can go back to the pool.
    Done { client_open: bool, reusable: bool },
    /// 101 was passed on: splice the two connections.
    Upgraded,
}

/// Reads the instance's response from `up` (after what `up_buf` holds) and writes it to the
/// client. Router errors (502, 504) are written here too, as long as nothing else was.
async fn respond<R, W>(
    x: &Exchange<'_>,
    up: &mut R,
    up_buf: &mut BytesMut,
    client: &mut W,
    log: &mut RequestLog,
    timer: &mut Timer,
) -> io::Result<Outcome>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let opts = &x.proxy.opts;
    let backend = &x.route.backends[x.i];
    let failed = |_: ()| Outcome::Done {
        client_open: false,
        reusable: false,
    };
    // The response head; interim (1xx) answers are passed on to an HTTP/1.1 client.
    let head_deadline = (Deadline::now() + opts.upstream_timeout).min(x.deadline);
    let resp = loop {
        match parse_response(up_buf) {
            Ok(Some(h))
                if h.status.is_informational() && h.status != StatusCode::SWITCHING_PROTOCOLS =>
            {
                if x.http11 {
                    let mut out = BytesMut::with_capacity(256);
                    put_status_line(&mut out, h.status, h.reason());
                    put_response_fields(&mut out, &h, false);
                    out.put_slice(b"\r\n");
                    client.write_all(&out).await?;
                }
                continue;
            }
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(why) => {
                let e = io::Error::new(io::ErrorKind::InvalidData, why);
                return upstream_failed(client, x.route, x.i, log, &e)
                    .await
                    .map(failed);
            }
        }
        match read_more(up, up_buf, head_deadline, timer).await {
            Ok(0) => {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the instance closed the connection without answering",
                );
                return upstream_failed(client, x.route, x.i, log, &e)
                    .await
                    .map(failed);
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                tracing::warn!(app = %x.route.app, instance = backend.index, addr = %backend.addr,
                    timeout_ms = opts.upstream_timeout.as_millis() as u64,
                    max_request_ms = opts.max_request_time.as_millis() as u64,
                    "instance did not answer in time");
                answer(
                    client,
                    log,
                    StatusCode::GATEWAY_TIMEOUT,
                    cause::UPSTREAM_TIMEOUT,
                    "The app's instance did not answer in time.",
                    true,
                )
                .await?;
                return Ok(failed(()));
            }
            Err(e) => {
                return upstream_failed(client, x.route, x.i, log, &e)
                    .await
                    .map(failed)
            }
        }
    };
    opts.metrics.record_upstream_latency(x.sent_at.elapsed());
    let body = match response_framing(&resp, x.head_request) {
        Ok(f) => f,
        Err(why) => {
            let e = io::Error::new(io::ErrorKind::InvalidData, why);
            return upstream_failed(client, x.route, x.i, log, &e)
                .await
                .map(failed);
        }
    };
    let switching = resp.status == StatusCode::SWITCHING_PROTOCOLS;
    if switching && !x.upgrade {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            "101 to a request without Upgrade",
        );
        return upstream_failed(client, x.route, x.i, log, &e)
            .await
            .map(failed);
    }
    let upstream_keep_alive = !switching
        && if resp.http11 {
            !resp.fields.has_token(b"connection", b"close")
        } else {
            resp.fields.has_token(b"connection", b"keep-alive")
        };
    let status = resp.status;
    log.status = status.as_u16();

    // How the client gets the body, and whether its connection stays open.
    let chunk_out = matches!(body, Framing::Chunked | Framing::Close) && x.http11;
    let close_client = !x.client_keep_alive
        || x.shutdown.is_cancelled()
        || (matches!(body, Framing::Chunked | Framing::Close) && !x.http11);
    let mut out = BytesMut::with_capacity(resp.fields.head.len() + 128);
    put_status_line(&mut out, status, resp.reason());
    put_response_fields(&mut out, &resp, switching);
    out.put_slice(b"x-vcap-request-id: ");
    out.put_slice(log.request_id.as_bytes());
    out.put_slice(b"\r\n");
    if let Some(cookie) = sticky_cookie(resp.values(b"set-cookie"), &backend.instance_id) {
        out.put_slice(b"set-cookie: ");
        out.put_slice(cookie.as_bytes());
        out.put_slice(b"\r\n");
    }
    if chunk_out {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    }
    if !switching {
        if close_client {
            out.put_slice(b"connection: close\r\n");
        } else if !x.http11 {
            out.put_slice(b"connection: keep-alive\r\n");
        }
    }
    out.put_slice(b"\r\n");

    if switching {
        client.write_all(&out).await?;
        return Ok(Outcome::Upgraded);
    }
    let result = match body {
        Framing::None => {
            log.finish();
            client.write_all(&out).await
        }
        Framing::Length(n) => {
            let take = n.min(up_buf.len() as u64) as usize;
            out.put_slice(&up_buf[..take]);
            up_buf.advance(take);
            log.bytes_sent += take as u64;
            if take as u64 == n {
                log.finish();
            }
            match client.write_all(&out).await {
                Ok(()) => {
                    let left = n - take as u64;
                    let count = |n| log.bytes_sent += n;
                    copy_length(
                        up,
                        up_buf,
                        client,
                        left,
                        x.deadline,
                        count,
                        INSTANCE_EOF,
                        timer,
                    )
                    .await
                }
                Err(e) => Err(e),
            }
        }
        Framing::Chunked => {
            let count = |n| log.bytes_sent += n;
            let deadline = x.deadline;
            copy_chunked(
                up,
                up_buf,
                client,
                out,
                chunk_out,
                deadline,
                count,
                INSTANCE_EOF,
                timer,
            )
            .await
        }
        Framing::Close => {
            copy_response_to_close(client, up, up_buf, out, chunk_out, x.deadline, log, timer).await
        }
    };
    match result {
        Ok(()) => Ok(Outcome::Done {
            client_open: !close_client,
            reusable: upstream_keep_alive && body != Framing::Close && up_buf.is_empty(),
        }),
        Err(e) => {
            if e.kind() == io::ErrorKind::TimedOut {
                log.timed_out();
            } else {
                tracing::debug!(error = %e, "response not delivered");
            }
            Ok(failed(()))
        }
    }
}

/// Answers the request with a response the router makes itself, counted and logged first.
async fn answer<W: AsyncWrite + Unpin>(
    client: &mut W,
    log: &mut RequestLog,
    status: StatusCode,
    cause: &'static str,
    message: &str,
    close: bool,
) -> io::Result<()> {
    log.refused(status, cause);
    let out = error_bytes(status, cause, Some(&log.request_id), message, close);
    log.finish();
    client.write_all(&out).await
}

/// The instance failed after the request may have reached it: 502 if nothing was sent to the
/// client yet (never a replay), and the connection closes.
async fn upstream_failed<C>(
    client: &mut C,
    route: &crate::table::Route,
    i: usize,
    log: &mut RequestLog,
    e: &io::Error,
) -> io::Result<()>
where
    C: AsyncWrite + Unpin,
{
    let b = &route.backends[i];
    tracing::warn!(app = %route.app, instance = b.index, addr = %b.addr, error = %e,
        "request to instance failed");
    let _ = answer(
        client,
        log,
        StatusCode::BAD_GATEWAY,
        cause::BACKEND_ERROR,
        "The app's instance failed to answer the request.",
        true,
    )
    .await;
    Ok(())
}

/// Skips a request body that is already in `rd` entirely.
fn skip_buffered_body(rd: &mut BytesMut, framing: Framing) -> BodyState {
    match framing {
        Framing::None => BodyState::Done,
        Framing::Length(n) if n <= rd.len() as u64 => {
            rd.advance(n as usize);
            BodyState::Done
        }
        _ => BodyState::Unread,
    }
}

/// Copies `left` more body bytes from `from` (after what `buf` holds) to `to`, telling `count`
/// how many went; `eof` says who closed too early.
#[allow(clippy::too_many_arguments)]
async fn copy_length<R, W>(
    from: &mut R,
    buf: &mut BytesMut,
    to: &mut W,
    mut left: u64,
    deadline: Deadline,
    mut count: impl FnMut(u64),
    eof: &'static str,
    timer: &mut Timer,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while left > 0 {
        if buf.is_empty() && read_more(from, buf, deadline, timer).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, eof));
        }
        let take = left.min(buf.len() as u64) as usize;
        to.write_all(&buf[..take]).await?;
        buf.advance(take);
        left -= take as u64;
        count(take as u64);
    }
    Ok(())
}

fn bad_chunk(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Decodes a chunked body read from `from` (after what `buf` holds) and writes it to `to`,
/// after what `out` already holds: chunked again in chunks of our own (`chunk_out`), or bare
/// (a response to an HTTP/1.0 client, delimited by closing the connection).
#[allow(clippy::too_many_arguments)]
async fn copy_chunked<R, W>(
    from: &mut R,
    buf: &mut BytesMut,
    to: &mut W,
    mut out: BytesMut,
    chunk_out: bool,
    deadline: Deadline,
    mut count: impl FnMut(u64),
    eof: &'static str,
    timer: &mut Timer,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut dec = Decoder::new();
    loop {
        match dec.next(buf).map_err(bad_chunk)? {
            Chunk::Data(d) => {
                count(d.len() as u64);
                if chunk_out {
                    chunked::encode_chunk(&mut out, &d);
                } else {
                    out.put_slice(&d);
                }
            }
            Chunk::Done => {
                if chunk_out {
                    out.put_slice(chunked::LAST_CHUNK);
                }
                return to.write_all(&out).await;
            }
            Chunk::NeedMore => {
                if !out.is_empty() {
                    to.write_all(&out).await?;
                    out.clear();
                }
                if read_more(from, buf, deadline, timer).await? == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, eof));
                }
            }
        }
    }
}

const CLIENT_EOF: &str = "the client closed the connection in the middle of the body";
const INSTANCE_EOF: &str = "the instance closed the connection in the middle of the body";

/// A response body delimited by the instance closing the connection.
#[allow(clippy::too_many_arguments)]
async fn copy_response_to_close<C, U>(
    client: &mut C,
    up: &mut U,
    buf: &mut BytesMut,
    mut out: BytesMut,
    chunk_out: bool,
    deadline: Deadline,
    log: &mut RequestLog,
    timer: &mut Timer,
) -> io::Result<()>
where
    C: AsyncWrite + Unpin,
    U: AsyncRead + Unpin,
{
    loop {
        if !buf.is_empty() {
            let data: Bytes = buf.split().freeze();
            log.bytes_sent += data.len() as u64;
            if chunk_out {
                chunked::encode_chunk(&mut out, &data);
            } else {
                out.put_slice(&data);
            }
        }
        if !out.is_empty() {
            client.write_all(&out).await?;
            out.clear();
        }
        if read_more(up, buf, deadline, timer).await? == 0 {
            if chunk_out {
                client.write_all(chunked::LAST_CHUNK).await?;
            }
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Option<RequestHead>, HeadError> {
        let mut b = BytesMut::from(raw.as_bytes());
        parse_request(&mut b, 64 * 1024)
    }

    fn framing(raw: &str) -> Result<Framing, String> {
        match head(raw) {
            Ok(Some(h)) => request_framing(&h.fields, h.http11),
            _ => Err("unparsed".into()),
        }
    }

    #[test]
    fn request_framing_refuses_ambiguity() {
        assert_eq!(
            framing("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Framing::None)
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        for bad in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(framing(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn heads_are_parsed_or_refused() {
        let h =
            head("GET http://Example.com:8080/a?b HTTP/1.1\r\nHost: other\r\nX-A: 1\r\n\r\nrest")
                .ok()
                .flatten()
                .unwrap();
        assert_eq!(h.path_and_query, "/a?b");
        assert_eq!(h.target_host.as_deref(), Some("Example.com:8080"));
        assert_eq!(h.fields.first(b"x-a"), Some(&b"1"[..]));
        assert!(matches!(head("GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None)));
        assert!(matches!(
            head("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"),
            Err(HeadError::Bad(_))
        ));
        assert!(matches!(
            head("GET / HTTP/1.1\r\nX a\r\n\r\n"),
            Err(HeadError::Bad(_))
        ));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(matches!(
            head(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Err(HeadError::TooLarge)
        ));
        let mut big = BytesMut::from(&b"GET / HTTP/1.1\r\nX: "[..]);
        big.extend_from_slice(&[b'a'; 2000]);
        assert!(matches!(
            parse_request(&mut big, 1024),
            Err(HeadError::TooLarge)
        ));
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let resp = |raw: &str| {
            let mut b = BytesMut::from(raw.as_bytes());
            parse_response(&mut b).unwrap().unwrap()
        };
        let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(response_framing(&r, false), Ok(Framing::Length(3)));
        assert_eq!(response_framing(&r, true), Ok(Framing::None));
        let r = resp("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(response_framing(&r, false), Ok(Framing::None));
        let r = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(response_framing(&r, false), Ok(Framing::Chunked));
        let r = resp("HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!(response_framing(&r, false), Ok(Framing::Close));
        let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
        assert!(response_framing(&r, false).is_err());
        let mut b = BytesMut::from(&b"HTTP/1.1 abc\r\n\r\n"[..]);
        assert!(parse_response(&mut b).is_err());
    }

    #[test]
    fn response_fields_lose_hop_by_hop_ones() {
        let mut b = BytesMut::from(
            &b"HTTP/1.1 200 Fine\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\n\
               X-Private: secret\r\nTransfer-Encoding: chunked\r\nX-Vcap-Request-Id: forged\r\n\
               Set-Cookie: JSESSIONID=abc; Path=/app\r\nX-Kept: yes\r\n\r\n"[..],
        );
        let head = parse_response(&mut b).unwrap().unwrap();
        assert_eq!(head.reason(), b"Fine");
        let mut out = BytesMut::new();
        put_response_fields(&mut out, &head, false);
        let s = String::from_utf8(out.to_vec()).unwrap();
        assert_eq!(
            s,
            "Set-Cookie: JSESSIONID=abc; Path=/app\r\nX-Kept: yes\r\n"
        );
        let cookie = sticky_cookie(head.values(b"set-cookie"), "inst-1").unwrap();
        assert_eq!(cookie, "__VCAP_ID__=inst-1; Path=/app");
        // A 101 keeps Connection and Upgrade for the client.
        let mut out = BytesMut::new();
        put_response_fields(&mut out, &head, true);
        assert!(String::from_utf8(out.to_vec())
            .unwrap()
            .starts_with("Connection: keep-alive"));
    }

    #[test]
    fn request_fields_for_the_instance() {
        let h = head(
            "POST /p HTTP/1.1\r\nHost: a.localhost\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
             Expect: 100-continue\r\nX-Forwarded-For: 1.2.3.4\r\nX-CF-InstanceID: forged\r\n\
             Content-Length: 3, 3\r\nX-App: kept\r\nTraceparent: 00-t-s-01\r\n\r\n",
        )
        .ok()
        .flatten()
        .unwrap();
        let id = HeaderValue::from_static("rid");
        let mut out = BytesMut::new();
        put_request_fields(
            &mut out,
            &h.fields,
            &UpstreamExtras {
                host: "a.localhost",
                xff: "1.2.3.4, 127.0.0.1",
                https: false,
                request_id: &id,
                app_guid: b"guid",
                upgrade: None,
                chunked: false,
            },
        );
        let s = String::from_utf8(out.to_vec()).unwrap();
        for absent in ["X-Hop", "Connection", "Expect", "forged", "1.2.3.4\r\n"] {
            assert!(!s.contains(absent), "{absent} in {s}");
        }
        for present in [
            "Host: a.localhost\r\n",
            "X-App: kept\r\n",
            "Traceparent: 00-t-s-01\r\n",
            "content-length: 3\r\n",
            "x-forwarded-for: 1.2.3.4, 127.0.0.1\r\n",
            "x-forwarded-proto: http\r\n",
            "x-forwarded-host: a.localhost\r\n",
            "x-vcap-request-id: rid\r\n",
            "x-cf-applicationid: guid\r\n",
            "x-request-start: ",
        ] {
            assert!(s.contains(present), "{present} not in {s}");
        }
        assert!(
            !s.contains("traceparent: "),
            "the client's traceparent is kept: {s}"
        );
    }

    #[test]
    fn error_responses_name_their_cause() {
        let id = HeaderValue::from_static("rid");
        let out = error_bytes(
            StatusCode::NOT_FOUND,
            "unknown_route",
            Some(&id),
            "no",
            true,
        );
        let s = String::from_utf8(out.to_vec()).unwrap();
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"), "{s}");
        assert!(s.contains("x-pier-router-error: unknown_route\r\n"), "{s}");
        assert!(s.contains("x-vcap-request-id: rid\r\n"), "{s}");
        assert!(s.contains("content-length: 3\r\n"), "{s}");
        assert!(s.contains("connection: close\r\n"), "{s}");
        assert!(s.ends_with("\r\n\r\nno\n"), "{s}");
    }
}

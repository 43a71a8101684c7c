//! The per-connection serve loop and one exchange.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant as Deadline;
use tokio_util::sync::CancellationToken;

use super::body::{copy_chunked, copy_length, skip_buffered_body, BodyState, CLIENT_EOF};
use super::fields::{error_bytes, put_field, put_request_fields};
use super::head::{parse_request, request_framing, Framing, HeadError, RequestHead};
use super::respond::{answer, respond, upstream_failed, Exchange, Outcome};
use super::timer::{read_more, Timer};
use super::upstream::{connect, UpConn};
use super::{H2_PREFACE, READ_SIZE};
use crate::headers::{self, forwarded_for_from, request_id_from, sticky_instance_from, Forwarded};
use crate::proxy::{cause, Proxy, RequestLog};

/// How a connection ended.
pub(crate) enum Ended {
    /// Closed (by either side, or after an error answer).
    Closed,
    /// The client sent the HTTP/2 preface: serve it as h2c; the bytes read so far come first.
    Http2(BytesMut),
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
        &Forwarded {
            host: &host,
            xff: &xff,
            https,
            request_id: &request_id,
            app_guid: route.app_guid_header(),
            upgrade,
        },
        framing == Framing::Chunked,
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
        headers::instance_fields(backend.index, route.instance_id_header(i), |name, value| {
            put_field(&mut out, name.as_bytes(), value)
        });
        out.put_slice(b"\r\n");
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

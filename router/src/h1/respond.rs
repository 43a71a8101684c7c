//! The response phase: reading the instance's response and relaying it to the client.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant as Deadline;
use tokio_util::sync::CancellationToken;

use super::body::{copy_chunked, copy_length, copy_response_to_close, INSTANCE_EOF};
use super::fields::{
    error_bytes, put_response_fields, put_router_response_fields, put_status_line,
};
use super::head::{parse_response, response_framing, Framing};
use super::timer::{read_more, Timer};
use crate::proxy::{cause, Proxy, RequestLog};

/// What the response phase needs to know about its request.
pub(super) struct Exchange<'a> {
    pub(super) proxy: &'a Proxy,
    pub(super) route: &'a Arc<crate::table::Route>,
    pub(super) i: usize,
    pub(super) http11: bool,
    pub(super) client_keep_alive: bool,
    pub(super) head_request: bool,
    pub(super) upgrade: bool,
    pub(super) shutdown: &'a CancellationToken,
    pub(super) deadline: Deadline,
    pub(super) sent_at: Instant,
}

pub(super) enum Outcome {
    /// The response was delivered (or the exchange ended): whether the client connection can
    /// carry another request, and whether the instance connection can go back to the pool.
    Done { client_open: bool, reusable: bool },
    /// 101 was passed on: splice the two connections.
    Upgraded,
}

/// Reads the instance's response from `up` (after what `up_buf` holds) and writes it to the
/// client. Router errors (502, 504) are written here too, as long as nothing else was.
pub(super) async fn respond<R, W>(
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
    put_router_response_fields(&mut out, &resp, &log.request_id, &backend.instance_id);
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
pub(super) async fn answer<W: AsyncWrite + Unpin>(
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
pub(super) async fn upstream_failed<C>(
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

//! Request and response bodies: copies of a length-framed, a chunked and a close-delimited body.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant as Deadline;

use super::chunked::{self, Chunk, Decoder};
use super::head::Framing;
use super::timer::{read_more, Timer};
use crate::proxy::RequestLog;

/// What became of the request body.
#[derive(PartialEq, Eq)]
pub(super) enum BodyState {
    /// Read to its end (or there was none).
    Done,
    /// Not (completely) read: the connection cannot carry another request.
    Unread,
}

/// Skips a request body that is already in `rd` entirely.
pub(super) fn skip_buffered_body(rd: &mut BytesMut, framing: Framing) -> BodyState {
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
pub(super) async fn copy_length<R, W>(
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
pub(super) async fn copy_chunked<R, W>(
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

pub(super) const CLIENT_EOF: &str = "the client closed the connection in the middle of the body";
pub(super) const INSTANCE_EOF: &str =
    "the instance closed the connection in the middle of the body";

/// A response body delimited by the instance closing the connection.
#[allow(clippy::too_many_arguments)]
pub(super) async fn copy_response_to_close<C, U>(
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

//! Request and response bodies: copying a length-framed, a chunked or a close-delimited body
//! from one side to the other.
//!
//! A body is never buffered whole: each read is written on before the next. A chunked body is
//! decoded and written in chunks of the router's own (or bare, to an HTTP/1.0 client), so a
//! framing the router did not check never reaches the other side. A side that closes before
//! the body ends is an `UnexpectedEof` naming who closed.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant as Deadline;

use super::chunked::{self, Chunk, Decoder};
use super::head::Framing;
use super::timer::{read_more, Timer};

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

pub(super) const CLIENT_EOF: &str = "the client closed the connection in the middle of the body";
/// The error of a request body read that waited longer than the body read timeout.
pub(super) const BODY_IDLE: &str =
    "the client sent no byte of the body within the body read timeout";
pub(super) const INSTANCE_EOF: &str =
    "the instance closed the connection in the middle of the body";

/// One body on its way from one side to the other: where it is read from (after what `buf`
/// already holds), where it goes, and the deadline its reads are held to.
pub(super) struct BodyCopy<'a, R, W, F> {
    pub(super) from: &'a mut R,
    pub(super) buf: &'a mut BytesMut,
    pub(super) to: &'a mut W,
    pub(super) deadline: Deadline,
    /// Longest one read may wait (the request body read timeout), within `deadline`.
    pub(super) idle: Option<std::time::Duration>,
    pub(super) timer: &'a mut Timer,
    /// Told how many body bytes went, for the access log.
    pub(super) count: F,
    /// The error when `from` closes before the body ends (it says who closed).
    pub(super) eof: &'static str,
}

impl<R, W, F> BodyCopy<'_, R, W, F>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: FnMut(u64),
{
    /// Copies `left` more body bytes.
    pub(super) async fn length(mut self, mut left: u64) -> io::Result<()> {
        while left > 0 {
            if self.buf.is_empty() && self.read_more().await? == 0 {
                return Err(self.closed_early());
            }
            let take = left.min(self.buf.len() as u64) as usize;
            self.to.write_all(&self.buf[..take]).await?;
            self.buf.advance(take);
            left -= take as u64;
            (self.count)(take as u64);
        }
        Ok(())
    }

    /// Decodes a chunked body and writes it after what `out` already holds: chunked again in
    /// chunks of our own (`chunk_out`), or bare (a response to an HTTP/1.0 client, delimited by
    /// closing the connection).
    pub(super) async fn chunked(mut self, mut out: BytesMut, chunk_out: bool) -> io::Result<()> {
        let mut dec = Decoder::new();
        loop {
            match dec.next(self.buf).map_err(bad_chunk)? {
                Chunk::Data(d) => {
                    (self.count)(d.len() as u64);
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
                    return self.to.write_all(&out).await;
                }
                Chunk::NeedMore => {
                    if !out.is_empty() {
                        self.to.write_all(&out).await?;
                        out.clear();
                    }
                    if self.read_more().await? == 0 {
                        return Err(self.closed_early());
                    }
                }
            }
        }
    }

    /// A body delimited by `from` closing the connection (responses only), written after
    /// what `out` already holds, chunked for the client or bare as [`Self::chunked`].
    pub(super) async fn until_close(
        mut self,
        mut out: BytesMut,
        chunk_out: bool,
    ) -> io::Result<()> {
        loop {
            if !self.buf.is_empty() {
                let data: Bytes = self.buf.split().freeze();
                (self.count)(data.len() as u64);
                if chunk_out {
                    chunked::encode_chunk(&mut out, &data);
                } else {
                    out.put_slice(&data);
                }
            }
            if !out.is_empty() {
                self.to.write_all(&out).await?;
                out.clear();
            }
            if self.read_more().await? == 0 {
                if chunk_out {
                    self.to.write_all(chunked::LAST_CHUNK).await?;
                }
                return Ok(());
            }
        }
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        let Some(idle) = self.idle else {
            return read_more(self.from, self.buf, self.deadline, self.timer).await;
        };
        let stall = Deadline::now() + idle;
        if stall >= self.deadline {
            return read_more(self.from, self.buf, self.deadline, self.timer).await;
        }
        match read_more(self.from, self.buf, stall, self.timer).await {
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                Err(io::Error::new(io::ErrorKind::TimedOut, BODY_IDLE))
            }
            r => r,
        }
    }

    fn closed_early(&self) -> io::Error {
        io::Error::new(io::ErrorKind::UnexpectedEof, self.eof)
    }
}

fn bad_chunk(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

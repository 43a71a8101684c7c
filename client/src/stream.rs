//! Typed streams over a response body: NDJSON ([`BuildEvents`]) and server-sent events
//! ([`LogEvents`]).
//!
//! ```text
//! body chunks ─► LineStream: rejoin lines split across chunks ─► Decoder::line ─► queue
//!                                                                   queue ─► Decoder::take ─► items
//! ```
//! The queue sits between decoding and handing out so that state a decoder keeps about what was
//! handed out (the SSE resume point) moves only as items are taken, never ahead of them.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use pier_api::{BuildEvent, LogEvent};
use serde::de::DeserializeOwned;

use crate::error::{ClientError, Result};

/// Turns lines into queued outputs, and queued outputs into items.
pub(crate) trait Decoder: Unpin {
    type Out: Unpin;
    type Item;
    /// One line, without its `\n` (and without a `\r` before it).
    fn line(&mut self, line: &[u8], out: &mut VecDeque<Self::Out>);
    /// An output leaves the queue: the item to hand out, or None to skip it.
    fn take(&mut self, out: Self::Out) -> Option<Result<Self::Item>>;
}

/// A response body as a stream of decoded items. A body error ends it after one `Err`.
pub(crate) struct LineStream<D: Decoder> {
    body: BoxStream<'static, Result<Bytes>>,
    buf: Vec<u8>,
    queue: VecDeque<D::Out>,
    ended: bool,
    decoder: D,
}

impl<D: Decoder> LineStream<D> {
    pub(crate) fn new(body: BoxStream<'static, Result<Bytes>>, decoder: D) -> Self {
        LineStream {
            body,
            buf: Vec::new(),
            queue: VecDeque::new(),
            ended: false,
            decoder,
        }
    }

    fn split(&mut self) {
        let mut start = 0;
        while let Some(i) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[start..start + i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            self.decoder.line(line, &mut self.queue);
            start += i + 1;
        }
        self.buf.drain(..start);
    }
}

impl<D: Decoder> Stream for LineStream<D> {
    type Item = Result<D::Item>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            while let Some(out) = this.queue.pop_front() {
                if let Some(item) = this.decoder.take(out) {
                    return Poll::Ready(Some(item));
                }
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match this.body.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    this.buf.extend_from_slice(&chunk);
                    this.split();
                }
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    this.buf.clear();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    // A last line without a newline still counts.
                    if !this.buf.is_empty() {
                        let rest = std::mem::take(&mut this.buf);
                        this.decoder.line(&rest, &mut this.queue);
                    }
                }
            }
        }
    }
}

/// Newline-delimited JSON: one `T` per non-blank line.
pub(crate) struct Ndjson<T> {
    what: &'static str,
    _t: PhantomData<fn() -> T>,
}

impl<T> Ndjson<T> {
    pub(crate) fn new(what: &'static str) -> Self {
        Ndjson {
            what,
            _t: PhantomData,
        }
    }
}

impl<T: DeserializeOwned + Unpin> Decoder for Ndjson<T> {
    type Out = Result<T>;
    type Item = T;

    fn line(&mut self, line: &[u8], out: &mut VecDeque<Result<T>>) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        out.push_back(
            serde_json::from_slice(line).map_err(|e| ClientError::Decode {
                what: self.what,
                detail: format!("{e} in {:?}", String::from_utf8_lossy(line).trim_end()),
            }),
        );
    }

    fn take(&mut self, out: Result<T>) -> Option<Result<T>> {
        Some(out)
    }
}

/// A build's output (`POST /v1/apps/{name}/builds`): staging lines as they are printed, then one
/// `Done` or `Error`. An undecodable line is an `Err` item; the stream goes on after it.
pub struct BuildEvents(pub(crate) LineStream<Ndjson<BuildEvent>>);

impl Stream for BuildEvents {
    type Item = Result<BuildEvent>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0).poll_next(cx)
    }
}

/// What the SSE decoder queues: an event, or only a new resume point.
pub(crate) enum SseOut {
    Event(LogEvent),
    Id(u64),
}

/// Server-sent events as the controller writes them: `id: <seq>`, `data: <one JSON line>`, a blank
/// line. Comments (`: keep-alive`) and other fields are skipped. An event with an id and no data
/// (the controller sends one first) only moves the resume point; so does an event this client
/// cannot decode (a newer controller's kind), which is skipped.
#[derive(Default)]
pub(crate) struct Sse {
    id: Option<u64>,
    data: Vec<u8>,
    last_id: Option<u64>,
}

impl Decoder for Sse {
    type Out = SseOut;
    type Item = LogEvent;

    fn line(&mut self, line: &[u8], out: &mut VecDeque<SseOut>) {
        if line.is_empty() {
            let id = self.id.take();
            if !self.data.is_empty() {
                match serde_json::from_slice::<LogEvent>(&self.data) {
                    Ok(e) => out.push_back(SseOut::Event(e)),
                    Err(_) => out.extend(id.map(SseOut::Id)),
                }
                self.data.clear();
            } else {
                out.extend(id.map(SseOut::Id));
            }
        } else if let Some(v) = line.strip_prefix(b"data:") {
            if !self.data.is_empty() {
                self.data.push(b'\n');
            }
            self.data
                .extend_from_slice(v.strip_prefix(b" ").unwrap_or(v));
        } else if let Some(v) = line.strip_prefix(b"id:") {
            self.id = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse().ok());
        }
    }

    fn take(&mut self, out: SseOut) -> Option<Result<LogEvent>> {
        match out {
            SseOut::Event(e) => {
                self.last_id = Some(e.seq());
                Some(Ok(e))
            }
            SseOut::Id(id) => {
                self.last_id = Some(id);
                None
            }
        }
    }
}

/// One connection of an app's log stream (`GET /v1/apps/{name}/logs/stream`): every event in
/// `seq` order until the connection ends. A transport error is one `Err` item, then the end.
///
/// To resume after the stream ends, open a new one with [`LogStart::After`] at
/// [`LogEvents::last_event_id`]: the id of the last event handed out, or of the id-only and
/// skipped events the controller sent after it, so a reader that reconnects before any line
/// arrived resumes where its first connection started.
pub struct LogEvents(pub(crate) LineStream<Sse>);

impl LogEvents {
    pub fn last_event_id(&self) -> Option<u64> {
        self.0.decoder.last_id
    }
}

impl Stream for LogEvents {
    type Item = Result<LogEvent>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0).poll_next(cx)
    }
}

/// Where a log stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStart {
    /// With the last N buffered lines (None: all the controller holds), then live.
    Recent(Option<usize>),
    /// After this `seq` (a resume), sent as `?after=` (the controller also reads
    /// `Last-Event-ID`).
    After(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(chunks: &[&'static [u8]]) -> BoxStream<'static, Result<Bytes>> {
        let chunks: Vec<Result<Bytes>> = chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        futures_util::stream::iter(chunks).boxed()
    }

    #[tokio::test]
    async fn ndjson_rejoins_split_lines_and_keeps_a_last_line_without_newline() {
        let s = LineStream::new(
            body(&[b"{\"a\":1}\n{\"a\"", b":2}\r\n\n", b"{\"a\":3}"]),
            Ndjson::<serde_json::Value>::new("test"),
        );
        let out: Vec<serde_json::Value> = s.map(|r| r.unwrap()).collect().await;
        let a: Vec<i64> = out.iter().map(|v| v["a"].as_i64().unwrap()).collect();
        assert_eq!(a, [1, 2, 3]);
    }

    #[tokio::test]
    async fn ndjson_reports_a_bad_line_and_goes_on() {
        let s = LineStream::new(
            body(&[b"{\"a\":1}\nnope\n{\"a\":2}\n"]),
            Ndjson::<serde_json::Value>::new("test"),
        );
        let out: Vec<Result<serde_json::Value>> = s.collect().await;
        assert_eq!(out.len(), 3);
        assert!(
            matches!(&out[1], Err(ClientError::Decode { what: "test", detail }) if detail.contains("nope"))
        );
    }

    #[tokio::test]
    async fn sse_events_are_rejoined_across_chunks_and_ids_move_the_resume_point() {
        let line = r#"{"type":"line","seq":42,"time":"2026-11-25T12:00:05.36Z","source":"APP/PROC/WEB/0","stream":"OUT","text":"hi"}"#;
        let drop = r#"{"type":"dropped","first_seq":43,"last_seq":45,"count":3,"time":"2026-11-25T12:00:05Z","reason":"r"}"#;
        let all = format!(
            "id: 42\ndata: {line}\n\nid: 45\r\ndata: {drop}\r\n\r\nid: 46\ndata: {{\"type\":\"future\"}}\n\n"
        );
        let all: &'static [u8] = Box::leak(all.into_bytes().into_boxed_slice());
        let (a, b) = all.split_at(30);
        let mut s = LogEvents(LineStream::new(
            body(&[b"id: 41\n\n: keep-alive\n\n", a, b]),
            Sse::default(),
        ));
        assert_eq!(s.last_event_id(), None);
        let first = s.next().await.unwrap().unwrap();
        assert!(matches!(&first, LogEvent::Line(l) if l.text == "hi"));
        assert_eq!(s.last_event_id(), Some(42));
        let second = s.next().await.unwrap().unwrap();
        assert!(matches!(&second, LogEvent::Dropped(d) if d.count == 3));
        assert_eq!(s.last_event_id(), Some(45));
        // An event kind this client does not know is skipped; its id still counts.
        assert!(s.next().await.is_none());
        assert_eq!(s.last_event_id(), Some(46));
    }

    #[tokio::test]
    async fn sse_an_id_only_event_before_any_line_sets_the_resume_point() {
        let mut s = LogEvents(LineStream::new(body(&[b"id: 7\n\n"]), Sse::default()));
        assert!(s.next().await.is_none());
        assert_eq!(s.last_event_id(), Some(7));
    }

    #[tokio::test]
    async fn a_body_error_ends_the_stream_after_one_err() {
        let chunks: Vec<Result<Bytes>> = vec![
            Ok(Bytes::from_static(b"{\"a\":1}\n{\"a\"")),
            Err(ClientError::Decode {
                what: "cut",
                detail: String::new(),
            }),
            Ok(Bytes::from_static(b"{\"a\":2}\n")),
        ];
        let s = LineStream::new(
            futures_util::stream::iter(chunks).boxed(),
            Ndjson::<serde_json::Value>::new("test"),
        );
        let out: Vec<Result<serde_json::Value>> = s.collect().await;
        assert_eq!(out.len(), 2);
        assert!(out[0].is_ok() && out[1].is_err());
    }
}

//! Ingest: a container's output, as the runtime delivers it (entries of `<RFC 3339 time> <bytes>`,
//! a line or a part of one), becomes log lines with the time they were written. One splitter
//! serves instances and staging, so both bound line length the same way.

use std::sync::Arc;

use futures_util::StreamExt;
use pier_api::logs::MAX_LINE_BYTES;
use pier_api::{LogSource, LogStream};
use time::OffsetDateTime;

use super::broker::LogBroker;
use crate::runtime::{ContainerRuntime, OutputOptions, Stream};

/// Follows a container's stdout and stderr into the app's log until the container ends.
/// `adopted` is true for a container that was already running when this controller started.
///
/// Docker's json-file driver drains the container's output into its own file whatever we do, so
/// the app never waits on this task; this task reads that file as fast as it can and publishes
/// each chunk's lines under one lock.
pub fn follow_instance(
    runtime: Arc<dyn ContainerRuntime>,
    logs: Arc<LogBroker>,
    app_guid: String,
    source: LogSource,
    container_id: String,
    adopted: bool,
) {
    tokio::spawn(async move {
        let mut opts = OutputOptions {
            follow: true,
            timestamps: true,
            since: None,
        };
        // For an adopted container, pick up after the last lines a previous controller kept, so
        // what it printed while no controller watched is not lost and nothing is repeated.
        let mut cursors = Cursors::default();
        if adopted {
            let resume = |stream| logs.resume_point(&app_guid, &source, stream);
            cursors.out = resume(LogStream::Out)
                .map(Cursor::after)
                .unwrap_or_default();
            cursors.err = resume(LogStream::Err)
                .map(Cursor::after)
                .unwrap_or_default();
            // Docker's `since` is in whole seconds: from the older of the two, what was kept is
            // sent again and skipped by the cursors.
            let oldest = [cursors.out.time, cursors.err.time]
                .into_iter()
                .flatten()
                .min();
            opts.since = Some(
                oldest
                    .unwrap_or_else(OffsetDateTime::now_utc)
                    .unix_timestamp(),
            );
        }
        let app = logs.app(&app_guid);
        let mut output = runtime.output(&container_id, opts);
        let mut splitter = Splitter::default();
        while let Some(Ok(chunk)) = output.next().await {
            let (stream, lines) = splitter.push(chunk.stream, &chunk.bytes);
            if lines.is_empty() {
                continue;
            }
            let cursor = cursors.of(stream);
            let fresh: Vec<_> = lines.iter().filter(|(t, _)| cursor.fresh(*t)).collect();
            logs.publish_app_lines(
                &app,
                fresh
                    .into_iter()
                    .map(|(t, text)| (&source, stream, text.as_str(), *t)),
            );
        }
        // A last line without a newline.
        for (stream, t, text) in splitter.finish() {
            if cursors.of(stream).fresh(t) {
                logs.publish_app_lines(&app, [(&source, stream, text.as_str(), t)]);
            }
        }
    });
}

/// Where a follower is in one of a container's streams: which lines it already published.
///
/// Docker stamps each line of a stream in order (one copier per stream, the time of each line as
/// it is read), while the two streams are not ordered with each other; so the cursor is per
/// stream. A line older than the cursor is a repeat: Docker sends entries again when following
/// across a log rotation, and from the start of a second when asked for output `since` a time.
/// Lines can share a timestamp, so the cursor also counts the lines at its time: after a repeat
/// begins, that many lines at the cursor's time are repeats too, and the ones after them are new.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cursor {
    time: Option<OffsetDateTime>,
    /// Lines published with exactly `time`.
    at_time: usize,
    /// Lines at `time` still to skip, as repeats.
    skip: usize,
}

impl Cursor {
    /// After `count` lines at `time` that were published already (by an earlier controller).
    pub(super) fn after((time, count): (OffsetDateTime, usize)) -> Cursor {
        Cursor {
            time: Some(time),
            at_time: count,
            skip: count,
        }
    }

    /// True when a line stamped `t` was not published yet (and counts it as published).
    pub(super) fn fresh(&mut self, t: OffsetDateTime) -> bool {
        match self.time {
            Some(c) if t < c => {
                // A repeat began: the lines at the cursor's time come again before new ones.
                self.skip = self.at_time;
                false
            }
            Some(c) if t == c => {
                if self.skip > 0 {
                    self.skip -= 1;
                    false
                } else {
                    self.at_time += 1;
                    true
                }
            }
            _ => {
                *self = Cursor {
                    time: Some(t),
                    at_time: 1,
                    skip: 0,
                };
                true
            }
        }
    }
}

#[derive(Default)]
struct Cursors {
    out: Cursor,
    err: Cursor,
}

impl Cursors {
    fn of(&mut self, stream: LogStream) -> &mut Cursor {
        match stream {
            LogStream::Out => &mut self.out,
            LogStream::Err => &mut self.err,
        }
    }
}

/// One [`LineSplitter`] per output stream of a container.
#[derive(Default)]
pub struct Splitter {
    out: LineSplitter,
    err: LineSplitter,
}

impl Splitter {
    /// The complete lines a chunk of `stream` finished, with the log stream they belong to.
    pub fn push(
        &mut self,
        stream: Stream,
        bytes: &[u8],
    ) -> (LogStream, Vec<(OffsetDateTime, String)>) {
        match stream {
            Stream::Out => (LogStream::Out, self.out.push(bytes)),
            Stream::Err => (LogStream::Err, self.err.push(bytes)),
        }
    }

    /// What is left once the output ended: a last line of each stream without a newline.
    pub fn finish(&mut self) -> Vec<(LogStream, OffsetDateTime, String)> {
        [
            (LogStream::Out, &mut self.out),
            (LogStream::Err, &mut self.err),
        ]
        .into_iter()
        .filter_map(|(s, sp)| sp.finish().map(|(t, text)| (s, t, text)))
        .collect()
    }
}

/// Turns Docker's log frames (each `<RFC 3339 time> <bytes>`, a line or a part of one) into
/// lines with the time they were written.
#[derive(Default)]
pub(super) struct LineSplitter {
    partial: Vec<u8>,
    time: Option<OffsetDateTime>,
}

impl LineSplitter {
    pub(super) fn push(&mut self, frame: &[u8]) -> Vec<(OffsetDateTime, String)> {
        let mut out = Vec::new();
        let mut rest = frame;
        while !rest.is_empty() {
            // Each frame (a log entry) starts with its timestamp; Docker splits lines longer than
            // 16 KiB into several entries, each with its own timestamp.
            let (time, body) = split_timestamp(rest);
            if self.time.is_none() || self.partial.is_empty() {
                self.time = Some(time);
            }
            match body.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.partial.extend_from_slice(&body[..i]);
                    out.extend(self.take());
                    rest = &body[i + 1..];
                }
                None => {
                    self.partial.extend_from_slice(body);
                    rest = &[];
                }
            }
            // A line without an end yet must not grow without bound.
            while self.partial.len() >= MAX_LINE_BYTES {
                let tail = self.partial.split_off(MAX_LINE_BYTES);
                out.extend(self.take());
                self.partial = tail;
                self.time = Some(time);
            }
        }
        out
    }

    fn take(&mut self) -> Option<(OffsetDateTime, String)> {
        let mut bytes = std::mem::take(&mut self.partial);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let time = self.time.take().unwrap_or_else(OffsetDateTime::now_utc);
        let text = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        Some((time, text))
    }

    pub(super) fn finish(&mut self) -> Option<(OffsetDateTime, String)> {
        if self.partial.is_empty() {
            return None;
        }
        self.take()
    }
}

/// `2026-11-25T12:00:05.123456789Z rest` → (time, rest); without a valid time, now and all of it.
fn split_timestamp(frame: &[u8]) -> (OffsetDateTime, &[u8]) {
    if let Some(sp) = frame.iter().take(40).position(|&b| b == b' ') {
        if let Ok(ts) = std::str::from_utf8(&frame[..sp]) {
            if let Ok(t) = OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
            {
                return (t, &frame[sp + 1..]);
            }
        }
    }
    (OffsetDateTime::now_utc(), frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms)
    }

    #[test]
    fn a_cursor_publishes_every_line_once_whatever_the_other_stream_does() {
        // stdout and stderr lines interleaved: each stream's times are ordered, the mix is not.
        let mut out = Cursor::default();
        let mut err = Cursor::default();
        let mut published = 0;
        for i in 0..1000 {
            // stderr lags stdout by a few ms: mixed, they go back and forth in time.
            let t_out = at(i * 2);
            let t_err = at(i * 2 - 7);
            published += usize::from(out.fresh(t_out));
            published += usize::from(err.fresh(t_err));
        }
        assert_eq!(published, 2000, "no line of either stream dropped");
    }

    #[test]
    fn a_cursor_skips_repeats_exactly_even_at_equal_times() {
        let mut c = Cursor::default();
        // Three lines at t=5 (a long line split, say), then one at t=6.
        assert!(c.fresh(at(5)) && c.fresh(at(5)) && c.fresh(at(5)) && c.fresh(at(6)));
        // A rotation sends everything again from t=4: all repeats...
        assert!(!c.fresh(at(4)));
        assert!(!c.fresh(at(5)) && !c.fresh(at(5)) && !c.fresh(at(5)));
        // ... except what really is new: a second line at t=6, then t=7.
        let mut c = Cursor::after((at(6), 1));
        assert!(!c.fresh(at(6)), "the line the earlier controller kept");
        assert!(c.fresh(at(6)), "a second line at the same time is new");
        assert!(c.fresh(at(7)));
        // Resuming after two kept lines at t=6: from `since`, older lines and those two repeat.
        let mut c = Cursor::after((at(6), 2));
        assert!(!c.fresh(at(1)) && !c.fresh(at(6)) && !c.fresh(at(6)));
        assert!(c.fresh(at(6)) && c.fresh(at(8)));
    }

    #[test]
    fn docker_frames_become_lines_with_their_time_and_invalid_utf8_is_replaced() {
        let mut s = LineSplitter::default();
        let out = s.push(b"2026-11-25T12:00:05.123456789Z hello\n");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, "hello");
        assert_eq!(out[0].0.nanosecond(), 123_456_789);
        // A line Docker split into two entries, each with its own timestamp.
        assert!(s.push(b"2026-11-25T12:00:06Z first half ").is_empty());
        let out = s.push(b"2026-11-25T12:00:07Z second half\r\n");
        assert_eq!(out[0].1, "first half second half");
        assert_eq!(out[0].0.second(), 6);
        // Not UTF-8.
        let out = s.push(b"2026-11-25T12:00:08Z bad \xff\xfe bytes\n");
        assert_eq!(out[0].1, "bad \u{fffd}\u{fffd} bytes");
        // No newline for a long time: split at the limit.
        let mut frame = b"2026-11-25T12:00:09Z ".to_vec();
        frame.extend(std::iter::repeat_n(b'y', MAX_LINE_BYTES + 10));
        let out = s.push(&frame);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.len(), MAX_LINE_BYTES);
        assert_eq!(s.finish().map(|(_, t)| t.len()), Some(10));
    }
}

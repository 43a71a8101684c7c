use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogStream {
    #[serde(rename = "OUT")]
    Out,
    #[serde(rename = "ERR")]
    Err,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Out => "OUT",
            LogStream::Err => "ERR",
        }
    }
}

/// One log line of an app, tagged the way Cloud Foundry tags it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Position in the app's log; strictly increasing, so a reader can resume after it.
    pub seq: u64,
    /// When the line was produced (not when it was received).
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// `APP/PROC/WEB/0`, `STG/0`, `RTR/0`, `API/0`, `CELL/0`, `HEALTH/0`, `LGR`.
    pub source: crate::vocab::LogSource,
    pub stream: LogStream,
    pub text: String,
}

impl LogLine {
    /// `2026-11-25T12:00:05.36+0000 [APP/PROC/WEB/0] OUT hello`
    pub fn format_terminal(&self) -> String {
        format!(
            "{} [{}] {} {}",
            format_cf_time(self.time),
            self.source,
            self.stream.as_str(),
            self.text
        )
    }
}

/// The largest line, in bytes, a log keeps whole; longer lines are split (Loggregator's limit).
pub const MAX_LINE_BYTES: usize = 61_440;

/// Lines a reader did not get: the `seq` range that is missing from its stream, and why.
///
/// Sequence numbers make every gap countable, so `count` is exact: `last_seq - first_seq + 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogDrop {
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u64,
    /// When the reader was told.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// `the reader fell behind`, `older than the buffer`.
    pub reason: String,
}

impl LogDrop {
    /// The notice as an `LGR` line, so it prints like any other line. Its `seq` is the last
    /// missing one: resuming after it repeats nothing.
    pub fn to_line(&self) -> LogLine {
        LogLine {
            seq: self.last_seq,
            time: self.time,
            source: crate::vocab::LogSource::Logger,
            stream: LogStream::Err,
            text: format!(
                "{} lines dropped (seq {} to {}): {}",
                self.count, self.first_seq, self.last_seq, self.reason
            ),
        }
    }
}

/// One event of a log stream (`GET /v1/apps/{name}/logs/stream`, server-sent events whose `id`
/// is the `seq` and whose `data` is this, as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogEvent {
    Line(LogLine),
    Dropped(LogDrop),
}

impl LogEvent {
    /// The `seq` to resume after once this event has been handled.
    pub fn seq(&self) -> u64 {
        match self {
            LogEvent::Line(l) => l.seq,
            LogEvent::Dropped(d) => d.last_seq,
        }
    }
}

/// Access-log lines a standalone `pier-router` forwards (`POST /v1/router/logs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterLogBatch {
    /// The router's index: lines are tagged `RTR/<index>`.
    #[serde(default)]
    pub router_index: u32,
    pub lines: Vec<RouterLogLine>,
    /// Lines the router could not forward (queue full or controller away), per app.
    #[serde(default)]
    pub dropped: Vec<RouterLogDropped>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterLogLine {
    pub app_guid: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub text: String,
}

impl RouterLogLine {
    pub fn new(app_guid: String, time: std::time::SystemTime, text: String) -> RouterLogLine {
        RouterLogLine {
            app_guid,
            time: OffsetDateTime::from(time),
            text,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterLogDropped {
    pub app_guid: String,
    pub count: u64,
}

/// Cloud Foundry's log timestamp: UTC, hundredths of a second, `+0000` offset.
pub fn format_cf_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:02}+0000",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond() / 10
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn terminal_format() {
        let line = LogLine {
            seq: 1,
            time: time::macros::datetime!(2026-11-25 12:00:05.367 UTC),
            source: "APP/PROC/WEB/0".parse().unwrap(),
            stream: LogStream::Out,
            text: "hello".into(),
        };
        assert_eq!(
            line.format_terminal(),
            "2026-11-25T12:00:05.36+0000 [APP/PROC/WEB/0] OUT hello"
        );
    }
}

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
    /// `2026-11-25T12:00:05.36+0000 [APP/PROC/WEB/0] OUT hello`, with control characters in the
    /// text shown escaped ([`escape_controls`]): a line is what an app or a client wrote, and a
    /// terminal must not act on it.
    pub fn format_terminal(&self) -> String {
        format!(
            "{} [{}] {} {}",
            format_cf_time(self.time),
            self.source,
            self.stream.as_str(),
            escape_controls(&self.text)
        )
    }
}

/// `text` with every control character a terminal could act on written out as an escape: C0
/// controls (tab aside) and DEL as `\xNN`, C1 controls (U+0080 to U+009F, such as the CSI U+009B)
/// and the bidirectional overrides as `\u{NNNN}`. Text without any comes back as it is.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let needs = |c: char| {
        (c.is_control() && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(needs) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if needs(c) && (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if needs(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
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
    fn control_characters_are_shown_escaped() {
        assert_eq!(
            escape_controls("plain text\twith tab"),
            "plain text\twith tab"
        );
        assert_eq!(escape_controls("\u{1b}[2J clear"), "\\x1b[2J clear");
        assert_eq!(escape_controls("csi \u{9b}31m"), "csi \\u{009b}31m");
        assert_eq!(escape_controls("bell\u{7}del\u{7f}"), "bell\\x07del\\x7f");
        assert_eq!(escape_controls("rtl \u{202e}txt"), "rtl \\u{202e}txt");
        assert_eq!(escape_controls("línea ✓ C:\\dir"), "línea ✓ C:\\dir");
    }

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

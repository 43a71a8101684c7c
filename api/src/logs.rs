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
    pub source: String,
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
            source: "APP/PROC/WEB/0".into(),
            stream: LogStream::Out,
            text: "hello".into(),
        };
        assert_eq!(
            line.format_terminal(),
            "2026-11-25T12:00:05.36+0000 [APP/PROC/WEB/0] OUT hello"
        );
    }
}

//! What the user sees: results on stdout, progress and errors on stderr.

use std::fmt;
use std::io::IsTerminal;

use pier_api::{AppResponse, InstanceStatus, ProcessResponse};
use time::OffsetDateTime;

/// An error with what the user needs next to it: detail lines (an instance's last output) and a hint.
/// Put it anywhere in an `anyhow` chain; `main` finds it.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub details: Vec<String>,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            details: Vec::new(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn details(mut self, details: Vec<String>) -> Self {
        self.details = details;
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// `error: MESSAGE` (the whole context chain), any detail lines, then `hint: ...`, all on stderr.
pub fn print_error(err: &anyhow::Error) {
    use crate::client::{self, ClientError};
    // As `{err:#}` prints the chain, with the CLI's wording for the client's errors.
    let chain: Vec<String> = err
        .chain()
        .map(|e| {
            e.downcast_ref::<ClientError>()
                .and_then(client::message)
                .unwrap_or_else(|| e.to_string())
        })
        .collect();
    eprintln!("error: {}", chain.join(": "));
    let failure = err.chain().find_map(|e| e.downcast_ref::<Failure>());
    let hint = failure.and_then(|f| f.hint.clone()).or_else(|| {
        err.chain()
            .find_map(|e| e.downcast_ref::<ClientError>())
            .and_then(client::hint)
    });
    if let Some(f) = failure {
        for line in &f.details {
            eprintln!("{line}");
        }
    }
    if let Some(hint) = hint {
        eprintln!("hint: {hint}");
    }
}

/// True when progress bars and prompts make sense.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// `2026-11-25 12:00:05 UTC`
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `256M`, or `2G` when it divides evenly.
pub fn format_mb(mb: u64) -> String {
    if mb >= 1024 && mb % 1024 == 0 {
        format!("{}G", mb / 1024)
    } else {
        format!("{mb}M")
    }
}

/// `1.5 MiB`
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Left-aligned columns separated by three spaces; the last column isn't padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(cols) {
            if i + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The web process, or the first one when an app has no web process.
pub fn main_process(app: &AppResponse) -> Option<&ProcessResponse> {
    app.processes
        .iter()
        .find(|p| p.kind.is_web())
        .or_else(|| app.processes.first())
}

/// Instances as a table: index, state, since, host port (and process when there are several
/// types); with `with_stats`, each one's sampled use too (`-` where there is no sample yet).
pub fn instance_table(instances: &[InstanceStatus], with_stats: bool) -> String {
    let several_types = instances.iter().any(|i| !i.process.is_web());
    let mut header = vec![];
    if several_types {
        header.push("process");
    }
    header.extend(["index", "state", "since"]);
    if with_stats {
        header.extend(["cpu", "memory", "disk", "uptime"]);
    }
    header.extend(["crashes", "host port"]);
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|i| {
            let mut row = vec![];
            if several_types {
                row.push(i.process.to_string());
            }
            row.push(format!("#{}", i.index));
            row.push(i.state.as_str().to_ascii_lowercase());
            row.push(format_time(i.since));
            if with_stats {
                match &i.stats {
                    Some(s) => {
                        row.push(format!("{:.1}%", s.cpu_percent));
                        row.push(format!(
                            "{} of {}",
                            format_bytes(s.memory_bytes),
                            format_bytes(s.memory_limit_bytes)
                        ));
                        row.push(format!(
                            "{} of {}",
                            format_bytes(s.disk_bytes),
                            format_bytes(s.disk_limit_bytes)
                        ));
                        row.push(format_uptime(s.uptime_secs));
                    }
                    None => row.extend(std::iter::repeat_n("-".to_string(), 4)),
                }
            }
            row.push(i.crash_count.to_string());
            row.push(
                i.host_port
                    .map(|p| format!("127.0.0.1:{p}"))
                    .unwrap_or_else(|| "-".to_string()),
            );
            row
        })
        .collect();
    table(&header, &rows)
}

/// `3d4h`, `2h5m`, `4m12s`, `9s`.
pub fn format_uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Asks `question [y/N]` on stderr when someone is there to answer (stdin and stderr are
/// terminals) and `force` wasn't given; true means go ahead.
pub fn confirm(question: &str, force: bool) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if force || !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Ok(true);
    }
    eprint!("{question} [y/N] ");
    std::io::stderr()
        .flush()
        .map_err(|e| anyhow::anyhow!("cannot write the prompt: {e}"))?;
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| anyhow::anyhow!("cannot read the answer: {e}"))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_bytes() {
        assert_eq!(format_mb(256), "256M");
        assert_eq!(format_mb(2048), "2G");
        assert_eq!(format_bytes(12), "12 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["name", "state"],
            &[
                vec!["a".into(), "started".into()],
                vec!["long-name".into(), "x".into()],
            ],
        );
        assert_eq!(t, "name        state\na           started\nlong-name   x\n");
    }
}

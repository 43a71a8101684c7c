//! `pier logs NAME`: the app's buffered lines, then every new line as it is produced, from every
//! instance (including ones started later), the router, staging and the platform.
//!
//! The stream is server-sent events over one long-lived request. Every event carries its `seq`;
//! when the connection drops, pier reconnects with `after=<last seq>`, so nothing is printed
//! twice, and nothing is missed while the controller's buffer still holds the lines (when it does
//! not, or when this reader fell behind, the controller says how many lines were dropped, and
//! pier prints that as an `LGR` line).

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt;
use pier_api::{AppName, LogEvent, LogSource};
use pier_client::LogStart;

use crate::args::LogsArgs;
use crate::client::Client;

const RECENT_TIMEOUT: Duration = Duration::from_secs(60);
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// Events handed to the printer at once at most (all that arrived together, up to this).
const BATCH: usize = 4096;

pub async fn run(args: LogsArgs) -> Result<()> {
    let client = super::connect()?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out.lock());
    if args.recent {
        let recent = client
            .with_timeout(Some(RECENT_TIMEOUT))
            .recent_logs(&args.name)
            .await?;
        for line in recent {
            if print(&mut out, &LogEvent::Line(line), args.json).is_err() {
                return Ok(());
            }
        }
        let _ = out.flush();
        return Ok(());
    }
    let json = args.json;
    follow(&client, &args.name, Begin::Recent(None), None, |events| {
        for e in events {
            print(&mut out, e, json)?;
        }
        out.flush()
    })
    .await
}

/// One event as the terminal shows it, or as one JSON object.
fn print(out: &mut impl Write, event: &LogEvent, json: bool) -> std::io::Result<()> {
    match (event, json) {
        (LogEvent::Line(l), false) => writeln!(out, "{}", l.format_terminal()),
        (LogEvent::Dropped(d), false) => writeln!(out, "{}", d.to_line().format_terminal()),
        (LogEvent::Line(l), true) => {
            serde_json::to_writer(&mut *out, l)?;
            writeln!(out)
        }
        (LogEvent::Dropped(d), true) => {
            // Shaped like a line, so tools that read lines read it; the counts are fields too.
            let mut v = serde_json::to_value(d.to_line())?;
            v["dropped"] = d.count.into();
            v["first_seq"] = d.first_seq.into();
            v["last_seq"] = d.last_seq.into();
            serde_json::to_writer(&mut *out, &v)?;
            writeln!(out)
        }
    }
}

/// Where following starts.
#[derive(Debug, Clone, Copy)]
pub enum Begin {
    /// With the last N buffered lines (None: all of them).
    Recent(Option<usize>),
}

/// Follows the app's log until an error that reconnecting cannot fix (the app is gone, the token
/// is refused) or until `on_events` fails (stdout closed: that ends quietly). `connected` is told
/// once the first connection is open, i.e. once the controller has placed the reader.
pub async fn follow(
    client: &Client,
    name: &AppName,
    from: Begin,
    mut connected: Option<tokio::sync::oneshot::Sender<()>>,
    mut on_events: impl FnMut(&[LogEvent]) -> std::io::Result<()>,
) -> Result<()> {
    let mut after: Option<u64> = None;
    let mut seen = Seen::default();
    let mut retry = FIRST_RETRY;
    let mut said_reconnecting = false;
    loop {
        let start = match (after, from) {
            (Some(seq), _) => LogStart::After(seq),
            (None, Begin::Recent(n)) => LogStart::Recent(n),
        };
        match client.log_stream(name, start).await {
            Ok(stream) => {
                if said_reconnecting {
                    eprintln!("pier: reconnected to {}", client.base());
                    said_reconnecting = false;
                }
                retry = FIRST_RETRY;
                if let Some(tx) = connected.take() {
                    let _ = tx.send(());
                }
                // What arrived together is printed (and flushed) together. A transport error
                // ends the stream: reconnect.
                let mut batches = stream.ready_chunks(BATCH);
                while let Some(batch) = batches.next().await {
                    let events = seen.filter(batch.into_iter().filter_map(Result::ok).collect());
                    seen.resume_after(batches.get_ref().last_event_id());
                    if !events.is_empty() && on_events(&events).is_err() {
                        return Ok(());
                    }
                }
                seen.resume_after(batches.get_ref().last_event_id());
                after = Some(seen.resume_at.saturating_sub(OVERLAP));
            }
            // The app is gone, or we may not see it: reconnecting will not help.
            Err(e) if e.status().is_some_and(|s| s.is_client_error()) => return Err(e.into()),
            // Unreachable, cut off or a 5xx: try again.
            Err(_) => {}
        }
        if !said_reconnecting {
            eprintln!(
                "pier: lost the log stream from {}; reconnecting (nothing is missed while the \
                 controller's buffer holds the lines)",
                client.base()
            );
            said_reconnecting = true;
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// Lines asked for again on a reconnect. A controller killed with `kill -9` loses the lines it
/// published in its last ~100 ms, before they reached its disk; after its restart it reads them
/// again from Docker and numbers them anew, maybe differently (interleaved with other sources).
/// Resuming a little earlier and skipping what was already printed keeps both promises: nothing
/// twice, nothing missing.
const OVERLAP: u64 = 1000;

/// What this reader printed lately, to skip on a resume.
#[derive(Default)]
struct Seen {
    /// The highest `seq` handled.
    resume_at: u64,
    keys: std::collections::HashSet<u64>,
    order: std::collections::VecDeque<u64>,
    /// Ranges already reported dropped: a replay on resume must not also print them, or the
    /// counts would no longer add up.
    dropped: std::collections::VecDeque<(u64, u64)>,
}

impl Seen {
    /// The stream's resume point moved (an event without a line counts too).
    fn resume_after(&mut self, id: Option<u64>) {
        if let Some(id) = id {
            self.resume_at = self.resume_at.max(id);
        }
    }

    fn filter(&mut self, events: Vec<LogEvent>) -> Vec<LogEvent> {
        use std::hash::{Hash, Hasher};
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            match e {
                LogEvent::Line(l) => {
                    if self.dropped.iter().any(|&(a, b)| (a..=b).contains(&l.seq)) {
                        continue;
                    }
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    (
                        &l.source,
                        l.stream.as_str(),
                        l.time.unix_timestamp_nanos(),
                        &l.text,
                    )
                        .hash(&mut h);
                    let key = h.finish();
                    if !self.keys.insert(key) {
                        continue;
                    }
                    self.order.push_back(key);
                    if self.order.len() > 4 * OVERLAP as usize {
                        if let Some(old) = self.order.pop_front() {
                            self.keys.remove(&old);
                        }
                    }
                    self.resume_at = self.resume_at.max(l.seq);
                    out.push(LogEvent::Line(l));
                }
                // Only what is missing beyond what was printed counts.
                LogEvent::Dropped(mut d) => {
                    if d.last_seq <= self.resume_at {
                        continue;
                    }
                    d.first_seq = d.first_seq.max(self.resume_at + 1);
                    d.count = d.last_seq - d.first_seq + 1;
                    self.resume_at = d.last_seq;
                    self.dropped.push_back((d.first_seq, d.last_seq));
                    if self.dropped.len() > 64 {
                        self.dropped.pop_front();
                    }
                    out.push(LogEvent::Dropped(d));
                }
            }
        }
        out
    }
}

/// For `pier push`: prints the app's instance output (`APP`, `CELL`, `HEALTH` lines) while its
/// instances start. Returns once the stream is open, so the caller can start the app knowing no
/// line is missed; abort the task to stop.
pub async fn show_startup(name: &AppName) -> Option<tokio::task::JoinHandle<()>> {
    let client = super::connect().ok()?;
    let name = name.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let _ = follow(&client, &name, Begin::Recent(Some(0)), Some(tx), |events| {
            let mut out = std::io::stdout().lock();
            for e in events {
                if let LogEvent::Line(l) = e {
                    if matches!(
                        l.source,
                        LogSource::App { .. } | LogSource::Cell(_) | LogSource::Health(_)
                    ) {
                        writeln!(out, "  {}", l.format_terminal())?;
                    }
                }
            }
            out.flush()
        })
        .await;
    });
    // Without a stream within a few seconds, push goes on without the output.
    match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(())) => Some(task),
        _ => {
            task.abort();
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_output_is_one_object_per_line_with_drop_counts() {
        let drop = r#"{"type":"dropped","first_seq":3,"last_seq":9,"count":7,"time":"2026-11-25T12:00:05Z","reason":"this reader fell behind"}"#;
        let event: LogEvent = serde_json::from_str(drop).unwrap();
        let mut out = Vec::new();
        print(&mut out, &event, true).unwrap();
        print(&mut out, &event, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        let v: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(v["source"], "LGR");
        assert_eq!(v["dropped"], 7);
        assert_eq!(
            lines.next().unwrap(),
            "2026-11-25T12:00:05.00+0000 [LGR] ERR 7 lines dropped (seq 3 to 9): this reader fell behind"
        );
    }
}

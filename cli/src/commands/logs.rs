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
use pier_api::{ApiError, AppName, LogEvent, LogLine, LogSource};
use reqwest::StatusCode;

use crate::args::LogsArgs;
use crate::client::ClientError;
use crate::config::Settings;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const RECENT_TIMEOUT: Duration = Duration::from_secs(60);
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);

pub async fn run(args: LogsArgs) -> Result<()> {
    let conn = Conn::from_env()?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out.lock());
    if args.recent {
        for line in conn.recent(&args.name).await? {
            if print(&mut out, &LogEvent::Line(line), args.json).is_err() {
                return Ok(());
            }
        }
        let _ = out.flush();
        return Ok(());
    }
    let json = args.json;
    follow(&conn, &args.name, Begin::Recent(None), None, |events| {
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

/// The controller, for log requests (these have no overall time limit, unlike other calls).
pub struct Conn {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Conn {
    pub fn from_env() -> Result<Conn> {
        let target = Settings::from_env().target()?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .user_agent(concat!("pier/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Conn {
            base: target.api.trim_end_matches('/').to_string(),
            token: target.token,
            http,
        })
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.get(format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn recent(&self, name: &AppName) -> Result<Vec<LogLine>> {
        let resp = self
            .get(&format!("/v1/apps/{name}/logs"))
            .timeout(RECENT_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let resp = self.check(resp).await?;
        Ok(resp.json().await.map_err(|e| ClientError::Decode {
            what: "log lines".into(),
            detail: e.to_string(),
        })?)
    }

    fn transport(&self, e: reqwest::Error) -> ClientError {
        if e.is_connect() {
            ClientError::Unreachable {
                url: self.base.clone(),
            }
        } else {
            ClientError::Transport {
                url: self.base.clone(),
                source: e,
            }
        }
    }

    async fn check(&self, resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized {
                url: self.base.clone(),
            });
        }
        let body = resp.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ApiError>(&body) {
            Ok(e) => ClientError::Api(e),
            Err(_) => ClientError::Http {
                status,
                body: body.chars().take(500).collect(),
            },
        })
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
    conn: &Conn,
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
        let path = match (after, from) {
            (Some(seq), _) => format!("/v1/apps/{name}/logs/stream?after={seq}"),
            (None, Begin::Recent(Some(n))) => format!("/v1/apps/{name}/logs/stream?recent={n}"),
            (None, Begin::Recent(None)) => format!("/v1/apps/{name}/logs/stream"),
        };
        match conn.get(&path).send().await {
            Ok(resp) if resp.status().is_success() => {
                if said_reconnecting {
                    eprintln!("pier: reconnected to {}", conn.base);
                    said_reconnecting = false;
                }
                retry = FIRST_RETRY;
                if let Some(tx) = connected.take() {
                    let _ = tx.send(());
                }
                let mut body = resp.bytes_stream();
                let mut parser = SseParser::default();
                while let Some(chunk) = body.next().await {
                    let Ok(chunk) = chunk else { break };
                    let events = seen.filter(parser.push(&chunk));
                    if let Some(id) = parser.last_id {
                        seen.resume_at = seen.resume_at.max(id);
                    }
                    if !events.is_empty() && on_events(&events).is_err() {
                        return Ok(());
                    }
                }
                after = Some(seen.resume_at.saturating_sub(OVERLAP));
            }
            Ok(resp) => {
                let status = resp.status();
                let err = conn.check(resp).await.err();
                // The app is gone, or we may not see it: reconnecting will not help.
                if status.is_client_error() {
                    if let Some(e) = err {
                        return Err(e.into());
                    }
                }
            }
            // Unreachable or cut off: try again.
            Err(_) => {}
        }
        if !said_reconnecting {
            eprintln!(
                "pier: lost the log stream from {}; reconnecting (nothing is missed while the \
                 controller's buffer holds the lines)",
                conn.base
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

/// Server-sent events, as the controller writes them: `id: <seq>`, `data: <one JSON line>`, a
/// blank line. Comments (`: keep-alive`) are skipped. An event with an id and no data (the
/// controller sends one first) only moves the resume point.
#[derive(Default)]
struct SseParser {
    buf: Vec<u8>,
    last_id: Option<u64>,
    id: Option<u64>,
    data: Vec<u8>,
}

impl SseParser {
    fn push(&mut self, chunk: &[u8]) -> Vec<LogEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(i) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[start..start + i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                if !self.data.is_empty() {
                    match serde_json::from_slice::<LogEvent>(&self.data) {
                        Ok(e) => {
                            self.last_id = Some(e.seq());
                            out.push(e);
                        }
                        // A newer controller's event pier does not know: skip it, keep its id.
                        Err(_) => self.last_id = self.id.or(self.last_id),
                    }
                    self.data.clear();
                } else if self.id.is_some() {
                    self.last_id = self.id;
                }
                self.id = None;
            } else if let Some(v) = line.strip_prefix(b"data:") {
                self.data
                    .extend_from_slice(v.strip_prefix(b" ").unwrap_or(v));
            } else if let Some(v) = line.strip_prefix(b"id:") {
                self.id = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
            }
            start += i + 1;
        }
        self.buf.drain(..start);
        out
    }
}

/// For `pier push`: prints the app's instance output (`APP`, `CELL`, `HEALTH` lines) while its
/// instances start. Returns once the stream is open, so the caller can start the app knowing no
/// line is missed; abort the task to stop.
pub async fn show_startup(name: &AppName) -> Option<tokio::task::JoinHandle<()>> {
    let conn = Conn::from_env().ok()?;
    let name = name.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let _ = follow(&conn, &name, Begin::Recent(Some(0)), Some(tx), |events| {
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
    fn sse_events_are_rejoined_across_chunks_and_ids_move_the_resume_point() {
        let mut p = SseParser::default();
        assert!(p.push(b"id: 41\n\n: keep-alive\n\n").is_empty());
        assert_eq!(p.last_id, Some(41));
        let line = r#"{"type":"line","seq":42,"time":"2026-11-25T12:00:05.36Z","source":"APP/PROC/WEB/0","stream":"OUT","text":"hi"}"#;
        let drop = r#"{"type":"dropped","first_seq":43,"last_seq":45,"count":3,"time":"2026-11-25T12:00:05Z","reason":"r"}"#;
        let all = format!("id: 42\ndata: {line}\n\nid: 45\r\ndata: {drop}\r\n\r\n");
        let (a, b) = all.as_bytes().split_at(30);
        assert!(p.push(a).is_empty());
        let events = p.push(b);
        assert_eq!(events.len(), 2);
        assert!(matches!(&events[0], LogEvent::Line(l) if l.text == "hi"));
        assert!(matches!(&events[1], LogEvent::Dropped(d) if d.count == 3));
        assert_eq!(p.last_id, Some(45));
    }

    #[test]
    fn json_output_is_one_object_per_line_with_drop_counts() {
        let mut p = SseParser::default();
        let drop = r#"{"type":"dropped","first_seq":3,"last_seq":9,"count":7,"time":"2026-11-25T12:00:05Z","reason":"this reader fell behind"}"#;
        let events = p.push(format!("data: {drop}\n\n").as_bytes());
        let mut out = Vec::new();
        print(&mut out, &events[0], true).unwrap();
        print(&mut out, &events[0], false).unwrap();
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

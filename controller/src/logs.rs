//! The log broker: every app has one ring of recent lines, numbered by `seq`, that publishers
//! append to and readers follow with a cursor.
//!
//! ```text
//!  docker logs --follow (per instance) ─┐
//!  staging (STG/0), API/0, CELL/n ──────┼─▶ AppLog ring (seq 1,2,3…; window ≥ buffer) ──▶ readers
//!  router access log (RTR/n) ───────────┘       │  watch<seq> wakes readers                (cursor
//!                                               ▼                                           each)
//!                            persister: every 100 ms append new lines to
//!                            <data>/logs/<app guid>.ndjson (fsync every 1 s),
//!                            compacted to the last `buffer` lines
//! ```
//!
//! Invariants:
//! - Publishing never waits on a reader, on the disk or on the network: it takes the app's lock,
//!   pushes into the ring (evicting the oldest line past the window) and bumps a `watch`.
//! - A reader is a cursor (the last `seq` it got). Its queue is the part of the ring after its
//!   cursor, bounded by the window, so a stalled reader costs nothing and blocks no one. When the
//!   ring has moved past its cursor, the reader gets a [`LogDrop`] naming the exact `seq` range it
//!   missed, then continues with the oldest line still held. `seq` numbers have no holes, so lines
//!   received plus lines reported dropped always add up exactly.
//! - Resuming is starting a cursor at `after=SEQ`: no duplicates, and no gap while the ring still
//!   holds `SEQ + 1`.
//! - Lines longer than [`MAX_LINE_BYTES`] are split; bytes that are not UTF-8 become U+FFFD.
//! - The optional per-app rate limit drops app output (never platform lines) over N lines/s and
//!   publishes an `LGR` line saying how many were dropped, from which sources.
//! - Persistence: a line published more than ~100 ms before the controller is killed (even with
//!   `kill -9`) is in the file; one published more than ~1 s before a machine crash is on disk.
//!   Files are bounded (at most three buffers' worth of lines) and removed with their app.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{BufRead, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pier_api::logs::MAX_LINE_BYTES;
use pier_api::{LogDrop, LogEvent, LogLine, LogSource, LogStream};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Lines a following reader may be behind before it loses any: the ring holds this many lines
/// (or the buffer size, when that is larger). At 100 000 lines/s that is 160 ms of slack.
pub const READER_WINDOW: usize = 16_384;
/// Beyond the buffer, the ring also stops growing at this many bytes of text.
const WINDOW_BYTES: usize = 32 * 1024 * 1024;
/// How often new lines are written to the app's file.
pub const PERSIST_EVERY: Duration = Duration::from_millis(100);
/// How often written lines are fsynced.
const SYNC_EVERY: Duration = Duration::from_secs(1);

struct Ring {
    next_seq: u64,
    lines: VecDeque<Arc<LogLine>>,
    bytes: usize,
    /// Set when the app is deleted: readers end.
    closed: bool,
    rate: RateWindow,
}

#[derive(Default)]
struct RateWindow {
    started: Option<Instant>,
    accepted: u64,
    dropped: BTreeMap<LogSource, u64>,
}

/// What is on disk for one app.
#[derive(Default)]
struct FileState {
    /// Highest `seq` written to the file.
    written_seq: u64,
    /// Lines in the file (compaction rewrites it past two buffers).
    lines: usize,
    unsynced: bool,
    closed: bool,
}

/// One app's log.
pub struct AppLog {
    guid: String,
    ring: Mutex<Ring>,
    file: Mutex<FileState>,
    notify: watch::Sender<u64>,
}

impl AppLog {
    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct LogBroker {
    /// Lines kept for `--recent` and across restarts.
    capacity: usize,
    /// Lines kept for following readers (≥ capacity).
    window: usize,
    /// App output lines per second per app; 0 is no limit.
    rate_limit: u64,
    dir: Option<PathBuf>,
    apps: Mutex<HashMap<String, Arc<AppLog>>>,
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// After this `seq` (resume).
    After(u64),
    /// With the last N buffered lines (at most the buffer).
    Recent(usize),
}

impl LogBroker {
    pub fn new(capacity: usize) -> LogBroker {
        let capacity = capacity.max(1);
        LogBroker {
            capacity,
            window: capacity.max(READER_WINDOW),
            rate_limit: 0,
            dir: None,
            apps: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps each app's buffer in `dir` (see [`LogBroker::persist`] and [`LogBroker::restore`]).
    pub fn with_dir(mut self, dir: PathBuf) -> LogBroker {
        self.dir = Some(dir);
        self
    }

    /// Drops app output over `lines_per_sec` per app, with a notice; 0 turns the limit off.
    pub fn with_rate_limit(mut self, lines_per_sec: u64) -> LogBroker {
        self.rate_limit = lines_per_sec;
        self
    }

    #[cfg(test)]
    fn with_window(mut self, window: usize) -> LogBroker {
        self.window = window.max(self.capacity);
        self
    }

    fn apps(&self) -> MutexGuard<'_, HashMap<String, Arc<AppLog>>> {
        self.apps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The app's log, created on first use.
    pub fn app(&self, app_guid: &str) -> Arc<AppLog> {
        self.apps()
            .entry(app_guid.to_string())
            .or_insert_with(|| Arc::new(new_app_log(app_guid, 1, VecDeque::new())))
            .clone()
    }

    fn get(&self, app_guid: &str) -> Option<Arc<AppLog>> {
        self.apps().get(app_guid).cloned()
    }

    /// True when the app has a log here (it exists, or existed since this controller started).
    pub fn has_app(&self, app_guid: &str) -> bool {
        self.apps().contains_key(app_guid)
    }

    /// Adds a platform line (never rate limited) to an app's log and returns it with its `seq`
    /// (the last part, when it had to be split).
    pub fn publish(
        &self,
        app_guid: &str,
        source: &LogSource,
        stream: LogStream,
        text: &str,
        time: OffsetDateTime,
    ) -> LogLine {
        let app = self.app(app_guid);
        let mut ring = app.lock();
        let mut last = None;
        for part in split_text(text) {
            last = Some(self.push(&mut ring, source, stream, part, time));
        }
        let seq = ring.next_seq - 1;
        drop(ring);
        app.notify.send_replace(seq);
        last.map(|l| (*l).clone()).unwrap_or_else(|| LogLine {
            seq,
            time,
            source: source.clone(),
            stream,
            text: String::new(),
        })
    }

    /// Adds app output (`APP/...`) under the rate limit, many lines under one lock.
    pub fn publish_app_lines<'a>(
        &self,
        app: &AppLog,
        lines: impl IntoIterator<Item = (&'a LogSource, LogStream, &'a str, OffsetDateTime)>,
    ) {
        let mut ring = app.lock();
        let before = ring.next_seq;
        for (source, stream, text, time) in lines {
            for part in split_text(text) {
                if self.rate_limited(&mut ring, source) {
                    continue;
                }
                self.push(&mut ring, source, stream, part, time);
            }
        }
        let seq = ring.next_seq - 1;
        drop(ring);
        if seq >= before {
            app.notify.send_replace(seq);
        }
    }

    fn push(
        &self,
        ring: &mut Ring,
        source: &LogSource,
        stream: LogStream,
        text: &str,
        time: OffsetDateTime,
    ) -> Arc<LogLine> {
        let line = Arc::new(LogLine {
            seq: ring.next_seq,
            time,
            source: source.clone(),
            stream,
            text: text.to_string(),
        });
        ring.next_seq += 1;
        ring.bytes += line.text.len();
        ring.lines.push_back(line.clone());
        while ring.lines.len() > self.window
            || (ring.lines.len() > self.capacity && ring.bytes > WINDOW_BYTES)
        {
            if let Some(old) = ring.lines.pop_front() {
                ring.bytes -= old.text.len();
            }
        }
        line
    }

    /// True when this line must be dropped; a new second first publishes the last one's notice.
    fn rate_limited(&self, ring: &mut Ring, source: &LogSource) -> bool {
        if self.rate_limit == 0 || !source.is_app() {
            return false;
        }
        let now = Instant::now();
        if ring
            .rate
            .started
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
        {
            self.flush_rate_notice(ring);
            ring.rate.started = Some(now);
            ring.rate.accepted = 0;
        }
        if ring.rate.accepted < self.rate_limit {
            ring.rate.accepted += 1;
            false
        } else {
            *ring.rate.dropped.entry(source.clone()).or_default() += 1;
            true
        }
    }

    fn flush_rate_notice(&self, ring: &mut Ring) {
        if ring.rate.dropped.is_empty() {
            return;
        }
        let dropped = std::mem::take(&mut ring.rate.dropped);
        let total: u64 = dropped.values().sum();
        let by_source: Vec<String> = dropped
            .iter()
            .map(|(s, n)| format!("{n} from {s}"))
            .collect();
        let text = format!(
            "{total} lines dropped: the app logged more than its limit of {} lines/s ({})",
            self.rate_limit,
            by_source.join(", ")
        );
        self.push(
            ring,
            &LogSource::Logger,
            LogStream::Err,
            &text,
            OffsetDateTime::now_utc(),
        );
    }

    /// Publishes rate-limit notices whose second is over (called by the persister's tick, so a
    /// notice appears even when the app has gone quiet).
    fn tick_rate_limits(&self) {
        if self.rate_limit == 0 {
            return;
        }
        let apps: Vec<_> = self.apps().values().cloned().collect();
        for app in apps {
            let mut ring = app.lock();
            let over = ring
                .rate
                .started
                .is_some_and(|s| s.elapsed() >= Duration::from_secs(1));
            if over && !ring.rate.dropped.is_empty() {
                self.flush_rate_notice(&mut ring);
                ring.rate.started = None;
                let seq = ring.next_seq - 1;
                drop(ring);
                app.notify.send_replace(seq);
            }
        }
    }

    /// The buffered lines (the last `capacity`).
    pub fn recent(&self, app_guid: &str) -> Vec<LogLine> {
        let Some(app) = self.get(app_guid) else {
            return Vec::new();
        };
        let ring = app.lock();
        let skip = ring.lines.len().saturating_sub(self.capacity);
        ring.lines
            .iter()
            .skip(skip)
            .map(|l| (**l).clone())
            .collect()
    }

    /// The newest time of a line from `source` still held, if any.
    pub fn last_time(&self, app_guid: &str, source: &LogSource) -> Option<OffsetDateTime> {
        let app = self.get(app_guid)?;
        let ring = app.lock();
        ring.lines
            .iter()
            .rev()
            .find(|l| &l.source == source)
            .map(|l| l.time)
    }

    /// A cursor over an app's log.
    pub fn reader(&self, app_guid: &str, start: Start) -> Reader {
        let app = self.app(app_guid);
        let rx = app.notify.subscribe();
        let ring = app.lock();
        let newest = ring.next_seq - 1;
        let cursor = match start {
            // A cursor from the future (another data dir) waits for nothing: clamp it.
            Start::After(seq) => seq.min(newest),
            Start::Recent(n) => {
                let buffered_from = ring
                    .lines
                    .len()
                    .saturating_sub(self.capacity)
                    .min(ring.lines.len());
                let first_buffered = ring
                    .lines
                    .get(buffered_from)
                    .map_or(ring.next_seq, |l| l.seq);
                newest.saturating_sub(n as u64).max(first_buffered - 1)
            }
        };
        drop(ring);
        Reader {
            app,
            cursor,
            rx,
            first: true,
        }
    }

    /// Removes an app's log and its file; its readers end.
    pub fn forget(&self, app_guid: &str) {
        let Some(app) = self.apps().remove(app_guid) else {
            return;
        };
        app.lock().closed = true;
        app.notify.send_modify(|_| {});
        let mut file = app.file.lock().unwrap_or_else(|e| e.into_inner());
        file.closed = true;
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_file(file_path(dir, app_guid));
        }
    }

    /// Loads the buffers saved in the log dir, for the apps in `keep`; other files are removed
    /// (their apps were deleted while the controller was down).
    pub fn restore(&self, keep: &HashSet<String>) -> std::io::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(guid) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ndjson"))
                .map(str::to_string)
            else {
                // A compaction's temporary file: the rename never happened.
                let _ = std::fs::remove_file(&path);
                continue;
            };
            if !keep.contains(&guid) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let (lines, in_file) = read_file(&path, self.capacity)?;
            let next_seq = lines.back().map_or(1, |l| l.seq + 1);
            let written = next_seq - 1;
            let log = new_app_log(&guid, next_seq, lines);
            {
                let mut f = log.file.lock().unwrap_or_else(|e| e.into_inner());
                f.written_seq = written;
                f.lines = in_file;
            }
            {
                let mut ring = log.lock();
                ring.bytes = ring.lines.iter().map(|l| l.text.len()).sum();
            }
            log.notify.send_replace(written);
            self.apps().insert(guid, Arc::new(log));
        }
        Ok(())
    }

    /// Writes every app's new lines to its file (blocking I/O: call from a blocking thread);
    /// with `sync`, also fsyncs what was written.
    pub fn persist(&self, sync: bool) {
        let Some(dir) = &self.dir else {
            return;
        };
        self.tick_rate_limits();
        let apps: Vec<_> = self.apps().values().cloned().collect();
        for app in apps {
            if let Err(e) = self.persist_app(dir, &app, sync) {
                tracing::warn!(app = %app.guid, error = %e, "cannot save the app's log buffer");
            }
        }
    }

    fn persist_app(&self, dir: &Path, app: &AppLog, sync: bool) -> std::io::Result<()> {
        let mut file = app.file.lock().unwrap_or_else(|e| e.into_inner());
        if file.closed {
            return Ok(());
        }
        let path = file_path(dir, &app.guid);
        // Copy out under the ring lock, write without it.
        let (new, compact) = {
            let ring = app.lock();
            let newest = ring.next_seq - 1;
            if newest <= file.written_seq {
                (Vec::new(), None)
            } else {
                let unwritten = (newest - file.written_seq) as usize;
                let take = unwritten.min(self.capacity).min(ring.lines.len());
                let new: Vec<Arc<LogLine>> = ring
                    .lines
                    .iter()
                    .skip(ring.lines.len() - take)
                    .cloned()
                    .collect();
                let compact = (file.lines + new.len() > 2 * self.capacity).then(|| {
                    let skip = ring.lines.len().saturating_sub(self.capacity);
                    ring.lines.iter().skip(skip).cloned().collect::<Vec<_>>()
                });
                (new, compact)
            }
        };
        if let Some(all) = compact {
            let tmp = path.with_extension("tmp");
            let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            write_lines(&mut out, &all)?;
            let f = out.into_inner().map_err(|e| e.into_error())?;
            f.sync_data()?;
            std::fs::rename(&tmp, &path)?;
            file.lines = all.len();
            file.written_seq = all.last().map_or(file.written_seq, |l| l.seq);
            file.unsynced = false;
        } else if !new.is_empty() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            let mut out = std::io::BufWriter::new(f);
            write_lines(&mut out, &new)?;
            out.flush()?;
            file.lines += new.len();
            file.written_seq = new.last().map_or(file.written_seq, |l| l.seq);
            file.unsynced = true;
        }
        if sync && file.unsynced {
            std::fs::File::open(&path)?.sync_data()?;
            file.unsynced = false;
        }
        Ok(())
    }
}

fn new_app_log(guid: &str, next_seq: u64, lines: VecDeque<Arc<LogLine>>) -> AppLog {
    AppLog {
        guid: guid.to_string(),
        ring: Mutex::new(Ring {
            next_seq,
            lines,
            bytes: 0,
            closed: false,
            rate: RateWindow::default(),
        }),
        file: Mutex::new(FileState::default()),
        notify: watch::channel(next_seq - 1).0,
    }
}

fn file_path(dir: &Path, guid: &str) -> PathBuf {
    dir.join(format!("{guid}.ndjson"))
}

fn write_lines(out: &mut impl std::io::Write, lines: &[Arc<LogLine>]) -> std::io::Result<()> {
    for l in lines {
        serde_json::to_writer(&mut *out, &**l)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The last `capacity` lines of a saved buffer, and how many lines the file holds. A line cut
/// short by a kill mid-write is skipped.
fn read_file(path: &Path, capacity: usize) -> std::io::Result<(VecDeque<Arc<LogLine>>, usize)> {
    let reader = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut lines: VecDeque<Arc<LogLine>> = VecDeque::new();
    let mut count = 0;
    for raw in reader.split(b'\n') {
        let raw = raw?;
        count += 1;
        let Ok(line) = serde_json::from_slice::<LogLine>(&raw) else {
            continue;
        };
        // Appends are in seq order; a compaction's rename replaces the whole file.
        if lines.back().is_some_and(|l| l.seq >= line.seq) {
            continue;
        }
        lines.push_back(Arc::new(line));
        if lines.len() > capacity {
            lines.pop_front();
        }
    }
    Ok((lines, count))
}

/// Splits text into parts of at most [`MAX_LINE_BYTES`], on character boundaries.
pub fn split_text(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let r = rest?;
        if r.len() <= MAX_LINE_BYTES {
            rest = None;
            return Some(r);
        }
        let mut cut = MAX_LINE_BYTES;
        while !r.is_char_boundary(cut) {
            cut -= 1;
        }
        rest = Some(&r[cut..]);
        Some(&r[..cut])
    })
}

/// A cursor over one app's log.
pub struct Reader {
    app: Arc<AppLog>,
    /// The last `seq` handed out.
    cursor: u64,
    rx: watch::Receiver<u64>,
    first: bool,
}

impl Reader {
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// What is there after the cursor, up to `max` lines, without waiting. A drop notice comes
    /// first when the ring has moved past the cursor. `None` once the app is deleted.
    pub fn try_next(&mut self, max: usize) -> Option<Vec<LogEvent>> {
        self.rx.borrow_and_update();
        let ring = self.app.lock();
        if ring.closed {
            return None;
        }
        let mut out = Vec::new();
        let newest = ring.next_seq - 1;
        if newest > self.cursor {
            let oldest = ring.lines.front().map_or(ring.next_seq, |l| l.seq);
            if oldest > self.cursor + 1 {
                out.push(LogEvent::Dropped(LogDrop {
                    first_seq: self.cursor + 1,
                    last_seq: oldest - 1,
                    count: oldest - 1 - self.cursor,
                    time: OffsetDateTime::now_utc(),
                    reason: if self.first {
                        "older than the app's log buffer".into()
                    } else {
                        "this reader fell behind".into()
                    },
                }));
                self.cursor = oldest - 1;
            }
            let from = (self.cursor + 1 - oldest) as usize;
            for l in ring.lines.range(from..).take(max) {
                out.push(LogEvent::Line((**l).clone()));
            }
            self.cursor = out.last().map_or(self.cursor, LogEvent::seq);
        }
        self.first = false;
        Some(out)
    }

    /// Waits for lines after the cursor and returns them (see [`Reader::try_next`]).
    pub async fn next(&mut self, max: usize) -> Option<Vec<LogEvent>> {
        loop {
            let batch = self.try_next(max)?;
            if !batch.is_empty() {
                return Some(batch);
            }
            if self.rx.changed().await.is_err() {
                return None;
            }
        }
    }
}

/// Writes new lines to disk every [`PERSIST_EVERY`] and fsyncs every [`SYNC_EVERY`], until
/// shutdown; then writes and syncs once more.
pub async fn run_persister(ctx: Arc<crate::server::Ctx>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PERSIST_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sync = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let sync = last_sync.elapsed() >= SYNC_EVERY;
        if sync {
            last_sync = Instant::now();
        }
        let c = ctx.clone();
        let _ = tokio::task::spawn_blocking(move || c.logs.persist(sync)).await;
    }
    let c = ctx.clone();
    let _ = tokio::task::spawn_blocking(move || c.logs.persist(true)).await;
}

/// Follows a container's stdout and stderr into the app's log until the container ends.
/// `adopted` is true for a container that was already running when this controller started.
///
/// Docker's json-file driver drains the container's output into its own file whatever we do, so
/// the app never waits on this task; this task reads that file as fast as it can and publishes
/// each chunk's lines under one lock.
pub fn follow_instance(
    ctx: Arc<crate::server::Ctx>,
    app_guid: String,
    source: LogSource,
    container_id: String,
    adopted: bool,
) {
    tokio::spawn(async move {
        let mut opts = bollard::query_parameters::LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .timestamps(true);
        // For an adopted container, pick up after the last line a previous controller kept, so
        // what it printed while no controller watched is not lost and nothing is repeated.
        let mut after: Option<OffsetDateTime> = None;
        if adopted {
            let t = ctx
                .logs
                .last_time(&app_guid, &source)
                .unwrap_or_else(OffsetDateTime::now_utc);
            opts = opts.since(t.unix_timestamp() as i32);
            after = Some(t);
        }
        let app = ctx.logs.app(&app_guid);
        let mut stream = ctx.docker.logs(&container_id, Some(opts.build()));
        let mut splitter = [LineSplitter::default(), LineSplitter::default()];
        while let Some(Ok(chunk)) = stream.next().await {
            let (is_err, bytes) = match chunk {
                bollard::container::LogOutput::StdErr { message } => (true, message),
                other => (false, other.into_bytes()),
            };
            let lines = splitter[usize::from(is_err)].push(&bytes);
            if lines.is_empty() {
                continue;
            }
            let stream = if is_err {
                LogStream::Err
            } else {
                LogStream::Out
            };
            // Docker stamps every entry of a container in order; following across a json-file
            // rotation can send entries again, so anything not newer than the last line
            // published is a repeat.
            let fresh: Vec<_> = lines
                .iter()
                .filter(|(t, _)| after.is_none_or(|a| *t > a))
                .collect();
            if let Some((t, _)) = fresh.last() {
                after = Some(*t);
            }
            ctx.logs.publish_app_lines(
                &app,
                fresh
                    .into_iter()
                    .map(|(t, text)| (&source, stream, text.as_str(), *t)),
            );
        }
        // A last line without a newline.
        for (i, s) in splitter.iter_mut().enumerate() {
            if let Some((t, text)) = s.finish() {
                let stream = if i == 1 {
                    LogStream::Err
                } else {
                    LogStream::Out
                };
                ctx.logs
                    .publish_app_lines(&app, [(&source, stream, text.as_str(), t)]);
            }
        }
    });
}

/// Turns Docker's log frames (each `<RFC 3339 time> <bytes>`, a line or a part of one) into
/// lines with the time they were written.
#[derive(Default)]
struct LineSplitter {
    partial: Vec<u8>,
    time: Option<OffsetDateTime>,
}

impl LineSplitter {
    fn push(&mut self, frame: &[u8]) -> Vec<(OffsetDateTime, String)> {
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

    fn finish(&mut self) -> Option<(OffsetDateTime, String)> {
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

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn web0() -> LogSource {
        LogSource::app(&pier_api::ProcessType::web(), 0)
    }

    fn lines(events: &[LogEvent]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                LogEvent::Line(l) => Some(l.seq),
                LogEvent::Dropped(_) => None,
            })
            .collect()
    }

    #[test]
    fn buffer_is_bounded_and_sequenced() {
        let b = LogBroker::new(3);
        for i in 0..5 {
            b.publish(
                "a",
                &LogSource::Staging(0),
                LogStream::Out,
                &format!("l{i}"),
                now(),
            );
        }
        let recent = b.recent("a");
        assert_eq!(
            recent.iter().map(|l| l.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert!(b.recent("other").is_empty());
        // A reader asking for recent lines gets the buffer, not the whole reader window.
        let mut r = b.reader("a", Start::Recent(100));
        assert_eq!(lines(&r.try_next(100).unwrap()), vec![3, 4, 5]);
        let mut r = b.reader("a", Start::Recent(1));
        assert_eq!(lines(&r.try_next(100).unwrap()), vec![5]);
    }

    #[test]
    fn long_lines_are_split_on_char_boundaries() {
        let text = "é".repeat(MAX_LINE_BYTES); // 2 bytes each
        let parts: Vec<&str> = split_text(&text).collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.len() <= MAX_LINE_BYTES));
        assert_eq!(parts.concat(), text);
        assert_eq!(split_text("").collect::<Vec<_>>(), vec![""]);

        let b = LogBroker::new(10);
        let big = "x".repeat(MAX_LINE_BYTES * 2 + 5);
        b.publish("a", &LogSource::Api(0), LogStream::Out, &big, now());
        let r = b.recent("a");
        assert_eq!(
            r.iter().map(|l| l.text.len()).collect::<Vec<_>>(),
            vec![MAX_LINE_BYTES, MAX_LINE_BYTES, 5]
        );
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

    #[test]
    fn resume_after_seq_has_no_duplicates_and_no_gaps() {
        let b = LogBroker::new(100);
        for i in 0..10 {
            b.publish(
                "a",
                &LogSource::Api(0),
                LogStream::Out,
                &format!("{i}"),
                now(),
            );
        }
        let mut r = b.reader("a", Start::After(4));
        assert_eq!(lines(&r.try_next(100).unwrap()), vec![5, 6, 7, 8, 9, 10]);
        // Resuming after what is no longer buffered says so, exactly.
        let b = LogBroker::new(3).with_window(3);
        for i in 0..10 {
            b.publish(
                "a",
                &LogSource::Api(0),
                LogStream::Out,
                &format!("{i}"),
                now(),
            );
        }
        let mut r = b.reader("a", Start::After(2));
        let ev = r.try_next(100).unwrap();
        assert!(matches!(&ev[0], LogEvent::Dropped(d)
            if d.first_seq == 3 && d.last_seq == 7 && d.count == 5 && d.reason.contains("buffer")));
        assert_eq!(lines(&ev), vec![8, 9, 10]);
        assert_eq!(r.cursor(), 10);
    }

    #[test]
    fn a_slow_reader_gets_exact_drop_counts_and_never_blocks_publishers() {
        let b = LogBroker::new(10).with_window(50);
        let mut slow = b.reader("a", Start::After(0));
        let mut fast = b.reader("a", Start::After(0));
        let mut fast_got = Vec::new();
        let mut slow_lines = 0u64;
        let mut slow_dropped = 0u64;
        let mut last = 0;
        for i in 0..1000u64 {
            b.publish("a", &web0(), LogStream::Out, &i.to_string(), now());
            fast_got.extend(lines(&fast.try_next(1000).unwrap()));
            if i % 97 == 0 {
                // The slow reader only reads a few lines, now and then.
                for e in slow.try_next(7).unwrap() {
                    match e {
                        LogEvent::Line(l) => {
                            assert!(l.seq > last, "in order");
                            last = l.seq;
                            slow_lines += 1;
                        }
                        LogEvent::Dropped(d) => {
                            assert_eq!(d.first_seq, last + 1, "the drop starts where it left off");
                            assert!(d.reason.contains("behind"));
                            last = d.last_seq;
                            slow_dropped += d.count;
                        }
                    }
                }
            }
        }
        // Drain the slow one.
        while let Some(batch) = slow.try_next(7) {
            if batch.is_empty() {
                break;
            }
            for e in batch {
                match e {
                    LogEvent::Line(l) => {
                        assert!(l.seq > last);
                        last = l.seq;
                        slow_lines += 1;
                    }
                    LogEvent::Dropped(d) => {
                        assert_eq!(d.first_seq, last + 1);
                        last = d.last_seq;
                        slow_dropped += d.count;
                    }
                }
            }
        }
        assert!(slow_dropped > 0);
        assert_eq!(slow_lines + slow_dropped, 1000);
        assert_eq!(fast_got, (1..=1000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn readers_wake_on_new_lines_and_end_when_the_app_is_deleted() {
        let b = Arc::new(LogBroker::new(10));
        let mut r = b.reader("a", Start::Recent(10));
        let b2 = b.clone();
        let t = tokio::spawn(async move { r.next(10).await.map(|e| lines(&e)) });
        tokio::task::yield_now().await;
        b2.publish("a", &LogSource::Cell(0), LogStream::Out, "started", now());
        assert_eq!(t.await.unwrap(), Some(vec![1]));
        let mut r = b.reader("a", Start::Recent(0));
        b.forget("a");
        assert!(r.next(10).await.is_none());
    }

    #[test]
    fn rate_limit_drops_app_output_with_a_notice_but_never_platform_lines() {
        let b = LogBroker::new(1000).with_rate_limit(5);
        let app = b.app("a");
        let t = now();
        let web = web0();
        let batch: Vec<(&LogSource, LogStream, &str, OffsetDateTime)> =
            (0..20).map(|_| (&web, LogStream::Out, "x", t)).collect();
        b.publish_app_lines(&app, batch);
        b.publish("a", &LogSource::Cell(0), LogStream::Out, "platform", t);
        assert_eq!(b.recent("a").len(), 6);
        // The notice comes once the second is over.
        app.lock().rate.started = Some(Instant::now() - Duration::from_secs(2));
        b.tick_rate_limits();
        let r = b.recent("a");
        let notice = r.last().unwrap();
        assert_eq!(notice.source, LogSource::Logger);
        assert!(
            notice.text.starts_with("15 lines dropped") && notice.text.contains("APP/PROC/WEB/0"),
            "{}",
            notice.text
        );
    }

    #[test]
    fn buffers_survive_a_restart_and_files_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let b = LogBroker::new(10).with_dir(dir.path().to_path_buf());
        b.restore(&HashSet::new()).unwrap();
        for round in 0..10 {
            for i in 0..7 {
                b.publish(
                    "a",
                    &LogSource::Api(0),
                    LogStream::Out,
                    &format!("{round}-{i}"),
                    now(),
                );
            }
            b.persist(round % 3 == 0);
            let n = std::fs::read_to_string(dir.path().join("a.ndjson"))
                .unwrap()
                .lines()
                .count();
            assert!(n <= 30, "file bounded: {n} lines");
        }
        b.publish("gone", &LogSource::Api(0), LogStream::Out, "x", now());
        b.persist(false);
        // A torn last line (killed mid-write) is skipped.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("a.ndjson"))
            .unwrap();
        f.write_all(b"{\"seq\":99,\"ti").unwrap();

        let again = LogBroker::new(10).with_dir(dir.path().to_path_buf());
        again.restore(&HashSet::from(["a".to_string()])).unwrap();
        let recent = again.recent("a");
        assert_eq!(recent.len(), 10);
        assert_eq!(recent.last().unwrap().seq, 70);
        assert_eq!(recent.last().unwrap().text, "9-6");
        assert!(
            !dir.path().join("gone.ndjson").exists(),
            "deleted apps' files go"
        );
        // Numbering goes on: a reader resuming from before the restart misses nothing held.
        let l = again.publish("a", &LogSource::Api(0), LogStream::Out, "after", now());
        assert_eq!(l.seq, 71);
        let mut r = again.reader("a", Start::After(65));
        assert_eq!(
            lines(&r.try_next(100).unwrap()),
            vec![66, 67, 68, 69, 70, 71]
        );
        again.forget("a");
        assert!(!dir.path().join("a.ndjson").exists());
    }
}

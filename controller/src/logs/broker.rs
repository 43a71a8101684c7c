//! The rings: every app has one ring of recent lines, numbered by `seq`, that publishers append
//! to and readers follow with a cursor (see the invariants in `logs/mod.rs`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pier_api::logs::MAX_LINE_BYTES;
use pier_api::{LogDrop, LogEvent, LogLine, LogSource, LogStream};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::persist::file_path;

/// Lines a following reader may be behind before it loses any: the ring holds this many lines
/// (or the buffer size, when that is larger). At 100 000 lines/s that is 160 ms of slack.
pub const READER_WINDOW: usize = 16_384;
/// Beyond the buffer, the ring also stops growing at this many bytes of text.
const WINDOW_BYTES: usize = 32 * 1024 * 1024;
pub(super) struct Ring {
    pub(super) next_seq: u64,
    pub(super) lines: VecDeque<Arc<LogLine>>,
    pub(super) bytes: usize,
    /// Set when the app is deleted: readers end.
    pub(super) closed: bool,
    pub(super) rate: RateWindow,
}

/// One app's rate limit: a token bucket (`rate_limit` tokens a second, at most `rate_burst`
/// held; it starts full), so a short burst passes whole and a flood is cut to the rate. Drops are
/// counted per source and reported once a second (`started` is the notice's second).
#[derive(Default)]
pub(super) struct RateWindow {
    started: Option<Instant>,
    /// Tokens left, and when they were last topped up (None: the bucket is full).
    tokens: f64,
    refilled: Option<Instant>,
    dropped: BTreeMap<LogSource, u64>,
}

/// What is on disk for one app.
#[derive(Default)]
pub(super) struct FileState {
    /// Highest `seq` written to the file.
    pub(super) written_seq: u64,
    /// Lines in the file (compaction rewrites it past two buffers).
    pub(super) lines: usize,
    pub(super) unsynced: bool,
    pub(super) closed: bool,
}

/// One app's log.
pub struct AppLog {
    pub(super) guid: String,
    pub(super) ring: Mutex<Ring>,
    pub(super) file: Mutex<FileState>,
    pub(super) notify: watch::Sender<u64>,
}

impl AppLog {
    pub(super) fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct LogBroker {
    /// Lines kept for `--recent` and across restarts.
    pub(super) capacity: usize,
    /// Lines kept for following readers (≥ capacity).
    pub(super) window: usize,
    /// App output lines per second per app (sustained); 0 is no limit.
    pub(super) rate_limit: u64,
    /// Lines an app may log at once above the sustained rate (the bucket's size).
    pub(super) rate_burst: u64,
    pub(super) dir: Option<PathBuf>,
    pub(super) apps: Mutex<HashMap<String, Arc<AppLog>>>,
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
            rate_burst: 0,
            dir: None,
            apps: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps each app's buffer in `dir` (see [`LogBroker::persist`] and [`LogBroker::restore`]).
    pub fn with_dir(mut self, dir: PathBuf) -> LogBroker {
        self.dir = Some(dir);
        self
    }

    /// Drops app output over `lines_per_sec` per app, with a notice; 0 turns the limit off. Bursts
    /// of up to `burst` lines (at least `lines_per_sec`) pass whole.
    pub fn with_rate_limit(mut self, lines_per_sec: u64, burst: u64) -> LogBroker {
        self.rate_limit = lines_per_sec;
        self.rate_burst = burst.max(lines_per_sec);
        self
    }

    #[cfg(test)]
    fn with_window(mut self, window: usize) -> LogBroker {
        self.window = window.max(self.capacity);
        self
    }

    pub(super) fn apps(&self) -> MutexGuard<'_, HashMap<String, Arc<AppLog>>> {
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
        }
        let burst = self.rate_burst as f64;
        let rate = &mut ring.rate;
        rate.tokens = match rate.refilled {
            None => burst,
            Some(t) => (rate.tokens + now.duration_since(t).as_secs_f64() * self.rate_limit as f64)
                .min(burst),
        };
        rate.refilled = Some(now);
        if rate.tokens >= 1.0 {
            rate.tokens -= 1.0;
            false
        } else {
            *rate.dropped.entry(source.clone()).or_default() += 1;
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
            "{total} lines dropped: the app logged more than its limit of {} lines/s (bursts of {}) ({})",
            self.rate_limit,
            self.rate_burst,
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
    pub(super) fn tick_rate_limits(&self) {
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

    /// The newest time of a line from `source` on `stream` still held, and how many held lines
    /// of that source and stream have exactly that time: where a follower of the same container
    /// picks up.
    pub fn resume_point(
        &self,
        app_guid: &str,
        source: &LogSource,
        stream: LogStream,
    ) -> Option<(OffsetDateTime, usize)> {
        let app = self.get(app_guid)?;
        let ring = app.lock();
        let mut ours = ring
            .lines
            .iter()
            .rev()
            .filter(|l| &l.source == source && l.stream == stream);
        let newest = ours.next()?.time;
        let same = ours.take_while(|l| l.time == newest).count();
        Some((newest, same + 1))
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
}

pub(super) fn new_app_log(guid: &str, next_seq: u64, lines: VecDeque<Arc<LogLine>>) -> AppLog {
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
        let b = LogBroker::new(1000).with_rate_limit(5, 5);
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
    fn rate_limit_lets_a_burst_through_whole_and_cuts_a_flood_to_the_rate() {
        let b = LogBroker::new(10).with_rate_limit(100, 1000);
        let app = b.app("a");
        let t = now();
        let web = web0();
        let app_lines = || app.lock().next_seq - 1;
        // A burst of the bucket's size passes whole.
        b.publish_app_lines(&app, (0..1000).map(|_| (&web, LogStream::Out, "x", t)));
        assert_eq!(app_lines(), 1000);
        // Then the bucket is empty: a flood gets only what refilled (100/s).
        b.publish_app_lines(&app, (0..500).map(|_| (&web, LogStream::Out, "x", t)));
        assert!(app_lines() <= 1001, "{}", app_lines());
        {
            let mut r = app.lock();
            r.rate.refilled = r.rate.refilled.map(|i| i - Duration::from_millis(500));
        }
        b.publish_app_lines(&app, (0..500).map(|_| (&web, LogStream::Out, "x", t)));
        let n = app_lines();
        assert!(
            (1050..=1052).contains(&n),
            "half a second refilled 50 lines: {n}"
        );
    }
}

//! Persistence of the rings: every [`PERSIST_EVERY`] new lines are appended to
//! `<data>/logs/<app guid>.ndjson` (fsynced every [`SYNC_EVERY`]), compacted to the last `buffer`
//! lines; at start the files of apps that still exist are read back with their seq numbers.

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pier_api::LogLine;
use tokio_util::sync::CancellationToken;

use super::broker::{new_app_log, AppLog, LogBroker};

/// How often new lines are written to the app's file.
pub const PERSIST_EVERY: Duration = Duration::from_millis(100);
/// How often written lines are fsynced.
const SYNC_EVERY: Duration = Duration::from_secs(1);

impl LogBroker {
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
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut out = std::io::BufWriter::new(f);
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
                .mode(0o600)
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

pub(super) fn file_path(dir: &Path, guid: &str) -> PathBuf {
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

/// Writes new lines to disk every [`PERSIST_EVERY`] and fsyncs every [`SYNC_EVERY`], until
/// shutdown; then writes and syncs once more.
pub async fn run_persister(logs: Arc<LogBroker>, shutdown: CancellationToken) {
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
        let l = logs.clone();
        let _ = tokio::task::spawn_blocking(move || l.persist(sync)).await;
    }
    let _ = tokio::task::spawn_blocking(move || logs.persist(true)).await;
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use crate::logs::Start;

    use pier_api::{LogSource, LogStream};
    use time::OffsetDateTime;

    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn lines(events: &[pier_api::LogEvent]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                pier_api::LogEvent::Line(l) => Some(l.seq),
                pier_api::LogEvent::Dropped(_) => None,
            })
            .collect()
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

//! The log broker: per app, a bounded backlog of recent lines with sequence numbers and a broadcast
//! channel for followers.
//!
//! A follower subscribes first, then reads the backlog, then the live channel, skipping any line
//! whose `seq` it has already seen, so joining never loses or repeats a line.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;

use pier_api::{LogLine, LogStream};
use time::OffsetDateTime;
use tokio::sync::broadcast;

struct AppLog {
    next_seq: u64,
    backlog: VecDeque<LogLine>,
    tx: broadcast::Sender<LogLine>,
}

pub struct LogBroker {
    capacity: usize,
    apps: Mutex<HashMap<String, AppLog>>,
}

impl LogBroker {
    pub fn new(capacity: usize) -> LogBroker {
        LogBroker {
            capacity: capacity.max(1),
            apps: Mutex::new(HashMap::new()),
        }
    }

    fn with_app<R>(&self, app_guid: &str, f: impl FnOnce(&mut AppLog) -> R) -> R {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let log = apps.entry(app_guid.to_string()).or_insert_with(|| AppLog {
            next_seq: 1,
            backlog: VecDeque::new(),
            tx: broadcast::channel(4096).0,
        });
        f(log)
    }

    /// Adds a line to an app's log and returns it with its sequence number.
    pub fn publish(
        &self,
        app_guid: &str,
        source: &str,
        stream: LogStream,
        text: &str,
        time: OffsetDateTime,
    ) -> LogLine {
        let capacity = self.capacity;
        self.with_app(app_guid, |log| {
            let line = LogLine {
                seq: log.next_seq,
                time,
                source: source.to_string(),
                stream,
                text: text.to_string(),
            };
            log.next_seq += 1;
            if log.backlog.len() == capacity {
                log.backlog.pop_front();
            }
            log.backlog.push_back(line.clone());
            // No receivers is fine: nobody is following.
            let _ = log.tx.send(line.clone());
            line
        })
    }

    /// The backlog, and a receiver for what comes after it.
    pub fn subscribe(&self, app_guid: &str) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        self.with_app(app_guid, |log| {
            let rx = log.tx.subscribe();
            (log.backlog.iter().cloned().collect(), rx)
        })
    }

    pub fn recent(&self, app_guid: &str) -> Vec<LogLine> {
        self.with_app(app_guid, |log| log.backlog.iter().cloned().collect())
    }

    pub fn forget(&self, app_guid: &str) {
        self.apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(app_guid);
    }
}

/// Where an instance's output goes: `APP/PROC/WEB/0`.
pub fn app_source(process: &pier_api::ProcessType, index: u32) -> String {
    format!("APP/PROC/{}/{index}", process.as_str().to_ascii_uppercase())
}

/// Follows a container's stdout and stderr into the app's log until the container ends.
/// `adopted` is true for a container that was already running when this controller started.
pub fn follow_instance(
    ctx: Arc<crate::server::Ctx>,
    app_guid: String,
    source: String,
    container_id: String,
    adopted: bool,
) {
    tokio::spawn(async move {
        let mut opts = bollard::query_parameters::LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .timestamps(true);
        if adopted {
            // What it printed while no controller was watching is in Docker's log; take only
            // what comes from now on, so nothing already buffered is repeated.
            opts = opts.since(OffsetDateTime::now_utc().unix_timestamp() as i32);
        }
        let mut stream = ctx.docker.logs(&container_id, Some(opts.build()));
        let mut partial: HashMap<bool, String> = HashMap::new();
        while let Some(Ok(chunk)) = stream.next().await {
            let (is_err, bytes) = match chunk {
                bollard::container::LogOutput::StdErr { message } => (true, message),
                other => (false, other.into_bytes()),
            };
            let buf = partial.entry(is_err).or_default();
            buf.push_str(&String::from_utf8_lossy(&bytes));
            while let Some(i) = buf.find('\n') {
                let raw: String = buf.drain(..=i).collect();
                let raw = raw.trim_end_matches(['\n', '\r']);
                // With timestamps on, Docker prefixes each line with its RFC 3339 time.
                let (time, text) = match raw.split_once(' ') {
                    Some((ts, rest)) => match OffsetDateTime::parse(
                        ts,
                        &time::format_description::well_known::Rfc3339,
                    ) {
                        Ok(t) => (t, rest),
                        Err(_) => (OffsetDateTime::now_utc(), raw),
                    },
                    None => (OffsetDateTime::now_utc(), raw),
                };
                let stream = if is_err {
                    LogStream::Err
                } else {
                    LogStream::Out
                };
                ctx.logs.publish(&app_guid, &source, stream, text, time);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_is_bounded_and_sequenced() {
        let b = LogBroker::new(3);
        let (_, mut rx) = b.subscribe("a");
        for i in 0..5 {
            b.publish(
                "a",
                "STG/0",
                LogStream::Out,
                &format!("l{i}"),
                OffsetDateTime::now_utc(),
            );
        }
        let recent = b.recent("a");
        assert_eq!(
            recent.iter().map(|l| l.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(rx.try_recv().unwrap().text, "l0");
        assert!(b.recent("other").is_empty());
    }
}

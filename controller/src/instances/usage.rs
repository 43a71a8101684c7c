//! Resource use of running instances, sampled in the background.
//!
//! Asking the runtime while a user waits costs seconds (a CPU share needs two readings, a disk
//! figure walks the container's layer), once per instance. Instead [`Instances::sample_usage`]
//! reads every running instance's counters once per interval (one one-shot read each, a few at a
//! time) and keeps the latest reading with its time; the CPU share is the change since the
//! reading before. Disk use is walked less often ([`DISK_EVERY`] intervals). `pier app` answers
//! from the book at once and shows how old the figures are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use pier_api::{InstanceStats, InstanceStatus};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::Instances;
use crate::runtime::Sample;

/// Disk use is walked once every this many samples.
pub(crate) const DISK_EVERY: u32 = 15;
/// Containers read at once.
const CONCURRENCY: usize = 8;

#[derive(Debug, Clone)]
struct Entry {
    sample: Sample,
    at: OffsetDateTime,
    cpu_percent: f64,
    disk_bytes: Option<u64>,
    /// Samples since the disk was last walked.
    since_disk: u32,
}

/// The latest reading per container id.
#[derive(Default)]
pub(crate) struct UsageBook {
    entries: Mutex<HashMap<String, Entry>>,
}

impl UsageBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a reading: the CPU share is taken against the previous one.
    fn record(&self, id: &str, sample: Sample, at: OffsetDateTime, disk: Option<u64>) {
        let mut entries = self.lock();
        let prev = entries.get(id);
        let cpu_percent = prev.map_or(0.0, |p| sample.cpu_percent_since(&p.sample));
        let (disk_bytes, since_disk) = match disk {
            Some(d) => (Some(d), 0),
            None => (
                prev.and_then(|p| p.disk_bytes),
                prev.map_or(0, |p| p.since_disk + 1),
            ),
        };
        entries.insert(
            id.to_string(),
            Entry {
                sample,
                at,
                cpu_percent,
                disk_bytes,
                since_disk,
            },
        );
    }

    /// True when the container's disk use is due to be walked again.
    fn disk_due(&self, id: &str) -> bool {
        self.lock()
            .get(id)
            .is_none_or(|e| e.disk_bytes.is_none() || e.since_disk + 1 >= DISK_EVERY)
    }

    /// Forgets containers no longer running.
    fn keep_only(&self, ids: &[String]) {
        self.lock().retain(|id, _| ids.contains(id));
    }

    fn get(&self, id: &str) -> Option<Entry> {
        self.lock().get(id).cloned()
    }
}

impl Instances {
    /// The latest sample of an instance's resource use, with its disk quota and uptime; `None`
    /// before its first sample.
    pub fn usage(&self, status: &InstanceStatus, disk_mb: u64) -> Option<InstanceStats> {
        let id = status.container_id.as_deref()?;
        let e = self.usage.get(id)?;
        let uptime = (OffsetDateTime::now_utc() - status.since)
            .whole_seconds()
            .max(0) as u64;
        Some(InstanceStats {
            cpu_percent: (e.cpu_percent * 10.0).round() / 10.0,
            memory_bytes: e.sample.memory_bytes,
            memory_limit_bytes: e.sample.memory_limit_bytes,
            disk_bytes: e.disk_bytes.unwrap_or(0),
            disk_limit_bytes: disk_mb * 1024 * 1024,
            uptime_secs: uptime,
            sampled_at: Some(e.at),
        })
    }

    /// Samples every running instance once.
    pub async fn sample_usage_once(&self) {
        let ids = self.registry.running_containers();
        self.usage.keep_only(&ids);
        let runtime = self.deps.runtime.clone();
        let book = &self.usage;
        futures_util::stream::iter(ids)
            .for_each_concurrent(CONCURRENCY, |id| {
                let runtime = runtime.clone();
                async move {
                    let Some(sample) = runtime.sample(&id).await else {
                        return;
                    };
                    let at = OffsetDateTime::now_utc();
                    let disk = if book.disk_due(&id) {
                        runtime.disk_usage(&id).await
                    } else {
                        None
                    };
                    book.record(&id, sample, at, disk);
                }
            })
            .await;
    }

    /// Samples every `every` until shutdown.
    pub async fn sample_usage(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.sample_usage_once().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(cpu: u64, system: u64) -> Sample {
        Sample {
            cpu_total_ns: cpu,
            system_ns: system,
            online_cpus: 2,
            memory_bytes: 10,
            memory_limit_bytes: 100,
        }
    }

    #[test]
    fn cpu_is_the_change_since_the_previous_sample() {
        let book = UsageBook::default();
        let t = OffsetDateTime::now_utc();
        book.record("c", sample(0, 0), t, Some(1));
        assert_eq!(book.get("c").map(|e| e.cpu_percent), Some(0.0));
        // Half the machine's time over two CPUs: one whole core.
        book.record("c", sample(500, 1000), t, None);
        assert_eq!(book.get("c").map(|e| e.cpu_percent), Some(100.0));
        // A counter that went backwards (a restarted container) reads as idle, not negative.
        book.record("c", sample(100, 2000), t, None);
        assert_eq!(book.get("c").map(|e| e.cpu_percent), Some(0.0));
    }

    #[test]
    fn disk_is_walked_every_few_samples_and_kept_between() {
        let book = UsageBook::default();
        let t = OffsetDateTime::now_utc();
        assert!(book.disk_due("c"));
        book.record("c", sample(0, 0), t, Some(4096));
        let mut walked = 0;
        for _ in 0..(DISK_EVERY * 2) {
            let due = book.disk_due("c");
            walked += u32::from(due);
            book.record("c", sample(0, 0), t, due.then_some(8192));
            assert!(book.get("c").and_then(|e| e.disk_bytes).is_some());
        }
        assert_eq!(walked, 2);
        book.keep_only(&[]);
        assert!(book.get("c").is_none());
    }
}

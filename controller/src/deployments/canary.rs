//! Canary analysis: the router's own per-request outcomes of each instance, and the verdict that
//! compares a canary with its baseline. Pure apart from the outcome buffer's lock.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// One request's outcome: when it ended, its status, and how long it took in ms.
type Outcome = (Instant, u16, f64);

/// Per-instance request outcomes the router reported, for canary analysis.
#[derive(Default)]
pub struct RequestStats {
    by_instance: Mutex<HashMap<String, VecDeque<Outcome>>>,
}

/// Outcomes kept per instance, newest last (bounds memory however busy the app is).
const STATS_KEPT: usize = 20_000;

impl RequestStats {
    pub fn record(&self, instance_id: &str, status: u16, duration_ms: f64) {
        let mut m = self.by_instance.lock().unwrap_or_else(|e| e.into_inner());
        let q = m.entry(instance_id.to_string()).or_default();
        if q.len() == STATS_KEPT {
            q.pop_front();
        }
        q.push_back((Instant::now(), status, duration_ms));
    }

    /// (requests, 5xx rate, p99 ms) of the given instances over the last `window`.
    pub fn summary(&self, instances: &[String], window: Duration) -> (usize, f64, f64) {
        let now = Instant::now();
        let since = now.checked_sub(window).unwrap_or(now);
        let m = self.by_instance.lock().unwrap_or_else(|e| e.into_inner());
        let mut durations = vec![];
        let mut errors = 0usize;
        for id in instances {
            if let Some(q) = m.get(id) {
                for (_, status, d) in q.iter().filter(|(t, _, _)| *t >= since) {
                    if *status >= 500 {
                        errors += 1;
                    }
                    durations.push(*d);
                }
            }
        }
        let n = durations.len();
        if n == 0 {
            return (0, 0.0, 0.0);
        }
        durations.sort_by(|a, b| a.total_cmp(b));
        let p99 = durations[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1];
        (n, errors as f64 / n as f64, p99)
    }
}

/// Fewest requests on each side for their p99 latencies to be compared: the p99 of a handful of
/// requests is just their slowest one (one slow request against one fast one is not a verdict).
pub(crate) const MIN_P99_REQUESTS: usize = 10;

/// The canary's verdict: `Ok(figures)` to go on, `Err(figures)` to roll back.
pub fn judge(
    canary: (usize, f64, f64),
    baseline: (usize, f64, f64),
    max_error_rate_increase: f64,
    max_p99_increase_ms: f64,
) -> std::result::Result<String, String> {
    let figures = format!(
        "canary: {} requests, {:.1}% 5xx, p99 {:.0} ms; baseline: {} requests, {:.1}% 5xx, p99 {:.0} ms",
        canary.0,
        canary.1 * 100.0,
        canary.2,
        baseline.0,
        baseline.1 * 100.0,
        baseline.2
    );
    if canary.1 > baseline.1 + max_error_rate_increase {
        return Err(format!(
            "error rate {:.1}% is over the baseline's {:.1}% by more than {:.1} points ({figures})",
            canary.1 * 100.0,
            baseline.1 * 100.0,
            max_error_rate_increase * 100.0
        ));
    }
    let comparable = canary.0 >= MIN_P99_REQUESTS && baseline.0 >= MIN_P99_REQUESTS;
    if comparable && canary.2 > baseline.2 + max_p99_increase_ms {
        return Err(format!(
            "p99 latency {:.0} ms is over the baseline's {:.0} ms by more than {:.0} ms ({figures})",
            canary.2, baseline.2, max_p99_increase_ms
        ));
    }
    Ok(figures)
}

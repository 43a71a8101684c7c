//! A counter of state changes, for clients that wait for the next one instead of polling.
//!
//! Every write of an app record (config, deployments, droplets), every event and every change of
//! an instance's state bumps it. `GET /v1/apps/{name}?wait_after=V` answers once the counter has
//! passed `V` (or after a timeout), so `pier push` and `pier scale` learn that an instance is
//! healthy the moment the supervisor records it. The counter is controller-wide: a change to
//! another app wakes a waiter too, which then asks again; nothing is missed because the counter is
//! read before the answer is made.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

#[derive(Clone)]
pub struct Changes {
    tx: Arc<watch::Sender<u64>>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            tx: Arc::new(watch::Sender::new(1)),
        }
    }
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Changes({})", self.version())
    }
}

impl Changes {
    pub fn bump(&self) {
        self.tx.send_modify(|v| *v += 1);
    }

    pub fn version(&self) -> u64 {
        *self.tx.borrow()
    }

    /// Waits until the counter is past `seen`, at most `limit`; returns the counter then.
    pub async fn wait_after(&self, seen: u64, limit: Duration) -> u64 {
        let mut rx = self.tx.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|v| *v > seen)).await;
        self.version()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_waiter_wakes_on_the_next_change_or_at_its_limit() {
        let c = Changes::default();
        let seen = c.version();
        // Already past: no wait.
        c.bump();
        let t = tokio::time::Instant::now();
        assert_eq!(c.wait_after(seen, Duration::from_secs(30)).await, seen + 1);
        assert_eq!(t.elapsed(), Duration::ZERO);
        // Nothing changes: the limit.
        let seen = c.version();
        assert_eq!(c.wait_after(seen, Duration::from_secs(5)).await, seen);
        assert_eq!(t.elapsed(), Duration::from_secs(5));
        // A change while waiting wakes it at once.
        let c2 = c.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            c2.bump();
        });
        assert_eq!(c.wait_after(seen, Duration::from_secs(30)).await, seen + 1);
        assert_eq!(t.elapsed(), Duration::from_secs(6));
    }
}

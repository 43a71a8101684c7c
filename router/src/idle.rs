//! Idle keep-alive connections to instances, by address: what both connection pools (the HTTP/1
//! engine's and hyper's client for HTTP/2 clients) keep between requests.
//!
//! Each thread of [`crate::serve_threads`] has its own pools, so the lock is never contended.
//! The newest connection is used first (the likeliest to still be open); a pool keeps at most
//! `max_per_addr` per address and forgets connections idle longer than `idle_timeout`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limit on open connections to instances ([`crate::ProxyOptions::max_upstream_connections`]),
/// shared by every thread and both pools: a connection holds its permit until it closes,
/// idle in a pool or not.
#[derive(Clone)]
pub(crate) struct UpstreamLimit {
    pub(crate) permits: Arc<Semaphore>,
    /// How long a request may wait for a permit (the connect timeout).
    pub(crate) wait: Duration,
}

impl UpstreamLimit {
    /// A permit for a new connection. At the limit, `drop_idle` closes one of the caller's
    /// idle connections (it says whether it found one) and the request waits for a permit,
    /// as Envoy queues a pending request at its circuit breaker; `None` when none came in time.
    pub(crate) async fn acquire(
        &self,
        drop_idle: impl FnOnce() -> bool,
    ) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = Arc::clone(&self.permits).try_acquire_owned() {
            return Some(p);
        }
        if drop_idle() {
            if let Ok(p) = Arc::clone(&self.permits).try_acquire_owned() {
                return Some(p);
            }
        }
        let wait = Arc::clone(&self.permits).acquire_owned();
        match tokio::time::timeout(self.wait, wait).await {
            Ok(Ok(p)) => Some(p),
            _ => {
                // Counted in the metrics as `upstream_limit`; a log line per request would
                // flood the log exactly when the router is overloaded.
                tracing::debug!(
                    limit = "max_upstream_connections",
                    "no connection to an instance free in time; answering 503"
                );
                None
            }
        }
    }
}

pub(crate) struct IdlePool<T> {
    idle: Mutex<HashMap<SocketAddr, Vec<(T, Instant)>>>,
    idle_timeout: Duration,
    max_per_addr: usize,
    puts: AtomicU64,
}

impl<T> IdlePool<T> {
    pub(crate) fn new(idle_timeout: Duration, max_per_addr: usize) -> Self {
        IdlePool {
            idle: Mutex::new(HashMap::new()),
            idle_timeout,
            max_per_addr,
            puts: AtomicU64::new(0),
        }
    }

    /// The most recently used idle connection to `addr` that is fresh and still `usable`;
    /// the stale and unusable ones met on the way are dropped.
    pub(crate) fn take(&self, addr: SocketAddr, usable: impl Fn(&T) -> bool) -> Option<T> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&addr)?;
        while let Some((conn, since)) = list.pop() {
            if since.elapsed() < self.idle_timeout && usable(&conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Drops the connection that has been idle longest, of any address; whether there was one.
    pub(crate) fn drop_oldest(&self) -> bool {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = idle
            .iter()
            .filter_map(|(addr, l)| l.first().map(|(_, since)| (*since, *addr)))
            .min();
        let Some((_, addr)) = oldest else {
            return false;
        };
        if let Some(l) = idle.get_mut(&addr) {
            if !l.is_empty() {
                drop(l.remove(0));
            }
            if l.is_empty() {
                idle.remove(&addr);
            }
        }
        true
    }

    /// Keeps `conn` for the next request to `addr`.
    pub(crate) fn put(&self, addr: SocketAddr, conn: T) {
        if self.max_per_addr == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() >= self.max_per_addr {
            // Keep the newest; the oldest is the likeliest to be closed by the instance.
            list.remove(0);
        }
        list.push((conn, now));
        // Addresses of instances that are gone: forget their connections now and then.
        if self.puts.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 && idle.len() > 1 {
            let ttl = self.idle_timeout;
            idle.retain(|_, l| {
                l.retain(|(_, since)| since.elapsed() < ttl);
                !l.is_empty()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_usable_first_and_bounded() {
        let pool = IdlePool::new(Duration::from_secs(60), 2);
        let a: SocketAddr = ([127, 0, 0, 1], 1).into();
        let b: SocketAddr = ([127, 0, 0, 1], 2).into();
        pool.put(a, 1);
        pool.put(a, 2);
        pool.put(a, 3); // drops 1
        assert_eq!(pool.take(b, |_| true), None);
        assert_eq!(pool.take(a, |&c| c != 3), Some(2), "3 unusable, dropped");
        assert_eq!(pool.take(a, |_| true), None);
        let expired = IdlePool::new(Duration::ZERO, 2);
        expired.put(a, 1);
        assert_eq!(expired.take(a, |_| true), None);
    }
}

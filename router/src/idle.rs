//! Idle keep-alive connections to instances, by address: what both connection pools (the HTTP/1
//! engine's and hyper's client for HTTP/2 clients) keep between requests.
//!
//! Each thread of [`crate::serve_threads`] has its own pools, so the lock is never contended.
//! The newest connection is used first (the likeliest to still be open); a pool keeps at most
//! `max_per_addr` per address and forgets connections idle longer than `idle_timeout`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

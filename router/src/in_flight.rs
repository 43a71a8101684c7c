//! Requests in flight per instance id: what least-connections balances on, and what an
//! embedding controller waits on before it stops an instance it took out of the table.
//!
//! One [`InFlight`] is made by whoever runs the router and handed in through
//! [`crate::ProxyOptions::in_flight`]; every route table built from then on takes its counters
//! from it. The counts are per instance id, not per table, so a table built after an instance
//! left still sees the requests that older tables sent it; a counter goes away with the last
//! table (or request) that holds it.
//!
//! The hot path costs one atomic increment and one decrement per request. Only a decrement to
//! zero looks further, and only while someone waits ([`InFlight::wait_idle`]) does it wake
//! anyone, so waiting needs no polling and costs requests nothing while nobody waits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;
use tokio::time::Instant as Deadline;

/// Requests in flight per instance id, shared by every route table and every clone of it
/// (cloning is cheap: an `Arc`). `Default` makes an empty one.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    counters: Arc<Mutex<HashMap<String, Weak<Counter>>>>,
}

/// One instance's count.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    count: AtomicUsize,
    /// Callers of [`InFlight::wait_idle`] waiting on this instance.
    waiters: AtomicUsize,
    idle: Notify,
}

impl Counter {
    /// The count, for balancing (a moment's staleness is fine there).
    pub(crate) fn current(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    // SeqCst on the count and on `waiters` orders "a waiter registered, then saw a count > 0"
    // against "the count dropped to 0, then no waiter was seen": at most one of the two happens,
    // so a waiter is never left asleep (see `wait_idle`). On x86 the read-modify-writes cost the
    // same as Relaxed ones.
    #[inline]
    fn start(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    #[inline]
    fn end(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 && self.waiters.load(Ordering::SeqCst) > 0
        {
            self.idle.notify_waiters();
        }
    }
}

/// Counts one request in flight on one instance until it drops.
#[derive(Debug)]
pub struct InFlightGuard(Option<Arc<Counter>>);

impl InFlightGuard {
    #[inline]
    pub(crate) fn start(counter: Option<&Arc<Counter>>) -> Self {
        if let Some(c) = counter {
            c.start();
        }
        InFlightGuard(counter.cloned())
    }
}

impl Drop for InFlightGuard {
    #[inline]
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.end();
        }
    }
}

impl InFlight {
    /// The counter of `instance_id`, shared with every table that already lists it.
    pub(crate) fn counter(&self, instance_id: &str) -> Arc<Counter> {
        let mut map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(instance_id).and_then(Weak::upgrade) {
            return c;
        }
        // Tables are built once per published table, so sweeping here keeps the map as small
        // as the instances still listed without costing requests anything.
        map.retain(|_, w| w.strong_count() > 0);
        let c = Arc::new(Counter::default());
        map.insert(instance_id.to_string(), Arc::downgrade(&c));
        c
    }

    fn existing(&self, instance_id: &str) -> Option<Arc<Counter>> {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(instance_id)
            .and_then(Weak::upgrade)
    }

    /// Requests the router is serving on `instance_id` right now.
    pub fn count(&self, instance_id: &str) -> usize {
        self.existing(instance_id)
            .map_or(0, |c| c.count.load(Ordering::SeqCst))
    }

    /// Instance ids with requests in flight now, sorted.
    pub fn busy(&self) -> Vec<String> {
        let map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<String> = map
            .iter()
            .filter(|(_, w)| {
                w.upgrade()
                    .is_some_and(|c| c.count.load(Ordering::SeqCst) > 0)
            })
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    }

    /// Waits until no request is in flight on `instance_id`, or until `deadline`. Returns
    /// whether the instance is idle. An instance no table lists and no request holds is idle
    /// at once.
    pub async fn wait_idle(&self, instance_id: &str, deadline: Deadline) -> bool {
        let Some(c) = self.existing(instance_id) else {
            return true;
        };
        c.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&c);
        loop {
            // Made before the count is read: `notify_waiters` wakes every `Notified` that
            // exists when it is called, polled yet or not.
            let idle = c.idle.notified();
            if c.count.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return c.count.load(Ordering::SeqCst) == 0;
            }
        }
    }
}

/// One caller of `wait_idle`, counted while it waits (also when its future is dropped).
struct Waiting<'a>(&'a Counter);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn wait_idle_returns_when_the_last_request_ends() {
        let in_flight = InFlight::default();
        let counter = in_flight.counter("i-1");
        let a = InFlightGuard::start(Some(&counter));
        let b = InFlightGuard::start(Some(&counter));
        assert_eq!(in_flight.count("i-1"), 2);
        let waiter = {
            let in_flight = in_flight.clone();
            let far = Deadline::now() + Duration::from_secs(60);
            tokio::spawn(async move { in_flight.wait_idle("i-1", far).await })
        };
        tokio::task::yield_now().await;
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one request is still in flight");
        drop(b);
        assert!(waiter.await.expect("join"));
        assert_eq!(in_flight.count("i-1"), 0);
    }

    #[tokio::test]
    async fn wait_idle_gives_up_at_the_deadline_and_unknown_instances_are_idle() {
        let in_flight = InFlight::default();
        let counter = in_flight.counter("busy");
        let _busy = InFlightGuard::start(Some(&counter));
        let soon = Deadline::now() + Duration::from_millis(20);
        assert!(!in_flight.wait_idle("busy", soon).await);
        assert_eq!(counter.waiters.load(Ordering::SeqCst), 0);
        assert!(in_flight.wait_idle("never-seen", soon).await);
        assert_eq!(in_flight.count("never-seen"), 0);
    }

    #[test]
    fn clones_share_counts_and_separate_handles_do_not() {
        let a = InFlight::default();
        let b = a.clone();
        let other = InFlight::default();
        let _g = InFlightGuard::start(Some(&a.counter("x")));
        assert_eq!(b.count("x"), 1);
        assert_eq!(other.count("x"), 0);
    }
}

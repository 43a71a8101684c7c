//! Brute-force limits on logins, both pure functions of a clock's seconds:
//!
//! - [`Lockout`], per user, UAA's default policy: 5 failed logins within 20 minutes lock the
//!   account for 5 minutes. The state is in the [`UserRecord`] (so it is in the store and
//!   survives a restart); a successful login clears it.
//! - [`AddressLimiter`], per client address: at most 10 failed logins in any 60 seconds (a
//!   sliding window); past that every login from the address is refused until the oldest
//!   failure in the window is a minute old. Kept in memory: a restart forgets it, the per-user
//!   lock does not.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

use crate::store::UserRecord;

/// Per-user lockout: `max_failures` within `within_secs` lock the account for `lock_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    pub max_failures: usize,
    pub within_secs: i64,
    pub lock_secs: i64,
}

impl Default for Lockout {
    fn default() -> Self {
        Lockout {
            max_failures: 5,
            within_secs: 20 * 60,
            lock_secs: 5 * 60,
        }
    }
}

impl Lockout {
    /// When the account's lock ends, if it is locked at `now`.
    pub fn locked_until(&self, user: &UserRecord, now: i64) -> Option<i64> {
        user.locked_until.filter(|&until| until > now)
    }

    /// Records a failed login at `now`; the end of the lock it caused, if it caused one.
    pub fn fail(&self, user: &mut UserRecord, now: i64) -> Option<i64> {
        let since = now - self.within_secs;
        user.failed_logins.retain(|&t| t > since);
        user.failed_logins.push(now);
        if user.failed_logins.len() >= self.max_failures {
            let until = now + self.lock_secs;
            user.locked_until = Some(until);
            // The count starts again once the lock ends.
            user.failed_logins.clear();
            return Some(until);
        }
        None
    }

    /// A successful login forgets the failures (and an ended lock). True if anything changed.
    pub fn succeed(&self, user: &mut UserRecord) -> bool {
        let changed = !user.failed_logins.is_empty() || user.locked_until.is_some();
        user.failed_logins.clear();
        user.locked_until = None;
        changed
    }
}

/// At most `max_failures` failed logins per `window_secs` per client address.
pub struct AddressLimiter {
    max_failures: usize,
    window_secs: i64,
    failures: Mutex<HashMap<IpAddr, VecDeque<i64>>>,
}

/// Addresses tracked before the ones with no recent failure are dropped.
const TRACKED_ADDRESSES: usize = 10_000;

impl Default for AddressLimiter {
    fn default() -> Self {
        AddressLimiter::new(10, 60)
    }
}

impl AddressLimiter {
    pub fn new(max_failures: usize, window_secs: i64) -> AddressLimiter {
        AddressLimiter {
            max_failures,
            window_secs,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, VecDeque<i64>>> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Seconds until `ip` may try again, if it is over the limit at `now`.
    pub fn retry_after(&self, ip: IpAddr, now: i64) -> Option<u64> {
        let mut map = self.lock();
        let q = map.get_mut(&ip)?;
        while q.front().is_some_and(|&t| t <= now - self.window_secs) {
            q.pop_front();
        }
        if q.len() < self.max_failures {
            return None;
        }
        let oldest = q.front().copied().unwrap_or(now);
        Some((oldest + self.window_secs - now).max(1) as u64)
    }

    /// Records a failed login from `ip` at `now`.
    pub fn fail(&self, ip: IpAddr, now: i64) {
        let mut map = self.lock();
        if map.len() >= TRACKED_ADDRESSES && !map.contains_key(&ip) {
            let since = now - self.window_secs;
            map.retain(|_, q| q.back().is_some_and(|&t| t > since));
        }
        let q = map.entry(ip).or_default();
        q.push_back(now);
        // Only the newest `max_failures` decide anything.
        while q.len() > self.max_failures {
            q.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserRecord {
        UserRecord {
            guid: "g".into(),
            name: "alice".into(),
            password_hash: String::new(),
            created_at: 0,
            failed_logins: vec![],
            locked_until: None,
        }
    }

    #[test]
    fn five_failures_within_twenty_minutes_lock_for_five() {
        let l = Lockout::default();
        let mut u = user();
        for t in [0, 300, 600, 900] {
            assert_eq!(l.fail(&mut u, t), None);
            assert_eq!(l.locked_until(&u, t), None);
        }
        assert_eq!(l.fail(&mut u, 1199), Some(1499));
        assert_eq!(l.locked_until(&u, 1200), Some(1499));
        assert_eq!(l.locked_until(&u, 1498), Some(1499));
        assert_eq!(l.locked_until(&u, 1499), None, "the lock ends");
        // Failures older than 20 minutes are forgotten.
        let mut u = user();
        for t in [0, 1, 2, 3] {
            l.fail(&mut u, t);
        }
        assert_eq!(
            l.fail(&mut u, 1200),
            None,
            "the first went out of the window"
        );
        assert_eq!(u.failed_logins, vec![1, 2, 3, 1200]);
        assert!(l.succeed(&mut u));
        assert!(u.failed_logins.is_empty());
        assert!(!l.succeed(&mut u), "nothing left to clear");
    }

    #[test]
    fn an_address_gets_ten_failures_a_minute() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let l = AddressLimiter::default();
        for t in 0..10 {
            assert_eq!(l.retry_after(a, 100 + t), None);
            l.fail(a, 100 + t);
        }
        assert_eq!(
            l.retry_after(a, 110),
            Some(50),
            "the first is a minute old at 160"
        );
        assert_eq!(
            l.retry_after(b, 110),
            None,
            "other addresses are not held back"
        );
        assert_eq!(l.retry_after(a, 159), Some(1));
        assert_eq!(l.retry_after(a, 160), None, "one slot is free again");
        l.fail(a, 160);
        assert_eq!(l.retry_after(a, 160), Some(1));
    }
}

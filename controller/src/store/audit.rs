//! Persistence of the platform's audit log (what is recorded, and when, is `http/audit.rs`'s):
//! tree `audit`: key = time in unix nanoseconds (8 bytes, big-endian) + a unique id (8 bytes,
//! big-endian), so keys sort by time → [`AuditEntry`] (JSON).
//!
//! Bounded: the newest [`AUDIT_KEPT`] entries are kept. Writes past the bound by 1 % remove the
//! oldest down to it, so the cost of pruning is spread over many writes and the tree never grows
//! past 101 % of the bound.

use std::sync::{Arc, Mutex, PoisonError};

use pier_api::AuditEntry;
use time::OffsetDateTime;

use crate::error::Result;

/// Entries kept: the oldest go once there are more.
pub const AUDIT_KEPT: usize = 100_000;

#[derive(Clone)]
pub struct AuditStore {
    db: sled::Db,
    tree: sled::Tree,
    kept: usize,
    /// Entries in the tree (sled's `len` walks the whole tree); held while writing and pruning.
    count: Arc<Mutex<usize>>,
}

fn time_ns(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos().max(0)).unwrap_or(u64::MAX)
}

impl AuditStore {
    pub(super) fn open(db: &sled::Db, kept: usize) -> Result<AuditStore> {
        let tree = db.open_tree("audit")?;
        let count = tree.len();
        Ok(AuditStore {
            db: db.clone(),
            tree,
            kept: kept.max(1),
            count: Arc::new(Mutex::new(count)),
        })
    }

    /// Adds an entry (keyed by its time) and prunes past the bound; flushed before it returns.
    pub async fn add(&self, entry: &AuditEntry) -> Result<()> {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&time_ns(entry.time).to_be_bytes());
        key[8..].copy_from_slice(&self.db.generate_id()?.to_be_bytes());
        let value = serde_json::to_vec(entry)?;
        {
            let mut count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
            self.tree.insert(key, value)?;
            *count += 1;
            if *count > self.kept + (self.kept / 100).max(1) {
                *count -= self.prune(*count - self.kept)?;
            }
        }
        self.tree.flush_async().await?;
        Ok(())
    }

    /// Removes the `n` oldest entries; how many went.
    fn prune(&self, n: usize) -> Result<usize> {
        let keys = self.tree.iter().keys().take(n);
        let keys = keys.collect::<std::result::Result<Vec<_>, _>>()?;
        for k in &keys {
            self.tree.remove(k)?;
        }
        Ok(keys.len())
    }

    /// Entries at or after `since` (all when `None`), newest first, at most `limit`.
    pub fn list(&self, since: Option<OffsetDateTime>, limit: usize) -> Result<Vec<AuditEntry>> {
        let from = since.map_or(0, time_ns).to_be_bytes();
        let mut out = Vec::new();
        for item in self.tree.range(from..).rev().take(limit) {
            let (_, v) = item?;
            out.push(serde_json::from_slice(&v)?);
        }
        Ok(out)
    }

    /// How many entries there are.
    pub fn count(&self) -> usize {
        *self.count.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(t: OffsetDateTime, n: usize) -> AuditEntry {
        AuditEntry {
            time: t,
            actor: "admin".into(),
            action: format!("PUT /v1/apps/a{n}"),
            method: "PUT".into(),
            path: format!("/v1/apps/a{n}"),
            org: None,
            space: None,
            target: Some(format!("a{n}")),
            status: 200,
        }
    }

    #[tokio::test]
    async fn kept_newest_first_bounded_and_filtered_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let audit = AuditStore::open(&db, 10).unwrap();
        let t0 = OffsetDateTime::now_utc();
        for n in 0..25 {
            let t = t0 + time::Duration::seconds(n as i64);
            audit.add(&entry(t, n)).await.unwrap();
            // Never past the bound's slack (10 + 1).
            assert!(audit.count() <= 11, "{} after {n}", audit.count());
        }
        let all = audit.list(None, 100).unwrap();
        assert!(all.len() >= 10 && all.len() <= 11, "{}", all.len());
        assert_eq!(all[0].target.as_deref(), Some("a24"), "newest first");
        assert!(
            all.iter()
                .all(|e| e.time >= t0 + time::Duration::seconds(14)),
            "only the newest stay"
        );
        let since = audit
            .list(Some(t0 + time::Duration::seconds(22)), 100)
            .unwrap();
        let names: Vec<_> = since.iter().map(|e| e.target.clone().unwrap()).collect();
        assert_eq!(names, ["a24", "a23", "a22"]);
        assert_eq!(audit.list(None, 2).unwrap().len(), 2);

        // The count survives a reopen.
        drop(audit);
        let again = AuditStore::open(&db, 10).unwrap();
        assert_eq!(again.count(), all.len());
    }
}

//! Quota definitions, as the store keeps them: JSON in the `quotas` tree (quota name →
//! [`QuotaRecord`]). Orgs and spaces name the quota assigned to them ([`super::OrgRecord::quota`],
//! [`super::SpaceRecord::quota`]).
//!
//! Invariant: a quota named by an org or a space exists (the quota service refuses to delete one
//! in use, and checks under its lock that a quota exists before assigning it).

use pier_api::QuotaLimits;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Store;
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRecord {
    pub name: String,
    pub limits: QuotaLimits,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Store {
    /// Every quota, by name.
    pub fn list_quotas(&self) -> Result<Vec<QuotaRecord>> {
        let mut out: Vec<QuotaRecord> = Vec::new();
        for item in self.quotas.iter() {
            out.push(serde_json::from_slice(&item?.1)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn get_quota(&self, name: &str) -> Result<Option<QuotaRecord>> {
        match self.quotas.get(name)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    pub fn put_quota(&self, quota: &QuotaRecord) -> Result<()> {
        self.quotas
            .insert(quota.name.as_str(), serde_json::to_vec(quota)?)?;
        self.changes.bump();
        self.flush()
    }

    pub fn delete_quota(&self, name: &str) -> Result<()> {
        self.quotas.remove(name)?;
        self.changes.bump();
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::reopen;
    use super::super::{OrgRecord, Store};
    use super::*;

    #[test]
    fn quotas_survive_reopen_and_old_orgs_read_as_unlimited() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put_quota(&QuotaRecord {
                name: "small".into(),
                limits: QuotaLimits {
                    memory_mb: Some(1024),
                    ..QuotaLimits::default()
                },
                created_at: now,
            })
            .unwrap();
        }
        let s = reopen(dir.path());
        let q = s.get_quota("small").unwrap().unwrap();
        assert_eq!(q.limits.memory_mb, Some(1024));
        assert_eq!(q.limits.apps, None);
        assert_eq!(s.list_quotas().unwrap().len(), 1);
        s.delete_quota("small").unwrap();
        assert!(s.get_quota("small").unwrap().is_none());
        // An org written before quotas existed has none.
        let old = r#"{"guid":"o1","name":"acme","created_at":"2026-01-01T00:00:00Z"}"#;
        let org: OrgRecord = serde_json::from_str(old).unwrap();
        assert_eq!(org.quota, None);
    }
}

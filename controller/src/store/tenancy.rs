//! Orgs and spaces, as the store keeps them: JSON in the `orgs` tree (org guid → [`OrgRecord`])
//! and the `spaces` tree (space guid → [`SpaceRecord`]).
//!
//! Invariants:
//! - Org names are unique on the platform, space names within their org (checked by the tenancy
//!   service under its lock, before the write).
//! - A space's `org_guid` names an org that exists: an org is deleted only after its spaces.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Store;
use crate::error::Result;

/// The org and space every app of a store written before orgs existed is moved into, and that a
/// new platform starts with (so `pier push` works before anyone creates an org).
pub const DEFAULT_ORG: &str = "default";
pub const DEFAULT_SPACE: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgRecord {
    pub guid: String,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The name of the quota assigned to it; `None` (and every record written before quotas) is
    /// unlimited.
    #[serde(default)]
    pub quota: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceRecord {
    pub guid: String,
    pub name: String,
    pub org_guid: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The name of the quota assigned to it; `None` (and every record written before quotas) is
    /// unlimited.
    #[serde(default)]
    pub quota: Option<String>,
}

/// The name fields of an org or space record, borrowed where the JSON has no escapes.
#[derive(Deserialize)]
struct Names<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    org_guid: Option<std::borrow::Cow<'a, str>>,
}

impl Store {
    pub fn list_orgs(&self) -> Result<Vec<OrgRecord>> {
        let mut out: Vec<OrgRecord> = Vec::new();
        for item in self.orgs.iter() {
            out.push(serde_json::from_slice(&item?.1)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn get_org(&self, guid: &str) -> Result<Option<OrgRecord>> {
        match self.orgs.get(guid)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Every request resolves its org and space by name, so only the names are read until one
    /// matches (no record is decoded whole but the one found).
    pub fn org_named(&self, name: &str) -> Result<Option<OrgRecord>> {
        for item in self.orgs.iter() {
            let (_, v) = item?;
            if serde_json::from_slice::<Names<'_>>(&v)?.name == name {
                return Ok(Some(serde_json::from_slice(&v)?));
            }
        }
        Ok(None)
    }

    pub fn put_org(&self, org: &OrgRecord) -> Result<()> {
        self.orgs
            .insert(org.guid.as_str(), serde_json::to_vec(org)?)?;
        self.changes.bump();
        self.flush()
    }

    pub fn delete_org(&self, guid: &str) -> Result<()> {
        self.orgs.remove(guid)?;
        self.changes.bump();
        self.flush()
    }

    /// Every space, of every org, by name.
    pub fn list_spaces(&self) -> Result<Vec<SpaceRecord>> {
        let mut out: Vec<SpaceRecord> = Vec::new();
        for item in self.spaces.iter() {
            out.push(serde_json::from_slice(&item?.1)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn spaces_of(&self, org_guid: &str) -> Result<Vec<SpaceRecord>> {
        let mut spaces = self.list_spaces()?;
        spaces.retain(|s| s.org_guid == org_guid);
        Ok(spaces)
    }

    pub fn get_space(&self, guid: &str) -> Result<Option<SpaceRecord>> {
        match self.spaces.get(guid)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    pub fn space_named(&self, org_guid: &str, name: &str) -> Result<Option<SpaceRecord>> {
        for item in self.spaces.iter() {
            let (_, v) = item?;
            let n: Names<'_> = serde_json::from_slice(&v)?;
            if n.name == name && n.org_guid.as_deref() == Some(org_guid) {
                return Ok(Some(serde_json::from_slice(&v)?));
            }
        }
        Ok(None)
    }

    pub fn put_space(&self, space: &SpaceRecord) -> Result<()> {
        self.spaces
            .insert(space.guid.as_str(), serde_json::to_vec(space)?)?;
        self.changes.bump();
        self.flush()
    }

    pub fn delete_space(&self, guid: &str) -> Result<()> {
        self.spaces.remove(guid)?;
        self.changes.bump();
        self.flush()
    }
}

#[cfg(test)]
impl Store {
    /// App `name` of the `default` space (what a request naming no space acts on).
    pub(crate) fn default_space_app(&self, name: &str) -> Result<Option<super::AppRecord>> {
        let org = self.org_named(DEFAULT_ORG)?.expect("default org");
        let space = self
            .space_named(&org.guid, DEFAULT_SPACE)?
            .expect("default space");
        self.get_app(&space.guid, &name.parse().expect("app name"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::reopen;
    use super::*;

    #[test]
    fn orgs_and_spaces_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put_org(&OrgRecord {
                guid: "o1".into(),
                name: "acme".into(),
                created_at: now,
                quota: None,
            })
            .unwrap();
            s.put_space(&SpaceRecord {
                guid: "s1".into(),
                name: "dev".into(),
                org_guid: "o1".into(),
                created_at: now,
                quota: None,
            })
            .unwrap();
        }
        let s = reopen(dir.path());
        let acme = s.org_named("acme").unwrap().unwrap();
        assert_eq!(acme.guid, "o1");
        assert_eq!(s.space_named("o1", "dev").unwrap().unwrap().guid, "s1");
        assert!(s.space_named("o1", "prod").unwrap().is_none());
        // The default org and space a new store starts with are there too.
        let default = s.org_named(DEFAULT_ORG).unwrap().unwrap();
        assert_eq!(s.spaces_of(&default.guid).unwrap().len(), 1);
    }
}

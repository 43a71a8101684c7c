//! Service instances, as the store keeps them: JSON in the `services` tree, keyed
//! `<space guid>/<name>` (names are unique per space). Bindings live in the bound app's record
//! ([`super::BindingRecord`]), so deleting an app deletes its bindings with it.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Store;
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceInstanceRecord {
    pub guid: String,
    pub name: String,
    pub space_guid: String,
    /// A user-provided service's fields (the only kind yet).
    pub user_provided: pier_api::UserProvided,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

fn key(space_guid: &str, name: &str) -> String {
    format!("{space_guid}/{name}")
}

impl Store {
    pub fn service(&self, space_guid: &str, name: &str) -> Result<Option<ServiceInstanceRecord>> {
        match self.services.get(key(space_guid, name))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// The space's service instances, by name.
    pub fn services_of(&self, space_guid: &str) -> Result<Vec<ServiceInstanceRecord>> {
        let mut out = Vec::new();
        for item in self.services.scan_prefix(format!("{space_guid}/")) {
            out.push(serde_json::from_slice(&item?.1)?);
        }
        Ok(out)
    }

    /// Adds `svc` unless its name is taken in its space (atomically): false when it was.
    pub fn insert_service(&self, svc: &ServiceInstanceRecord) -> Result<bool> {
        let v = serde_json::to_vec(svc)?;
        let swapped = self.services.compare_and_swap(
            key(&svc.space_guid, &svc.name),
            None as Option<&[u8]>,
            Some(v),
        )?;
        self.changes.bump();
        self.flush()?;
        Ok(swapped.is_ok())
    }

    pub fn put_service(&self, svc: &ServiceInstanceRecord) -> Result<()> {
        self.services
            .insert(key(&svc.space_guid, &svc.name), serde_json::to_vec(svc)?)?;
        self.changes.bump();
        self.flush()
    }

    pub fn delete_service(&self, space_guid: &str, name: &str) -> Result<()> {
        self.services.remove(key(space_guid, name))?;
        self.changes.bump();
        self.flush()
    }
}

//! Service instances, as the store keeps them: JSON in the `services` tree, keyed
//! `<space guid>/<name>` (names are unique per space), a user-provided one's credentials sealed
//! ([`super::Secrets`]). Bindings live in the bound app's record
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
    /// A user-provided service's fields (empty for a managed one).
    #[serde(default)]
    pub user_provided: pier_api::UserProvided,
    /// A managed instance's: what a broker provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRecord>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A service instance a broker provisioned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManagedRecord {
    pub broker_guid: String,
    pub offering_id: String,
    pub offering_name: String,
    pub plan_id: String,
    pub plan_name: String,
    /// The instance's own tags (the offering's and plan's are added in `VCAP_SERVICES`).
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub dashboard_url: Option<String>,
    pub last_operation: OperationRecord,
}

/// The last operation on a managed instance; one `in progress` is followed by a background task
/// (after a restart too) until the broker says it ended or the deadline passes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationRecord {
    /// `create`, `update`, `delete`.
    pub kind: String,
    /// `in progress`, `succeeded`, `failed`.
    pub state: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The broker's operation token (OSB `operation`), for `last_operation`.
    #[serde(default)]
    pub operation: Option<String>,
    /// An update's new plan (id, name), recorded as the plan once the update succeeds.
    #[serde(default)]
    pub new_plan: Option<(String, String)>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When following it stops and it counts as failed.
    #[serde(with = "time::serde::rfc3339")]
    pub deadline: OffsetDateTime,
}

pub const IN_PROGRESS: &str = "in progress";
pub const SUCCEEDED: &str = "succeeded";
pub const FAILED: &str = "failed";

impl OperationRecord {
    pub fn in_progress(&self) -> bool {
        self.state == IN_PROGRESS
    }
}

fn key(space_guid: &str, name: &str) -> String {
    format!("{space_guid}/{name}")
}

/// A binding (or service key) asked of a broker and not yet recorded in the store. A controller
/// that stops mid-bind (a broker's 202 is followed inline) leaves one behind; the next start
/// unbinds it on the broker (orphan mitigation), so no binding lives on a broker that Pier does
/// not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingBindingRecord {
    pub binding_guid: String,
    pub space_guid: String,
    pub service_name: String,
    pub service_guid: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
}

impl Store {
    pub fn put_pending_binding(&self, p: &PendingBindingRecord) -> Result<()> {
        self.pending_bindings
            .insert(p.binding_guid.as_bytes(), serde_json::to_vec(p)?)?;
        self.flush()
    }

    /// Gone is fine.
    pub fn remove_pending_binding(&self, binding_guid: &str) -> Result<()> {
        if self
            .pending_bindings
            .remove(binding_guid.as_bytes())?
            .is_some()
        {
            self.flush()?;
        }
        Ok(())
    }

    pub fn pending_bindings(&self) -> Result<Vec<PendingBindingRecord>> {
        let mut out = Vec::new();
        for item in self.pending_bindings.iter() {
            out.push(serde_json::from_slice(&item?.1)?);
        }
        Ok(out)
    }

    /// A service instance as stored: a user-provided one's credentials sealed
    /// (`user_provided.sealed_credentials`, [`super::seal_field`]).
    fn service_bytes(&self, svc: &ServiceInstanceRecord) -> Result<Vec<u8>> {
        let mut v = serde_json::to_value(svc)?;
        if let Some(up) = v.get_mut("user_provided") {
            super::seal_field(&self.secrets, up, "credentials")?;
        }
        Ok(serde_json::to_vec(&v)?)
    }

    /// A service instance as read: sealed credentials opened (an older Pier's plain ones as
    /// they are).
    pub(super) fn service_from(&self, bytes: &[u8]) -> Result<ServiceInstanceRecord> {
        let mut v: serde_json::Value = serde_json::from_slice(bytes)?;
        if let Some(up) = v.get_mut("user_provided") {
            super::open_field(&self.secrets, up, "credentials")?;
        }
        Ok(serde_json::from_value(v)?)
    }

    pub fn service(&self, space_guid: &str, name: &str) -> Result<Option<ServiceInstanceRecord>> {
        match self.services.get(key(space_guid, name))? {
            Some(v) => Ok(Some(self.service_from(&v)?)),
            None => Ok(None),
        }
    }

    /// The space's service instances, by name.
    pub fn services_of(&self, space_guid: &str) -> Result<Vec<ServiceInstanceRecord>> {
        let mut out = Vec::new();
        for item in self.services.scan_prefix(format!("{space_guid}/")) {
            out.push(self.service_from(&item?.1)?);
        }
        Ok(out)
    }

    /// Adds `svc` unless its name is taken in its space (atomically): false when it was.
    pub fn insert_service(&self, svc: &ServiceInstanceRecord) -> Result<bool> {
        let v = self.service_bytes(svc)?;
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
            .insert(key(&svc.space_guid, &svc.name), self.service_bytes(svc)?)?;
        self.changes.bump();
        self.flush()
    }

    pub fn delete_service(&self, space_guid: &str, name: &str) -> Result<()> {
        self.services.remove(key(space_guid, name))?;
        self.changes.bump();
        self.flush()
    }
}

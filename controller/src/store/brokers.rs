//! Service brokers and service keys, as the store keeps them.
//!
//! Trees:
//! - `service_brokers`: broker name → [`BrokerRecord`] (names are unique on the platform, as in
//!   Cloud Foundry); its password is sealed ([`super::secrets`]), its catalog is the last one
//!   fetched, with who may use each plan
//! - `service_keys`: `<service instance guid>/<key name>` → [`ServiceKeyRecord`], credentials
//!   sealed

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Store;
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerRecord {
    pub guid: String,
    pub name: String,
    pub url: String,
    pub username: String,
    /// The password, sealed.
    pub password: String,
    /// A space-scoped broker's space; `None`: platform-wide.
    #[serde(default)]
    pub space_guid: Option<String>,
    pub catalog: Vec<OfferingRecord>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// An offering of a broker's catalog (the OSB `services` entries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferingRecord {
    pub id: String,
    pub name: String,
    pub description: String,
    pub bindable: bool,
    #[serde(default)]
    pub plan_updateable: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub bindings_retrievable: bool,
    pub plans: Vec<PlanRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRecord {
    pub id: String,
    pub name: String,
    pub description: String,
    #[serde(default = "yes")]
    pub free: bool,
    /// Overrides the offering's.
    #[serde(default)]
    pub bindable: Option<bool>,
    #[serde(default)]
    pub plan_updateable: Option<bool>,
    /// Seconds to follow an asynchronous operation before it counts as failed.
    #[serde(default)]
    pub maximum_polling_duration: Option<u64>,
    /// Enabled for every org.
    #[serde(default)]
    pub public: bool,
    /// Enabled for these orgs (guids).
    #[serde(default)]
    pub orgs: Vec<String>,
}

fn yes() -> bool {
    true
}

impl OfferingRecord {
    pub fn plan_bindable(&self, plan: &PlanRecord) -> bool {
        plan.bindable.unwrap_or(self.bindable)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceKeyRecord {
    pub guid: String,
    pub name: String,
    pub service_guid: String,
    /// The credentials the broker gave, sealed (a JSON object).
    pub credentials: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Store {
    pub fn broker(&self, name: &str) -> Result<Option<BrokerRecord>> {
        match self.brokers.get(name)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    pub fn broker_by_guid(&self, guid: &str) -> Result<Option<BrokerRecord>> {
        Ok(self.brokers()?.into_iter().find(|b| b.guid == guid))
    }

    /// Every broker, by name.
    pub fn brokers(&self) -> Result<Vec<BrokerRecord>> {
        let mut out = Vec::new();
        for item in self.brokers.iter() {
            out.push(serde_json::from_slice(&item?.1)?);
        }
        Ok(out)
    }

    /// Adds `b` unless its name is taken (atomically): false when it was.
    pub fn insert_broker(&self, b: &BrokerRecord) -> Result<bool> {
        let swapped = self.brokers.compare_and_swap(
            b.name.as_bytes(),
            None as Option<&[u8]>,
            Some(serde_json::to_vec(b)?),
        )?;
        self.flush()?;
        Ok(swapped.is_ok())
    }

    pub fn put_broker(&self, b: &BrokerRecord) -> Result<()> {
        self.brokers
            .insert(b.name.as_bytes(), serde_json::to_vec(b)?)?;
        self.flush()
    }

    pub fn delete_broker(&self, name: &str) -> Result<()> {
        self.brokers.remove(name)?;
        self.flush()
    }

    /// A service instance's keys, by name.
    pub fn service_keys(&self, service_guid: &str) -> Result<Vec<ServiceKeyRecord>> {
        let mut out = Vec::new();
        for item in self.service_keys.scan_prefix(format!("{service_guid}/")) {
            out.push(serde_json::from_slice(&item?.1)?);
        }
        Ok(out)
    }

    /// Adds `k` unless the instance has a key of that name (atomically): false when it had.
    pub fn insert_service_key(&self, k: &ServiceKeyRecord) -> Result<bool> {
        let swapped = self.service_keys.compare_and_swap(
            format!("{}/{}", k.service_guid, k.name),
            None as Option<&[u8]>,
            Some(serde_json::to_vec(k)?),
        )?;
        self.flush()?;
        Ok(swapped.is_ok())
    }

    pub fn delete_service_key(&self, service_guid: &str, name: &str) -> Result<()> {
        self.service_keys.remove(format!("{service_guid}/{name}"))?;
        self.flush()
    }

    /// Every service instance of every space (the operations to follow after a restart).
    pub fn all_services(&self) -> Result<Vec<super::ServiceInstanceRecord>> {
        let mut out = Vec::new();
        for item in self.services.iter() {
            out.push(self.service_from(&item?.1)?);
        }
        Ok(out)
    }
}

//! Desired state in sled. Only the controller opens the database (sled locks its folder).
//!
//! Trees: `apps` (name → [`AppRecord`] JSON), `events` (app guid + time → [`AppEvent`]),
//! `meta` (token hash, controller id, instance subnet); [`crate::addresses`] keeps `addresses` and
//! `addresses_meta`. Every write is flushed before the API answers.

use std::collections::BTreeMap;
use std::path::Path;

use pier_api::{
    AppEvent, AppName, AppState, CanaryStatus, DeploymentState, DeploymentStrategy, DropletInfo,
    HealthCheck, ProcessType, RouteSpec,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub instances: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    /// The user's command for this process (`-c`, manifest); overrides Procfile and buildpack.
    pub command: Option<String>,
    pub health_check: HealthCheck,
}

/// A droplet + env + command combination that ran, numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub version: u64,
    pub droplet: DropletInfo,
    pub env: BTreeMap<String, String>,
    /// The user's command per process type (overriding the Procfile and buildpack).
    pub commands: BTreeMap<String, String>,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Revision {
    /// Same droplet, env and commands: running it again is not a new revision.
    pub fn same_config(&self, other: &Revision) -> bool {
        self.droplet.sha256 == other.droplet.sha256
            && self.env == other.env
            && self.commands == other.commands
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub id: String,
    pub revision: u64,
    pub previous_revision: Option<u64>,
    pub strategy: DeploymentStrategy,
    pub state: DeploymentState,
    pub max_in_flight: u32,
    pub reason: Option<String>,
    pub canary: Option<CanaryStatus>,
    /// Canary margins: how much worse than the baseline the canary may be.
    #[serde(default)]
    pub max_error_rate_increase: f64,
    #[serde(default)]
    pub max_p99_increase_ms: f64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// When the current canary step began (its analysis window starts here).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub step_started_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRecord {
    pub name: AppName,
    pub guid: String,
    pub state: AppState,
    pub package: Option<String>,
    pub droplet: Option<DropletInfo>,
    pub processes: BTreeMap<ProcessType, ProcessRecord>,
    pub routes: Vec<RouteSpec>,
    pub env: BTreeMap<String, String>,
    pub buildpacks: Vec<String>,
    /// Set while a staging runs; a controller that finds it set at start marks that staging failed.
    #[serde(default)]
    pub staging: Option<String>,
    /// Fingerprint of what the current droplet was staged from (package, buildpacks, env, stack);
    /// pushing the same again reuses the droplet instead of staging.
    #[serde(default)]
    pub droplet_source: Option<String>,
    /// Packages and droplets the app no longer uses, deleted with it.
    #[serde(default)]
    pub old_blobs: Vec<String>,
    /// Bumped by `restart`: a new value replaces every instance.
    #[serde(default)]
    pub restart_gen: u64,
    /// Revisions kept, oldest first.
    #[serde(default)]
    pub revisions: Vec<Revision>,
    /// The revision instances should run.
    #[serde(default)]
    pub current_revision: Option<u64>,
    /// Deployments, oldest first; the last may be in progress.
    #[serde(default)]
    pub deployments: Vec<DeploymentRecord>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl AppRecord {
    pub fn web(&self) -> Option<&ProcessRecord> {
        self.processes.get(&ProcessType::web())
    }

    pub fn revision(&self, version: u64) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.version == version)
    }

    /// The revision instances run: the current one.
    pub fn running_revision(&self) -> Option<&Revision> {
        self.current_revision.and_then(|v| self.revision(v))
    }

    pub fn active_deployment(&self) -> Option<&DeploymentRecord> {
        self.deployments.last().filter(|d| d.state.is_active())
    }

    pub fn active_deployment_mut(&mut self) -> Option<&mut DeploymentRecord> {
        self.deployments.last_mut().filter(|d| d.state.is_active())
    }

    /// The command a process of `rev` runs: the user's, else the Procfile's, else the buildpack's.
    pub fn command_in(&self, rev: &Revision, process: &ProcessType) -> Option<String> {
        rev.commands
            .get(process.as_str())
            .cloned()
            .or_else(|| rev.droplet.process_types.get(process.as_str()).cloned())
    }

    /// The command a process runs: the user's, else the Procfile's, else the buildpack's.
    pub fn effective_command(&self, process: &ProcessType) -> Option<String> {
        if let Some(c) = self.processes.get(process).and_then(|p| p.command.clone()) {
            return Some(c);
        }
        self.droplet
            .as_ref()
            .and_then(|d| d.process_types.get(process.as_str()).cloned())
    }
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    apps: sled::Tree,
    events: sled::Tree,
    meta: sled::Tree,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        let db = sled::open(dir)?;
        Ok(Store {
            apps: db.open_tree("apps")?,
            events: db.open_tree("events")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    /// The database itself, for modules that keep their own trees (instance addresses).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    pub fn get_app(&self, name: &AppName) -> Result<Option<AppRecord>> {
        match self.apps.get(name.as_str())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    pub fn list_apps(&self) -> Result<Vec<AppRecord>> {
        let mut out = Vec::new();
        for item in self.apps.iter() {
            let (_, v) = item?;
            out.push(serde_json::from_slice(&v)?);
        }
        Ok(out)
    }

    pub fn put_app(&self, app: &AppRecord) -> Result<()> {
        self.apps
            .insert(app.name.as_str(), serde_json::to_vec(app)?)?;
        self.flush()
    }

    pub fn delete_app(&self, app: &AppRecord) -> Result<()> {
        self.apps.remove(app.name.as_str())?;
        let prefix = format!("{}/", app.guid);
        for key in self.events.scan_prefix(prefix.as_bytes()).keys() {
            self.events.remove(key?)?;
        }
        self.flush()
    }

    pub fn add_event(
        &self,
        app_guid: &str,
        kind: pier_api::EventKind,
        message: &str,
        actor: &str,
    ) -> Result<()> {
        let ev = AppEvent {
            time: OffsetDateTime::now_utc(),
            kind,
            message: message.to_string(),
            actor: actor.to_string(),
        };
        // Keys sort by time; the id breaks ties between events in the same nanosecond.
        let id = self.db.generate_id()?;
        let key = format!(
            "{app_guid}/{:020}/{id:020}",
            ev.time.unix_timestamp_nanos().max(0)
        );
        self.events
            .insert(key.as_bytes(), serde_json::to_vec(&ev)?)?;
        self.flush()
    }

    /// Events of an app, newest first.
    pub fn events(&self, app_guid: &str, limit: usize) -> Result<Vec<AppEvent>> {
        let prefix = format!("{app_guid}/");
        let mut out = Vec::new();
        for item in self.events.scan_prefix(prefix.as_bytes()).rev().take(limit) {
            let (_, v) = item?;
            out.push(serde_json::from_slice(&v)?);
        }
        Ok(out)
    }

    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    pub fn meta_put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.meta.insert(key, value)?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str) -> AppRecord {
        AppRecord {
            name: name.parse().unwrap(),
            guid: format!("guid-{name}"),
            state: AppState::Stopped,
            package: None,
            droplet: None,
            processes: BTreeMap::new(),
            routes: vec![],
            env: BTreeMap::new(),
            buildpacks: vec![],
            staging: None,
            restart_gen: 0,
            revisions: vec![],
            droplet_source: None,
            current_revision: None,
            deployments: vec![],
            old_blobs: vec![],
            created_at: OffsetDateTime::now_utc(),
            updated_at: OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn apps_and_events_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put_app(&app("a")).unwrap();
            s.add_event("guid-a", pier_api::EventKind::Created, "one", "admin")
                .unwrap();
            s.add_event("guid-a", pier_api::EventKind::Staged, "two", "admin")
                .unwrap();
        }
        // sled's background flusher lets go of the folder's lock a moment after the drop.
        let s = (0..100)
            .find_map(|_| {
                Store::open(dir.path())
                    .map_err(|_| std::thread::sleep(std::time::Duration::from_millis(20)))
                    .ok()
            })
            .expect("store reopens");
        assert_eq!(s.list_apps().unwrap().len(), 1);
        let ev = s.events("guid-a", 10).unwrap();
        assert_eq!(ev[0].kind, pier_api::EventKind::Staged, "newest first");
        assert_eq!(ev[1].kind, pier_api::EventKind::Created);
        s.delete_app(&app("a")).unwrap();
        assert!(s.get_app(&"a".parse().unwrap()).unwrap().is_none());
        assert!(s.events("guid-a", 10).unwrap().is_empty());
    }
}

//! The records of an app: its processes, revisions and deployments, as the store keeps them
//! (JSON in the `apps` tree, keyed by `<space guid>/<app name>`: names are unique per space).

use std::collections::BTreeMap;

use pier_api::{
    AppName, AppState, CanaryStatus, DeploymentState, DeploymentStrategy, DropletInfo, HealthCheck,
    ProcessType, RouteSpec,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

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
    /// The stack image the revision's instances run on (its app image is made from it), fixed
    /// when the revision is made; empty in revisions an older Pier made (the current stack).
    #[serde(default)]
    pub stack: String,
    /// `VCAP_SERVICES` of the revision's instances (JSON text), fixed when the revision is made
    /// from the app's bindings; `{}` in revisions an older Pier made.
    #[serde(default = "no_services")]
    pub vcap_services: String,
}

fn no_services() -> String {
    "{}".into()
}

impl Revision {
    /// Same droplet, env, services, commands and stack: running it again is not a new revision.
    pub fn same_config(&self, other: &Revision) -> bool {
        self.droplet.sha256 == other.droplet.sha256
            && self.env == other.env
            && self.vcap_services == other.vcap_services
            && self.commands == other.commands
            && self.stack_or(&other.stack) == other.stack_or(&self.stack)
    }

    /// The revision's stack, or `current` for a revision an older Pier made (no stack recorded).
    pub fn stack_or<'a>(&'a self, current: &'a str) -> &'a str {
        if self.stack.is_empty() {
            current
        } else {
            &self.stack
        }
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

/// An app's binding to a service instance of its space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingRecord {
    pub guid: String,
    pub service_guid: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// A managed instance's binding: the credentials its broker gave, sealed (a JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syslog_drain_url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRecord {
    pub name: AppName,
    pub guid: String,
    /// The space the app belongs to. Empty only in a record an older Pier wrote, before the
    /// store's migration ([`super::Store::open`]) moves it into the `default` space.
    #[serde(default)]
    pub space_guid: String,
    pub state: AppState,
    pub package: Option<String>,
    pub droplet: Option<DropletInfo>,
    pub processes: BTreeMap<ProcessType, ProcessRecord>,
    pub routes: Vec<RouteSpec>,
    pub env: BTreeMap<String, String>,
    pub buildpacks: Vec<String>,
    /// The service instances (of the app's space) the app is bound to.
    #[serde(default)]
    pub bindings: Vec<BindingRecord>,
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
    /// The record's key in the `apps` tree.
    pub fn key(&self) -> String {
        app_key(&self.space_guid, &self.name)
    }

    /// Every blob the app refers to: its package, droplets (current, of its revisions, earlier
    /// ones not deleted yet) and the buildpacks pushed with it.
    pub fn blobs(&self) -> impl Iterator<Item = &str> {
        self.package
            .as_deref()
            .into_iter()
            .chain(self.droplet.as_ref().map(|d| d.sha256.as_str()))
            .chain(self.revisions.iter().map(|r| r.droplet.sha256.as_str()))
            .chain(self.old_blobs.iter().map(String::as_str))
            .chain(
                self.buildpacks
                    .iter()
                    .filter_map(|b| pier_api::buildpacks::parse_uploaded_buildpack(b))
                    .map(|(_, sha)| sha),
            )
    }

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

/// The key of app `name` in space `space_guid`.
pub fn app_key(space_guid: &str, name: &AppName) -> String {
    format!("{space_guid}/{name}")
}

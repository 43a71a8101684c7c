//! The app service: every change the API makes to an app, as one function per operation. HTTP
//! handlers parse the request, call one of these, and present the answer.
//!
//! Invariants:
//! - Everything a request asks for is checked before anything is changed: a refusal leaves the
//!   store as it was.
//! - A change is saved (flushed) and then answered. Convergence runs after the save through
//!   [`Reconciler::converge`], whose failures become visible state (an event, an instance state),
//!   never an error answer for a change that was already made.
//! - Operations on one app are serialized by the app's lock ([`AppLocks`]).
//!
//! Modules: `config` (create/update, processes, routes), `env` (the app's environment), `services` (service instances and bindings), `managed` (managed instances: a broker's provision, update, deprovision, bind, unbind; asynchronous operations followed), `keys` (service keys), `lifecycle` (start, stop, restart,
//! deployments, delete), `builds` (staging a package into a droplet). Uses: `store/`, `events`,
//! `instances/` (statuses), `reconcile`, `staging/`, `deployments/`, `quota` (every change that
//! can raise a space's or org's use is admitted by it before the write).

use std::sync::Arc;
use std::time::Duration;

use pier_api::{AppName, AppResponse, AppState, ErrorCode, ProcessResponse};

use crate::deployments::DeploySettings;
use crate::error::{Error, Result};
use crate::events::Events;
use crate::instances::Instances;
use crate::locks::AppLocks;
use crate::logs::LogBroker;
use crate::quota::Quotas;
use crate::reconcile::Reconciler;
use crate::runtime::ContainerRuntime;
use crate::staging::Stager;
use crate::store::{AppRecord, BlobStore, Store};
use crate::tenancy::Scope;

mod buildpacks;
mod builds;
mod config;
mod env;
mod keys;
mod lifecycle;
mod managed;
mod services;

pub use builds::Build;

/// The controller's settings apps are made with.
#[derive(Debug, Clone)]
pub struct AppSettings {
    /// Apps get `NAME.DOMAIN` as their default route.
    pub domain: String,
    /// Port apps are reached at through the router, for URLs.
    pub route_port: Option<u16>,
    pub default_memory_mb: u64,
    pub default_disk_mb: u64,
    pub package_limits: crate::staging::package::Limits,
    pub deploy: DeploySettings,
    /// The OSB client's timeout and how asynchronous operations are followed.
    pub brokers: crate::brokers::BrokerSettings,
}

impl AppSettings {
    pub fn url_for(&self, host: &str, path: &str) -> String {
        if pier_api::is_internal_host(host) {
            // Reached from the space's instances, on the app's own port, not through a router.
            return format!("http://{host}:{}{path}", pier_api::INTERNAL_PORT);
        }
        match self.route_port {
            Some(80) | None => format!("http://{host}{path}"),
            Some(p) => format!("http://{host}:{p}{path}"),
        }
    }
}

/// What [`AppService`] is made from.
pub struct AppDeps {
    pub store: Store,
    pub blobs: BlobStore,
    pub events: Events,
    pub logs: Arc<LogBroker>,
    pub locks: Arc<AppLocks>,
    pub instances: Arc<Instances>,
    pub reconciler: Arc<Reconciler>,
    pub stager: Arc<Stager>,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub settings: AppSettings,
}

pub struct AppService {
    d: AppDeps,
    quotas: Arc<Quotas>,
    /// Service instance creates, deletes, binds and unbinds, one at a time (`services`).
    services_lock: tokio::sync::Mutex<()>,
    /// Service brokers and their catalogs; managed instances are provisioned through them.
    brokers: Arc<crate::brokers::Brokers>,
}

pub fn parse_name(name: &str) -> Result<AppName> {
    name.parse::<AppName>()
        .map_err(|e| Error::api(ErrorCode::InvalidName, e.to_string()))
}

impl AppService {
    pub fn new(d: AppDeps) -> Arc<AppService> {
        let quotas = Quotas::new(d.store.clone());
        let brokers = Arc::new(crate::brokers::Brokers::new(
            d.store.clone(),
            d.settings.brokers,
        ));
        Arc::new(AppService {
            d,
            quotas,
            services_lock: tokio::sync::Mutex::new(()),
            brokers,
        })
    }

    /// The service brokers.
    pub fn brokers(&self) -> &Arc<crate::brokers::Brokers> {
        &self.brokers
    }

    pub fn settings(&self) -> &AppSettings {
        &self.d.settings
    }

    /// The quotas every change of an app is checked against.
    pub fn quotas(&self) -> &Arc<Quotas> {
        &self.quotas
    }
}

/// What an env value is shown as to those who may not see it (Cloud Foundry's words).
pub const HIDDEN_VALUE: &str = "[PRIVATE DATA HIDDEN]";

impl AppService {
    /// The app of the scope's space, or a 404 naming it.
    pub fn load(&self, at: &Scope, name: &str) -> Result<AppRecord> {
        let name = parse_name(name)?;
        self.d
            .store
            .get_app(&at.space.guid, &name)?
            .ok_or_else(|| Error::api(ErrorCode::NotFound, format!("app {name} not found")))
    }

    /// Records a change made through the API, by the scope's actor.
    fn event(&self, at: &Scope, app: &AppRecord, kind: pier_api::EventKind, message: &str) {
        self.d.events.record(&app.guid, kind, message, &at.actor);
    }

    /// The app as the API answers it; env values are [`HIDDEN_VALUE`] unless the scope's caller
    /// may see them.
    pub fn response(&self, at: &Scope, app: &AppRecord) -> AppResponse {
        let processes = app
            .processes
            .iter()
            .map(|(kind, p)| ProcessResponse {
                kind: kind.clone(),
                instances: p.instances,
                memory_mb: p.memory_mb,
                disk_mb: p.disk_mb,
                command: app.effective_command(kind),
                health_check: p.health_check.clone(),
            })
            .collect();
        let instances = if app.state == AppState::Started {
            self.d.instances.statuses(&app.guid)
        } else {
            Vec::new()
        };
        AppResponse {
            name: app.name.clone(),
            guid: app.guid.clone(),
            state: app.state,
            package: app.package.clone(),
            droplet: app.droplet.clone(),
            processes,
            instances,
            routes: app
                .routes
                .iter()
                .map(|r| self.d.settings.url_for(&r.host, &r.path))
                .collect(),
            env: if at.sees_env {
                app.env.clone()
            } else {
                app.env
                    .keys()
                    .map(|k| (k.clone(), HIDDEN_VALUE.to_string()))
                    .collect()
            },
            buildpacks: app.buildpacks.clone(),
            command: app.web().and_then(|p| p.command.clone()),
            created_at: app.created_at,
            updated_at: app.updated_at,
            // Unknown here (the record may be older than the counter): a waiter given 0 asks
            // again at once.
            state_version: 0,
            standby_ready: if app.state == AppState::Started {
                self.d.instances.standby_ready(&app.guid)
            } else {
                0
            },
        }
    }

    /// The apps of the scope's space.
    pub fn list(&self, at: &Scope) -> Result<Vec<AppResponse>> {
        let apps = self.d.store.list_space_apps(&at.space.guid)?;
        Ok(apps.iter().map(|a| self.response(at, a)).collect())
    }

    /// One app; with `stats`, each running instance's latest sampled resource use. With
    /// `wait_after`, first waits (at most `wait`) until the controller's change counter has
    /// passed it.
    pub async fn get(
        &self,
        at: &Scope,
        name: &str,
        stats: bool,
        wait_after: Option<u64>,
        wait: Duration,
    ) -> Result<AppResponse> {
        let changes = self.d.store.changes();
        if let Some(seen) = wait_after {
            // An app that does not exist is refused before the wait.
            self.load(at, name)?;
            changes.wait_after(seen, wait).await;
        }
        // Read before the record, so a change made while the answer is built wakes the next wait.
        let version = changes.version();
        let app = self.load(at, name)?;
        let mut resp = self.response(at, &app);
        resp.state_version = version;
        if stats {
            for i in resp.instances.iter_mut() {
                if i.state != pier_api::InstanceState::Running {
                    continue;
                }
                let disk = app.processes.get(&i.process).map_or(0, |p| p.disk_mb);
                i.stats = self.d.instances.usage(i, disk);
            }
        }
        Ok(resp)
    }

    pub fn events(&self, at: &Scope, name: &str) -> Result<Vec<pier_api::AppEvent>> {
        let app = self.load(at, name)?;
        self.d.store.events(&app.guid, 200)
    }
}

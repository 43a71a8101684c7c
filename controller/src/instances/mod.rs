//! Instances: desired state in, running containers out.
//!
//! The reconciler (`reconcile.rs`) compares the store (desired) with the runtime (actual, found by
//! labels) and hands the result to [`Instances::sync`], which keeps one [`supervisor`] task per
//! desired instance slot `(app, process, index)`:
//!
//! ```text
//!            ┌──────────── adopt a running container (same id, no restart) ─────────────┐
//!            ▼                                                                           │
//!  (none) ─create+upload droplet+start─▶ STARTING ─health check passes─▶ RUNNING (routed) │
//!    ▲                                      │ exits / times out            │ exits, OOM, removed,
//!    │                                      │                              │ health check fails
//!    └──── backoff (0, 0, 30 s, 60 s … 16 min; none after 200) ◀── CRASHED ◀┘
//! ```
//! Invariants:
//! - Only an instance that passed its health check is in the route table ([`Instances::publish_routes`]).
//! - A changed spec (new droplet, env, memory, restart) starts a replacement beside the running
//!   instance and swaps the route only once the replacement is healthy, at most `max_in_flight` of
//!   an app at a time.
//! - A slot that is no longer desired leaves the router first, then its requests drain, then it
//!   gets SIGTERM and, after the grace period, SIGKILL.
//! - A container is created only with an address the controller allocated (`network/addresses`);
//!   its address goes into quarantine only after a table without it was published.
//!
//! Modules: [`desired`] (pure: what should run), [`registry`] (what runs, as the supervisors
//! report it), [`supervisor`] (one task per slot), `launch` (making an instance), [`health`]
//! (probes), [`routing`] (the route table channel). Uses: `runtime/`, `store/`, `logs/`,
//! `network/addresses`, `events`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use pier_api::{AppState, InstanceStatus, RouteEntry};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::events::Events;
use crate::logs::LogBroker;
use crate::network::addresses::AddressPool;
use crate::runtime::{ContainerRuntime, Managed};
use crate::store::Store;

pub mod desired;
pub mod health;
mod launch;
pub mod registry;
pub mod routing;
mod supervisor;
#[cfg(test)]
mod tests;
mod usage;

pub use desired::{desired_slots, restart_delay, slot_of, InstanceSpec, SlotKey, MAX_CRASHES};
pub use registry::{Registry, SlotReport};
pub use routing::Routing;

/// What the routers still have in flight to an instance that left the route table: a removed
/// instance gets SIGTERM only once no router sends it anything any more (or the drain timeout
/// has passed). See `drain.rs` for the platform's implementation.
#[async_trait::async_trait]
pub trait Drain: Send + Sync + 'static {
    /// Waits until no router has a request in flight to `instance_id`, which left the table in
    /// version `removed_in`, or until `deadline`.
    async fn wait(
        &self,
        instance_id: &str,
        removed_in: u64,
        deadline: tokio::time::Instant,
    ) -> Drained;
}

/// How a drain ended, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    /// Nothing was in flight any more (false: the deadline came first).
    pub idle: bool,
    /// What was waited on: the built-in router's counts, which standalone routers.
    pub waited_on: String,
}

/// The controller's settings instances are made with.
#[derive(Debug, Clone)]
pub struct InstanceSettings {
    pub controller_id: String,
    pub pids_limit: i64,
    pub stop_grace: Duration,
    pub crash_backoff_base: Duration,
    pub drain_timeout: Duration,
    /// A hard CPU cap per instance, in CPUs; 0 for none.
    pub max_cpus: f64,
    /// Standby instances kept started per web process, ahead of a scale-up.
    pub standby: u32,
}

/// What [`Instances`] is made from.
pub struct InstanceDeps {
    pub runtime: Arc<dyn ContainerRuntime>,
    pub store: Store,
    pub events: Events,
    pub logs: Arc<LogBroker>,
    pub images: Arc<crate::images::Images>,
    pub addresses: Arc<AddressPool>,
    /// The network of each space (an instance attaches to its app's space's).
    pub networks: Arc<crate::network::Networks>,
    pub routing: Arc<Routing>,
    pub probe: Arc<dyn health::HealthProbe>,
    pub drain: Arc<dyn Drain>,
    pub settings: InstanceSettings,
}

/// The instances subsystem: its supervisors, what they know, and the route table they feed.
pub struct Instances {
    deps: InstanceDeps,
    registry: Registry,
    usage: usage::UsageBook,
    /// Held from reading the instances to publishing the table they make (see
    /// [`Instances::publish_routes`]).
    publishing: std::sync::Mutex<()>,
}

/// Containers [`Instances::sync`] found that nothing should run: the reconciler removes them.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Containers of slots nobody wants (a deleted app's, an old index after a scale-down).
    pub orphans: Vec<Managed>,
    /// Containers of a supervised slot that its supervisor does not own: made by a create that
    /// an earlier run sent before it died, which Docker finished after this run listed containers.
    pub strays: Vec<Managed>,
}

impl Instances {
    pub fn new(deps: InstanceDeps) -> Arc<Instances> {
        Arc::new(Instances {
            registry: Registry {
                changes: deps.store.changes(),
                ..Registry::default()
            },
            deps,
            usage: usage::UsageBook::default(),
            publishing: std::sync::Mutex::new(()),
        })
    }

    /// Statuses of an app's instances, ordered by process and index.
    pub fn statuses(&self, app_guid: &str) -> Vec<InstanceStatus> {
        self.registry.statuses(app_guid)
    }

    /// Every slot of an app the supervisors know, for deployments.
    pub fn report(&self, app_guid: &str) -> Vec<SlotReport> {
        self.registry.report(app_guid)
    }

    /// Waits until no supervisor of the app is still stopping containers.
    pub async fn wait_stopped(&self, app_guid: &str) {
        self.registry.wait_stopped(app_guid).await
    }

    /// True when a live supervisor owns the container (by container id or instance id).
    pub fn owns(&self, c: &Managed) -> bool {
        self.registry.is_owned(&c.id)
            || c.labels
                .instance()
                .is_some_and(|i| self.registry.is_owned(i))
    }

    /// The version of the route table published last (0 before the first).
    /// The instance networks (one per space).
    pub fn networks(&self) -> &Arc<crate::network::Networks> {
        &self.deps.networks
    }

    pub fn table_version(&self) -> u64 {
        self.deps.routing.current().map_or(0, |t| t.version)
    }

    /// What should run for `apps`: their slots and the standby slots after them.
    pub fn desired(&self, apps: &[crate::store::AppRecord]) -> BTreeMap<SlotKey, InstanceSpec> {
        desired::desired_slots_with_standby(apps, self.deps.settings.standby)
    }

    /// How many of an app's standby instances are ready for a scale-up.
    pub fn standby_ready(&self, app_guid: &str) -> u32 {
        self.registry.standby_ready(app_guid)
    }

    /// Rebuilds the route table from the store and the healthy instances, and publishes it.
    /// Returns the version published; a store that cannot be read leaves the table as it is.
    pub fn publish_routes(&self) -> u64 {
        // One publisher at a time, from reading the instances to publishing: otherwise a table
        // built from a view read before an instance left it could be published after the table
        // that removed it, under a higher version, and a drain waiting for routers to have that
        // version would stop an instance the newest table still routes to (seen in CI: a request
        // sent to a stopped canary instance, 502).
        let _one = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        let apps = match self.deps.store.list_apps() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read apps to publish routes; the table stays");
                return self.deps.routing.current().map_or(0, |t| t.version);
            }
        };
        let desired = self.desired(&apps);
        let mut entries = Vec::new();
        let mut internal = crate::network::dns::InternalNames::default();
        for app in &apps {
            let backends = if app.state == AppState::Started {
                self.registry.backends(&app.guid, &desired)
            } else {
                Vec::new()
            };
            for r in &app.routes {
                if r.is_internal() {
                    // Found by name on the app's space's network, not through a router.
                    let network = self.deps.networks.name_for(&app.space_guid);
                    let ips = backends.iter().filter(|b| b.weight > 0).filter_map(|b| {
                        match b.addr.ip() {
                            std::net::IpAddr::V4(ip) => Some(ip),
                            std::net::IpAddr::V6(_) => None,
                        }
                    });
                    internal.insert(&network, &r.host, ips);
                    continue;
                }
                entries.push(RouteEntry {
                    host: r.host.clone(),
                    path: r.path.clone(),
                    app: app.name.to_string(),
                    app_guid: app.guid.clone(),
                    backends: backends.clone(),
                    balancing: Default::default(),
                });
            }
        }
        self.deps.routing.publish_internal(internal);
        self.deps.routing.publish(entries)
    }

    /// Brings the supervisors in line with `desired`: new slots get a supervisor (adopting the
    /// containers of that slot in `containers`), changed specs reach theirs, slots no longer
    /// desired are told to stop. Returns the containers nothing should run.
    pub fn sync(
        self: &Arc<Self>,
        desired: &BTreeMap<SlotKey, InstanceSpec>,
        containers: &[Managed],
        shutdown: &CancellationToken,
    ) -> Leftovers {
        let mut out = Leftovers::default();
        let mut by_slot: HashMap<SlotKey, Vec<Managed>> = HashMap::new();
        let mut slots = self
            .registry
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for c in containers {
            let Some(key) = slot_of(c) else { continue };
            if self.owns(c) {
                continue;
            }
            if slots.contains_key(&key) {
                out.strays.push(c.clone());
            } else if desired.contains_key(&key) {
                by_slot.entry(key).or_default().push(c.clone());
            } else {
                out.orphans.push(c.clone());
            }
        }
        // Before any spec reaches a supervisor: a standby promoted by a scale-up is listed (and,
        // once the caller publishes routes, routed) with the container it already has.
        self.registry.set_standby(
            desired
                .iter()
                .filter(|(_, s)| s.standby)
                .map(|(k, _)| k.clone())
                .collect(),
        );
        // Slots no longer desired: their supervisors drain and stop their containers.
        slots.retain(|key, h| {
            let keep = desired.contains_key(key);
            if !keep {
                tracing::info!(app = %key.app_guid, process = %key.process, index = key.index, "slot no longer desired; stopping it");
                h.cancel.cancel();
            }
            keep
        });
        for (key, spec) in desired {
            if let Some(h) = slots.get(key) {
                if *h.spec.borrow() != *spec {
                    h.spec.send_replace(spec.clone());
                }
                continue;
            }
            let existing = by_slot.remove(key).unwrap_or_default();
            let handle = self.supervise(key, spec, existing, shutdown);
            slots.insert(key.clone(), handle);
        }
        out
    }

    /// Starts the supervisor of a new slot.
    fn supervise(
        self: &Arc<Self>,
        key: &SlotKey,
        spec: &InstanceSpec,
        existing: Vec<Managed>,
        shutdown: &CancellationToken,
    ) -> registry::SlotHandle {
        let (tx, rx) = watch::channel(spec.clone());
        let cancel = CancellationToken::new();
        for c in &existing {
            self.registry.own(&c.id);
        }
        tracing::info!(app = %key.app_guid, process = %key.process, index = key.index, adopting = existing.len(), "supervising slot");
        let sup = supervisor::Supervisor::new(
            self.clone(),
            key.clone(),
            rx,
            cancel.clone(),
            shutdown.clone(),
        );
        let task = tokio::spawn(sup.run(existing));
        // Keep the task handle for slots that later stop, so deletes can wait for them.
        self.registry
            .stopping
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), task);
        registry::SlotHandle { spec: tx, cancel }
    }
}

//! Instances: desired state in, running containers out.
//!
//! The reconciler compares the store (desired) with Docker (actual, found by labels) and keeps one
//! supervisor task per desired instance slot `(app, process, index)`:
//!
//! ```text
//!            ┌──────────── adopt a running container (same id, no restart) ─────────────┐
//!            ▼                                                                           │
//!  (none) ─create+upload droplet+start─▶ STARTING ─health check passes─▶ RUNNING (routed) │
//!    ▲                                      │ exits / times out            │ exits, OOM, removed
//!    └──── backoff (0, 0, 30 s, 60 s … 16 min; none after 200) ◀── CRASHED ◀┘
//! ```
//! A changed spec (new droplet, env, memory, restart) starts a replacement beside the running
//! instance and swaps the route only once the replacement is healthy. A slot that is no longer
//! desired leaves the router first, then gets SIGTERM and, after the grace period, SIGKILL.
//! Containers no supervisor owns (a deleted app's, a killed controller's half-made ones) are
//! removed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, PortBinding};
use futures_util::StreamExt;
use pier_api::{
    AppState, Backend, DeploymentStrategy, HealthCheck, HealthCheckType, InstanceState,
    InstanceStatus, LogStream, ProcessType, RouteEntry,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::docker::{self, labels, Managed};
use crate::error::{Error, Result};
use crate::server::Ctx;
use crate::store::{AppRecord, ProcessRecord, Revision};

/// How often a starting instance's health check is tried.
const STARTUP_POLL: Duration = Duration::from_millis(100);
/// Running this long resets the crash count (Cloud Foundry: 5 minutes).
const HEALTHY_RESET: Duration = Duration::from_secs(300);
/// Health checks of a running instance: how often, and how many failures in a row replace it.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const HEALTH_FAILURES: u32 = 3;
/// An instance that ran this long before its health check failed starts a fresh crash count.
const HEALTH_RESET_GUARD: Duration = HEALTHY_RESET;
/// After this many crashes an instance is not restarted any more.
pub const MAX_CRASHES: u32 = 200;
/// How often a slot that found no free address tries again (the reconciler's period).
const ADDRESS_RETRY: Duration = Duration::from_secs(2);

/// The wait before restarting an instance after its `crash_count`-th crash, or `None` for never.
/// Cloud Foundry's policy: crashes 1 and 2 restart at once, then `base` doubling up to 32 × `base`.
pub fn restart_delay(crash_count: u32, base: Duration) -> Option<Duration> {
    match crash_count {
        0..=2 => Some(Duration::ZERO),
        n if n >= MAX_CRASHES => None,
        n => {
            let factor = 1u32 << (n - 3).min(5);
            Some(base * factor)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub app_guid: String,
    pub process: ProcessType,
    pub index: u32,
}

/// Everything that makes an instance what it is. A different [`InstanceSpec::hash`] means the
/// running container must be replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceSpec {
    pub app_name: String,
    pub app_guid: String,
    pub process: ProcessType,
    pub index: u32,
    pub droplet: String,
    pub command: String,
    pub env: BTreeMap<String, String>,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub health_check: HealthCheck,
    pub restart_gen: u64,
    pub revision: u64,
    #[serde(skip)]
    pub uris: Vec<String>,
    /// Deployment settings: how a change of this spec is rolled out, not what runs.
    #[serde(skip)]
    pub recreate: bool,
    #[serde(skip)]
    pub max_in_flight: u32,
    /// Share of the route's traffic, relative to the other instances (canary steps).
    #[serde(skip)]
    pub weight: u32,
}

impl InstanceSpec {
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&Sha256::digest(&json)[..8])
    }
}

/// What the desired state asks for: one spec per instance slot of every started app.
///
/// Instances run the app's current revision. During a canary deployment the usual slots keep the
/// previous revision and one extra web slot runs the new one, weighted by the canary's step.
pub fn desired_slots(apps: &[AppRecord]) -> BTreeMap<SlotKey, InstanceSpec> {
    let mut out = BTreeMap::new();
    for app in apps {
        if app.state != AppState::Started {
            continue;
        }
        let Some(current) = app.running_revision() else {
            continue;
        };
        let deployment = app.active_deployment();
        let strategy = deployment.map(|d| d.strategy).unwrap_or_default();
        let max_in_flight = deployment.map(|d| d.max_in_flight).unwrap_or(1).max(1);
        let canary = deployment.and_then(|d| {
            let c = d.canary.as_ref()?;
            let base = app.revision(d.previous_revision?)?;
            Some((base, c.steps.get(c.step).copied().unwrap_or(100)))
        });
        let spec =
            |rev: &Revision, process: &ProcessType, index: u32, p: &ProcessRecord, weight: u32| {
                let command = app.command_in(rev, process)?;
                Some(InstanceSpec {
                    app_name: app.name.to_string(),
                    app_guid: app.guid.clone(),
                    process: process.clone(),
                    index,
                    revision: rev.version,
                    droplet: rev.droplet.sha256.clone(),
                    command,
                    env: rev.env.clone(),
                    memory_mb: p.memory_mb,
                    disk_mb: p.disk_mb,
                    health_check: p.health_check.clone(),
                    restart_gen: app.restart_gen,
                    uris: app.routes.iter().map(|r| r.to_string()).collect(),
                    recreate: strategy == DeploymentStrategy::Recreate,
                    max_in_flight,
                    weight,
                })
            };
        for (process, p) in &app.processes {
            let (rev, base_weight) = match (canary, process.is_web()) {
                // The canary takes `pct`% of traffic: it weighs pct × n against n × (100 − pct).
                (Some((base, pct)), true) => (base, 100u32.saturating_sub(pct)),
                _ => (current, 1),
            };
            for index in 0..p.instances {
                let key = SlotKey {
                    app_guid: app.guid.clone(),
                    process: process.clone(),
                    index,
                };
                if let Some(s) = spec(rev, process, index, p, base_weight) {
                    out.insert(key, s);
                }
            }
            if let (Some((_, pct)), true) = (canary, process.is_web()) {
                let index = p.instances;
                let key = SlotKey {
                    app_guid: app.guid.clone(),
                    process: process.clone(),
                    index,
                };
                if let Some(s) = spec(current, process, index, p, pct * p.instances.max(1)) {
                    out.insert(key, s);
                }
            }
        }
    }
    out
}

fn slot_of(c: &Managed) -> Option<SlotKey> {
    if c.label(labels::KIND) != Some("instance") {
        return None;
    }
    Some(SlotKey {
        app_guid: c.label(labels::APP_GUID)?.to_string(),
        process: c.label(labels::PROCESS)?.parse().ok()?,
        index: c.label(labels::INDEX)?.parse().ok()?,
    })
}

#[derive(Debug, Clone)]
struct Live {
    status: InstanceStatus,
    addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, Default)]
struct SlotView {
    /// The instance that serves (or last served) the slot.
    current: Option<Live>,
    /// A replacement being started beside it.
    pending: Option<Live>,
}

struct SlotHandle {
    spec: watch::Sender<InstanceSpec>,
    cancel: CancellationToken,
}

/// The controller's knowledge of actual instances, shared by the supervisors, the reconciler and
/// the API.
#[derive(Default)]
pub struct Instances {
    slots: Mutex<HashMap<SlotKey, SlotHandle>>,
    views: RwLock<HashMap<SlotKey, SlotView>>,
    /// Container ids a live supervisor is responsible for; the reconciler leaves them alone.
    owned: Mutex<HashSet<String>>,
    /// Supervisors still stopping containers after their slot went away.
    stopping: Mutex<HashMap<SlotKey, tokio::task::JoinHandle<()>>>,
    /// Revisions (by app) a replacement instance already failed to start on: the other slots
    /// don't try them, so a failed deployment stops at its first failure.
    failed_revisions: Mutex<HashSet<(String, u64, u64)>>,
    /// One permit per app: its instances are replaced one at a time, so it keeps answering.
    replace_permits: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    pub trigger: Notify,
    /// Reconcile passes run one at a time, so no pass acts on a desired state older than the
    /// slots another pass already changed.
    pass: tokio::sync::Mutex<()>,
}

impl Instances {
    /// Statuses of an app's instances, ordered by process and index.
    pub fn statuses(&self, app_guid: &str) -> Vec<InstanceStatus> {
        let views = self.views.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = views
            .iter()
            .filter(|(k, _)| k.app_guid == app_guid)
            .filter_map(|(_, v)| {
                v.pending
                    .as_ref()
                    .or(v.current.as_ref())
                    .map(|l| l.status.clone())
            })
            .collect();
        out.sort_by(|a, b| (&a.process, a.index).cmp(&(&b.process, b.index)));
        out
    }

    /// Every slot of an app the supervisors know, with what runs and what is being started.
    pub fn report(&self, app_guid: &str) -> Vec<SlotReport> {
        let views = self.views.read().unwrap_or_else(|e| e.into_inner());
        views
            .iter()
            .filter(|(k, _)| k.app_guid == app_guid)
            .map(|(k, v)| SlotReport {
                key: k.clone(),
                instance_id: v
                    .current
                    .as_ref()
                    .and_then(|l| l.status.instance_id.clone()),
                current: v.current.as_ref().map(|l| l.status.clone()),
                pending_state: v.pending.as_ref().map(|l| l.status.state),
                pending: v.pending.as_ref().map(|l| l.status.clone()),
            })
            .collect()
    }

    /// Healthy, routable instances of an app's web process, weighted as the desired state says.
    fn backends(&self, app_guid: &str, desired: &BTreeMap<SlotKey, InstanceSpec>) -> Vec<Backend> {
        let views = self.views.read().unwrap_or_else(|e| e.into_inner());
        views
            .iter()
            .filter(|(k, _)| k.app_guid == app_guid && k.process.is_web())
            .filter_map(|(k, v)| {
                let live = v.current.as_ref()?;
                if live.status.state != InstanceState::Running {
                    return None;
                }
                Some(Backend {
                    addr: live.addr?,
                    instance_id: live.status.instance_id.clone()?,
                    index: k.index,
                    weight: desired.get(k).map_or(1, |s| s.weight),
                })
            })
            .collect()
    }

    fn set_view(&self, key: &SlotKey, f: impl FnOnce(&mut SlotView)) {
        let mut views = self.views.write().unwrap_or_else(|e| e.into_inner());
        let v = views.entry(key.clone()).or_default();
        f(v);
        if v.current.is_none() && v.pending.is_none() {
            views.remove(key);
        }
    }

    /// Keyed by revision and restart generation: restarting a revision tries it afresh.
    fn revision_failed(&self, spec: &InstanceSpec) -> bool {
        self.failed_revisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(spec.app_guid.clone(), spec.revision, spec.restart_gen))
    }

    fn mark_revision_failed(&self, spec: &InstanceSpec) {
        self.failed_revisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((spec.app_guid.clone(), spec.revision, spec.restart_gen));
    }

    /// Replacements of one app's instances that may run at once (a deployment's max in flight).
    fn replace_permit(&self, app_guid: &str, max_in_flight: u32) -> Arc<tokio::sync::Semaphore> {
        self.replace_permits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(format!("{app_guid}/{max_in_flight}"))
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1) as usize)))
            .clone()
    }

    fn own(&self, id: &str) {
        self.owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string());
    }

    fn disown(&self, id: &str) {
        self.owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    fn is_owned(&self, id: &str) -> bool {
        self.owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// Waits until no supervisor of the app is still stopping containers.
    pub async fn wait_stopped(&self, app_guid: &str) {
        let handles: Vec<_> = {
            let mut stopping = self.stopping.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<_> = stopping
                .keys()
                .filter(|k| k.app_guid == app_guid)
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| stopping.remove(&k))
                .collect()
        };
        for h in handles {
            let _ = h.await;
        }
    }
}

/// One slot of an app as the supervisors see it, for deployments.
#[derive(Debug, Clone)]
pub struct SlotReport {
    pub key: SlotKey,
    pub instance_id: Option<String>,
    pub current: Option<InstanceStatus>,
    pub pending_state: Option<InstanceState>,
    pub pending: Option<InstanceStatus>,
}

impl SlotReport {
    /// The revision the slot serves from a healthy instance.
    pub fn running_revision(&self) -> Option<u64> {
        self.current
            .as_ref()
            .filter(|c| c.state == InstanceState::Running)
            .and_then(|c| c.revision)
    }

    /// Why an instance of `revision` in this slot failed, with its last output.
    pub fn failure_of(&self, revision: u64) -> Option<String> {
        let failed = [self.pending.as_ref(), self.current.as_ref()]
            .into_iter()
            .flatten()
            .find(|st| {
                st.revision == Some(revision)
                    && (st.state == InstanceState::Crashed
                        || (st.crash_count > 0 && st.state != InstanceState::Running))
            })?;
        let mut why = failed.reason.clone().unwrap_or_else(|| "crashed".into());
        if !failed.last_output.is_empty() {
            why.push_str("; last output:\n    ");
            why.push_str(&failed.last_output.join("\n    "));
        }
        Some(why)
    }
}

/// Rebuilds the route table from the store and the healthy instances, and publishes it.
pub fn publish_routes(ctx: &Ctx) -> Result<()> {
    let apps = ctx.store.list_apps()?;
    let desired = desired_slots(&apps);
    let mut entries = Vec::new();
    for app in &apps {
        let backends = if app.state == AppState::Started {
            ctx.instances.backends(&app.guid, &desired)
        } else {
            Vec::new()
        };
        for r in &app.routes {
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
    ctx.routing.publish(entries);
    Ok(())
}

/// The reconciler: runs a pass at start, whenever triggered, and every couple of seconds.
pub async fn run_reconciler(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    loop {
        if let Err(e) = reconcile_once(&ctx, &shutdown).await {
            tracing::warn!(error = %e, "reconcile pass failed; retrying");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ctx.instances.trigger.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Follows Docker's event stream for this controller's containers, so that a container killed or
/// removed behind the platform's back is acted on at once rather than at the next periodic pass.
/// Reconnects when the stream breaks (a Docker daemon restart, say).
pub async fn follow_docker_events(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    loop {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "label".to_string(),
                vec![format!("{}={}", labels::CONTROLLER, ctx.controller_id)],
            ),
            (
                "event".to_string(),
                vec!["die".into(), "destroy".into(), "oom".into(), "start".into()],
            ),
        ]);
        let opts = bollard::query_parameters::EventsOptionsBuilder::default()
            .filters(&filters)
            .build();
        let mut events = ctx.docker.events(Some(opts));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = events.next() => match ev {
                    Some(Ok(_)) => ctx.instances.trigger.notify_one(),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "docker event stream broke; reconnecting");
                        break;
                    }
                    None => break,
                },
            }
        }
        // Whatever happened while the stream was down is caught by the next pass.
        ctx.instances.trigger.notify_one();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// One comparison of desired and actual state, and the actions that close the gap.
pub async fn reconcile_once(ctx: &Arc<Ctx>, shutdown: &CancellationToken) -> Result<()> {
    let _pass = ctx.instances.pass.lock().await;
    let containers = docker::list_managed(&ctx.docker, &ctx.controller_id).await?;
    // Addresses of instances whose containers are gone and that no task looks after (removed
    // while the controller was down, or a removal that failed earlier) go into quarantine.
    let live: HashSet<String> = containers
        .iter()
        .filter_map(|c| c.label(labels::INSTANCE).map(str::to_string))
        .collect();
    let version = ctx.routing.current().map_or(0, |t| t.version);
    match ctx.addresses.sweep(&live, version) {
        Ok(gone) if !gone.is_empty() => {
            tracing::info!(addresses = ?gone, table_version = version, "instances gone; their addresses are in quarantine");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not release the addresses of instances that are gone")
        }
    }
    let apps = ctx.store.list_apps()?;
    let desired = desired_slots(&apps);
    let mut by_slot: HashMap<SlotKey, Vec<Managed>> = HashMap::new();
    let mut orphans = Vec::new();
    // Containers of a supervised slot that its supervisor does not own: made by a create that an
    // earlier run sent before it died, which Docker finished after this run listed containers.
    let mut strays = Vec::new();
    {
        let mut slots = ctx
            .instances
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for c in &containers {
            match slot_of(c) {
                Some(key) => {
                    let owned = ctx.instances.is_owned(&c.id)
                        || c.label(labels::INSTANCE)
                            .is_some_and(|i| ctx.instances.is_owned(i));
                    if owned {
                        continue;
                    }
                    if slots.contains_key(&key) {
                        strays.push(c.clone());
                    } else if desired.contains_key(&key) {
                        by_slot.entry(key).or_default().push(c.clone());
                    } else {
                        orphans.push(c.clone());
                    }
                }
                None => {
                    let staging = c.label(labels::KIND) == Some("staging");
                    let active = c.label(labels::APP_GUID).is_some_and(|g| {
                        ctx.active_stagings
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .contains(g)
                    });
                    if !staging || !active {
                        orphans.push(c.clone());
                    }
                }
            }
        }
        // Slots no longer desired: their supervisors drain and stop their containers.
        let gone: Vec<SlotKey> = slots
            .keys()
            .filter(|k| !desired.contains_key(k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(h) = slots.remove(&key) {
                tracing::info!(app = %key.app_guid, process = %key.process, index = key.index, "slot no longer desired; stopping it");
                h.cancel.cancel();
            }
        }
        for (key, spec) in &desired {
            match slots.get(key) {
                Some(h) => {
                    if *h.spec.borrow() != *spec {
                        h.spec.send_replace(spec.clone());
                    }
                }
                None => {
                    let (tx, rx) = watch::channel(spec.clone());
                    let cancel = CancellationToken::new();
                    let existing = by_slot.remove(key).unwrap_or_default();
                    for c in &existing {
                        ctx.instances.own(&c.id);
                    }
                    tracing::info!(app = %key.app_guid, process = %key.process, index = key.index, adopting = existing.len(), "supervising slot");
                    let task = tokio::spawn(supervise(
                        ctx.clone(),
                        key.clone(),
                        rx,
                        cancel.clone(),
                        shutdown.clone(),
                        existing,
                    ));
                    // Keep the task handle for slots that later stop, so deletes can wait for them.
                    ctx.instances
                        .stopping
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key.clone(), task);
                    slots.insert(key.clone(), SlotHandle { spec: tx, cancel });
                }
            }
        }
    }
    for c in orphans {
        tracing::info!(container = %c.id, app = ?c.label(labels::APP), "removing orphan container");
        docker::remove(&ctx.docker, &c.id).await?;
    }
    for c in strays {
        // Its slot's supervisor may be removing it itself right now: a failure is not an error
        // of this pass.
        tracing::info!(container = %c.id, app = ?c.label(labels::APP), "removing a container its slot does not own");
        if let Err(e) = docker::remove(&ctx.docker, &c.id).await {
            tracing::debug!(container = %c.id, error = %e, "stray container not removed");
        }
    }
    publish_routes(ctx)?;
    Ok(())
}

/// A container that passed its health check and serves its slot.
#[derive(Debug, Clone)]
struct Running {
    id: String,
    instance_id: String,
    spec_hash: String,
    droplet: String,
    revision: u64,
    addr: Option<SocketAddr>,
    /// Its address on the instance network, which the address pool tracks (None for an adopted
    /// instance on another network).
    ip: Option<Ipv4Addr>,
    host_port: Option<u16>,
    started: Instant,
    since: OffsetDateTime,
}

enum StartOutcome {
    Started(Running),
    Failed {
        reason: String,
        last_output: Vec<String>,
    },
    /// No address may be handed out now; nothing was created. Tried again later.
    NoAddress(String),
    Cancelled,
}

struct Crashes {
    count: u32,
    reason: Option<String>,
    last_output: Vec<String>,
}

fn status(
    key: &SlotKey,
    state: InstanceState,
    r: Option<&Running>,
    target: (&str, u64),
    c: &Crashes,
) -> InstanceStatus {
    InstanceStatus {
        process: key.process.clone(),
        index: key.index,
        state,
        since: r.map(|r| r.since).unwrap_or_else(OffsetDateTime::now_utc),
        instance_id: r.map(|r| r.instance_id.clone()),
        container_id: r.map(|r| r.id.clone()),
        host_port: r.and_then(|r| r.host_port),
        droplet: Some(target.0.to_string()),
        revision: Some(target.1),
        crash_count: c.count,
        reason: c.reason.clone(),
        last_output: c.last_output.clone(),
        stats: None,
    }
}

fn cell(ctx: &Ctx, key: &SlotKey, text: &str) {
    ctx.logs.publish(
        &key.app_guid,
        &format!("CELL/{}", key.index),
        LogStream::Out,
        text,
        OffsetDateTime::now_utc(),
    );
}

/// What ends a supervisor's wait, besides its own work.
enum SlotSignal {
    /// The controller shuts down: leave the instances as they are.
    Shutdown,
    /// The slot is no longer wanted (cancelled, or its handle dropped).
    Gone,
    /// A new spec.
    Changed,
}

async fn slot_signal(
    shutdown: &CancellationToken,
    cancel: &CancellationToken,
    spec_rx: &mut watch::Receiver<InstanceSpec>,
) -> SlotSignal {
    tokio::select! {
        _ = shutdown.cancelled() => SlotSignal::Shutdown,
        _ = cancel.cancelled() => SlotSignal::Gone,
        changed = spec_rx.changed() => match changed {
            Ok(()) => SlotSignal::Changed,
            // The sender goes with the slot's handle: the slot is gone, like a cancel.
            Err(_) if shutdown.is_cancelled() => SlotSignal::Shutdown,
            Err(_) => SlotSignal::Gone,
        },
    }
}

/// Out of restarts, with no instance: waits for a new spec (which resets the crash count).
/// `false` when the slot is gone or the controller shuts down instead: the supervisor returns.
async fn await_new_spec(
    ctx: &Ctx,
    key: &SlotKey,
    shutdown: &CancellationToken,
    cancel: &CancellationToken,
    spec_rx: &mut watch::Receiver<InstanceSpec>,
    crashes: &mut Crashes,
) -> bool {
    match slot_signal(shutdown, cancel, spec_rx).await {
        SlotSignal::Shutdown => false,
        SlotSignal::Gone => {
            ctx.instances.set_view(key, |v| *v = SlotView::default());
            false
        }
        SlotSignal::Changed => {
            crashes.count = 0;
            true
        }
    }
}

async fn supervise(
    ctx: Arc<Ctx>,
    key: SlotKey,
    mut spec_rx: watch::Receiver<InstanceSpec>,
    cancel: CancellationToken,
    shutdown: CancellationToken,
    existing: Vec<Managed>,
) {
    let mut crashes = Crashes {
        count: 0,
        reason: None,
        last_output: vec![],
    };
    let first_hash = spec_rx.borrow().hash();
    let mut current = adopt(&ctx, &key, existing, &first_hash).await;
    if let Some(r) = &current {
        ctx.instances.set_view(&key, |v| {
            v.current = Some(Live {
                status: status(
                    &key,
                    InstanceState::Running,
                    Some(r),
                    (&r.droplet, r.revision),
                    &crashes,
                ),
                addr: r.addr,
            })
        });
        let _ = publish_routes(&ctx);
    }
    // The spec hash whose replacement last failed; not retried until the spec changes again.
    let mut failed_hash: Option<String> = None;
    let mut restart_at: Option<tokio::time::Instant> = None;
    // Set while the slot waits for a free address (said once, as an event, per wait).
    let mut address_wait = false;

    loop {
        let spec = spec_rx.borrow_and_update().clone();
        let hash = spec.hash();
        match current.clone() {
            None => {
                if let Some(at) = restart_at {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = cancel.cancelled() => { ctx.instances.set_view(&key, |v| *v = SlotView::default()); return; }
                        _ = tokio::time::sleep_until(at) => {}
                    }
                    restart_at = None;
                }
                match start(
                    &ctx, &key, &spec, &hash, &cancel, &shutdown, false, &crashes,
                )
                .await
                {
                    StartOutcome::Started(r) => {
                        address_found(&ctx, &key, &r, &mut address_wait);
                        ctx.instances.set_view(&key, |v| {
                            v.current = Some(Live {
                                status: status(
                                    &key,
                                    InstanceState::Running,
                                    Some(&r),
                                    (&r.droplet, r.revision),
                                    &crashes,
                                ),
                                addr: r.addr,
                            })
                        });
                        cell(
                            &ctx,
                            &key,
                            &format!("Instance {} is running and healthy", key.index),
                        );
                        current = Some(r);
                        let _ = publish_routes(&ctx);
                    }
                    StartOutcome::Failed {
                        reason,
                        last_output,
                    } => {
                        match record_crash(
                            &ctx,
                            &key,
                            &spec,
                            &mut crashes,
                            reason,
                            last_output,
                            None,
                        ) {
                            Some(wait) => restart_at = Some(tokio::time::Instant::now() + wait),
                            None => {
                                // Out of restarts: wait for a new spec or the end.
                                if !await_new_spec(
                                    &ctx,
                                    &key,
                                    &shutdown,
                                    &cancel,
                                    &mut spec_rx,
                                    &mut crashes,
                                )
                                .await
                                {
                                    return;
                                }
                            }
                        }
                    }
                    StartOutcome::NoAddress(why) => {
                        waiting_for_address(
                            &ctx,
                            &key,
                            &spec,
                            &crashes,
                            &why,
                            false,
                            &mut address_wait,
                        );
                        tokio::select! {
                            signal = slot_signal(&shutdown, &cancel, &mut spec_rx) => match signal {
                                SlotSignal::Shutdown => return,
                                SlotSignal::Gone => { ctx.instances.set_view(&key, |v| *v = SlotView::default()); return; }
                                SlotSignal::Changed => {}
                            },
                            _ = tokio::time::sleep(ADDRESS_RETRY) => {}
                        }
                    }
                    StartOutcome::Cancelled => {
                        if !shutdown.is_cancelled() {
                            ctx.instances.set_view(&key, |v| *v = SlotView::default());
                        }
                        return;
                    }
                }
            }
            Some(r) => {
                if r.spec_hash != hash && failed_hash.as_deref() != Some(hash.as_str()) {
                    // Replace: start the new one beside the old, swap once healthy; one instance
                    // of the app at a time.
                    if spec.recreate {
                        // Recreate: the old instance goes first, then the slot starts afresh.
                        retire(&ctx, &key, &r).await;
                        current = None;
                        continue;
                    }
                    let sem = ctx
                        .instances
                        .replace_permit(&key.app_guid, spec.max_in_flight);
                    let permit = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = cancel.cancelled() => {
                            retire(&ctx, &key, &r).await;
                            return;
                        }
                        p = sem.acquire_owned() => p.ok(),
                    };
                    // The spec may have moved on while waiting for the permit.
                    if spec_rx.has_changed().unwrap_or(false) {
                        continue;
                    }
                    if ctx.instances.revision_failed(&spec) {
                        failed_hash = Some(hash);
                        continue;
                    }
                    match start(&ctx, &key, &spec, &hash, &cancel, &shutdown, true, &crashes).await
                    {
                        StartOutcome::Started(new) => {
                            address_found(&ctx, &key, &new, &mut address_wait);
                            crashes = Crashes {
                                count: 0,
                                reason: None,
                                last_output: vec![],
                            };
                            ctx.instances.set_view(&key, |v| {
                                v.pending = None;
                                v.current = Some(Live {
                                    status: status(
                                        &key,
                                        InstanceState::Running,
                                        Some(&new),
                                        (&new.droplet, new.revision),
                                        &crashes,
                                    ),
                                    addr: new.addr,
                                });
                            });
                            let _ = publish_routes(&ctx);
                            current = Some(new);
                            failed_hash = None;
                            drop(permit);
                            drain(&ctx, &key, &r).await;
                        }
                        StartOutcome::Failed {
                            reason,
                            last_output,
                        } => {
                            ctx.instances.set_view(&key, |v| {
                                v.pending = Some(Live {
                                    status: InstanceStatus {
                                        state: InstanceState::Crashed,
                                        reason: Some(reason.clone()),
                                        last_output: last_output.clone(),
                                        crash_count: 1,
                                        droplet: Some(spec.droplet.clone()),
                                        ..status(
                                            &key,
                                            InstanceState::Crashed,
                                            None,
                                            (&spec.droplet, spec.revision),
                                            &crashes,
                                        )
                                    },
                                    addr: None,
                                });
                            });
                            ctx.instances.mark_revision_failed(&spec);
                            let _ = ctx.store.add_event(
                                &key.app_guid,
                                "replacement_failed",
                                &format!("new instance {} failed to start: {reason}; the old one keeps serving", key.index),
                                "pier",
                            );
                            failed_hash = Some(hash);
                        }
                        StartOutcome::NoAddress(why) => {
                            // The old instance keeps serving; try again shortly.
                            drop(permit);
                            waiting_for_address(
                                &ctx,
                                &key,
                                &spec,
                                &crashes,
                                &why,
                                true,
                                &mut address_wait,
                            );
                            tokio::select! {
                                signal = slot_signal(&shutdown, &cancel, &mut spec_rx) => match signal {
                                    SlotSignal::Shutdown => return,
                                    SlotSignal::Gone => {
                                        retire(&ctx, &key, &r).await;
                                        return;
                                    }
                                    SlotSignal::Changed => {}
                                },
                                _ = tokio::time::sleep(ADDRESS_RETRY) => {}
                            }
                        }
                        StartOutcome::Cancelled => {
                            if !shutdown.is_cancelled() {
                                retire(&ctx, &key, &r).await;
                            }
                            return;
                        }
                    }
                    continue;
                }
                let checks = spec.health_check.kind != HealthCheckType::Process;
                tokio::select! {
                    signal = slot_signal(&shutdown, &cancel, &mut spec_rx) => match signal {
                        SlotSignal::Shutdown => return,
                        SlotSignal::Gone => {
                            retire(&ctx, &key, &r).await;
                            return;
                        }
                        SlotSignal::Changed => {}
                    },
                    failed = watch_health(&ctx, &key, &r, &spec.health_check), if checks => {
                        // Out of the router first, then the container goes; it restarts as after a crash.
                        ctx.instances.set_view(&key, |v| {
                            if let Some(c) = &mut v.current { c.status.state = InstanceState::Crashed; }
                        });
                        let _ = publish_routes(&ctx);
                        let last_output = docker::tail(&ctx.docker, &r.id, 20).await;
                        drain(&ctx, &key, &r).await;
                        current = None;
                        if r.started.elapsed() >= HEALTH_RESET_GUARD {
                            crashes.count = 0;
                        }
                        match record_crash(&ctx, &key, &spec, &mut crashes, failed, last_output, Some((r.droplet.clone(), r.revision))) {
                            Some(wait) => restart_at = Some(tokio::time::Instant::now() + wait),
                            None => {
                                restart_at = None;
                                if !await_new_spec(&ctx, &key, &shutdown, &cancel, &mut spec_rx, &mut crashes).await {
                                    return;
                                }
                            }
                        }
                    }
                    exit = wait_exit(&ctx, &r.id) => {
                        let ran = r.started.elapsed();
                        let (code, oom) = exit;
                        ctx.instances.set_view(&key, |v| {
                            if let Some(c) = &mut v.current { c.status.state = InstanceState::Crashed; }
                        });
                        let _ = publish_routes(&ctx);
                        let last_output = docker::tail(&ctx.docker, &r.id, 20).await;
                        // The table without it is out (above); once the container is gone, its
                        // address goes into quarantine.
                        let gone = docker::remove(&ctx.docker, &r.id).await.is_ok();
                        settle_address(&ctx, &r, gone);
                        ctx.instances.disown(&r.id);
                        current = None;
                        if ran >= HEALTHY_RESET {
                            crashes.count = 0;
                        }
                        let reason = match (code, oom) {
                            (_, true) => "out of memory: the instance was OOM-killed".to_string(),
                            (None, _) => "the container was removed".to_string(),
                            (Some(c), _) => format!("exited with status {c}"),
                        };
                        if let Some(wait) = record_crash(&ctx, &key, &spec, &mut crashes, reason, last_output, Some((r.droplet.clone(), r.revision))) {
                            restart_at = Some(tokio::time::Instant::now() + wait);
                        } else {
                            restart_at = None;
                            if !await_new_spec(&ctx, &key, &shutdown, &cancel, &mut spec_rx, &mut crashes).await {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Health checks after startup: every [`HEALTH_INTERVAL`]; returns the reason once
/// [`HEALTH_FAILURES`] checks in a row have failed. Each failure is a `HEALTH/<index>` log line.
async fn watch_health(ctx: &Ctx, key: &SlotKey, r: &Running, hc: &HealthCheck) -> String {
    let mut failures = 0;
    loop {
        tokio::time::sleep(HEALTH_INTERVAL).await;
        let ok = match r.addr {
            Some(addr) => check_once(addr, hc).await,
            None => true,
        };
        if ok {
            failures = 0;
            continue;
        }
        failures += 1;
        let what = match hc.kind {
            HealthCheckType::Http => format!(
                "HTTP GET {} failed or answered outside 200-399",
                hc.endpoint.as_deref().unwrap_or("/")
            ),
            _ => "TCP connect to port 8080 failed".to_string(),
        };
        ctx.logs.publish(
            &key.app_guid,
            &format!("HEALTH/{}", key.index),
            LogStream::Err,
            &format!("health check failed ({failures}/{HEALTH_FAILURES}): {what}"),
            OffsetDateTime::now_utc(),
        );
        if failures >= HEALTH_FAILURES {
            return format!("health check failed {failures} times in a row: {what}");
        }
    }
}

/// Records a crash (event, CELL line, CRASHED view) and returns the wait before the restart.
fn record_crash(
    ctx: &Ctx,
    key: &SlotKey,
    spec: &InstanceSpec,
    crashes: &mut Crashes,
    reason: String,
    last_output: Vec<String>,
    droplet: Option<(String, u64)>,
) -> Option<Duration> {
    crashes.count += 1;
    crashes.reason = Some(reason.clone());
    crashes.last_output = last_output;
    let wait = restart_delay(
        crashes.count,
        Duration::from_millis(ctx.config.crash_backoff_base_ms),
    );
    let what = match wait {
        Some(w) if w.is_zero() => "restarting now".to_string(),
        Some(w) => format!("restarting in {} s", w.as_secs_f64().round()),
        None => format!("not restarting after {} crashes", crashes.count),
    };
    let msg = format!(
        "{} instance {} crashed: {reason} (crash {}); {what}",
        key.process, key.index, crashes.count
    );
    tracing::info!(app = %spec.app_name, "{msg}");
    cell(ctx, key, &msg);
    let _ = ctx.store.add_event(&key.app_guid, "crashed", &msg, "pier");
    let d = droplet.unwrap_or_else(|| (spec.droplet.clone(), spec.revision));
    ctx.instances.set_view(key, |v| {
        v.current = Some(Live {
            status: status(key, InstanceState::Crashed, None, (&d.0, d.1), crashes),
            addr: None,
        })
    });
    let _ = publish_routes(ctx);
    wait
}

/// Takes over containers left by an earlier controller for this slot: keeps one running instance
/// (preferring one with the current spec), removes the rest.
async fn adopt(
    ctx: &Arc<Ctx>,
    key: &SlotKey,
    mut existing: Vec<Managed>,
    spec_hash: &str,
) -> Option<Running> {
    // Prefer a running container of the current spec, then the newest running one.
    existing.sort_by_key(|c| {
        std::cmp::Reverse((
            c.running,
            c.label(labels::SPEC) == Some(spec_hash),
            c.created,
        ))
    });
    let mut kept = None;
    for c in existing {
        if kept.is_none() && c.running {
            if let Ok(Some(i)) = docker::inspect(&ctx.docker, &c.id).await {
                if docker::is_running(&i) {
                    let since = i
                        .state
                        .as_ref()
                        .and_then(|s| s.started_at.as_deref())
                        .and_then(|s| {
                            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                                .ok()
                        })
                        .unwrap_or_else(OffsetDateTime::now_utc);
                    let instance_id = c.label(labels::INSTANCE).unwrap_or_default().to_string();
                    let ip = docker::ip_on(&i, &ctx.network.name).filter(|ip| {
                        !instance_id.is_empty()
                            && match ctx.addresses.adopt(*ip, &instance_id) {
                                Ok(tracked) => tracked,
                                Err(e) => {
                                    tracing::warn!(error = %e, %ip, "could not record an adopted instance's address");
                                    false
                                }
                            }
                    });
                    tracing::info!(container = %c.id, slot = ?key, ?ip, "adopted running instance");
                    crate::logs::follow_instance(
                        ctx.clone(),
                        key.app_guid.clone(),
                        crate::logs::app_source(&key.process, key.index),
                        c.id.clone(),
                        true,
                    );
                    kept = Some(Running {
                        id: c.id.clone(),
                        instance_id,
                        spec_hash: c.label(labels::SPEC).unwrap_or_default().to_string(),
                        droplet: c.label(labels::DROPLET).unwrap_or_default().to_string(),
                        revision: c
                            .label(labels::REVISION)
                            .and_then(|r| r.parse().ok())
                            .unwrap_or(0),
                        addr: docker::instance_addr(&i, &ctx.network.name),
                        ip,
                        host_port: docker::host_port(&i),
                        started: Instant::now(),
                        since,
                    });
                    continue;
                }
            }
        }
        tracing::info!(container = %c.id, slot = ?key, "removing leftover instance container");
        let _ = docker::remove(&ctx.docker, &c.id).await;
        ctx.instances.disown(&c.id);
    }
    kept
}

/// Stops the slot's instance for good: out of the router (shown DOWN while it stops), then drained.
async fn retire(ctx: &Ctx, key: &SlotKey, r: &Running) {
    // A newer supervisor of the same slot may already show its own instance: touch only ours.
    let ours = |l: &Option<Live>| {
        l.as_ref().and_then(|l| l.status.instance_id.as_deref()) == Some(r.instance_id.as_str())
    };
    ctx.instances.set_view(key, |v| {
        if ours(&v.current) {
            if let Some(c) = &mut v.current {
                c.status.state = InstanceState::Down;
            }
        }
        if ours(&v.pending) {
            v.pending = None;
        }
    });
    drain(ctx, key, r).await;
    ctx.instances.set_view(key, |v| {
        if ours(&v.current) {
            v.current = v.pending.take();
        }
    });
}

/// Leaves the router, then SIGTERM, SIGKILL after the grace period, and removal. The caller has
/// already taken the instance out of the view's RUNNING state, so the published table drops it.
async fn drain(ctx: &Ctx, key: &SlotKey, r: &Running) {
    cell(ctx, key, &format!("Stopping instance {}", key.index));
    // The route table no longer lists this container once the caller replaced or cleared the view;
    // publishing first means the router stops sending before the process gets SIGTERM.
    let _ = publish_routes(ctx);
    // Let the requests the router already sent it finish before SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(ctx.config.drain_timeout_secs);
    tokio::time::sleep(Duration::from_millis(50)).await;
    ctx.in_flight
        .wait_idle(&r.instance_id, deadline.into())
        .await;
    let drained = Instant::now();
    tracing::info!(instance = %r.instance_id, in_flight = ctx.in_flight.count(&r.instance_id), "drained; stopping");
    if let Err(e) = docker::stop(&ctx.docker, &r.id, ctx.config.stop_grace()).await {
        tracing::warn!(container = %r.id, error = %e, "stop failed; removing anyway");
    }
    let gone = match docker::remove(&ctx.docker, &r.id).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(container = %r.id, error = %e, "remove failed; the reconciler will retry");
            false
        }
    };
    settle_address(ctx, r, gone);
    tracing::info!(instance = %r.instance_id, secs = drained.elapsed().as_secs_f64(), "stopped and removed");
    ctx.instances.disown(&r.id);
}

/// After a routed instance's container was removed (`gone`), or its removal failed: its address
/// goes into quarantine at the table version now published, which no longer lists it (C1: the
/// caller published that table before removing the container). If the container may still be
/// there, the reconciler's sweep releases the address once it is gone.
fn settle_address(ctx: &Ctx, r: &Running, gone: bool) {
    let Some(ip) = r.ip else { return };
    if !gone {
        ctx.addresses.unhold(&r.instance_id);
        return;
    }
    let version = ctx.routing.current().map_or(0, |t| t.version);
    match ctx.addresses.release(ip, &r.instance_id, version) {
        Ok(()) => {
            tracing::info!(%ip, instance = %r.instance_id, table_version = version, "address released into quarantine")
        }
        Err(e) => {
            tracing::warn!(%ip, error = %e, "could not record a released address; the sweep retries");
            ctx.addresses.unhold(&r.instance_id);
        }
    }
}

/// Removes a container that never served (it never reached a route table) and frees its address
/// at once when the container is gone; otherwise the sweep releases it later.
async fn discard_unrouted(ctx: &Ctx, container: &str, ip: Ipv4Addr, instance_id: &str) {
    match docker::remove(&ctx.docker, container).await {
        Ok(()) => {
            if let Err(e) = ctx.addresses.free_unrouted(ip, instance_id) {
                tracing::warn!(%ip, error = %e, "could not free an unused address; the sweep retries");
                ctx.addresses.unhold(instance_id);
            }
        }
        Err(e) => {
            tracing::warn!(container, error = %e, "could not remove a container that never served");
            ctx.addresses.unhold(instance_id);
        }
    }
}

/// Shows that the slot waits for a free address; the first time in a row also as an event, a
/// CELL line and a warning in the controller's log.
fn waiting_for_address(
    ctx: &Ctx,
    key: &SlotKey,
    spec: &InstanceSpec,
    crashes: &Crashes,
    why: &str,
    beside: bool,
    waiting: &mut bool,
) {
    let mut st = status(
        key,
        InstanceState::Starting,
        None,
        (&spec.droplet, spec.revision),
        crashes,
    );
    st.reason = Some(why.to_string());
    if beside {
        // Not a failure of the new revision: a deployment waits for it.
        st.crash_count = 0;
    }
    let live = Live {
        status: st,
        addr: None,
    };
    ctx.instances.set_view(key, |v| {
        if beside {
            v.pending = Some(live);
        } else {
            v.current = Some(live);
        }
    });
    if *waiting {
        tracing::debug!(app = %spec.app_name, index = key.index, "{why}");
        return;
    }
    *waiting = true;
    let msg = format!(
        "{} instance {} cannot start: {why}; trying again every {} s",
        key.process,
        key.index,
        ADDRESS_RETRY.as_secs()
    );
    tracing::warn!(app = %spec.app_name, "{msg}");
    cell(ctx, key, &msg);
    let _ = ctx
        .store
        .add_event(&key.app_guid, "no_address", &msg, "pier");
}

/// Ends a wait for an address, saying so if there was one.
fn address_found(ctx: &Ctx, key: &SlotKey, r: &Running, waiting: &mut bool) {
    if std::mem::take(waiting) {
        let at = r.ip.map(|ip| ip.to_string()).unwrap_or_default();
        cell(
            ctx,
            key,
            &format!(
                "Instance {} got address {at} after waiting for one",
                key.index
            ),
        );
    }
}

/// Exit status (None when the container vanished) and OOM flag, once the container stops.
async fn wait_exit(ctx: &Ctx, id: &str) -> (Option<i64>, bool) {
    loop {
        let mut w = ctx
            .docker
            .wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>);
        let res = w.next().await;
        match res {
            Some(Ok(_)) | Some(Err(bollard::errors::Error::DockerContainerWaitError { .. })) => {}
            Some(Err(e)) if docker::is_not_found(&e) => return (None, false),
            _ => {
                // Docker went away (restart?) or the stream broke: look, then wait again.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        match docker::inspect(&ctx.docker, id).await {
            Ok(None) => return (None, false),
            Ok(Some(i)) if !docker::is_running(&i) => {
                let (code, oom) = docker::exit_info(&i);
                return (Some(code), oom);
            }
            _ => continue,
        }
    }
}

const LAUNCH: &str = r#"cd /home/vcap/app || exit 1
if [ -d .profile.d ]; then for f in .profile.d/*.sh; do [ -r "$f" ] && . "$f"; done; fi
if [ -r .profile ]; then . ./.profile; fi
exec bash -c "$PIER_START_COMMAND""#;

fn instance_env(spec: &InstanceSpec, instance_id: &str) -> Vec<String> {
    let vcap = serde_json::json!({
        "application_id": spec.app_guid,
        "application_name": spec.app_name,
        "application_uris": spec.uris,
        "application_version": spec.droplet,
        "name": spec.app_name,
        "uris": spec.uris,
        "space_id": "pier",
        "space_name": "pier",
        "process_id": format!("{}-{}", spec.app_guid, spec.process),
        "process_type": spec.process.as_str(),
        "instance_index": spec.index,
        "instance_id": instance_id,
        "limits": { "mem": spec.memory_mb, "disk": spec.disk_mb, "fds": 16384 },
    });
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    // Platform variables first; the user's env may not override PORT or the instance identity.
    for (k, v) in &spec.env {
        env.insert(k.clone(), v.clone());
    }
    let fixed = [
        ("PORT", "8080".to_string()),
        ("VCAP_APPLICATION", vcap.to_string()),
        ("VCAP_SERVICES", "{}".to_string()),
        ("CF_INSTANCE_INDEX", spec.index.to_string()),
        ("CF_INSTANCE_GUID", instance_id.to_string()),
        ("CF_INSTANCE_PORT", "8080".to_string()),
        ("INSTANCE_INDEX", spec.index.to_string()),
        ("INSTANCE_GUID", instance_id.to_string()),
        ("MEMORY_LIMIT", format!("{}m", spec.memory_mb)),
        ("HOME", "/home/vcap/app".to_string()),
        ("USER", "vcap".to_string()),
        ("TMPDIR", "/tmp".to_string()),
        ("PIER_START_COMMAND", spec.command.clone()),
    ];
    for (k, v) in fixed {
        env.insert(k.to_string(), v);
    }
    env.entry("LANG".into()).or_insert_with(|| "C.UTF-8".into());
    env.entry("PATH".into())
        .or_insert_with(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Creates, fills and starts a container for the slot, then waits for its health check.
#[allow(clippy::too_many_arguments)]
async fn start(
    ctx: &Arc<Ctx>,
    key: &SlotKey,
    spec: &InstanceSpec,
    hash: &str,
    cancel: &CancellationToken,
    shutdown: &CancellationToken,
    beside: bool,
    crashes: &Crashes,
) -> StartOutcome {
    let instance_id = uuid::Uuid::new_v4().to_string();
    let name = format!(
        "pier-{}-{}-{}-{}",
        spec.app_name,
        spec.process,
        spec.index,
        &instance_id[..8]
    );
    // The address first: nothing is created unless the controller can hand one out (C4).
    let ip = match ctx.addresses.allocate(&instance_id) {
        Ok(ip) => ip,
        Err(e) => return StartOutcome::NoAddress(e.to_string()),
    };
    let lbls = HashMap::from([
        (labels::CONTROLLER.to_string(), ctx.controller_id.clone()),
        (labels::KIND.to_string(), "instance".to_string()),
        (labels::APP.to_string(), spec.app_name.clone()),
        (labels::APP_GUID.to_string(), spec.app_guid.clone()),
        (labels::PROCESS.to_string(), spec.process.to_string()),
        (labels::INDEX.to_string(), spec.index.to_string()),
        (labels::INSTANCE.to_string(), instance_id.clone()),
        (labels::DROPLET.to_string(), spec.droplet.clone()),
        (labels::REVISION.to_string(), spec.revision.to_string()),
        (labels::SPEC.to_string(), hash.to_string()),
    ]);
    let mut host = docker::base_host_config(spec.memory_mb, ctx.config.pids_limit);
    host.port_bindings = Some(HashMap::from([(
        "8080/tcp".to_string(),
        Some(vec![PortBinding {
            host_ip: Some("127.0.0.1".into()),
            host_port: Some(String::new()),
        }]),
    )]));
    // tini as PID 1: apps that do not handle SIGTERM themselves still stop on it.
    host.init = Some(true);
    let mut body = ContainerCreateBody {
        image: Some(ctx.config.stack_image.clone()),
        user: Some("vcap".into()),
        working_dir: Some("/home/vcap/app".into()),
        cmd: Some(vec!["bash".into(), "-c".into(), LAUNCH.into()]),
        env: Some(instance_env(spec, &instance_id)),
        labels: Some(lbls),
        exposed_ports: Some(vec!["8080/tcp".into()]),
        stop_timeout: Some(ctx.config.stop_grace_secs as i64),
        host_config: Some(host),
        ..Default::default()
    };
    docker::attach(&mut body, &ctx.network.name, ip);
    let set_starting = |r: Option<&Running>| {
        let live = Live {
            status: status(
                key,
                InstanceState::Starting,
                r,
                (&spec.droplet, spec.revision),
                crashes,
            ),
            addr: None,
        };
        ctx.instances.set_view(key, |v| {
            if beside {
                v.pending = Some(live);
            } else {
                v.current = Some(live);
            }
        });
    };
    set_starting(None);
    cell(
        ctx,
        key,
        &format!(
            "Creating instance {} ({}) at {ip}",
            key.index,
            &instance_id[..8]
        ),
    );

    tracing::info!(app = %spec.app_name, process = %key.process, index = key.index, revision = spec.revision, %ip, "creating instance container");
    // Owned by its instance id until Docker says its container id: a reconcile pass in between
    // must not take it for a stray.
    ctx.instances.own(&instance_id);
    let created = async {
        let id = match docker::create(&ctx.docker, &name, body).await {
            Ok(id) => id,
            Err(e) => {
                // A failed create may still have made the container; remove it by its name
                // (unique to this instance) before its address is free again.
                discard_unrouted(ctx, &name, ip, &instance_id).await;
                ctx.instances.disown(&instance_id);
                return Err(e);
            }
        };
        ctx.instances.own(&id);
        ctx.instances.disown(&instance_id);
        match async {
            let droplet = ctx.blobs.path(&spec.droplet)?;
            docker::upload_file(&ctx.docker, &id, "/home/vcap", &droplet).await?;
            docker::start(&ctx.docker, &id).await?;
            // Docker must have put it where the controller said; never use another address.
            let inspect = docker::inspect(&ctx.docker, &id).await?;
            let actual = inspect
                .as_ref()
                .and_then(|i| docker::ip_on(i, &ctx.network.name));
            if actual != Some(ip) {
                return Err(Error::Other(format!(
                    "Docker attached the container at {actual:?} on {}, not at the allocated \
                     address {ip}",
                    ctx.network.name
                )));
            }
            Ok::<_, Error>(inspect)
        }
        .await
        {
            Ok(inspect) => Ok::<_, Error>((id, inspect)),
            Err(e) => {
                discard_unrouted(ctx, &id, ip, &instance_id).await;
                ctx.instances.disown(&id);
                Err(e)
            }
        }
    }
    .await;
    let (id, inspect) = match created {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "could not create an instance container");
            return StartOutcome::Failed {
                reason: format!(
                    "the platform could not start the container: {}",
                    e.to_api().message
                ),
                last_output: vec![],
            };
        }
    };
    tracing::info!(app = %spec.app_name, index = key.index, container = %id, "instance container started; health check next");
    let mut running = Running {
        id: id.clone(),
        instance_id: instance_id.clone(),
        spec_hash: hash.to_string(),
        droplet: spec.droplet.clone(),
        revision: spec.revision,
        addr: Some(SocketAddr::new(ip.into(), 8080)),
        ip: Some(ip),
        host_port: inspect.as_ref().and_then(docker::host_port),
        started: Instant::now(),
        since: OffsetDateTime::now_utc(),
    };
    set_starting(Some(&running));
    cell(
        ctx,
        key,
        &format!("Started container for instance {}", key.index),
    );
    // Its output, from its first line (Docker keeps it), into the app's log.
    crate::logs::follow_instance(
        ctx.clone(),
        key.app_guid.clone(),
        crate::logs::app_source(&key.process, key.index),
        id.clone(),
        false,
    );

    let hc = &spec.health_check;
    let timeout = Duration::from_secs(u64::from(hc.timeout_secs.clamp(1, 180)));
    let healthy = async {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(addr) = running.addr {
                if check_once(addr, hc).await {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(STARTUP_POLL).await;
        }
    };
    // Until it is healthy the instance is in no route table: if it goes, its address is free.
    let failure = tokio::select! {
        _ = shutdown.cancelled() => {
            // Not yet healthy: leave nothing half-started behind.
            discard_unrouted(ctx, &id, ip, &instance_id).await;
            ctx.instances.disown(&id);
            return StartOutcome::Cancelled;
        }
        _ = cancel.cancelled() => {
            discard_unrouted(ctx, &id, ip, &instance_id).await;
            ctx.instances.disown(&id);
            return StartOutcome::Cancelled;
        }
        ok = healthy => {
            if ok {
                running.since = OffsetDateTime::now_utc();
                running.started = Instant::now();
                return StartOutcome::Started(running);
            }
            format!(
                "health check ({}) did not pass within {} s",
                match hc.kind {
                    HealthCheckType::Port => "TCP connect to port 8080".to_string(),
                    HealthCheckType::Http => format!("HTTP GET {}", hc.endpoint.as_deref().unwrap_or("/")),
                    HealthCheckType::Process => "process".to_string(),
                },
                timeout.as_secs()
            )
        }
        (code, oom) = wait_exit(ctx, &id) => match (code, oom) {
            (_, true) => "out of memory during startup: the instance was OOM-killed".to_string(),
            (Some(c), _) => format!("exited with status {c} during startup"),
            (None, _) => "the container was removed during startup".to_string(),
        },
    };
    let last_output = docker::tail(&ctx.docker, &id, 20).await;
    discard_unrouted(ctx, &id, ip, &instance_id).await;
    ctx.instances.disown(&id);
    StartOutcome::Failed {
        reason: failure,
        last_output,
    }
}

/// Resource use of one instance container: CPU over about a second, memory, written disk.
pub async fn instance_stats(
    ctx: &Ctx,
    status: &InstanceStatus,
    disk_mb: u64,
) -> Option<pier_api::InstanceStats> {
    let id = status.container_id.as_deref()?;
    let opts = bollard::query_parameters::StatsOptionsBuilder::default()
        .stream(false)
        .one_shot(false)
        .build();
    let mut stream = ctx.docker.stats(id, Some(opts));
    let s = stream.next().await?.ok()?;
    let cpu = s.cpu_stats.as_ref();
    let pre = s.precpu_stats.as_ref();
    let total = |c: Option<&bollard::models::ContainerCpuStats>| {
        c.and_then(|c| c.cpu_usage.as_ref())
            .and_then(|u| u.total_usage)
            .unwrap_or(0)
    };
    let system = |c: Option<&bollard::models::ContainerCpuStats>| {
        c.and_then(|c| c.system_cpu_usage).unwrap_or(0)
    };
    let cpu_delta = total(cpu).saturating_sub(total(pre)) as f64;
    let sys_delta = system(cpu).saturating_sub(system(pre)) as f64;
    let cpus = cpu.and_then(|c| c.online_cpus).unwrap_or(1).max(1) as f64;
    let cpu_percent = if sys_delta > 0.0 {
        cpu_delta / sys_delta * cpus * 100.0
    } else {
        0.0
    };
    let mem = s.memory_stats.as_ref();
    // Page cache is not the app's memory (what `docker stats` subtracts too).
    let cache = mem
        .and_then(|m| m.stats.as_ref())
        .and_then(|st| st.get("inactive_file").or_else(|| st.get("cache")).copied())
        .unwrap_or(0);
    let disk = ctx
        .docker
        .inspect_container(
            id,
            Some(
                bollard::query_parameters::InspectContainerOptionsBuilder::default()
                    .size(true)
                    .build(),
            ),
        )
        .await
        .ok()
        .and_then(|i| i.size_rw)
        .unwrap_or(0);
    let uptime = (OffsetDateTime::now_utc() - status.since)
        .whole_seconds()
        .max(0) as u64;
    Some(pier_api::InstanceStats {
        cpu_percent: (cpu_percent * 10.0).round() / 10.0,
        memory_bytes: mem.and_then(|m| m.usage).unwrap_or(0).saturating_sub(cache),
        memory_limit_bytes: mem.and_then(|m| m.limit).unwrap_or(0),
        disk_bytes: disk.max(0) as u64,
        disk_limit_bytes: disk_mb * 1024 * 1024,
        uptime_secs: uptime,
    })
}

/// One health check of an instance at `addr`.
pub async fn check_once(addr: SocketAddr, hc: &HealthCheck) -> bool {
    let invocation = Duration::from_secs(u64::from(hc.invocation_timeout_secs.max(1)));
    match hc.kind {
        HealthCheckType::Process => true,
        HealthCheckType::Port => matches!(
            tokio::time::timeout(invocation, tokio::net::TcpStream::connect(addr)).await,
            Ok(Ok(_))
        ),
        HealthCheckType::Http => {
            let path = hc.endpoint.as_deref().unwrap_or("/");
            tokio::time::timeout(invocation, http_status(addr, path))
                .await
                .ok()
                .flatten()
                .is_some_and(|s| (200..400).contains(&s))
        }
    }
}

/// GETs `path` and returns the response's status code.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: pier-health\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let m = s.read(&mut buf[n..]).await.ok()?;
        if m == 0 {
            break;
        }
        n += m;
    }
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_foundry_backoff() {
        let base = Duration::from_secs(30);
        assert_eq!(restart_delay(1, base), Some(Duration::ZERO));
        assert_eq!(restart_delay(2, base), Some(Duration::ZERO));
        assert_eq!(restart_delay(3, base), Some(Duration::from_secs(30)));
        assert_eq!(restart_delay(4, base), Some(Duration::from_secs(60)));
        assert_eq!(restart_delay(5, base), Some(Duration::from_secs(120)));
        assert_eq!(restart_delay(8, base), Some(Duration::from_secs(960)));
        assert_eq!(
            restart_delay(9, base),
            Some(Duration::from_secs(960)),
            "16 min cap"
        );
        assert_eq!(restart_delay(199, base), Some(Duration::from_secs(960)));
        assert_eq!(restart_delay(200, base), None);
    }

    #[tokio::test]
    async fn http_and_port_checks() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let status = if req.starts_with("GET /ok ") {
                        "204 No Content"
                    } else {
                        "500 Oops"
                    };
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let mut hc = HealthCheck::default();
        assert!(check_once(addr, &hc).await);
        hc.kind = HealthCheckType::Http;
        hc.endpoint = Some("/ok".into());
        assert!(check_once(addr, &hc).await);
        hc.endpoint = Some("/bad".into());
        assert!(!check_once(addr, &hc).await);
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(!check_once(closed, &HealthCheck::default()).await);
    }
}

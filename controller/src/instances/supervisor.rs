//! One supervisor per desired instance slot: it adopts what an earlier controller left running,
//! starts an instance when there is none, replaces it when its spec changes, restarts it after a
//! crash with Cloud Foundry's backoff, and stops it (drained) when the slot goes away.
//!
//! Every way a running instance can end — its process exits, it is OOM-killed or removed, or its
//! health check fails three times in a row — goes through one path, [`Supervisor::ended`]: out of
//! the router, the container goes, the crash is recorded, the restart is scheduled.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use pier_api::{
    EventKind, HealthCheck, HealthCheckType, InstanceState, InstanceStatus, LogSource, LogStream,
};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::desired::{restart_delay, InstanceSpec, SlotKey};
use super::health::{self, HEALTH_FAILURES, HEALTH_INTERVAL};
use super::launch::{Launch, StartOutcome};
use super::registry::{Live, SlotView};
use super::Instances;
use crate::events::Actor;
use crate::runtime::labels::keys;
use crate::runtime::{Exit, Managed};

/// Running this long resets the crash count (Cloud Foundry: 5 minutes).
const HEALTHY_RESET: Duration = Duration::from_secs(300);
/// How often a slot that found no free address tries again (the reconciler's period).
const ADDRESS_RETRY: Duration = Duration::from_secs(2);

/// A container that passed its health check and serves its slot.
#[derive(Debug, Clone)]
pub(super) struct Running {
    pub(super) id: String,
    pub(super) instance_id: String,
    pub(super) spec_hash: String,
    pub(super) droplet: String,
    pub(super) revision: u64,
    pub(super) addr: Option<SocketAddr>,
    /// Its address on the instance network, which the address pool tracks (None for an adopted
    /// instance on another network).
    pub(super) ip: Option<Ipv4Addr>,
    pub(super) host_port: Option<u16>,
    pub(super) started: Instant,
    pub(super) since: OffsetDateTime,
}

#[derive(Debug, Default)]
pub(super) struct Crashes {
    pub(super) count: u32,
    pub(super) reason: Option<String>,
    pub(super) last_output: Vec<String>,
}

/// The status an instance of a slot shows.
pub(super) fn status(
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

/// What ends a supervisor's wait, besides its own work.
enum SlotSignal {
    /// The controller shuts down: leave the instances as they are.
    Shutdown,
    /// The slot is no longer wanted (cancelled, or its handle dropped).
    Gone,
    /// A new spec.
    Changed,
}

/// Whether the supervisor goes on.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// How a running instance ended.
enum Ended {
    Exited(Exit),
    Unhealthy(String),
}

pub(super) struct Supervisor {
    inst: Arc<Instances>,
    key: SlotKey,
    spec_rx: watch::Receiver<InstanceSpec>,
    cancel: CancellationToken,
    shutdown: CancellationToken,
    crashes: Crashes,
    current: Option<Running>,
    /// The spec hash whose replacement last failed; not retried until the spec changes again.
    failed_hash: Option<String>,
    restart_at: Option<Instant>,
    /// Set while the slot waits for a free address (said once, as an event, per wait).
    address_wait: bool,
}

impl Supervisor {
    pub(super) fn new(
        inst: Arc<Instances>,
        key: SlotKey,
        spec_rx: watch::Receiver<InstanceSpec>,
        cancel: CancellationToken,
        shutdown: CancellationToken,
    ) -> Supervisor {
        Supervisor {
            inst,
            key,
            spec_rx,
            cancel,
            shutdown,
            crashes: Crashes::default(),
            current: None,
            failed_hash: None,
            restart_at: None,
            address_wait: false,
        }
    }

    pub(super) async fn run(mut self, existing: Vec<Managed>) {
        let first_hash = self.spec_rx.borrow().hash();
        self.current = self.adopt(existing, &first_hash).await;
        if let Some(r) = self.current.clone() {
            self.show_running(&r);
            self.inst.publish_routes();
        }
        loop {
            let spec = self.spec_rx.borrow_and_update().clone();
            let hash = spec.hash();
            let flow = match self.current.clone() {
                None => self.start_fresh(&spec, &hash).await,
                Some(r) if r.spec_hash != hash && self.failed_hash.as_deref() != Some(&hash) => {
                    self.replace(r, &spec, &hash).await
                }
                Some(r) => self.serve(r, &spec).await,
            };
            if flow == Flow::Stop {
                return;
            }
        }
    }

    async fn slot_signal(&mut self) -> SlotSignal {
        tokio::select! {
            _ = self.shutdown.cancelled() => SlotSignal::Shutdown,
            _ = self.cancel.cancelled() => SlotSignal::Gone,
            changed = self.spec_rx.changed() => match changed {
                Ok(()) => SlotSignal::Changed,
                // The sender goes with the slot's handle: the slot is gone, like a cancel.
                Err(_) if self.shutdown.is_cancelled() => SlotSignal::Shutdown,
                Err(_) => SlotSignal::Gone,
            },
        }
    }

    fn clear_view(&self) {
        self.inst
            .registry
            .set_view(&self.key, |v| *v = SlotView::default());
    }

    fn show_running(&self, r: &Running) {
        let live = Live {
            status: status(
                &self.key,
                InstanceState::Running,
                Some(r),
                (&r.droplet, r.revision),
                &self.crashes,
            ),
            addr: r.addr,
        };
        self.inst.registry.set_view(&self.key, |v| {
            v.pending = None;
            v.current = Some(live);
        });
    }

    fn launch<'a>(&'a self, spec: &'a InstanceSpec, hash: &'a str, beside: bool) -> Launch<'a> {
        Launch {
            inst: &self.inst,
            key: &self.key,
            spec,
            hash,
            beside,
            crashes: &self.crashes,
            cancel: &self.cancel,
            shutdown: &self.shutdown,
        }
    }

    /// No instance: start one (after the backoff, if there was a crash).
    async fn start_fresh(&mut self, spec: &InstanceSpec, hash: &str) -> Flow {
        if let Some(at) = self.restart_at.take() {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Flow::Stop,
                _ = self.cancel.cancelled() => { self.clear_view(); return Flow::Stop; }
                _ = tokio::time::sleep_until(at) => {}
            }
        }
        match self.launch(spec, hash, false).run().await {
            StartOutcome::Started(r) => {
                self.address_found(&r);
                self.show_running(&r);
                self.inst.cell(
                    &self.key,
                    &format!("Instance {} is running and healthy", self.key.index),
                );
                self.current = Some(r);
                self.inst.publish_routes();
                Flow::Continue
            }
            StartOutcome::Failed {
                reason,
                last_output,
            } => self.crashed(spec, reason, last_output, None).await,
            StartOutcome::NoAddress(why) => {
                self.waiting_for_address(spec, &why, false);
                self.retry_later(None).await
            }
            StartOutcome::Cancelled => {
                if !self.shutdown.is_cancelled() {
                    self.clear_view();
                }
                Flow::Stop
            }
        }
    }

    /// A new spec: start the new instance beside the old one and swap once it is healthy (or,
    /// for a recreate, stop the old one first).
    async fn replace(&mut self, r: Running, spec: &InstanceSpec, hash: &str) -> Flow {
        if spec.recreate {
            self.retire(&r).await;
            self.current = None;
            return Flow::Continue;
        }
        let sem = self
            .inst
            .registry
            .replace_permit(&self.key.app_guid, spec.max_in_flight);
        let permit = tokio::select! {
            _ = self.shutdown.cancelled() => return Flow::Stop,
            _ = self.cancel.cancelled() => {
                self.retire(&r).await;
                return Flow::Stop;
            }
            p = sem.acquire_owned() => p.ok(),
        };
        // The spec may have moved on while waiting for the permit.
        if self.spec_rx.has_changed().unwrap_or(false) {
            return Flow::Continue;
        }
        if self.inst.registry.revision_failed(spec) {
            self.failed_hash = Some(hash.to_string());
            return Flow::Continue;
        }
        match self.launch(spec, hash, true).run().await {
            StartOutcome::Started(new) => {
                self.address_found(&new);
                self.crashes = Crashes::default();
                self.show_running(&new);
                self.inst.publish_routes();
                self.current = Some(new);
                self.failed_hash = None;
                drop(permit);
                self.inst.drain(&self.key, &r).await;
                Flow::Continue
            }
            StartOutcome::Failed {
                reason,
                last_output,
            } => {
                self.replacement_failed(spec, hash, reason, last_output);
                Flow::Continue
            }
            StartOutcome::NoAddress(why) => {
                // The old instance keeps serving; try again shortly.
                drop(permit);
                self.waiting_for_address(spec, &why, true);
                self.retry_later(Some(&r)).await
            }
            StartOutcome::Cancelled => {
                if !self.shutdown.is_cancelled() {
                    self.retire(&r).await;
                }
                Flow::Stop
            }
        }
    }

    fn replacement_failed(
        &mut self,
        spec: &InstanceSpec,
        hash: &str,
        reason: String,
        last_output: Vec<String>,
    ) {
        let failed = InstanceStatus {
            state: InstanceState::Crashed,
            reason: Some(reason.clone()),
            last_output,
            crash_count: 1,
            ..status(
                &self.key,
                InstanceState::Crashed,
                None,
                (&spec.droplet, spec.revision),
                &self.crashes,
            )
        };
        self.inst.registry.set_view(&self.key, |v| {
            v.pending = Some(Live {
                status: failed,
                addr: None,
            });
        });
        self.inst.registry.mark_revision_failed(spec);
        self.inst.deps.events.record(
            &self.key.app_guid,
            EventKind::ReplacementFailed,
            &format!(
                "new instance {} failed to start: {reason}; the old one keeps serving",
                self.key.index
            ),
            &Actor::Platform,
        );
        self.failed_hash = Some(hash.to_string());
    }

    /// The instance serves: watch it until it ends or the slot changes.
    async fn serve(&mut self, r: Running, spec: &InstanceSpec) -> Flow {
        let checks = spec.health_check.kind != HealthCheckType::Process;
        let runtime = self.inst.deps.runtime.clone();
        let inst = self.inst.clone();
        let key = self.key.clone();
        let ended = tokio::select! {
            signal = self.slot_signal() => match signal {
                SlotSignal::Shutdown => return Flow::Stop,
                SlotSignal::Gone => {
                    self.retire(&r).await;
                    return Flow::Stop;
                }
                SlotSignal::Changed => return Flow::Continue,
            },
            failed = watch_health(&inst, &key, &r, &spec.health_check), if checks => Ended::Unhealthy(failed),
            exit = runtime.wait(&r.id) => Ended::Exited(exit),
        };
        self.ended(r, ended, spec).await
    }

    /// The one path for an instance that stopped serving on its own.
    async fn ended(&mut self, r: Running, ended: Ended, spec: &InstanceSpec) -> Flow {
        let ran = r.started.elapsed();
        // Out of the router first, then the container goes; it restarts as after a crash.
        self.inst.registry.set_view(&self.key, |v| {
            if let Some(c) = &mut v.current {
                c.status.state = InstanceState::Crashed;
            }
        });
        self.inst.publish_routes();
        let last_output = self.inst.deps.runtime.tail(&r.id, 20).await;
        let reason = match ended {
            // Still running: drain it like any instance that leaves.
            Ended::Unhealthy(reason) => {
                self.inst.drain(&self.key, &r).await;
                reason
            }
            Ended::Exited(exit) => {
                // The table without it is out (above); once the container is gone, its address
                // goes into quarantine.
                let gone = self.inst.deps.runtime.remove(&r.id).await.is_ok();
                self.inst.settle_address(&r, gone);
                self.inst.registry.disown(&r.id);
                exit.describe()
            }
        };
        self.current = None;
        if ran >= HEALTHY_RESET {
            self.crashes.count = 0;
        }
        self.crashed(
            spec,
            reason,
            last_output,
            Some((r.droplet.clone(), r.revision)),
        )
        .await
    }

    /// Records a crash and schedules the restart; out of restarts, waits for a new spec.
    async fn crashed(
        &mut self,
        spec: &InstanceSpec,
        reason: String,
        last_output: Vec<String>,
        droplet: Option<(String, u64)>,
    ) -> Flow {
        match self.record_crash(spec, reason, last_output, droplet) {
            Some(wait) => {
                self.restart_at = Some(Instant::now() + wait);
                Flow::Continue
            }
            None => {
                self.restart_at = None;
                self.await_new_spec().await
            }
        }
    }

    /// Out of restarts, with no instance: waits for a new spec (which resets the crash count).
    async fn await_new_spec(&mut self) -> Flow {
        match self.slot_signal().await {
            SlotSignal::Shutdown => Flow::Stop,
            SlotSignal::Gone => {
                self.clear_view();
                Flow::Stop
            }
            SlotSignal::Changed => {
                self.crashes.count = 0;
                Flow::Continue
            }
        }
    }

    /// Waits [`ADDRESS_RETRY`] (or for a new spec) before trying for an address again. `serving`
    /// is the instance that keeps serving meanwhile, retired if the slot goes.
    async fn retry_later(&mut self, serving: Option<&Running>) -> Flow {
        tokio::select! {
            signal = self.slot_signal() => match signal {
                SlotSignal::Shutdown => Flow::Stop,
                SlotSignal::Gone => {
                    match serving {
                        Some(r) => self.retire(r).await,
                        None => self.clear_view(),
                    }
                    Flow::Stop
                }
                SlotSignal::Changed => Flow::Continue,
            },
            _ = tokio::time::sleep(ADDRESS_RETRY) => Flow::Continue,
        }
    }

    /// Records a crash (event, CELL line, CRASHED view) and returns the wait before the restart.
    fn record_crash(
        &mut self,
        spec: &InstanceSpec,
        reason: String,
        last_output: Vec<String>,
        droplet: Option<(String, u64)>,
    ) -> Option<Duration> {
        let c = &mut self.crashes;
        c.count += 1;
        c.reason = Some(reason.clone());
        c.last_output = last_output;
        let wait = restart_delay(c.count, self.inst.deps.settings.crash_backoff_base);
        let what = match wait {
            Some(w) if w.is_zero() => "restarting now".to_string(),
            Some(w) => format!("restarting in {} s", w.as_secs_f64().round()),
            None => format!("not restarting after {} crashes", c.count),
        };
        let key = &self.key;
        let msg = format!(
            "{} instance {} crashed: {reason} (crash {}); {what}",
            key.process, key.index, c.count
        );
        tracing::info!(app = %spec.app_name, "{msg}");
        self.inst.cell(key, &msg);
        self.inst
            .deps
            .events
            .record(&key.app_guid, EventKind::Crashed, &msg, &Actor::Platform);
        let d = droplet.unwrap_or_else(|| (spec.droplet.clone(), spec.revision));
        let crashed = status(
            key,
            InstanceState::Crashed,
            None,
            (&d.0, d.1),
            &self.crashes,
        );
        self.inst.registry.set_view(key, |v| {
            v.current = Some(Live {
                status: crashed,
                addr: None,
            })
        });
        self.inst.publish_routes();
        wait
    }

    /// Takes over containers left by an earlier controller for this slot: keeps one running
    /// instance (preferring one with the current spec), removes the rest.
    async fn adopt(&self, mut existing: Vec<Managed>, spec_hash: &str) -> Option<Running> {
        // Prefer a running container of the current spec, then the newest running one.
        existing.sort_by_key(|c| {
            std::cmp::Reverse((
                c.running,
                c.labels.get(keys::SPEC) == Some(spec_hash),
                c.created,
            ))
        });
        let mut kept = None;
        for c in existing {
            if kept.is_none() && c.running {
                kept = self.adopt_one(&c).await;
                if kept.is_some() {
                    continue;
                }
            }
            tracing::info!(container = %c.id, slot = ?self.key, "removing leftover instance container");
            let _ = self.inst.deps.runtime.remove(&c.id).await;
            self.inst.registry.disown(&c.id);
        }
        kept
    }

    async fn adopt_one(&self, c: &Managed) -> Option<Running> {
        let deps = &self.inst.deps;
        let info = deps.runtime.inspect(&c.id).await.ok().flatten()?;
        if !info.running {
            return None;
        }
        // Its space's network; the pool knows it (made or adopted at start, or when the space's
        // first instance of this run started).
        let space = self.spec_rx.borrow().space_guid.clone();
        let network = &deps.networks.name_for(&space);
        let instance_id = c.labels.instance().unwrap_or_default().to_string();
        let ip = info.address_on(network).filter(|ip| {
            !instance_id.is_empty()
                && match deps.addresses.adopt(*ip, &instance_id) {
                    Ok(tracked) => tracked,
                    Err(e) => {
                        tracing::warn!(error = %e, %ip, "could not record an adopted instance's address");
                        false
                    }
                }
        });
        // Started on the default network before its space had one of its own: it serves on, and
        // is replaced by one on the space's network (as a spec change would be).
        let moved = info.address_on(network).is_none()
            && info.address_on(&deps.networks.name_for("")).is_some();
        tracing::info!(container = %c.id, slot = ?self.key, ?ip, moved, "adopted running instance");
        crate::logs::follow_instance(
            deps.runtime.clone(),
            deps.logs.clone(),
            self.key.app_guid.clone(),
            LogSource::app(&self.key.process, self.key.index),
            c.id.clone(),
            true,
        );
        let addr = info
            .address_on(network)
            .or_else(|| info.any_address())
            .map(|ip| SocketAddr::new(ip.into(), 8080));
        Some(Running {
            id: c.id.clone(),
            instance_id,
            spec_hash: match moved {
                true => String::new(),
                false => c.labels.get(keys::SPEC).unwrap_or_default().to_string(),
            },
            droplet: c.labels.get(keys::DROPLET).unwrap_or_default().to_string(),
            revision: c
                .labels
                .get(keys::REVISION)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
            addr,
            ip,
            host_port: info.host_port,
            started: Instant::now(),
            since: info.started_at.unwrap_or_else(OffsetDateTime::now_utc),
        })
    }

    /// Stops the slot's instance for good: out of the router (shown DOWN while it stops), then
    /// drained.
    async fn retire(&self, r: &Running) {
        // A newer supervisor of the same slot may already show its own instance: touch only ours.
        let ours = |l: &Option<Live>| {
            l.as_ref().and_then(|l| l.status.instance_id.as_deref()) == Some(r.instance_id.as_str())
        };
        self.inst.registry.set_view(&self.key, |v| {
            if ours(&v.current) {
                if let Some(c) = &mut v.current {
                    c.status.state = InstanceState::Down;
                }
            }
            if ours(&v.pending) {
                v.pending = None;
            }
        });
        self.inst.drain(&self.key, r).await;
        self.inst.registry.set_view(&self.key, |v| {
            if ours(&v.current) {
                v.current = v.pending.take();
            }
        });
    }

    /// Shows that the slot waits for a free address; the first time in a row also as an event,
    /// a CELL line and a warning in the controller's log.
    fn waiting_for_address(&mut self, spec: &InstanceSpec, why: &str, beside: bool) {
        let key = &self.key;
        let mut st = status(
            key,
            InstanceState::Starting,
            None,
            (&spec.droplet, spec.revision),
            &self.crashes,
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
        self.inst.registry.set_view(key, |v| {
            if beside {
                v.pending = Some(live);
            } else {
                v.current = Some(live);
            }
        });
        if self.address_wait {
            tracing::debug!(app = %spec.app_name, index = key.index, "{why}");
            return;
        }
        self.address_wait = true;
        let msg = format!(
            "{} instance {} cannot start: {why}; trying again every {} s",
            key.process,
            key.index,
            ADDRESS_RETRY.as_secs()
        );
        tracing::warn!(app = %spec.app_name, "{msg}");
        self.inst.cell(key, &msg);
        self.inst
            .deps
            .events
            .record(&key.app_guid, EventKind::NoAddress, &msg, &Actor::Platform);
    }

    /// Ends a wait for an address, saying so if there was one.
    fn address_found(&mut self, r: &Running) {
        if std::mem::take(&mut self.address_wait) {
            let at = r.ip.map(|ip| ip.to_string()).unwrap_or_default();
            self.inst.cell(
                &self.key,
                &format!(
                    "Instance {} got address {at} after waiting for one",
                    self.key.index
                ),
            );
        }
    }
}

/// Health checks after startup: every [`HEALTH_INTERVAL`]; returns the reason once
/// [`HEALTH_FAILURES`] checks in a row have failed. Each failure is a `HEALTH/<index>` log line.
async fn watch_health(inst: &Instances, key: &SlotKey, r: &Running, hc: &HealthCheck) -> String {
    let mut failures = 0;
    loop {
        tokio::time::sleep(HEALTH_INTERVAL).await;
        let ok = match r.addr {
            Some(addr) => inst.deps.probe.check(addr, hc).await,
            None => true,
        };
        if ok {
            failures = 0;
            continue;
        }
        failures += 1;
        let what = health::failure(hc);
        inst.deps.logs.publish(
            &key.app_guid,
            &LogSource::Health(key.index),
            LogStream::Err,
            &format!("health check failed ({failures}/{HEALTH_FAILURES}): {what}"),
            OffsetDateTime::now_utc(),
        );
        if failures >= HEALTH_FAILURES {
            return format!("health check failed {failures} times in a row: {what}");
        }
    }
}

impl Instances {
    /// A `CELL/<index>` line in the app's log.
    pub(super) fn cell(&self, key: &SlotKey, text: &str) {
        self.deps.logs.publish(
            &key.app_guid,
            &LogSource::Cell(key.index),
            LogStream::Out,
            text,
            OffsetDateTime::now_utc(),
        );
    }

    /// Leaves the router, then drains, SIGTERM, SIGKILL after the grace period, and removal. The
    /// caller has already taken the instance out of the view's RUNNING state, so the published
    /// table drops it.
    pub(super) async fn drain(&self, key: &SlotKey, r: &Running) {
        self.cell(key, &format!("Stopping instance {}", key.index));
        // Publishing first means the router stops sending before the process gets SIGTERM.
        self.publish_routes();
        // Let the requests the routers already sent it finish before SIGTERM.
        let settings = &self.deps.settings;
        let removed_in = self.table_version();
        let deadline = Instant::now() + settings.drain_timeout;
        let d = self
            .deps
            .drain
            .wait(&r.instance_id, removed_in, deadline)
            .await;
        let drained = Instant::now();
        tracing::info!(instance = %r.instance_id, idle = d.idle, waited_on = %d.waited_on, table_version = removed_in, "drained; stopping");
        let runtime = &self.deps.runtime;
        if let Err(e) = runtime.stop(&r.id, settings.stop_grace).await {
            tracing::warn!(container = %r.id, error = %e, "stop failed; removing anyway");
        }
        let gone = match runtime.remove(&r.id).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(container = %r.id, error = %e, "remove failed; the reconciler will retry");
                false
            }
        };
        self.settle_address(r, gone);
        tracing::info!(instance = %r.instance_id, secs = drained.elapsed().as_secs_f64(), "stopped and removed");
        self.registry.disown(&r.id);
    }

    /// After a routed instance's container was removed (`gone`), or its removal failed: its
    /// address goes into quarantine at the table version now published, which no longer lists it
    /// (C1: the caller published that table before removing the container). If the container may
    /// still be there, the reconciler's sweep releases the address once it is gone.
    fn settle_address(&self, r: &Running, gone: bool) {
        let Some(ip) = r.ip else { return };
        let addresses = &self.deps.addresses;
        if !gone {
            addresses.unhold(&r.instance_id);
            return;
        }
        let version = self.deps.routing.current().map_or(0, |t| t.version);
        match addresses.release(ip, &r.instance_id, version) {
            Ok(()) => {
                tracing::info!(%ip, instance = %r.instance_id, table_version = version, "address released into quarantine")
            }
            Err(e) => {
                tracing::warn!(%ip, error = %e, "could not record a released address; the sweep retries");
                addresses.unhold(&r.instance_id);
            }
        }
    }

    /// Removes a container that never served (it never reached a route table) and frees its
    /// address at once when the container is gone; otherwise the sweep releases it later.
    pub(super) async fn discard_unrouted(&self, container: &str, ip: Ipv4Addr, instance_id: &str) {
        let addresses = &self.deps.addresses;
        match self.deps.runtime.remove(container).await {
            Ok(()) => {
                if let Err(e) = addresses.free_unrouted(ip, instance_id) {
                    tracing::warn!(%ip, error = %e, "could not free an unused address; the sweep retries");
                    addresses.unhold(instance_id);
                }
            }
            Err(e) => {
                tracing::warn!(container, error = %e, "could not remove a container that never served");
                addresses.unhold(instance_id);
            }
        }
    }
}

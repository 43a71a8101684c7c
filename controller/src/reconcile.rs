//! The reconciler: compares the desired state (the store) with the actual state (the runtime,
//! found by labels) and closes the gap, at start, whenever triggered, every couple of seconds, and
//! whenever the runtime's event stream reports one of this controller's containers changing.
//!
//! One pass:
//! 1. list this controller's containers; addresses of instances whose containers are gone go
//!    into quarantine (a removal done while the controller was down);
//! 2. hand desired slots and containers to [`Instances::sync`] (supervisors start, change, stop);
//! 3. remove what nothing asks for: orphans, strays, stagings no staging runs;
//! 4. finish the cleanup of deleted apps (containers, cache volume, blobs no other app uses);
//! 5. remove the networks of deleted spaces that were still in use when their space went;
//! 6. publish the route table.
//!
//! Invariants: passes run one at a time, so no pass acts on a desired state older than the slots
//! another pass already changed. A pass that fails changes nothing it could not finish; the next
//! one tries again. Callers that changed the desired state use [`Reconciler::converge`], which
//! never fails: an error is logged and, when it concerns an app, recorded as its event.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use pier_api::EventKind;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::events::{Actor, Events};
use crate::instances::Instances;
use crate::network::addresses::AddressPool;
use crate::runtime::{ContainerRuntime, Kind, Managed};
use crate::staging::Stager;
use crate::store::{BlobStore, Cleanup, Store};

/// How often a pass runs without being asked.
const PERIOD: Duration = Duration::from_secs(2);
/// How often blobs nothing refers to are looked for.
const GC_PERIOD: Duration = Duration::from_secs(60);

pub struct Reconciler {
    runtime: Arc<dyn ContainerRuntime>,
    store: Store,
    blobs: BlobStore,
    instances: Arc<Instances>,
    addresses: Arc<AddressPool>,
    stager: Arc<Stager>,
    images: Arc<crate::images::Images>,
    events: Events,
    /// Blobs nothing refers to are deleted once this old (an upload waits this long for its build).
    blob_grace: Duration,
    trigger: Notify,
    pass: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
}

/// What [`Reconciler`] is made from.
pub struct ReconcilerDeps {
    pub runtime: Arc<dyn ContainerRuntime>,
    pub store: Store,
    pub blobs: BlobStore,
    pub instances: Arc<Instances>,
    pub addresses: Arc<AddressPool>,
    pub stager: Arc<Stager>,
    pub images: Arc<crate::images::Images>,
    pub events: Events,
    pub blob_grace: Duration,
    pub shutdown: CancellationToken,
}

impl Reconciler {
    pub fn new(d: ReconcilerDeps) -> Arc<Reconciler> {
        Arc::new(Reconciler {
            runtime: d.runtime,
            store: d.store,
            blobs: d.blobs,
            instances: d.instances,
            addresses: d.addresses,
            stager: d.stager,
            images: d.images,
            events: d.events,
            blob_grace: d.blob_grace,
            trigger: Notify::new(),
            pass: tokio::sync::Mutex::new(()),
            shutdown: d.shutdown,
        })
    }

    /// Asks for a pass soon, without waiting for it.
    pub fn nudge(&self) {
        self.trigger.notify_one();
    }

    /// Runs a pass now, after a change to the desired state. Never fails: the change is saved
    /// whatever happens here; an error is logged, recorded as an event of `app_guid` (when given),
    /// and the periodic passes keep trying.
    pub async fn converge(&self, app_guid: Option<&str>) {
        if let Err(e) = self.once().await {
            tracing::warn!(error = %e, "convergence after a change failed; retrying in the loop");
            if let Some(guid) = app_guid {
                self.events.record(
                    guid,
                    EventKind::ConvergenceFailed,
                    &format!(
                        "the change is saved, but the platform could not act on it yet ({}); it \
                         keeps trying every {} s",
                        e.to_api().message,
                        PERIOD.as_secs()
                    ),
                    &Actor::Platform,
                );
            }
            self.nudge();
        }
    }

    /// The loop: a pass at start, whenever nudged, and every [`PERIOD`].
    pub async fn run(self: Arc<Self>) {
        let mut last_gc = tokio::time::Instant::now();
        loop {
            if let Err(e) = self.once().await {
                tracing::warn!(error = %e, "reconcile pass failed; retrying");
            }
            if last_gc.elapsed() >= GC_PERIOD {
                last_gc = tokio::time::Instant::now();
                if let Err(e) = self.collect_garbage() {
                    tracing::warn!(error = %e, "could not look for unused blobs");
                }
                if let Err(e) = self.collect_images().await {
                    tracing::warn!(error = %e, "could not look for unused app images");
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.trigger.notified() => {}
                _ = tokio::time::sleep(PERIOD) => {}
            }
        }
    }

    /// Follows the runtime's event stream for this controller's containers, so that a container
    /// killed or removed behind the platform's back is acted on at once rather than at the next
    /// periodic pass. Reconnects when the stream breaks (a Docker daemon restart, say).
    pub async fn follow_events(self: Arc<Self>) {
        loop {
            let mut events = self.runtime.events();
            loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    ev = events.next() => match ev {
                        Some(Ok(())) => self.nudge(),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "docker event stream broke; reconnecting");
                            break;
                        }
                        None => break,
                    },
                }
            }
            // Whatever happened while the stream was down is caught by the next pass.
            self.nudge();
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// One comparison of desired and actual state, and the actions that close the gap.
    pub async fn once(&self) -> Result<()> {
        let _pass = self.pass.lock().await;
        let containers = self.runtime.list().await?;
        self.sweep_addresses(&containers);
        let apps = self.store.list_apps()?;
        let desired = self.instances.desired(&apps);
        let leftovers = self.instances.sync(&desired, &containers, &self.shutdown);
        for c in containers.iter().filter(|c| self.unwanted_other(c)) {
            tracing::info!(container = %c.id, app = ?c.labels.get(crate::runtime::labels::keys::APP), "removing orphan container");
            self.runtime.remove(&c.id).await?;
        }
        for c in &leftovers.orphans {
            tracing::info!(container = %c.id, app = ?c.labels.get(crate::runtime::labels::keys::APP), "removing orphan container");
            self.runtime.remove(&c.id).await?;
        }
        for c in &leftovers.strays {
            // Its slot's supervisor may be removing it itself right now: a failure is not an error
            // of this pass.
            tracing::info!(container = %c.id, "removing a container its slot does not own");
            if let Err(e) = self.runtime.remove(&c.id).await {
                tracing::debug!(container = %c.id, error = %e, "stray container not removed");
            }
        }
        for job in self.store.cleanups()? {
            if let Err(e) = self.clean_up(&job, &containers).await {
                tracing::warn!(app = %job.app_name, error = %e, "cleanup of a deleted app is not finished; retrying");
            }
        }
        // After the containers went: a deleted space's network that was still in use.
        self.instances.networks().retry_removals().await;
        self.instances.publish_routes();
        Ok(())
    }

    /// Addresses of instances whose containers are gone and that no task looks after (removed
    /// while the controller was down, or a removal that failed earlier) go into quarantine.
    fn sweep_addresses(&self, containers: &[Managed]) {
        let live: HashSet<String> = containers
            .iter()
            .filter_map(|c| c.labels.instance().map(str::to_string))
            .collect();
        let version = self.instances.table_version();
        match self.addresses.sweep(&live, version) {
            Ok(gone) if !gone.is_empty() => {
                tracing::info!(addresses = ?gone, table_version = version, "instances gone; their addresses are in quarantine");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not release the addresses of instances that are gone")
            }
        }
    }

    /// A container that is no instance (a staging, or of an unknown kind, such as an image-build
    /// container of a Pier from before images were loaded) and that no running staging of this
    /// process uses, nor its list of warm staging containers. Service instances belong to the
    /// built-in brokers.
    fn unwanted_other(&self, c: &Managed) -> bool {
        let guid = c.labels.app_guid();
        match c.labels.kind() {
            Some(Kind::Instance | Kind::Service) => false,
            Some(Kind::Staging | Kind::WarmStaging) => {
                !guid.is_some_and(|g| self.stager.is_active(g)) && !self.stager.is_warm(&c.id, guid)
            }
            _ => true,
        }
    }

    /// Deletes blobs no app refers to that are older than the grace period: packages uploaded
    /// and never built, leftovers of deletes and builds cut short. Returns how many went.
    pub fn collect_garbage(&self) -> Result<usize> {
        let apps = self.store.list_apps()?;
        let cleanups = self.store.cleanups()?;
        let used: HashSet<&str> = apps
            .iter()
            .flat_map(|a| a.blobs())
            .chain(
                cleanups
                    .iter()
                    .flat_map(|c| c.blobs.iter().map(String::as_str)),
            )
            .collect();
        let now = std::time::SystemTime::now();
        let mut gone = 0;
        for (sha, modified) in self.blobs.list()? {
            let age = now.duration_since(modified).unwrap_or_default();
            if used.contains(sha.as_str()) || age < self.blob_grace {
                continue;
            }
            tracing::info!(blob = %sha, age_secs = age.as_secs(), "deleting a blob nothing refers to");
            self.blobs.delete(&sha)?;
            gone += 1;
        }
        Ok(gone)
    }

    /// Removes the app images no app's current droplet or kept revision names (see `images.rs`).
    pub async fn collect_images(&self) -> Result<usize> {
        let apps = self.store.list_apps()?;
        let default_stack = self.images.default_stack();
        let mut keep = HashSet::new();
        // An app being staged gets its new image before its record names the droplet.
        let staging: HashSet<String> = apps
            .iter()
            .filter(|a| a.staging.is_some())
            .map(|a| a.guid.clone())
            .collect();
        for app in &apps {
            let key = |droplet: &str, stack: &str| crate::images::ImageKey {
                app_name: app.name.to_string(),
                app_guid: app.guid.clone(),
                droplet: droplet.to_string(),
                stack: stack.to_string(),
            };
            if let Some(d) = &app.droplet {
                keep.insert(key(&d.sha256, default_stack));
            }
            for r in &app.revisions {
                keep.insert(key(&r.droplet.sha256, &r.stack));
            }
        }
        self.images.collect(&keep, &staging).await
    }

    /// Removes what a deleted app left: its containers (once its supervisors let go of them), its
    /// volumes and the blobs no other app refers to. Done when all of it is gone.
    pub async fn clean_up(&self, job: &Cleanup, containers: &[Managed]) -> Result<()> {
        for c in containers {
            if c.labels.app_guid() == Some(job.app_guid.as_str()) && !self.instances.owns(c) {
                self.runtime.remove(&c.id).await?;
            }
        }
        for v in &job.volumes {
            self.runtime.remove_volume(v).await?;
        }
        let others = self.store.list_apps()?;
        let used = |sha: &str| others.iter().any(|o| o.blobs().any(|b| b == sha));
        for sha in &job.blobs {
            if !used(sha) {
                self.blobs.delete(sha)?;
            }
        }
        self.collect_images().await?;
        self.store.cleanup_done(&job.app_guid)?;
        tracing::info!(app = %job.app_name, "deleted app cleaned up");
        Ok(())
    }
}

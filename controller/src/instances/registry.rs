//! The registry: what the controller knows of actual instances, shared by the supervisors (which
//! write it), the reconciler (which starts and stops supervisors) and the API (which reads it).
//!
//! Per slot there is at most one instance that serves or last served it (`current`) and one
//! replacement being started beside it (`pending`). Only `current` instances in state RUNNING are
//! routed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use pier_api::{Backend, InstanceState, InstanceStatus};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::desired::{InstanceSpec, SlotKey};

#[derive(Debug, Clone)]
pub(super) struct Live {
    pub(super) status: InstanceStatus,
    pub(super) addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct SlotView {
    /// The instance that serves (or last served) the slot.
    pub(super) current: Option<Live>,
    /// A replacement being started beside it.
    pub(super) pending: Option<Live>,
}

pub(super) struct SlotHandle {
    pub(super) spec: watch::Sender<InstanceSpec>,
    pub(super) cancel: CancellationToken,
}

/// The controller's knowledge of actual instances, shared by the supervisors, the reconciler and
/// the API.
#[derive(Default)]
pub struct Registry {
    pub(super) slots: Mutex<HashMap<SlotKey, SlotHandle>>,
    pub(super) views: RwLock<HashMap<SlotKey, SlotView>>,
    /// Container ids a live supervisor is responsible for; the reconciler leaves them alone.
    pub(super) owned: Mutex<HashSet<String>>,
    /// Supervisors still stopping containers after their slot went away.
    pub(super) stopping: Mutex<HashMap<SlotKey, tokio::task::JoinHandle<()>>>,
    /// Revisions (by app) a replacement instance already failed to start on: the other slots
    /// don't try them, so a failed deployment stops at its first failure.
    pub(super) failed_revisions: Mutex<HashSet<(String, u64, u64)>>,
    /// One permit per app: its instances are replaced one at a time, so it keeps answering.
    pub(super) replace_permits: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Bumped whenever a view changes (shared with the store's writes).
    pub(super) changes: crate::changes::Changes,
    /// Standby slots (`--standby-instances`): supervised like any other, but not routed, listed
    /// or counted until a scale-up makes them serving slots.
    pub(super) standby: RwLock<HashSet<SlotKey>>,
}

impl Registry {
    /// Statuses of an app's instances, ordered by process and index.
    pub fn statuses(&self, app_guid: &str) -> Vec<InstanceStatus> {
        let views = self.views.read().unwrap_or_else(|e| e.into_inner());
        let standby = self.standby.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = views
            .iter()
            .filter(|(k, _)| k.app_guid == app_guid && !standby.contains(*k))
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
        let standby = self.standby.read().unwrap_or_else(|e| e.into_inner());
        views
            .iter()
            .filter(|(k, _)| k.app_guid == app_guid && !standby.contains(*k))
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
    pub(super) fn backends(
        &self,
        app_guid: &str,
        desired: &BTreeMap<SlotKey, InstanceSpec>,
    ) -> Vec<Backend> {
        let views = self.views.read().unwrap_or_else(|e| e.into_inner());
        views
            .iter()
            .filter(|(k, _)| k.app_guid == app_guid && k.process.is_web())
            .filter(|(k, _)| desired.get(*k).is_none_or(|s| !s.standby))
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

    /// How many of an app's standby instances are running and healthy, ready for a scale-up.
    pub fn standby_ready(&self, app_guid: &str) -> u32 {
        let views = self.views.read().unwrap_or_else(|e| e.into_inner());
        let standby = self.standby.read().unwrap_or_else(|e| e.into_inner());
        let ready = standby
            .iter()
            .filter(|k| k.app_guid == app_guid)
            .filter(|k| {
                views
                    .get(*k)
                    .and_then(|v| v.current.as_ref())
                    .is_some_and(|l| l.status.state == InstanceState::Running)
            });
        ready.count() as u32
    }

    /// Which slots are standby now; a change counts as a change of the views (a promoted
    /// standby is listed at once).
    pub(super) fn set_standby(&self, keys: HashSet<SlotKey>) {
        let mut standby = self.standby.write().unwrap_or_else(|e| e.into_inner());
        if *standby != keys {
            *standby = keys;
            self.changes.bump();
        }
    }

    /// Container ids of every instance running now (serving or being started beside one).
    pub(super) fn running_containers(&self) -> Vec<String> {
        let views = self.views.read().unwrap_or_else(|e| e.into_inner());
        views
            .values()
            .flat_map(|v| v.current.iter().chain(v.pending.iter()))
            .filter(|l| l.status.state == InstanceState::Running)
            .filter_map(|l| l.status.container_id.clone())
            .collect()
    }

    pub(super) fn set_view(&self, key: &SlotKey, f: impl FnOnce(&mut SlotView)) {
        let mut views = self.views.write().unwrap_or_else(|e| e.into_inner());
        let v = views.entry(key.clone()).or_default();
        f(v);
        if v.current.is_none() && v.pending.is_none() {
            views.remove(key);
        }
        self.changes.bump();
    }

    /// Keyed by revision and restart generation: restarting a revision tries it afresh.
    pub(super) fn revision_failed(&self, spec: &InstanceSpec) -> bool {
        self.failed_revisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(spec.app_guid.clone(), spec.revision, spec.restart_gen))
    }

    pub(super) fn mark_revision_failed(&self, spec: &InstanceSpec) {
        self.failed_revisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((spec.app_guid.clone(), spec.revision, spec.restart_gen));
    }

    /// Replacements of one app's instances that may run at once (a deployment's max in flight).
    pub(super) fn replace_permit(
        &self,
        app_guid: &str,
        max_in_flight: u32,
    ) -> Arc<tokio::sync::Semaphore> {
        self.replace_permits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(format!("{app_guid}/{max_in_flight}"))
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1) as usize)))
            .clone()
    }

    pub(super) fn own(&self, id: &str) {
        self.owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string());
    }

    pub(super) fn disown(&self, id: &str) {
        self.owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    pub(super) fn is_owned(&self, id: &str) -> bool {
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

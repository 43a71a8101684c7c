//! Warm staging containers: once an app has staged, the container for its next staging is made
//! and started ahead of need: its command waits for the staging tar on stdin, as every staging
//! container's does. A re-push then only sends the tar, instead of creating and starting a
//! container while the user waits (about a third of a second of a changed re-push on this kind of
//! machine, BENCHMARKS.md "Push").
//!
//! ```text
//!  staging of app A ends (ok) ──after WARM_DELAY──▶ create + start (tar waits on stdin)
//!  next staging of A, same container settings ──▶ staging tar on stdin ─▶ unpacked, stage.sh runs
//!                 settings changed (env, buildpacks, stack…) ──▶ the warm one is removed, cold start
//! ```
//! Invariants:
//! - A warm container is exactly the container a cold staging would make (image, command, env,
//!   user, mounts, limits, networking off), bar its name and its label `pier.kind=warm-staging`
//!   (so nothing takes it for a staging under way, or one left behind). It is used only when
//!   those settings are still the same ([`same_settings`]), by one staging at most (taken out of
//!   the list). A staging that arrives while its container is being prepared waits for it.
//! - At most `max` exist (the oldest goes first); `max` 0 turns the feature off. Each costs an
//!   idle `bash` and `tar` and Docker's per-container shim (a few MiB of memory), no CPU.
//! - They are not adopted after a restart: the list lives in memory, so the reconciler removes
//!   every staging container it does not know ([`WarmStagers::knows`]), warm or not.
//! - An app delete or cache clear discards the app's warm container first (it mounts the cache
//!   volume). A preparation that races such a discard removes what it made.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::container::{out_mount, OutDir, OUT};
use crate::runtime::labels::keys;
use crate::runtime::{ContainerRuntime, ContainerSpec, Kind, Mount};

/// How long after a staging its successor is prepared: the push that staged is usually starting
/// its instance then, and the two would compete for the machine.
/// A staging that arrives before that waits for the preparation instead, which then starts at
/// once.
const WARM_DELAY: Duration = Duration::from_millis(300);

/// Longest a staging waits for a preparation under way before it makes its own container.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// A warm container and the folder it sees as `/tmp/out` (removed when this is dropped).
pub(super) struct Warm {
    app_guid: String,
    pub(super) id: String,
    spec: ContainerSpec,
    pub(super) out: OutDir,
}

/// A preparation under way: told to hurry when the staging it prepares for arrives early, and
/// done (whatever came of it) when `done` turns true.
struct Pending {
    hurry: Arc<Notify>,
    done: watch::Receiver<bool>,
}

pub struct WarmStagers {
    runtime: Arc<dyn ContainerRuntime>,
    /// Where their `/tmp/out` folders are made.
    tmp: PathBuf,
    max: usize,
    ready: Mutex<Vec<Warm>>,
    pending: Mutex<HashMap<String, Pending>>,
    /// Bumped by every discard; a preparation that saw another value gives its container up.
    discards: AtomicU64,
}

impl WarmStagers {
    pub fn new(runtime: Arc<dyn ContainerRuntime>, tmp: PathBuf, max: usize) -> WarmStagers {
        WarmStagers {
            runtime,
            tmp,
            max,
            ready: Mutex::new(Vec::new()),
            pending: Mutex::new(HashMap::new()),
            discards: AtomicU64::new(0),
        }
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, Vec<Warm>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when `id` is a warm container of this process, or may be one being made for the app
    /// `app_guid` (between its create and its place in the list).
    pub fn knows(&self, id: &str, app_guid: Option<&str>) -> bool {
        let making = app_guid.is_some_and(|g| {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(g)
        });
        making || self.ready().iter().any(|w| w.id == id)
    }

    /// The app's warm container, when it was made with the settings of `spec`; it is no longer
    /// warm after this (the caller runs or removes it). One with other settings is removed.
    /// A preparation still under way for the app is waited for (told to skip its delay): it is
    /// ahead of a new container.
    pub(super) async fn take(&self, app_guid: &str, spec: &ContainerSpec) -> Option<Warm> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(app_guid)
            .map(|p| (p.hurry.clone(), p.done.clone()));
        if let Some((hurry, mut done)) = pending {
            hurry.notify_one();
            let _ = tokio::time::timeout(MAX_WAIT, done.wait_for(|d| *d)).await;
        }
        let warm = {
            let mut ready = self.ready();
            let at = ready.iter().position(|w| w.app_guid == app_guid)?;
            ready.remove(at)
        };
        if same_settings(&warm.spec, spec) {
            return Some(warm);
        }
        tracing::debug!(
            app_guid,
            "warm staging container has other settings; removed"
        );
        self.remove_later(warm);
        None
    }

    /// Removes the app's warm container, if any, and cancels preparations under way.
    pub async fn discard(&self, app_guid: &str) {
        self.discards.fetch_add(1, Ordering::SeqCst);
        let gone: Vec<Warm> = {
            let mut ready = self.ready();
            let (gone, kept) = ready.drain(..).partition(|w| w.app_guid == app_guid);
            *ready = kept;
            gone
        };
        for w in gone {
            if let Err(e) = self.runtime.remove(&w.id).await {
                tracing::warn!(container = %w.id, error = %e, "could not remove a warm staging container");
            }
        }
    }

    /// Makes and starts, in the background, the container the app's next staging will take:
    /// `spec` as a cold staging would make it.
    pub fn prepare(self: &Arc<Self>, app_guid: &str, spec: &ContainerSpec) {
        if self.max == 0 {
            return;
        }
        let this = self.clone();
        let (app_guid, spec) = (app_guid.to_string(), spec.clone());
        let seen = self.discards.load(Ordering::SeqCst);
        let hurry = Arc::new(Notify::new());
        let (done, rx) = watch::channel(false);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                app_guid.clone(),
                Pending {
                    hurry: hurry.clone(),
                    done: rx,
                },
            );
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(WARM_DELAY) => {}
                _ = hurry.notified() => {}
            }
            if let Err(e) = this.make(app_guid.clone(), spec, seen).await {
                tracing::warn!(error = %e, "could not prepare a warm staging container");
            }
            let mut pending = this.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending
                .get(&app_guid)
                .is_some_and(|p| Arc::ptr_eq(&p.hurry, &hurry))
            {
                pending.remove(&app_guid);
            }
            let _ = done.send(true);
        });
    }

    async fn make(
        &self,
        app_guid: String,
        mut spec: ContainerSpec,
        seen: u64,
    ) -> anyhow::Result<()> {
        let out = OutDir::new(&self.tmp)?;
        for m in &mut spec.mounts {
            if is_out(m) {
                *m = out_mount(out.path());
            }
        }
        spec.labels = spec.labels.with(keys::KIND, Kind::WarmStaging.as_str());
        spec.name = format!("{}-warm", spec.name);
        let id = self.runtime.create(&spec).await?;
        if let Err(e) = self.runtime.start(&id).await {
            let _ = self.runtime.remove(&id).await;
            return Err(e.into());
        }
        let evicted: Vec<Warm> = {
            let mut ready = self.ready();
            if self.discards.load(Ordering::SeqCst) != seen {
                drop(ready);
                self.runtime.remove(&id).await?;
                return Ok(());
            }
            let mut evicted: Vec<Warm> = Vec::new();
            if let Some(at) = ready.iter().position(|w| w.app_guid == app_guid) {
                evicted.push(ready.remove(at));
            }
            ready.push(Warm {
                app_guid,
                id,
                spec,
                out,
            });
            while ready.len() > self.max {
                evicted.push(ready.remove(0));
            }
            evicted
        };
        for w in evicted {
            self.runtime.remove(&w.id).await?;
        }
        Ok(())
    }

    fn remove_later(&self, warm: Warm) {
        let runtime = self.runtime.clone();
        tokio::spawn(async move {
            if let Err(e) = runtime.remove(&warm.id).await {
                tracing::warn!(container = %warm.id, error = %e, "could not remove a warm staging container");
            }
        });
    }
}

/// The `/tmp/out` mount, whose folder each container has its own of.
fn is_out(m: &Mount) -> bool {
    matches!(m, Mount::Bind { target, .. } if target == OUT)
}

/// Everything but the name, the labels and the output folder: what the staging runs in.
fn same_settings(a: &ContainerSpec, b: &ContainerSpec) -> bool {
    a.image == b.image
        && a.cmd == b.cmd
        && a.open_stdin == b.open_stdin
        && a.env == b.env
        && a.user == b.user
        && a.working_dir == b.working_dir
        && a.memory_mb == b.memory_mb
        && a.pids_limit == b.pids_limit
        && a.networking == b.networking
        && a.mounts
            .iter()
            .filter(|m| !is_out(m))
            .eq(b.mounts.iter().filter(|m| !is_out(m)))
        && a.cpu_shares == b.cpu_shares
        && a.nano_cpus == b.nano_cpus
}

#[cfg(test)]
mod tests;

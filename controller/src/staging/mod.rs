//! Staging: package → droplet, in a throwaway container.
//!
//! ```text
//!  package blob ──repack (validated, owned by vcap)──▶ staging tar: app/ env/ lifecycle/stage.sh
//!        │                                                   │ PUT archive → /tmp
//!        ▼                                                   ▼
//!  container (stack image, user vcap, network none,  /tmp/buildpacks ro bind,  /tmp/cache volume)
//!        │ bash /tmp/lifecycle/stage.sh: detect → compile → release → pack
//!        │ stdout/stderr ──▶ STG/0 log lines, streamed to the pushing CLI as they come
//!        ▼
//!  GET archive /tmp/out ──▶ droplet.tgz into the blob store (sha256), release.yml, Procfile
//!  container removed on every path; the app's cache volume is kept for the next staging.
//! ```
//! Exit codes of the lifecycle: 222 no buildpack detected, 223 supply/finalize/compile failed,
//! 224 release failed, 225 packing failed, 226 a named buildpack is unusable (docs/staging.md).
//!
//!
//! Modules: [`buildpacks`] (the installed buildpacks and their registry), [`package`] (checking
//! and repacking untrusted packages), `input` (the staging tar), `container` (running the staging
//! container), `release` (reading what it left). Uses: `runtime/`, `store/` (blobs), `logs/`.

use std::sync::Arc;

use pier_api::{BuildEvent, DropletInfo, LogSource, LogStream};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::logs::LogBroker;
use crate::runtime::ContainerRuntime;
use crate::store::{AppRecord, BlobStore};

mod admin;
pub mod buildpacks;
mod container;
mod input;
pub mod package;
mod release;
pub mod warm;

pub use buildpacks::{Buildpacks, BUILTIN_ORDER};
pub use release::{parse_procfile, parse_release};

/// What staging needs to know of the controller's configuration.
#[derive(Debug, Clone)]
pub struct StagingSettings {
    pub controller_id: String,
    pub stack_image: String,
    pub pids_limit: i64,
    pub timeout: std::time::Duration,
    pub package_limits: package::Limits,
    /// Most bytes a staging may leave in `/tmp/out` (the droplet and its metadata).
    pub max_droplet_bytes: u64,
    /// Most bytes of staging output shown; the rest is counted.
    pub max_output_bytes: u64,
    /// Most warm staging containers kept ([`warm`]); 0 turns them off.
    pub warm_stagers: usize,
}

/// Runs stagings: one throwaway container per build.
pub struct Stager {
    runtime: Arc<dyn ContainerRuntime>,
    blobs: BlobStore,
    images: Arc<crate::images::Images>,
    logs: Arc<LogBroker>,
    buildpacks: Arc<Buildpacks>,
    settings: StagingSettings,
    /// Apps with a staging running in this process (the reconciler leaves their containers be).
    active: std::sync::Mutex<std::collections::HashSet<String>>,
    warm: Arc<warm::WarmStagers>,
}

/// Sends a staging line to the app's log and to the pushing CLI.
pub(crate) struct Output {
    logs: Arc<LogBroker>,
    app_guid: String,
    tx: mpsc::Sender<BuildEvent>,
}

impl Output {
    async fn line(&self, stream: LogStream, text: &str, time: OffsetDateTime) {
        let line = self
            .logs
            .publish(&self.app_guid, &LogSource::Staging(0), stream, text, time);
        // The CLI may have gone away; staging goes on regardless.
        let _ = self.tx.send(BuildEvent::Log(line)).await;
    }

    /// A line of the log system (`LGR`) about this staging's output.
    async fn notice(&self, text: &str) {
        let line = self.logs.publish(
            &self.app_guid,
            &LogSource::Logger,
            LogStream::Err,
            text,
            OffsetDateTime::now_utc(),
        );
        let _ = self.tx.send(BuildEvent::Log(line)).await;
    }
}

/// The volume an app's buildpack cache lives in, kept between stagings.
pub fn cache_volume(app_guid: &str) -> String {
    format!("pier-cache-{app_guid}")
}

impl Stager {
    pub fn new(
        runtime: Arc<dyn ContainerRuntime>,
        blobs: BlobStore,
        images: Arc<crate::images::Images>,
        logs: Arc<LogBroker>,
        buildpacks: Arc<Buildpacks>,
        settings: StagingSettings,
    ) -> Stager {
        let warm = Arc::new(warm::WarmStagers::new(
            runtime.clone(),
            blobs.tmp_dir().to_path_buf(),
            settings.warm_stagers,
        ));
        Stager {
            warm,
            runtime,
            blobs,
            images,
            logs,
            buildpacks,
            settings,
            active: Default::default(),
        }
    }

    pub fn buildpacks(&self) -> &Arc<Buildpacks> {
        &self.buildpacks
    }

    /// True while this process stages the app.
    pub fn is_active(&self, app_guid: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(app_guid)
    }

    /// True when `id` is a warm staging container of this process (the reconciler keeps it).
    pub fn is_warm(&self, id: &str, app_guid: Option<&str>) -> bool {
        self.warm.knows(id, app_guid)
    }

    /// Removes the app's warm staging container (before its cache volume goes, or the app).
    pub async fn discard_warm(&self, app_guid: &str) {
        self.warm.discard(app_guid).await
    }

    fn set_active(&self, app_guid: &str, on: bool) {
        let mut a = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            a.insert(app_guid.to_string());
        } else {
            a.remove(app_guid);
        }
    }

    /// What a droplet is made from: the package, the app's buildpacks and env, the stack, the
    /// installed buildpacks and the lifecycle. Equal fingerprints stage to equivalent droplets.
    pub fn fingerprint(&self, app: &AppRecord, package: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(package.as_bytes());
        h.update(serde_json::to_vec(&app.buildpacks).unwrap_or_default());
        h.update(serde_json::to_vec(&app.env).unwrap_or_default());
        h.update(self.settings.stack_image.as_bytes());
        h.update(input::LIFECYCLE.as_bytes());
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        h.update(self.buildpacks.fingerprint());
        hex::encode(h.finalize())
    }

    /// The blobs of buildpacks pushed with the app that this staging uses (the caller records
    /// them among the app's blobs, so deleting the app deletes them).
    pub fn uploaded_buildpacks(&self, app: &AppRecord) -> Result<Vec<String>> {
        let r = self.buildpacks.resolve(&app.buildpacks, &self.blobs)?;
        Ok(r.uploaded.into_iter().map(|(_, sha)| sha).collect())
    }

    /// Stages the app's package into a droplet, stores it and returns its description. Output
    /// goes to the app's log (`STG/0`) and to `tx`.
    pub async fn stage(
        &self,
        app: &AppRecord,
        package: &str,
        tx: mpsc::Sender<BuildEvent>,
    ) -> Result<DropletInfo> {
        self.set_active(&app.guid, true);
        let out = Output {
            logs: self.logs.clone(),
            app_guid: app.guid.clone(),
            tx,
        };
        let result = self.stage_inner(app, package, &out).await;
        self.set_active(&app.guid, false);
        result
    }

    async fn stage_inner(
        &self,
        app: &AppRecord,
        package: &str,
        out: &Output,
    ) -> Result<DropletInfo> {
        let resolved = self.buildpacks.resolve(&app.buildpacks, &self.blobs)?;
        let work = tempfile::Builder::new()
            .prefix("stage-")
            .tempdir_in(self.blobs.tmp_dir())?;
        let input = work.path().join("input.tar");
        {
            let pkg = self.blobs.path(package)?;
            let input = input.clone();
            let env = app.env.clone();
            let max = self.settings.package_limits;
            let uploaded = resolved
                .uploaded
                .iter()
                .map(|(name, sha)| Ok((name.clone(), self.blobs.path(sha)?)))
                .collect::<Result<Vec<_>>>()?;
            tokio::task::spawn_blocking(move || {
                input::build_input_tar(&pkg, &input, &env, &uploaded, max)
            })
            .await
            .map_err(|e| Error::Other(format!("staging input task failed: {e}")))??;
        }
        let run = container::Run {
            runtime: self.runtime.as_ref(),
            settings: &self.settings,
            buildpacks_dir: self.buildpacks.dir(),
            blobs: &self.blobs,
            out,
            warm: &self.warm,
        };
        let (pending, buildpack, process_types) = run.run(app, &resolved, &input).await?;
        let sha = self.blobs.commit(pending)?;
        // The app's image now, so the first start does not wait for it.
        out.line(
            LogStream::Out,
            "-----> Making the app image",
            OffsetDateTime::now_utc(),
        )
        .await;
        let key = crate::images::ImageKey {
            app_name: app.name.to_string(),
            app_guid: app.guid.clone(),
            droplet: sha.clone(),
            stack: self.images.default_stack().to_string(),
        };
        if let Err(e) = self.images.ensure(&key).await {
            // A droplet that cannot be an image is no droplet: nothing of it is kept, unless an
            // app already uses the very same bytes.
            if app.droplet.as_ref().is_none_or(|d| d.sha256 != sha) {
                let _ = self.blobs.delete(&sha);
            }
            return Err(e);
        }
        Ok(DropletInfo {
            sha256: sha,
            buildpack,
            process_types,
            created_at: OffsetDateTime::now_utc(),
        })
    }
}

//! Builds: a package becomes the app's droplet. The staging runs in a task of its own (holding
//! the app's lock), so the build answers at once with a stream of its output and ends with
//! exactly one `done` or `error`; the outcome is recorded on the app whether or not anyone still
//! listens.

use pier_api::{
    BuildEvent, BuildRequest, DropletInfo, ErrorCode, EventKind, LogSource, LogStream, ProcessType,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::config::default_process;
use super::AppService;
use crate::error::{Error, Result};
use crate::store::AppRecord;
use crate::tenancy::Scope;

/// What a build answers with.
pub enum Build {
    /// The droplet was reused: these are all the events.
    Done(Vec<BuildEvent>),
    /// A staging runs: its events as they come.
    Staging(mpsc::Receiver<BuildEvent>),
}

impl AppService {
    /// Stages `req.package` (a push) or the app's current package (a restage).
    pub async fn build(
        self: &std::sync::Arc<Self>,
        at: &Scope,
        name: &str,
        req: BuildRequest,
    ) -> Result<Build> {
        let app = self.load(at, name)?;
        let lock = self.d.locks.get(&app.key());
        let guard = lock.try_lock_owned().map_err(|_| {
            Error::api(
                ErrorCode::Conflict,
                format!(
                    "another operation on app {} is in progress; try again when it ends",
                    app.name
                ),
            )
        })?;
        // Re-read under the lock.
        let mut app = self.load(at, name)?;
        let pushed = req.package.is_some();
        let Some(package) = req.package.or_else(|| app.package.clone()) else {
            return Err(Error::bad_request(format!(
                "app {} has no package to stage; push it first",
                app.name
            )));
        };
        if !self.d.blobs.exists(&package) {
            return Err(Error::api(
                ErrorCode::NotFound,
                format!("package {package} not found; upload it again"),
            ));
        }
        // A push of the very same source, buildpacks, env and stack as the current droplet's
        // reuses it: nothing would come out different (a restage, without a package, always
        // stages).
        let source = self.d.stager.fingerprint(&app, &package);
        if pushed && app.droplet_source.as_deref() == Some(source.as_str()) {
            if let Some(d) = app
                .droplet
                .clone()
                .filter(|d| self.d.blobs.exists(&d.sha256))
            {
                return Ok(Build::Done(self.reuse(at, &app, d)));
            }
        }
        if let Some(old) = app.package.replace(package.clone()) {
            if old != package {
                app.old_blobs.push(old);
            }
        }
        app.staging = Some(uuid::Uuid::new_v4().to_string());
        self.d.store.put_app(&app)?;
        let (tx, rx) = mpsc::channel::<BuildEvent>(256);
        let this = self.clone();
        let at = at.clone();
        tokio::spawn(async move {
            let _guard = guard;
            this.event(&at, &app, EventKind::Staging, "staging started");
            this.keep_uploaded_buildpacks(&app);
            let result = this.d.stager.stage(&app, &package, tx.clone()).await;
            let event = this.finish_build(&at, &app, source, result);
            let _ = tx.send(event).await;
        });
        Ok(Build::Staging(rx))
    }

    fn reuse(&self, at: &Scope, app: &AppRecord, d: DropletInfo) -> Vec<BuildEvent> {
        let line = self.d.logs.publish(
            &app.guid,
            &LogSource::Staging(0),
            LogStream::Out,
            &format!(
                "-----> Source unchanged since the last staging: reusing droplet {}",
                &d.sha256[..12]
            ),
            OffsetDateTime::now_utc(),
        );
        self.event(
            at,
            app,
            EventKind::Staged,
            "source unchanged; droplet reused",
        );
        vec![BuildEvent::Log(line), BuildEvent::Done(d)]
    }

    /// Records the packages of buildpacks pushed with the app among its blobs, so deleting the
    /// app deletes them. Runs under the app's lock (the build holds it).
    fn keep_uploaded_buildpacks(&self, app: &AppRecord) {
        // A buildpack that cannot be resolved fails the staging, which says why.
        let Ok(shas) = self.d.stager.uploaded_buildpacks(app) else {
            return;
        };
        if shas.is_empty() {
            return;
        }
        let saved = (|| -> Result<()> {
            if let Some(mut latest) = self.d.store.get_app(&app.space_guid, &app.name)? {
                let before = latest.old_blobs.len();
                for sha in shas {
                    if !latest.old_blobs.contains(&sha) {
                        latest.old_blobs.push(sha);
                    }
                }
                if latest.old_blobs.len() != before {
                    self.d.store.put_app(&latest)?;
                }
            }
            Ok(())
        })();
        if let Err(e) = saved {
            tracing::warn!(app = %app.name, error = %e, "could not record the buildpacks pushed with the app");
        }
    }

    /// Records the staging's outcome on the app and returns the build's last event.
    fn finish_build(
        &self,
        at: &Scope,
        app: &AppRecord,
        source: String,
        result: Result<DropletInfo>,
    ) -> BuildEvent {
        let latest = match self.d.store.get_app(&app.space_guid, &app.name) {
            Ok(Some(a)) if a.guid == app.guid => Some(a),
            _ => None,
        };
        let event = match &result {
            Ok(d) => BuildEvent::Done(d.clone()),
            Err(e) => {
                let api = e.to_api();
                if api.code == ErrorCode::Internal {
                    tracing::error!(app = %app.name, error = %e, "staging failed");
                }
                BuildEvent::Error(api)
            }
        };
        // Deleted meanwhile: nothing to record on.
        let Some(mut latest) = latest else {
            return event;
        };
        latest.staging = None;
        match result {
            Ok(droplet) => {
                latest.droplet_source = Some(source);
                if let Some(old) = latest.droplet.replace(droplet.clone()) {
                    if old.sha256 != droplet.sha256 {
                        latest.old_blobs.push(old.sha256);
                    }
                }
                // Every process type the droplet declares becomes a process of the app.
                for kind in droplet.process_types.keys() {
                    if let Ok(kind) = kind.parse::<ProcessType>() {
                        let p = default_process(&self.d.settings, &kind);
                        latest.processes.entry(kind).or_insert(p);
                    }
                }
                latest.updated_at = OffsetDateTime::now_utc();
                self.event(
                    at,
                    &latest,
                    EventKind::Staged,
                    &format!("staged with buildpack {}", droplet.buildpack),
                );
            }
            Err(e) => self.event(at, &latest, EventKind::StagingFailed, &e.to_api().message),
        }
        if let Err(e) = self.d.store.put_app(&latest) {
            tracing::error!(error = %e, "could not record the staging result");
        }
        event
    }
}

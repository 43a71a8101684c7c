//! Starting, stopping and restarting apps, deployments and rollbacks, and deleting apps.

use pier_api::{
    AppAction, AppResponse, AppState, DeployRequest, DeploymentAction, DeploymentResponse,
    DeploymentState, ErrorCode, EventKind, RevisionResponse,
};
use time::OffsetDateTime;

use super::AppService;
use crate::deployments::{self, Deployed};
use crate::error::{Error, Result};
use crate::staging::cache_volume;
use crate::store::{AppRecord, Cleanup};
use crate::tenancy::Scope;

impl AppService {
    /// Starts a deployment of `app` (under its lock), saves it, and deletes the droplets of the
    /// revisions it pruned. `None` when nothing changes.
    fn start_deployment(
        &self,
        at: &Scope,
        app: &mut AppRecord,
        req: &DeployRequest,
    ) -> Result<Option<Deployed>> {
        let services = self.vcap_services(at, app)?;
        let Some(d) = deployments::deploy(&self.d.settings.deploy, app, req, &services)? else {
            return Ok(None);
        };
        let admitted = self.quotas.admit(at, app, false)?;
        self.d.store.put_app(app)?;
        drop(admitted);
        self.event(
            at,
            app,
            EventKind::DeploymentStarted,
            d.record.reason.as_deref().unwrap_or("deploying"),
        );
        for sha in &d.pruned_droplets {
            if let Err(e) = self.d.blobs.delete(sha) {
                tracing::warn!(error = %e, "could not delete an old droplet");
            }
        }
        Ok(Some(d))
    }

    /// `start`, `stop` or `restart`. Starting or restarting is a deployment: rolling when
    /// instances already run; `req` (how to deploy) is read only for those.
    pub async fn action(
        &self,
        at: &Scope,
        name: &str,
        action: &str,
        req: impl FnOnce() -> Result<DeployRequest>,
    ) -> Result<AppResponse> {
        let app = self.load(at, name)?;
        let action: AppAction = action
            .parse()
            .map_err(|e: String| Error::api(ErrorCode::NotFound, e))?;
        let lock = self.d.locks.get(&app.key());
        let guard = lock.lock().await;
        let mut app = self.load(at, name)?;
        let mut pruned = false;
        match action {
            AppAction::Start | AppAction::Restart => {
                let mut req = req()?;
                req.restart |= action == AppAction::Restart;
                pruned = self
                    .start_deployment(at, &mut app, &req)?
                    .is_some_and(|d| !d.pruned_droplets.is_empty());
            }
            AppAction::Stop => {
                if let Some(d) = app.active_deployment_mut() {
                    d.state = DeploymentState::Canceled;
                    d.reason = Some("the app was stopped".into());
                    d.finished_at = Some(OffsetDateTime::now_utc());
                }
                app.state = AppState::Stopped;
                app.updated_at = OffsetDateTime::now_utc();
                self.d.store.put_app(&app)?;
                self.event(at, &app, EventKind::Stopped, "app stopped");
            }
        }
        drop(guard);
        self.d.reconciler.converge(Some(&app.guid)).await;
        if pruned {
            self.images_of_pruned_revisions().await;
        }
        Ok(self.response(at, &app))
    }

    /// The images of pruned revisions go with their droplets (one still in use by an instance
    /// being replaced goes at a later pass).
    async fn images_of_pruned_revisions(&self) {
        if let Err(e) = self.d.reconciler.collect_images().await {
            tracing::warn!(error = %e, "could not remove the images of pruned revisions yet");
        }
    }

    /// A deployment of the newest droplet, env and command, or of an earlier revision.
    pub async fn deploy(
        &self,
        at: &Scope,
        name: &str,
        req: DeployRequest,
    ) -> Result<DeploymentResponse> {
        let app = self.load(at, name)?;
        let lock = self.d.locks.get(&app.key());
        let guard = lock.lock().await;
        let mut app = self.load(at, name)?;
        let (d, pruned) = match self.start_deployment(at, &mut app, &req)? {
            Some(d) => (d.record, !d.pruned_droplets.is_empty()),
            // Nothing changed: answer with the deployment that got the app here.
            None => (
                app.deployments.last().cloned().ok_or_else(|| {
                    Error::bad_request(format!("app {} already runs that revision", app.name))
                })?,
                false,
            ),
        };
        drop(guard);
        self.d.reconciler.converge(Some(&app.guid)).await;
        if pruned {
            self.images_of_pruned_revisions().await;
        }
        Ok(deployments::deployment_response(&d))
    }

    pub fn deployments(&self, at: &Scope, name: &str) -> Result<Vec<DeploymentResponse>> {
        let app = self.load(at, name)?;
        Ok(app
            .deployments
            .iter()
            .rev()
            .map(deployments::deployment_response)
            .collect())
    }

    /// Cancels (rolls back) or continues the deployment in progress.
    pub async fn deployment_action(
        &self,
        at: &Scope,
        name: &str,
        id: &str,
        action: &str,
    ) -> Result<DeploymentResponse> {
        let app = self.load(at, name)?;
        let lock = self.d.locks.get(&app.key());
        let guard = lock.lock().await;
        let mut app = self.load(at, name)?;
        let current = app.active_deployment().map(|d| d.id.clone());
        let action: DeploymentAction = action
            .parse()
            .map_err(|e: String| Error::api(ErrorCode::NotFound, e))?;
        if id != "current" && current.as_deref() != Some(id) {
            return Err(Error::api(
                ErrorCode::NotFound,
                format!("deployment {id} of app {} is not in progress", app.name),
            ));
        }
        let d = match action {
            DeploymentAction::Cancel => deployments::cancel(&mut app)?,
            DeploymentAction::Continue => deployments::continue_canary(&mut app)?,
        };
        app.updated_at = OffsetDateTime::now_utc();
        self.d.store.put_app(&app)?;
        self.event(at, &app, action.event(), d.reason.as_deref().unwrap_or(""));
        drop(guard);
        self.d.reconciler.converge(Some(&app.guid)).await;
        Ok(deployments::deployment_response(&d))
    }

    pub fn revisions(&self, at: &Scope, name: &str) -> Result<Vec<RevisionResponse>> {
        let app = self.load(at, name)?;
        Ok(app
            .revisions
            .iter()
            .rev()
            .map(|r| deployments::revision_response(&app, r))
            .collect())
    }

    /// Deletes the app: desired state first (its routes go and its slots stop), then waits until
    /// its instances are stopped and removes what is left. What cannot be removed now stays queued
    /// in the store and the reconciler finishes it.
    pub async fn delete(&self, at: &Scope, name: &str) -> Result<()> {
        let app = self.load(at, name)?;
        let lock = self.d.locks.get(&app.key());
        let _guard = lock.lock().await;
        let app = self.load(at, name)?;
        let job = Cleanup {
            app_guid: app.guid.clone(),
            app_name: app.name.to_string(),
            blobs: app
                .package
                .iter()
                .chain(app.droplet.as_ref().map(|d| &d.sha256))
                .chain(app.old_blobs.iter())
                .chain(app.revisions.iter().map(|r| &r.droplet.sha256))
                .cloned()
                .collect(),
            volumes: vec![cache_volume(&app.guid)],
        };
        self.d.store.delete_app(&app, &job)?;
        self.d.stager.discard_warm(&app.guid).await;
        self.d.reconciler.converge(None).await;
        self.d.instances.wait_stopped(&app.guid).await;
        // Anything left (stagings, leftovers), the cache volume and the blobs no other app uses.
        match self.d.runtime.list().await {
            Ok(containers) => {
                if let Err(e) = self.d.reconciler.clean_up(&job, &containers).await {
                    tracing::warn!(app = %app.name, error = %e, "delete not finished; the reconciler retries");
                }
            }
            Err(e) => {
                tracing::warn!(app = %app.name, error = %e, "delete not finished; the reconciler retries")
            }
        }
        self.d.logs.forget(&app.guid);
        self.d.instances.publish_routes();
        tracing::info!(app = %app.name, "deleted");
        Ok(())
    }

    /// Empties the app's buildpack cache (refused while it stages).
    pub async fn clear_cache(&self, at: &Scope, name: &str) -> Result<()> {
        let app = self.load(at, name)?;
        let lock = self.d.locks.get(&app.key());
        let _guard = lock.try_lock_owned().map_err(|_| {
            Error::api(
                ErrorCode::Conflict,
                format!(
                    "app {} is staging (or busy); clear its cache when that ends",
                    app.name
                ),
            )
        })?;
        self.d.stager.discard_warm(&app.guid).await;
        self.d
            .runtime
            .remove_volume(&cache_volume(&app.guid))
            .await?;
        self.event(at, &app, EventKind::CacheCleared, "buildpack cache cleared");
        Ok(())
    }
}

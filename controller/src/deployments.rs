//! Deployments and revisions.
//!
//! Every droplet + env + command combination that runs is a numbered [`Revision`]. A deployment
//! moves the app's current revision and lets the instance supervisors roll to it:
//!
//! ```text
//!  rolling:  new instance beside old ─healthy+routed─▶ old leaves the router, drains, SIGTERM
//!            (at most max_in_flight new instances at a time; one app's replacements serialized)
//!  recreate: old instances stop, then new ones start
//!  canary:   the usual instances keep the previous revision; one extra web instance runs the new
//!            one with a weighted share of traffic per step (10 → 50 → 100 %). After each step's
//!            window the router's own per-instance figures (5xx rate, p99 latency) of the canary
//!            are compared with the baseline's: no worse (within margins) → next step; worse →
//!            automatic rollback with the figures. At 100 % it is promoted: a rolling deployment.
//! ```
//! A new instance that fails to start fails the deployment; the current revision goes back to
//! the previous one, so the old instances (still running) are what the app keeps. The watcher task
//! that drives this is restarted with the controller, so a deployment survives a controller
//! restart.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pier_api::{
    AppState, CanaryStatus, DeployRequest, DeploymentResponse, DeploymentState, DeploymentStrategy,
    ErrorCode, EventKind, RevisionResponse,
};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::server::Ctx;
use crate::store::{AppRecord, DeploymentRecord, Revision};

/// Deployments kept per app in the store.
const KEEP_DEPLOYMENTS: usize = 20;

pub fn deployment_response(d: &DeploymentRecord) -> DeploymentResponse {
    DeploymentResponse {
        id: d.id.clone(),
        revision: d.revision,
        previous_revision: d.previous_revision,
        strategy: d.strategy,
        state: d.state,
        max_in_flight: d.max_in_flight,
        reason: d.reason.clone(),
        canary: d.canary.clone(),
        created_at: d.created_at,
        finished_at: d.finished_at,
    }
}

pub fn revision_response(app: &AppRecord, r: &Revision) -> RevisionResponse {
    RevisionResponse {
        version: r.version,
        droplet: r.droplet.sha256.clone(),
        buildpack: r.droplet.buildpack.clone(),
        description: r.description.clone(),
        current: app.current_revision == Some(r.version),
        created_at: r.created_at,
    }
}

/// The revision the app's newest droplet, env and commands make, and how it differs from `prev`.
fn candidate(app: &AppRecord, prev: Option<&Revision>) -> Result<(Revision, String)> {
    let droplet = app.droplet.clone().ok_or_else(|| {
        Error::bad_request(format!(
            "app {} has not been staged yet; push it first",
            app.name
        ))
    })?;
    let commands: BTreeMap<String, String> = app
        .processes
        .iter()
        .filter_map(|(k, p)| Some((k.to_string(), p.command.clone()?)))
        .collect();
    let rev = Revision {
        version: 0,
        droplet,
        env: app.env.clone(),
        commands,
        description: String::new(),
        created_at: OffsetDateTime::now_utc(),
    };
    let what = match prev {
        None => "pushed".to_string(),
        Some(p) => {
            let mut parts = vec![];
            if p.droplet.sha256 != rev.droplet.sha256 {
                parts.push("pushed");
            }
            if p.env != rev.env {
                parts.push("env changed");
            }
            if p.commands != rev.commands {
                parts.push("command changed");
            }
            if parts.is_empty() {
                "restarted".to_string()
            } else {
                parts.join(", ")
            }
        }
    };
    Ok((rev, what))
}

fn validate_steps(steps: &[u32]) -> Result<()> {
    let ok = !steps.is_empty()
        && steps.iter().all(|s| (1..=100).contains(s))
        && steps.windows(2).all(|w| w[0] < w[1])
        && steps.last() == Some(&100);
    if ok {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "instance steps {steps:?} must be increasing percentages from 1 to 100, ending at 100"
        )))
    }
}

/// Starts a deployment on `app` (the caller holds the app's lock and saves the record).
/// Returns `None` when nothing changes (the app already runs that revision).
pub fn deploy(
    ctx: &Ctx,
    app: &mut AppRecord,
    req: &DeployRequest,
) -> Result<Option<DeploymentRecord>> {
    if let Some(d) = app.active_deployment() {
        return Err(Error::api(
            ErrorCode::Conflict,
            format!(
                "deployment {} of app {} is in progress; wait for it, or cancel it with `pier cancel-deployment {}`",
                &d.id[..8],
                app.name,
                app.name
            ),
        ));
    }
    let strategy = req.strategy.unwrap_or_default();
    let max_in_flight = req.max_in_flight.unwrap_or(1);
    if !(1..=100).contains(&max_in_flight) {
        return Err(Error::bad_request(
            "max in flight must be between 1 and 100",
        ));
    }
    // The request is checked whole before anything else, even when it turns out to change nothing.
    match (strategy, &req.instance_steps) {
        (DeploymentStrategy::Canary, Some(steps)) => validate_steps(steps)?,
        (DeploymentStrategy::Canary, None) => {}
        (_, Some(_)) => {
            return Err(Error::bad_request(
                "--instance-steps goes with --strategy canary",
            ))
        }
        (_, None) => {}
    }
    if let Some(w) = req.analysis_window_secs {
        if !(1..=3600).contains(&w) {
            return Err(Error::bad_request(
                "the analysis window must be 1 to 3600 seconds",
            ));
        }
    }
    let prev = app.running_revision().cloned();
    let (mut rev, description) = match req.revision {
        Some(n) => {
            let r = app.revision(n).ok_or_else(|| {
                Error::api(
                    ErrorCode::NotFound,
                    format!(
                        "revision {n} of app {} is not kept; see `pier revisions {}`",
                        app.name, app.name
                    ),
                )
            })?;
            if app.current_revision == Some(n) {
                return Err(Error::bad_request(format!(
                    "revision {n} is already current"
                )));
            }
            (r.clone(), format!("rolled back to {n}"))
        }
        None => candidate(app, prev.as_ref())?,
    };
    let unchanged = prev.as_ref().is_some_and(|p| p.same_config(&rev));
    let was_started = app.state == AppState::Started;
    if unchanged && !req.restart && req.revision.is_none() && was_started {
        return Ok(None);
    }
    let canary = if strategy == DeploymentStrategy::Canary {
        if !was_started || prev.is_none() || app.web().is_none_or(|w| w.instances == 0) {
            return Err(Error::bad_request(
                "a canary deployment needs the app running a previous version with web instances; \
                 push it once without --strategy canary first",
            ));
        }
        let steps = req
            .instance_steps
            .clone()
            .unwrap_or_else(|| vec![10, 50, 100]);
        validate_steps(&steps)?;
        let window = req.analysis_window_secs.unwrap_or(60);
        if !(1..=3600).contains(&window) {
            return Err(Error::bad_request(
                "the analysis window must be 1 to 3600 seconds",
            ));
        }
        Some(CanaryStatus {
            steps,
            step: 0,
            window_secs: window,
            last_analysis: None,
        })
    } else {
        if req.instance_steps.is_some() {
            return Err(Error::bad_request(
                "--instance-steps goes with --strategy canary",
            ));
        }
        None
    };

    // A new revision when the configuration differs (or for a rollback); a restart of the same
    // configuration reruns the current revision.
    let version = if unchanged && req.revision.is_none() {
        prev.as_ref().map(|p| p.version).unwrap_or(1)
    } else {
        let v = app.revisions.last().map(|r| r.version + 1).unwrap_or(1);
        rev.version = v;
        rev.description = description.clone();
        rev.created_at = OffsetDateTime::now_utc();
        app.revisions.push(rev);
        prune_revisions(ctx, app);
        v
    };
    if req.restart || unchanged {
        app.restart_gen += 1;
    }
    let previous_revision = if was_started {
        app.current_revision
    } else {
        None
    };
    app.current_revision = Some(version);
    app.state = AppState::Started;
    let now = OffsetDateTime::now_utc();
    let d = DeploymentRecord {
        id: uuid::Uuid::new_v4().to_string(),
        revision: version,
        previous_revision,
        strategy,
        state: DeploymentState::Deploying,
        max_in_flight,
        reason: Some(if req.restart && unchanged {
            format!("restart of revision {version}")
        } else {
            format!("revision {version}: {description}")
        }),
        canary,
        max_error_rate_increase: ctx.config.canary_max_error_rate_increase,
        max_p99_increase_ms: ctx.config.canary_max_p99_increase_ms,
        created_at: now,
        finished_at: None,
        // A canary's first window starts once its instance serves (see `step`).
        step_started_at: None,
    };
    app.deployments.push(d.clone());
    if app.deployments.len() > KEEP_DEPLOYMENTS {
        let extra = app.deployments.len() - KEEP_DEPLOYMENTS;
        app.deployments.drain(..extra);
    }
    app.updated_at = now;
    Ok(Some(d))
}

/// Keeps the newest revisions (and always the current one); older droplets nothing else uses
/// are deleted so the disk doesn't fill.
fn prune_revisions(ctx: &Ctx, app: &mut AppRecord) {
    let keep = ctx.config.revisions_kept.max(2);
    while app.revisions.len() > keep {
        let Some(pos) = app
            .revisions
            .iter()
            .position(|r| Some(r.version) != app.current_revision)
        else {
            break;
        };
        let old = app.revisions.remove(pos);
        let sha = old.droplet.sha256;
        let used = app.revisions.iter().any(|r| r.droplet.sha256 == sha)
            || app.droplet.as_ref().is_some_and(|d| d.sha256 == sha);
        if !used {
            if let Err(e) = ctx.blobs.delete(&sha) {
                tracing::warn!(error = %e, "could not delete an old droplet");
            }
            app.old_blobs.retain(|b| b != &sha);
        }
    }
}

/// Ends the app's active deployment. A failed or canceled one puts the previous revision back.
fn finish(app: &mut AppRecord, state: DeploymentState, reason: String) -> Option<DeploymentRecord> {
    let revert = matches!(state, DeploymentState::Failed | DeploymentState::Canceled);
    let d = app.active_deployment_mut()?;
    d.state = state;
    d.reason = Some(reason);
    d.finished_at = Some(OffsetDateTime::now_utc());
    let prev = d.previous_revision;
    let done = d.clone();
    if revert {
        if let Some(p) = prev {
            app.current_revision = Some(p);
        }
    }
    Some(done)
}

/// Cancels the active deployment: back to the previous revision, rolling.
pub fn cancel(app: &mut AppRecord) -> Result<DeploymentRecord> {
    if app.active_deployment().is_none() {
        return Err(Error::bad_request(format!(
            "app {} has no deployment in progress",
            app.name
        )));
    }
    let prev = app.active_deployment().and_then(|d| d.previous_revision);
    let reason = match prev {
        Some(p) => format!("canceled; rolling back to revision {p}"),
        None => "canceled; there is no previous revision to go back to".to_string(),
    };
    finish(app, DeploymentState::Canceled, reason)
        .ok_or_else(|| Error::Other("deployment vanished".into()))
}

/// Moves a canary to its next step now, without waiting for (or despite) the analysis.
pub fn continue_canary(app: &mut AppRecord) -> Result<DeploymentRecord> {
    let d = app
        .active_deployment_mut()
        .filter(|d| d.canary.is_some())
        .ok_or_else(|| Error::bad_request("no canary deployment is in progress"))?;
    advance(d, "continued by hand".into());
    Ok(d.clone())
}

fn advance(d: &mut DeploymentRecord, analysis: String) {
    let Some(c) = &mut d.canary else { return };
    c.last_analysis = Some(analysis);
    if c.step + 1 < c.steps.len() {
        c.step += 1;
        d.step_started_at = Some(OffsetDateTime::now_utc());
        d.state = DeploymentState::Deploying;
    } else {
        // Promoted: every instance rolls to the new revision.
        d.reason = Some(format!(
            "canary promoted ({}); rolling every instance to revision {}",
            c.last_analysis.clone().unwrap_or_default(),
            d.revision
        ));
        d.canary = None;
    }
}

/// One request's outcome: when it ended, its status, and how long it took in ms.
type Outcome = (Instant, u16, f64);

/// Per-instance request outcomes the router reported, for canary analysis.
#[derive(Default)]
pub struct RequestStats {
    by_instance: Mutex<HashMap<String, VecDeque<Outcome>>>,
}

/// Outcomes kept per instance, newest last (bounds memory however busy the app is).
const STATS_KEPT: usize = 20_000;

impl RequestStats {
    pub fn record(&self, instance_id: &str, status: u16, duration_ms: f64) {
        let mut m = self.by_instance.lock().unwrap_or_else(|e| e.into_inner());
        let q = m.entry(instance_id.to_string()).or_default();
        if q.len() == STATS_KEPT {
            q.pop_front();
        }
        q.push_back((Instant::now(), status, duration_ms));
    }

    /// (requests, 5xx rate, p99 ms) of the given instances since `since`.
    pub fn summary(&self, instances: &[String], since: Instant) -> (usize, f64, f64) {
        let m = self.by_instance.lock().unwrap_or_else(|e| e.into_inner());
        let mut durations = vec![];
        let mut errors = 0usize;
        for id in instances {
            if let Some(q) = m.get(id) {
                for (_, status, d) in q.iter().filter(|(t, _, _)| *t >= since) {
                    if *status >= 500 {
                        errors += 1;
                    }
                    durations.push(*d);
                }
            }
        }
        let n = durations.len();
        if n == 0 {
            return (0, 0.0, 0.0);
        }
        durations.sort_by(|a, b| a.total_cmp(b));
        let p99 = durations[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1];
        (n, errors as f64 / n as f64, p99)
    }
}

/// The canary's verdict: `Ok(figures)` to go on, `Err(figures)` to roll back.
pub fn judge(
    canary: (usize, f64, f64),
    baseline: (usize, f64, f64),
    max_error_rate_increase: f64,
    max_p99_increase_ms: f64,
) -> std::result::Result<String, String> {
    let figures = format!(
        "canary: {} requests, {:.1}% 5xx, p99 {:.0} ms; baseline: {} requests, {:.1}% 5xx, p99 {:.0} ms",
        canary.0,
        canary.1 * 100.0,
        canary.2,
        baseline.0,
        baseline.1 * 100.0,
        baseline.2
    );
    if canary.1 > baseline.1 + max_error_rate_increase {
        return Err(format!(
            "error rate {:.1}% is over the baseline's {:.1}% by more than {:.1} points ({figures})",
            canary.1 * 100.0,
            baseline.1 * 100.0,
            max_error_rate_increase * 100.0
        ));
    }
    if baseline.0 > 0 && canary.2 > baseline.2 + max_p99_increase_ms {
        return Err(format!(
            "p99 latency {:.0} ms is over the baseline's {:.0} ms by more than {:.0} ms ({figures})",
            canary.2, baseline.2, max_p99_increase_ms
        ));
    }
    Ok(figures)
}

/// Drives every active deployment: spawned once per controller.
pub async fn run_watcher(ctx: Arc<Ctx>, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        if let Err(e) = watch_once(&ctx).await {
            tracing::warn!(error = %e, "deployment check failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

async fn watch_once(ctx: &Arc<Ctx>) -> Result<()> {
    for app in ctx.store.list_apps()? {
        let Some(d) = app.active_deployment().cloned() else {
            continue;
        };
        let lock = ctx.app_lock(&app.name);
        let _guard = lock.lock().await;
        // Re-read under the lock: an API call may have changed it.
        let Some(mut app) = ctx.store.get_app(&app.name)? else {
            continue;
        };
        if app.active_deployment().map(|x| &x.id) != Some(&d.id) {
            continue;
        }
        if let Some(outcome) = step(ctx, &mut app) {
            let (kind, msg) = outcome;
            app.updated_at = OffsetDateTime::now_utc();
            ctx.store.put_app(&app)?;
            ctx.event(&app, kind, &msg);
            drop(_guard);
            crate::instances::reconcile_once(ctx, &ctx.shutdown).await?;
        }
    }
    Ok(())
}

/// Looks at one app's deployment; returns an event when its record changed.
fn step(ctx: &Ctx, app: &mut AppRecord) -> Option<(EventKind, String)> {
    let d = app.active_deployment()?.clone();
    let desired = crate::instances::desired_slots(std::slice::from_ref(app));
    let report = ctx.instances.report(&app.guid);
    // A new instance that failed to start stops the deployment.
    for (key, spec) in &desired {
        if spec.revision != d.revision {
            continue;
        }
        let failed = report
            .iter()
            .find(|r| &r.key == key)
            .and_then(|r| r.failure_of(d.revision));
        if let Some(why) = failed {
            let reason = format!(
                "new instance {} ({}) of revision {} failed: {why}; {}",
                key.index,
                key.process,
                d.revision,
                match d.previous_revision {
                    Some(p) => format!("the old version (revision {p}) keeps serving"),
                    None => "there is no earlier version to keep".to_string(),
                }
            );
            finish(app, DeploymentState::Failed, reason.clone());
            return Some((EventKind::DeploymentFailed, reason));
        }
    }
    // Canary analysis at the end of each step's window.
    if let (Some(c), DeploymentState::Deploying) = (&d.canary, d.state) {
        let canary_key = desired
            .iter()
            .find(|(_, s)| s.revision == d.revision)
            .map(|(k, _)| k.clone())?;
        let canary_up = report
            .iter()
            .find(|r| r.key == canary_key)
            .is_some_and(|r| r.running_revision() == Some(d.revision));
        if !canary_up {
            return None;
        }
        let Some(started) = d.step_started_at else {
            let pct = c.steps.get(c.step).copied().unwrap_or(100);
            app.active_deployment_mut()?.step_started_at = Some(OffsetDateTime::now_utc());
            return Some((
                pier_api::EventKind::CanaryStarted,
                format!(
                    "canary of revision {} is serving {pct}% of traffic; judged after {} s",
                    d.revision, c.window_secs
                ),
            ));
        };
        let elapsed = OffsetDateTime::now_utc() - started;
        if elapsed.whole_seconds() < i64::from(c.window_secs) {
            return None;
        }
        let since = Instant::now()
            .checked_sub(Duration::from_secs(u64::from(c.window_secs)))
            .unwrap_or_else(Instant::now);
        let ids = |want_canary: bool| -> Vec<String> {
            report
                .iter()
                .filter(|r| r.key.process.is_web() && (r.key == canary_key) == want_canary)
                .filter_map(|r| r.instance_id.clone())
                .collect()
        };
        let canary_stats = ctx.request_stats.summary(&ids(true), since);
        let base_stats = ctx.request_stats.summary(&ids(false), since);
        let pct = c.steps.get(c.step).copied().unwrap_or(100);
        return match judge(
            canary_stats,
            base_stats,
            d.max_error_rate_increase,
            d.max_p99_increase_ms,
        ) {
            Ok(figures) => {
                let dm = app.active_deployment_mut()?;
                advance(dm, format!("step {pct}% passed: {figures}"));
                Some((
                    pier_api::EventKind::CanaryStep,
                    format!("canary step {pct}% passed: {figures}"),
                ))
            }
            Err(why) => {
                let reason = format!("canary rolled back at step {pct}%: {why}");
                finish(app, DeploymentState::Failed, reason.clone());
                Some((EventKind::DeploymentFailed, reason))
            }
        };
    }
    if d.canary.is_some() {
        return None;
    }
    // Done when every desired slot runs its revision and nothing else of the app is left.
    let all_new = desired.iter().all(|(key, spec)| {
        report.iter().any(|r| {
            &r.key == key
                && r.pending_state.is_none()
                && r.running_revision() == Some(spec.revision)
        })
    });
    let leftovers = report.iter().any(|r| !desired.contains_key(&r.key));
    if all_new && !leftovers {
        let msg = format!("deployment of revision {} succeeded", d.revision);
        finish(app, DeploymentState::Succeeded, msg.clone());
        return Some((EventKind::DeploymentSucceeded, msg));
    }
    None
}

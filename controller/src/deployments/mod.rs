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

use std::collections::BTreeMap;

use pier_api::{
    AppState, CanaryStatus, DeployRequest, DeploymentResponse, DeploymentState, DeploymentStrategy,
    ErrorCode, RevisionResponse,
};
use time::OffsetDateTime;

use crate::error::{Error, Result};
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
/// `vcap_services` is what the app's bindings make now.
fn candidate(
    app: &AppRecord,
    prev: Option<&Revision>,
    stack: &str,
    vcap_services: &str,
) -> Result<(Revision, String)> {
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
        stack: stack.to_string(),
        vcap_services: vcap_services.to_string(),
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
            if p.vcap_services != rev.vcap_services {
                parts.push("services changed");
            }
            if p.commands != rev.commands {
                parts.push("command changed");
            }
            if p.stack_or(stack) != stack {
                parts.push("stack changed");
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

/// The controller's settings deployments are made with.
#[derive(Debug, Clone)]
pub struct DeploySettings {
    /// The stack image new revisions run on.
    pub stack: String,
    pub revisions_kept: usize,
    pub max_error_rate_increase: f64,
    pub max_p99_increase_ms: f64,
}

/// A deployment that started, and the droplets pruned revisions no longer use (the caller deletes
/// them once the record is saved).
#[derive(Debug, Clone)]
pub struct Deployed {
    pub record: DeploymentRecord,
    pub pruned_droplets: Vec<String>,
}

/// How a request asks to deploy, once checked.
struct Plan {
    strategy: DeploymentStrategy,
    max_in_flight: u32,
}

/// Checks the request whole, before anything else, even when it turns out to change nothing.
fn check_request(req: &DeployRequest) -> Result<Plan> {
    let strategy = req.strategy.unwrap_or_default();
    let max_in_flight = req.max_in_flight.unwrap_or(1);
    if !(1..=100).contains(&max_in_flight) {
        return Err(Error::bad_request(
            "max in flight must be between 1 and 100",
        ));
    }
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
    Ok(Plan {
        strategy,
        max_in_flight,
    })
}

/// The revision to deploy and what it is: an earlier one (rollback), or the app's newest
/// droplet, env and commands.
fn target_revision(
    settings: &DeploySettings,
    app: &AppRecord,
    req: &DeployRequest,
    prev: Option<&Revision>,
    vcap_services: &str,
) -> Result<(Revision, String)> {
    let Some(n) = req.revision else {
        return candidate(app, prev, &settings.stack, vcap_services);
    };
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
    Ok((r.clone(), format!("rolled back to {n}")))
}

/// The canary's first step, for a canary deployment of an app that runs a previous version.
fn canary_status(
    app: &AppRecord,
    req: &DeployRequest,
    was_started: bool,
    has_prev: bool,
) -> Result<CanaryStatus> {
    if !was_started || !has_prev || app.web().is_none_or(|w| w.instances == 0) {
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
    Ok(CanaryStatus {
        steps,
        step: 0,
        window_secs: req.analysis_window_secs.unwrap_or(60),
        last_analysis: None,
    })
}

/// Starts a deployment on `app` (the caller holds the app's lock and saves the record).
/// Returns `None` when nothing changes (the app already runs that revision).
/// `vcap_services` is the `VCAP_SERVICES` the app's bindings make now (JSON text).
pub fn deploy(
    settings: &DeploySettings,
    app: &mut AppRecord,
    req: &DeployRequest,
    vcap_services: &str,
) -> Result<Option<Deployed>> {
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
    let plan = check_request(req)?;
    let prev = app.running_revision().cloned();
    let (mut rev, description) = target_revision(settings, app, req, prev.as_ref(), vcap_services)?;
    let unchanged = prev.as_ref().is_some_and(|p| p.same_config(&rev));
    let was_started = app.state == AppState::Started;
    if unchanged && !req.restart && req.revision.is_none() && was_started {
        return Ok(None);
    }
    let canary = match plan.strategy {
        DeploymentStrategy::Canary => Some(canary_status(app, req, was_started, prev.is_some())?),
        _ => None,
    };
    // A new revision when the configuration differs (or for a rollback); a restart of the same
    // configuration reruns the current revision.
    let mut pruned_droplets = Vec::new();
    let version = if unchanged && req.revision.is_none() {
        prev.as_ref().map(|p| p.version).unwrap_or(1)
    } else {
        let v = app.revisions.last().map(|r| r.version + 1).unwrap_or(1);
        rev.version = v;
        rev.description = description.clone();
        rev.created_at = OffsetDateTime::now_utc();
        app.revisions.push(rev);
        pruned_droplets = prune_revisions(settings.revisions_kept, app);
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
        strategy: plan.strategy,
        state: DeploymentState::Deploying,
        max_in_flight: plan.max_in_flight,
        reason: Some(if req.restart && unchanged {
            format!("restart of revision {version}")
        } else {
            format!("revision {version}: {description}")
        }),
        canary,
        max_error_rate_increase: settings.max_error_rate_increase,
        max_p99_increase_ms: settings.max_p99_increase_ms,
        created_at: now,
        finished_at: None,
        // A canary's first window starts once its instance serves (see the watcher).
        step_started_at: None,
    };
    app.deployments.push(d.clone());
    if app.deployments.len() > KEEP_DEPLOYMENTS {
        let extra = app.deployments.len() - KEEP_DEPLOYMENTS;
        app.deployments.drain(..extra);
    }
    app.updated_at = now;
    Ok(Some(Deployed {
        record: d,
        pruned_droplets,
    }))
}

/// Keeps the newest revisions (and always the current one); returns the droplets of the ones
/// dropped that nothing else of the app uses, to delete so the disk doesn't fill.
fn prune_revisions(kept: usize, app: &mut AppRecord) -> Vec<String> {
    let keep = kept.max(2);
    let mut pruned = Vec::new();
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
            app.old_blobs.retain(|b| b != &sha);
            pruned.push(sha);
        }
    }
    pruned
}

/// Ends the app's active deployment. A failed or canceled one puts the previous revision back.
pub(super) fn finish(
    app: &mut AppRecord,
    state: DeploymentState,
    reason: String,
) -> Option<DeploymentRecord> {
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

pub(super) fn advance(d: &mut DeploymentRecord, analysis: String) {
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

mod canary;
mod watcher;

pub use canary::{judge, RequestStats};
pub use watcher::Watcher;

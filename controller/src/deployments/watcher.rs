//! The watcher: drives every active deployment to its end (done, failed, canary steps), one
//! app at a time under the app's lock. Restarted with the controller, so a deployment survives a
//! controller restart.
//!
//! [`step`] is pure: it judges one app's deployment from the supervisors' report, the router's
//! request outcomes and the time, so it is tested without anything running.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pier_api::{CanaryStatus, DeploymentState, EventKind};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::canary::{judge, RequestStats};
use super::{advance, finish};
use crate::error::Result;
use crate::events::{Actor, Events};
use crate::instances::{desired_slots, InstanceSpec, Instances, SlotKey, SlotReport};
use crate::locks::AppLocks;
use crate::reconcile::Reconciler;
use crate::store::{AppRecord, DeploymentRecord, Store};

/// How often active deployments are looked at.
const PERIOD: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct Watcher {
    pub store: Store,
    pub locks: Arc<AppLocks>,
    pub instances: Arc<Instances>,
    pub stats: Arc<RequestStats>,
    pub events: Events,
    pub reconciler: Arc<Reconciler>,
}

impl Watcher {
    /// Drives every active deployment until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.once().await {
                tracing::warn!(error = %e, "deployment check failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PERIOD) => {}
            }
        }
    }

    async fn once(&self) -> Result<()> {
        for app in self.store.list_apps()? {
            let Some(d) = app.active_deployment().cloned() else {
                continue;
            };
            let lock = self.locks.get(&app.key());
            let guard = lock.lock().await;
            // Re-read under the lock: an API call may have changed it.
            let Some(mut app) = self.store.get_app(&app.space_guid, &app.name)? else {
                continue;
            };
            if app.active_deployment().map(|x| &x.id) != Some(&d.id) {
                continue;
            }
            let report = self.instances.report(&app.guid);
            let now = OffsetDateTime::now_utc();
            if let Some((kind, msg)) = step(&mut app, &report, &self.stats, now) {
                app.updated_at = now;
                self.store.put_app(&app)?;
                self.events.record(&app.guid, kind, &msg, &Actor::Admin);
                drop(guard);
                self.reconciler.converge(Some(&app.guid)).await;
            }
        }
        Ok(())
    }
}

/// Looks at one app's deployment; returns an event when its record changed.
pub(super) fn step(
    app: &mut AppRecord,
    report: &[SlotReport],
    stats: &RequestStats,
    now: OffsetDateTime,
) -> Option<(EventKind, String)> {
    let d = app.active_deployment()?.clone();
    let desired = desired_slots(std::slice::from_ref(app));
    if let Some(reason) = new_instance_failed(&d, &desired, report) {
        finish(app, DeploymentState::Failed, reason.clone());
        return Some((EventKind::DeploymentFailed, reason));
    }
    if let Some(c) = &d.canary {
        if d.state != DeploymentState::Deploying {
            return None;
        }
        return canary_step(app, &d, c, &desired, report, stats, now);
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

/// A new instance that failed to start stops the deployment: why, if one did.
fn new_instance_failed(
    d: &DeploymentRecord,
    desired: &BTreeMap<SlotKey, InstanceSpec>,
    report: &[SlotReport],
) -> Option<String> {
    desired
        .iter()
        .filter(|(_, spec)| spec.revision == d.revision)
        .find_map(|(key, _)| {
            let why = report
                .iter()
                .find(|r| &r.key == key)
                .and_then(|r| r.failure_of(d.revision))?;
            Some(format!(
                "new instance {} ({}) of revision {} failed: {why}; {}",
                key.index,
                key.process,
                d.revision,
                match d.previous_revision {
                    Some(p) => format!("the old version (revision {p}) keeps serving"),
                    None => "there is no earlier version to keep".to_string(),
                }
            ))
        })
}

/// Canary analysis at the end of each step's window, which starts once the canary serves.
fn canary_step(
    app: &mut AppRecord,
    d: &DeploymentRecord,
    c: &CanaryStatus,
    desired: &BTreeMap<SlotKey, InstanceSpec>,
    report: &[SlotReport],
    stats: &RequestStats,
    now: OffsetDateTime,
) -> Option<(EventKind, String)> {
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
    let pct = c.steps.get(c.step).copied().unwrap_or(100);
    let Some(started) = d.step_started_at else {
        app.active_deployment_mut()?.step_started_at = Some(now);
        return Some((
            EventKind::CanaryStarted,
            format!(
                "canary of revision {} is serving {pct}% of traffic; judged after {} s",
                d.revision, c.window_secs
            ),
        ));
    };
    if (now - started).whole_seconds() < i64::from(c.window_secs) {
        return None;
    }
    let window = Duration::from_secs(u64::from(c.window_secs));
    let ids = |want_canary: bool| -> Vec<String> {
        report
            .iter()
            .filter(|r| r.key.process.is_web() && (r.key == canary_key) == want_canary)
            .filter_map(|r| r.instance_id.clone())
            .collect()
    };
    let canary_stats = stats.summary(&ids(true), window);
    let base_stats = stats.summary(&ids(false), window);
    match judge(
        canary_stats,
        base_stats,
        d.max_error_rate_increase,
        d.max_p99_increase_ms,
    ) {
        Ok(figures) => {
            advance(
                app.active_deployment_mut()?,
                format!("step {pct}% passed: {figures}"),
            );
            Some((
                EventKind::CanaryStep,
                format!("canary step {pct}% passed: {figures}"),
            ))
        }
        Err(why) => {
            let reason = format!("canary rolled back at step {pct}%: {why}");
            finish(app, DeploymentState::Failed, reason.clone());
            Some((EventKind::DeploymentFailed, reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use pier_api::{
        DeployRequest, DeploymentStrategy, HealthCheckType, InstanceState, InstanceStatus,
        ProcessType,
    };

    use super::*;
    use crate::deployments::{deploy, DeploySettings};

    fn settings() -> DeploySettings {
        DeploySettings {
            stack: "stack:test".into(),
            revisions_kept: 10,
            max_error_rate_increase: 0.01,
            max_p99_increase_ms: 250.0,
        }
    }

    /// An app running revision 1 on two web instances, with a droplet for revision 2 staged.
    fn app() -> AppRecord {
        let mut a = crate::store::tests::app("web");
        let d1 = pier_api::DropletInfo {
            sha256: "a".repeat(64),
            buildpack: "python".into(),
            process_types: BTreeMap::from([("web".into(), "python3 app.py".into())]),
            created_at: OffsetDateTime::now_utc(),
        };
        a.processes.insert(
            ProcessType::web(),
            crate::store::ProcessRecord {
                instances: 2,
                memory_mb: 256,
                disk_mb: 1024,
                command: None,
                health_check: pier_api::HealthCheck {
                    kind: HealthCheckType::Port,
                    ..Default::default()
                },
            },
        );
        a.droplet = Some(d1);
        deploy(&settings(), &mut a, &DeployRequest::default(), "{}").unwrap();
        finish(&mut a, DeploymentState::Succeeded, "done".into());
        a.droplet = Some(pier_api::DropletInfo {
            sha256: "b".repeat(64),
            ..a.droplet.clone().unwrap()
        });
        a
    }

    fn running(key: &SlotKey, revision: u64, instance: &str) -> SlotReport {
        let st = InstanceStatus {
            process: key.process.clone(),
            index: key.index,
            state: InstanceState::Running,
            since: OffsetDateTime::now_utc(),
            instance_id: Some(instance.into()),
            container_id: Some(format!("c-{instance}")),
            host_port: None,
            droplet: None,
            revision: Some(revision),
            crash_count: 0,
            reason: None,
            last_output: vec![],
            stats: None,
        };
        SlotReport {
            key: key.clone(),
            instance_id: Some(instance.into()),
            current: Some(st),
            pending_state: None,
            pending: None,
        }
    }

    /// Every desired slot running the revision the desired state gives it.
    fn all_up(a: &AppRecord) -> Vec<SlotReport> {
        desired_slots(std::slice::from_ref(a))
            .iter()
            .map(|(k, s)| running(k, s.revision, &format!("i{}", k.index)))
            .collect()
    }

    fn canary(a: &mut AppRecord, window: u32) {
        let req = DeployRequest {
            strategy: Some(DeploymentStrategy::Canary),
            instance_steps: Some(vec![50, 100]),
            analysis_window_secs: Some(window),
            ..DeployRequest::default()
        };
        deploy(&settings(), a, &req, "{}").unwrap().unwrap();
    }

    #[test]
    fn a_rolling_deployment_succeeds_once_every_slot_runs_the_new_revision() {
        let mut a = app();
        deploy(&settings(), &mut a, &DeployRequest::default(), "{}")
            .unwrap()
            .unwrap();
        let stats = RequestStats::default();
        let now = OffsetDateTime::now_utc();
        // Still on revision 1 everywhere: nothing to say.
        let keys: Vec<_> = desired_slots(std::slice::from_ref(&a))
            .into_keys()
            .collect();
        let old: Vec<_> = keys.iter().map(|k| running(k, 1, "old")).collect();
        assert_eq!(step(&mut a, &old, &stats, now), None);
        let report = all_up(&a);
        let (kind, msg) = step(&mut a, &report, &stats, now).unwrap();
        assert_eq!(kind, EventKind::DeploymentSucceeded);
        assert!(msg.contains("revision 2 succeeded"));
        assert!(a.active_deployment().is_none());
    }

    #[test]
    fn a_crashed_new_instance_fails_the_deployment_and_keeps_the_old_revision() {
        let mut a = app();
        deploy(&settings(), &mut a, &DeployRequest::default(), "{}")
            .unwrap()
            .unwrap();
        let mut report = all_up(&a);
        let st = report[0].current.as_mut().unwrap();
        st.state = InstanceState::Crashed;
        st.crash_count = 1;
        st.reason = Some("exited with status 3".into());
        st.last_output = vec!["Traceback".into()];
        let (kind, msg) = step(
            &mut a,
            &report,
            &RequestStats::default(),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        assert_eq!(kind, EventKind::DeploymentFailed);
        assert!(
            msg.contains("exited with status 3") && msg.contains("Traceback"),
            "{msg}"
        );
        assert!(msg.contains("revision 1) keeps serving"), "{msg}");
        assert_eq!(a.current_revision, Some(1), "back to the previous revision");
    }

    #[test]
    fn a_canary_is_judged_at_the_end_of_its_window() {
        let mut a = app();
        canary(&mut a, 60);
        let stats = RequestStats::default();
        let t0 = OffsetDateTime::now_utc();
        let report = all_up(&a);
        let canary_id = report
            .iter()
            .find(|r| r.current.as_ref().and_then(|c| c.revision) == Some(2))
            .and_then(|r| r.instance_id.clone())
            .unwrap();
        // Its first step starts once it serves.
        let (kind, _) = step(&mut a, &report, &stats, t0).unwrap();
        assert_eq!(kind, EventKind::CanaryStarted);
        // Inside the window: no verdict.
        assert_eq!(
            step(&mut a, &report, &stats, t0 + time::Duration::seconds(59)),
            None
        );
        // As good as the baseline: next step.
        for _ in 0..100 {
            stats.record(&canary_id, 200, 5.0);
            stats.record("i0", 200, 5.0);
        }
        let (kind, msg) = step(&mut a, &report, &stats, t0 + time::Duration::seconds(61)).unwrap();
        assert_eq!(kind, EventKind::CanaryStep, "{msg}");
        assert!(msg.contains("step 50% passed"), "{msg}");
        assert_eq!(
            a.active_deployment().unwrap().canary.as_ref().unwrap().step,
            1
        );
    }

    #[test]
    fn a_canary_with_more_errors_rolls_back_with_the_figures() {
        let mut a = app();
        canary(&mut a, 10);
        let stats = RequestStats::default();
        let t0 = OffsetDateTime::now_utc();
        let report = all_up(&a);
        let canary_id = report
            .iter()
            .find(|r| r.current.as_ref().and_then(|c| c.revision) == Some(2))
            .and_then(|r| r.instance_id.clone())
            .unwrap();
        step(&mut a, &report, &stats, t0).unwrap();
        for i in 0..100 {
            stats.record(&canary_id, if i % 10 == 0 { 500 } else { 200 }, 5.0);
            stats.record("i0", 200, 5.0);
        }
        let (kind, msg) = step(&mut a, &report, &stats, t0 + time::Duration::seconds(11)).unwrap();
        assert_eq!(kind, EventKind::DeploymentFailed);
        assert!(msg.contains("canary rolled back at step 50%"), "{msg}");
        assert!(
            msg.contains("10.0% 5xx"),
            "the figures are in the reason: {msg}"
        );
        assert_eq!(a.current_revision, Some(1));
    }

    #[test]
    fn judge_compares_error_rate_and_p99_within_the_margins() {
        assert!(judge((100, 0.0, 10.0), (100, 0.0, 10.0), 0.01, 250.0).is_ok());
        assert!(judge((100, 0.015, 10.0), (100, 0.01, 10.0), 0.01, 250.0).is_ok());
        let e = judge((100, 0.05, 10.0), (100, 0.01, 10.0), 0.01, 250.0).unwrap_err();
        assert!(e.starts_with("error rate 5.0%"), "{e}");
        let e = judge((100, 0.0, 400.0), (100, 0.0, 100.0), 0.01, 250.0).unwrap_err();
        assert!(e.starts_with("p99 latency 400 ms"), "{e}");
        // No baseline traffic: latency is not compared.
        assert!(judge((10, 0.0, 900.0), (0, 0.0, 0.0), 0.01, 250.0).is_ok());
        // Nor with too few requests for a p99 (seen in e2e at the 100% step: the baseline's one
        // request was fast, the canary's slowest of 13 was one of the app's deliberate 1 s ones).
        assert!(judge((13, 0.0, 1048.0), (1, 0.0, 45.0), 0.01, 250.0).is_ok());
        assert!(judge((9, 0.0, 1048.0), (100, 0.0, 45.0), 0.01, 250.0).is_ok());
        assert!(judge((10, 0.0, 1048.0), (10, 0.0, 45.0), 0.01, 250.0).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn request_stats_count_only_the_window() {
        let stats = RequestStats::default();
        stats.record("c", 500, 100.0);
        tokio::time::sleep(Duration::from_secs(30)).await;
        stats.record("c", 200, 10.0);
        stats.record("c", 200, 20.0);
        let (n, err, p99) = stats.summary(&["c".into()], Duration::from_secs(10));
        assert_eq!(n, 2);
        assert_eq!(err, 0.0);
        assert_eq!(p99, 20.0);
        let (n, err, _) = stats.summary(&["c".into()], Duration::from_secs(60));
        assert_eq!(n, 3);
        assert!((err - 1.0 / 3.0).abs() < 1e-9);
    }
}

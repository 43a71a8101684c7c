//! Zero-downtime deployments, revisions, rollback and canaries, under load.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pier_e2e::pier_api::{
    DeployRequest, DeploymentResponse, DeploymentState, ErrorCode, InstanceState, RevisionResponse,
};
use pier_e2e::*;

fn fixture(name: &str) -> tempfile::TempDir {
    copy_dir(&repo_root().join("e2e/fixtures").join(name))
}

fn set_version(dir: &std::path::Path, v: &str) {
    std::fs::write(dir.join("VERSION"), format!("{v}\n")).unwrap();
}

/// Keeps requesting the app through the router until stopped; counts failures and remembers
/// which version answered when.
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    done: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(router: &str, host: &str, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut threads = vec![];
        for w in 0..workers {
            let (stop, failures, done, seen) =
                (stop.clone(), failures.clone(), done.clone(), seen.clone());
            let url = router.to_string();
            let host = host.to_string();
            threads.push(std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    // One request in four takes a second, so draining matters.
                    let path = if (n + w as u64) % 4 == 0 {
                        "/slow"
                    } else {
                        "/"
                    };
                    let r = rt.block_on(async {
                        let resp = client
                            .get(format!("{url}{path}"))
                            .header("host", &host)
                            .send()
                            .await?;
                        let status = resp.status().as_u16();
                        let body = resp.text().await?;
                        Ok::<_, reqwest::Error>((status, body))
                    });
                    match r {
                        Ok((200, body)) => {
                            let v = body.split_whitespace().next().unwrap_or("").to_string();
                            seen.lock().unwrap().push((Instant::now(), v));
                        }
                        Ok((s, body)) => {
                            failures.lock().unwrap().push(format!("{path}: {s} {body}"))
                        }
                        Err(e) => failures.lock().unwrap().push(format!("{path}: {e}")),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        Load {
            stop,
            failures,
            done,
            seen,
            threads,
        }
    }

    /// Stops the load; returns (requests, failures).
    fn finish(mut self) -> (usize, Vec<String>, Vec<(Instant, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let failures = self.failures.lock().unwrap().clone();
        let seen = self.seen.lock().unwrap().clone();
        (self.done.load(Ordering::Relaxed), failures, seen)
    }
}

/// Runs `op` under load and checks: no request failed, and every response after `op` finished
/// came from `want`.
fn zero_downtime(p: &Platform, host: &str, what: &str, want: &str, op: impl FnOnce()) {
    let load = Load::start(&p.router, host, 4);
    std::thread::sleep(Duration::from_millis(300));
    op();
    let finished = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let (requests, failures, seen) = load.finish();
    eprintln!("{what}: {requests} requests, {} failed", failures.len());
    assert!(requests > 20, "{what}: the load ran ({requests} requests)");
    assert!(
        failures.is_empty(),
        "{what}: {} of {requests} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // Responses that began after the deployment ended (1 s of slack for /slow ones in flight).
    let late: Vec<_> = seen
        .iter()
        .filter(|(t, _)| *t > finished + Duration::from_millis(1100))
        .collect();
    assert!(!late.is_empty(), "{what}: responses after the deployment");
    assert!(
        late.iter().all(|(_, v)| v == want),
        "{what}: after the deployment every response is {want}: {:?}",
        late.iter()
            .filter(|(_, v)| v != want)
            .take(3)
            .collect::<Vec<_>>()
    );
}

/// The app's newest deployment once it is no longer DEPLOYING.
fn deployment_ended(p: &Platform, app: &str, secs: u64) -> DeploymentResponse {
    eventually(Duration::from_secs(secs), "the deployment to end", || {
        let d = p.call(p.api().deployments(&app_name(app))).ok()?;
        let d = d.into_iter().next()?;
        (d.state != DeploymentState::Deploying).then_some(d)
    })
}

/// `pier revisions NAME --json`.
fn revisions(p: &Platform, app: &str, cwd: &std::path::Path) -> Vec<RevisionResponse> {
    serde_json::from_str(&p.pier_ok(&["revisions", app, "--json"], cwd)).unwrap()
}

fn zero_downtime_deployments(instances: u32) {
    let p = Platform::start();
    let app = fixture("versioned");
    let name = format!("zdt{instances}");
    let host = format!("{name}.localhost");
    set_version(app.path(), "1");
    p.pier_ok(&["push", &name, "-i", &instances.to_string()], app.path());

    zero_downtime(&p, &host, "re-push with a change", "version=2", || {
        set_version(app.path(), "2");
        p.pier_ok(&["push", &name, "-i", &instances.to_string()], app.path());
    });
    zero_downtime(&p, &host, "restage", "version=2", || {
        p.pier_ok(&["restage", &name], app.path());
    });
    zero_downtime(&p, &host, "memory change", "version=2", || {
        p.pier_ok(&["scale", &name, "-m", "192M"], app.path());
        // The scale returns once instances run; the memory change rolls them one by one.
        eventually(Duration::from_secs(60), "every instance on 192M", || {
            let app_view = p.app(&name)?;
            let ids = p.instance_ids(&name);
            let ok = ids.len() == instances as usize
                && ids.iter().all(|id| {
                    let out = std::process::Command::new("docker")
                        .args(["inspect", "-f", "{{.HostConfig.Memory}}", id])
                        .output()
                        .unwrap();
                    String::from_utf8_lossy(&out.stdout).trim()
                        == (192u64 * 1024 * 1024).to_string()
                })
                && app_view
                    .instances
                    .iter()
                    .all(|i| i.state == InstanceState::Running);
            ok.then_some(())
        });
    });
    let revs = revisions(&p, &name, app.path());
    let first = revs
        .iter()
        .find(|r| r.description == "pushed" && r.version == 1)
        .expect("revision 1");
    assert_eq!(first.version, 1);
    zero_downtime(&p, &host, "rollback", "version=1", || {
        p.pier_ok(&["rollback", &name, "--version", "1"], app.path());
    });
    let out = p.pier_ok(&["revisions", &name], app.path());
    assert!(out.contains("rolled back to 1"), "{out}");
    let out = p.pier_ok(&["deployments", &name], app.path());
    assert!(out.contains("SUCCEEDED"), "{out}");
}

#[test]
fn zero_downtime_with_one_instance() {
    zero_downtime_deployments(1);
}

#[test]
fn zero_downtime_with_three_instances() {
    zero_downtime_deployments(3);
}

/// With only a standalone pier-router, the controller drains a removed instance on the router's
/// acknowledgement (the table version it holds, the instances it still has requests in flight
/// to): a slow request already sent to an old instance finishes before the instance gets
/// SIGTERM.
#[test]
fn zero_downtime_through_a_standalone_router() {
    let p = Platform::start_with(Options {
        standalone_router: true,
        ..Options::default()
    });
    let app = fixture("versioned");
    set_version(app.path(), "1");
    p.pier_ok(&["push", "zdts", "-i", "2"], app.path());
    eventually(Duration::from_secs(30), "the router has the route", || {
        (p.get_via_router("zdts.localhost", "/").0 == 200).then_some(())
    });
    zero_downtime(
        &p,
        "zdts.localhost",
        "re-push through a standalone router",
        "version=2",
        || {
            set_version(app.path(), "2");
            p.pier_ok(&["push", "zdts", "-i", "2"], app.path());
        },
    );
    zero_downtime(
        &p,
        "zdts.localhost",
        "restart through a standalone router",
        "version=2",
        || {
            p.pier_ok(&["restart", "zdts"], app.path());
        },
    );
}

#[test]
fn failing_new_version_leaves_the_old_one_serving() {
    let p = Platform::start();
    let app = fixture("versioned");
    set_version(app.path(), "1");
    std::fs::write(
        app.path().join("manifest.yml"),
        "applications:\n  - name: keeper\n    timeout: 10\n",
    )
    .unwrap();
    p.pier_ok(&["push", "keeper", "-i", "2"], app.path());
    let before = p.instance_ids("keeper");
    // The new version never listens.
    std::fs::write(
        app.path().join("Procfile"),
        "web: python3 -c 'import time; print(\"broken build\", flush=True); time.sleep(999)'\n",
    )
    .unwrap();
    let load = Load::start(&p.router, "keeper.localhost", 2);
    let out = p.pier(&["push", "keeper"], app.path());
    let (requests, failures, seen) = load.finish();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("failed") && text.contains("health check"),
        "{text}"
    );
    assert!(
        text.contains("broken build"),
        "shows the new instance's output: {text}"
    );
    assert!(
        failures.is_empty(),
        "{} of {requests} failed: {failures:?}",
        failures.len()
    );
    assert!(seen.iter().all(|(_, v)| v == "version=1"));
    assert_eq!(
        p.instance_ids("keeper"),
        before,
        "the old instances were never touched"
    );
    let (s, body) = p.get_via_router("keeper.localhost", "/");
    assert_eq!((s, body.starts_with("version=1")), (200, true), "{body}");
}

#[test]
fn canary_rolls_back_a_bad_version_and_promotes_a_good_one() {
    let p = Platform::start();
    let app = fixture("versioned");
    set_version(app.path(), "1");
    p.pier_ok(&["push", "birdie", "-i", "2"], app.path());

    // A version that answers 500 on half its requests is rolled back automatically.
    set_version(app.path(), "2");
    std::fs::write(app.path().join("MODE"), "flaky\n").unwrap();
    let load = Load::start(&p.router, "birdie.localhost", 3);
    p.pier_ok(
        &[
            "push",
            "birdie",
            "--strategy",
            "canary",
            "--instance-steps",
            "50,100",
            "--analysis-window",
            "3",
        ],
        app.path(),
    );
    let d = deployment_ended(&p, "birdie", 120);
    let _ = load.finish();
    assert_eq!(d.state, DeploymentState::Failed, "{d:?}");
    let reason = d.reason.as_deref().unwrap();
    assert!(
        reason.contains("error rate") && reason.contains("5xx"),
        "says why, with figures: {reason}"
    );
    eventually(Duration::from_secs(90), "back to version 1 only", || {
        let ids = p.instance_ids("birdie");
        let all_v1 = (0..10).all(|_| {
            p.get_via_router("birdie.localhost", "/")
                .1
                .starts_with("version=1")
        });
        (ids.len() == 2 && all_v1).then_some(())
    });

    // A healthy version goes through every step and replaces every instance.
    set_version(app.path(), "3");
    std::fs::remove_file(app.path().join("MODE")).unwrap();
    let load = Load::start(&p.router, "birdie.localhost", 3);
    p.pier_ok(
        &[
            "push",
            "birdie",
            "--strategy",
            "canary",
            "--instance-steps",
            "20,60,100",
            "--analysis-window",
            "2",
        ],
        app.path(),
    );
    let d = deployment_ended(&p, "birdie", 180);
    let (_, failures, _) = load.finish();
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
    assert!(failures.is_empty(), "{failures:?}");
    let ev = p.events("birdie");
    let said = |what: &str| ev.iter().any(|e| e.message.contains(what));
    assert!(
        said("canary step 20% passed") && said("canary step 60% passed"),
        "{ev:?}"
    );
    eventually(Duration::from_secs(90), "only version 3", || {
        let ids = p.instance_ids("birdie");
        let all_v3 = (0..10).all(|_| {
            p.get_via_router("birdie.localhost", "/")
                .1
                .starts_with("version=3")
        });
        (ids.len() == 2 && all_v3).then_some(())
    });
}

#[test]
fn revisions_keep_only_the_newest_and_refusals_change_nothing() {
    let p = Platform::start();
    let app = fixture("versioned");
    set_version(app.path(), "1");
    p.pier_ok(&["push", "revvy"], app.path());
    // Unknown revision, a second deployment at once, bad canary steps: refused, nothing changes.
    let out = p.pier(&["rollback", "revvy", "--version", "99"], app.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not kept"));
    let out = p.pier(
        &[
            "push",
            "revvy",
            "--strategy",
            "canary",
            "--instance-steps",
            "50,20",
        ],
        app.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("increasing"));
    let revs = revisions(&p, "revvy", app.path());
    assert_eq!(revs.len(), 1, "{revs:?}");
    assert!(revs[0].current);
}

#[test]
fn recreate_cancel_one_deployment_at_a_time_and_revision_pruning() {
    let p = Platform::start_with(Options {
        controller_args: vec!["--revisions-kept".into(), "3".into()],
        ..Default::default()
    });
    let app = fixture("versioned");
    set_version(app.path(), "1");
    p.pier_ok(&["push", "cycler", "-i", "2"], app.path());

    // Recreate: every old instance is gone before a new one starts.
    set_version(app.path(), "2");
    let before = p.instance_ids("cycler");
    p.pier_ok(&["push", "cycler", "--strategy", "recreate"], app.path());
    let after = p.instance_ids("cycler");
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|id| !before.contains(id)));
    let (_, body) = p.get_via_router("cycler.localhost", "/");
    assert!(body.starts_with("version=2"), "{body}");

    // A slow new version: while its deployment runs, a second one is refused with 409, and a
    // cancel rolls back to the revision before it.
    set_version(app.path(), "3");
    std::fs::write(
        app.path().join("Procfile"),
        "web: sleep 4 && python3 app.py\n",
    )
    .unwrap();
    // Stage the new source without starting it, then deploy by hand.
    p.pier_ok(&["push", "cycler", "--no-start"], app.path());
    let cycler = app_name("cycler");
    p.call(p.api().deploy(&cycler, &DeployRequest::default()))
        .expect("deploy by hand");
    let restart = DeployRequest {
        restart: true,
        ..Default::default()
    };
    let second = p
        .call(p.api().deploy(&cycler, &restart))
        .expect_err("a second deployment at once is refused");
    assert_eq!(second.status().map(|s| s.as_u16()), Some(409), "{second:?}");
    assert_eq!(second.code(), Some(ErrorCode::Conflict), "{second:?}");
    let out = p.pier_ok(&["cancel-deployment", "cycler"], app.path());
    assert!(out.contains("rolling back to revision 2"), "{out}");
    for _ in 0..10 {
        let (s, body) = p.get_via_router("cycler.localhost", "/");
        assert_eq!(s, 200);
        assert!(body.starts_with("version=2"), "{body}");
    }
    let deps = p.pier_ok(&["deployments", "cycler"], app.path());
    assert!(deps.contains("CANCELED"), "{deps}");

    // Only the newest 3 revisions are kept.
    for v in ["4", "5"] {
        set_version(app.path(), v);
        std::fs::write(app.path().join("Procfile"), "web: python3 app.py\n").unwrap();
        p.pier_ok(&["push", "cycler"], app.path());
    }
    let revs = revisions(&p, "cycler", app.path());
    assert_eq!(revs.len(), 3, "{revs:?}");
    assert!(revs[0].current);
    let out = p.pier(&["rollback", "cycler", "--version", "1"], app.path());
    assert!(!out.status.success(), "revision 1 was pruned");
}

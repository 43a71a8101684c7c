//! Scale and self-heal: the instances that run are always the ones that were asked for.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pier_e2e::pier_api::{
    BuildEvent, BuildRequest, ErrorCode, EventKind, InstanceState, ProcessConfigRequest,
    ProcessType,
};
use pier_e2e::*;

fn example(name: &str) -> tempfile::TempDir {
    copy_dir(&repo_root().join("examples").join(name))
}

fn fixture(name: &str) -> tempfile::TempDir {
    copy_dir(&repo_root().join("e2e/fixtures").join(name))
}

/// Instance indexes that answered `n` requests through the router (python-app says `instance=N`).
fn seen(p: &Platform, host: &str, n: usize) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for _ in 0..n {
        let (status, body) = p.get_via_router(host, "/");
        assert_eq!(status, 200, "{body}");
        let idx = body
            .split("instance=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no instance index in {body:?}"));
        out.insert(idx);
    }
    out
}

fn running(p: &Platform, app: &str) -> usize {
    p.app(app)
        .map(|a| {
            a.instances
                .iter()
                .filter(|i| i.state == InstanceState::Running && i.process.as_str() == "web")
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn scale_up_down_to_zero_and_back_routes_only_running_instances() {
    let p = Platform::start();
    let app = example("python-app");
    p.pier_ok(&["push", "scaly"], app.path());
    for (n, expect) in [(5u32, 5usize), (2, 2), (0, 0), (1, 1)] {
        let out = p.pier_ok(&["scale", "scaly", "-i", &n.to_string()], app.path());
        assert!(out.contains(&format!("{n} instances")), "{out}");
        let want: BTreeSet<u32> = (0..n).collect();
        if n == 0 {
            let (status, _, _) = eventually(Duration::from_secs(15), "no instance routed", || {
                let r = http_request(
                    "GET",
                    &format!("{}/", p.router),
                    Some("scaly.localhost"),
                    None,
                    &[],
                    b"",
                );
                (r.0 == 503).then_some(r)
            });
            assert_eq!(status, 503);
        } else {
            // Traffic reaches exactly the running instances.
            let mut last = BTreeSet::new();
            let ok = (0..100).any(|_| {
                last = seen(&p, "scaly.localhost", 12 * n as usize);
                last == want || {
                    std::thread::sleep(Duration::from_millis(200));
                    false
                }
            });
            assert!(ok, "traffic reached {last:?}, not exactly {want:?}");
        }
        eventually(Duration::from_secs(20), "containers match", || {
            (p.instance_ids("scaly").len() == expect && running(&p, "scaly") == expect)
                .then_some(())
        });
    }
    let ev = p.events("scaly");
    assert!(ev.iter().any(|e| e.kind == EventKind::Scaled), "{ev:?}");
    // `pier app` shows usage per instance; `pier events` lists what happened.
    let out = p.pier_ok(&["app", "scaly"], app.path());
    assert!(
        out.contains("cpu") && out.contains("memory") && out.contains("uptime"),
        "{out}"
    );
    let out = p.pier_ok(&["events", "scaly"], app.path());
    assert!(out.contains("scaled"), "{out}");
}

#[test]
fn killed_instance_is_replaced_and_no_longer_routed() {
    let p = Platform::start();
    let app = example("python-app");
    p.pier_ok(&["push", "killy", "-i", "2"], app.path());
    let before = p.instance_ids("killy");
    let victim = before[0].clone();
    let started = Instant::now();
    docker_cli(&["kill", &victim]);
    // Every request after the kill is answered: the router drops the dead instance at once.
    for _ in 0..20 {
        assert_eq!(p.get_via_router("killy.localhost", "/").0, 200);
    }
    let after = eventually(Duration::from_secs(20), "replacement running", || {
        let ids = p.instance_ids("killy");
        (ids.len() == 2 && !ids.contains(&victim) && running(&p, "killy") == 2).then_some(ids)
    });
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(after.iter().filter(|id| before.contains(id)).count(), 1);
    assert_eq!(seen(&p, "killy.localhost", 20), BTreeSet::from([0, 1]));
    let ev = p.events("killy");
    assert!(
        ev.iter()
            .any(|e| e.kind == EventKind::Crashed && e.message.contains("exited with status 137")),
        "{ev:?}"
    );
}

#[test]
fn crashing_app_shows_crashed_and_backs_off() {
    let p = Platform::start_with(Options {
        crash_backoff_base_ms: Some(1500),
        ..Default::default()
    });
    let crash = fixture("crash-on-start");
    let out = p.pier(&["push", "crashy"], crash.path());
    assert!(!out.status.success());
    // Crashes 1 and 2 restart at once, then 1.5 s, 3 s, ...: wait for the fifth crash.
    let ev = eventually(Duration::from_secs(30), "five crashes", || {
        let ev = p.events("crashy");
        let crashes: Vec<_> = ev
            .into_iter()
            .filter(|e| e.kind == EventKind::Crashed)
            .collect();
        (crashes.len() >= 5).then_some(crashes)
    });
    let times: Vec<time::OffsetDateTime> = ev.iter().rev().map(|e| e.time).collect();
    let gap = |a: usize, b: usize| (times[b] - times[a]).as_seconds_f64();
    assert!(gap(2, 3) >= 1.4, "third wait >= base: {}", gap(2, 3));
    assert!(gap(3, 4) >= 2.9, "fourth wait doubles: {}", gap(3, 4));
    assert!(ev.iter().any(|e| e.message.contains("restarting in")));
    // While it waits it shows CRASHED with its crash count.
    let instance = eventually(Duration::from_secs(10), "CRASHED state", || {
        let first = p.app("crashy")?.instances.into_iter().next()?;
        (first.state == InstanceState::Crashed).then_some(first)
    });
    assert!(instance.crash_count >= 3);
    assert!(instance
        .reason
        .expect("a crashed instance says why")
        .contains("exited with status 3"));
}

#[test]
fn oom_kill_is_recorded_as_such() {
    let p = Platform::start();
    let app = fixture("oom");
    p.pier_ok(&["push"], app.path());
    let _ = p.get_via_router("hungry.localhost", "/eat");
    let ev = eventually(Duration::from_secs(30), "OOM crash event", || {
        p.events("hungry")
            .into_iter()
            .find(|e| e.kind == EventKind::Crashed)
    });
    assert!(ev.message.contains("out of memory"), "{ev:?}");
    eventually(Duration::from_secs(20), "restarted", || {
        (running(&p, "hungry") == 1).then_some(())
    });
}

#[test]
fn failing_health_check_replaces_the_instance() {
    let p = Platform::start();
    let app = fixture("flaky-health");
    p.pier_ok(&["push", "flaky"], app.path());
    p.pier_ok(
        &["set-health-check", "flaky", "http", "--endpoint", "/health"],
        app.path(),
    );
    // The new health check replaces the instance (a spec change); wait for it to settle.
    let first = eventually(
        Duration::from_secs(20),
        "one instance on the new check",
        || {
            let ids = p.instance_ids("flaky");
            (ids.len() == 1 && running(&p, "flaky") == 1).then(|| ids[0].clone())
        },
    );
    let (status, body) = p.get_via_router("flaky.localhost", "/break");
    assert_eq!(status, 200, "{body}");
    let replaced = eventually(Duration::from_secs(30), "a replacement", || {
        let ids = p.instance_ids("flaky");
        (ids.len() == 1 && ids[0] != first && running(&p, "flaky") == 1).then(|| ids[0].clone())
    });
    assert_ne!(replaced, first);
    let ev = p.events("flaky");
    assert!(
        ev.iter().any(|e| e.message.contains("health check failed")),
        "{ev:?}"
    );
    let (_, body) = p.get_via_router("flaky.localhost", "/");
    assert!(
        body.contains("broken=False"),
        "the new instance is healthy: {body}"
    );
}

#[test]
fn worker_processes_scale_on_their_own_and_get_no_route() {
    let p = Platform::start();
    let app = fixture("web-and-worker");
    p.pier_ok(&["push", "duo"], app.path());
    let procs: Vec<_> = p
        .app("duo")
        .unwrap()
        .processes
        .iter()
        .map(|p| p.kind.to_string())
        .collect();
    assert_eq!(procs, ["web", "worker"]);
    p.pier_ok(
        &["scale", "duo", "--process", "worker", "-i", "2"],
        app.path(),
    );
    eventually(Duration::from_secs(20), "two workers running", || {
        let workers = p
            .app("duo")?
            .instances
            .iter()
            .filter(|i| i.process.as_str() == "worker" && i.state == InstanceState::Running)
            .count();
        (workers == 2).then_some(())
    });
    let labels: Vec<_> = p
        .containers()
        .into_values()
        .filter(|l| l.get("pier.kind").map(String::as_str) == Some("instance"))
        .collect();
    assert_eq!(
        labels
            .iter()
            .filter(|l| l.get("pier.process").map(String::as_str) == Some("worker"))
            .count(),
        2
    );
    // Only web is routed.
    for _ in 0..10 {
        assert_eq!(
            p.get_via_router("duo.localhost", "/"),
            (200, "web".to_string())
        );
    }
    let out = p.pier(
        &["scale", "duo", "--process", "nope", "-i", "1"],
        app.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no process type"));
}

/// A controller whose stagings all start cold, so a container of kind `staging` shows one under
/// way (a warm staging container, `pier.kind=warm-staging`, waits before it is used).
fn cold_stagings() -> Platform {
    Platform::start_with(Options {
        controller_args: vec!["--warm-stagers".into(), "0".into()],
        ..Default::default()
    })
}

#[test]
fn concurrent_builds_of_one_app_are_refused_with_409() {
    let p = cold_stagings();
    let app = example("python-deps-app");
    p.pier_ok(&["push", "busy", "--no-start"], app.path());
    let busy = app_name("busy");
    let api = p.api();
    let first = p.spawn(async move {
        let events = api.build(&busy, &BuildRequest::default()).await?;
        futures_util::TryStreamExt::try_collect::<Vec<BuildEvent>>(events).await
    });
    // Once the first build is staging, a second one at the same time is refused.
    eventually(Duration::from_secs(10), "the first build staging", || {
        p.containers()
            .values()
            .any(|l| l.get("pier.kind").map(String::as_str) == Some("staging"))
            .then_some(())
    });
    let second = p
        .call(p.api().build(&app_name("busy"), &BuildRequest::default()))
        .err()
        .expect("a second build at once is refused");
    assert_eq!(second.status().map(|s| s.as_u16()), Some(409), "{second:?}");
    assert_eq!(second.code(), Some(ErrorCode::Conflict), "{second:?}");
    assert!(second.to_string().contains("in progress"), "{second}");
    let events = p.call(first).unwrap().expect("the first build streamed");
    assert!(
        events.iter().any(|e| matches!(e, BuildEvent::Done(_))),
        "{events:?}"
    );
}

#[test]
fn kill_9_mid_scale_and_mid_staging_then_converge() {
    let mut p = cold_stagings();
    let app = example("python-app");
    p.pier_ok(&["push", "sturdy"], app.path());
    // Mid-scale: the controller dies while it is creating containers.
    p.call(p.api().put_process(
        &app_name("sturdy"),
        &ProcessType::web(),
        &ProcessConfigRequest {
            instances: Some(6),
            ..Default::default()
        },
    ))
    .expect("scale to 6");
    p.controller.as_mut().unwrap().kill9();
    p.start_controller();
    eventually(Duration::from_secs(90), "6 running, no duplicates", || {
        (running(&p, "sturdy") == 6 && p.instance_ids("sturdy").len() == 6).then_some(())
    });
    assert_eq!(seen(&p, "sturdy.localhost", 60), (0..6).collect());

    // Mid-staging: kill -9 while a (cold, slower) staging runs.
    let deps = example("python-deps-app");
    p.pier_ok(&["push", "stager", "--no-start"], deps.path());
    let stager = app_name("stager");
    let api = p.api();
    let build = p.spawn(async move {
        // Cut off by the kill: the stream ends however it ends.
        if let Ok(events) = api.build(&stager, &BuildRequest::default()).await {
            let _ = futures_util::StreamExt::collect::<Vec<_>>(events).await;
        }
    });
    eventually(Duration::from_secs(10), "staging container", || {
        p.containers()
            .values()
            .any(|l| l.get("pier.kind").map(String::as_str) == Some("staging"))
            .then_some(())
    });
    p.controller.as_mut().unwrap().kill9();
    let _ = p.call(build);
    p.start_controller();
    eventually(Duration::from_secs(20), "staging container removed", || {
        (!p.containers()
            .values()
            .any(|l| l.get("pier.kind").map(String::as_str) == Some("staging")))
        .then_some(())
    });
    let ev = p.events("stager");
    assert!(
        ev.iter().any(|e| e.kind == EventKind::StagingFailed),
        "{ev:?}"
    );
    // Nothing stuck: it stages fine now.
    p.pier_ok(&["restage", "stager"], deps.path());
    assert_eq!(running(&p, "sturdy"), 6);
    assert_eq!(p.instance_ids("sturdy").len(), 6);
}

#[test]
fn killing_every_app_container_converges_back() {
    let p = Platform::start();
    let app = example("python-app");
    p.pier_ok(&["push", "phoenix", "-i", "3"], app.path());
    let ids = p.instance_ids("phoenix");
    let mut args = vec!["kill"];
    args.extend(ids.iter().map(String::as_str));
    docker_cli(&args);
    eventually(Duration::from_secs(30), "3 new instances", || {
        let now = p.instance_ids("phoenix");
        (now.len() == 3 && now.iter().all(|i| !ids.contains(i)) && running(&p, "phoenix") == 3)
            .then_some(())
    });
    assert_eq!(seen(&p, "phoenix.localhost", 30), BTreeSet::from([0, 1, 2]));
}

#[test]
fn standby_instances_are_routed_at_once_by_a_scale_up() {
    let p = Platform::start_with(Options {
        controller_args: vec!["--standby-instances".into(), "2".into()],
        ..Default::default()
    });
    let app = example("python-app");
    p.pier_ok(&["push", "warm", "-i", "1"], app.path());
    // One listed instance; two standby instances started behind it, healthy, unlisted, unrouted.
    eventually(
        Duration::from_secs(60),
        "two standby instances ready",
        || (p.app("warm")?.standby_ready == 2 && p.instance_ids("warm").len() == 3).then_some(()),
    );
    assert_eq!(p.app("warm").unwrap().instances.len(), 1);
    assert_eq!(seen(&p, "warm.localhost", 30), BTreeSet::from([0]));
    let out = p.pier_ok(&["app", "warm"], app.path());
    assert!(
        out.contains("standby:") && out.contains("2 instances"),
        "{out}"
    );
    let warm: BTreeSet<String> = p.instance_ids("warm").into_iter().collect();

    // Scaling to 3 lists and routes the standby containers themselves: nothing new is started
    // for indexes 1 and 2.
    let t = Instant::now();
    p.pier_ok(&["scale", "warm", "-i", "3"], app.path());
    let took = t.elapsed();
    let a = p.app("warm").unwrap();
    assert_eq!(a.instances.len(), 3, "{:?}", a.instances);
    for i in &a.instances {
        assert_eq!(i.state, InstanceState::Running, "{i:?}");
        let c = i.container_id.clone().unwrap();
        assert!(
            warm.contains(&c),
            "index {} runs {c}, not a standby container",
            i.index
        );
    }
    assert!(took < Duration::from_secs(5), "scale took {took:?}");
    let want = BTreeSet::from([0, 1, 2]);
    let ok = (0..50).any(|_| {
        seen(&p, "warm.localhost", 40) == want || {
            std::thread::sleep(Duration::from_millis(100));
            false
        }
    });
    assert!(ok, "traffic never reached all of {want:?}");
    // New standbys (indexes 3 and 4) are started behind the three.
    eventually(Duration::from_secs(60), "standby refilled", || {
        (p.app("warm")?.standby_ready == 2 && p.instance_ids("warm").len() == 5).then_some(())
    });

    // A delete takes the standby instances too.
    p.pier_ok(&["delete", "warm", "-f"], app.path());
    eventually(Duration::from_secs(60), "all containers gone", || {
        p.instance_ids("warm").is_empty().then_some(())
    });
}

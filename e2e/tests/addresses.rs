//! Instance addresses (docs/router.md, "Never misroute", C2 and C4): instances live on the
//! controller's own network at addresses it hands out, and a released address goes to no other
//! instance until the quarantine has passed and every standalone router heard from recently has
//! acknowledged the route table that removed it.
//!
//! Each test gets a /29 of its own (5 addresses for instances: .2 to .6) and a short quarantine.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use pier_e2e::pier_api::{EventKind, InstanceState, ProcessConfigRequest, ProcessType};
use pier_e2e::*;

fn example(name: &str) -> tempfile::TempDir {
    copy_dir(&repo_root().join("examples").join(name))
}

/// Sets an app's web instances through the API, without waiting for them (`pier scale` waits).
fn scale_no_wait(p: &Platform, app: &str, n: u32) {
    let scale = ProcessConfigRequest {
        instances: Some(n),
        ..Default::default()
    };
    p.call(
        p.api()
            .put_process(&app_name(app), &ProcessType::web(), &scale),
    )
    .unwrap_or_else(|e| panic!("scale {app} to {n}: {e}"));
}

/// The message of the app's `no_address` event, once there is one.
fn no_address_event(p: &Platform, app: &str) -> String {
    eventually(Duration::from_secs(20), "a no_address event", || {
        p.events(app)
            .into_iter()
            .find(|e| e.kind == EventKind::NoAddress)
            .map(|e| e.message)
    })
}

fn ips(p: &Platform, app: &str) -> BTreeSet<String> {
    p.instance_ips(app).into_values().collect()
}

/// Checks for `d` that no more than `n` containers of the controller exist (none started on a
/// quarantined address, nothing else started either) and that none sits on an address in `not`.
fn stays_at(p: &Platform, n: usize, not: &BTreeSet<String>, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        let all = p.containers();
        assert!(
            all.len() <= n,
            "{} containers, expected {n}: {all:?}",
            all.len()
        );
        let net = p.network_name();
        for id in all.keys() {
            if let Some(ip) = container_ip(id, &net) {
                assert!(
                    !not.contains(&ip),
                    "container {id} got {ip}, still in quarantine"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Indexes of the instances that answered `n` requests through the router.
fn seen(p: &Platform, host: &str, n: usize) -> BTreeSet<u32> {
    (0..n)
        .filter_map(|_| {
            let (s, body) = p.get_via_router(host, "/");
            (s == 200).then_some(())?;
            body.split("instance=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn a_released_address_waits_for_the_routers_acknowledgement() {
    let mut p = Platform::start_with(Options {
        standalone_router: true,
        instance_subnet_prefix: Some(29),
        // The paused router holds the drain of `first` too (it has not acknowledged the table
        // without it): up to the drain timeout, kept short here.
        // `stays_at` counts every container of the controller: no warm staging ones.
        controller_args: vec![
            "--address-quarantine-secs".into(),
            "6".into(),
            "--drain-timeout-secs".into(),
            "5".into(),
            "--warm-stagers".into(),
            "0".into(),
        ],
        ..Default::default()
    });
    let subnet = p.instance_subnet.clone().unwrap();
    let app = example("python-app");
    p.pier_ok(&["push", "first"], app.path());
    let a_ip = ips(&p, "first")
        .into_iter()
        .next()
        .expect("first's address");
    let body = eventually(Duration::from_secs(10), "first through the router", || {
        let (s, b) = p.get_via_router("first.localhost", "/");
        (s == 200).then_some(b)
    });
    assert!(body.contains("Hello from Pier"), "{body}");

    // From here the router cannot poll, so it acknowledges no table that removes `first`.
    p.pause_router();
    p.pier_ok(&["scale", "first", "-i", "0"], app.path());
    eventually(Duration::from_secs(30), "first's container gone", || {
        p.instance_ids("first").is_empty().then_some(())
    });
    let released = Instant::now();

    // The four other addresses go to `second`; the fifth instance finds none.
    p.pier_ok(&["push", "second", "-i", "4"], app.path());
    let b_ips = ips(&p, "second");
    assert_eq!(b_ips.len(), 4, "{b_ips:?}");
    assert!(!b_ips.contains(&a_ip), "{a_ip} reused while quarantined");
    scale_no_wait(&p, "second", 5);
    let msg = no_address_event(&p, "second");
    assert!(
        msg.contains(&format!(
            "no free instance address in {subnet}: 4 in use, 1 in quarantine until"
        )) && msg.contains("router(s) ")
            && msg.contains("acknowledge the route table that removed them"),
        "{msg}"
    );
    // The id named is the paused router's.
    let router_id = msg
        .split("router(s) ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    p.router_proc
        .as_mut()
        .unwrap()
        .wait_for_line(&router_id, Duration::from_secs(1));

    // Well past the quarantine, the unacknowledged router still holds the address back.
    let quarantine_over = released + Duration::from_secs(6);
    let wait = quarantine_over.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
    stays_at(&p, 4, &BTreeSet::from([a_ip.clone()]), wait);
    let second = p.app("second").expect("second exists");
    assert!(
        second.instances.iter().any(|i| i
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("no free instance address"))),
        "{second:?}"
    );

    // The router polls again with the table it has, gets the new one, acknowledges it; the
    // address is given out again, to the only instance waiting for one.
    p.resume_router();
    let all = eventually(Duration::from_secs(60), "second's fifth instance", || {
        let m = p.instance_ips("second");
        (m.len() == 5).then_some(m)
    });
    let now: BTreeSet<String> = all.into_values().collect();
    assert!(now.contains(&a_ip), "{now:?} should reuse {a_ip}");
    let ok = (0..50).any(|_| {
        seen(&p, "second.localhost", 25) == BTreeSet::from([0, 1, 2, 3, 4]) || {
            std::thread::sleep(Duration::from_millis(200));
            false
        }
    });
    assert!(ok, "every instance of second is routed");
    assert_eq!(p.get_via_router("first.localhost", "/").0, 503);
}

#[test]
fn with_every_free_address_in_quarantine_nothing_starts_until_it_ends() {
    const QUARANTINE: u64 = 25;
    let p = Platform::start_with(Options {
        instance_subnet_prefix: Some(29),
        // `stays_at` counts every container of the controller: no warm staging ones.
        controller_args: vec![
            "--address-quarantine-secs".into(),
            QUARANTINE.to_string(),
            "--warm-stagers".into(),
            "0".into(),
        ],
        ..Default::default()
    });
    let subnet = p.instance_subnet.clone().unwrap();
    let app = example("python-app");
    p.pier_ok(&["push", "full", "-i", "5"], app.path());
    let before: HashMap<String, String> = p.instance_ips("full");
    assert_eq!(before.len(), 5, "{before:?}");
    let all_five: BTreeSet<String> = before.values().cloned().collect();
    assert_eq!(all_five.len(), 5, "five distinct addresses: {all_five:?}");
    // Never the network (.0), gateway (.1) or broadcast (.7) address of the /29.
    let last_octet = |ip: &str| -> u8 { ip.rsplit('.').next().unwrap().parse().unwrap() };
    let base = last_octet(subnet.split('/').next().unwrap());
    let octets: BTreeSet<u8> = all_five.iter().map(|ip| last_octet(ip) - base).collect();
    assert_eq!(
        octets,
        BTreeSet::from([2, 3, 4, 5, 6]),
        "{all_five:?} in {subnet}"
    );

    p.pier_ok(&["scale", "full", "-i", "3"], app.path());
    eventually(Duration::from_secs(30), "two containers gone", || {
        (p.instance_ids("full").len() == 3).then_some(())
    });
    let released_at = Instant::now();
    let kept = ips(&p, "full");
    let released: BTreeSet<String> = all_five.difference(&kept).cloned().collect();
    assert_eq!(released.len(), 2, "{released:?}");

    scale_no_wait(&p, "full", 5);
    let msg = no_address_event(&p, "full");
    assert!(
        msg.contains(&format!(
            "no free instance address in {subnet}: 3 in use, 2 in quarantine until "
        )),
        "{msg}"
    );
    assert!(!msg.contains("router(s)"), "no standalone router: {msg}");
    // `pier app` shows why the instances are not running.
    let app_view = p.app("full").unwrap();
    let waiting: Vec<_> = app_view
        .instances
        .iter()
        .filter(|i| i.state == InstanceState::Starting)
        .collect();
    assert_eq!(waiting.len(), 2, "{app_view:?}");
    assert!(
        waiting.iter().all(|i| i
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("no free instance address")),
        "{app_view:?}"
    );

    // Until the quarantine ends nothing else starts, on a reused address or any other.
    let left = (released_at + Duration::from_secs(QUARANTINE))
        .saturating_duration_since(Instant::now())
        .saturating_sub(Duration::from_secs(2));
    assert!(
        left > Duration::from_secs(5),
        "the test was too slow to watch"
    );
    stays_at(&p, 3, &released, left);

    // Then the two instances start, on the two released addresses (the only ones there are).
    let after = eventually(Duration::from_secs(60), "five instances again", || {
        let m = p.instance_ips("full");
        (m.len() == 5).then_some(m)
    });
    assert!(
        released_at.elapsed() >= Duration::from_secs(QUARANTINE),
        "started before the quarantine ended"
    );
    let now: BTreeSet<String> = after.into_values().collect();
    assert_eq!(now, all_five);
    let ok = (0..50).any(|_| {
        seen(&p, "full.localhost", 25) == BTreeSet::from([0, 1, 2, 3, 4]) || {
            std::thread::sleep(Duration::from_millis(200));
            false
        }
    });
    assert!(ok, "every instance routed");
}

#[test]
fn the_network_is_labelled_kept_across_a_restart_and_removed_with_the_platform() {
    let mut p = Platform::start();
    let net = p.network_name();
    assert_eq!(networks(&p.controller_id).len(), 1);
    let app = example("python-app");
    p.pier_ok(&["push", "steady", "-i", "2"], app.path());
    let ids = p.instance_ids("steady");
    let before = p.instance_ips("steady");
    assert_eq!(before.len(), 2);
    // Instances are on the controller's network and on no other.
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
            &ids[0],
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), net);

    // A restarted controller adopts the network and the instances with their addresses.
    p.controller.take().unwrap().kill9();
    p.start_controller();
    eventually(Duration::from_secs(30), "instances adopted", || {
        let running = p
            .app("steady")?
            .instances
            .iter()
            .filter(|i| i.state == InstanceState::Running)
            .count();
        (running == 2).then_some(())
    });
    assert_eq!(p.instance_ids("steady"), ids, "same containers");
    assert_eq!(p.instance_ips("steady"), before, "same addresses");
    assert_eq!(networks(&p.controller_id).len(), 1, "no second network");
    let id = p.controller_id.clone();
    drop(p);
    assert!(networks(&id).is_empty(), "the harness removed the network");
}

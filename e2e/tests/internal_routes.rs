//! Internal routes (`apps.internal`), checked from inside real instance containers: an app's
//! internal route resolves, in its own space only, to its healthy instances, which answer on
//! their port 8080 directly; an instance that goes is no longer answered; the routers do not
//! serve the name; a restarted controller answers again, and the instances it adopted keep
//! resolving.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use pier_e2e::*;

/// What `name` resolves to from inside `container` (its IPv4 addresses), or the resolver's error.
fn resolve_from(container: &str, name: &str) -> Result<BTreeSet<String>, String> {
    let code = format!(
        "import socket,sys\ntry:\n print(' '.join(sorted({{a[4][0] for a in socket.getaddrinfo('{name}', 8080, socket.AF_INET)}})))\nexcept socket.gaierror as e:\n print(e); sys.exit(3)"
    );
    let out = Command::new("docker")
        .args(["exec", container, "python3", "-c", &code])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match out.status.code() {
        Some(0) => Ok(text.split_whitespace().map(str::to_string).collect()),
        Some(3) => Err(text),
        _ => panic!(
            "docker exec in {container} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `GET url` from inside `container`: the body, or the error.
fn get_from(container: &str, url: &str) -> Result<String, String> {
    let code = format!(
        "import urllib.request,sys\ntry:\n print(urllib.request.urlopen('{url}', timeout=5).read().decode())\nexcept Exception as e:\n print(e); sys.exit(3)"
    );
    let out = Command::new("docker")
        .args(["exec", container, "python3", "-c", &code])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{text} {}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn ips(p: &Platform, app: &str) -> BTreeSet<String> {
    p.instance_ips(app).into_values().collect()
}

#[test]
fn an_internal_route_resolves_in_its_space_to_healthy_instances_only() {
    let mut p = Platform::start();
    let app = copy_dir(&repo_root().join("examples/python-app"));
    let dir = app.path();
    p.pier_ok(&["push", "a"], dir);
    p.pier_ok(&["push", "b", "-i", "2"], dir);
    let out = p.pier_ok(&["map-route", "b", "apps.internal", "--hostname", "b"], dir);
    assert!(out.contains("Mapped b.apps.internal to b"), "{out}");
    let routes = p.pier_ok(&["routes"], dir);
    assert!(routes.contains("http://b.apps.internal:8080"), "{routes}");

    // From an instance of a, in the same space: b's two instances, and b answers on 8080.
    let a = p.instance_ids("a")[0].clone();
    let b_ips = ips(&p, "b");
    assert_eq!(b_ips.len(), 2);
    assert_eq!(resolve_from(&a, "b.apps.internal"), Ok(b_ips.clone()));
    assert_eq!(
        resolve_from(&a, "B.Apps.Internal"),
        Ok(b_ips.clone()),
        "any case"
    );
    let body = get_from(&a, "http://b.apps.internal:8080/").unwrap();
    assert!(body.contains("Hello from Pier!"), "{body}");
    // What a lookup costs, through Docker's resolver and the controller's (printed, not judged).
    let code = "import socket,time\nt=[]\nfor _ in range(200):\n s=time.perf_counter(); socket.getaddrinfo('b.apps.internal', 8080, socket.AF_INET); t.append(time.perf_counter()-s)\nt.sort(); print('%.2f %.2f' % (t[100]*1000, t[198]*1000))";
    let out = Command::new("docker")
        .args(["exec", &a, "python3", "-c", code])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "b.apps.internal lookups from an instance (200): median, p99 in ms: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    // Unknown names of the domain do not resolve.
    assert!(resolve_from(&a, "nope.apps.internal").is_err());

    // The routers do not serve it: 404, as for any unknown host.
    let (status, body) = p.get_via_router("b.apps.internal", "/");
    assert_eq!(status, 404, "{body}");
    assert_eq!(p.get_via_router("b.localhost", "/").0, 200);

    // From another space the name does not resolve (and b's addresses are not reachable there).
    p.pier_ok(&["create-org", "acme"], dir);
    p.pier_ok(&["create-space", "other", "-o", "acme"], dir);
    p.pier_ok(&["push", "c", "-o", "acme", "-s", "other"], dir);
    let c = p.instance_ids("c")[0].clone();
    let err = resolve_from(&c, "b.apps.internal").unwrap_err();
    assert!(err.contains("Name or service not known"), "{err}");

    // An instance of b that dies is no longer answered, the other still is.
    let b_ids = p.instance_ids("b");
    let gone = container_ip(&b_ids[0], &p.network_name()).unwrap();
    let status = Command::new("docker")
        .args(["kill", &b_ids[0]])
        .status()
        .unwrap();
    assert!(status.success());
    eventually(
        Duration::from_secs(20),
        "the dead instance unanswered",
        || {
            let now = resolve_from(&a, "b.apps.internal").ok()?;
            (!now.contains(&gone) && !now.is_empty()).then_some(())
        },
    );

    // Its replacement is answered once it is healthy.
    eventually(Duration::from_secs(30), "the replacement answered", || {
        let now = resolve_from(&a, "b.apps.internal").ok()?;
        (now.len() == 2 && !now.contains(&gone)).then_some(())
    });

    // Stopped: nothing answers.
    p.pier_ok(&["stop", "b"], dir);
    eventually(Duration::from_secs(20), "a stopped app unanswered", || {
        resolve_from(&a, "b.apps.internal").is_err().then_some(())
    });
    eventually(Duration::from_secs(30), "b's containers gone", || {
        p.instance_ids("b").is_empty().then_some(())
    });

    // A restarted controller listens again; the instances it adopted resolve as before.
    p.pier_ok(&["start", "b"], dir);
    p.controller.take();
    p.start_controller();
    let b_ips = eventually(Duration::from_secs(60), "b running again", || {
        let now = ips(&p, "b");
        (now.len() == 2).then_some(now)
    });
    let now = eventually(
        Duration::from_secs(30),
        "answered after the restart",
        || resolve_from(&a, "b.apps.internal").ok(),
    );
    assert_eq!(now, b_ips);
    assert!(get_from(&a, "http://b.apps.internal:8080/")
        .unwrap()
        .contains("Hello from Pier!"));
}

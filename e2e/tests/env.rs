//! `pier env`, `set-env`, `unset-env` end to end: the real binary, a real controller and Docker. A
//! change reaches a running app through a rolling deployment with no failed request, is named
//! (never valued) in events and revisions, and `--no-restart` stores it for later.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use pier_e2e::*;

/// examples/python-app answering with its GREETING env var.
fn greeting_app() -> tempfile::TempDir {
    let dir = copy_dir(&repo_root().join("examples").join("python-app"));
    let app = dir.path().join("app.py");
    let src = std::fs::read_to_string(&app).unwrap().replace(
        "f\"Hello from Pier! version=",
        "f\"Hello from Pier! greeting={os.environ.get('GREETING', 'none')} version=",
    );
    assert!(
        src.contains("greeting="),
        "the example changed: update this test"
    );
    std::fs::write(&app, src).unwrap();
    dir
}

#[test]
fn set_env_deploys_rolling_without_failed_requests_and_never_shows_the_value_back() {
    let p = Platform::start();
    let app = greeting_app();
    let dir = app.path();
    p.pier_ok(&["push", "hello"], dir);
    let (status, body) = p.get_via_router("hello.localhost", "/");
    assert_eq!(
        (status, body.contains("greeting=none")),
        (200, true),
        "{body}"
    );

    // Requests all along the change, counting every one that fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let poller = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let router = p.router.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (s, _) = http_get(&format!("{router}/"), Some("hello.localhost"), None);
                if s == 200 { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    let out = p.pier_ok(&["set-env", "hello", "GREETING", "hi-s3cret"], dir);
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    assert!(
        !out.contains("hi-s3cret"),
        "set-env printed the value: {out}"
    );
    let (status, body) = p.get_via_router("hello.localhost", "/");
    assert_eq!(
        (status, body.contains("greeting=hi-s3cret")),
        (200, true),
        "{body}"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during the change"
    );
    assert!(ok.load(Ordering::Relaxed) > 5);

    let out = p.pier_ok(&["revisions", "hello"], dir);
    assert!(out.contains("env changed"), "{out}");
    let out = p.pier_ok(&["events", "hello"], dir);
    assert!(
        out.contains("GREETING set") && !out.contains("hi-s3cret"),
        "{out}"
    );
    let out = p.pier_ok(&["env", "hello"], dir);
    assert!(out.contains("GREETING: hi-s3cret"), "{out}");
    assert!(out.contains("\"space_name\": \"default\""), "{out}");
    assert!(out.contains("VCAP_SERVICES: {}"), "{out}");

    // A refused change says why and changes nothing.
    let before = p.pier_ok(&["env", "hello", "--json"], dir);
    let out = p.pier(&["set-env", "hello", "VCAP_APPLICATION", "evil"], dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("set by the platform"), "{err}");
    assert_eq!(p.pier_ok(&["env", "hello", "--json"], dir), before);

    // --no-restart stores it: the app keeps the old value until the next deployment.
    let out = p.pier_ok(&["unset-env", "hello", "GREETING", "--no-restart"], dir);
    assert!(out.contains("Stored"), "{out}");
    let (_, body) = p.get_via_router("hello.localhost", "/");
    assert!(body.contains("greeting=hi-s3cret"), "{body}");
    let out = p.pier_ok(&["env", "hello"], dir);
    assert!(!out.contains("GREETING"), "{out}");
    assert!(out.contains("do not have these yet"), "{out}");
    p.pier_ok(&["restart", "hello"], dir);
    let (_, body) = p.get_via_router("hello.localhost", "/");
    assert!(body.contains("greeting=none"), "{body}");
}

/// The env of a running container, from `docker inspect`.
fn container_env(id: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{json .Config.Env}}", id])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_user_provided_service_reaches_the_app_as_vcap_services_and_goes_only_when_unbound() {
    let p = Platform::start();
    let app = greeting_app();
    let dir = app.path();
    p.pier_ok(&["push", "hello"], dir);
    p.pier_ok(
        &[
            "create-user-provided-service",
            "smtp",
            "-p",
            r#"{"host":"mail","password":"s3cret"}"#,
            "-t",
            "mail",
        ],
        dir,
    );
    // -p k1,k2 asks for each value on stdin.
    let mut child = p
        .pier_command(["cups", "db", "-p", "user,password"])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"admin\npw-db-77\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = p.pier_ok(&["bind-service", "hello", "smtp"], dir);
    assert!(out.contains("Deploying hello"), "{out}");
    let ids = eventually(
        std::time::Duration::from_secs(20),
        "the old instance gone",
        || {
            let ids = p.instance_ids("hello");
            (ids.len() == 1).then_some(ids)
        },
    );
    let env = container_env(&ids[0]);
    let vcap = env
        .iter()
        .find_map(|e| e.strip_prefix("VCAP_SERVICES="))
        .unwrap();
    let vcap: serde_json::Value = serde_json::from_str(vcap).unwrap();
    assert_eq!(vcap["user-provided"][0]["name"], "smtp");
    assert_eq!(
        vcap["user-provided"][0]["credentials"]["password"],
        "s3cret"
    );
    assert_eq!(vcap["user-provided"][0]["tags"][0], "mail");
    let (status, _) = p.get_via_router("hello.localhost", "/");
    assert_eq!(status, 200);
    let out = p.pier_ok(&["services"], dir);
    assert!(out.contains("smtp") && out.contains("hello"), "{out}");
    let out = p.pier_ok(&["service", "db", "--json"], dir);
    assert!(
        out.contains("pw-db-77"),
        "the prompted value was stored: {out}"
    );
    let out = p.pier_ok(&["revisions", "hello"], dir);
    assert!(out.contains("services changed"), "{out}");

    // Bound: not deleted, nothing changed.
    let out = p.pier(&["delete-service", "smtp", "-f"], dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is bound to hello"), "{err}");
    assert!(p.pier_ok(&["services"], dir).contains("smtp"));

    p.pier_ok(&["unbind-service", "hello", "smtp"], dir);
    let ids = eventually(
        std::time::Duration::from_secs(20),
        "the old instance gone",
        || {
            let ids = p.instance_ids("hello");
            (ids.len() == 1).then_some(ids)
        },
    );
    let env = container_env(&ids[0]);
    assert!(env.iter().any(|e| e == "VCAP_SERVICES={}"), "{env:?}");
    p.pier_ok(&["delete-service", "smtp", "-f"], dir);
    assert!(!p.pier_ok(&["services"], dir).contains("smtp"));
}

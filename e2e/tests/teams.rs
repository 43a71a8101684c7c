//! Orgs and spaces end to end: the real `pier` binary against a real controller and Docker.
//! `pier target` keeps the org and space, every app command acts there, `-o/-s` override it for
//! one command, and deleting a space deletes its apps and their containers.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::time::Duration;

use pier_e2e::*;

fn example(name: &str) -> tempfile::TempDir {
    copy_dir(&repo_root().join("examples").join(name))
}

/// `pier apps --json` in the given space (`-o/-s`), as app names.
fn apps_in(p: &Platform, org: &str, space: &str, cwd: &std::path::Path) -> Vec<String> {
    let out = p.pier(&["apps", "--json", "-o", org, "-s", space], cwd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let apps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    apps.as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn target_org_and_space_push_there_and_delete_the_space_with_its_apps() {
    let p = Platform::start();
    let app = example("python-app");
    let dir = app.path();
    p.pier_ok(&["create-org", "acme"], dir);
    p.pier_ok(&["create-space", "dev", "-o", "acme"], dir);
    // The org's only space is targeted with it.
    let out = p.pier_ok(&["target", "-o", "acme"], dir);
    assert!(out.contains("org:          acme"), "{out}");
    assert!(out.contains("space:        dev"), "{out}");

    let out = p.pier_ok(&["push", "hello"], dir);
    assert!(out.contains("hello.localhost"), "{out}");
    let (status, body) = p.get_via_router("hello.localhost", "/");
    assert_eq!((status, body.contains("version=1")), (200, true), "{body}");
    assert_eq!(apps_in(&p, "acme", "dev", dir), ["hello"]);
    assert!(
        apps_in(&p, "default", "default", dir).is_empty(),
        "not in the default space"
    );
    // `pier apps` with no flags lists the target's apps.
    let out = p.pier_ok(&["apps"], dir);
    assert!(out.contains("hello"), "{out}");

    // A space that does not exist is refused before anything is saved.
    let out = p.pier(&["target", "-s", "nope"], dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("space nope in org acme does not exist"),
        "{err}"
    );
    let out = p.pier_ok(&["target"], dir);
    assert!(out.contains("space:        dev"), "target unchanged: {out}");

    assert_eq!(p.instance_ids("hello").len(), 1);
    let out = p.pier_ok(&["delete-space", "dev", "-f"], dir);
    assert!(out.contains("Deleted space dev of org acme"), "{out}");
    assert!(out.contains("cleared"), "the target named it: {out}");
    eventually(Duration::from_secs(30), "the app's containers gone", || {
        p.instance_ids("hello").is_empty().then_some(())
    });
    let out = p.pier_ok(&["spaces", "-o", "acme"], dir);
    assert!(out.contains("has no spaces"), "{out}");
}

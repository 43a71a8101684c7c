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

const PW: &str = "Tr0ub4dor-and-3";

/// The real `pier` logged in as a user: its own config dir, no admin token in its environment.
struct UserCli {
    home: tempfile::TempDir,
    api: String,
}

impl UserCli {
    fn login(p: &Platform, name: &str, cwd: &std::path::Path) -> UserCli {
        let u = UserCli {
            home: tempfile::tempdir().unwrap(),
            api: p.api.clone(),
        };
        let out = u.pier(
            &["login", "--api", &u.api.clone(), "-u", name, "-p", PW],
            cwd,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        u
    }

    fn pier(&self, args: &[&str], cwd: &std::path::Path) -> std::process::Output {
        std::process::Command::new(bin("pier"))
            .args(args)
            .current_dir(cwd)
            .env("PIER_HOME", self.home.path())
            .env_remove("PIER_TOKEN")
            .env_remove("PIER_API")
            .env_remove("PIER_API_URL")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str], cwd: &std::path::Path) -> String {
        let out = self.pier(args, cwd);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "pier {args:?} failed:\n{text}");
        text
    }

    /// Runs a command that must fail; its stderr.
    fn refused(&self, args: &[&str], cwd: &std::path::Path) -> String {
        let out = self.pier(args, cwd);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "pier {args:?} should fail: {err}");
        err
    }
}

#[test]
fn roles_decide_what_each_user_sees_and_does_with_the_real_binary() {
    let p = Platform::start();
    let app = example("python-app");
    let dir = app.path();
    p.pier_ok(&["create-org", "acme"], dir);
    p.pier_ok(&["create-space", "dev", "-o", "acme"], dir);
    p.pier_ok(&["create-space", "prod", "-o", "acme"], dir);
    for u in ["alice", "bob", "carol"] {
        p.pier_ok(&["create-user", u, "-p", PW], dir);
    }
    // A role name that does not exist is refused before anything is sent.
    let out = p.pier(&["set-space-role", "bob", "acme", "dev", "Owner"], dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown role \"Owner\""), "{err}");
    p.pier_ok(
        &["set-space-role", "alice", "acme", "dev", "SpaceDeveloper"],
        dir,
    );
    p.pier_ok(
        &["set-space-role", "bob", "acme", "prod", "SpaceDeveloper"],
        dir,
    );
    p.pier_ok(
        &["set-space-role", "carol", "acme", "dev", "SpaceAuditor"],
        dir,
    );
    let out = p.pier_ok(&["space-users", "acme", "dev"], dir);
    assert!(out.contains("SPACE DEVELOPER\n  alice"), "{out}");
    assert!(out.contains("SPACE AUDITOR\n  carol"), "{out}");
    assert!(out.contains("No SPACE MANAGER found"), "{out}");
    let out = p.pier_ok(&["org-users", "acme", "--json"], dir);
    let holders: serde_json::Value = serde_json::from_slice(out.as_bytes()).unwrap();
    assert_eq!(holders.as_array().unwrap().len(), 3, "{holders}");

    // alice pushes into acme/dev with a secret in her manifest's env.
    let alice = UserCli::login(&p, "alice", dir);
    alice.ok(&["target", "-o", "acme", "-s", "dev"], dir);
    std::fs::write(
        dir.join("manifest.yml"),
        "applications:\n- name: hello\n  env:\n    SECRET: s3cret\n",
    )
    .unwrap();
    let out = alice.ok(&["push", "hello"], dir);
    assert!(out.contains("hello.localhost"), "{out}");
    let (status, _) = p.get_via_router("hello.localhost", "/");
    assert_eq!(status, 200);
    alice.ok(&["scale", "hello", "-i", "2"], dir);
    let out = p.pier_ok(&["events", "hello", "-o", "acme", "-s", "dev"], dir);
    assert!(out.contains("alice"), "events name the actor: {out}");

    // bob, a developer of prod, sees nothing of dev: every command says the space is not found.
    let bob = UserCli::login(&p, "bob", dir);
    let before = p.pier_ok(&["app", "hello", "--json", "-o", "acme", "-s", "dev"], dir);
    for args in [
        vec!["app", "hello"],
        vec!["apps"],
        vec!["logs", "hello", "--recent"],
        vec!["scale", "hello", "-i", "5"],
        vec!["stop", "hello"],
        vec!["events", "hello"],
        vec!["delete", "hello", "-f"],
        vec!["map-route", "hello", "localhost", "--hostname", "stolen"],
    ] {
        let mut a = args.clone();
        a.extend(["-o", "acme", "-s", "dev"]);
        let err = bob.refused(&a, dir);
        assert!(
            err.contains("space dev not found in org acme"),
            "{a:?}: {err}"
        );
    }
    let out = bob.ok(&["spaces", "-o", "acme"], dir);
    assert!(out.contains("prod") && !out.contains("dev"), "{out}");

    // carol audits dev: reads, sees no env value, changes nothing.
    let carol = UserCli::login(&p, "carol", dir);
    let out = carol.ok(&["app", "hello", "--json", "-o", "acme", "-s", "dev"], dir);
    assert!(
        out.contains("[PRIVATE DATA HIDDEN]") && !out.contains("s3cret"),
        "{out}"
    );
    for args in [
        vec!["scale", "hello", "-i", "5"],
        vec!["stop", "hello"],
        vec!["restart", "hello"],
        vec!["delete", "hello", "-f"],
    ] {
        let mut a = args.clone();
        a.extend(["-o", "acme", "-s", "dev"]);
        let err = carol.refused(&a, dir);
        assert!(err.contains("carol may not call"), "{a:?}: {err}");
    }
    let after = p.pier_ok(&["app", "hello", "--json", "-o", "acme", "-s", "dev"], dir);
    let instances = |s: &str| {
        let v: serde_json::Value = serde_json::from_slice(s.as_bytes()).unwrap();
        (v["state"].clone(), v["processes"][0]["instances"].clone())
    };
    assert_eq!(instances(&before), instances(&after), "nothing changed");
    assert_eq!(
        p.instance_ids("hello").len(),
        2,
        "nothing stopped or started"
    );

    // Taking alice's role away counts on her next command.
    p.pier_ok(
        &["unset-space-role", "alice", "acme", "dev", "SpaceDeveloper"],
        dir,
    );
    let err = alice.refused(&["app", "hello"], dir);
    assert!(err.contains("space dev not found in org acme"), "{err}");
}

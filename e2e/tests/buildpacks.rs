//! Buildpacks and manifests end to end (issue 6): every built-in buildpack on an example app,
//! third-party buildpacks (pushed with the app, and admin-installed with positions), multi-buildpack
//! supply + finalize, a failing buildpack, and a manifest with two apps, variables and processes.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pier_e2e::pier_api::{AppConfigRequest, BuildpackResponse, HealthCheckType, InstanceState};
use pier_e2e::*;

fn example(name: &str) -> tempfile::TempDir {
    copy_dir(&repo_root().join("examples").join(name))
}

fn fixture(name: &str) -> tempfile::TempDir {
    copy_dir(&repo_root().join("e2e/fixtures").join(name))
}

/// copy_dir loses modes; buildpack scripts must stay executable.
fn buildpack(name: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = fixture(name);
    for e in std::fs::read_dir(d.path().join("bin")).unwrap().flatten() {
        std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    d
}

fn output(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs pier and expects it to fail; returns everything it printed.
fn pier_fails(p: &Platform, args: &[&str], cwd: &Path) -> String {
    let out = p.pier(args, cwd);
    let text = output(&out);
    assert!(!out.status.success(), "pier {args:?} should fail:\n{text}");
    text
}

fn env<'a>(app: &'a pier_e2e::pier_api::AppResponse, name: &str) -> Option<&'a str> {
    app.env.get(name).map(String::as_str)
}

fn body_of(p: &Platform, host: &str) -> String {
    let (status, body) = p.get_via_router(host, "/");
    assert_eq!(status, 200, "{host}: {body}");
    body
}

fn buildpack_names(p: &Platform, cwd: &Path) -> Vec<String> {
    let all: Vec<BuildpackResponse> =
        serde_json::from_str(&p.pier_ok(&["buildpacks", "--json"], cwd)).unwrap();
    all.into_iter().map(|b| b.name).collect()
}

#[test]
fn builtin_buildpacks_push_end_to_end() {
    let p = Platform::start();

    // nodejs: detected from package.json, vendored node_modules, started with the start script.
    let node = example("nodejs-app");
    let out = p.pier_ok(&["push", "node"], node.path());
    assert!(out.contains("Detected buildpack: nodejs"), "{out}");
    assert!(out.contains("vendored node_modules"), "{out}");
    let body = body_of(&p, "node.localhost");
    assert!(
        body.contains("Hello from Pier on Node.js!") && body.contains("env=production"),
        "{body}"
    );

    // nodejs without node_modules and no npm: a clear explanation; the app isn't started.
    std::fs::remove_dir_all(node.path().join("node_modules")).unwrap();
    let text = pier_fails(&p, &["push", "node-nodeps"], node.path());
    assert!(text.contains("no network access"), "{text}");
    assert!(text.contains("node_modules"), "{text}");
    let app = p.app("node-nodeps").unwrap();
    assert!(app.droplet.is_none(), "no droplet: {app:?}");
    assert!(p.instance_ids("node-nodeps").is_empty());

    // binary: never detected, named with -b, started from the Procfile.
    let bin = example("binary-app");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        bin.path().join("serve"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let out = p.pier_ok(&["push", "bin", "-b", "binary"], bin.path());
    assert!(out.contains("Using buildpack: binary"), "{out}");
    assert!(
        body_of(&p, "bin.localhost").contains("Hello from a binary on Pier! instance=0"),
        "binary serves"
    );

    // staticfile options: root, directory listings, pushstate.
    let site = fixture("staticfile-options");
    p.pier_ok(&["push", "spa"], site.path());
    assert_eq!(body_of(&p, "spa.localhost"), "<h1>spa</h1>\n");
    let (s, b) = p.get_via_router("spa.localhost", "/some/client/route");
    assert_eq!((s, b.as_str()), (200, "<h1>spa</h1>\n"), "pushstate");
    let (s, b) = p.get_via_router("spa.localhost", "/sub/");
    assert!(
        s == 200 && b.contains("file.txt"),
        "directory listing: {s} {b}"
    );
    let (_, b) = p.get_via_router("spa.localhost", "/secret.txt");
    assert!(!b.contains("not served"), "only root: is served: {b}");

    // java: an executable jar built here with the host's JDK (./scripts/test installs one);
    // JVM flags from the memory limit.
    assert!(
        Command::new("javac").arg("-version").output().is_ok(),
        "javac is missing: install a JDK (apt-get install openjdk-17-jdk-headless), or run \
         ./scripts/test, which installs it"
    );
    {
        let java = example("java-app");
        let jar = java.path().join("app.jar");
        let st = Command::new("bash")
            .arg(java.path().join("build.sh"))
            .arg(&jar)
            .status()
            .unwrap();
        assert!(st.success(), "building the example jar");
        let out = p.pier_ok(&["push", "jvm", "-p", "app.jar", "-m", "256M"], java.path());
        assert!(out.contains("Detected buildpack: java"), "{out}");
        let body = body_of(&p, "jvm.localhost");
        assert!(body.contains("memory_limit=256m"), "{body}");
        assert!(body.contains("-Xmx148M"), "heap from 256M: {body}");
        let heap = |b: &str| -> u64 {
            b.split("max_heap_mb=")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        assert!(heap(&body) < 200, "heap well under the limit: {body}");
        // A memory change needs no restage: the next instances compute new flags.
        p.pier_ok(&["scale", "jvm", "-m", "512M"], java.path());
        let body = eventually(Duration::from_secs(90), "a 512M instance", || {
            let (s, b) = p.get_via_router("jvm.localhost", "/");
            (s == 200 && b.contains("memory_limit=512m")).then_some(b)
        });
        assert!(body.contains("-Xmx330M"), "heap from 512M: {body}");
    }
}

#[test]
fn third_party_admin_and_multi_buildpacks() {
    let p = Platform::start();
    let work = tempfile::tempdir().unwrap();
    let thirdparty = buildpack("bp-thirdparty");
    let failing = buildpack("bp-failing");
    let supply = buildpack("bp-supply");
    let finalize = buildpack("bp-finalize");
    let tp = thirdparty.path().to_str().unwrap();

    // A detect/compile/release buildpack pushed with the app (-b ./path), unchanged.
    let app = fixture("thirdparty-app");
    std::fs::write(app.path().join("manifest.yml"), "").ok();
    std::fs::remove_file(app.path().join("manifest.yml")).ok();
    let out = p.pier_ok(&["push", "tp", "-b", tp], app.path());
    assert!(out.contains("thirdparty compile"), "{out}");
    let body = body_of(&p, "tp.localhost");
    assert!(body.contains("built by thirdparty"), "{body}");
    assert!(
        body.contains("var=from-release"),
        "config_vars reach the app: {body}"
    );
    assert!(body.contains("count=1"), "{body}");

    // The cache persists between stagings, and can be cleared.
    p.pier_ok(&["restage", "tp"], app.path());
    assert!(body_of(&p, "tp.localhost").contains("count=2"));
    p.pier_ok(&["clear-buildpack-cache", "tp"], app.path());
    p.pier_ok(&["restage", "tp"], app.path());
    assert!(
        body_of(&p, "tp.localhost").contains("count=1"),
        "cold again"
    );

    // Admin buildpacks: created at a position, detection follows positions.
    let before = buildpack_names(&p, work.path());
    assert_eq!(before, ["staticfile", "java", "nodejs", "python", "binary"]);
    p.pier_ok(
        &[
            "create-buildpack",
            "failing",
            failing.path().to_str().unwrap(),
            "--position",
            "1",
        ],
        work.path(),
    );
    p.pier_ok(
        &["create-buildpack", "thirdparty", tp, "-i", "1"],
        work.path(),
    );
    assert_eq!(
        buildpack_names(&p, work.path())[..2],
        ["thirdparty", "failing"],
        "position 1 goes first"
    );
    // thirdparty (position 1) detects the app before failing (which detects everything).
    let out = p.pier_ok(&["push", "tp-admin"], app.path());
    assert!(out.contains("Detected buildpack: thirdparty"), "{out}");
    // Move failing first: now it wins detection, and its output and exit status are shown.
    p.pier_ok(
        &["update-buildpack", "failing", "--position", "1"],
        work.path(),
    );
    let text = pier_fails(&p, &["push", "tp-fail"], app.path());
    assert!(text.contains("Detected buildpack: failing"), "{text}");
    assert!(
        text.contains("the frobnicator is missing"),
        "buildpack output: {text}"
    );
    assert!(text.contains("exit status 42"), "exit status: {text}");
    assert!(p.instance_ids("tp-fail").is_empty());
    // Disabled: skipped by detection.
    p.pier_ok(&["update-buildpack", "failing", "--disable"], work.path());
    let out = p.pier_ok(&["push", "tp-fail"], app.path());
    assert!(out.contains("Detected buildpack: thirdparty"), "{out}");

    // Refusals: each names the problem, and the list is unchanged.
    let listed = buildpack_names(&p, work.path());
    for (args, needle) in [
        (vec!["create-buildpack", "Bad Name", tp], "invalid"),
        (vec!["create-buildpack", "thirdparty", tp], "already exists"),
        (
            vec!["create-buildpack", "x", tp, "--position", "0"],
            "position",
        ),
        (
            vec!["create-buildpack", "x", work.path().to_str().unwrap()],
            "bin/detect",
        ),
        (vec!["delete-buildpack", "python", "-f"], "built-in"),
        (vec!["delete-buildpack", "nope", "-f"], "not found"),
        (vec!["update-buildpack", "python", "-p", tp], "built-in"),
        (vec!["update-buildpack", "thirdparty"], "nothing to change"),
    ] {
        let text = pier_fails(&p, &args, work.path());
        assert!(text.contains(needle), "{args:?}: {text}");
    }
    assert_eq!(buildpack_names(&p, work.path()), listed);
    let text = pier_fails(&p, &["push", "tp-x", "-b", "cobol"], app.path());
    assert!(text.contains("unknown buildpack"), "{text}");
    assert!(p.app("tp-x").is_none(), "nothing created");

    // Delete an admin buildpack: gone from the list.
    p.pier_ok(&["delete-buildpack", "failing", "-f"], work.path());
    assert!(!buildpack_names(&p, work.path()).contains(&"failing".to_string()));

    // Multi-buildpack: supply (from a folder) then finalize (admin), deps in the droplet.
    p.pier_ok(
        &[
            "create-buildpack",
            "finalizer",
            finalize.path().to_str().unwrap(),
        ],
        work.path(),
    );
    let multi = fixture("multi-app");
    let out = p.pier_ok(
        &[
            "push",
            "multi",
            "-b",
            supply.path().to_str().unwrap(),
            "-b",
            "finalizer",
        ],
        multi.path(),
    );
    assert!(out.contains("bp-supply: installing greet"), "{out}");
    assert!(
        out.contains("supplied greet says hi"),
        "finalize sees the supply: {out}"
    );
    let body = body_of(&p, "multi.localhost");
    assert!(body.contains("supplied=bp-supply"), "{body}");
    assert!(body.contains("finalized=yes"), "{body}");
    assert!(body.contains("greet=supplied greet says hi"), "{body}");
    assert!(body.contains("deps=/home/vcap/deps"), "{body}");
    // A compile-only buildpack can't supply.
    let text = pier_fails(
        &p,
        &["push", "multi2", "-b", tp, "-b", "finalizer"],
        multi.path(),
    );
    assert!(text.contains("no executable bin/supply"), "{text}");
}

#[test]
fn manifest_with_two_apps_variables_and_processes() {
    let p = Platform::start();
    let dir = fixture("manifest-apps");
    // A missing variable: named, and nothing is pushed.
    let text = pier_fails(&p, &["push"], dir.path());
    assert!(
        text.contains("((prefix))") && text.contains("line"),
        "{text}"
    );
    let text = pier_fails(
        &p,
        &[
            "push",
            "--vars-file",
            "vars.yml",
            "--var",
            "web_memory=lots",
        ],
        dir.path(),
    );
    assert!(text.contains("memory"), "{text}");
    assert!(p.app("demo-web").is_none() && p.app("demo-api").is_none());

    // Both apps, --var overriding the vars file.
    let out = p.pier_ok(
        &[
            "push",
            "--vars-file",
            "vars.yml",
            "--var",
            "greeting=from a flag",
        ],
        dir.path(),
    );
    assert!(out.contains("Configured process worker"), "{out}");
    let web = p.app("demo-web").unwrap();
    let proc_of = |t: &str| {
        web.processes
            .iter()
            .find(|x| x.kind.as_str() == t)
            .unwrap()
            .clone()
    };
    assert_eq!(proc_of("web").instances, 2);
    assert_eq!(proc_of("web").memory_mb, 128);
    assert_eq!(proc_of("web").health_check.kind, HealthCheckType::Http);
    assert_eq!(proc_of("worker").instances, 1);
    assert_eq!(proc_of("worker").memory_mb, 64);
    assert_eq!(env(&web, "GREETING"), Some("from a flag"));
    let body = body_of(&p, "demo-alias.localhost");
    assert!(body.contains("greeting=from a flag"), "{body}");
    eventually(Duration::from_secs(60), "the worker runs", || {
        p.app("demo-web")?
            .instances
            .iter()
            .any(|i| i.process.as_str() == "worker" && i.state == InstanceState::Running)
            .then_some(())
    });
    let api = p.app("demo-api").unwrap();
    assert_eq!(env(&api, "GREETING"), Some("api from a flag"));
    assert!(body_of(&p, "demo-api.localhost").contains("greeting=api from a flag"));

    // Env and routes the manifest doesn't mention survive a re-push of one app.
    let extra = AppConfigRequest {
        env: Some([("EXTRA".to_string(), "kept".to_string())].into()),
        ..Default::default()
    };
    p.call(p.api().put_app(&app_name("demo-api"), &extra))
        .expect("set EXTRA");
    p.pier_ok(&["push", "demo-api", "--vars-file", "vars.yml"], dir.path());
    let api = p.app("demo-api").unwrap();
    assert_eq!(env(&api, "EXTRA"), Some("kept"));
    assert_eq!(env(&api, "GREETING"), Some("api from the vars file"));

    // create-app-manifest writes what runs; it reads back as a manifest.
    let out_dir = tempfile::tempdir().unwrap();
    p.pier_ok(&["create-app-manifest", "demo-web"], out_dir.path());
    let text = std::fs::read_to_string(out_dir.path().join("manifest.yml")).unwrap();
    for needle in [
        "name: demo-web",
        "instances: 2",
        "memory: 128M",
        "stack: pier-bookworm",
        "route: demo-alias.localhost",
        "GREETING: from a flag",
        "health-check-type: http",
        "type: worker",
        "memory: 64M",
    ] {
        assert!(text.contains(needle), "{needle}:\n{text}");
    }
    let again = pier_fails(&p, &["create-app-manifest", "demo-web"], out_dir.path());
    assert!(again.contains("already exists"), "{again}");

    // A process the Procfile doesn't declare, and another stack: refused before anything changes.
    std::fs::write(
        dir.path().join("bad.yml"),
        "applications:\n- name: bad\n  path: worker\n  processes:\n  - type: clock\n",
    )
    .unwrap();
    let text = pier_fails(&p, &["push", "-f", "bad.yml"], dir.path());
    assert!(
        text.contains("clock") && text.contains("Procfile"),
        "{text}"
    );
    std::fs::write(
        dir.path().join("bad.yml"),
        "applications:\n- name: bad\n  path: worker\n  stack: cflinuxfs4\n",
    )
    .unwrap();
    let text = pier_fails(&p, &["push", "-f", "bad.yml"], dir.path());
    assert!(text.contains("stack cflinuxfs4"), "{text}");
    assert!(p.app("bad").is_none());
}

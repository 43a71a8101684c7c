//! `pier push` end to end: the real binaries, real Docker, real HTTP through the router.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::collections::HashSet;
use std::time::Duration;

use pier_e2e::pier_api::{AppResponse, AppState, InstanceState};
use pier_e2e::*;

fn example(name: &str) -> tempfile::TempDir {
    copy_dir(&repo_root().join("examples").join(name))
}

fn fixture(name: &str) -> tempfile::TempDir {
    copy_dir(&repo_root().join("e2e/fixtures").join(name))
}

#[test]
fn push_python_app_repush_and_delete() {
    let p = Platform::start();
    let app = example("python-app");
    let out = p.pier_ok(&["push", "hello", "-i", "2"], app.path());
    let router_port = p.router.rsplit(':').next().unwrap();
    assert!(
        out.contains(&format!("http://hello.localhost:{router_port}")),
        "push prints the URL:\n{out}"
    );
    assert!(
        out.contains("Detected buildpack: python"),
        "staging output streamed:\n{out}"
    );

    // Both instances answer through the router, by host name.
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let (status, body) = p.get_via_router("hello.localhost", "/");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("version=1"), "{body}");
        for i in ["instance=0", "instance=1"] {
            if body.contains(i) {
                seen.insert(i);
            }
        }
    }
    assert_eq!(seen.len(), 2, "round robin reaches both instances");

    let app_view = p.app("hello").expect("app exists");
    assert_eq!(app_view.state, AppState::Started);
    let instances = &app_view.instances;
    assert_eq!(instances.len(), 2);
    assert!(instances.iter().all(|i| i.state == InstanceState::Running));
    assert_eq!(
        app_view.routes.first(),
        Some(&format!("http://hello.localhost:{router_port}"))
    );
    let first_ids = p.instance_ids("hello");
    assert_eq!(first_ids.len(), 2);

    // `pier app --json` reports the same thing.
    let cli_json: AppResponse =
        serde_json::from_str(&p.pier_ok(&["app", "hello", "--json"], app.path())).unwrap();
    assert_eq!(cli_json.name.as_str(), "hello");
    assert_eq!(cli_json.instances.len(), 2);

    // Re-push of unchanged source: the droplet is reused and nothing restarts.
    let out = p.pier_ok(&["push", "hello", "-i", "2"], app.path());
    assert!(out.contains("reusing droplet"), "{out}");
    assert_eq!(p.instance_ids("hello"), first_ids, "no instance replaced");

    // Re-push with a change: every response afterwards is the new version.
    let src = std::fs::read_to_string(app.path().join("app.py")).unwrap();
    assert!(
        src.contains("version=1") || src.contains("VERSION"),
        "example app carries a version"
    );
    std::fs::write(
        app.path().join("app.py"),
        src.replace("version=1", "version=2")
            .replace("\"1\"", "\"2\""),
    )
    .unwrap();
    p.pier_ok(&["push", "hello", "-i", "2"], app.path());
    for _ in 0..10 {
        let (status, body) = p.get_via_router("hello.localhost", "/");
        assert_eq!(status, 200);
        assert!(body.contains("version=2"), "after the re-push: {body}");
    }
    // The old instances drain (SIGTERM, then removal) once their replacements are routed.
    let second_ids = eventually(Duration::from_secs(15), "old instances removed", || {
        let ids = p.instance_ids("hello");
        (ids.len() == 2).then_some(ids)
    });
    assert!(second_ids.iter().all(|id| !first_ids.contains(id)));

    // Delete: 404, and nothing of the app left in Docker or the blob store.
    p.pier_ok(&["delete", "hello", "-f"], app.path());
    let (status, body) = p.get_via_router("hello.localhost", "/");
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("hello.localhost"),
        "404 names the host: {body}"
    );
    assert!(
        p.containers().is_empty(),
        "containers left: {:?}",
        p.containers()
    );
    assert_eq!(p.blob_count(), 0, "packages and droplets deleted");
    assert!(p.app("hello").is_none());
}

/// The controller's containers of `kind` for `app`, by id.
fn of_kind(p: &Platform, kind: &str, app: &str) -> Vec<String> {
    p.containers()
        .into_iter()
        .filter(|(_, l)| {
            l.get("pier.kind").map(String::as_str) == Some(kind)
                && l.get("pier.app").map(String::as_str) == Some(app)
        })
        .map(|(id, _)| id)
        .collect()
}

#[test]
fn a_re_push_stages_in_the_container_made_ahead_of_it() {
    let mut p = Platform::start();
    let app = example("python-app");
    p.pier_ok(&["push", "warm"], app.path());
    // After the staging, a container for the next one waits (networking off, as vcap).
    let warm = eventually(Duration::from_secs(20), "a warm staging container", || {
        let w = of_kind(&p, "warm-staging", "warm");
        (w.len() == 1).then(|| w[0].clone())
    });
    let inspect = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{.State.Running}} {{.Config.User}} {{.HostConfig.NetworkMode}} {{.Config.OpenStdin}}",
            &warm,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        "true vcap none true"
    );
    let src = std::fs::read_to_string(app.path().join("app.py")).unwrap();
    std::fs::write(
        app.path().join("app.py"),
        src.replace("version=1", "version=2")
            .replace("\"1\"", "\"2\""),
    )
    .unwrap();
    let out = p.pier_ok(&["push", "warm"], app.path());
    assert!(out.contains("Detected buildpack: python"), "{out}");
    let (status, body) = p.get_via_router("warm.localhost", "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("version=2"), "{body}");
    // The staging ran in it (its output is the staging's) and it went; the next one waits.
    let logs = std::process::Command::new("docker")
        .args(["logs", &warm])
        .output()
        .unwrap();
    assert!(
        !logs.status.success(),
        "the used warm container was removed"
    );
    let c = p.controller.as_mut().expect("a controller");
    let seen = c.printed();
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("warm staging container failed")),
        "the re-push staged in the warm container, not in a new one: {seen:?}"
    );
    let next = eventually(Duration::from_secs(20), "the next warm container", || {
        let w = of_kind(&p, "warm-staging", "warm");
        (w.len() == 1 && w[0] != warm).then(|| w[0].clone())
    });
    p.pier_ok(&["delete", "warm", "-f"], app.path());
    assert!(
        p.containers().is_empty(),
        "containers left ({next} among them?): {:?}",
        p.containers()
    );
}

#[test]
fn push_static_site() {
    let p = Platform::start();
    let site = example("static-site");
    let out = p.pier_ok(&["push", "site"], site.path());
    assert!(out.contains("staticfile"), "{out}");
    let (status, body) = p.get_via_router("site.localhost", "/");
    assert_eq!(status, 200, "{body}");
    let index = std::fs::read_to_string(site.path().join("index.html")).unwrap();
    assert_eq!(body, index, "nginx serves index.html as it is");
    let (status, _) = p.get_via_router("site.localhost", "/Staticfile");
    assert_ne!(status, 200, "the Staticfile itself is not served");
    p.pier_ok(&["delete", "site", "-f"], site.path());
    assert!(p.containers().is_empty());
}

#[test]
fn instances_get_cloud_foundry_env_and_confinement() {
    let p = Platform::start();
    let app = fixture("envdump");
    p.pier_ok(&["push"], app.path());
    let (status, body) = p.get_via_router("envdump.localhost", "/");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let env = &v["env"];
    assert_eq!(env["PORT"], "8080");
    assert_eq!(env["CF_INSTANCE_INDEX"], "0");
    assert_eq!(env["GREETING"], "hello from the manifest");
    assert_eq!(env["MEMORY_LIMIT"], "128m");
    assert_eq!(env["HOME"], "/home/vcap/app");
    assert!(!env["CF_INSTANCE_GUID"].as_str().unwrap().is_empty());
    let vcap: serde_json::Value =
        serde_json::from_str(env["VCAP_APPLICATION"].as_str().unwrap()).unwrap();
    assert_eq!(vcap["application_name"], "envdump");
    assert_eq!(vcap["instance_index"], 0);
    assert_eq!(vcap["limits"]["mem"], 128);
    assert_eq!(vcap["uris"][0], "envdump.localhost");
    assert!(vcap["application_id"].as_str().is_some());
    assert_eq!(vcap["space_name"], "default");
    assert_eq!(vcap["organization_name"], "default");
    assert_eq!(
        vcap["space_id"].as_str().unwrap().len(),
        36,
        "the space's guid: {vcap}"
    );
    assert_eq!(env["VCAP_SERVICES"], "{}");
    assert_eq!(v["uid"], 2000, "runs as vcap");
    assert_eq!(v["cwd"], "/home/vcap/app");
    // Router headers reach the app.
    let headers = &v["headers"];
    let has = |name: &str| {
        headers
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.eq_ignore_ascii_case(name))
    };
    assert!(has("X-Forwarded-For") && has("X-Forwarded-Proto") && has("X-Request-Start"));

    // Docker confinement.
    let id = p.instance_ids("envdump").pop().unwrap();
    let inspect = std::process::Command::new("docker")
        .args(["inspect", &id])
        .output()
        .unwrap();
    let i: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let hc = &i[0]["HostConfig"];
    assert_eq!(hc["Memory"], 128 * 1024 * 1024);
    assert!(hc["PidsLimit"].as_i64().unwrap() > 0);
    assert_eq!(hc["CapDrop"][0], "ALL");
    assert!(hc["SecurityOpt"][0]
        .as_str()
        .unwrap()
        .contains("no-new-privileges"));
    assert_eq!(hc["PortBindings"]["8080/tcp"][0]["HostIp"], "127.0.0.1");
    assert_eq!(i[0]["Config"]["User"], "vcap");
    let labels = &i[0]["Config"]["Labels"];
    for l in [
        "pier.app",
        "pier.process",
        "pier.index",
        "pier.droplet",
        "pier.instance",
    ] {
        assert!(labels[l].is_string(), "label {l}");
    }
}

#[test]
fn push_fails_clearly_when_the_app_never_gets_healthy() {
    let p = Platform::start();
    let sleepy = fixture("never-listens");
    let out = p.pier(&["push"], sleepy.path());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "push must fail:\n{text}");
    assert!(text.contains("health check"), "says why:\n{text}");
    assert!(
        text.contains("booting but never listening"),
        "shows the last output:\n{text}"
    );

    let crash = fixture("crash-on-start");
    let out = p.pier(&["push", "crashy"], crash.path());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "push must fail:\n{text}");
    assert!(text.contains("exited with status 3"), "says why:\n{text}");
    assert!(
        text.contains("boom: missing configuration"),
        "shows the output:\n{text}"
    );
}

/// SIGTERM stops the controller cleanly: exit 0, "shutting down", and its instances keep running
/// for the next start to adopt. From the second round on, the signal comes straight after the
/// listening lines, as a supervisor may send it (the handler is registered before they print).
#[test]
fn controller_stopped_by_sigterm_exits_cleanly_and_leaves_its_instances() {
    let mut p = Platform::start();
    let app = example("python-app");
    p.pier_ok(&["push", "calm"], app.path());
    let before = p.instance_ids("calm");
    for round in 0..3 {
        if round > 0 {
            p.start_controller();
        }
        let mut c = p.controller.take().expect("a controller");
        c.signal("TERM");
        let status = c.child.wait().expect("wait for the controller");
        c.wait_for_line(
            "shutting down; instances keep running",
            Duration::from_secs(5),
        );
        assert!(status.success(), "round {round}: {status:?}");
    }
    p.start_controller();
    assert_eq!(
        p.instance_ids("calm"),
        before,
        "the same containers, adopted"
    );
    eventually(Duration::from_secs(20), "calm served again", || {
        (p.get_via_router("calm.localhost", "/").0 == 200).then_some(())
    });
}

#[test]
fn controller_restart_keeps_instances_and_routes() {
    let mut p = Platform::start_with(Options {
        standalone_router: true,
        ..Default::default()
    });
    let app = example("python-app");
    p.pier_ok(&["push", "steady", "-i", "2"], app.path());
    let before = p.instance_ids("steady");
    assert_eq!(before.len(), 2);
    assert_eq!(p.get_via_router("steady.localhost", "/").0, 200);

    // kill -9: the router keeps serving what it knows while the controller is away.
    p.controller.as_mut().unwrap().kill9();
    for _ in 0..5 {
        assert_eq!(p.get_via_router("steady.localhost", "/").0, 200);
    }
    p.start_controller();
    let app_view = eventually(Duration::from_secs(20), "instances running again", || {
        let a = p.app("steady")?;
        let all = &a.instances;
        (all.len() == 2 && all.iter().all(|i| i.state == InstanceState::Running)).then_some(a)
    });
    assert_eq!(
        p.instance_ids("steady"),
        before,
        "same containers, none restarted"
    );
    let ids: HashSet<_> = app_view
        .instances
        .iter()
        .map(|i| {
            i.container_id
                .clone()
                .expect("a running instance has a container")
        })
        .collect();
    assert_eq!(ids, before.into_iter().collect());
    for _ in 0..5 {
        assert_eq!(p.get_via_router("steady.localhost", "/").0, 200);
    }
}

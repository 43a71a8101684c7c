//! The real `pier` binary against a fake controller.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};

use common::{pier, run, Build, Fake, Start, TOKEN};
use tokio::io::{AsyncBufReadExt, BufReader};

fn app_folder(home: &std::path::Path) -> std::path::PathBuf {
    let dir = home.join("hello");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.py"), "print('hello')\n").unwrap();
    std::fs::write(dir.join("requirements.txt"), "").unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_checks_the_token_and_saves_a_private_config() {
    let fake = Fake::start().await;
    let home = tempfile::tempdir().unwrap();

    let out = run(pier(
        home.path(),
        &["login", "--api", &fake.url(), "--token", "wrong"],
    ))
    .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("refused the token"), "{}", out.stderr);
    assert!(!home.path().join("pier-home/config.json").exists());

    let out = run(pier(
        home.path(),
        &["login", "--api", &fake.url(), "--token", TOKEN],
    ))
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("Logged in to"), "{}", out.stdout);
    let path = home.path().join("pier-home/config.json");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(saved["api"], fake.url());
    assert_eq!(saved["token"], TOKEN);
    // The wrong token was checked too, and nothing was saved; the right one was checked before saving.
    assert_eq!(
        fake.requests(),
        [
            "GET /v1/info",
            "GET /v1/apps",
            "GET /v1/info",
            "GET /v1/apps"
        ]
    );

    // Later commands use the saved config.
    let out = run(pier(home.path(), &["apps"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("No apps yet"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_uploads_configures_streams_staging_live_starts_and_waits() {
    let fake = Fake::start().await;
    let (release, gate) = tokio::sync::oneshot::channel();
    *fake.state.build_gate.lock().unwrap() = Some(gate);
    let home = tempfile::tempdir().unwrap();
    let dir = app_folder(home.path());

    let mut cmd = fake.pier(
        home.path(),
        &[
            "push",
            "hello",
            "-p",
            dir.to_str().unwrap(),
            "-i",
            "2",
            "-m",
            "512M",
        ],
    );
    let mut child = cmd.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // The first staging line must show while the build is still running (the gate is closed).
    loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), stdout.next_line())
            .await
            .expect("staging output arrives while staging runs")
            .unwrap()
            .expect("pier printed the first staging line before exiting");
        seen.push(line.clone());
        if line == "  -----> Python Buildpack" {
            break;
        }
    }
    release.send(()).unwrap();
    while let Some(line) = stdout.next_line().await.unwrap() {
        seen.push(line);
    }
    let status = child.wait().await.unwrap();
    let stdout = seen.join("\n");
    assert!(status.success(), "{stdout}");
    assert!(
        stdout.contains("         Installing requirements"),
        "{stdout}"
    );
    assert!(stdout.contains("Staged with buildpack python"), "{stdout}");
    assert!(
        stdout.contains("url: http://hello.localhost:8080"),
        "{stdout}"
    );
    assert!(stdout.contains("#1"), "{stdout}");
    assert!(stdout.contains("running"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:40000"), "{stdout}");

    assert_eq!(
        fake.changes(),
        [
            "POST /v1/packages",
            "PUT /v1/apps/hello",
            "POST /v1/apps/hello/builds",
            "POST /v1/apps/hello/deployments",
        ]
    );
    assert!(fake.requests().contains(&"GET /v1/apps/hello".to_string()));
    let put = fake.state.put_body.lock().unwrap().clone().unwrap();
    assert_eq!(put, serde_json::json!({"instances": 2, "memory_mb": 512}));
    assert!(fake.state.package_len.lock().unwrap().unwrap() > 0);

    // `app --json` has what scripts need.
    let out = run(fake.pier(home.path(), &["app", "hello", "--json"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let app: pier_api::AppResponse = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(app.instances.len(), 2);
    assert_eq!(app.routes, ["http://hello.localhost:8080"]);
    let out = run(fake.pier(home.path(), &["apps"])).await;
    assert!(
        out.stdout.contains("hello") && out.stdout.contains("2/2"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_with_an_invalid_name_sends_nothing() {
    let fake = Fake::start().await;
    let home = tempfile::tempdir().unwrap();
    let dir = app_folder(home.path());
    let out = run(fake.pier(
        home.path(),
        &["push", "Hello_World", "-p", dir.to_str().unwrap()],
    ))
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("not a DNS label"), "{}", out.stderr);

    // From a manifest, too (exit 1: it's the manifest, not the command line, that is wrong).
    std::fs::write(
        dir.join("manifest.yml"),
        "applications:\n- name: Bad_Name\n",
    )
    .unwrap();
    let mut cmd = fake.pier(home.path(), &["push"]);
    cmd.current_dir(&dir);
    let out = run(cmd).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("applications[0].name"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("line 2"), "{}", out.stderr);
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

/// An unbind takes no parameters (as on Cloud Foundry): `-c` is refused, not silently dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbind_service_refuses_parameters_and_sends_nothing() {
    let fake = Fake::start().await;
    let home = tempfile::tempdir().unwrap();
    let out = run(fake.pier(
        home.path(),
        &["unbind-service", "hello", "db", "-c", r#"{"a":1}"#],
    ))
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("unexpected argument '-c'"),
        "{}",
        out.stderr
    );
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_refuses_an_escaping_symlink_and_sends_nothing() {
    let fake = Fake::start().await;
    let home = tempfile::tempdir().unwrap();
    let dir = app_folder(home.path());
    symlink("/etc/passwd", dir.join("passwd")).unwrap();
    let out = run(fake.pier(home.path(), &["push", "hello", "-p", dir.to_str().unwrap()])).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("symlink passwd points outside the app folder (to /etc/passwd)"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_path_outside_its_folder_is_refused_unless_allowed() {
    let fake = Fake::start().await;
    let home = tempfile::tempdir().unwrap();
    let dir = app_folder(home.path());
    let project = home.path().join("project");
    std::fs::create_dir(&project).unwrap();
    let outside = dir.canonicalize().unwrap();
    for path in [format!("{}", outside.display()), "../hello".to_string()] {
        std::fs::write(
            project.join("manifest.yml"),
            format!("applications:\n- name: hello\n  path: {path}\n"),
        )
        .unwrap();
        let mut cmd = fake.pier(home.path(), &["push"]);
        cmd.current_dir(&project);
        let out = run(cmd).await;
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(
            out.stderr.contains("is outside the manifest's folder"),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("--allow-outside"), "{}", out.stderr);
        assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    }
    let mut cmd = fake.pier(home.path(), &["push", "--allow-outside"]);
    cmd.current_dir(&project);
    let out = run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_shown() {
    let fake = Fake::start().await;
    let home = tempfile::tempdir().unwrap();
    let out = run(fake.pier(home.path(), &["app", "nope"])).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with("error: app \"nope\" not found\n"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hint: `pier apps`"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_shows_how_to_log_in() {
    let fake = Fake::start().await;
    let home = tempfile::tempdir().unwrap();
    let mut cmd = fake.pier(home.path(), &["apps"]);
    cmd.env("PIER_TOKEN", "stale");
    let out = run(cmd).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(&format!(
            "the controller refused the token: run `pier login --api {} --token TOKEN`",
            fake.url()
        )),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_controller_is_named() {
    // Bind then drop, so nothing listens on the port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let home = tempfile::tempdir().unwrap();
    let mut cmd = pier(home.path(), &["apps"]);
    cmd.env("PIER_API", format!("http://127.0.0.1:{port}"));
    let out = run(cmd).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(&format!(
            "cannot reach the Pier controller at http://127.0.0.1:{port}: is pier-controller running?"
        )),
        "{}",
        out.stderr
    );

    // And no controller configured at all says how to configure one.
    let out = run(pier(home.path(), &["apps"])).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("pier login --api URL --token TOKEN"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_error_exits_non_zero_and_does_not_start() {
    let fake = Fake::start().await;
    *fake.state.build.lock().unwrap() = Build::Fail;
    let home = tempfile::tempdir().unwrap();
    let dir = app_folder(home.path());
    let out = run(fake.pier(home.path(), &["push", "hello", "-p", dir.to_str().unwrap()])).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout.contains("  -----> Python Buildpack"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains(
            "error: staging hello failed: the python buildpack's compile exited with status 1"
        ),
        "{}",
        out.stderr
    );
    assert!(
        !fake.changes().iter().any(|r| r.contains("actions")),
        "{:?}",
        fake.changes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_on_start_shows_the_instance_output() {
    let fake = Fake::start().await;
    *fake.state.start.lock().unwrap() = Start::Crash;
    let home = tempfile::tempdir().unwrap();
    let dir = app_folder(home.path());
    let out = run(fake.pier(home.path(), &["push", "hello", "-p", dir.to_str().unwrap()])).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("error: deployment of hello (revision 1) failed: new instance 0 (web) of revision 1 failed: exited with status 3"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("  boom"), "{}", out.stderr);
    assert!(
        out.stderr.contains("pier logs hello --recent"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_apps_are_pushed_and_lifecycle_commands_work() {
    let fake = Fake::start().await;
    let home = tempfile::tempdir().unwrap();
    let dir = app_folder(home.path());
    std::fs::write(
        dir.join("manifest.yml"),
        "applications:\n- name: hello\n  instances: 1\n  env:\n    GREETING: hi\n  routes:\n  - route: hi.example.com\n",
    )
    .unwrap();
    let mut cmd = fake.pier(home.path(), &["push"]);
    cmd.current_dir(&dir);
    let out = run(cmd).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let put = fake.state.put_body.lock().unwrap().clone().unwrap();
    assert_eq!(
        put,
        serde_json::json!({"instances": 1, "env": {"GREETING": "hi"}, "routes": ["hi.example.com"]})
    );

    let out = run(fake.pier(home.path(), &["stop", "hello"])).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, "Stopped hello.\n"));
    let out = run(fake.pier(home.path(), &["restart", "hello"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("hello is running."), "{}", out.stdout);
    let out = run(fake.pier(home.path(), &["restage", "hello"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("Staged with buildpack python"),
        "{}",
        out.stdout
    );
    let out = run(fake.pier(home.path(), &["delete", "hello"])).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, "Deleted hello.\n"));
    let out = run(fake.pier(home.path(), &["delete", "hello"])).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "App hello does not exist.\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_manifest_names_field_and_line() {
    let fake = Fake::start().await;
    let home = tempfile::tempdir().unwrap();
    let dir = app_folder(home.path());
    std::fs::write(
        dir.join("manifest.yml"),
        "applications:\n- name: hello\n  memory: 256M\n  instanses: 2\n",
    )
    .unwrap();
    let mut cmd = fake.pier(home.path(), &["push"]);
    cmd.current_dir(&dir);
    let out = run(cmd).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("unknown field `instanses`"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("line 4"), "{}", out.stderr);
    assert!(fake.requests().is_empty());
}

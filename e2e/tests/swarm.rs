//! Pier on Docker Swarm: the controller itself as a Swarm service (docs/swarm.md), in the
//! platform image, with its data dir on the host and the host's Docker socket; Swarm restarts it
//! when its container dies, and the new one adopts the running instances.
//!
//! Needs Docker in a swarm, as a manager (`scripts/test` runs `docker swarm init` when it is not).

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pier_e2e::pier_api::{AppState, InstanceState};
use pier_e2e::*;

/// Panics, saying how to get one, unless Docker is a swarm manager.
fn require_swarm_manager() {
    require_docker();
    let state = docker_cli_ok(&[
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
    ]);
    assert_eq!(
        state.trim(),
        "active true",
        "this test needs Docker to be a swarm manager: run `docker swarm init` (scripts/test \
         does, and leaves the swarm again at the end)"
    );
}

/// A free port on 127.0.0.1 (the service's controller binds it itself, again after a restart).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The platform image of the built binaries, made for this test and removed after it.
struct PlatformImage(String);

impl PlatformImage {
    fn build() -> PlatformImage {
        let out = std::process::Command::new(bin("pier-controller"))
            .args(["build-platform-image", "--if-missing"])
            .output()
            .expect("run pier-controller build-platform-image");
        assert!(
            out.status.success(),
            "build-platform-image failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let labels = docker_cli_ok(&[
            "image",
            "inspect",
            "--format",
            "{{json .Config.Labels}}",
            &name,
        ]);
        assert!(labels.contains(r#""pier.image":"platform""#), "{labels}");
        let named = std::process::Command::new(bin("pier-controller"))
            .arg("platform-image")
            .output()
            .expect("run pier-controller platform-image");
        assert_eq!(String::from_utf8_lossy(&named.stdout).trim(), name);
        PlatformImage(name)
    }
}

impl Drop for PlatformImage {
    fn drop(&mut self) {
        let _ = docker_cli(&["image", "rm", "--force", &self.0]);
    }
}

/// A Swarm service of this test (labelled `pier.test=<id>`, its containers too), removed with
/// its task containers on drop.
struct Service {
    name: String,
    test_label: String,
}

impl Service {
    /// `docker service create` of `image` running `command`, on the host's network.
    fn create(
        name: String,
        controller_id: &str,
        opts: &[String],
        image: &str,
        command: &[String],
    ) -> Self {
        let test_label = format!("pier.test={controller_id}");
        let s = Service { name, test_label };
        let mut args: Vec<&str> = vec![
            "service",
            "create",
            "--detach",
            "--name",
            &s.name,
            "--label",
            &s.test_label,
            "--container-label",
            &s.test_label,
            "--network",
            "host",
            "--restart-condition",
            "any",
            "--restart-delay",
            "1s",
        ];
        args.extend(opts.iter().map(String::as_str));
        args.push(image);
        args.extend(command.iter().map(String::as_str));
        docker_cli_ok(&args);
        s
    }

    /// The controller's service: its data dir at the same path inside as outside, the host's
    /// Docker socket, NET_ADMIN for its iptables rules, no built-in router.
    fn controller(image: &str, controller_id: &str, data: &std::path::Path, api_port: u16) -> Self {
        let data = data.display().to_string();
        let opts = [
            "--stop-grace-period".to_string(),
            "20s".into(),
            "--cap-add".into(),
            "NET_ADMIN".into(),
            "--env".into(),
            "PIER_LOG=info,bollard=warn".into(),
            "--mount".into(),
            "type=bind,source=/var/run/docker.sock,target=/var/run/docker.sock".into(),
            // Staging containers bind-mount folders of the data dir, and the host's Docker
            // resolves those paths on the host.
            "--mount".into(),
            format!("type=bind,source={data},target={data}"),
        ];
        let command = [
            "pier-controller".to_string(),
            "--data-dir".into(),
            data,
            "--listen".into(),
            format!("127.0.0.1:{api_port}"),
            "--router-listen".into(),
            "none".into(),
            "--controller-id".into(),
            controller_id.into(),
            "--build-stack".into(),
            "false".into(),
        ];
        Self::create(
            format!("pier-controller-{controller_id}"),
            controller_id,
            &opts,
            image,
            &command,
        )
    }

    /// The routers' service: one task per node (`--mode global`), each reading the route table
    /// from the controller with the router token, given as a Docker secret.
    fn routers(
        image: &str,
        controller_id: &str,
        secret: &Secret,
        api_port: u16,
        port: u16,
    ) -> Self {
        let opts = [
            "--mode".to_string(),
            "global".into(),
            "--secret".into(),
            secret.0.clone(),
        ];
        let command = [
            "pier-router".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--controller".into(),
            format!("http://127.0.0.1:{api_port}"),
            "--token-file".into(),
            format!("/run/secrets/{}", secret.0),
        ];
        Self::create(
            format!("pier-routers-{controller_id}"),
            controller_id,
            &opts,
            image,
            &command,
        )
    }

    /// The ids of its running task containers.
    fn running_containers(&self) -> Vec<String> {
        let filter = format!("label=com.docker.swarm.service.name={}", self.name);
        let out = docker_cli_ok(&["ps", "-q", "--no-trunc", "--filter", &filter]);
        out.split_whitespace().map(str::to_string).collect()
    }

    /// The id of its one running task container, if exactly one runs.
    fn running_container(&self) -> Option<String> {
        let ids = self.running_containers();
        (ids.len() == 1).then(|| ids[0].clone())
    }

    fn logs(&self) -> String {
        let out = docker_cli(&["service", "logs", "--raw", "--tail", "150", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- service {} logs ---\n{}", self.name, self.logs());
        }
        let _ = docker_cli(&["service", "rm", &self.name]);
        // Its task containers go a moment later; the instances are removed after that (by the
        // platform's drop), so nothing recreates them.
        let filter = format!("label=com.docker.swarm.service.name={}", self.name);
        let left = || {
            let out = docker_cli(&["ps", "-aq", "--filter", &filter]);
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        for _ in 0..300 {
            if left().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for id in left() {
            let _ = docker_cli(&["rm", "--force", &id]);
        }
    }
}

/// A Docker secret of this test, removed on drop (after the services that use it).
struct Secret(String);

impl Secret {
    fn create(name: String, controller_id: &str, file: &std::path::Path) -> Secret {
        let label = format!("pier.test={controller_id}");
        let file = file.display().to_string();
        docker_cli_ok(&["secret", "create", "--label", &label, &name, &file]);
        Secret(name)
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let _ = docker_cli(&["secret", "rm", &self.0]);
    }
}

/// Sends requests through the router until stopped; counts successes and failures.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    first_failure: Arc<std::sync::Mutex<Option<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(router: &str, host: &str) -> Traffic {
        let stop: Arc<AtomicBool> = Arc::default();
        let (ok, failed): (Arc<AtomicU64>, Arc<AtomicU64>) = (Arc::default(), Arc::default());
        let first_failure: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let (s, o, f, ff) = (
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
            Arc::clone(&first_failure),
        );
        let (url, host) = (format!("{router}/"), host.to_string());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let (status, body) = http_get(&url, Some(&host), None);
                if status == 200 {
                    o.fetch_add(1, Ordering::Relaxed);
                } else {
                    f.fetch_add(1, Ordering::Relaxed);
                    ff.lock()
                        .unwrap()
                        .get_or_insert_with(|| format!("{status}: {body}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Traffic {
            stop,
            ok,
            failed,
            first_failure,
            thread: Some(thread),
        }
    }

    /// Stops it; (succeeded, failed, the first failure).
    fn finish(mut self) -> (u64, u64, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.first_failure.lock().unwrap().take(),
        )
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn controller_and_routers_as_swarm_services_survive_the_controller_being_killed() {
    require_swarm_manager();
    let image = PlatformImage::build();
    let controller_id = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let data = tempfile::tempdir().unwrap();
    let data_path = data.path().to_path_buf();
    let (api_port, router_port) = (free_port(), free_port());
    // Declared in this order so that the services go first, then the secret, then the
    // platform's objects (instances, networks, firewall rules).
    let mut p = Platform::attach(&controller_id, data, api_port);
    let controller = Service::controller(&image.0, &controller_id, &data_path, api_port);
    let first = eventually(
        Duration::from_secs(60),
        "the controller's task runs",
        || controller.running_container(),
    );
    p.wait_for_api(Duration::from_secs(60));
    let secret = Secret::create(
        format!("pier-router-token-{controller_id}"),
        &controller_id,
        &data_path.join("router-token"),
    );
    let routers = Service::routers(&image.0, &controller_id, &secret, api_port, router_port);
    p.router = format!("http://127.0.0.1:{router_port}");

    let app = copy_dir(&repo_root().join("examples").join("python-app"));
    p.pier_ok(&["push", "hello", "-i", "2"], app.path());
    eventually(
        Duration::from_secs(60),
        "the app answers through the routers",
        || (p.get_via_router("hello.localhost", "/").0 == 200).then_some(()),
    );
    assert_eq!(routers.running_containers().len(), 1, "one router per node");
    let instances = p.instance_ids("hello");
    assert_eq!(instances.len(), 2);
    // The controller in its container put its rules in the host's tables (NET_ADMIN, the host's
    // network, the image's iptables): instances cannot reach the host.
    let rules = std::process::Command::new("iptables")
        .args(["-S", "INPUT"])
        .output()
        .expect("iptables -S INPUT");
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains(&format!("pier:{controller_id}")) && rules.contains("-j DROP"),
        "the controller's firewall rules are in the host's INPUT chain:\n{rules}"
    );

    // The controller's container dies; Swarm (restart condition any) starts another task, and
    // the routers keep serving from the route table they have.
    let traffic = Traffic::start(&p.router, "hello.localhost");
    std::thread::sleep(Duration::from_millis(500));
    let killed = std::time::Instant::now();
    docker_cli_ok(&["kill", &first]);
    let second = eventually(Duration::from_secs(90), "Swarm starts a new task", || {
        controller.running_container().filter(|id| *id != first)
    });
    let restarted = killed.elapsed();
    p.wait_for_api(Duration::from_secs(60));
    eprintln!(
        "controller killed: new task running after {:.1} s, API answering after {:.1} s",
        restarted.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));
    let (ok, failed, first_failure) = traffic.finish();
    assert!(
        ok > 10,
        "requests went through while the controller was away: {ok}"
    );
    assert_eq!(
        failed, 0,
        "no request failed while Swarm restarted the controller (first: {first_failure:?})"
    );
    assert_ne!(first, second);
    let tasks = docker_cli_ok(&[
        "service",
        "ps",
        "--format",
        "{{.DesiredState}}",
        &controller.name,
    ]);
    assert_eq!(
        tasks.lines().count(),
        2,
        "one task died, one runs:\n{tasks}"
    );

    // The new controller adopted the instances (same containers, not restarted) and still
    // converges: a scale-up starts a third, which the routers learn about.
    assert_eq!(
        p.instance_ids("hello"),
        instances,
        "the instances were adopted"
    );
    let view = p.app("hello").expect("the app survived the restart");
    assert_eq!(view.state, AppState::Started);
    assert!(view
        .instances
        .iter()
        .all(|i| i.state == InstanceState::Running));
    p.pier_ok(&["scale", "hello", "-i", "3"], app.path());
    eventually(
        Duration::from_secs(60),
        "the third instance answers",
        || {
            let (status, body) = p.get_via_router("hello.localhost", "/");
            (status == 200 && body.contains("instance=2")).then_some(())
        },
    );
    assert_eq!(p.instance_ids("hello").len(), 3);

    // An operator's restart (`docker service update --force`, as an upgrade does): Swarm stops
    // the task with SIGTERM, the controller exits cleanly leaving its instances, a new task
    // adopts them; the routers serve throughout.
    let instances = p.instance_ids("hello");
    let traffic = Traffic::start(&p.router, "hello.localhost");
    docker_cli_ok(&["service", "update", "--force", "--detach", &controller.name]);
    let third = eventually(Duration::from_secs(90), "Swarm replaces the task", || {
        controller.running_container().filter(|id| *id != second)
    });
    p.wait_for_api(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    let (ok, failed, first_failure) = traffic.finish();
    assert!(ok > 10, "{ok} requests");
    assert_eq!(failed, 0, "no request failed (first: {first_failure:?})");
    let stopped = docker_cli_ok(&["inspect", "--format", "{{.State.ExitCode}}", &second]);
    assert_eq!(
        stopped.trim(),
        "0",
        "SIGTERM stopped the controller cleanly"
    );
    assert_ne!(third, second);
    assert_eq!(p.instance_ids("hello"), instances, "adopted again");
    assert_eq!(p.app("hello").expect("the app").instances.len(), 3);
    drop((routers, controller, secret));
}

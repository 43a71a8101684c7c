//! Test harness for end-to-end tests: starts the real `pier-controller` (and `pier-router`) binaries
//! on free ports with a temporary data dir, runs the real `pier` binary against them, and removes
//! every Docker object they made when the test ends, pass or fail.
//!
//! Every controller a test starts gets its own `--controller-id`, which labels every container,
//! volume and network it creates (`pier.controller=<id>`); cleanup removes exactly those, networks
//! last (Docker only removes a network once no container is attached to it).
//!
//! Tests speak to the controller's API through [`pier_client`] ([`Platform::api`],
//! [`Platform::call`]) and assert on its typed answers. Raw HTTP ([`http_request`]) is for the
//! router's data plane (Host headers, refusals of malformed requests) and for API requests the
//! typed client cannot make on purpose (invalid names, chunked uploads).

// A test harness: failing loudly, at once, is what it is for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use pier_api;
pub use pier_client;

pub mod faults;

use pier_api::{
    AppEvent, AppName, AppResponse, DeploymentResponse, ErrorCode, LogLine, PackageResponse,
};
use pier_client::{Client, ClientError};

/// An app name a test knows to be valid.
pub fn app_name(name: &str) -> AppName {
    name.parse()
        .unwrap_or_else(|e| panic!("{name:?} is not an app name: {e}"))
}

/// One line of `pier logs --json`: a log line, or a drop notice shaped like one with its counts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct PrintedLog {
    #[serde(flatten)]
    pub line: LogLine,
    /// Lines dropped, on a drop notice.
    #[serde(default)]
    pub dropped: Option<u64>,
    #[serde(default)]
    pub first_seq: Option<u64>,
    #[serde(default)]
    pub last_seq: Option<u64>,
}

impl PrintedLog {
    pub fn parse(line: &str) -> PrintedLog {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a log line ({e}): {line}"))
    }
}

/// Where cargo put the workspace's binaries (next to the `deps` folder the test runs from).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` \
         (./scripts/test does this)",
        path.display()
    );
    path
}

/// Fails the test, loudly, when Docker can't be reached.
pub fn require_docker() {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "Docker is not reachable, and these tests need it. Start it (`sudo systemctl start docker` \
         or `sudo dockerd > /tmp/dockerd.log 2>&1 &`) and run the tests again."
    );
}

/// Runs the `docker` CLI and returns what it said, whether it succeeded or not.
pub fn docker_cli(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run the docker CLI")
}

/// Runs the `docker` CLI, fails the test with its stderr unless it succeeded, and returns its
/// stdout, trimmed.
pub fn docker_cli_ok(args: &[&str]) -> String {
    let out = docker_cli(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn docker() -> bollard::Docker {
    bollard::Docker::connect_with_local_defaults().expect("docker client")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Containers labelled with a controller id: id → labels (running or not).
pub fn containers(controller_id: &str) -> HashMap<String, HashMap<String, String>> {
    runtime().block_on(async {
        let docker = docker().negotiate_version().await.expect("docker");
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("pier.controller={controller_id}")],
        )]);
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        docker
            .list_containers(Some(opts))
            .await
            .expect("list containers")
            .into_iter()
            .filter_map(|c| Some((c.id?, c.labels.unwrap_or_default())))
            .collect()
    })
}

/// Removes every container, volume and network labelled with the controller id. Twice: a create
/// that the killed controller had already sent can land in Docker after the first pass.
pub fn cleanup_docker(controller_id: &str) {
    cleanup_pass(controller_id);
    std::thread::sleep(Duration::from_millis(1500));
    cleanup_pass(controller_id);
}

fn cleanup_pass(controller_id: &str) {
    runtime().block_on(async {
        let Ok(docker) = docker().negotiate_version().await else {
            return;
        };
        let label = format!("pier.controller={controller_id}");
        let filters = HashMap::from([("label".to_string(), vec![label.clone()])]);
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        if let Ok(list) = docker.list_containers(Some(opts)).await {
            for c in list {
                if let Some(id) = c.id {
                    let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(true)
                        .build();
                    let _ = docker.remove_container(&id, Some(opts)).await;
                }
            }
        }
        let vopts = bollard::query_parameters::ListVolumesOptionsBuilder::default()
            .filters(&filters)
            .build();
        if let Ok(v) = docker.list_volumes(Some(vopts)).await {
            for vol in v.volumes.unwrap_or_default() {
                let _ = docker
                    .remove_volume(
                        &vol.name,
                        Some(bollard::query_parameters::RemoveVolumeOptions { force: true }),
                    )
                    .await;
            }
        }
        // After the containers: a network with a container attached cannot be removed.
        for net in networks_labelled(&docker, controller_id).await {
            let _ = docker.remove_network(&net).await;
        }
        // The app images (after the containers that run them). Again a few times: an image load
        // the killed controller had sent may still finish after the first listing.
        for round in 0..5 {
            let iopts = bollard::query_parameters::ListImagesOptionsBuilder::default()
                .filters(&filters)
                .build();
            let images = docker.list_images(Some(iopts)).await.unwrap_or_default();
            if images.is_empty() && round > 0 {
                break;
            }
            for i in images {
                let opts = bollard::query_parameters::RemoveImageOptionsBuilder::default()
                    .force(true)
                    .build();
                let _ = docker.remove_image(&i.id, Some(opts), None).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    });
    remove_firewall_rules(controller_id);
}

/// The iptables rules a controller put on its instance network's bridge (tagged with the
/// comment `pier:<controller id>`), removed with the network.
pub fn remove_firewall_rules(controller_id: &str) {
    let tag = format!("pier:{controller_id}");
    for chain in ["INPUT", "DOCKER-USER", "FORWARD"] {
        let Ok(out) = std::process::Command::new("iptables")
            .args(["-S", chain])
            .output()
        else {
            return;
        };
        for rule in String::from_utf8_lossy(&out.stdout).lines() {
            // `-A CHAIN ...rule... --comment pier:ID` (the comment may be quoted).
            if !rule.split_whitespace().any(|w| w.trim_matches('"') == tag) {
                continue;
            }
            let Some(spec) = rule.strip_prefix("-A ") else {
                continue;
            };
            let args: Vec<String> = std::iter::once("-D".to_string())
                .chain(
                    spec.split_whitespace()
                        .map(|w| w.trim_matches('"').to_string()),
                )
                .collect();
            let _ = std::process::Command::new("iptables").args(&args).status();
        }
    }
}

async fn networks_labelled(docker: &bollard::Docker, controller_id: &str) -> Vec<String> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("pier.controller={controller_id}")],
    )]);
    let opts = bollard::query_parameters::ListNetworksOptionsBuilder::default()
        .filters(&filters)
        .build();
    docker
        .list_networks(Some(opts))
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| n.id)
        .collect()
}

/// Docker networks labelled with a controller id, by id.
pub fn networks(controller_id: &str) -> Vec<String> {
    runtime().block_on(async {
        let docker = docker().negotiate_version().await.expect("docker");
        networks_labelled(&docker, controller_id).await
    })
}

/// Where [`reserve_instance_subnet`] takes subnets from; the controller picks its own /24s from
/// 10.213.0.0/16, so the two never meet.
const TEST_SUBNETS: (u32, u8) = (0x0AD6_0000, 16); // 10.214.0.0/16

/// Creates the controller's instance network (`pier-<id>`, labelled like the controller labels
/// it) on a free subnet of length `prefix` and returns the subnet. Docker refuses a subnet that
/// overlaps another network's, so tests running at once never share one: the next is tried.
pub fn reserve_instance_subnet(controller_id: &str, prefix: u8) -> String {
    assert!((16..=30).contains(&prefix), "prefix /{prefix}");
    runtime().block_on(async {
        let docker = docker().negotiate_version().await.expect("docker");
        let (base, base_prefix) = TEST_SUBNETS;
        let count = 1u32 << (prefix - base_prefix);
        let start = uuid::Uuid::new_v4().as_u128() as u32 % count;
        for i in 0..count.min(512) {
            let n = (start + i) % count;
            let net = std::net::Ipv4Addr::from(base + n * (1u32 << (32 - prefix)));
            let subnet = format!("{net}/{prefix}");
            let gateway = std::net::Ipv4Addr::from(u32::from(net) + 1).to_string();
            let req = bollard::models::NetworkCreateRequest {
                name: format!("pier-{controller_id}"),
                driver: Some("bridge".into()),
                ipam: Some(bollard::models::Ipam {
                    driver: Some("default".into()),
                    config: Some(vec![bollard::models::IpamConfig {
                        subnet: Some(subnet.clone()),
                        gateway: Some(gateway),
                        ..Default::default()
                    }]),
                    options: None,
                }),
                labels: Some(HashMap::from([
                    ("pier.controller".to_string(), controller_id.to_string()),
                    ("pier.kind".to_string(), "instances".to_string()),
                ])),
                ..Default::default()
            };
            match docker.create_network(req).await {
                Ok(_) => return subnet,
                Err(e) if e.to_string().to_lowercase().contains("overlap") => continue,
                Err(e) => panic!("cannot create a test network on {subnet}: {e}"),
            }
        }
        panic!("no free /{prefix} for a test network in 10.214.0.0/16");
    })
}

/// The IPv4 address of a container on the named network.
pub fn container_ip(container: &str, network: &str) -> Option<String> {
    runtime().block_on(async {
        let docker = docker().negotiate_version().await.expect("docker");
        let i = docker
            .inspect_container(
                container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()?;
        let ip = i
            .network_settings?
            .networks?
            .get(network)?
            .ip_address
            .clone()?;
        (!ip.is_empty()).then_some(ip)
    })
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    /// Everything it printed, line by line, as it prints.
    pub lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn");
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Everything it printed so far, line by line.
    pub fn printed(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }

    /// Waits for a printed line containing `needle` and returns it.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!(
                    "no line containing {needle:?} within {timeout:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    pub fn kill9(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`STOP`, `CONT`, ...).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Options for [`Platform::start`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub max_package_bytes: Option<u64>,
    pub crash_backoff_base_ms: Option<u64>,
    /// Run the router as the standalone `pier-router` binary instead of the built-in one.
    pub standalone_router: bool,
    /// More `pier-controller` arguments.
    pub controller_args: Vec<String>,
    /// Give the controller an instance network on a subnet of this prefix length that no other
    /// test has (see [`reserve_instance_subnet`]); without it the controller picks a /24.
    pub instance_subnet_prefix: Option<u8>,
    /// More environment for `pier-controller` (e.g. `DOCKER_HOST` for a private dockerd).
    pub controller_env: Vec<(String, String)>,
    /// Mount a tmpfs of this many bytes as the data dir (needs root; unmounted on drop).
    pub data_tmpfs_bytes: Option<u64>,
}

/// A controller (and router) started for one test, with its own data dir and Docker label.
pub struct Platform {
    pub controller_id: String,
    pub data: tempfile::TempDir,
    pub home: tempfile::TempDir,
    pub api: String,
    pub router: String,
    pub token: String,
    pub opts: Options,
    pub controller: Option<Proc>,
    pub router_proc: Option<Proc>,
    /// The subnet reserved for the instance network, when the options asked for one.
    pub instance_subnet: Option<String>,
    /// The tmpfs the data dir is on, when the options asked for one.
    pub data_mount: Option<faults::Tmpfs>,
    /// Runs the typed client's calls (and their connections) for the synchronous tests.
    rt: tokio::runtime::Runtime,
    api_port: u16,
    router_port: u16,
}

/// The port in a line like `... listening on http://127.0.0.1:PORT`.
fn port_of(line: &str) -> u16 {
    line.trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

impl Platform {
    pub fn start() -> Platform {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Platform {
        require_docker();
        let controller_id = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let data = tempfile::tempdir().expect("data dir");
        // Port 0: the binaries bind a free port and print it (no port picked here can be taken by
        // someone else, Docker's published ports included, before they bind it).
        let mut p = Platform::new(controller_id, data, opts, 0);
        // `p` exists first, so that its drop removes the network if anything below fails.
        if let Some(prefix) = p.opts.instance_subnet_prefix {
            p.instance_subnet = Some(reserve_instance_subnet(&p.controller_id, prefix));
        }
        if let Some(bytes) = p.opts.data_tmpfs_bytes {
            p.data_mount = Some(faults::Tmpfs::mount(p.data.path(), bytes));
        }
        p.start_controller();
        p.token = std::fs::read_to_string(p.data.path().join("admin-token"))
            .expect("admin token file")
            .trim()
            .to_string();
        if p.opts.standalone_router {
            p.start_router();
        }
        p
    }

    /// A handle on a controller this test does not spawn (one Docker Swarm runs, say) that uses
    /// `data` as its data dir and serves its API on 127.0.0.1:`api_port`, with no built-in
    /// router ([`Platform::start_router`] starts one); [`Platform::wait_for_api`] waits for it.
    /// Dropping it removes the controller's Docker objects, not the controller.
    pub fn attach(controller_id: &str, data: tempfile::TempDir, api_port: u16) -> Platform {
        let opts = Options {
            standalone_router: true,
            ..Options::default()
        };
        Platform::new(controller_id.to_string(), data, opts, api_port)
    }

    /// A platform with nothing started yet: its API on 127.0.0.1:`api_port` (0 until the
    /// controller says), no token, no router.
    fn new(controller_id: String, data: tempfile::TempDir, opts: Options, api_port: u16) -> Self {
        Platform {
            controller_id,
            data,
            home: tempfile::tempdir().expect("pier home"),
            api: if api_port == 0 {
                String::new()
            } else {
                format!("http://127.0.0.1:{api_port}")
            },
            router: String::new(),
            token: String::new(),
            opts,
            controller: None,
            router_proc: None,
            instance_subnet: None,
            data_mount: None,
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("tokio runtime"),
            api_port,
            router_port: 0,
        }
    }

    /// Waits up to `timeout` until the API answers the admin token (read from the data dir).
    pub fn wait_for_api(&mut self, timeout: Duration) {
        let token_file = self.data.path().join("admin-token");
        let whoami = format!("{}/v1/whoami", self.api);
        self.token = eventually(timeout, "the controller answers the admin token", || {
            let token = std::fs::read_to_string(&token_file)
                .ok()?
                .trim()
                .to_string();
            let (status, _) = http_get(&whoami, None, Some(&token));
            (status == 200).then_some(token)
        });
    }

    /// Starts (or restarts) the controller on the same ports (free ones the first time) and data
    /// dir.
    pub fn start_controller(&mut self) {
        let mut cmd = Command::new(bin("pier-controller"));
        cmd.arg("--data-dir")
            .arg(self.data.path())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.api_port))
            .arg("--controller-id")
            .arg(&self.controller_id)
            .arg("--build-stack")
            .arg("false")
            .env("PIER_LOG", "info,bollard=warn");
        if self.opts.standalone_router {
            cmd.arg("--router-listen").arg("none");
        } else {
            cmd.arg("--router-listen")
                .arg(format!("127.0.0.1:{}", self.router_port));
        }
        if let Some(m) = self.opts.max_package_bytes {
            cmd.arg("--max-package-bytes").arg(m.to_string());
        }
        if let Some(b) = self.opts.crash_backoff_base_ms {
            cmd.arg("--crash-backoff-base-ms").arg(b.to_string());
        }
        if let Some(s) = &self.instance_subnet {
            cmd.arg("--instance-subnet").arg(s);
        }
        cmd.args(&self.opts.controller_args);
        cmd.envs(self.opts.controller_env.iter().map(|(k, v)| (k, v)));
        let mut proc = Proc::spawn(cmd);
        let line = proc.wait_for_line("pier-controller listening on", Duration::from_secs(60));
        self.api_port = port_of(&line);
        self.api = format!("http://127.0.0.1:{}", self.api_port);
        if !self.opts.standalone_router {
            let line = proc.wait_for_line("(built in) listening on", Duration::from_secs(10));
            self.router_port = port_of(&line);
            self.router = format!("http://127.0.0.1:{}", self.router_port);
        }
        self.controller = Some(proc);
    }

    /// The token a standalone router uses: the router token, which may only read routes and post
    /// access logs.
    pub fn router_token(&self) -> String {
        std::fs::read_to_string(self.data.path().join("router-token"))
            .expect("router token file")
            .trim()
            .to_string()
    }

    pub fn start_router(&mut self) {
        let mut cmd = Command::new(bin("pier-router"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", self.router_port))
            .arg("--controller")
            .arg(&self.api)
            .arg("--token")
            .arg(self.router_token());
        let mut proc = Proc::spawn(cmd);
        let line = proc.wait_for_line("listening on", Duration::from_secs(30));
        self.router_port = port_of(&line);
        self.router = format!("http://127.0.0.1:{}", self.router_port);
        self.router_proc = Some(proc);
    }

    /// Runs the real `pier` binary with this platform's API and token in its environment.
    pub fn pier(&self, args: &[&str], cwd: &Path) -> Output {
        self.pier_command(args)
            .current_dir(cwd)
            .output()
            .expect("run pier")
    }

    /// The real `pier` binary with `args`, logged in to this platform, stdin closed: for
    /// commands a test runs in the background (`pier logs`) or kills.
    pub fn pier_command<S: AsRef<std::ffi::OsStr>>(
        &self,
        args: impl IntoIterator<Item = S>,
    ) -> Command {
        let mut cmd = Command::new(bin("pier"));
        cmd.args(args)
            .env("PIER_HOME", self.home.path())
            .env("PIER_API", &self.api)
            .env("PIER_TOKEN", &self.token)
            .env_remove("PIER_API_URL")
            .stdin(Stdio::null());
        cmd
    }

    /// Like [`Platform::pier`], but panics with the output unless it succeeds.
    pub fn pier_ok(&self, args: &[&str], cwd: &Path) -> String {
        let out = self.pier(args, cwd);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "pier {args:?} failed:\n{text}");
        text
    }

    /// GET through the router with a Host header; returns (status, body).
    pub fn get_via_router(&self, host: &str, path: &str) -> (u16, String) {
        http_get(&format!("{}{}", self.router, path), Some(host), None)
    }

    /// The typed API client, with the admin token.
    pub fn api(&self) -> Client {
        self.api_with(Some(self.token.clone()))
    }

    /// The typed API client with another token (or none).
    pub fn api_with(&self, token: Option<String>) -> Client {
        Client::new(&self.api, token).expect("API client")
    }

    /// Runs an API call (or any future) to its end: `p.call(p.api().apps())`.
    pub fn call<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Starts an API call that runs while the test goes on; `p.call(handle)` waits for it.
    pub fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.spawn(f)
    }

    /// The app's events as the API reports them (`GET /v1/apps/NAME/events`), newest first.
    pub fn events(&self, app: &str) -> Vec<AppEvent> {
        self.call(self.api().events(&app_name(app)))
            .unwrap_or_else(|e| panic!("events of {app}: {e}"))
    }

    /// The app as the API reports it (`GET /v1/apps/NAME`), or None on 404.
    pub fn app(&self, name: &str) -> Option<AppResponse> {
        match self.call(self.api().app(&app_name(name))) {
            Ok(app) => Some(app),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => None,
            Err(e) => panic!("GET app {name}: {e}"),
        }
    }

    /// The app's deployments, newest first.
    pub fn deployments(&self, app: &str) -> Vec<DeploymentResponse> {
        self.call(self.api().deployments(&app_name(app)))
            .unwrap_or_else(|e| panic!("deployments of {app}: {e}"))
    }

    /// Uploads `body` as a package in one piece, with its length.
    pub fn upload(&self, body: Vec<u8>) -> Result<PackageResponse, ClientError> {
        let len = body.len() as u64;
        let chunk =
            futures_util::stream::once(
                async move { Ok::<_, std::io::Error>(bytes::Bytes::from(body)) },
            );
        self.call(self.api().upload_package(chunk, len))
    }

    pub fn containers(&self) -> HashMap<String, HashMap<String, String>> {
        containers(&self.controller_id)
    }

    /// Instance containers of an app that are running, by id.
    pub fn instance_ids(&self, app: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .containers()
            .into_iter()
            .filter(|(_, l)| {
                l.get("pier.app").map(String::as_str) == Some(app)
                    && l.get("pier.kind").map(String::as_str) == Some("instance")
            })
            .map(|(id, _)| id)
            .collect();
        v.sort();
        v
    }

    /// The controller's Docker network for instances.
    pub fn network_name(&self) -> String {
        format!("pier-{}", self.controller_id)
    }

    /// Addresses of an app's instance containers on the instance network, by container id.
    pub fn instance_ips(&self, app: &str) -> HashMap<String, String> {
        let net = self.network_name();
        self.instance_ids(app)
            .into_iter()
            .filter_map(|id| Some((id.clone(), container_ip(&id, &net)?)))
            .collect()
    }

    /// SIGSTOPs the standalone router: it keeps its sockets but polls (and acknowledges) nothing.
    pub fn pause_router(&self) {
        self.router_proc
            .as_ref()
            .expect("a standalone router")
            .signal("STOP");
    }

    pub fn resume_router(&self) {
        self.router_proc
            .as_ref()
            .expect("a standalone router")
            .signal("CONT");
    }

    /// Blob files in the controller's store (packages and droplets).
    pub fn blob_count(&self) -> usize {
        fn count(p: &Path) -> usize {
            std::fs::read_dir(p)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| {
                            if e.path().is_dir() {
                                count(&e.path())
                            } else {
                                1
                            }
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        count(&self.data.path().join("blobs")) + count(&self.data.path().join("tmp"))
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        // A failing test shows what the controller said, to make the failure explainable.
        if std::thread::panicking() {
            if let Some(c) = self.controller.as_mut() {
                let seen = c.printed();
                let from = seen.len().saturating_sub(150);
                eprintln!(
                    "--- controller output (last {} lines) ---",
                    seen.len() - from
                );
                for l in &seen[from..] {
                    eprintln!("{l}");
                }
            }
        }
        self.router_proc.take();
        self.controller.take();
        cleanup_docker(&self.controller_id);
        self.data_mount.take();
    }
}

/// A bare-bones blocking HTTP client for tests (one request per connection, HTTP/1.1).
pub fn http_request(
    method: &str,
    url: &str,
    host: Option<&str>,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, HashMap<String, String>, String) {
    runtime().block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client");
        let mut req = client.request(method.parse().expect("method"), url);
        if let Some(h) = host {
            req = req.header("host", h);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if !body.is_empty() {
            req = req.body(body.to_vec());
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                let text = resp.text().await.unwrap_or_default();
                (status, headers, text)
            }
            Err(e) => (0, HashMap::new(), format!("request failed: {e}")),
        }
    })
}

pub fn http_get(url: &str, host: Option<&str>, token: Option<&str>) -> (u16, String) {
    let (s, _, b) = http_request("GET", url, host, token, &[], b"");
    (s, b)
}

/// Copies an example app (or any folder) into a temp dir the test may change.
pub fn copy_dir(src: &Path) -> tempfile::TempDir {
    let dst = tempfile::tempdir().expect("temp dir");
    fn go(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).expect("mkdir");
        for e in std::fs::read_dir(src).expect("read dir").flatten() {
            let p = e.path();
            let t = dst.join(e.file_name());
            if p.is_dir() {
                go(&p, &t);
            } else {
                std::fs::copy(&p, &t).expect("copy");
            }
        }
    }
    go(src, dst.path());
    dst
}

/// The repository's root (for `examples/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// POSTs `body` with chunked transfer encoding (no Content-Length); returns (status, body).
pub fn post_chunked(url: &str, token: &str, body: Vec<u8>) -> (u16, String) {
    runtime().block_on(async {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            body.chunks(1024).map(|c| Ok(c.to_vec())).collect();
        let resp = reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await;
        match resp {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, format!("request failed: {e}")),
        }
    })
}

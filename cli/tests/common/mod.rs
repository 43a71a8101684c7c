//! A fake pier-controller for the CLI's tests: axum on 127.0.0.1:0, speaking the `pier-api` types,
//! recording every request it gets, with switches for the failures a test wants to see.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use pier_api::*;
use tokio::sync::{mpsc, oneshot};

pub const TOKEN: &str = "test-token";
pub const DROPLET: &str = "d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0";
pub const PACKAGE: &str = "abababababababababababababababababababababababababababababababab";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Succeed,
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// STARTING on the first poll, RUNNING after.
    Healthy,
    /// STARTING on the first poll, CRASHED after, with last output.
    Crash,
}

pub struct FakeState {
    pub requests: Mutex<Vec<String>>,
    pub app: Mutex<Option<AppResponse>>,
    pub put_body: Mutex<Option<serde_json::Value>>,
    pub package_len: Mutex<Option<usize>>,
    pub polls: Mutex<u32>,
    pub build: Mutex<Build>,
    pub start: Mutex<Start>,
    /// When set, the build stream pauses after its first line until this is released.
    pub build_gate: Mutex<Option<oneshot::Receiver<()>>>,
}

pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
    /// `https` when served over TLS.
    pub scheme: &'static str,
}

/// A self-signed certificate for `127.0.0.1` and `localhost`, made now, written as `NAME.pem`
/// and `NAME-key.pem` in `dir`: (certificate file, key file).
pub fn test_cert(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
    (c, k)
}

impl Fake {
    pub async fn start() -> Fake {
        Self::start_on("127.0.0.1:0", None).await
    }

    /// The fake served over TLS with this certificate, by the controller's own accept loop.
    pub async fn start_tls(cert: &Path, key: &Path) -> Fake {
        Self::start_on("127.0.0.1:0", Some((cert, key))).await
    }

    pub async fn start_on(bind: &str, tls: Option<(&Path, &Path)>) -> Fake {
        let state = Arc::new(FakeState {
            requests: Mutex::new(Vec::new()),
            app: Mutex::new(None),
            put_body: Mutex::new(None),
            package_len: Mutex::new(None),
            polls: Mutex::new(0),
            build: Mutex::new(Build::Succeed),
            start: Mutex::new(Start::Healthy),
            build_gate: Mutex::new(None),
        });
        let router = Router::new()
            .route("/v1/info", get(info))
            .route("/v1/packages", post(package))
            .route("/v1/apps", get(list))
            .route(
                "/v1/apps/{name}",
                put(put_app).get(get_app).delete(delete_app),
            )
            .route("/v1/apps/{name}/builds", post(build))
            .route("/v1/apps/{name}/actions/{action}", post(action))
            .route("/v1/apps/{name}/deployments", get(deployments).post(deploy))
            .layer(axum::middleware::from_fn_with_state(state.clone(), record))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let Some((cert, key)) = tls else {
            tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
            return Fake {
                addr,
                state,
                scheme: "http",
            };
        };
        let tls = pier_controller::http::serve::load_tls(cert, key).unwrap();
        let opts = pier_controller::http::serve::ServeOptions {
            header_timeout: std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(60),
            max_connections: 64,
            tls: Some(tls.into()),
        };
        let never = tokio_util::sync::CancellationToken::new();
        tokio::spawn(pier_controller::http::serve::serve(
            listener, router, opts, never,
        ));
        Fake {
            addr,
            state,
            scheme: "https",
        }
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Requests other than `GET /v1/info` and `GET /v1/apps/...` polls.
    pub fn changes(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.starts_with("POST") || r.starts_with("PUT") || r.starts_with("DELETE"))
            .collect()
    }

    /// `pier` with a private PIER_HOME and this fake as its controller.
    pub fn pier(&self, home: &Path, args: &[&str]) -> tokio::process::Command {
        let mut cmd = pier(home, args);
        cmd.env("PIER_API", self.url()).env("PIER_TOKEN", TOKEN);
        cmd
    }
}

/// `pier` with a private PIER_HOME and no controller settings from the environment.
pub fn pier(home: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pier"));
    cmd.args(args)
        .env("PIER_HOME", home.join("pier-home"))
        .env_remove("PIER_API")
        .env_remove("PIER_TOKEN")
        .current_dir(home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub async fn run(mut cmd: tokio::process::Command) -> Output {
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("pier did not finish within 60 s")
        .expect("pier runs");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn record(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    state
        .requests
        .lock()
        .unwrap()
        .push(format!("{method} {}", uri.path()));
    next.run(req).await
}

fn api_error(code: ErrorCode, message: &str) -> Response {
    let status = StatusCode::from_u16(code.status()).unwrap();
    (status, Json(ApiError::new(code, message))).into_response()
}

/// The 401 to answer with, unless the request carries the token.
fn unauthorized(headers: &HeaderMap) -> Option<Response> {
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TOKEN}"));
    (!ok).then(|| api_error(ErrorCode::Unauthorized, "missing or wrong token"))
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn droplet() -> DropletInfo {
    DropletInfo {
        sha256: DROPLET.into(),
        buildpack: "python".into(),
        process_types: BTreeMap::new(),
        created_at: now(),
    }
}

fn new_app(name: AppName, instances: u32) -> AppResponse {
    AppResponse {
        routes: vec![format!("http://{name}.localhost:8080")],
        name,
        guid: "guid-1".into(),
        state: AppState::Stopped,
        package: None,
        droplet: None,
        processes: vec![ProcessResponse {
            kind: ProcessType::web(),
            instances,
            memory_mb: 256,
            disk_mb: 1024,
            command: None,
            health_check: HealthCheck {
                timeout_secs: 5,
                ..HealthCheck::default()
            },
        }],
        instances: vec![],
        env: BTreeMap::new(),
        buildpacks: vec![],
        command: None,
        created_at: now(),
        updated_at: now(),
        state_version: 0,
        standby_ready: 0,
    }
}

async fn info() -> Json<InfoResponse> {
    Json(InfoResponse {
        name: "pier-controller".into(),
        version: "0.1.0".into(),
        domain: "localhost".into(),
        router_url: "http://localhost:8080".into(),
        stack_image: "pier-stack:test".into(),
        max_package_bytes: 1 << 30,
    })
}

async fn package(State(state): State<Arc<FakeState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    // It must be a gzipped tar.
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&body[..]));
    if archive.entries().map(|e| e.count()).is_err() {
        return api_error(ErrorCode::InvalidPackage, "not a gzipped tar");
    }
    *state.package_len.lock().unwrap() = Some(body.len());
    Json(PackageResponse {
        sha256: PACKAGE.into(),
        size: body.len() as u64,
    })
    .into_response()
}

async fn list(State(state): State<Arc<FakeState>>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    let apps: Vec<AppResponse> = state.app.lock().unwrap().iter().cloned().collect();
    Json(apps).into_response()
}

async fn put_app(
    State(state): State<Arc<FakeState>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    let Ok(name) = name.parse::<AppName>() else {
        return api_error(ErrorCode::InvalidName, "bad name");
    };
    let config: AppConfigRequest = match serde_json::from_value(body.clone()) {
        Ok(c) => c,
        Err(e) => return api_error(ErrorCode::InvalidRequest, &e.to_string()),
    };
    *state.put_body.lock().unwrap() = Some(body);
    let mut app = state.app.lock().unwrap();
    let a = app.get_or_insert_with(|| new_app(name, 1));
    if let Some(n) = config.instances {
        a.processes[0].instances = n;
    }
    Json(a.clone()).into_response()
}

async fn get_app(
    State(state): State<Arc<FakeState>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    let start = *state.start.lock().unwrap();
    let mut app = state.app.lock().unwrap();
    let mut polls = state.polls.lock().unwrap();
    let Some(a) = app.as_mut().filter(|a| a.name.as_str() == name) else {
        return api_error(ErrorCode::NotFound, &format!("app {name:?} not found"));
    };
    if a.state == AppState::Started {
        *polls += 1;
        if *polls >= 2 {
            for i in &mut a.instances {
                match start {
                    Start::Healthy => {
                        i.state = InstanceState::Running;
                        i.host_port = Some(40000 + i.index as u16);
                    }
                    Start::Crash => {
                        i.state = InstanceState::Crashed;
                        i.crash_count = 1;
                        i.reason = Some("exited with status 3".into());
                        i.last_output =
                            vec!["Traceback (most recent call last):".into(), "boom".into()];
                    }
                }
                i.since = now();
            }
        }
    }
    Json(a.clone()).into_response()
}

async fn delete_app(
    State(state): State<Arc<FakeState>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    let mut app = state.app.lock().unwrap();
    if app.as_ref().is_some_and(|a| a.name.as_str() == name) {
        *app = None;
        StatusCode::NO_CONTENT.into_response()
    } else {
        api_error(ErrorCode::NotFound, &format!("app {name:?} not found"))
    }
}

fn log(seq: u64, text: &str) -> BuildEvent {
    BuildEvent::Log(LogLine {
        seq,
        time: now(),
        source: pier_api::LogSource::Staging(0),
        stream: LogStream::Out,
        text: text.into(),
    })
}

async fn build(
    State(state): State<Arc<FakeState>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    Json(req): Json<BuildRequest>,
) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    if state.app.lock().unwrap().as_ref().map(|a| a.name.as_str()) != Some(name.as_str()) {
        return api_error(ErrorCode::NotFound, "no such app");
    }
    if req.package.is_some() && req.package.as_deref() != Some(PACKAGE) {
        return api_error(ErrorCode::InvalidRequest, "unknown package");
    }
    let outcome = *state.build.lock().unwrap();
    let gate = state.build_gate.lock().unwrap().take();
    let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(16);
    let state2 = state.clone();
    tokio::spawn(async move {
        let line = |e: &BuildEvent| Ok(format!("{}\n", serde_json::to_string(e).unwrap()));
        let _ = tx.send(line(&log(1, "-----> Python Buildpack"))).await;
        if let Some(gate) = gate {
            let _ = gate.await;
        }
        let _ = tx
            .send(line(&log(2, "       Installing requirements")))
            .await;
        let last = match outcome {
            Build::Succeed => {
                if let Some(a) = state2.app.lock().unwrap().as_mut() {
                    a.droplet = Some(droplet());
                }
                BuildEvent::Done(droplet())
            }
            Build::Fail => BuildEvent::Error(ApiError::new(
                ErrorCode::StagingFailed,
                "the python buildpack's compile exited with status 1",
            )),
        };
        let _ = tx.send(line(&last)).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn action(
    State(state): State<Arc<FakeState>>,
    UrlPath((name, action)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    let mut app = state.app.lock().unwrap();
    let Some(a) = app.as_mut().filter(|a| a.name.as_str() == name) else {
        return api_error(ErrorCode::NotFound, &format!("app {name:?} not found"));
    };
    match action.as_str() {
        "start" | "restart" => {
            a.state = AppState::Started;
            let droplet = a.droplet.as_ref().map(|d| d.sha256.clone());
            a.instances = (0..a.processes[0].instances)
                .map(|index| InstanceStatus {
                    process: ProcessType::web(),
                    index,
                    state: InstanceState::Starting,
                    since: now(),
                    instance_id: Some(format!("i-{index}")),
                    container_id: None,
                    host_port: None,
                    droplet: droplet.clone(),
                    crash_count: 0,
                    reason: None,
                    last_output: vec![],
                    stats: None,
                    revision: Some(1),
                })
                .collect();
            *state.polls.lock().unwrap() = 0;
        }
        "stop" => {
            a.state = AppState::Stopped;
            a.instances.clear();
        }
        _ => return api_error(ErrorCode::NotFound, "no such action"),
    }
    Json(a.clone()).into_response()
}

/// `POST /v1/apps/{name}/deployments`: the same as a start, answered with a deployment.
async fn deploy(
    State(state): State<Arc<FakeState>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let resp = action(State(state), UrlPath((name, "start".to_string())), headers).await;
    if !resp.status().is_success() {
        return resp;
    }
    Json(deployment(DeploymentState::Deploying, None)).into_response()
}

fn deployment(state: DeploymentState, reason: Option<String>) -> DeploymentResponse {
    DeploymentResponse {
        id: "dep-1".into(),
        revision: 1,
        previous_revision: None,
        strategy: DeploymentStrategy::Rolling,
        state,
        max_in_flight: 1,
        reason,
        canary: None,
        created_at: now(),
        finished_at: None,
    }
}

/// `GET /v1/apps/{name}/deployments`: derived from the instances the app polls show.
async fn deployments(
    State(state): State<Arc<FakeState>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    let app = state.app.lock().unwrap();
    let Some(a) = app.as_ref().filter(|a| a.name.as_str() == name) else {
        return api_error(ErrorCode::NotFound, &format!("app {name:?} not found"));
    };
    if a.state != AppState::Started {
        return Json(Vec::<DeploymentResponse>::new()).into_response();
    }
    let d = if let Some(bad) = a
        .instances
        .iter()
        .find(|i| i.state == InstanceState::Crashed)
    {
        let mut why = format!(
            "new instance {} (web) of revision 1 failed: {}; last output:",
            bad.index,
            bad.reason.clone().unwrap_or_default()
        );
        for l in &bad.last_output {
            why.push_str("\n    ");
            why.push_str(l);
        }
        deployment(DeploymentState::Failed, Some(why))
    } else if !a.instances.is_empty()
        && a.instances
            .iter()
            .all(|i| i.state == InstanceState::Running)
    {
        deployment(DeploymentState::Succeeded, None)
    } else {
        deployment(DeploymentState::Deploying, None)
    };
    Json(vec![d]).into_response()
}

/// The real controller, in this process on the fake runtime, with a temporary data dir; it
/// stops when this is dropped.
pub struct Real {
    pub url: String,
    pub token: String,
    pub _dir: tempfile::TempDir,
    pub _shutdown: tokio_util::sync::DropGuard,
}

impl Real {
    pub async fn start() -> Real {
        let dir = tempfile::tempdir().unwrap();
        let mut config = pier_controller::Config::for_tests(dir.path().join("data"));
        config.router_listen = "none".into();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let controller = pier_controller::Controller::start_on(
            config,
            pier_controller::runtime::fake::FakeRuntime::new("cli-test"),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let url = format!("http://127.0.0.1:{}", controller.api_addr.port());
        let token = controller.new_token.clone().unwrap();
        tokio::spawn(controller.run());
        Real {
            url,
            token,
            _dir: dir,
            _shutdown: shutdown.drop_guard(),
        }
    }

    pub fn admin(&self) -> pier_client::Client {
        pier_client::Client::new(&self.url, Some(self.token.clone())).unwrap()
    }

    pub async fn pier(&self, home: &std::path::Path, args: &[&str]) -> Output {
        let mut cmd = pier(home, args);
        cmd.env("PIER_API", &self.url)
            .env("PIER_TOKEN", &self.token);
        run(cmd).await
    }
}

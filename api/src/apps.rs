use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::logs::LogLine;
use crate::names::{AppName, ProcessType};
use crate::routes::RouteSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckType {
    /// TCP connect to the instance's port.
    #[default]
    Port,
    /// GET an endpoint; 200-399 is healthy.
    Http,
    /// The process being alive is enough.
    Process,
}

impl std::str::FromStr for HealthCheckType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "port" => Ok(HealthCheckType::Port),
            "http" => Ok(HealthCheckType::Http),
            "process" | "none" => Ok(HealthCheckType::Process),
            other => Err(format!(
                "unknown health check type {other:?}: use port, http or process"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    #[serde(rename = "type")]
    pub kind: HealthCheckType,
    /// For `http`: the path to GET. Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Seconds an instance may take to pass its first check. Default 60, at most 180.
    pub timeout_secs: u32,
    /// Seconds one `http` check may take. Default 1.
    pub invocation_timeout_secs: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            kind: HealthCheckType::Port,
            endpoint: None,
            timeout_secs: 60,
            invocation_timeout_secs: 1,
        }
    }
}

/// Create or update an app (`PUT /v1/apps/{name}`). Every field is optional: what is absent is left
/// as it is (or defaulted on create). `env` is merged, never replacing variables it doesn't name,
/// and `routes` are added to the app's routes, as applying a Cloud Foundry manifest does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfigRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    /// The start command; overrides the Procfile and the buildpack's default. `""` clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Buildpacks to use, in order; an empty list means detect over all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildpacks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<RouteSpec>>,
    /// Remove every route and add no default one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_route: Option<bool>,
    /// On create, give the app a default route with a random suffix instead of its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_route: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// Change one process type of an app (`PUT /v1/apps/{name}/processes/{type}`): what `pier scale`
/// and `pier set-health-check` send. Absent fields are left as they are. A process type the
/// droplet doesn't declare can't be scaled above 0 until a staging declares it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfigRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    /// `""` clears the user's command, falling back to the Procfile's or buildpack's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AppState {
    Started,
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    Starting,
    Running,
    Crashed,
    Down,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "STARTING",
            InstanceState::Running => "RUNNING",
            InstanceState::Crashed => "CRASHED",
            InstanceState::Down => "DOWN",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub process: ProcessType,
    pub index: u32,
    pub state: InstanceState,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Where the instance's port is published on the host (loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// sha256 of the droplet the instance runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub droplet: Option<String>,
    /// The app revision the instance runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    #[serde(default)]
    pub crash_count: u32,
    /// Why it is not running: the exit status, an OOM kill, a failed health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The last lines the instance printed, kept when it failed to start or crashed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_output: Vec<String>,
    /// Resource use, filled in when asked for (`GET /v1/apps/{name}?stats=true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<InstanceStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct InstanceStats {
    /// Percent of one core, averaged since the previous sample.
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
    /// Bytes the instance wrote to its container filesystem.
    pub disk_bytes: u64,
    pub disk_limit_bytes: u64,
    pub uptime_secs: u64,
    /// When the figures were sampled (the controller samples every instance in the background
    /// and answers with the latest sample).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub sampled_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessResponse {
    #[serde(rename = "type")]
    pub kind: ProcessType,
    pub instances: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    /// The command that runs: the user's, the Procfile's or the buildpack's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub health_check: HealthCheck,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropletInfo {
    pub sha256: String,
    pub buildpack: String,
    #[serde(default)]
    pub process_types: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppResponse {
    pub name: AppName,
    pub guid: String,
    pub state: AppState,
    /// The newest uploaded package's sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub droplet: Option<DropletInfo>,
    pub processes: Vec<ProcessResponse>,
    /// Every instance of every process, ordered by process then index.
    pub instances: Vec<InstanceStatus>,
    /// Full URLs, like `http://hello.localhost:8080`.
    pub routes: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub buildpacks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The controller's change counter when this answer was made. `GET /v1/apps/{name}` with
    /// `?wait_after=` this value answers as soon as something changed since (instead of polling).
    #[serde(default)]
    pub state_version: u64,
    /// Standby instances (`pier-controller --standby-instances`) running and healthy, ready for
    /// a scale-up; not in `instances`.
    #[serde(default)]
    pub standby_ready: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageResponse {
    pub sha256: String,
    pub size: u64,
}

/// Stage a package (`POST /v1/apps/{name}/builds`). With `package` (a sha256 from
/// `POST /v1/packages`), that package becomes the app's package and is staged; without it, the app's
/// package is staged again (a restage). On success the droplet becomes the app's current droplet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
}

/// One line of the NDJSON stream a build answers with: staging output while it runs, then exactly
/// one `done` or `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildEvent {
    Log(LogLine),
    Done(DropletInfo),
    Error(ApiError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppEvent {
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub kind: crate::vocab::EventKind,
    pub message: String,
    pub actor: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoResponse {
    pub name: String,
    pub version: String,
    /// Apps get `NAME.DOMAIN` as their default route.
    pub domain: String,
    /// Base URL apps are reached at, like `http://localhost:8080`; the app's host goes in front.
    pub router_url: String,
    pub stack_image: String,
    pub max_package_bytes: u64,
}

/// `PATCH /v1/apps/{name}/env` (Cloud Foundry v3's shape): sets each named variable, or unsets it
/// when its value is `null`; variables it does not name are left as they are. The change is stored
/// and reaches the instances with the app's next deployment (`pier set-env` starts one unless
/// `--no-restart`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvPatchRequest {
    pub var: BTreeMap<String, Option<String>>,
}

/// `GET /v1/apps/{name}/env`, and the answer to a PATCH of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvResponse {
    /// The user's variables. To anyone but the platform admin and the space's developers each
    /// value is `[PRIVATE DATA HIDDEN]`.
    pub environment_variables: BTreeMap<String, String>,
    /// What the platform gives every instance: `VCAP_APPLICATION` (JSON text, without the
    /// per-instance fields), `VCAP_SERVICES` (JSON text), and `DATABASE_URL` / `REDIS_URL` for
    /// the first PostgreSQL / Redis binding when the user has no variable of that name (these
    /// three hidden as above).
    pub system_env: BTreeMap<String, String>,
    /// Whether the running revision already has these variables (false after a change stored with
    /// `--no-restart`, until the next deployment or start).
    pub deployed: bool,
}

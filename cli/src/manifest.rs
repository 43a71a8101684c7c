//! `manifest.yml`: the Cloud Foundry app manifest.
//!
//! Parsing is strict: an unknown field is refused (a typo would otherwise be silently ignored),
//! and every value is validated while it is read, so errors carry serde_yaml_ng's path and
//! position: `applications[0].memory: invalid size "lots": ... at line 4 column 13`.
//!
//! Variables: `((name))` is replaced before parsing, from `--var name=value` (wins) and
//! `--vars-file FILE` (a flat YAML map). A variable that is a whole value keeps its YAML type
//! (`instances: ((n))` with `n=2` is a number); one inside a longer string is spliced in as text.
//! A variable no source gives is an error naming it and its line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pier_api::{AppName, HealthCheck, HealthCheckType, ProcessType, RouteSpec};
use std::marker::PhantomData;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::output::Failure;

/// The longest start timeout Cloud Foundry allows, in seconds.
pub const MAX_TIMEOUT_SECS: u32 = 180;

/// A validated manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub applications: Vec<AppManifest>,
}

/// One entry of `applications:`. Absent fields are `None`: the controller keeps what it has.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppManifest {
    pub name: Option<AppName>,
    /// As written: relative to the manifest's folder (see [`LoadedManifest::app_path`]).
    pub path: Option<PathBuf>,
    pub instances: Option<u32>,
    pub memory_mb: Option<u64>,
    pub disk_mb: Option<u64>,
    pub buildpacks: Option<Vec<String>>,
    /// The older single `buildpack:` field.
    pub buildpack: Option<String>,
    pub command: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub routes: Option<Vec<RouteSpec>>,
    pub no_route: Option<bool>,
    pub random_route: Option<bool>,
    pub health_check_type: Option<HealthCheckType>,
    pub health_check_http_endpoint: Option<String>,
    pub health_check_invocation_timeout: Option<u32>,
    pub timeout: Option<u32>,
    pub stack: Option<String>,
    /// `processes:` in the order written.
    pub processes: Option<Vec<ProcessManifest>>,
}

/// One entry of an app's `processes:`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessManifest {
    pub kind: ProcessType,
    pub instances: Option<u32>,
    pub memory_mb: Option<u64>,
    pub disk_mb: Option<u64>,
    pub command: Option<String>,
    pub health_check_type: Option<HealthCheckType>,
    pub health_check_http_endpoint: Option<String>,
    pub health_check_invocation_timeout: Option<u32>,
    pub timeout: Option<u32>,
}

impl ProcessManifest {
    pub fn health_check(&self) -> Option<HealthCheck> {
        health_check_from(
            self.health_check_type,
            &self.health_check_http_endpoint,
            self.health_check_invocation_timeout,
            self.timeout,
        )
    }

    /// The request that applies this entry to the process.
    pub fn request(&self) -> pier_api::ProcessConfigRequest {
        pier_api::ProcessConfigRequest {
            instances: self.instances,
            memory_mb: self.memory_mb,
            disk_mb: self.disk_mb,
            command: self.command.clone(),
            health_check: self.health_check(),
        }
    }
}

/// The file as written. Every field is checked while it is read (see [`Checked`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    /// Ignored; CF manifests sometimes say `version: 1`.
    #[serde(default, rename = "version")]
    _version: Option<u32>,
    applications: Vec<RawApp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawApp {
    name: Option<Checked<AppName>>,
    path: Option<PathBuf>,
    instances: Option<u32>,
    memory: Option<Checked<Size>>,
    #[serde(rename = "disk_quota", alias = "disk-quota")]
    disk_quota: Option<Checked<Size>>,
    buildpacks: Option<Vec<String>>,
    buildpack: Option<String>,
    command: Option<String>,
    env: Option<BTreeMap<String, Checked<EnvValue>>>,
    routes: Option<Vec<RawRoute>>,
    no_route: Option<bool>,
    random_route: Option<bool>,
    health_check_type: Option<Checked<HealthCheckKind>>,
    health_check_http_endpoint: Option<Checked<Endpoint>>,
    health_check_invocation_timeout: Option<Checked<Timeout>>,
    timeout: Option<Checked<Timeout>>,
    stack: Option<String>,
    processes: Option<Vec<RawProcess>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawProcess {
    #[serde(rename = "type")]
    kind: Checked<ProcessType>,
    instances: Option<u32>,
    memory: Option<Checked<Size>>,
    #[serde(rename = "disk_quota", alias = "disk-quota")]
    disk_quota: Option<Checked<Size>>,
    command: Option<String>,
    health_check_type: Option<Checked<HealthCheckKind>>,
    health_check_http_endpoint: Option<Checked<Endpoint>>,
    health_check_invocation_timeout: Option<Checked<Timeout>>,
    timeout: Option<Checked<Timeout>>,
}

impl From<RawProcess> for ProcessManifest {
    fn from(raw: RawProcess) -> Self {
        ProcessManifest {
            kind: raw.kind.0,
            instances: raw.instances,
            memory_mb: raw.memory.map(|c| c.0 .0),
            disk_mb: raw.disk_quota.map(|c| c.0 .0),
            command: raw.command,
            health_check_type: raw.health_check_type.map(|c| c.0 .0),
            health_check_http_endpoint: raw.health_check_http_endpoint.map(|c| c.0 .0),
            health_check_invocation_timeout: raw.health_check_invocation_timeout.map(|c| c.0 .0),
            timeout: raw.timeout.map(|c| c.0 .0),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    route: Checked<RouteSpec>,
}

impl From<RawApp> for AppManifest {
    fn from(raw: RawApp) -> Self {
        AppManifest {
            name: raw.name.map(|c| c.0),
            path: raw.path,
            instances: raw.instances,
            memory_mb: raw.memory.map(|c| c.0 .0),
            disk_mb: raw.disk_quota.map(|c| c.0 .0),
            buildpacks: raw.buildpacks,
            buildpack: raw.buildpack,
            command: raw.command,
            env: raw
                .env
                .map(|env| env.into_iter().map(|(k, v)| (k, v.0 .0)).collect()),
            routes: raw
                .routes
                .map(|routes| routes.into_iter().map(|r| r.route.0).collect()),
            no_route: raw.no_route,
            random_route: raw.random_route,
            health_check_type: raw.health_check_type.map(|c| c.0 .0),
            health_check_http_endpoint: raw.health_check_http_endpoint.map(|c| c.0 .0),
            health_check_invocation_timeout: raw.health_check_invocation_timeout.map(|c| c.0 .0),
            timeout: raw.timeout.map(|c| c.0 .0),
            stack: raw.stack,
            processes: raw
                .processes
                .map(|ps| ps.into_iter().map(ProcessManifest::from).collect()),
        }
    }
}

/// A memory or disk size in MiB: `256M`, `1G`, or a bare number of megabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// An env value as YAML allows it unquoted (`PORT: 80`, `DEBUG: true`), kept as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvValue(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheckKind(pub HealthCheckType);

/// A path beginning with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint(pub String);

/// Seconds, 1 to 180.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub u32);

/// A manifest read from a file, with the folder its relative paths start from.
#[derive(Debug, Clone)]
pub struct LoadedManifest {
    pub file: PathBuf,
    pub manifest: Manifest,
}

impl LoadedManifest {
    /// The app's folder: its `path` relative to the manifest's folder.
    pub fn app_path(&self, app: &AppManifest) -> Option<PathBuf> {
        let dir = self.file.parent().unwrap_or(Path::new("."));
        app.path.as_ref().map(|p| dir.join(p))
    }
}

/// Reads `path`: a manifest file, or a folder holding `manifest.yml` (or `manifest.yaml`).
pub fn load(path: &Path) -> Result<LoadedManifest> {
    load_with_vars(path, &BTreeMap::new())
}

/// Like [`load`], replacing `((name))` variables from `vars` first.
pub fn load_with_vars(path: &Path, vars: &BTreeMap<String, String>) -> Result<LoadedManifest> {
    let file = if path.is_dir() {
        find_in(path).ok_or_else(|| {
            Failure::new(format!("there is no manifest.yml in {}", path.display()))
        })?
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let text = substitute(&text, vars).map_err(|e| {
        Failure::new(format!("{}: {e}", file.display()))
            .hint("give each variable with --var NAME=VALUE or in a --vars-file")
    })?;
    let manifest = parse(&text).map_err(|e| {
        Failure::new(format!("{}: {e}", file.display())).hint(
            "Pier reads name, path, instances, memory, disk_quota, buildpacks (or buildpack), \
                 command, env, routes, no-route, random-route, stack, processes, health-check-type, \
                 health-check-http-endpoint, health-check-invocation-timeout and timeout",
        )
    })?;
    Ok(LoadedManifest { file, manifest })
}

/// `manifest.yml` or `manifest.yaml` in `dir`, if there is one.
pub fn find_in(dir: &Path) -> Option<PathBuf> {
    ["manifest.yml", "manifest.yaml"]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Parses and validates a manifest's text.
pub fn parse(text: &str) -> Result<Manifest, String> {
    let raw: RawManifest = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    let manifest = Manifest {
        applications: raw
            .applications
            .into_iter()
            .map(AppManifest::from)
            .collect(),
    };
    if manifest.applications.is_empty() {
        return Err("applications: the manifest lists no application".to_string());
    }
    for (i, app) in manifest.applications.iter().enumerate() {
        if app.buildpack.is_some() && app.buildpacks.is_some() {
            return Err(format!(
                "applications[{i}]: give either buildpacks or the older buildpack, not both"
            ));
        }
    }
    for (i, app) in manifest.applications.iter().enumerate() {
        let mut types = std::collections::BTreeSet::new();
        for p in app.processes.iter().flatten() {
            if !types.insert(p.kind.as_str()) {
                return Err(format!(
                    "applications[{i}].processes: the type {} is listed more than once",
                    p.kind
                ));
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for app in &manifest.applications {
        if let Some(name) = &app.name {
            if !seen.insert(name.as_str()) {
                return Err(format!(
                    "applications: the app {name} is listed more than once"
                ));
            }
        }
    }
    Ok(manifest)
}

impl AppManifest {
    /// `buildpacks`, or the legacy `buildpack` as a list of one.
    pub fn buildpack_list(&self) -> Option<Vec<String>> {
        self.buildpacks
            .clone()
            .or_else(|| self.buildpack.clone().map(|b| vec![b]))
    }

    /// The health check the manifest describes, if it says anything about one. Fields it doesn't
    /// give take Cloud Foundry's defaults, because the API sets the whole health check at once.
    pub fn health_check(&self) -> Option<HealthCheck> {
        health_check_from(
            self.health_check_type,
            &self.health_check_http_endpoint,
            self.health_check_invocation_timeout,
            self.timeout,
        )
    }

    /// The `web` entry of `processes:`, if there is one.
    pub fn web_process(&self) -> Option<&ProcessManifest> {
        self.processes.iter().flatten().find(|p| p.kind.is_web())
    }
}

fn health_check_from(
    kind: Option<HealthCheckType>,
    endpoint: &Option<String>,
    invocation_timeout: Option<u32>,
    timeout: Option<u32>,
) -> Option<HealthCheck> {
    if kind.is_none() && endpoint.is_none() && invocation_timeout.is_none() && timeout.is_none() {
        return None;
    }
    let defaults = HealthCheck::default();
    let kind = match (kind, endpoint) {
        (Some(k), _) => k,
        // An endpoint alone means an http check, as in CF's v3 manifests.
        (None, Some(_)) => HealthCheckType::Http,
        (None, None) => defaults.kind,
    };
    Some(HealthCheck {
        kind,
        endpoint: endpoint.clone(),
        timeout_secs: timeout.unwrap_or(defaults.timeout_secs),
        invocation_timeout_secs: invocation_timeout.unwrap_or(defaults.invocation_timeout_secs),
    })
}

/// Collects variables: every `--vars-file` in order (later files win), then `--var NAME=VALUE`
/// (wins over files).
pub fn collect_vars(vars: &[String], files: &[PathBuf]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| Failure::new(format!("cannot read the vars file {}: {e}", f.display())))?;
        let map: BTreeMap<String, Checked<EnvValue>> =
            serde_yaml_ng::from_str(&text).map_err(|e| {
                Failure::new(format!("{}: {e}", f.display()))
                    .hint("a vars file is a flat YAML map: `name: value` per line")
            })?;
        for (k, v) in map {
            check_var_name(&k).map_err(|e| Failure::new(format!("{}: {e}", f.display())))?;
            out.insert(k, v.0 .0);
        }
    }
    for v in vars {
        let Some((k, val)) = v.split_once('=') else {
            return Err(Failure::new(format!("--var {v:?} has no '='"))
                .hint("write --var NAME=VALUE")
                .into());
        };
        check_var_name(k).map_err(|e| Failure::new(format!("--var {v:?}: {e}")))?;
        out.insert(k.to_string(), val.to_string());
    }
    Ok(out)
}

fn check_var_name(k: &str) -> Result<(), String> {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        Ok(())
    } else {
        Err(format!(
            "variable name {k:?} is invalid: use letters, digits, '_', '-' and '.'"
        ))
    }
}

/// Replaces `((name))` in a manifest's text. Every missing variable is named, with its line.
pub fn substitute(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut missing = Vec::new();
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("((") {
            let Some(len) = rest[start + 2..].find("))") else {
                break;
            };
            let name = &rest[start + 2..start + 2 + len];
            if check_var_name(name).is_err() {
                out.push_str(&rest[..start + 2]);
                rest = &rest[start + 2..];
                continue;
            }
            out.push_str(&rest[..start]);
            let after = &rest[start + 4 + len..];
            match vars.get(name) {
                None => {
                    missing.push(format!("(({name})) on line {}", n + 1));
                    out.push_str(&rest[start..start + 4 + len]);
                }
                Some(v) => {
                    // The whole value (after `key: ` or `- `): keep YAML's typing, but quote
                    // values YAML would read as something else (`a: b`, `#x`, `[1]`, ...).
                    let before = out.rsplit('\n').next().unwrap_or("").trim_end();
                    let whole =
                        (before.ends_with(':') || before.ends_with('-')) && after.trim().is_empty();
                    let plain = !v.is_empty()
                        && !v.contains(": ")
                        && !v.contains(" #")
                        && !v.contains('\n')
                        && !v.starts_with(|c: char| "{}[]&*!|>'\"%@`#,?:- ".contains(c))
                        && !v.ends_with([' ', ':']);
                    if whole && !plain {
                        out.push_str(&serde_json::to_string(v).unwrap_or_default());
                    } else {
                        out.push_str(v);
                    }
                }
            }
            rest = after;
        }
        out.push_str(rest);
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "the manifest uses variables nothing gives: {}",
            missing.join(", ")
        ))
    }
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        pier_api::parse_size_mb(s).map(Size)
    }
}

impl FromStr for EnvValue {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(EnvValue(s.to_string()))
    }
}

impl FromStr for HealthCheckKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<HealthCheckType>().map(HealthCheckKind)
    }
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if !s.starts_with('/') || s.contains(char::is_whitespace) {
            return Err(format!(
                "health check endpoint {s:?} must be a path starting with /, like /health"
            ));
        }
        Ok(Endpoint(s.to_string()))
    }
}

impl FromStr for Timeout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<u32>() {
            Ok(secs) if (1..=MAX_TIMEOUT_SECS).contains(&secs) => Ok(Timeout(secs)),
            _ => Err(format!(
                "timeout {s:?} must be a whole number of seconds from 1 to {MAX_TIMEOUT_SECS}"
            )),
        }
    }
}

/// A value read from a YAML scalar (string, number or boolean, as text) with `T::from_str`.
///
/// The check runs inside the visitor on purpose: serde_yaml_ng attaches the scalar's own path
/// and line only to errors raised while the scalar is being visited. A `try_from` conversion runs
/// after, and its error would be reported at the enclosing mapping instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<T>(pub T);

impl<'de, T> Deserialize<'de> for Checked<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor(PhantomData)).map(Checked)
    }
}

struct ScalarVisitor<T>(PhantomData<T>);

impl<T> ScalarVisitor<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn parse<E: de::Error>(text: &str) -> Result<T, E> {
        text.parse::<T>().map_err(E::custom)
    }
}

impl<T> Visitor<'_> for ScalarVisitor<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Self::parse(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        Self::parse(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        Self::parse(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Self::parse(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        Self::parse(&v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"---
applications:
- name: hello
  path: ./site
  instances: 2
  memory: 512M
  disk_quota: 1G
  buildpacks:
  - python
  command: python app.py
  env:
    GREETING: hi
    PORT_OFFSET: 2
    DEBUG: true
  routes:
  - route: hello.example.com
  - route: api.example.com/v1
  no-route: false
  random-route: true
  health-check-type: http
  health-check-http-endpoint: /health
  timeout: 90
"#;

    #[test]
    fn reads_every_field() {
        let m = parse(FULL).unwrap();
        let app = &m.applications[0];
        assert_eq!(app.name.as_ref().unwrap().as_str(), "hello");
        assert_eq!(app.path.as_deref(), Some(Path::new("./site")));
        assert_eq!(app.instances, Some(2));
        assert_eq!(app.memory_mb, Some(512));
        assert_eq!(app.disk_mb, Some(1024));
        assert_eq!(app.buildpack_list(), Some(vec!["python".to_string()]));
        assert_eq!(app.command.as_deref(), Some("python app.py"));
        let env = app.env.as_ref().unwrap();
        assert_eq!(env["PORT_OFFSET"], "2");
        assert_eq!(env["DEBUG"], "true");
        let routes: Vec<String> = app
            .routes
            .as_ref()
            .unwrap()
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(routes, ["hello.example.com", "api.example.com/v1"]);
        assert_eq!(app.no_route, Some(false));
        assert_eq!(app.random_route, Some(true));
        let hc = app.health_check().unwrap();
        assert_eq!(hc.kind, HealthCheckType::Http);
        assert_eq!(hc.endpoint.as_deref(), Some("/health"));
        assert_eq!(hc.timeout_secs, 90);
        assert_eq!(hc.invocation_timeout_secs, 1);
    }

    #[test]
    fn legacy_buildpack_and_defaults() {
        let m = parse("applications:\n- name: a\n  buildpack: staticfile\n").unwrap();
        let app = &m.applications[0];
        assert_eq!(app.buildpack_list(), Some(vec!["staticfile".to_string()]));
        assert_eq!(app.health_check(), None);
        assert_eq!(app.instances, None);
    }

    #[test]
    fn several_apps_in_order() {
        let m = parse(
            "applications:\n- name: web\n  path: web\n- name: worker\n  path: worker\n  no-route: true\n",
        )
        .unwrap();
        let names: Vec<&str> = m
            .applications
            .iter()
            .map(|a| a.name.as_ref().unwrap().as_str())
            .collect();
        assert_eq!(names, ["web", "worker"]);
        assert_eq!(m.applications[1].no_route, Some(true));
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let err = parse("applications:\n- name: a\n  memroy: 256M\n").unwrap_err();
        assert!(err.contains("unknown field `memroy`"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_memory_is_named_with_its_line() {
        let err = parse("applications:\n- name: a\n  instances: 1\n  memory: lots\n").unwrap_err();
        assert!(err.contains("applications[0].memory"), "{err}");
        assert!(err.contains("invalid size \"lots\""), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (
                "applications:\n- name: Not_Valid\n",
                "applications[0].name",
                "line 2",
            ),
            (
                "applications:\n- name: a\n  instances: -1\n",
                "applications[0].instances",
                "line 3",
            ),
            (
                "applications:\n- name: a\n  routes:\n  - route: bad_host.com\n",
                "applications[0].routes[0].route",
                "line 4",
            ),
            (
                "applications:\n- name: a\n  health-check-type: tcp\n",
                "applications[0].health-check-type",
                "line 3",
            ),
            (
                "applications:\n- name: a\n  timeout: 900\n",
                "applications[0].timeout",
                "line 3",
            ),
            (
                "applications:\n- name: a\n  env:\n    NESTED:\n      a: b\n",
                "applications[0].env.NESTED",
                "line 5",
            ),
        ];
        for (text, field, line) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(field), "{field}: {err}");
            assert!(err.contains(line), "{line}: {err}");
        }
    }

    #[test]
    fn malformed_yaml_and_empty_lists() {
        assert!(parse("applications: [\n").unwrap_err().contains("line"));
        assert!(parse("applications: []\n")
            .unwrap_err()
            .contains("no application"));
        assert!(parse("name: a\n")
            .unwrap_err()
            .contains("unknown field `name`"));
        assert!(parse("applications:\n- name: a\n- name: a\n")
            .unwrap_err()
            .contains("more than once"));
    }

    #[test]
    fn processes_and_stack() {
        let m = parse(
            "applications:\n- name: a\n  stack: pier-bookworm\n  processes:\n  - type: web\n    instances: 2\n    health-check-type: http\n    health-check-http-endpoint: /health\n  - type: worker\n    instances: 1\n    memory: 64M\n    command: python3 worker.py\n    health-check-type: process\n",
        )
        .unwrap();
        let app = &m.applications[0];
        assert_eq!(app.stack.as_deref(), Some("pier-bookworm"));
        let web = app.web_process().unwrap();
        assert_eq!(web.instances, Some(2));
        assert_eq!(web.health_check().unwrap().kind, HealthCheckType::Http);
        let worker = &app.processes.as_ref().unwrap()[1];
        assert_eq!(worker.kind.as_str(), "worker");
        let req = worker.request();
        assert_eq!(req.memory_mb, Some(64));
        assert_eq!(req.command.as_deref(), Some("python3 worker.py"));
        assert_eq!(req.health_check.unwrap().kind, HealthCheckType::Process);

        let err =
            parse("applications:\n- name: a\n  processes:\n  - type: Bad Type\n").unwrap_err();
        assert!(err.contains("processes[0].type"), "{err}");
        let err = parse("applications:\n- name: a\n  processes:\n  - type: w\n  - type: w\n")
            .unwrap_err();
        assert!(err.contains("more than once"), "{err}");
        let err = parse("applications:\n- name: a\n  processes:\n  - type: w\n    memroy: 1G\n")
            .unwrap_err();
        assert!(err.contains("unknown field `memroy`"), "{err}");
    }

    #[test]
    fn variables_are_substituted() {
        let vars = BTreeMap::from([
            ("n".to_string(), "3".to_string()),
            ("greeting".to_string(), "hi: there".to_string()),
            ("host".to_string(), "api".to_string()),
        ]);
        let text = "applications:\n- name: app-((host))\n  instances: ((n))\n  env:\n    G: ((greeting))\n  routes:\n  - route: ((host)).example.com\n";
        let m = parse(&substitute(text, &vars).unwrap()).unwrap();
        let app = &m.applications[0];
        assert_eq!(app.name.as_ref().unwrap().as_str(), "app-api");
        assert_eq!(app.instances, Some(3));
        assert_eq!(app.env.as_ref().unwrap()["G"], "hi: there");
        assert_eq!(
            app.routes.as_ref().unwrap()[0].to_string(),
            "api.example.com"
        );

        let err = substitute("a: ((x))\nb: ((y))\n", &BTreeMap::new()).unwrap_err();
        assert!(
            err.contains("((x)) on line 1") && err.contains("((y)) on line 2"),
            "{err}"
        );
        // Not a variable: left alone.
        assert_eq!(
            substitute("a: ((not a var))\n", &BTreeMap::new()).unwrap(),
            "a: ((not a var))\n"
        );
    }

    #[test]
    fn vars_from_flags_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vars.yml");
        std::fs::write(&f, "n: 2\nhost: from-file\n").unwrap();
        let vars = collect_vars(&["host=from-flag".to_string()], std::slice::from_ref(&f)).unwrap();
        assert_eq!(vars["n"], "2");
        assert_eq!(vars["host"], "from-flag", "--var wins over a vars file");
        assert!(collect_vars(&["novalue".to_string()], &[]).is_err());
        std::fs::write(&f, "- a\n").unwrap();
        assert!(collect_vars(&[], &[f]).is_err());
    }

    #[test]
    fn manifest_paths_are_relative_to_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("manifest.yml"),
            "applications:\n- name: a\n  path: site\n",
        )
        .unwrap();
        let loaded = load(dir.path()).unwrap();
        let app = &loaded.manifest.applications[0];
        assert_eq!(loaded.app_path(app).unwrap(), dir.path().join("site"));
    }
}

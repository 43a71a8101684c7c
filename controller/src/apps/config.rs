//! Creating and updating apps, scaling processes, mapping routes.

use std::collections::BTreeMap;

use pier_api::{
    AppConfigRequest, AppName, AppResponse, AppState, ErrorCode, EventKind, HealthCheck,
    HealthCheckType, ProcessConfigRequest, ProcessType, RouteMapping, RouteSpec,
};
use time::OffsetDateTime;

use super::{parse_name, AppService, AppSettings};
use crate::error::{Error, Result};
use crate::staging::Buildpacks;
use crate::store::{app_key, AppRecord, ProcessRecord};
use crate::tenancy::Scope;

/// Host names under the platform's domain that no app may take (they name the platform itself).
pub(super) const RESERVED_HOSTNAMES: &[&str] =
    &["api", "admin", "pier", "router", "metrics", "system"];

const MAX_INSTANCES: u32 = 256;

fn valid_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks one env var a user sets (`value` given) or unsets; errors name the variable, never its
/// value.
pub(super) fn check_env_var(k: &str, value: Option<&str>) -> Result<()> {
    if !valid_env_name(k) {
        return Err(Error::bad_request(format!(
            "env var name {k:?} is invalid: use letters, digits and '_', not starting with a digit"
        )));
    }
    if k == "PORT" || k.starts_with("VCAP_") || k.starts_with("CF_INSTANCE_") {
        return Err(Error::bad_request(format!(
            "env var {k} is set by the platform and cannot be overridden"
        )));
    }
    if value.is_some_and(|v| v.contains('\0')) {
        return Err(Error::bad_request(format!(
            "env var {k} contains a NUL byte"
        )));
    }
    Ok(())
}

/// Checks the per-process fields of a request.
fn validate_process(req: &ProcessConfigRequest) -> Result<()> {
    if let Some(n) = req.instances {
        if n > MAX_INSTANCES {
            return Err(Error::bad_request(format!(
                "instances must be at most {MAX_INSTANCES}, got {n}"
            )));
        }
    }
    if let Some(m) = req.memory_mb {
        if !(16..=65536).contains(&m) {
            return Err(Error::bad_request(format!(
                "memory must be between 16M and 64G, got {m}M"
            )));
        }
    }
    if let Some(d) = req.disk_mb {
        if !(64..=1024 * 1024).contains(&d) {
            return Err(Error::bad_request(format!(
                "disk must be between 64M and 1T, got {d}M"
            )));
        }
    }
    if let Some(c) = &req.command {
        if c.contains('\0') {
            return Err(Error::bad_request("command contains a NUL byte"));
        }
    }
    if let Some(hc) = &req.health_check {
        if !(1..=180).contains(&hc.timeout_secs) {
            return Err(Error::bad_request(
                "health check timeout must be between 1 and 180 seconds",
            ));
        }
        if !(1..=60).contains(&hc.invocation_timeout_secs) {
            return Err(Error::bad_request(
                "health check invocation timeout must be between 1 and 60 seconds",
            ));
        }
        if let Some(e) = &hc.endpoint {
            if !e.starts_with('/') || e.contains(char::is_whitespace) {
                return Err(Error::bad_request(format!(
                    "health check endpoint {e:?} must be a path starting with /"
                )));
            }
        }
    }
    Ok(())
}

fn web_part(req: &AppConfigRequest) -> ProcessConfigRequest {
    ProcessConfigRequest {
        instances: req.instances,
        memory_mb: req.memory_mb,
        disk_mb: req.disk_mb,
        command: req.command.clone(),
        health_check: req.health_check.clone(),
    }
}

/// Applies the fields a request names to a process.
fn apply_process(p: &mut ProcessRecord, req: &ProcessConfigRequest) {
    if let Some(n) = req.instances {
        p.instances = n;
    }
    if let Some(m) = req.memory_mb {
        p.memory_mb = m;
    }
    if let Some(d) = req.disk_mb {
        p.disk_mb = d;
    }
    if let Some(c) = &req.command {
        p.command = if c.trim().is_empty() {
            None
        } else {
            Some(c.clone())
        };
    }
    if let Some(hc) = &req.health_check {
        p.health_check = hc.clone();
    }
}

/// A process as a new app or a newly declared process type gets it: web runs one instance with a
/// port check; other types run none until scaled, and are checked by being alive.
pub(super) fn default_process(settings: &AppSettings, kind: &ProcessType) -> ProcessRecord {
    ProcessRecord {
        instances: u32::from(kind.is_web()),
        memory_mb: settings.default_memory_mb,
        disk_mb: settings.default_disk_mb,
        command: None,
        health_check: HealthCheck {
            kind: if kind.is_web() {
                HealthCheckType::Port
            } else {
                HealthCheckType::Process
            },
            ..HealthCheck::default()
        },
    }
}

/// Checks a config request completely before anything is changed.
fn validate_config(req: &AppConfigRequest, buildpacks: &Buildpacks) -> Result<()> {
    validate_process(&web_part(req))?;
    if let Some(env) = &req.env {
        for (k, v) in env {
            check_env_var(k, Some(v))?;
        }
    }
    if let Some(bps) = &req.buildpacks {
        buildpacks.check(bps)?;
    }
    Ok(())
}

/// Internal routes (`apps.internal`) are a name for an app's instances, reached on their own
/// port: no path (as on Cloud Foundry), and a host name in front of the domain.
fn check_internal(r: &RouteSpec) -> Result<()> {
    if !r.is_internal() {
        return Ok(());
    }
    if r.host == pier_api::INTERNAL_DOMAIN {
        return Err(Error::bad_request(format!(
            "route {r} has no host name: internal routes are HOST.{0} (pier map-route APP {0} \
             --hostname HOST)",
            pier_api::INTERNAL_DOMAIN
        )));
    }
    if !r.path.is_empty() {
        return Err(Error::bad_request(format!(
            "route {r} has a path: internal routes ({}) take none, they name the app's instances \
             (reached on port {}); map {} instead",
            pier_api::INTERNAL_DOMAIN,
            pier_api::INTERNAL_PORT,
            r.host
        )));
    }
    Ok(())
}

fn random_suffix() -> String {
    let n: u32 = rand::random();
    format!("{:06x}", n & 0xff_ffff)
}

impl AppService {
    /// Refuses routes that are reserved or that another app already has. A route belongs to the
    /// space of the apps it is mapped to: an app of another space holding it is named only as
    /// that (names do not leak across spaces).
    fn check_routes_free(&self, app: &AppRecord, routes: &[RouteSpec]) -> Result<()> {
        let domain = &self.d.settings.domain;
        for r in routes {
            check_internal(r)?;
            let reserved = r.host == *domain
                || r.host
                    .strip_suffix(domain.as_str())
                    .and_then(|h| h.strip_suffix('.'))
                    .is_some_and(|h| RESERVED_HOSTNAMES.contains(&h));
            if reserved {
                return Err(Error::bad_request(format!(
                    "route {r} is reserved by the platform; reserved host names under {domain} are the \
                     domain itself and {}",
                    RESERVED_HOSTNAMES.join(", ")
                )));
            }
        }
        for other in self.d.store.list_apps()? {
            if other.guid == app.guid {
                continue;
            }
            for r in routes {
                if !other.routes.contains(r) {
                    continue;
                }
                let holder = if other.space_guid == app.space_guid {
                    format!("app {}", other.name)
                } else {
                    "an app in another space".to_string()
                };
                return Err(Error::api(
                    ErrorCode::Conflict,
                    format!("route {r} is already mapped to {holder}"),
                ));
            }
        }
        Ok(())
    }

    fn new_app(&self, space_guid: &str, name: &AppName) -> AppRecord {
        let now = OffsetDateTime::now_utc();
        AppRecord {
            name: name.clone(),
            guid: uuid::Uuid::new_v4().to_string(),
            space_guid: space_guid.to_string(),
            state: AppState::Stopped,
            package: None,
            droplet: None,
            processes: BTreeMap::from([(
                ProcessType::web(),
                default_process(&self.d.settings, &ProcessType::web()),
            )]),
            routes: Vec::new(),
            env: BTreeMap::new(),
            buildpacks: Vec::new(),
            bindings: Vec::new(),
            staging: None,
            restart_gen: 0,
            revisions: Vec::new(),
            droplet_source: None,
            current_revision: None,
            deployments: Vec::new(),
            old_blobs: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }

    /// The routes an app has after `req`: its own plus the ones asked for, or none; a new app
    /// with none asked for gets its default route.
    fn routes_after(
        &self,
        app: &AppRecord,
        req: &AppConfigRequest,
        created: bool,
    ) -> Result<Vec<RouteSpec>> {
        if req.no_route == Some(true) {
            return Ok(Vec::new());
        }
        let mut wanted = app.routes.clone();
        for r in req.routes.iter().flatten() {
            if !wanted.contains(r) {
                wanted.push(r.clone());
            }
        }
        if created && req.routes.as_ref().is_none_or(|r| r.is_empty()) {
            let domain = &self.d.settings.domain;
            let host = if req.random_route == Some(true) {
                format!("{}-{}.{}", app.name, random_suffix(), domain)
            } else {
                format!("{}.{}", app.name, domain)
            };
            let default: RouteSpec = host.parse().map_err(|e: String| Error::bad_request(e))?;
            wanted.push(default);
        }
        self.check_routes_free(app, &wanted)?;
        Ok(wanted)
    }

    /// Creates the app, or updates the fields `req` names (never removing env vars or routes it
    /// does not mention).
    pub async fn put(&self, at: &Scope, name: &str, req: AppConfigRequest) -> Result<AppResponse> {
        let name = parse_name(name)?;
        validate_config(&req, self.d.stager.buildpacks())?;
        let lock = self.d.locks.get(&app_key(&at.space.guid, &name));
        let _guard = lock.lock().await;
        let existing = self.d.store.get_app(&at.space.guid, &name)?;
        let created = existing.is_none();
        let mut app = existing.unwrap_or_else(|| self.new_app(&at.space.guid, &name));
        let web = app
            .processes
            .entry(ProcessType::web())
            .or_insert_with(|| default_process(&self.d.settings, &ProcessType::web()));
        apply_process(web, &web_part(&req));
        if let Some(bps) = &req.buildpacks {
            app.buildpacks = bps.clone();
        }
        if let Some(env) = &req.env {
            app.env.extend(env.clone());
        }
        app.routes = self.routes_after(&app, &req, created)?;
        app.updated_at = OffsetDateTime::now_utc();
        // A new app counts as started: a push over the quota is refused before anything is made.
        let admitted = self.quotas.admit(at, &app, created)?;
        self.d.store.put_app(&app)?;
        drop(admitted);
        let (kind, what) = if created {
            (EventKind::Created, "created")
        } else {
            (EventKind::Updated, "updated")
        };
        self.event(at, &app, kind, &format!("app {what}"));
        self.d.reconciler.nudge();
        self.d.instances.publish_routes();
        Ok(self.response(at, &app))
    }

    /// Scales a process, or changes its memory, disk, command or health check.
    pub async fn scale(
        &self,
        at: &Scope,
        name: &str,
        process: &str,
        req: ProcessConfigRequest,
    ) -> Result<AppResponse> {
        validate_process(&req)?;
        let kind: ProcessType = process
            .parse()
            .map_err(|e: pier_api::NameError| Error::bad_request(e.to_string()))?;
        let app = self.load(at, name)?;
        let lock = self.d.locks.get(&app.key());
        let _guard = lock.lock().await;
        let mut app = self.load(at, name)?;
        let known: Vec<String> = app.processes.keys().map(|k| k.to_string()).collect();
        let Some(p) = app.processes.get_mut(&kind) else {
            return Err(Error::api(
                ErrorCode::NotFound,
                format!(
                    "app {} has no process type {kind:?} (it has: {}); declare it in the Procfile or manifest and push",
                    app.name,
                    known.join(", ")
                ),
            ));
        };
        apply_process(p, &req);
        let summary = format!(
            "{kind}: {} instances, {}M memory, {}M disk, {:?} health check",
            p.instances, p.memory_mb, p.disk_mb, p.health_check.kind
        );
        app.updated_at = OffsetDateTime::now_utc();
        let admitted = self.quotas.admit(at, &app, false)?;
        self.d.store.put_app(&app)?;
        drop(admitted);
        self.event(at, &app, EventKind::Scaled, &summary);
        self.d.reconciler.converge(Some(&app.guid)).await;
        Ok(self.response(at, &app))
    }

    /// Maps (`map`) or unmaps a route.
    pub async fn route(
        &self,
        at: &Scope,
        name: &str,
        route: RouteSpec,
        map: bool,
    ) -> Result<AppResponse> {
        let app = self.load(at, name)?;
        let lock = self.d.locks.get(&app.key());
        let _guard = lock.lock().await;
        let mut app = self.load(at, name)?;
        if map {
            if app.routes.contains(&route) {
                return Ok(self.response(at, &app));
            }
            self.check_routes_free(&app, std::slice::from_ref(&route))?;
            app.routes.push(route.clone());
        } else {
            let before = app.routes.len();
            app.routes.retain(|r| r != &route);
            if app.routes.len() == before {
                return Err(Error::api(
                    ErrorCode::NotFound,
                    format!("route {route} is not mapped to app {}", app.name),
                ));
            }
        }
        app.updated_at = OffsetDateTime::now_utc();
        let admitted = self.quotas.admit(at, &app, false)?;
        self.d.store.put_app(&app)?;
        drop(admitted);
        let (kind, verb) = if map {
            (EventKind::RouteMapped, "mapped")
        } else {
            (EventKind::RouteUnmapped, "unmapped")
        };
        self.event(at, &app, kind, &format!("{verb} {route}"));
        self.d.instances.publish_routes();
        Ok(self.response(at, &app))
    }

    /// The routes of the scope's space and the apps they lead to.
    pub fn route_mappings(&self, at: &Scope) -> Result<Vec<RouteMapping>> {
        let mut out = vec![];
        for app in self.d.store.list_space_apps(&at.space.guid)? {
            for r in &app.routes {
                out.push(RouteMapping {
                    route: r.clone(),
                    app: app.name.to_string(),
                    url: self.d.settings.url_for(&r.host, &r.path),
                });
            }
        }
        out.sort_by(|a, b| a.route.cmp(&b.route));
        Ok(out)
    }
}

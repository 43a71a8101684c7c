//! The HTTP API (axum). Handlers validate, change the store (flushed before answering), and nudge
//! the reconciler; they never wait on Docker except where the API says so (builds stream, deletes
//! wait until the app's containers are gone).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::StreamExt;
use pier_api::{
    AppAction, AppConfigRequest, AppName, AppResponse, AppState, BuildEvent, BuildRequest,
    DeployRequest, DeploymentAction, DeploymentResponse, ErrorCode, EventKind, HealthCheck,
    HealthCheckType, InfoResponse, PackageResponse, ProcessConfigRequest, ProcessResponse,
    ProcessType, RouteSpec,
};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::blobs::WriteError;
use crate::error::{Error, Result};
use crate::server::Ctx;
use crate::store::{AppRecord, ProcessRecord};

type S = State<Arc<Ctx>>;

pub fn router(ctx: Arc<Ctx>) -> Router {
    let authed = Router::new()
        .route("/v1/apps", get(list_apps))
        .route(
            "/v1/apps/{name}",
            get(get_app).put(put_app).delete(delete_app),
        )
        .route("/v1/apps/{name}/builds", post(build))
        .route("/v1/apps/{name}/actions/{action}", post(action))
        .route("/v1/apps/{name}/events", get(events))
        .route(
            "/v1/apps/{name}/deployments",
            get(list_deployments).post(create_deployment),
        )
        .route(
            "/v1/apps/{name}/deployments/{id}/{action}",
            post(deployment_action),
        )
        .route("/v1/apps/{name}/revisions", get(revisions))
        .route(
            "/v1/apps/{name}/routes",
            post(map_route).delete(unmap_route),
        )
        .route("/v1/route-mappings", get(route_mappings))
        .route(
            "/v1/apps/{name}/processes/{process}",
            axum::routing::put(put_process),
        )
        .route("/v1/routes", get(routes))
        .merge(crate::logs_http::routes())
        .merge(crate::buildpacks_http::routes())
        .route(
            "/v1/packages",
            post(upload_package).layer(DefaultBodyLimit::disable()),
        )
        .layer(middleware::from_fn_with_state(ctx.clone(), require_token));
    Router::new()
        .route("/v1/info", get(info))
        .merge(authed)
        .fallback(|| async { Error::not_found("endpoint") })
        .with_state(ctx)
}

async fn require_token(State(ctx): S, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if crate::auth::check(&ctx.token_hash, t.trim()) => next.run(req).await,
        Some(_) => Error::api(
            ErrorCode::Unauthorized,
            "the token is wrong; use the admin token pier-controller printed (it is in its data \
             dir's admin-token file): pier login --api URL --token TOKEN",
        )
        .into_response(),
        None => Error::api(
            ErrorCode::Unauthorized,
            "missing token: send `Authorization: Bearer TOKEN`, or run pier login --api URL --token TOKEN",
        )
        .into_response(),
    }
}

fn parse_name(name: &str) -> Result<AppName> {
    name.parse::<AppName>()
        .map_err(|e| Error::api(ErrorCode::InvalidName, e.to_string()))
}

fn load(ctx: &Ctx, name: &str) -> Result<AppRecord> {
    let name = parse_name(name)?;
    ctx.store
        .get_app(&name)?
        .ok_or_else(|| Error::api(ErrorCode::NotFound, format!("app {name} not found")))
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    if body.is_empty() {
        return serde_json::from_slice(b"{}").map_err(|e| Error::bad_request(e.to_string()));
    }
    serde_json::from_slice(body)
        .map_err(|e| Error::bad_request(format!("invalid request body: {e}")))
}

async fn info(State(ctx): S) -> Json<InfoResponse> {
    Json(InfoResponse {
        name: "pier".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        domain: ctx.config.domain.clone(),
        router_url: ctx.url_for(&ctx.config.domain, ""),
        stack_image: ctx.config.stack_image.clone(),
        max_package_bytes: ctx.config.max_package_bytes,
    })
}

pub fn app_response(ctx: &Ctx, app: &AppRecord) -> AppResponse {
    let processes = app
        .processes
        .iter()
        .map(|(kind, p)| ProcessResponse {
            kind: kind.clone(),
            instances: p.instances,
            memory_mb: p.memory_mb,
            disk_mb: p.disk_mb,
            command: app.effective_command(kind),
            health_check: p.health_check.clone(),
        })
        .collect();
    let instances = if app.state == AppState::Started {
        ctx.instances.statuses(&app.guid)
    } else {
        Vec::new()
    };
    AppResponse {
        name: app.name.clone(),
        guid: app.guid.clone(),
        state: app.state,
        package: app.package.clone(),
        droplet: app.droplet.clone(),
        processes,
        instances,
        routes: app
            .routes
            .iter()
            .map(|r| ctx.url_for(&r.host, &r.path))
            .collect(),
        env: app.env.clone(),
        buildpacks: app.buildpacks.clone(),
        command: app.web().and_then(|p| p.command.clone()),
        created_at: app.created_at,
        updated_at: app.updated_at,
    }
}

async fn list_apps(State(ctx): S) -> Result<Json<Vec<AppResponse>>> {
    let apps = ctx.store.list_apps()?;
    Ok(Json(apps.iter().map(|a| app_response(&ctx, a)).collect()))
}

#[derive(Deserialize)]
struct AppQuery {
    #[serde(default)]
    stats: bool,
}

async fn get_app(
    State(ctx): S,
    Path(name): Path<String>,
    Query(q): Query<AppQuery>,
) -> Result<Json<AppResponse>> {
    let app = load(&ctx, &name)?;
    let mut resp = app_response(&ctx, &app);
    if q.stats {
        let stats = futures_util::future::join_all(resp.instances.iter().map(|i| {
            let disk = app
                .processes
                .get(&i.process)
                .map(|p| p.disk_mb)
                .unwrap_or(0);
            crate::instances::instance_stats(&ctx, i, disk)
        }))
        .await;
        for (i, st) in resp.instances.iter_mut().zip(stats) {
            if i.state == pier_api::InstanceState::Running {
                i.stats = st;
            }
        }
    }
    Ok(Json(resp))
}

const MAX_INSTANCES: u32 = 256;

fn valid_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
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
pub fn default_process(ctx: &Ctx, kind: &ProcessType) -> ProcessRecord {
    ProcessRecord {
        instances: u32::from(kind.is_web()),
        memory_mb: ctx.config.default_memory_mb,
        disk_mb: ctx.config.default_disk_mb,
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
fn validate_config(req: &AppConfigRequest) -> Result<()> {
    validate_process(&web_part(req))?;
    if let Some(env) = &req.env {
        for (k, v) in env {
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
            if v.contains('\0') {
                return Err(Error::bad_request(format!(
                    "env var {k} contains a NUL byte"
                )));
            }
        }
    }
    if let Some(bps) = &req.buildpacks {
        crate::staging::check_buildpacks(bps)?;
    }
    Ok(())
}

fn random_suffix() -> String {
    let n: u32 = rand::random();
    format!("{:06x}", n & 0xff_ffff)
}

/// Refuses routes that another app already has.
/// Host names under the platform's domain that no app may take (they name the platform itself).
pub const RESERVED_HOSTNAMES: &[&str] = &["api", "admin", "pier", "router", "metrics", "system"];

fn check_routes_free(ctx: &Ctx, app_guid: &str, routes: &[RouteSpec]) -> Result<()> {
    let domain = &ctx.config.domain;
    for r in routes {
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
    for other in ctx.store.list_apps()? {
        if other.guid == app_guid {
            continue;
        }
        for r in routes {
            if other.routes.contains(r) {
                return Err(Error::api(
                    ErrorCode::Conflict,
                    format!("route {r} is already mapped to app {}", other.name),
                ));
            }
        }
    }
    Ok(())
}

async fn put_app(
    State(ctx): S,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<AppResponse>> {
    let name = parse_name(&name)?;
    let req: AppConfigRequest = json_body(&body)?;
    validate_config(&req)?;
    let lock = ctx.app_lock(&name);
    let _guard = lock.lock().await;
    let now = OffsetDateTime::now_utc();
    let existing = ctx.store.get_app(&name)?;
    let created = existing.is_none();
    let mut app = existing.unwrap_or_else(|| AppRecord {
        name: name.clone(),
        guid: uuid::Uuid::new_v4().to_string(),
        state: AppState::Stopped,
        package: None,
        droplet: None,
        processes: BTreeMap::from([(
            ProcessType::web(),
            default_process(&ctx, &ProcessType::web()),
        )]),
        routes: Vec::new(),
        env: BTreeMap::new(),
        buildpacks: Vec::new(),
        staging: None,
        restart_gen: 0,
        revisions: Vec::new(),
        droplet_source: None,
        current_revision: None,
        deployments: Vec::new(),
        old_blobs: Vec::new(),
        created_at: now,
        updated_at: now,
    });
    let web = app
        .processes
        .entry(ProcessType::web())
        .or_insert_with(|| default_process(&ctx, &ProcessType::web()));
    apply_process(web, &web_part(&req));
    if let Some(bps) = &req.buildpacks {
        app.buildpacks = bps.clone();
    }
    if let Some(env) = &req.env {
        app.env.extend(env.clone());
    }
    if req.no_route == Some(true) {
        app.routes.clear();
    } else {
        let mut wanted = app.routes.clone();
        if let Some(routes) = &req.routes {
            for r in routes {
                if !wanted.contains(r) {
                    wanted.push(r.clone());
                }
            }
        }
        if created && req.routes.as_ref().is_none_or(|r| r.is_empty()) {
            let host = if req.random_route == Some(true) {
                format!("{}-{}.{}", name, random_suffix(), ctx.config.domain)
            } else {
                format!("{}.{}", name, ctx.config.domain)
            };
            let default: RouteSpec = host.parse().map_err(|e: String| Error::bad_request(e))?;
            wanted.push(default);
        }
        check_routes_free(&ctx, &app.guid, &wanted)?;
        app.routes = wanted;
    }
    app.updated_at = now;
    ctx.store.put_app(&app)?;
    let (kind, what) = if created {
        (EventKind::Created, "created")
    } else {
        (EventKind::Updated, "updated")
    };
    ctx.event(&app, kind, &format!("app {what}"));
    ctx.instances.trigger.notify_one();
    crate::instances::publish_routes(&ctx)?;
    Ok(Json(app_response(&ctx, &app)))
}

async fn delete_app(State(ctx): S, Path(name): Path<String>) -> Result<Response> {
    let app = load(&ctx, &name)?;
    let lock = ctx.app_lock(&app.name);
    let _guard = lock.lock().await;
    // Desired state first: the app is gone, so its routes go and its slots stop.
    ctx.store.delete_app(&app)?;
    crate::instances::reconcile_once(&ctx, &ctx.shutdown).await?;
    ctx.instances.wait_stopped(&app.guid).await;
    // Anything left (stagings, leftovers) goes too.
    for c in crate::docker::list_managed(&ctx.docker, &ctx.controller_id).await? {
        if c.label(crate::docker::labels::APP_GUID) == Some(app.guid.as_str()) {
            crate::docker::remove(&ctx.docker, &c.id).await?;
        }
    }
    crate::docker::remove_volume(&ctx.docker, &crate::staging::cache_volume(&app.guid)).await?;
    // Blobs no other app refers to.
    let others = ctx.store.list_apps()?;
    let used = |sha: &str| {
        others.iter().any(|o| {
            o.package.as_deref() == Some(sha) || o.droplet.as_ref().is_some_and(|d| d.sha256 == sha)
        })
    };
    for sha in app
        .package
        .iter()
        .chain(app.droplet.as_ref().map(|d| &d.sha256))
        .chain(app.old_blobs.iter())
    {
        if !used(sha) {
            ctx.blobs.delete(sha)?;
        }
    }
    ctx.logs.forget(&app.guid);
    crate::instances::publish_routes(&ctx)?;
    tracing::info!(app = %app.name, "deleted");
    Ok(http::StatusCode::NO_CONTENT.into_response())
}

async fn upload_package(State(ctx): S, req: Request) -> Result<Json<PackageResponse>> {
    let limit = ctx.config.max_package_bytes;
    let too_large = || {
        Error::api(
            ErrorCode::PayloadTooLarge,
            format!(
                "the package is larger than the controller's limit of {limit} bytes; leave files \
                 out with .cfignore, or raise --max-package-bytes"
            ),
        )
    };
    // Refuse before reading a byte when the client says how much is coming.
    if let Some(len) = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit {
            return Err(too_large());
        }
    }
    let body = req.into_body().into_data_stream();
    let pending = match ctx.blobs.write_stream(body, limit).await {
        Ok(p) => p,
        Err(WriteError::TooLarge { .. }) => return Err(too_large()),
        Err(WriteError::Source(e)) => {
            return Err(Error::bad_request(format!("the upload broke off: {e}")))
        }
        Err(WriteError::Io(e)) => return Err(e.into()),
    };
    let path = pending.path().to_path_buf();
    let max = ctx.config.max_extracted_bytes;
    tokio::task::spawn_blocking(move || crate::package::validate_file(&path, max))
        .await
        .map_err(|e| Error::Other(format!("package check failed: {e}")))??;
    let size = pending.size;
    let sha256 = ctx.blobs.commit(pending)?;
    Ok(Json(PackageResponse { sha256, size }))
}

async fn build(State(ctx): S, Path(name): Path<String>, body: Bytes) -> Result<Response> {
    let req: BuildRequest = json_body(&body)?;
    let app = load(&ctx, &name)?;
    let lock = ctx.app_lock(&app.name);
    let guard = lock.clone().try_lock_owned().map_err(|_| {
        Error::api(
            ErrorCode::Conflict,
            format!(
                "another operation on app {} is in progress; try again when it ends",
                app.name
            ),
        )
    })?;
    // Re-read under the lock.
    let mut app = load(&ctx, &name)?;
    let pushed = req.package.is_some();
    let package = match req.package.or_else(|| app.package.clone()) {
        Some(p) => p,
        None => {
            return Err(Error::bad_request(format!(
                "app {} has no package to stage; push it first",
                app.name
            )))
        }
    };
    if !ctx.blobs.exists(&package) {
        return Err(Error::api(
            ErrorCode::NotFound,
            format!("package {package} not found; upload it again"),
        ));
    }
    // A push of the very same source, buildpacks, env and stack as the current droplet's reuses
    // it: nothing would come out different (a restage, without a package, always stages).
    let source = crate::staging::fingerprint(&ctx, &app, &package);
    if pushed && app.droplet_source.as_deref() == Some(source.as_str()) {
        if let Some(d) = app.droplet.clone().filter(|d| ctx.blobs.exists(&d.sha256)) {
            let line = ctx.logs.publish(
                &app.guid,
                &pier_api::LogSource::Staging(0),
                pier_api::LogStream::Out,
                &format!(
                    "-----> Source unchanged since the last staging: reusing droplet {}",
                    &d.sha256[..12]
                ),
                OffsetDateTime::now_utc(),
            );
            ctx.event(
                &app,
                pier_api::EventKind::Staged,
                "source unchanged; droplet reused",
            );
            drop(guard);
            let body = [BuildEvent::Log(line), BuildEvent::Done(d)]
                .iter()
                .flat_map(|ev| {
                    let mut l = serde_json::to_vec(ev).unwrap_or_default();
                    l.push(b'\n');
                    l
                })
                .collect::<Vec<u8>>();
            return Response::builder()
                .header(http::header::CONTENT_TYPE, "application/x-ndjson")
                .body(Body::from(body))
                .map_err(|e| Error::Other(e.to_string()));
        }
    }
    let staging_id = uuid::Uuid::new_v4().to_string();
    if let Some(old) = app.package.replace(package.clone()) {
        if old != package {
            app.old_blobs.push(old);
        }
    }
    app.staging = Some(staging_id);
    ctx.store.put_app(&app)?;
    ctx.active_stagings
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(app.guid.clone());

    let (tx, rx) = mpsc::channel::<BuildEvent>(256);
    let task_ctx = ctx.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let ctx = task_ctx;
        ctx.event(&app, pier_api::EventKind::Staging, "staging started");
        let result = crate::staging::stage(ctx.clone(), &app, &package, tx.clone()).await;
        ctx.active_stagings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&app.guid);
        let mut latest = match ctx.store.get_app(&app.name) {
            Ok(Some(a)) if a.guid == app.guid => a,
            _ => return,
        };
        latest.staging = None;
        let event = match result {
            Ok(droplet) => {
                latest.droplet_source = Some(source.clone());
                if let Some(old) = latest.droplet.replace(droplet.clone()) {
                    if old.sha256 != droplet.sha256 {
                        latest.old_blobs.push(old.sha256);
                    }
                }
                // Every process type the droplet declares becomes a process of the app.
                for kind in droplet.process_types.keys() {
                    if let Ok(kind) = kind.parse::<ProcessType>() {
                        let p = default_process(&ctx, &kind);
                        latest.processes.entry(kind).or_insert(p);
                    }
                }
                latest.updated_at = OffsetDateTime::now_utc();
                ctx.event(
                    &latest,
                    pier_api::EventKind::Staged,
                    &format!("staged with buildpack {}", droplet.buildpack),
                );
                BuildEvent::Done(droplet)
            }
            Err(e) => {
                let api = e.to_api();
                if api.code == ErrorCode::Internal {
                    tracing::error!(app = %app.name, error = %e, "staging failed");
                }
                ctx.event(&latest, pier_api::EventKind::StagingFailed, &api.message);
                BuildEvent::Error(api)
            }
        };
        if let Err(e) = ctx.store.put_app(&latest) {
            tracing::error!(error = %e, "could not record the staging result");
        }
        let _ = tx.send(event).await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|ev| {
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .map_err(|e| Error::Other(e.to_string()))
}

async fn action(
    State(ctx): S,
    Path((name, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<AppResponse>> {
    let app = load(&ctx, &name)?;
    let action: AppAction = action
        .parse()
        .map_err(|e: String| Error::api(ErrorCode::NotFound, e))?;
    let lock = ctx.app_lock(&app.name);
    let guard = lock.lock().await;
    let mut app = load(&ctx, &name)?;
    match action {
        // Starting or restarting is a deployment: rolling when instances already run.
        AppAction::Start | AppAction::Restart => {
            let mut req: DeployRequest = json_body(&body)?;
            req.restart |= action == AppAction::Restart;
            if let Some(d) = crate::deployments::deploy(&ctx, &mut app, &req)? {
                ctx.store.put_app(&app)?;
                ctx.event(
                    &app,
                    pier_api::EventKind::DeploymentStarted,
                    d.reason.as_deref().unwrap_or("deploying"),
                );
            }
        }
        AppAction::Stop => {
            if let Some(d) = app.active_deployment_mut() {
                d.state = pier_api::DeploymentState::Canceled;
                d.reason = Some("the app was stopped".into());
                d.finished_at = Some(OffsetDateTime::now_utc());
            }
            app.state = AppState::Stopped;
            app.updated_at = OffsetDateTime::now_utc();
            ctx.store.put_app(&app)?;
            ctx.event(&app, pier_api::EventKind::Stopped, "app stopped");
        }
    }
    drop(guard);
    crate::instances::reconcile_once(&ctx, &ctx.shutdown).await?;
    Ok(Json(app_response(&ctx, &app)))
}

async fn create_deployment(
    State(ctx): S,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<DeploymentResponse>> {
    let req: DeployRequest = json_body(&body)?;
    let app = load(&ctx, &name)?;
    let lock = ctx.app_lock(&app.name);
    let guard = lock.lock().await;
    let mut app = load(&ctx, &name)?;
    let d = match crate::deployments::deploy(&ctx, &mut app, &req)? {
        Some(d) => {
            ctx.store.put_app(&app)?;
            ctx.event(
                &app,
                pier_api::EventKind::DeploymentStarted,
                d.reason.as_deref().unwrap_or("deploying"),
            );
            d
        }
        // Nothing changed: answer with the deployment that got the app here.
        None => app.deployments.last().cloned().ok_or_else(|| {
            Error::bad_request(format!("app {} already runs that revision", app.name))
        })?,
    };
    drop(guard);
    crate::instances::reconcile_once(&ctx, &ctx.shutdown).await?;
    Ok(Json(crate::deployments::deployment_response(&d)))
}

async fn list_deployments(
    State(ctx): S,
    Path(name): Path<String>,
) -> Result<Json<Vec<DeploymentResponse>>> {
    let app = load(&ctx, &name)?;
    Ok(Json(
        app.deployments
            .iter()
            .rev()
            .map(crate::deployments::deployment_response)
            .collect(),
    ))
}

async fn deployment_action(
    State(ctx): S,
    Path((name, id, action)): Path<(String, String, String)>,
) -> Result<Json<DeploymentResponse>> {
    let app = load(&ctx, &name)?;
    let lock = ctx.app_lock(&app.name);
    let guard = lock.lock().await;
    let mut app = load(&ctx, &name)?;
    let current = app.active_deployment().map(|d| d.id.clone());
    let action: DeploymentAction = action
        .parse()
        .map_err(|e: String| Error::api(ErrorCode::NotFound, e))?;
    if id != "current" && current.as_deref() != Some(id.as_str()) {
        return Err(Error::api(
            ErrorCode::NotFound,
            format!("deployment {id} of app {} is not in progress", app.name),
        ));
    }
    let d = match action {
        DeploymentAction::Cancel => crate::deployments::cancel(&mut app)?,
        DeploymentAction::Continue => crate::deployments::continue_canary(&mut app)?,
    };
    app.updated_at = OffsetDateTime::now_utc();
    ctx.store.put_app(&app)?;
    ctx.event(&app, action.event(), d.reason.as_deref().unwrap_or(""));
    drop(guard);
    crate::instances::reconcile_once(&ctx, &ctx.shutdown).await?;
    Ok(Json(crate::deployments::deployment_response(&d)))
}

async fn revisions(
    State(ctx): S,
    Path(name): Path<String>,
) -> Result<Json<Vec<pier_api::RevisionResponse>>> {
    let app = load(&ctx, &name)?;
    Ok(Json(
        app.revisions
            .iter()
            .rev()
            .map(|r| crate::deployments::revision_response(&app, r))
            .collect(),
    ))
}

async fn put_process(
    State(ctx): S,
    Path((name, process)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<AppResponse>> {
    let req: ProcessConfigRequest = json_body(&body)?;
    validate_process(&req)?;
    let kind: ProcessType = process
        .parse()
        .map_err(|e: pier_api::NameError| Error::bad_request(e.to_string()))?;
    let app = load(&ctx, &name)?;
    let lock = ctx.app_lock(&app.name);
    let _guard = lock.lock().await;
    let mut app = load(&ctx, &name)?;
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
    ctx.store.put_app(&app)?;
    ctx.event(&app, pier_api::EventKind::Scaled, &summary);
    crate::instances::reconcile_once(&ctx, &ctx.shutdown).await?;
    Ok(Json(app_response(&ctx, &app)))
}

async fn map_route(
    State(ctx): S,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<AppResponse>> {
    change_route(ctx, name, body, true).await
}

async fn unmap_route(
    State(ctx): S,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<AppResponse>> {
    change_route(ctx, name, body, false).await
}

async fn change_route(
    ctx: Arc<Ctx>,
    name: String,
    body: Bytes,
    map: bool,
) -> Result<Json<AppResponse>> {
    let req: pier_api::RouteRequest = json_body(&body)?;
    let app = load(&ctx, &name)?;
    let lock = ctx.app_lock(&app.name);
    let _guard = lock.lock().await;
    let mut app = load(&ctx, &name)?;
    let route = req.route;
    if map {
        if app.routes.contains(&route) {
            return Ok(Json(app_response(&ctx, &app)));
        }
        check_routes_free(&ctx, &app.guid, std::slice::from_ref(&route))?;
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
    ctx.store.put_app(&app)?;
    let what = if map {
        EventKind::RouteMapped
    } else {
        EventKind::RouteUnmapped
    };
    ctx.event(
        &app,
        what,
        &format!("{} {route}", if map { "mapped" } else { "unmapped" }),
    );
    crate::instances::publish_routes(&ctx)?;
    Ok(Json(app_response(&ctx, &app)))
}

async fn route_mappings(State(ctx): S) -> Result<Json<Vec<pier_api::RouteMapping>>> {
    let mut out = vec![];
    for app in ctx.store.list_apps()? {
        for r in &app.routes {
            out.push(pier_api::RouteMapping {
                route: r.clone(),
                app: app.name.to_string(),
                url: ctx.url_for(&r.host, &r.path),
            });
        }
    }
    out.sort_by(|a, b| a.route.cmp(&b.route));
    Ok(Json(out))
}

async fn events(State(ctx): S, Path(name): Path<String>) -> Result<Json<Vec<pier_api::AppEvent>>> {
    let app = load(&ctx, &name)?;
    Ok(Json(ctx.store.events(&app.guid, 200)?))
}

#[derive(Deserialize)]
struct RoutesQuery {
    epoch: Option<String>,
    version: Option<u64>,
    /// A standalone router's id: its (epoch, version) acknowledges every table up to it, which
    /// lets released instance addresses out of quarantine ([`crate::addresses`]).
    router: Option<String>,
}

/// Long-poll: answers at once when the caller's table is stale, else when it changes or after 25 s.
async fn routes(State(ctx): S, Query(q): Query<RoutesQuery>) -> Result<Response> {
    if let Some(id) = &q.router {
        let valid = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(Error::bad_request(
                "router must be 1-64 letters, digits, `-`, `_` or `.` (pier-router sends a uuid)",
            ));
        }
        ctx.addresses.router_seen(
            id,
            q.epoch.as_deref().unwrap_or_default(),
            q.version.unwrap_or(0),
        );
    }
    let mut rx = ctx.routing.subscribe();
    let stale = |t: &Option<Arc<pier_api::RouteTable>>| match t {
        None => false,
        Some(t) => Some(&t.epoch) != q.epoch.as_ref() || Some(t.version) != q.version,
    };
    let wait = tokio::time::timeout(Duration::from_secs(25), async {
        rx.wait_for(stale).await.map(|_| ())
    })
    .await;
    let current = ctx.routing.current();
    match (wait, current) {
        (_, Some(t)) => Ok(Json(t.as_ref().clone()).into_response()),
        (_, None) => Err(Error::api(
            ErrorCode::Unavailable,
            "the route table is not ready yet; retry",
        )),
    }
}

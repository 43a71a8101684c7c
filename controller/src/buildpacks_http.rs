//! Buildpack endpoints, merged into the authenticated API router (every one needs the admin token).
//!
//! - `GET /v1/buildpacks`: every installed buildpack in position order ([`BuildpackResponse`]).
//! - `POST /v1/buildpacks` ([`CreateBuildpackRequest`]): installs a package uploaded with
//!   `POST /v1/packages` (a gzipped tar of the buildpack folder) as `NAME` at a position.
//! - `PUT /v1/buildpacks/{name}` ([`UpdateBuildpackRequest`]): moves, enables/disables, or replaces
//!   the files of an admin buildpack (built-ins can be moved and disabled only).
//! - `DELETE /v1/buildpacks/{name}`: removes an admin buildpack.
//! - `DELETE /v1/apps/{name}/cache`: clears the app's buildpack cache (its Docker volume).
//!
//! Everything is checked before anything changes: a refused request leaves the registry and the
//! buildpack folders as they were. New files are unpacked beside the live folder and swapped in
//! with a rename, so a staging that is reading the old folder never sees half a buildpack.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use bytes::Bytes;
use pier_api::buildpacks::check_buildpack_name;
use pier_api::{
    AppName, BuildpackResponse, CreateBuildpackRequest, ErrorCode, UpdateBuildpackRequest,
};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::server::Ctx;
use crate::staging::{self, BuildpackRecord, Registry};

type S = State<Arc<Ctx>>;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/v1/buildpacks", get(list).post(create))
        .route(
            "/v1/buildpacks/{name}",
            axum::routing::put(update).delete(remove),
        )
        .route("/v1/apps/{name}/cache", delete(clear_cache))
}

const SCRIPTS: [&str; 5] = ["detect", "supply", "finalize", "compile", "release"];

fn scripts_of(dir: &FsPath) -> Vec<String> {
    SCRIPTS
        .iter()
        .filter(|s| dir.join("bin").join(s).is_file())
        .map(|s| s.to_string())
        .collect()
}

fn response(reg: &Registry, i: usize) -> BuildpackResponse {
    let b = &reg.list[i];
    BuildpackResponse {
        name: b.name.clone(),
        position: i as u32 + 1,
        enabled: b.enabled,
        builtin: b.builtin,
        sha256: b.sha256.clone(),
        scripts: scripts_of(&reg.dir.join(&b.name)),
        updated_at: b.updated_at,
    }
}

fn find(reg: &Registry, name: &str) -> Result<usize> {
    reg.list.iter().position(|b| b.name == name).ok_or_else(|| {
        Error::api(
            ErrorCode::NotFound,
            format!("buildpack {name} not found; pier buildpacks lists the installed ones"),
        )
    })
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::bad_request(format!("invalid request body: {e}")))
}

fn check_position(p: Option<u32>) -> Result<()> {
    if p == Some(0) {
        return Err(Error::bad_request(
            "position must be 1 or more (1 is tried first)",
        ));
    }
    Ok(())
}

async fn list(State(_ctx): S) -> Result<Json<Vec<BuildpackResponse>>> {
    staging::with_registry(|r| Ok(Json((0..r.list.len()).map(|i| response(r, i)).collect())))
}

async fn create(State(ctx): S, body: Bytes) -> Result<Json<BuildpackResponse>> {
    let req: CreateBuildpackRequest = json_body(&body)?;
    check_buildpack_name(&req.name).map_err(|e| Error::api(ErrorCode::InvalidName, e))?;
    check_position(req.position)?;
    let (dir, exists) =
        staging::with_registry(|r| Ok((r.dir.clone(), r.get(&req.name).is_some())))?;
    if exists {
        return Err(Error::api(
            ErrorCode::Conflict,
            format!(
                "buildpack {} already exists; change it with pier update-buildpack {}",
                req.name, req.name
            ),
        ));
    }
    let staged = unpack_package(&ctx, &req.package, &dir).await?;
    let rec = BuildpackRecord {
        name: req.name.clone(),
        enabled: req.enabled.unwrap_or(true),
        builtin: false,
        sha256: Some(req.package.clone()),
        updated_at: OffsetDateTime::now_utc(),
    };
    let resp = staging::with_registry(|r| {
        // Checked again under the lock: two creates of one name race here, not on the folder.
        if r.get(&req.name).is_some() {
            return Err(Error::api(
                ErrorCode::Conflict,
                format!("buildpack {} already exists", req.name),
            ));
        }
        swap_in(&staged, &r.dir.join(&req.name))?;
        r.place(rec, req.position);
        r.save()?;
        Ok(response(r, find(r, &req.name)?))
    });
    let _ = std::fs::remove_dir_all(staged.parent().unwrap_or(&staged));
    let resp = resp?;
    forget_package(&ctx, &req.package);
    tracing::info!(buildpack = %resp.name, position = resp.position, "buildpack created");
    Ok(Json(resp))
}

async fn update(
    State(ctx): S,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<BuildpackResponse>> {
    let req: UpdateBuildpackRequest = json_body(&body)?;
    check_position(req.position)?;
    let (dir, builtin) = staging::with_registry(|r| {
        let i = find(r, &name)?;
        Ok((r.dir.clone(), r.list[i].builtin))
    })?;
    if req.position.is_none() && req.package.is_none() && req.enabled.is_none() {
        return Err(Error::bad_request(
            "nothing to change: give a position, a package (new files) or enabled",
        ));
    }
    if builtin && req.package.is_some() {
        return Err(Error::bad_request(format!(
            "{name} is a built-in buildpack: its files ship with Pier and can't be replaced; \
             create your own with pier create-buildpack and give it an earlier position"
        )));
    }
    let staged = match &req.package {
        Some(sha) => Some(unpack_package(&ctx, sha, &dir).await?),
        None => None,
    };
    let resp = staging::with_registry(|r| {
        let i = find(r, &name)?;
        let mut rec = r.list[i].clone();
        if let Some(staged) = &staged {
            swap_in(staged, &r.dir.join(&name))?;
            rec.sha256 = req.package.clone();
        }
        if let Some(e) = req.enabled {
            rec.enabled = e;
        }
        rec.updated_at = OffsetDateTime::now_utc();
        r.place(rec, req.position);
        r.save()?;
        Ok(response(r, find(r, &name)?))
    });
    if let Some(staged) = &staged {
        let _ = std::fs::remove_dir_all(staged.parent().unwrap_or(staged));
    }
    let resp = resp?;
    if let Some(sha) = &req.package {
        forget_package(&ctx, sha);
    }
    Ok(Json(resp))
}

async fn remove(State(_ctx): S, Path(name): Path<String>) -> Result<Response> {
    staging::with_registry(|r| {
        let i = find(r, &name)?;
        if r.list[i].builtin {
            return Err(Error::bad_request(format!(
                "{name} is a built-in buildpack and can't be deleted; disable it with \
                 pier update-buildpack {name} --disable"
            )));
        }
        r.list.remove(i);
        r.save()?;
        // Renamed away first, so a staging starting now doesn't see a half-deleted folder.
        let live = r.dir.join(&name);
        let gone = r
            .dir
            .join(format!(".deleted-{name}-{}", uuid::Uuid::new_v4().simple()));
        if std::fs::rename(&live, &gone).is_ok() {
            let _ = std::fs::remove_dir_all(&gone);
        }
        Ok(())
    })?;
    tracing::info!(buildpack = %name, "buildpack deleted");
    Ok(http::StatusCode::NO_CONTENT.into_response())
}

async fn clear_cache(State(ctx): S, Path(name): Path<String>) -> Result<Response> {
    let name: AppName = name
        .parse()
        .map_err(|e: pier_api::NameError| Error::api(ErrorCode::InvalidName, e.to_string()))?;
    let app = ctx
        .store
        .get_app(&name)?
        .ok_or_else(|| Error::api(ErrorCode::NotFound, format!("app {name} not found")))?;
    let lock = ctx.app_lock(&app.name);
    let _guard = lock.try_lock_owned().map_err(|_| {
        Error::api(
            ErrorCode::Conflict,
            format!("app {name} is staging (or busy); clear its cache when that ends"),
        )
    })?;
    crate::docker::remove_volume(&ctx.docker, &staging::cache_volume(&app.guid)).await?;
    ctx.event(
        &app,
        pier_api::EventKind::CacheCleared,
        "buildpack cache cleared",
    );
    Ok(http::StatusCode::NO_CONTENT.into_response())
}

/// The uploaded package is only the buildpack's transport: once unpacked it goes, unless an app
/// happens to use the same bytes.
fn forget_package(ctx: &Ctx, sha: &str) {
    let used = ctx.store.list_apps().map(|apps| {
        apps.iter().any(|a| {
            a.package.as_deref() == Some(sha)
                || a.old_blobs.iter().any(|b| b == sha)
                || a.droplet.as_ref().is_some_and(|d| d.sha256 == sha)
        })
    });
    if let Ok(false) = used {
        let _ = ctx.blobs.delete(sha);
    }
}

/// Unpacks a package blob into a fresh folder beside `dir` (same filesystem, for the rename) and
/// returns the buildpack's root in it: the package's root, or its only folder (a release tarball).
async fn unpack_package(ctx: &Ctx, sha: &str, dir: &FsPath) -> Result<PathBuf> {
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::bad_request(format!(
            "package {sha:?} is not a sha256; upload the buildpack with POST /v1/packages first"
        )));
    }
    if !ctx.blobs.exists(sha) {
        return Err(Error::api(
            ErrorCode::NotFound,
            format!("package {sha} not found; upload it again"),
        ));
    }
    let pkg = ctx.blobs.path(sha)?;
    let max = ctx.config.max_extracted_bytes;
    let work = dir.join(format!(".new-{}", uuid::Uuid::new_v4().simple()));
    let w = work.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<PathBuf> {
        std::fs::create_dir_all(&w)?;
        let clean = w.join("clean.tar");
        {
            let out = std::io::BufWriter::new(std::fs::File::create(&clean)?);
            let gz = std::io::BufReader::new(std::fs::File::open(&pkg)?);
            crate::package::repack(gz, out, "root", max)?;
        }
        tar::Archive::new(std::io::BufReader::new(std::fs::File::open(&clean)?)).unpack(&w)?;
        std::fs::remove_file(&clean)?;
        let mut root = w.join("root");
        if !root.join("bin").is_dir() {
            let subdirs: Vec<PathBuf> = std::fs::read_dir(&root)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            if let [only] = subdirs.as_slice() {
                if only.join("bin").is_dir() {
                    root = only.clone();
                }
            }
        }
        let scripts = scripts_of(&root);
        let builds = ["supply", "finalize", "compile"]
            .iter()
            .any(|s| scripts.iter().any(|x| x == s));
        if !root.join("bin").is_dir() || !scripts.iter().any(|s| s == "detect") || !builds {
            return Err(Error::api(
                ErrorCode::InvalidPackage,
                format!(
                    "this is not a buildpack: it needs bin/detect and bin/compile (or bin/supply \
                     and/or bin/finalize) at its root; found {}",
                    if scripts.is_empty() {
                        "no bin/ scripts".to_string()
                    } else {
                        format!("bin/{}", scripts.join(", bin/"))
                    }
                ),
            ));
        }
        staging::fix_modes(&root)?;
        Ok(root)
    })
    .await
    .map_err(|e| Error::Other(format!("unpacking the buildpack failed: {e}")))?;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

/// Puts `staged` at `live`, replacing what was there with renames only.
fn swap_in(staged: &FsPath, live: &FsPath) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(staged, std::fs::Permissions::from_mode(0o755))?;
    if live.exists() {
        let name = live.file_name().and_then(|n| n.to_str()).unwrap_or("bp");
        let old = live.with_file_name(format!(".old-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::rename(live, &old)?;
        std::fs::rename(staged, live)?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(staged, live)?;
    }
    Ok(())
}

//! Staging: package → droplet, in a throwaway container.
//!
//! ```text
//!  package blob ──repack (validated, owned by vcap)──▶ staging tar: app/ env/ lifecycle/stage.sh
//!        │                                                   │ PUT archive → /tmp
//!        ▼                                                   ▼
//!  container (stack image, user vcap, network none,  /tmp/buildpacks ro bind,  /tmp/cache volume)
//!        │ bash /tmp/lifecycle/stage.sh: detect → compile → release → pack
//!        │ stdout/stderr ──▶ STG/0 log lines, streamed to the pushing CLI as they come
//!        ▼
//!  GET archive /tmp/out ──▶ droplet.tgz into the blob store (sha256), release.yml, Procfile
//!  container removed on every path; the app's cache volume is kept for the next staging.
//! ```
//! Exit codes of the lifecycle: 222 no buildpack detected, 223 supply/finalize/compile failed,
//! 224 release failed, 225 packing failed, 226 a named buildpack is unusable (docs/staging.md).
//!
//! Buildpacks: the built-ins and admin-created ones live side by side in `DATA_DIR/buildpacks/NAME`
//! (mounted read-only); their order, positions and enabled flags are the [`Registry`] in
//! `DATA_DIR/buildpacks.json`. An app with no buildpacks named is detected over the enabled ones in
//! position order; named ones (`-b`) run without detection, every one but the last supplying.
//! Buildpacks pushed with the app (`-b ./path`, `NAME@sha256:HEX`) are package blobs, repacked
//! into the staging tar under `/tmp/local-buildpacks/NAME`.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::LogsOptionsBuilder;
use futures_util::StreamExt;
use include_dir::{include_dir, Dir};
use pier_api::{DropletInfo, ErrorCode, LogSource, LogStream};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::docker::{self, labels};
use crate::error::{Error, Result};
use crate::server::Ctx;
use crate::store::AppRecord;

static BUILTIN_BUILDPACKS: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../buildpacks");
const LIFECYCLE: &str = include_str!("../../lifecycle/stage.sh");

/// Built-in buildpacks in their default detection order (Cloud Foundry's relative order; `binary`
/// never detects and must be named).
pub const BUILTIN_ORDER: &[&str] = &["staticfile", "java", "nodejs", "python", "binary"];

/// One installed buildpack, in [`Registry`] order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildpackRecord {
    pub name: String,
    pub enabled: bool,
    pub builtin: bool,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The installed buildpacks in position order, saved as `DATA_DIR/buildpacks.json`. One per
/// process (the controller has one data dir); `check_buildpacks` reads it without a context.
#[derive(Debug, Clone)]
pub struct Registry {
    pub file: PathBuf,
    pub dir: PathBuf,
    pub list: Vec<BuildpackRecord>,
}

static REGISTRY: std::sync::Mutex<Option<Registry>> = std::sync::Mutex::new(None);

/// Runs `f` on the registry (loaded by [`install_buildpacks`]).
pub fn with_registry<T>(f: impl FnOnce(&mut Registry) -> Result<T>) -> Result<T> {
    let mut guard = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let reg = guard
        .as_mut()
        .ok_or_else(|| Error::Other("the buildpack registry is not loaded".into()))?;
    f(reg)
}

impl Registry {
    /// Writes the list atomically (temp file + rename).
    pub fn save(&self) -> Result<()> {
        let tmp = self.file.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&self.list)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.file)?;
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&BuildpackRecord> {
        self.list.iter().find(|b| b.name == name)
    }

    /// Moves (or inserts) `rec` to the 1-based `position`; past the end means last.
    pub fn place(&mut self, rec: BuildpackRecord, position: Option<u32>) {
        let old = self.list.iter().position(|b| b.name == rec.name);
        if let Some(i) = old {
            self.list.remove(i);
        }
        let at = match (position, old) {
            (Some(p), _) => (p.max(1) as usize - 1).min(self.list.len()),
            (None, Some(i)) => i.min(self.list.len()),
            (None, None) => self.list.len(),
        };
        self.list.insert(at, rec);
    }

    /// Names detection tries when the app names none: the enabled ones, in position order.
    pub fn detect_order(&self) -> Vec<String> {
        self.list
            .iter()
            .filter(|b| b.enabled)
            .map(|b| b.name.clone())
            .collect()
    }
}

/// Writes the built-in buildpacks into `DATA_DIR/buildpacks`, where staging mounts them read-only,
/// and loads the buildpack registry (adding built-ins it doesn't list yet, dropping admin
/// buildpacks whose folder is gone).
pub fn install_buildpacks(data_dir: &Path) -> Result<PathBuf> {
    let dir = write_builtins(data_dir)?;
    // Leftovers of an update or delete that was cut short.
    for e in std::fs::read_dir(&dir)?.flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let file = data_dir.join("buildpacks.json");
    let mut list: Vec<BuildpackRecord> = match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    list.retain(|b| {
        if b.builtin {
            BUILTIN_ORDER.contains(&b.name.as_str())
        } else {
            dir.join(&b.name).join("bin").is_dir()
        }
    });
    for name in BUILTIN_ORDER {
        if !list.iter().any(|b| b.name == *name) {
            list.push(BuildpackRecord {
                name: name.to_string(),
                enabled: true,
                builtin: true,
                sha256: None,
                updated_at: OffsetDateTime::now_utc(),
            });
        }
    }
    let reg = Registry {
        file,
        dir: dir.clone(),
        list,
    };
    reg.save()?;
    *REGISTRY.lock().unwrap_or_else(|e| e.into_inner()) = Some(reg);
    Ok(dir)
}

/// Makes a buildpack folder readable by the staging user: folders and programs 0755 (everything
/// under `bin/`, and files that had an execute bit), other files 0644.
pub fn fix_modes(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.is_dir() {
            fix_modes(&path)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        } else {
            let in_bin = path
                .parent()
                .and_then(|d| d.file_name())
                .is_some_and(|n| n == "bin");
            let exec = in_bin || meta.permissions().mode() & 0o111 != 0;
            let mode = if exec { 0o755 } else { 0o644 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

fn write_builtins(data_dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = data_dir.join("buildpacks");
    for name in BUILTIN_ORDER {
        let src = BUILTIN_BUILDPACKS
            .get_dir(name)
            .ok_or_else(|| Error::Other(format!("built-in buildpack {name} is not embedded")))?;
        let dest = dir.join(name);
        if dest.exists() {
            std::fs::remove_dir_all(&dest)?;
        }
        write_dir(src, &dir)?;
        // Executable bits are not embedded: everything under a bin/ folder is a program.
        fix_modes(&dest)?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

fn write_dir(d: &Dir<'_>, root: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(root.join(d.path()))?;
    for f in d.files() {
        std::fs::write(root.join(f.path()), f.contents())?;
    }
    for sub in d.dirs() {
        write_dir(sub, root)?;
    }
    Ok(())
}

/// What a droplet is made from: the package, the app's buildpacks and env, the stack, the
/// installed buildpacks and the lifecycle. Equal fingerprints stage to equivalent droplets.
pub fn fingerprint(ctx: &Ctx, app: &AppRecord, package: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(package.as_bytes());
    h.update(serde_json::to_vec(&app.buildpacks).unwrap_or_default());
    h.update(serde_json::to_vec(&app.env).unwrap_or_default());
    h.update(ctx.config.stack_image.as_bytes());
    h.update(LIFECYCLE.as_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(std::fs::read(ctx.config.data_dir.join("buildpacks.json")).unwrap_or_default());
    hex::encode(h.finalize())
}

/// Checks buildpack names a user asked for against those installed. Buildpacks uploaded with the
/// app (`NAME@sha256:HEX`) only need the right form here; staging finds their package.
pub fn check_buildpacks(names: &[String]) -> Result<()> {
    let installed: Vec<String> =
        with_registry(|r| Ok(r.list.iter().map(|b| b.name.clone()).collect()))
            .unwrap_or_else(|_| BUILTIN_ORDER.iter().map(|s| s.to_string()).collect());
    let mut seen = std::collections::BTreeSet::new();
    for n in names {
        let name = match pier_api::buildpacks::parse_uploaded_buildpack(n) {
            Some((name, _)) => name,
            None if n.contains('@') || n.contains('/') => {
                return Err(Error::bad_request(format!(
                    "buildpack {n:?} is neither an installed buildpack's name nor NAME@sha256:HEX \
                     (a folder pushed with -b ./path); URLs are not supported, staging is offline"
                )))
            }
            None if !installed.contains(n) => {
                return Err(Error::bad_request(format!(
                    "unknown buildpack {n:?}; installed: {} (pier buildpacks lists them)",
                    installed.join(", ")
                )))
            }
            None => n.as_str(),
        };
        if !seen.insert(name) {
            return Err(Error::bad_request(format!(
                "buildpack {name:?} is named twice; each buildpack can run once"
            )));
        }
    }
    Ok(())
}

/// What a staging runs: `PIER_BUILDPACKS` entries, whether the user named them, and the uploaded
/// buildpacks to put in the staging tar (name, package sha256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub order: Vec<String>,
    pub explicit: bool,
    pub uploaded: Vec<(String, String)>,
}

/// Resolves an app's buildpack list against the registry and the blob store.
pub fn resolve(app_buildpacks: &[String], blobs: &crate::blobs::BlobStore) -> Result<Resolved> {
    if app_buildpacks.is_empty() {
        let order = with_registry(|r| Ok(r.detect_order()))?;
        if order.is_empty() {
            return Err(Error::api(
                ErrorCode::NoBuildpack,
                "every buildpack is disabled, so none can detect the app; enable one with \
                 pier update-buildpack NAME --enable, or name one with -b",
            ));
        }
        return Ok(Resolved {
            order,
            explicit: false,
            uploaded: Vec::new(),
        });
    }
    let mut out = Resolved {
        order: Vec::new(),
        explicit: true,
        uploaded: Vec::new(),
    };
    for entry in app_buildpacks {
        if let Some((name, sha)) = pier_api::buildpacks::parse_uploaded_buildpack(entry) {
            if !blobs.exists(sha) {
                return Err(Error::api(
                    ErrorCode::StagingFailed,
                    format!(
                        "the buildpack {name} pushed with the app (package {}) is no longer stored; \
                         push again with -b ./path/to/{name}",
                        &sha[..12]
                    ),
                ));
            }
            out.order.push(format!("/tmp/local-buildpacks/{name}"));
            out.uploaded.push((name.to_string(), sha.to_string()));
        } else {
            let known = with_registry(|r| Ok(r.get(entry).is_some()))?;
            if !known {
                return Err(Error::api(
                    ErrorCode::StagingFailed,
                    format!(
                        "the app names buildpack {entry:?}, which is not installed (any more); \
                         push with -b NAME of one pier buildpacks lists"
                    ),
                ));
            }
            out.order.push(entry.clone());
        }
    }
    Ok(out)
}

pub fn cache_volume(app_guid: &str) -> String {
    format!("pier-cache-{app_guid}")
}

/// Sends a staging line to the app's log and to the pushing CLI.
struct Output {
    ctx: Arc<Ctx>,
    app_guid: String,
    tx: mpsc::Sender<pier_api::BuildEvent>,
}

impl Output {
    async fn line(&self, stream: LogStream, text: &str) {
        let line = self.ctx.logs.publish(
            &self.app_guid,
            &LogSource::Staging(0),
            stream,
            text,
            OffsetDateTime::now_utc(),
        );
        // The CLI may have gone away; staging goes on regardless.
        let _ = self.tx.send(pier_api::BuildEvent::Log(line)).await;
    }
}

/// Stages the app's package into a droplet, stores it and returns its description.
pub async fn stage(
    ctx: Arc<Ctx>,
    app: &AppRecord,
    package: &str,
    tx: mpsc::Sender<pier_api::BuildEvent>,
) -> Result<DropletInfo> {
    let out = Output {
        ctx: ctx.clone(),
        app_guid: app.guid.clone(),
        tx,
    };
    let resolved = resolve(&app.buildpacks, &ctx.blobs)?;
    keep_uploaded_buildpacks(&ctx, app, &resolved)?;
    let work = tempfile::Builder::new()
        .prefix("stage-")
        .tempdir_in(ctx.blobs.tmp_dir())?;
    let input = work.path().join("input.tar");
    {
        let pkg = ctx.blobs.path(package)?;
        let input = input.clone();
        let env = app.env.clone();
        let max = ctx.config.max_extracted_bytes;
        let uploaded = resolved
            .uploaded
            .iter()
            .map(|(name, sha)| Ok((name.clone(), ctx.blobs.path(sha)?)))
            .collect::<Result<Vec<_>>>()?;
        tokio::task::spawn_blocking(move || build_input_tar(&pkg, &input, &env, &uploaded, max))
            .await
            .map_err(|e| Error::Other(format!("staging input task failed: {e}")))??;
    }

    let name = format!(
        "pier-stage-{}-{}",
        app.name,
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let volume = cache_volume(&app.guid);
    let mut lbls = HashMap::from([
        (labels::CONTROLLER.to_string(), ctx.controller_id.clone()),
        (labels::KIND.to_string(), "staging".to_string()),
        (labels::APP.to_string(), app.name.to_string()),
        (labels::APP_GUID.to_string(), app.guid.clone()),
    ]);
    ctx.docker
        .create_volume(bollard::models::VolumeCreateRequest {
            name: Some(volume.clone()),
            labels: Some(lbls.clone()),
            ..Default::default()
        })
        .await?;
    lbls.insert("pier.volume".into(), volume.clone());

    let mut env: Vec<String> = vec![
        format!("PIER_BUILDPACKS={}", resolved.order.join(" ")),
        format!(
            "PIER_BUILDPACKS_EXPLICIT={}",
            if resolved.explicit { "1" } else { "" }
        ),
        "CF_STACK=pier-bookworm".into(),
        "HOME=/home/vcap".into(),
        "LANG=C.UTF-8".into(),
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    ];
    env.extend(app.env.iter().map(|(k, v)| format!("{k}={v}")));
    let mut host = docker::base_host_config(1024, ctx.config.pids_limit);
    host.network_mode = Some("none".into());
    host.binds = Some(vec![format!(
        "{}:/tmp/buildpacks:ro",
        ctx.buildpacks_dir.display()
    )]);
    host.mounts = Some(vec![Mount {
        target: Some("/tmp/cache".into()),
        source: Some(volume.clone()),
        typ: Some(MountType::VOLUME),
        ..Default::default()
    }]);
    let body = ContainerCreateBody {
        image: Some(ctx.config.stack_image.clone()),
        user: Some("vcap".into()),
        working_dir: Some("/tmp".into()),
        cmd: Some(vec!["bash".into(), "/tmp/lifecycle/stage.sh".into()]),
        env: Some(env),
        labels: Some(lbls),
        network_disabled: Some(true),
        host_config: Some(HostConfig { ..host }),
        ..Default::default()
    };
    let id = docker::create(&ctx.docker, &name, body).await?;
    let result = run_container(&ctx, &out, &id, &input, work.path()).await;
    if let Err(e) = docker::remove(&ctx.docker, &id).await {
        tracing::warn!(container = %id, error = %e, "could not remove staging container");
    }
    result
}

async fn run_container(
    ctx: &Arc<Ctx>,
    out: &Output,
    id: &str,
    input: &Path,
    work: &Path,
) -> Result<DropletInfo> {
    docker::upload_file(&ctx.docker, id, "/tmp", input).await?;
    docker::start(&ctx.docker, id).await?;

    // Follow the output while waiting for the exit; both end when the container does.
    let logs = {
        let opts = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .build();
        let mut stream = ctx.docker.logs(id, Some(opts));
        async move {
            let mut partial: HashMap<bool, String> = HashMap::new();
            while let Some(Ok(chunk)) = stream.next().await {
                let (is_err, bytes) = match chunk {
                    bollard::container::LogOutput::StdErr { message } => (true, message),
                    other => (false, other.into_bytes()),
                };
                let buf = partial.entry(is_err).or_default();
                buf.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(i) = buf.find('\n') {
                    let line: String = buf.drain(..=i).collect();
                    let stream = if is_err {
                        LogStream::Err
                    } else {
                        LogStream::Out
                    };
                    out.line(stream, line.trim_end_matches(['\n', '\r'])).await;
                }
            }
            for (is_err, rest) in partial {
                if !rest.is_empty() {
                    let stream = if is_err {
                        LogStream::Err
                    } else {
                        LogStream::Out
                    };
                    out.line(stream, &rest).await;
                }
            }
        }
    };
    let wait = async {
        let mut w = ctx
            .docker
            .wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>);
        match w.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(Error::from(e)),
            None => Err(Error::Other(
                "staging container wait ended without a status".into(),
            )),
        }
    };
    let timeout = ctx.config.staging_timeout();
    let both = async { tokio::join!(logs, wait).1 };
    let code = match tokio::time::timeout(timeout, both).await {
        Ok(code) => code?,
        Err(_) => {
            let _ = docker::stop(&ctx.docker, id, std::time::Duration::ZERO).await;
            return Err(Error::api(
                ErrorCode::StagingFailed,
                format!(
                    "staging timed out after {} s and was stopped; make the build faster or raise \
                     the controller's --staging-timeout-secs",
                    timeout.as_secs()
                ),
            ));
        }
    };
    match code {
        0 => {}
        222 => {
            return Err(Error::api(
                ErrorCode::NoBuildpack,
                "no buildpack detected the app (see the staging output above for the ones \
                 tried); add the file a buildpack looks for, or name one with -b",
            ))
        }
        223 | 224 => {
            return Err(Error::api(
                ErrorCode::StagingFailed,
                format!("the buildpack failed (staging exit status {code}); see its output above"),
            ))
        }
        226 => {
            return Err(Error::api(
                ErrorCode::StagingFailed,
                "a named buildpack cannot run in that place (see the output above); only \
                 buildpacks with bin/supply can come before the last one",
            ))
        }
        137 => {
            return Err(Error::api(
                ErrorCode::StagingFailed,
                "staging was killed (exit status 137), most likely out of memory",
            ))
        }
        other => {
            return Err(Error::api(
                ErrorCode::StagingFailed,
                format!("staging failed with exit status {other}; see the output above"),
            ))
        }
    }

    let out_tar = work.join("out.tar");
    docker::download_to_file(&ctx.docker, id, "/tmp/out", &out_tar).await?;
    let blobs = ctx.blobs.clone();
    let (pending, buildpack, process_types) =
        tokio::task::spawn_blocking(move || read_outputs(&blobs, &out_tar))
            .await
            .map_err(|e| Error::Other(format!("reading staging output failed: {e}")))??;
    let sha = ctx.blobs.commit(pending)?;
    Ok(DropletInfo {
        sha256: sha,
        buildpack,
        process_types,
        created_at: OffsetDateTime::now_utc(),
    })
}

/// Records the packages of buildpacks pushed with the app among its blobs, so deleting the app
/// deletes them. Runs under the app's lock (the build holds it).
fn keep_uploaded_buildpacks(ctx: &Ctx, app: &AppRecord, resolved: &Resolved) -> Result<()> {
    if resolved.uploaded.is_empty() {
        return Ok(());
    }
    if let Some(mut latest) = ctx.store.get_app(&app.name)? {
        let before = latest.old_blobs.len();
        for (_, sha) in &resolved.uploaded {
            if !latest.old_blobs.contains(sha) {
                latest.old_blobs.push(sha.clone());
            }
        }
        if latest.old_blobs.len() != before {
            ctx.store.put_app(&latest)?;
        }
    }
    Ok(())
}

/// The tar a staging container receives: `app/` (the validated package), `env/` and the lifecycle.
fn build_input_tar(
    package: &Path,
    dest: &Path,
    env: &BTreeMap<String, String>,
    uploaded: &[(String, PathBuf)],
    max_extracted: u64,
) -> Result<()> {
    let mut builder = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(dest)?));
    // The repacked app goes first, into its own tar; then it is concatenated with the rest. Each
    // buildpack pushed with the app goes the same way, to local-buildpacks/NAME.
    let mut parts = vec![(package.to_path_buf(), "app".to_string())];
    for (name, pkg) in uploaded {
        parts.push((pkg.clone(), format!("local-buildpacks/{name}")));
    }
    for (i, (pkg_path, prefix)) in parts.iter().enumerate() {
        let part_tar = dest.with_extension(format!("part{i}.tar"));
        {
            let f = std::io::BufWriter::new(std::fs::File::create(&part_tar)?);
            let pkg = std::io::BufReader::new(std::fs::File::open(pkg_path)?);
            crate::package::repack(pkg, f, prefix, max_extracted)?;
        }
        if i == 1 {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_uid(crate::package::VCAP_UID);
            h.set_gid(crate::package::VCAP_UID);
            h.set_size(0);
            builder.append_data(&mut h, "local-buildpacks", std::io::empty())?;
        }
        append_tar(&mut builder, &part_tar)?;
        std::fs::remove_file(&part_tar)?;
    }
    fn append_tar<W: Write>(builder: &mut tar::Builder<W>, part: &Path) -> Result<()> {
        let mut a = tar::Archive::new(std::io::BufReader::new(std::fs::File::open(part)?));
        for entry in a.entries()? {
            let mut entry = entry?;
            let mut h = entry.header().clone();
            let path = entry.path()?.into_owned();
            if h.entry_type() == tar::EntryType::Symlink {
                let target = entry
                    .link_name()?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                builder.append_link(&mut h, &path, &target)?;
            } else {
                builder.append_data(&mut h, &path, &mut entry)?;
            }
        }
        Ok(())
    }
    let dir = |name: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_uid(crate::package::VCAP_UID);
        h.set_gid(crate::package::VCAP_UID);
        h.set_size(0);
        (h, name.to_string())
    };
    let file = |data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_uid(crate::package::VCAP_UID);
        h.set_gid(crate::package::VCAP_UID);
        h.set_size(data.len() as u64);
        h
    };
    for d in ["env", "lifecycle", "out"] {
        let (mut h, n) = dir(d);
        builder.append_data(&mut h, n, std::io::empty())?;
    }
    for (k, v) in env {
        let mut h = file(v.as_bytes(), 0o600);
        builder.append_data(&mut h, format!("env/{k}"), v.as_bytes())?;
    }
    let mut h = file(LIFECYCLE.as_bytes(), 0o755);
    builder.append_data(&mut h, "lifecycle/stage.sh", LIFECYCLE.as_bytes())?;
    builder.into_inner()?.flush()?;
    Ok(())
}

/// Reads `/tmp/out` as downloaded: the droplet goes to a pending blob; the rest is parsed.
fn read_outputs(
    blobs: &crate::blobs::BlobStore,
    out_tar: &Path,
) -> Result<(crate::blobs::PendingBlob, String, BTreeMap<String, String>)> {
    let mut a = tar::Archive::new(std::io::BufReader::new(std::fs::File::open(out_tar)?));
    let mut droplet = None;
    let mut buildpack = String::new();
    let mut release = String::new();
    let mut procfile = String::new();
    for entry in a.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        match path.file_name().and_then(|n| n.to_str()) {
            Some("droplet.tgz") => droplet = Some(blobs.write_reader(&mut entry)?),
            Some("buildpack") => {
                entry.read_to_string(&mut buildpack)?;
            }
            Some("release.yml") => {
                entry.read_to_string(&mut release)?;
            }
            Some("Procfile") => {
                entry.read_to_string(&mut procfile)?;
            }
            _ => {}
        }
    }
    let droplet = droplet
        .ok_or_else(|| Error::api(ErrorCode::StagingFailed, "staging produced no droplet"))?;
    let mut types = parse_release(&release)?;
    types.extend(parse_procfile(&procfile)?);
    Ok((droplet, buildpack.trim().to_string(), types))
}

/// `default_process_types` from a buildpack's `bin/release` YAML.
pub fn parse_release(yaml: &str) -> Result<BTreeMap<String, String>> {
    if yaml.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    #[derive(serde::Deserialize)]
    struct Release {
        #[serde(default)]
        default_process_types: Option<BTreeMap<String, String>>,
    }
    let r: Release = serde_yaml_ng::from_str(yaml).map_err(|e| {
        Error::api(
            ErrorCode::StagingFailed,
            format!("the buildpack's bin/release printed invalid YAML: {e}"),
        )
    })?;
    Ok(r.default_process_types.unwrap_or_default())
}

/// A Procfile: `type: command` per line; `#` comments and blank lines are skipped.
pub fn parse_procfile(text: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((kind, cmd)) = line.split_once(':') else {
            return Err(Error::api(
                ErrorCode::StagingFailed,
                format!(
                    "Procfile line {}: expected `type: command`, got {line:?}",
                    n + 1
                ),
            ));
        };
        let kind = kind.trim();
        if kind.parse::<pier_api::ProcessType>().is_err() {
            return Err(Error::api(
                ErrorCode::StagingFailed,
                format!(
                    "Procfile line {}: {kind:?} is not a valid process type",
                    n + 1
                ),
            ));
        }
        out.insert(kind.to_string(), cmd.trim().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_and_procfile() {
        let r = parse_release("---\ndefault_process_types:\n  web: python3 app.py\n").unwrap();
        assert_eq!(r["web"], "python3 app.py");
        assert!(parse_release("").unwrap().is_empty());
        assert!(parse_release(": : :").is_err());
        let p = parse_procfile("# c\nweb: gunicorn app:app\n\nworker: python3 w.py\n").unwrap();
        assert_eq!(p["web"], "gunicorn app:app");
        assert_eq!(p["worker"], "python3 w.py");
        assert!(parse_procfile("nonsense").is_err());
    }

    #[test]
    fn registry_positions() {
        let rec = |n: &str| BuildpackRecord {
            name: n.into(),
            enabled: true,
            builtin: false,
            sha256: None,
            updated_at: OffsetDateTime::now_utc(),
        };
        let mut r = Registry {
            file: PathBuf::new(),
            dir: PathBuf::new(),
            list: vec![rec("a"), rec("b")],
        };
        r.place(rec("c"), Some(1));
        r.place(rec("d"), Some(99));
        r.place(rec("e"), None);
        let names = |r: &Registry| r.list.iter().map(|b| b.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&r), ["c", "a", "b", "d", "e"]);
        // Moving keeps one entry; no position keeps the place.
        r.place(rec("e"), Some(2));
        let mut off = rec("a");
        off.enabled = false;
        r.place(off, None);
        assert_eq!(names(&r), ["c", "e", "a", "b", "d"]);
        assert_eq!(r.detect_order(), ["c", "e", "b", "d"]);
    }

    #[test]
    fn builtin_buildpacks_are_embedded_and_installed() {
        let dir = tempfile::tempdir().unwrap();
        let bp = install_buildpacks(dir.path()).unwrap();
        for name in BUILTIN_ORDER {
            use std::os::unix::fs::PermissionsExt;
            let detect = bp.join(name).join("bin/detect");
            let mode = std::fs::metadata(&detect).unwrap().permissions().mode();
            assert_eq!(mode & 0o111, 0o111, "{} is executable", detect.display());
        }
        assert!(check_buildpacks(&["python".into()]).is_ok());
        assert!(check_buildpacks(&["cobol".into()]).is_err());
    }
}

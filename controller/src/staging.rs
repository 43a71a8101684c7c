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
//! Exit codes of the lifecycle: 222 no buildpack detected, 223 compile failed, 224 release failed,
//! 225 packing failed (docs/staging.md).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::LogsOptionsBuilder;
use futures_util::StreamExt;
use include_dir::{include_dir, Dir};
use pier_api::{DropletInfo, ErrorCode, LogStream};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::docker::{self, labels};
use crate::error::{Error, Result};
use crate::server::Ctx;
use crate::store::AppRecord;

static BUILTIN_BUILDPACKS: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../buildpacks");
const LIFECYCLE: &str = include_str!("../../lifecycle/stage.sh");

/// Built-in buildpacks in detection order.
pub const BUILTIN_ORDER: &[&str] = &["staticfile", "python"];

/// Writes the built-in buildpacks into `DATA_DIR/buildpacks`, where staging mounts them read-only.
pub fn install_buildpacks(data_dir: &Path) -> Result<PathBuf> {
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
    }
    // Executable bits are not embedded: everything under a bin/ folder is a program.
    fn fix_modes(p: &Path) -> std::io::Result<()> {
        for e in std::fs::read_dir(p)? {
            let path = e?.path();
            if path.is_dir() {
                fix_modes(&path)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            } else {
                let exec = path
                    .parent()
                    .and_then(|d| d.file_name())
                    .is_some_and(|n| n == "bin");
                let mode = if exec { 0o755 } else { 0o644 };
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            }
        }
        Ok(())
    }
    fix_modes(&dir)?;
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

/// Checks buildpack names a user asked for against those installed.
pub fn check_buildpacks(names: &[String]) -> Result<()> {
    for n in names {
        if !BUILTIN_ORDER.contains(&n.as_str()) {
            return Err(Error::bad_request(format!(
                "unknown buildpack {n:?}; available: {}",
                BUILTIN_ORDER.join(", ")
            )));
        }
    }
    Ok(())
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
            "STG/0",
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
    let work = tempfile::Builder::new()
        .prefix("stage-")
        .tempdir_in(ctx.blobs.tmp_dir())?;
    let input = work.path().join("input.tar");
    {
        let pkg = ctx.blobs.path(package)?;
        let input = input.clone();
        let env = app.env.clone();
        let max = ctx.config.max_extracted_bytes;
        tokio::task::spawn_blocking(move || build_input_tar(&pkg, &input, &env, max))
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

    let order: Vec<String> = if app.buildpacks.is_empty() {
        BUILTIN_ORDER.iter().map(|s| s.to_string()).collect()
    } else {
        app.buildpacks.clone()
    };
    let mut env: Vec<String> = vec![
        format!("PIER_BUILDPACKS={}", order.join(" ")),
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

/// The tar a staging container receives: `app/` (the validated package), `env/` and the lifecycle.
fn build_input_tar(
    package: &Path,
    dest: &Path,
    env: &BTreeMap<String, String>,
    max_extracted: u64,
) -> Result<()> {
    // The repacked app goes first, into its own tar; then it is concatenated with the rest.
    let app_tar = dest.with_extension("app.tar");
    {
        let f = std::io::BufWriter::new(std::fs::File::create(&app_tar)?);
        let pkg = std::io::BufReader::new(std::fs::File::open(package)?);
        crate::package::repack(pkg, f, "app", max_extracted)?;
    }
    let mut builder = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(dest)?));
    {
        let mut a = tar::Archive::new(std::io::BufReader::new(std::fs::File::open(&app_tar)?));
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
    }
    std::fs::remove_file(&app_tar)?;
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

//! The staging container: created from the stack image as `vcap` with networking off, the
//! buildpacks mounted read-only and the app's cache volume at `/tmp/cache`; the staging tar goes
//! in on stdin and is unpacked into `/tmp`, `stage.sh` runs, its output streams line by line, and
//! `/tmp/out` comes back as a tar. The container is removed on every path. A warm one
//! ([`super::warm`]), made and started ahead of need, skips the create and the start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use pier_api::ErrorCode;

use super::buildpacks::Resolved;
use super::release::{self, Outputs};
use super::warm::WarmStagers;
use super::{cache_volume, Output, StagingSettings};
use crate::error::{Error, Result};
use crate::logs::Splitter;
use crate::runtime::labels::keys;
use crate::runtime::{
    ContainerRuntime, ContainerSpec, Exit, Kind, Labels, Mount, Networking, OutputOptions,
    RuntimeError,
};
use crate::store::{AppRecord, BlobStore};

/// The staging container's command: the staging tar arrives on stdin; once it is unpacked into
/// `/tmp` (owned by vcap, modes kept), the lifecycle runs.
const UNPACK_AND_STAGE: &str =
    "tar -xpf - -C /tmp || { echo 'the staging input did not arrive whole' >&2; exit 227; }; \
     exec bash /tmp/lifecycle/stage.sh </dev/null";

/// Memory of a staging container, in MiB.
const STAGING_MEMORY_MB: u64 = 1024;

pub(super) struct Run<'a> {
    pub(super) runtime: &'a dyn ContainerRuntime,
    pub(super) settings: &'a StagingSettings,
    pub(super) buildpacks_dir: PathBuf,
    pub(super) blobs: &'a BlobStore,
    pub(super) out: &'a Output,
    pub(super) warm: &'a Arc<WarmStagers>,
}

impl Run<'_> {
    /// Runs the staging of `app` with the staging tar `input`; on success, what it left in
    /// `/tmp/out`.
    pub(super) async fn run(
        &self,
        app: &AppRecord,
        resolved: &Resolved,
        input: &Path,
    ) -> Result<Outputs> {
        let volume = cache_volume(&app.guid);
        let labels = Labels::new(&self.settings.controller_id, Kind::Staging)
            .with(keys::APP, &app.name)
            .with(keys::APP_GUID, &app.guid);
        self.runtime.create_volume(&volume, &labels).await?;
        let spec = self.spec(app, resolved, labels.with(keys::VOLUME, &volume), &volume);
        let result = match self.warm.take(&app.guid, &spec).await {
            Some(id) => match self.send_input(&id, input).await {
                Ok(()) => {
                    let result = self.finish(&id).await;
                    self.remove(&id).await;
                    result
                }
                Err(e) => {
                    tracing::info!(app = %app.name, error = %e, "the warm staging container failed; staging in a new one");
                    self.remove(&id).await;
                    self.run_cold(&spec, input).await
                }
            },
            None => self.run_cold(&spec, input).await,
        };
        if result.is_ok() {
            self.warm.prepare(&app.guid, &spec);
        }
        result
    }

    async fn run_cold(&self, spec: &ContainerSpec, input: &Path) -> Result<Outputs> {
        let id = self.runtime.create(spec).await?;
        let result = self.run_container(&id, input).await;
        self.remove(&id).await;
        result
    }

    async fn remove(&self, id: &str) {
        if let Err(e) = self.runtime.remove(id).await {
            tracing::warn!(container = %id, error = %e, "could not remove staging container");
        }
    }

    /// Gives the started container its input on stdin, which its command unpacks into `/tmp`
    /// before the lifecycle runs (no archive upload into the container: on storage drivers such
    /// as fuse-overlayfs that costs a tenth of a second per staging).
    async fn send_input(&self, id: &str, input: &Path) -> Result<()> {
        let timeout = self.settings.timeout;
        match tokio::time::timeout(timeout, self.runtime.send_stdin(id, input)).await {
            Ok(sent) => Ok(sent?),
            Err(_) => Err(Error::api(
                ErrorCode::StagingFailed,
                format!(
                    "the staging container did not take its input within {} s",
                    timeout.as_secs()
                ),
            )),
        }
    }

    fn spec(
        &self,
        app: &AppRecord,
        resolved: &Resolved,
        labels: Labels,
        volume: &str,
    ) -> ContainerSpec {
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
        ContainerSpec {
            name: format!(
                "pier-stage-{}-{}",
                app.name,
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            image: self.settings.stack_image.clone(),
            cmd: vec!["bash".into(), "-c".into(), UNPACK_AND_STAGE.into()],
            env,
            user: "vcap".into(),
            working_dir: "/tmp".into(),
            labels,
            memory_mb: STAGING_MEMORY_MB,
            pids_limit: self.settings.pids_limit,
            networking: Networking::Disabled,
            mounts: vec![
                Mount::BindReadOnly {
                    source: self.buildpacks_dir.display().to_string(),
                    target: "/tmp/buildpacks".into(),
                },
                Mount::Volume {
                    name: volume.to_string(),
                    target: "/tmp/cache".into(),
                },
            ],
            publish_8080: false,
            init: false,
            stop_timeout: None,
            cpu_shares: Some(1024),
            nano_cpus: None,
            open_stdin: true,
        }
    }

    async fn run_container(&self, id: &str, input: &Path) -> Result<Outputs> {
        self.runtime.start(id).await?;
        self.send_input(id, input).await?;
        self.finish(id).await
    }

    /// Follows the started staging to its end and reads what it left.
    async fn finish(&self, id: &str) -> Result<Outputs> {
        // Follow the output while waiting for the exit; both end when the container does.
        let timeout = self.settings.timeout;
        let both = async { tokio::join!(self.follow_output(id), self.runtime.wait(id)).1 };
        let exit = match tokio::time::timeout(timeout, both).await {
            Ok(exit) => exit,
            Err(_) => {
                let _ = self.runtime.stop(id, std::time::Duration::ZERO).await;
                return Err(Error::api(
                    ErrorCode::StagingFailed,
                    format!(
                        "staging timed out after {} s and was stopped; make the build faster or \
                         raise the controller's --staging-timeout-secs",
                        timeout.as_secs()
                    ),
                ));
            }
        };
        check_exit(exit)?;
        let tar = self
            .runtime
            .download(id, "/tmp/out", self.settings.max_droplet_bytes);
        tokio::time::timeout(timeout, read_outputs(self.blobs.clone(), tar))
            .await
            .map_err(|_| {
                Error::api(
                    ErrorCode::StagingFailed,
                    format!(
                        "copying the droplet out of the staging container took longer than {} s",
                        timeout.as_secs()
                    ),
                )
            })?
    }

    /// Publishes the container's output line by line until it ends: lines are cut at the log's
    /// line limit, and past `max_output_bytes` lines are counted, not shown (with a notice when it
    /// starts and the count at the end), so a buildpack that prints without end costs nothing.
    async fn follow_output(&self, id: &str) {
        let opts = OutputOptions {
            follow: true,
            timestamps: true,
            since: None,
        };
        let mut output = self.runtime.output(id, opts);
        let mut splitter = Splitter::default();
        let mut budget = OutputBudget::new(self.settings.max_output_bytes);
        while let Some(Ok(chunk)) = output.next().await {
            let (stream, lines) = splitter.push(chunk.stream, &chunk.bytes);
            for (time, text) in lines {
                budget.show(self.out, stream, &text, time).await;
            }
        }
        for (stream, time, text) in splitter.finish() {
            budget.show(self.out, stream, &text, time).await;
        }
        budget.finish(self.out).await;
    }
}

/// Reads `/tmp/out` as it streams out of the container (see [`release::read_outputs`]): a
/// metadata file that is too large is refused from its header, before its bytes are read.
async fn read_outputs(
    blobs: BlobStore,
    tar: futures_util::stream::BoxStream<'static, crate::runtime::Result<bytes::Bytes>>,
) -> Result<Outputs> {
    let reader = tokio_util::io::StreamReader::new(tar.map(|r| r.map_err(std::io::Error::other)));
    let reader = tokio_util::io::SyncIoBridge::new(reader);
    let result = tokio::task::spawn_blocking(move || release::read_outputs(&blobs, reader))
        .await
        .map_err(|e| Error::Other(format!("reading staging output failed: {e}")))?;
    result.map_err(|e| match too_large(&e) {
        Some(limit) => Error::api(
            ErrorCode::StagingFailed,
            format!(
                "the staging output (droplet and metadata) is larger than the controller's \
                 limit of {limit} bytes (--max-droplet-bytes); make the app smaller"
            ),
        ),
        None => e,
    })
}

/// The limit, when reading failed because the download went over it.
fn too_large(e: &Error) -> Option<u64> {
    let Error::Io(io) = e else { return None };
    match io.get_ref()?.downcast_ref::<RuntimeError>()? {
        RuntimeError::TooLarge { limit, .. } => Some(*limit),
        _ => None,
    }
}

/// How much staging output is shown, and what was not.
struct OutputBudget {
    left: u64,
    limit: u64,
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl OutputBudget {
    fn new(limit: u64) -> OutputBudget {
        OutputBudget {
            left: limit,
            limit,
            dropped_lines: 0,
            dropped_bytes: 0,
        }
    }

    async fn show(
        &mut self,
        out: &Output,
        stream: pier_api::LogStream,
        text: &str,
        time: time::OffsetDateTime,
    ) {
        let len = text.len() as u64 + 1;
        if len <= self.left {
            self.left -= len;
            return out.line(stream, text, time).await;
        }
        if self.dropped_lines == 0 {
            out.notice(&format!(
                "the staging printed more than {} MiB; the rest of its output is counted, not \
                 shown (staging goes on)",
                self.limit / (1024 * 1024)
            ))
            .await;
        }
        self.left = 0;
        self.dropped_lines += 1;
        self.dropped_bytes += len;
    }

    async fn finish(&self, out: &Output) {
        if self.dropped_lines > 0 {
            out.notice(&format!(
                "{} lines ({} bytes) of staging output were not shown: over the limit of {} MiB",
                self.dropped_lines,
                self.dropped_bytes,
                self.limit / (1024 * 1024)
            ))
            .await;
        }
    }
}

/// The lifecycle's exit codes (docs/staging.md) as errors the user can act on.
fn check_exit(exit: Exit) -> Result<()> {
    let staging_failed = |m: String| Err(Error::api(ErrorCode::StagingFailed, m));
    match exit.code {
        Some(0) => Ok(()),
        None => staging_failed("the staging container was removed before it finished".into()),
        Some(222) => Err(Error::api(
            ErrorCode::NoBuildpack,
            "no buildpack detected the app (see the staging output above for the ones \
             tried); add the file a buildpack looks for, or name one with -b",
        )),
        Some(code @ (223 | 224)) => staging_failed(format!(
            "the buildpack failed (staging exit status {code}); see its output above"
        )),
        Some(226) => staging_failed(
            "a named buildpack cannot run in that place (see the output above); only \
             buildpacks with bin/supply can come before the last one"
                .into(),
        ),
        Some(137) => {
            staging_failed("staging was killed (exit status 137), most likely out of memory".into())
        }
        Some(other) => staging_failed(format!(
            "staging failed with exit status {other}; see the output above"
        )),
    }
}

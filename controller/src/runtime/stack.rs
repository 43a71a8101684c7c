//! The stack image: Pier's base image, like Cloud Foundry's cflinuxfs4.
//!
//! No registry is reachable, so the controller builds it: `stack/build-rootfs.sh` (embedded in the
//! binary) debootstraps Debian bookworm from the mirror the host's apt sources name and installs
//! the runtimes the built-in buildpacks need; the root filesystem tar is then imported into Docker
//! under a versioned tag. It is built once and reused; `pier-controller build-stack` rebuilds it.
//! An operator can name any other image with `--stack-image`.

use std::process::Stdio;

use super::{ContainerRuntime, ImportSpec};

/// Bump the suffix whenever the stack's contents change.
pub const DEFAULT_STACK_IMAGE: &str = "pier-stack:bookworm-v2";

const BUILD_SCRIPT: &str = include_str!("../../../stack/build-rootfs.sh");

/// Makes sure the stack image exists, building it when it is missing and `build` allows.
pub async fn ensure(
    runtime: &dyn ContainerRuntime,
    image: &str,
    build: bool,
) -> anyhow::Result<()> {
    if runtime.image_exists(image).await? {
        return Ok(());
    }
    if !build {
        anyhow::bail!(
            "the stack image {image} is missing; build it with `pier-controller build-stack`, \
             or name an existing image with --stack-image"
        );
    }
    if image != DEFAULT_STACK_IMAGE {
        anyhow::bail!(
            "the stack image {image} is missing and only {DEFAULT_STACK_IMAGE} can be built here; \
             load {image} into Docker first"
        );
    }
    build_stack(runtime, image).await
}

/// Builds the root filesystem with debootstrap and imports it as `image`, printing progress.
pub async fn build_stack(runtime: &dyn ContainerRuntime, image: &str) -> anyhow::Result<()> {
    let mut changes = base_env();
    changes.extend(["USER vcap".into(), "WORKDIR /home/vcap".into()]);
    build_image(runtime, image, "stack", &[], changes).await
}

/// Builds the services image (the built-in brokers' PostgreSQL and Redis, `pier_broker`) from
/// the same script, with Debian's `postgresql` and `redis-server` instead of the runtimes.
pub async fn build_services_image(
    runtime: &dyn ContainerRuntime,
    image: &str,
) -> anyhow::Result<()> {
    let args = [
        "--packages",
        pier_broker::image::PACKAGES,
        "--commands",
        pier_broker::image::COMMANDS,
        "--release",
        "services",
    ];
    let changes = base_env();
    build_image(runtime, image, "services image", &args, changes).await
}

/// Builds the platform image's base ([`super::platform`]) from the same script: the essentials
/// and `iptables`, no runtimes.
pub async fn build_platform_base(
    runtime: &dyn ContainerRuntime,
    image: &str,
) -> anyhow::Result<()> {
    let args = [
        "--packages",
        "iptables",
        "--commands",
        "iptables",
        "--release",
        "platform",
    ];
    let changes = base_env();
    build_image(runtime, image, "platform image's base", &args, changes).await
}

/// The environment every image built from the script has.
fn base_env() -> Vec<String> {
    vec![
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "ENV LANG=C.UTF-8".into(),
    ]
}

async fn build_image(
    runtime: &dyn ContainerRuntime,
    image: &str,
    what: &str,
    args: &[&str],
    changes: Vec<String>,
) -> anyhow::Result<()> {
    let (repo, tag) = image
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("{what} {image:?} has no tag"))?;
    let work = tempfile::Builder::new().prefix("pier-stack-").tempdir()?;
    let script = work.path().join("build-rootfs.sh");
    std::fs::write(&script, BUILD_SCRIPT)?;
    let out = work.path().join("rootfs.tar");
    eprintln!("-----> Building the {what} {image} (debootstrap; takes a few minutes, once)");
    let started = std::time::Instant::now();
    let status = tokio::process::Command::new("bash")
        .arg(&script)
        .args(args)
        .arg(&out)
        .stdin(Stdio::null())
        .status()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run bash for the {what} build: {e}"))?;
    if !status.success() {
        anyhow::bail!(
            "building the {what}'s root filesystem failed ({status}); see the output above. \
             It needs root, debootstrap and the Debian mirror in /etc/apt/sources.list"
        );
    }
    eprintln!("-----> Importing the root filesystem into Docker as {image}");
    let spec = ImportSpec {
        repo: repo.to_string(),
        tag: tag.to_string(),
        changes,
    };
    runtime
        .import_image(&out, &spec)
        .await
        .map_err(|e| anyhow::anyhow!("docker import of the {what} failed: {e}"))?;
    if !runtime.image_exists(image).await? {
        anyhow::bail!("docker import finished but {image} is not there");
    }
    eprintln!(
        "-----> The {what} {image} is ready in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

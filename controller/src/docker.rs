//! Docker, through bollard: the controller's only way to touch containers, volumes and images.
//!
//! Every object carries labels naming its controller and purpose, so the actual state can always
//! be read back from Docker (see [`labels`]). Calls are idempotent where they can be: removing
//! something already gone succeeds.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointIpamConfig, EndpointSettings,
    HostConfig, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::{Stream, StreamExt, TryStreamExt};

use crate::error::{Error, Result};

pub mod labels {
    pub const CONTROLLER: &str = "pier.controller";
    /// `instance` or `staging` on containers; `instances` on the controller's instance network.
    pub const KIND: &str = "pier.kind";
    pub const APP: &str = "pier.app";
    pub const APP_GUID: &str = "pier.app-guid";
    pub const PROCESS: &str = "pier.process";
    pub const INDEX: &str = "pier.index";
    pub const INSTANCE: &str = "pier.instance";
    pub const DROPLET: &str = "pier.droplet";
    pub const REVISION: &str = "pier.revision";
    /// Hash of everything that makes an instance what it is; a different hash means replace it.
    pub const SPEC: &str = "pier.spec";
}

/// Connects to the local Docker engine and settles on an API version both sides speak.
pub async fn connect() -> anyhow::Result<Docker> {
    let hint =
        "is Docker running? Start it with `sudo systemctl start docker` or `sudo dockerd &`, \
                or point DOCKER_HOST at it";
    let docker = Docker::connect_with_local_defaults()
        .map_err(|e| anyhow::anyhow!("cannot reach Docker: {e}; {hint}"))?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Docker: {e}; {hint}"))?;
    docker
        .ping()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Docker: {e}; {hint}"))?;
    Ok(docker)
}

pub fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn ignore_missing(r: std::result::Result<(), bollard::errors::Error>) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        // 409: removal already in progress.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A container this controller made, as `docker ps` sees it.
#[derive(Debug, Clone)]
pub struct Managed {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub running: bool,
    pub created: i64,
}

impl Managed {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// Every container labelled with this controller's id, running or not.
pub async fn list_managed(docker: &Docker, controller_id: &str) -> Result<Vec<Managed>> {
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![format!("{}={}", labels::CONTROLLER, controller_id)],
    );
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let list = docker.list_containers(Some(opts)).await?;
    Ok(list
        .into_iter()
        .filter_map(|c| {
            Some(Managed {
                id: c.id?,
                running: matches!(
                    c.state,
                    Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
                ),
                labels: c.labels.unwrap_or_default(),
                created: c.created.unwrap_or(0),
            })
        })
        .collect())
}

pub async fn create(docker: &Docker, name: &str, body: ContainerCreateBody) -> Result<String> {
    let opts = CreateContainerOptionsBuilder::default().name(name).build();
    Ok(docker.create_container(Some(opts), body).await?.id)
}

/// Extracts a tar (plain or gzipped) file into the container at `dest`.
pub async fn upload_file(docker: &Docker, id: &str, dest: &str, tar_path: &Path) -> Result<()> {
    let file = tokio::fs::File::open(tar_path).await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
    let opts = UploadToContainerOptionsBuilder::default()
        .path(dest)
        .build();
    docker
        .upload_to_container(id, Some(opts), bollard::body_try_stream(stream))
        .await?;
    Ok(())
}

/// Streams a path out of the container as a tar.
pub fn download(
    docker: &Docker,
    id: &str,
    path: &str,
) -> impl Stream<Item = std::result::Result<bytes::Bytes, bollard::errors::Error>> {
    let opts = DownloadFromContainerOptionsBuilder::default()
        .path(path)
        .build();
    docker.download_from_container(id, Some(opts))
}

pub async fn start(docker: &Docker, id: &str) -> Result<()> {
    docker
        .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
        .await?;
    Ok(())
}

pub async fn inspect(docker: &Docker, id: &str) -> Result<Option<ContainerInspectResponse>> {
    match docker
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
    {
        Ok(i) => Ok(Some(i)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// SIGTERM, then SIGKILL after `grace`; a container already stopped or gone is fine.
pub async fn stop(docker: &Docker, id: &str, grace: std::time::Duration) -> Result<()> {
    let opts = StopContainerOptionsBuilder::default()
        .t(grace.as_secs().min(i32::MAX as u64) as i32)
        .build();
    match docker.stop_container(id, Some(opts)).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 304, ..
        }) => Ok(()),
        Err(e) => ignore_missing(Err(e)),
    }
}

pub async fn remove(docker: &Docker, id: &str) -> Result<()> {
    let opts = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    ignore_missing(docker.remove_container(id, Some(opts)).await)
}

pub async fn remove_volume(docker: &Docker, name: &str) -> Result<()> {
    ignore_missing(
        docker
            .remove_volume(
                name,
                Some(bollard::query_parameters::RemoveVolumeOptions { force: true }),
            )
            .await,
    )
}

/// The last `n` lines the container printed, stdout and stderr interleaved.
pub async fn tail(docker: &Docker, id: &str, n: usize) -> Vec<String> {
    let opts = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail(&n.to_string())
        .build();
    let chunks: Vec<_> = docker
        .logs(id, Some(opts))
        .take_while(|r| futures_util::future::ready(r.is_ok()))
        .filter_map(|r| async move { r.ok() })
        .collect()
        .await;
    let text: String = chunks
        .iter()
        .map(|c| String::from_utf8_lossy(&c.clone().into_bytes()).into_owned())
        .collect();
    text.lines().map(str::to_string).collect()
}

/// The container's address on its Docker network, where its port 8080 answers directly.
pub fn container_ip(i: &ContainerInspectResponse) -> Option<IpAddr> {
    let nets = i.network_settings.as_ref()?.networks.as_ref()?;
    nets.values()
        .filter_map(|n| n.ip_address.as_deref())
        .find(|ip| !ip.is_empty())
        .and_then(|ip| ip.parse().ok())
}

/// The loopback host port that the container's 8080/tcp is published on.
pub fn host_port(i: &ContainerInspectResponse) -> Option<u16> {
    let ports = i.network_settings.as_ref()?.ports.as_ref()?;
    ports
        .get("8080/tcp")?
        .as_ref()?
        .iter()
        .filter_map(|b| b.host_port.as_deref())
        .find_map(|p| p.parse().ok())
}

/// The container's IPv4 address on the named network.
pub fn ip_on(i: &ContainerInspectResponse, network: &str) -> Option<Ipv4Addr> {
    let n = i
        .network_settings
        .as_ref()?
        .networks
        .as_ref()?
        .get(network)?;
    n.ip_address.as_deref()?.parse().ok()
}

/// Where an instance's port 8080 answers: its address on `network` (the controller's instance
/// network), else on whatever network it is on (an instance an older Pier started on Docker's
/// default bridge).
pub fn instance_addr(i: &ContainerInspectResponse, network: &str) -> Option<SocketAddr> {
    ip_on(i, network)
        .map(IpAddr::V4)
        .or_else(|| container_ip(i))
        .map(|ip| SocketAddr::new(ip, 8080))
}

/// Attaches the container to `network` only, at the fixed address `ip`.
pub fn attach(body: &mut ContainerCreateBody, network: &str, ip: Ipv4Addr) {
    body.host_config
        .get_or_insert_with(Default::default)
        .network_mode = Some(network.to_string());
    body.networking_config = Some(NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            network.to_string(),
            EndpointSettings {
                ipam_config: Some(EndpointIpamConfig {
                    ipv4_address: Some(ip.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )])),
    });
}

/// Exit status and OOM flag of a stopped container.
pub fn exit_info(i: &ContainerInspectResponse) -> (i64, bool) {
    let s = i.state.as_ref();
    (
        s.and_then(|s| s.exit_code).unwrap_or(-1),
        s.and_then(|s| s.oom_killed).unwrap_or(false),
    )
}

pub fn is_running(i: &ContainerInspectResponse) -> bool {
    i.state.as_ref().and_then(|s| s.running).unwrap_or(false)
}

/// Resource settings shared by staging and instance containers.
pub fn base_host_config(memory_mb: u64, pids_limit: i64) -> HostConfig {
    let bytes = (memory_mb as i64).saturating_mul(1024 * 1024);
    HostConfig {
        memory: Some(bytes),
        memory_swap: Some(bytes),
        pids_limit: Some(pids_limit),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        log_config: Some(bollard::models::HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), "10m".to_string()),
                ("max-file".to_string(), "2".to_string()),
            ])),
        }),
        ..Default::default()
    }
}

/// Collects a tar stream from Docker into a file.
pub async fn download_to_file(docker: &Docker, id: &str, path: &str, dest: &Path) -> Result<()> {
    let mut file = tokio::fs::File::create(dest).await?;
    let mut stream = download(docker, id, path).map_err(Error::from);
    while let Some(chunk) = stream.next().await {
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk?).await?;
    }
    tokio::io::AsyncWriteExt::flush(&mut file).await?;
    Ok(())
}

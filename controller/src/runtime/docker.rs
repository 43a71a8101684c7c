//! [`ContainerRuntime`] on the local Docker engine, through bollard.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointIpamConfig, EndpointSettings,
    HostConfig, HostConfigLogConfig, Ipam, IpamConfig, MountType, NetworkCreateRequest,
    NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, DownloadFromContainerOptionsBuilder,
    EventsOptionsBuilder, InspectContainerOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StatsOptionsBuilder,
    StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use time::OffsetDateTime;

use super::{
    ContainerInfo, ContainerRuntime, ContainerSpec, Exit, ImportSpec, Labels, Managed, Mount,
    NetworkInfo, NetworkSpec, Networking, OutputChunk, OutputOptions, Result, RuntimeError, Sample,
    Stream,
};
use crate::network::addresses::Ipv4Net;

const HINT: &str = "is Docker running? Start it with `sudo systemctl start docker` or \
                    `sudo dockerd &`, or point DOCKER_HOST at it";

/// The local Docker engine, scoped to one controller's objects.
pub struct DockerRuntime {
    docker: Docker,
    controller_id: String,
}

impl DockerRuntime {
    /// Connects to the local engine and settles on an API version both sides speak.
    pub async fn connect(controller_id: &str) -> Result<DockerRuntime> {
        let unreachable = |e: bollard::errors::Error| {
            RuntimeError::Unreachable(format!("cannot reach Docker: {e}; {HINT}"))
        };
        let docker = Docker::connect_with_local_defaults().map_err(unreachable)?;
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        Ok(DockerRuntime {
            docker,
            controller_id: controller_id.to_string(),
        })
    }

    fn controller_filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![Labels::controller_filter(&self.controller_id)],
        )])
    }
}

fn is_status(e: &bollard::errors::Error, code: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code)
}

impl From<bollard::errors::Error> for RuntimeError {
    fn from(e: bollard::errors::Error) -> Self {
        use bollard::errors::Error as E;
        match e {
            E::DockerResponseServerError {
                status_code,
                message,
            } => RuntimeError::Api(format!("{message} (status {status_code})")),
            E::IOError { err } => RuntimeError::Unreachable(err.to_string()),
            other => RuntimeError::Unreachable(other.to_string()),
        }
    }
}

/// Gone (404) or already being removed (409) counts as done.
fn ignore_missing(r: std::result::Result<(), bollard::errors::Error>) -> Result<()> {
    match r {
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
        other => Ok(other?),
    }
}

fn host_config(spec: &ContainerSpec) -> HostConfig {
    let bytes = (spec.memory_mb as i64).saturating_mul(1024 * 1024);
    let mut host = HostConfig {
        memory: Some(bytes),
        memory_swap: Some(bytes),
        pids_limit: Some(spec.pids_limit),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), "10m".to_string()),
                ("max-file".to_string(), "2".to_string()),
            ])),
        }),
        init: spec.init.then_some(true),
        cpu_shares: spec.cpu_shares,
        nano_cpus: spec.nano_cpus,
        ..Default::default()
    };
    let mut binds = Vec::new();
    let mut mounts = Vec::new();
    for m in &spec.mounts {
        match m {
            Mount::BindReadOnly { source, target } => binds.push(format!("{source}:{target}:ro")),
            Mount::Bind { source, target } => binds.push(format!("{source}:{target}:rw")),
            Mount::Volume { name, target } => mounts.push(bollard::models::Mount {
                target: Some(target.clone()),
                source: Some(name.clone()),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            }),
        }
    }
    host.binds = (!binds.is_empty()).then_some(binds);
    host.mounts = (!mounts.is_empty()).then_some(mounts);
    if spec.publish_8080 {
        host.port_bindings = Some(HashMap::from([(
            "8080/tcp".to_string(),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(String::new()),
            }]),
        )]));
    }
    host
}

fn create_body(spec: &ContainerSpec, dns: Option<Ipv4Addr>) -> ContainerCreateBody {
    let mut host = host_config(spec);
    host.dns = dns.map(|d| vec![d.to_string()]);
    let mut body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        user: Some(spec.user.clone()),
        working_dir: Some(spec.working_dir.clone()),
        cmd: Some(spec.cmd.clone()),
        env: Some(spec.env.clone()),
        labels: Some(spec.labels.to_map()),
        exposed_ports: spec.publish_8080.then(|| vec!["8080/tcp".into()]),
        stop_timeout: spec
            .stop_timeout
            .map(|t| t.as_secs().min(i64::MAX as u64) as i64),
        open_stdin: spec.open_stdin.then_some(true),
        stdin_once: spec.open_stdin.then_some(true),
        attach_stdin: spec.open_stdin.then_some(true),
        ..Default::default()
    };
    match &spec.networking {
        Networking::Disabled => {
            host.network_mode = Some("none".into());
            body.network_disabled = Some(true);
        }
        Networking::Fixed { network, ip } => {
            host.network_mode = Some(network.clone());
            body.networking_config = Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network.clone(),
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
    }
    body.host_config = Some(host);
    body
}

fn info_of(i: &ContainerInspectResponse) -> ContainerInfo {
    let state = i.state.as_ref();
    let addresses = i
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .map(|nets| {
            nets.iter()
                .filter_map(|(name, n)| {
                    let ip: Ipv4Addr = n.ip_address.as_deref()?.parse().ok()?;
                    Some((name.clone(), ip))
                })
                .collect()
        })
        .unwrap_or_default();
    let host_port = i
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
        .and_then(|p| p.get("8080/tcp")?.as_ref())
        .and_then(|b| {
            b.iter()
                .filter_map(|b| b.host_port.as_deref())
                .find_map(|p| p.parse().ok())
        });
    ContainerInfo {
        running: state.and_then(|s| s.running).unwrap_or(false),
        exit_code: state.and_then(|s| s.exit_code),
        oom_killed: state.and_then(|s| s.oom_killed).unwrap_or(false),
        started_at: state.and_then(|s| s.started_at.as_deref()).and_then(|s| {
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        }),
        addresses,
        host_port,
    }
}

fn chunk_of(o: LogOutput) -> OutputChunk {
    match o {
        LogOutput::StdErr { message } => OutputChunk {
            stream: Stream::Err,
            bytes: message,
        },
        other => OutputChunk {
            stream: Stream::Out,
            bytes: other.into_bytes(),
        },
    }
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    async fn list(&self) -> Result<Vec<Managed>> {
        let filters = self.controller_filter();
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self.docker.list_containers(Some(opts)).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                Some(Managed {
                    id: c.id?,
                    running: matches!(
                        c.state,
                        Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
                    ),
                    labels: Labels::from_map(c.labels.unwrap_or_default()),
                    created: c.created.unwrap_or(0),
                })
            })
            .collect())
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        let opts = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        // On an instance network, the DNS server is the controller's on the network's gateway
        // (internal routes, `network/dns.rs`): Docker's embedded resolver forwards to it every
        // name that is not a container's.
        let dns = match &spec.networking {
            Networking::Fixed { network, .. } => {
                let n = self
                    .docker
                    .inspect_network(
                        network,
                        None::<bollard::query_parameters::InspectNetworkOptions>,
                    )
                    .await?;
                gateway_of(&n)
            }
            Networking::Disabled => None,
        };
        Ok(self
            .docker
            .create_container(Some(opts), create_body(spec, dns))
            .await?
            .id)
    }

    async fn upload(&self, id: &str, dest: &str, tar: &Path) -> Result<()> {
        let file = tokio::fs::File::open(tar).await?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
        let opts = UploadToContainerOptionsBuilder::default()
            .path(dest)
            .build();
        self.docker
            .upload_to_container(id, Some(opts), bollard::body_try_stream(stream))
            .await?;
        Ok(())
    }

    fn download(&self, id: &str, path: &str, max_bytes: u64) -> BoxStream<'static, Result<Bytes>> {
        let opts = DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        let stream = self
            .docker
            .download_from_container(id, Some(opts))
            .map(|r| r.map_err(RuntimeError::from))
            .boxed();
        super::bounded(stream, format!("{path} in the container"), max_bytes)
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await?;
        Ok(())
    }

    async fn send_stdin(&self, id: &str, input: &Path) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let opts = bollard::query_parameters::AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stream(true)
            .build();
        let mut file = tokio::fs::File::open(input).await?;
        let mut attached = self.docker.attach_container(id, Some(opts)).await?;
        tokio::io::copy(&mut file, &mut attached.input).await?;
        attached.input.flush().await?;
        // Closing the attach closes the container's stdin (it was made with StdinOnce).
        attached.input.shutdown().await?;
        Ok(())
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let opts = StopContainerOptionsBuilder::default()
            .t(grace.as_secs().min(i32::MAX as u64) as i32)
            .build();
        match self.docker.stop_container(id, Some(opts)).await {
            // 304: already stopped.
            Err(e) if is_status(&e, 304) => Ok(()),
            other => ignore_missing(other),
        }
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        ignore_missing(self.docker.remove_container(id, Some(opts)).await)
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>> {
        match self
            .docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(i) => Ok(Some(info_of(&i))),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn wait(&self, id: &str) -> Exit {
        loop {
            let mut w = self
                .docker
                .wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>);
            match w.next().await {
                Some(Ok(_))
                | Some(Err(bollard::errors::Error::DockerContainerWaitError { .. })) => {}
                Some(Err(e)) if is_status(&e, 404) => {
                    return Exit {
                        code: None,
                        oom_killed: false,
                    }
                }
                // Docker went away (a restart?) or the stream broke: look, then wait again.
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
            match self.inspect(id).await {
                Ok(None) => {
                    return Exit {
                        code: None,
                        oom_killed: false,
                    }
                }
                Ok(Some(i)) if !i.running => {
                    return Exit {
                        code: Some(i.exit_code.unwrap_or(-1)),
                        oom_killed: i.oom_killed,
                    }
                }
                _ => continue,
            }
        }
    }

    fn output(&self, id: &str, opts: OutputOptions) -> BoxStream<'static, Result<OutputChunk>> {
        let mut o = LogsOptionsBuilder::default()
            .follow(opts.follow)
            .stdout(true)
            .stderr(true)
            .timestamps(opts.timestamps);
        if let Some(since) = opts.since {
            o = o.since(since.clamp(0, i64::from(i32::MAX)) as i32);
        }
        self.docker
            .logs(id, Some(o.build()))
            .map(|r| r.map(chunk_of).map_err(RuntimeError::from))
            .boxed()
    }

    async fn tail(&self, id: &str, n: usize) -> Vec<String> {
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&n.to_string())
            .build();
        let chunks: Vec<_> = self
            .docker
            .logs(id, Some(opts))
            .take_while(|r| futures_util::future::ready(r.is_ok()))
            .filter_map(|r| async move { r.ok() })
            .collect()
            .await;
        let text: String = chunks
            .into_iter()
            .map(|c| String::from_utf8_lossy(&c.into_bytes()).into_owned())
            .collect();
        text.lines().map(str::to_string).collect()
    }

    async fn sample(&self, id: &str) -> Option<Sample> {
        let opts = StatsOptionsBuilder::default()
            .stream(false)
            .one_shot(true)
            .build();
        let s = self.docker.stats(id, Some(opts)).next().await?.ok()?;
        let cpu = s.cpu_stats.as_ref();
        let mem = s.memory_stats.as_ref();
        // Page cache is not the app's memory (what `docker stats` subtracts too).
        let cache = mem
            .and_then(|m| m.stats.as_ref())
            .and_then(|st| st.get("inactive_file").or_else(|| st.get("cache")).copied())
            .unwrap_or(0);
        // A container that is not running reads as all zeros.
        let limit = mem.and_then(|m| m.limit).unwrap_or(0);
        if limit == 0 {
            return None;
        }
        Some(Sample {
            cpu_total_ns: cpu
                .and_then(|c| c.cpu_usage.as_ref()?.total_usage)
                .unwrap_or(0),
            system_ns: cpu.and_then(|c| c.system_cpu_usage).unwrap_or(0),
            online_cpus: cpu.and_then(|c| c.online_cpus).unwrap_or(1).max(1) as u64,
            memory_bytes: mem.and_then(|m| m.usage).unwrap_or(0).saturating_sub(cache),
            memory_limit_bytes: limit,
        })
    }

    async fn disk_usage(&self, id: &str) -> Option<u64> {
        let opts = InspectContainerOptionsBuilder::default().size(true).build();
        let i = self.docker.inspect_container(id, Some(opts)).await.ok()?;
        Some(i.size_rw.unwrap_or(0).max(0) as u64)
    }

    fn events(&self) -> BoxStream<'static, Result<()>> {
        let mut filters = self.controller_filter();
        filters.insert("type".into(), vec!["container".into()]);
        filters.insert(
            "event".into(),
            vec!["die".into(), "destroy".into(), "oom".into(), "start".into()],
        );
        let opts = EventsOptionsBuilder::default().filters(&filters).build();
        self.docker
            .events(Some(opts))
            .map(|r| r.map(|_| ()).map_err(RuntimeError::from))
            .boxed()
    }

    async fn create_volume(&self, name: &str, labels: &Labels) -> Result<()> {
        self.docker
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(name.to_string()),
                labels: Some(labels.to_map()),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    async fn remove_volume(&self, name: &str) -> Result<()> {
        ignore_missing(
            self.docker
                .remove_volume(
                    name,
                    Some(bollard::query_parameters::RemoveVolumeOptions { force: true }),
                )
                .await,
        )
    }

    async fn inspect_network(&self, name: &str) -> Result<Option<NetworkInfo>> {
        let n = match self
            .docker
            .inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(n) => n,
            Err(e) if is_status(&e, 404) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // Docker also matches an id prefix; only the exact name is the one asked for.
        if n.name.as_deref() != Some(name) {
            return Ok(None);
        }
        Ok(Some(NetworkInfo {
            name: name.to_string(),
            labels: Labels::from_map(n.labels.clone().unwrap_or_default()),
            subnets: ipv4_subnets(n.ipam.as_ref()),
        }))
    }

    async fn network_subnets(&self) -> Result<Vec<Ipv4Net>> {
        let nets = self
            .docker
            .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
            .await?;
        Ok(nets
            .iter()
            .flat_map(|n| ipv4_subnets(n.ipam.as_ref()))
            .collect())
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<()> {
        let req = NetworkCreateRequest {
            name: spec.name.clone(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(spec.subnet.to_string()),
                    gateway: Some(spec.gateway.to_string()),
                    ..Default::default()
                }]),
                options: None,
            }),
            labels: Some(spec.labels.to_map()),
            ..Default::default()
        };
        self.docker.create_network(req).await?;
        Ok(())
    }

    async fn list_networks(&self) -> Result<Vec<NetworkInfo>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![Labels::controller_filter(&self.controller_id)],
        )]);
        let opts = bollard::query_parameters::ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let nets = self.docker.list_networks(Some(opts)).await?;
        Ok(nets
            .into_iter()
            .filter_map(|n| {
                Some(NetworkInfo {
                    subnets: ipv4_subnets(n.ipam.as_ref()),
                    labels: Labels::from_map(n.labels.unwrap_or_default()),
                    name: n.name?,
                })
            })
            .collect())
    }

    async fn remove_network(&self, name: &str) -> Result<()> {
        let n = match self
            .docker
            .inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(n) if n.name.as_deref() == Some(name) => n,
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 404) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let bridge = bridge_name(name, &n)?;
        match self.docker.remove_network(name).await {
            Ok(()) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
        super::firewall::remove(&bridge, gateway_of(&n), &self.controller_id).await
    }

    async fn isolate(&self, network: &str, access: super::HostAccess) -> Result<()> {
        let n = self
            .docker
            .inspect_network(
                network,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await?;
        let bridge = bridge_name(network, &n)?;
        super::firewall::apply(&bridge, gateway_of(&n), &self.controller_id, access).await
    }

    async fn image_exists(&self, image: &str) -> Result<bool> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn add_layer(&self, spec: &super::LayerImageSpec) -> Result<()> {
        let base = self.docker.inspect_image(&spec.base).await?;
        let archive = spec.layer.with_extension("image.tar");
        let (s, a) = (spec.clone(), archive.clone());
        tokio::task::spawn_blocking(move || image_archive(&base, &s, &a))
            .await
            .map_err(|e| RuntimeError::Api(format!("making the image archive failed: {e}")))??;
        let loaded = async {
            let file = tokio::fs::File::open(&archive).await?;
            let body = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
            let opts = bollard::query_parameters::ImportImageOptionsBuilder::new()
                .quiet(true)
                .build();
            let mut out = self.docker.import_image_stream(opts, body, None);
            while let Some(info) = out.next().await {
                let info = info?;
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    return Err(RuntimeError::Api(format!("docker load: {e}")));
                }
            }
            Ok(())
        }
        .await;
        let _ = std::fs::remove_file(&archive);
        loaded
    }

    async fn list_images(&self) -> Result<Vec<super::ImageInfo>> {
        let filters = self.controller_filter();
        let opts = bollard::query_parameters::ListImagesOptionsBuilder::default()
            .all(false)
            .filters(&filters)
            .build();
        let list = self.docker.list_images(Some(opts)).await?;
        Ok(list
            .into_iter()
            .map(|i| super::ImageInfo {
                id: i.id,
                tags: i.repo_tags,
                labels: Labels::from_map(i.labels),
            })
            .collect())
    }

    async fn remove_image(&self, image: &str) -> Result<()> {
        let opts = bollard::query_parameters::RemoveImageOptionsBuilder::default()
            .force(false)
            .noprune(false)
            .build();
        match self.docker.remove_image(image, Some(opts), None).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn import_image(&self, rootfs: &Path, spec: &ImportSpec) -> Result<()> {
        let file = tokio::fs::File::open(rootfs).await?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1024 * 1024);
        let opts = CreateImageOptionsBuilder::default()
            .from_src("-")
            .repo(&spec.repo)
            .tag(&spec.tag)
            .changes(spec.changes.clone())
            .build();
        let mut progress =
            self.docker
                .create_image(Some(opts), Some(bollard::body_try_stream(stream)), None);
        while let Some(item) = progress.next().await {
            item?;
        }
        Ok(())
    }

    async fn tag_image(&self, image: &str, repo: &str, tag: &str) -> Result<()> {
        let opts = bollard::query_parameters::TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        Ok(self.docker.tag_image(image, Some(opts)).await?)
    }

    async fn push_image(&self, repo: &str, tag: &str) -> Result<()> {
        let opts = bollard::query_parameters::PushImageOptionsBuilder::default()
            .tag(tag)
            .build();
        let mut progress = self.docker.push_image(repo, Some(opts), None);
        while let Some(item) = progress.next().await {
            match item {
                Ok(_) => {}
                // The engine's own words (`connection refused`, `name unknown`, ...).
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(RuntimeError::Api(error))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

fn ipv4_subnets(ipam: Option<&Ipam>) -> Vec<Ipv4Net> {
    ipam.and_then(|i| i.config.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.subnet.as_deref()?.parse().ok())
        .collect()
}

/// An image archive as `docker load` reads it (manifest.json, the image config, the layers), of
/// `base` plus `spec.layer`. The base's layers are named in the manifest but left out: the engine
/// has them (it looks layers up by chain id before reading them), so only the new one is sent.
fn image_archive(
    base: &bollard::models::ImageInspect,
    spec: &super::LayerImageSpec,
    out: &std::path::Path,
) -> Result<()> {
    use sha2::Digest as _;
    use std::io::Write as _;
    let mut config = serde_json::to_value(base.config.clone().unwrap_or_default())
        .map_err(|e| RuntimeError::Api(format!("the base image's config: {e}")))?;
    config["Labels"] = serde_json::json!(spec.labels.to_map::<HashMap<String, String>>());
    config["User"] = serde_json::json!(spec.user);
    config["WorkingDir"] = serde_json::json!(spec.working_dir);
    let mut diff_ids = base
        .root_fs
        .as_ref()
        .and_then(|r| r.layers.clone())
        .unwrap_or_default();
    let base_layers = diff_ids.len();
    diff_ids.push(spec.diff_id.clone());
    let mut history: Vec<serde_json::Value> = (0..base_layers)
        .map(|_| serde_json::json!({ "created_by": format!("{} (base)", spec.base) }))
        .collect();
    history.push(serde_json::json!({ "created_by": "pier: the droplet" }));
    let image = serde_json::json!({
        "architecture": base.architecture.clone().unwrap_or_else(|| "amd64".into()),
        "os": base.os.clone().unwrap_or_else(|| "linux".into()),
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": history,
    });
    let image = serde_json::to_vec(&image)
        .map_err(|e| RuntimeError::Api(format!("the image config: {e}")))?;
    let config_name = format!("{}.json", hex::encode(sha2::Sha256::digest(&image)));
    let mut layers: Vec<String> = (0..base_layers)
        .map(|i| format!("base-{i}/layer.tar"))
        .collect();
    layers.push("droplet/layer.tar".into());
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [format!("{}:{}", spec.repo, spec.tag)],
        "Layers": layers,
    }]))
    .map_err(|e| RuntimeError::Api(format!("the image manifest: {e}")))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(out)?));
    for (name, data) in [(config_name.as_str(), &image), ("manifest.json", &manifest)] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, name, &data[..])?;
    }
    tar.append_path_with_name(&spec.layer, "droplet/layer.tar")?;
    tar.into_inner()?.flush()?;
    Ok(())
}

/// The network's bridge in the host's kernel: Docker names it after the network's id unless told
/// otherwise.
/// The network's gateway: the host's address on its bridge.
fn gateway_of(n: &bollard::models::NetworkInspect) -> Option<Ipv4Addr> {
    n.ipam
        .as_ref()?
        .config
        .as_ref()?
        .iter()
        .find_map(|c| c.gateway.as_deref()?.parse().ok())
}

fn bridge_name(network: &str, n: &bollard::models::NetworkInspect) -> Result<String> {
    n.options
        .as_ref()
        .and_then(|o| o.get("com.docker.network.bridge.name").cloned())
        .or_else(|| {
            n.id.as_deref()
                .map(|id| format!("br-{}", &id[..id.len().min(12)]))
        })
        .ok_or_else(|| RuntimeError::Api(format!("network {network} has no id")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Kind, Labels};

    fn spec(networking: Networking) -> ContainerSpec {
        ContainerSpec {
            name: "x".into(),
            image: "img".into(),
            cmd: vec![],
            env: vec![],
            user: "vcap".into(),
            working_dir: "/".into(),
            labels: Labels::new("c1", Kind::Instance),
            memory_mb: 64,
            pids_limit: 64,
            networking,
            mounts: vec![],
            publish_8080: false,
            init: true,
            stop_timeout: None,
            cpu_shares: None,
            nano_cpus: None,
            open_stdin: false,
        }
    }

    #[test]
    fn an_instance_asks_the_gateway_for_names_and_staging_asks_nobody() {
        let fixed = spec(Networking::Fixed {
            network: "pier-c1".into(),
            ip: "10.213.5.7".parse().unwrap(),
        });
        let body = create_body(&fixed, Some("10.213.5.1".parse().unwrap()));
        let host = body.host_config.unwrap();
        assert_eq!(host.dns, Some(vec!["10.213.5.1".to_string()]));
        assert_eq!(host.network_mode.as_deref(), Some("pier-c1"));
        let body = create_body(&spec(Networking::Disabled), None);
        assert_eq!(body.host_config.unwrap().dns, None);
    }

    #[test]
    fn the_gateway_comes_from_the_networks_ipam() {
        let n = bollard::models::NetworkInspect {
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some("10.213.5.0/24".into()),
                    gateway: Some("10.213.5.1".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(gateway_of(&n), Some("10.213.5.1".parse().unwrap()));
        assert_eq!(
            gateway_of(&bollard::models::NetworkInspect::default()),
            None
        );
    }
}

//! The Docker calls the brokers make, through bollard: a service instance's volume and container,
//! and `docker exec` of psql / redis-cli inside it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use bollard::exec::StartExecResults;
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, ExecConfig, HostConfig, MountType,
    NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

const HINT: &str = "is Docker running? Start it with `sudo systemctl start docker` or \
                    `sudo dockerd &`, or point DOCKER_HOST at it";

/// What a service container is made of.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    pub volume: String,
    /// Where the volume is mounted.
    pub data_dir: String,
    pub memory_bytes: i64,
    pub network: String,
    pub ip: Option<Ipv4Addr>,
    /// Other names apps on the network reach the container by.
    pub aliases: Vec<String>,
}

/// A container found by its labels.
#[derive(Debug, Clone)]
pub struct Found {
    pub name: String,
    pub running: bool,
    pub labels: HashMap<String, String>,
}

/// What a command run in a container did.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

fn is_status(e: &bollard::errors::Error, code: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// The local Docker engine.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
}

impl Engine {
    pub async fn connect() -> anyhow::Result<Engine> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| anyhow::anyhow!("cannot reach Docker: {e}; {HINT}"))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach Docker: {e}; {HINT}"))?;
        docker
            .ping()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach Docker: {e}; {HINT}"))?;
        Ok(Engine { docker })
    }

    pub async fn image_exists(&self, image: &str) -> anyhow::Result<bool> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(anyhow::anyhow!("cannot inspect the image {image}: {e}")),
        }
    }

    pub async fn network_exists(&self, name: &str) -> anyhow::Result<bool> {
        match self
            .docker
            .inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(anyhow::anyhow!("cannot inspect the network {name}: {e}")),
        }
    }

    /// Names of the networks carrying all of `labels` (`k=v`).
    pub async fn networks_labelled(&self, labels: &[String]) -> anyhow::Result<Vec<String>> {
        let filters = HashMap::from([("label".to_string(), labels.to_vec())]);
        let opts = bollard::query_parameters::ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let list = self.docker.list_networks(Some(opts)).await?;
        Ok(list.into_iter().filter_map(|n| n.name).collect())
    }

    /// Makes the volume unless it is there.
    pub async fn ensure_volume(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> anyhow::Result<()> {
        if self.docker.inspect_volume(name).await.is_ok() {
            return Ok(());
        }
        self.docker
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(name.to_string()),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the volume {name}: {e}"))?;
        Ok(())
    }

    pub async fn volume_exists(&self, name: &str) -> anyhow::Result<bool> {
        match self.docker.inspect_volume(name).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(anyhow::anyhow!("cannot inspect the volume {name}: {e}")),
        }
    }

    pub async fn remove_volume(&self, name: &str) -> anyhow::Result<()> {
        let opts = bollard::query_parameters::RemoveVolumeOptions { force: true };
        match self.docker.remove_volume(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("cannot remove the volume {name}: {e}")),
        }
    }

    /// Creates the container (restarted by Docker unless stopped: it comes back after a daemon
    /// or machine restart) and starts it.
    pub async fn run(&self, spec: &ContainerSpec) -> anyhow::Result<()> {
        let host = HostConfig {
            memory: Some(spec.memory_bytes),
            memory_swap: Some(spec.memory_bytes),
            pids_limit: Some(512),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            mounts: Some(vec![bollard::models::Mount {
                target: Some(spec.data_dir.clone()),
                source: Some(spec.volume.clone()),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            }]),
            network_mode: Some(spec.network.clone()),
            ..Default::default()
        };
        let endpoint = EndpointSettings {
            aliases: Some(spec.aliases.clone()),
            ipam_config: spec.ip.map(|ip| EndpointIpamConfig {
                ipv4_address: Some(ip.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.cmd.clone()),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone()),
            hostname: Some(spec.name.chars().take(63).collect()),
            stop_timeout: Some(20),
            host_config: Some(host),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(spec.network.clone(), endpoint)])),
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        self.docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the container {}: {e}", spec.name))?;
        self.start(&spec.name).await
    }

    pub async fn start(&self, name: &str) -> anyhow::Result<()> {
        match self
            .docker
            .start_container(
                name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 304) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("cannot start the container {name}: {e}")),
        }
    }

    pub async fn restart(&self, name: &str) -> anyhow::Result<()> {
        self.docker
            .restart_container(
                name,
                None::<bollard::query_parameters::RestartContainerOptions>,
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot restart the container {name}: {e}"))
    }

    /// Stops (letting the server shut down cleanly) and removes the container; gone already is
    /// fine.
    pub async fn remove(&self, name: &str) -> anyhow::Result<()> {
        let stop = StopContainerOptionsBuilder::default().t(20).build();
        match self.docker.stop_container(name, Some(stop)).await {
            Ok(()) => {}
            Err(e) if is_status(&e, 304) || is_status(&e, 404) => {}
            Err(e) => tracing::debug!(container = name, error = %e, "stop before removal failed"),
        }
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("cannot remove the container {name}: {e}")),
        }
    }

    /// Whether the container exists and runs.
    pub async fn state(&self, name: &str) -> anyhow::Result<Option<bool>> {
        match self
            .docker
            .inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(i) => Ok(Some(i.state.and_then(|s| s.running).unwrap_or(false))),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(anyhow::anyhow!("cannot inspect the container {name}: {e}")),
        }
    }

    /// Every container (running or not) carrying all of `labels` (`k=v`).
    pub async fn containers_labelled(&self, labels: &[String]) -> anyhow::Result<Vec<Found>> {
        let filters = HashMap::from([("label".to_string(), labels.to_vec())]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self.docker.list_containers(Some(opts)).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let name = c.names?.first()?.trim_start_matches('/').to_string();
                Some(Found {
                    name,
                    running: matches!(
                        c.state,
                        Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
                    ),
                    labels: c.labels.unwrap_or_default(),
                })
            })
            .collect())
    }

    /// Runs `cmd` in the container as `user`, with `env`, and collects what it prints (each
    /// stream cut at 64 KiB) and its exit code; gives up after `timeout`.
    pub async fn exec(
        &self,
        container: &str,
        user: &str,
        env: &[String],
        cmd: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<ExecOutput> {
        let run = async {
            let created = self
                .docker
                .create_exec(
                    container,
                    ExecConfig {
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        user: Some(user.to_string()),
                        env: Some(env.to_vec()),
                        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                        ..Default::default()
                    },
                )
                .await?;
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            if let StartExecResults::Attached { mut output, .. } =
                self.docker.start_exec(&created.id, None).await?
            {
                while let Some(chunk) = output.next().await {
                    match chunk? {
                        bollard::container::LogOutput::StdErr { message } => {
                            if stderr.len() < 65536 {
                                stderr.extend_from_slice(&message)
                            }
                        }
                        other => {
                            if stdout.len() < 65536 {
                                stdout.extend_from_slice(&other.into_bytes())
                            }
                        }
                    }
                }
            }
            let inspect = self.docker.inspect_exec(&created.id).await?;
            Ok::<_, bollard::errors::Error>(ExecOutput {
                code: inspect.exit_code.unwrap_or(-1),
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            })
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(anyhow::anyhow!("docker exec in {container} failed: {e}")),
            Err(_) => Err(anyhow::anyhow!(
                "docker exec in {container} did not finish within {} s",
                timeout.as_secs()
            )),
        }
    }
}

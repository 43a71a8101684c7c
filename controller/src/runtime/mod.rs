//! The container runtime: the only way the controller touches containers, volumes, networks and
//! images.
//!
//! [`ContainerRuntime`] is shaped around what Pier needs from a runtime, not around Docker's API:
//! run a labelled container from a [`ContainerSpec`], learn what became of it ([`ContainerInfo`],
//! [`ContainerRuntime::wait`], [`ContainerRuntime::events`]), read its output, move files in and
//! out, and keep the few other objects a platform owns (the instance network, cache volumes, the
//! stack image). [`DockerRuntime`] implements it with bollard against the local engine;
//! [`fake::FakeRuntime`] implements it in memory for tests that need no daemon. A second runtime
//! (Swarm) goes beside them.
//!
//! Invariants every implementation keeps:
//! - Every object carries the labels of [`labels`] naming its controller and purpose, so the actual
//!   state can always be read back ([`ContainerRuntime::list`] returns only this controller's).
//! - Removing something already gone succeeds; so does stopping something already stopped.
//! - [`ContainerRuntime::wait`] returns only once the container has stopped or is gone, whatever
//!   happens to the connection to the runtime meanwhile.
//!
//! Uses: nothing else in the controller (it is the bottom layer, beside `store/`).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use time::OffsetDateTime;

use crate::network::addresses::Ipv4Net;

mod docker;
pub mod fake;
pub mod firewall;
pub mod labels;
pub mod platform;
pub mod stack;

pub use docker::DockerRuntime;
pub use firewall::HostAccess;
pub use labels::{Kind, Labels};

/// Ends `stream` with [`RuntimeError::TooLarge`] once it has given more than `max_bytes`, and
/// after its first error.
pub(crate) fn bounded(
    stream: BoxStream<'static, Result<Bytes>>,
    what: String,
    max_bytes: u64,
) -> BoxStream<'static, Result<Bytes>> {
    use futures_util::StreamExt;
    futures_util::stream::unfold((stream, 0u64, false), move |(mut stream, seen, ended)| {
        let what = what.clone();
        async move {
            if ended {
                return None;
            }
            let item = match stream.next().await? {
                Ok(chunk) if seen + chunk.len() as u64 > max_bytes => Err(RuntimeError::TooLarge {
                    what,
                    limit: max_bytes,
                }),
                other => other,
            };
            let seen = seen + item.as_ref().map_or(0, |c| c.len() as u64);
            let ended = item.is_err();
            Some((item, (stream, seen, ended)))
        }
    })
    .boxed()
}

/// What can go wrong talking to a runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime answered with an error (Docker's message, with its status).
    #[error("{0}")]
    Api(String),
    /// The runtime could not be reached, or the connection broke.
    #[error("cannot reach the container runtime: {0}")]
    Unreachable(String),
    /// A file moved in or out exceeded its bound.
    #[error("{what} is larger than {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// How a container is attached to a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Networking {
    /// No network at all (staging).
    Disabled,
    /// Only `network`, at the address the controller allocated.
    Fixed { network: String, ip: Ipv4Addr },
}

/// A filesystem mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// A host folder, read-only.
    BindReadOnly { source: String, target: String },
    /// A host folder, writable (a staging's `/tmp/out`, read by the controller as untrusted).
    Bind { source: String, target: String },
    /// A named volume, read-write.
    Volume { name: String, target: String },
}

/// Everything a container is made from. Resource and security settings are the platform's:
/// every container runs as `user`, with all capabilities dropped, `no-new-privileges`, a memory
/// limit (without swap) and a pids limit, and its logs rotated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub working_dir: String,
    pub labels: Labels,
    pub memory_mb: u64,
    pub pids_limit: i64,
    pub networking: Networking,
    pub mounts: Vec<Mount>,
    /// Publish the container's port 8080 on a loopback port of the host (for debugging).
    pub publish_8080: bool,
    /// An init process as PID 1, so SIGTERM reaches apps that do not handle it themselves.
    pub init: bool,
    /// Seconds between SIGTERM and SIGKILL when the container is stopped.
    pub stop_timeout: Option<Duration>,
    /// Relative CPU weight under contention (Docker's default is 1024).
    pub cpu_shares: Option<i64>,
    /// A hard CPU cap, in billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// Keep stdin open for one writer ([`ContainerRuntime::send_stdin`]): a staging
    /// container's command reads its input there.
    pub open_stdin: bool,
}

/// A container this controller made, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    pub id: String,
    pub labels: Labels,
    pub running: bool,
    /// Creation time, seconds since the epoch.
    pub created: i64,
}

/// One container's state, as an inspect shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerInfo {
    pub running: bool,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub started_at: Option<OffsetDateTime>,
    /// Its IPv4 address on each network it is attached to.
    pub addresses: HashMap<String, Ipv4Addr>,
    /// The loopback host port its 8080 is published on.
    pub host_port: Option<u16>,
}

impl ContainerInfo {
    /// Its address on `network`, else on whatever network it is on (an instance an older Pier
    /// started on Docker's default bridge).
    pub fn address_on(&self, network: &str) -> Option<Ipv4Addr> {
        self.addresses.get(network).copied()
    }

    pub fn any_address(&self) -> Option<Ipv4Addr> {
        let mut all: Vec<_> = self.addresses.iter().collect();
        all.sort();
        all.first().map(|(_, ip)| **ip)
    }
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit status; `None` when the container vanished (removed behind the platform's back).
    pub code: Option<i64>,
    pub oom_killed: bool,
}

impl Exit {
    /// Why an instance stopped, as events and logs say it.
    pub fn describe(&self) -> String {
        match (self.code, self.oom_killed) {
            (_, true) => "out of memory: the instance was OOM-killed".to_string(),
            (None, _) => "the container was removed".to_string(),
            (Some(c), _) => format!("exited with status {c}"),
        }
    }
}

/// Which of a container's streams a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

/// A piece of a container's output, as the runtime delivers it (not split into lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    pub stream: Stream,
    pub bytes: Bytes,
}

/// Which output to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputOptions {
    /// Keep the stream open for new output until the container ends.
    pub follow: bool,
    /// Prefix every entry with the RFC 3339 time it was written, and a space.
    pub timestamps: bool,
    /// Only output written at or after this time (seconds since the epoch).
    pub since: Option<i64>,
}

/// One reading of a container's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// CPU time the container used so far, in nanoseconds.
    pub cpu_total_ns: u64,
    /// CPU time the whole machine used so far, in nanoseconds (for the share).
    pub system_ns: u64,
    pub online_cpus: u64,
    /// Memory in use, page cache not counted.
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
}

impl Sample {
    /// Percent of one core used between `earlier` and this sample.
    pub fn cpu_percent_since(&self, earlier: &Sample) -> f64 {
        let cpu = self.cpu_total_ns.saturating_sub(earlier.cpu_total_ns) as f64;
        let system = self.system_ns.saturating_sub(earlier.system_ns) as f64;
        if system <= 0.0 {
            return 0.0;
        }
        cpu / system * self.online_cpus.max(1) as f64 * 100.0
    }
}

/// A network this controller owns, as an inspect shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    pub name: String,
    pub labels: Labels,
    pub subnets: Vec<Ipv4Net>,
}

/// A bridge network with a subnet set by hand (so containers can have fixed addresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    pub name: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub labels: Labels,
}

/// An image this controller made, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    /// `repo:tag` names.
    pub tags: Vec<String>,
    pub labels: Labels,
}

/// An image made of a local base image plus one layer given as a tar (its paths relative to `/`),
/// with no container and no diff: the layer is handed to the engine as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerImageSpec {
    /// The local image it extends (nothing is pulled).
    pub base: String,
    /// The layer: an uncompressed tar.
    pub layer: std::path::PathBuf,
    /// `sha256:<hex>` of the layer file.
    pub diff_id: String,
    pub repo: String,
    pub tag: String,
    pub labels: Labels,
    pub user: String,
    pub working_dir: String,
}

/// An image imported from a root filesystem tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSpec {
    pub repo: String,
    pub tag: String,
    /// Dockerfile instructions applied to the image (`ENV ...`, `USER ...`, `WORKDIR ...`).
    pub changes: Vec<String>,
}

/// What the controller needs from a container runtime (see the module doc).
#[async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Every container labelled with this controller's id, running or not.
    async fn list(&self) -> Result<Vec<Managed>>;
    /// Creates (does not start) a container; returns its id.
    async fn create(&self, spec: &ContainerSpec) -> Result<String>;
    /// Extracts a tar file (plain or gzipped) into the container at `dest`.
    async fn upload(&self, id: &str, dest: &str, tar: &Path) -> Result<()>;
    /// `path` in the container as a tar stream; it ends with [`RuntimeError::TooLarge`] past
    /// `max_bytes`.
    fn download(&self, id: &str, path: &str, max_bytes: u64) -> BoxStream<'static, Result<Bytes>>;
    async fn start(&self, id: &str) -> Result<()>;
    /// Streams the file `input` to the running container's stdin (made with `open_stdin`) and
    /// closes it.
    async fn send_stdin(&self, id: &str, input: &Path) -> Result<()>;
    /// SIGTERM, then SIGKILL after `grace`; a container already stopped or gone is fine.
    async fn stop(&self, id: &str, grace: Duration) -> Result<()>;
    /// Removes the container (stopping it first) and its anonymous volumes; gone is fine.
    async fn remove(&self, id: &str) -> Result<()>;
    /// `None` when there is no such container.
    async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>>;
    /// Waits until the container stops (or is gone) and says how it ended.
    async fn wait(&self, id: &str) -> Exit;
    /// The container's output, from its first line (or `since`).
    fn output(&self, id: &str, opts: OutputOptions) -> BoxStream<'static, Result<OutputChunk>>;
    /// The last `n` lines the container printed, stdout and stderr interleaved.
    async fn tail(&self, id: &str, n: usize) -> Vec<String>;
    /// The container's counters now, read once (no waiting for a second reading); `None` when
    /// the container is gone or the runtime cannot say.
    async fn sample(&self, id: &str) -> Option<Sample>;
    /// Bytes the container wrote to its own filesystem layer (costly: the runtime walks it).
    async fn disk_usage(&self, id: &str) -> Option<u64>;
    /// One item whenever one of this controller's containers starts, dies, is OOM-killed or is
    /// destroyed. Ends (or errs) when the connection to the runtime breaks.
    fn events(&self) -> BoxStream<'static, Result<()>>;
    async fn create_volume(&self, name: &str, labels: &Labels) -> Result<()>;
    async fn remove_volume(&self, name: &str) -> Result<()>;
    /// `None` when there is no network with exactly that name.
    async fn inspect_network(&self, name: &str) -> Result<Option<NetworkInfo>>;
    /// The IPv4 subnets of every network the runtime has (this controller's or not).
    async fn network_subnets(&self) -> Result<Vec<Ipv4Net>>;
    async fn create_network(&self, spec: &NetworkSpec) -> Result<()>;
    /// This controller's networks (labelled with its id).
    async fn list_networks(&self) -> Result<Vec<NetworkInfo>>;
    /// Removes the network and the firewall rules [`ContainerRuntime::isolate`] put on it; gone
    /// is fine. Refused (an error) while a container is attached to it.
    async fn remove_network(&self, name: &str) -> Result<()>;
    /// Whether containers on `network` may reach the host's own addresses and link-local ones
    /// (see [`firewall`]).
    async fn isolate(&self, network: &str, access: HostAccess) -> Result<()>;
    async fn image_exists(&self, image: &str) -> Result<bool>;
    /// Makes `repo:tag` from a local base image plus one layer (`docker load` of an image whose
    /// base layers the engine already has).
    async fn add_layer(&self, spec: &LayerImageSpec) -> Result<()>;
    /// Images labelled with this controller's id.
    async fn list_images(&self) -> Result<Vec<ImageInfo>>;
    /// Removes an image by name or id, and its layers no other image uses; gone is fine.
    async fn remove_image(&self, image: &str) -> Result<()>;
    /// Imports a root filesystem tar as an image.
    async fn import_image(&self, rootfs: &Path, spec: &ImportSpec) -> Result<()>;
    /// Gives the local image `image` the further name `repo:tag` (no copy).
    async fn tag_image(&self, image: &str, repo: &str, tag: &str) -> Result<()>;
    /// Pushes the local image `repo:tag` to the registry its repository names
    /// (`HOST:PORT/...`), without credentials.
    async fn push_image(&self, repo: &str, tag: &str) -> Result<()>;
}

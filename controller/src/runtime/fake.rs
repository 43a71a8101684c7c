//! An in-memory [`ContainerRuntime`] for tests that need no Docker daemon.
//!
//! Containers are records: `create` stores the spec, `start` marks it running, and the test plays
//! the container's part: [`FakeRuntime::exit`] ends it with a status, [`FakeRuntime::print`] gives
//! it output, [`FakeRuntime::vanish`] removes it behind the platform's back, and
//! [`FakeRuntime::fail_next`] makes the next call of an operation fail as a broken daemon would.
//! [`FakeRuntime::on_start`] scripts what a container of one kind does when started (a staging
//! that prints lines, leaves files for `download` and exits).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use time::OffsetDateTime;
use tokio::sync::{broadcast, watch};

use super::{
    ContainerInfo, ContainerRuntime, ContainerSpec, Exit, ImportSpec, Kind, Labels, Managed,
    NetworkInfo, NetworkSpec, Networking, OutputChunk, OutputOptions, Result, RuntimeError, Sample,
    Stream,
};
use crate::network::addresses::Ipv4Net;

/// Operations whose next call can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    List,
    Create,
    Upload,
    Start,
    Stop,
    Remove,
    Inspect,
    CreateVolume,
    RemoveVolume,
    CreateNetwork,
    Push,
}

/// What a scripted container does when it starts.
#[derive(Debug, Clone, Default)]
pub struct Script {
    pub output: Vec<(Stream, String)>,
    /// Files `download` finds, by path inside the container (e.g. `/tmp/out/droplet.tgz`).
    pub files: Vec<(String, Vec<u8>)>,
    /// Exit at once with this status; `None` keeps it running.
    pub exit: Option<i64>,
}

type Scripter = Arc<dyn Fn(&ContainerSpec) -> Script + Send + Sync>;

struct Container {
    spec: ContainerSpec,
    running: bool,
    exit: Option<Exit>,
    started_at: Option<OffsetDateTime>,
    created: i64,
    output: Vec<(OffsetDateTime, OutputChunk)>,
    files: Vec<(String, Vec<u8>)>,
    uploads: Vec<(String, usize)>,
    /// Bumped on every change a waiter or an output reader may care about.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    containers: BTreeMap<String, Container>,
    removed: Vec<String>,
    volumes: BTreeMap<String, Labels>,
    networks: BTreeMap<String, NetworkInfo>,
    images: Vec<String>,
    /// Images made by `commit`: name → labels.
    committed: BTreeMap<String, Labels>,
    failures: HashMap<Op, u32>,
    /// Images pushed (`repo:tag`), in order.
    pushed: Vec<String>,
    /// Further names of images made by `commit` (`tag_image`): name → its other names.
    aliases: BTreeMap<String, Vec<String>>,
    scripts: HashMap<&'static str, Scripter>,
    samples: HashMap<String, Sample>,
    isolation: HashMap<String, super::HostAccess>,
    /// Starts of containers of this kind wait until the gate is opened (`hold_starts`).
    held: Option<(Kind, Arc<tokio::sync::Semaphore>)>,
}

/// See the module doc.
pub struct FakeRuntime {
    controller_id: String,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<()>,
}

impl FakeRuntime {
    pub fn new(controller_id: &str) -> Arc<FakeRuntime> {
        Arc::new(FakeRuntime {
            controller_id: controller_id.to_string(),
            state: Arc::new(Mutex::new(State {
                images: vec![crate::runtime::stack::DEFAULT_STACK_IMAGE.to_string()],
                ..State::default()
            })),
            events: broadcast::channel(1024).0,
        })
    }

    /// Makes every start of a container of `kind` wait (the container exists, created, not
    /// running) until the returned gate gets a permit per start to let through.
    pub fn hold_starts(&self, kind: Kind) -> Arc<tokio::sync::Semaphore> {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        self.lock().held = Some((kind, gate.clone()));
        gate
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, op: Op) -> Result<()> {
        let mut s = self.lock();
        match s.failures.get_mut(&op) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(RuntimeError::Unreachable(format!(
                    "fake runtime: {op:?} failed as asked"
                )))
            }
            _ => Ok(()),
        }
    }

    /// The next `times` calls of `op` fail as if the daemon were unreachable.
    pub fn fail_next(&self, op: Op, times: u32) {
        self.lock().failures.insert(op, times);
    }

    /// What containers of `kind` do when started.
    pub fn on_start(
        &self,
        kind: Kind,
        f: impl Fn(&ContainerSpec) -> Script + Send + Sync + 'static,
    ) {
        self.lock().scripts.insert(kind.as_str(), Arc::new(f));
    }

    /// Every container that exists: (id, spec, running).
    pub fn containers(&self) -> Vec<(String, ContainerSpec, bool)> {
        self.lock()
            .containers
            .iter()
            .map(|(id, c)| (id.clone(), c.spec.clone(), c.running))
            .collect()
    }

    /// Running containers of `kind`.
    pub fn running(&self, kind: Kind) -> Vec<(String, ContainerSpec)> {
        self.containers()
            .into_iter()
            .filter(|(_, s, r)| *r && s.labels.kind() == Some(kind))
            .map(|(id, s, _)| (id, s))
            .collect()
    }

    /// Ids of containers removed so far, in order.
    pub fn removed(&self) -> Vec<String> {
        self.lock().removed.clone()
    }

    pub fn volumes(&self) -> Vec<String> {
        self.lock().volumes.keys().cloned().collect()
    }

    pub fn uploads(&self, id: &str) -> Vec<(String, usize)> {
        self.lock()
            .containers
            .get(id)
            .map(|c| c.uploads.clone())
            .unwrap_or_default()
    }

    /// Ends a running container with `code` (and `oom`), as if its process exited.
    pub fn exit(&self, id: &str, code: i64, oom: bool) {
        let mut s = self.lock();
        if let Some(c) = s.containers.get_mut(id) {
            if c.running {
                c.running = false;
                c.exit = Some(Exit {
                    code: Some(code),
                    oom_killed: oom,
                });
                c.changed.send_modify(|v| *v += 1);
            }
        }
        drop(s);
        let _ = self.events.send(());
    }

    /// Removes a container behind the platform's back.
    pub fn vanish(&self, id: &str) {
        let gone = self.lock().containers.remove(id);
        if let Some(c) = gone {
            c.changed.send_modify(|v| *v += 1);
        }
        let _ = self.events.send(());
    }

    /// Adds output to a container.
    pub fn print(&self, id: &str, stream: Stream, text: &str) {
        let mut s = self.lock();
        if let Some(c) = s.containers.get_mut(id) {
            c.output.push((
                OffsetDateTime::now_utc(),
                OutputChunk {
                    stream,
                    bytes: Bytes::from(text.to_string()),
                },
            ));
            c.changed.send_modify(|v| *v += 1);
        }
    }

    /// Images made by `commit`, by name.
    pub fn app_images(&self) -> Vec<String> {
        self.lock().committed.keys().cloned().collect()
    }

    /// Images pushed to a registry (`repo:tag`), in order.
    pub fn pushed(&self) -> Vec<String> {
        self.lock().pushed.clone()
    }

    /// Every image name the fake holds (the stack, app images, further tags).
    pub fn image_names(&self) -> Vec<String> {
        self.lock().images.clone()
    }

    /// Removes an image behind the platform's back.
    pub fn forget_image(&self, image: &str) {
        let mut s = self.lock();
        s.images.retain(|i| i != image);
        s.committed.remove(image);
    }

    /// How `isolate` left a network.
    /// A network as the fake holds it.
    pub fn network(&self, name: &str) -> Option<NetworkInfo> {
        self.lock().networks.get(name).cloned()
    }

    pub fn isolation(&self, network: &str) -> Option<super::HostAccess> {
        self.lock().isolation.get(network).copied()
    }

    /// What `sample` answers for a container.
    pub fn set_sample(&self, id: &str, sample: Sample) {
        self.lock().samples.insert(id.to_string(), sample);
    }

    fn run_script(&self, id: &str) {
        let (script, kind) = {
            let s = self.lock();
            let Some(c) = s.containers.get(id) else {
                return;
            };
            // A warm staging container runs the staging's script once it gets its go.
            let kind = match c.spec.labels.kind() {
                Some(Kind::WarmStaging) => Kind::Staging.as_str(),
                k => k.map(Kind::as_str).unwrap_or(""),
            };
            (s.scripts.get(kind).cloned().map(|f| f(&c.spec)), kind)
        };
        let Some(script) = script else { return };
        tracing::debug!(container = id, kind, "fake container runs its script");
        for (stream, text) in &script.output {
            self.print(id, *stream, text);
        }
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.files = script.files.clone();
            write_to_binds(&c.spec.mounts, &script.files);
        }
        if let Some(code) = script.exit {
            self.exit(id, code, false);
        }
    }
}

/// Writes the script's files that fall in a writable bind mount to its host folder, as the
/// container's process would.
fn write_to_binds(mounts: &[super::Mount], files: &[(String, Vec<u8>)]) {
    for m in mounts {
        let super::Mount::Bind { source, target } = m else {
            continue;
        };
        for (path, data) in files {
            let Some(rest) = path
                .strip_prefix(target.as_str())
                .and_then(|r| r.strip_prefix('/'))
            else {
                continue;
            };
            let host = std::path::Path::new(source).join(rest);
            if let Some(dir) = host.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::write(host, data);
        }
    }
}

/// A tar of the files under `path`, as Docker's archive download gives it (entries named from the
/// last component of `path`).
fn tar_of(path: &str, files: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let base = path.trim_end_matches('/');
    let top = base.rsplit('/').next().unwrap_or(base);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, top, std::io::empty())?;
    for (p, data) in files {
        let Some(rest) = p.strip_prefix(base).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, format!("{top}/{rest}"), data.as_slice())?;
    }
    Ok(b.into_inner()?)
}

fn not_found(id: &str) -> RuntimeError {
    RuntimeError::Api(format!("No such container: {id} (status 404)"))
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn list(&self) -> Result<Vec<Managed>> {
        self.check(Op::List)?;
        Ok(self
            .lock()
            .containers
            .iter()
            .filter(|(_, c)| c.spec.labels.controller() == Some(self.controller_id.as_str()))
            .map(|(id, c)| Managed {
                id: id.clone(),
                labels: c.spec.labels.clone(),
                running: c.running,
                created: c.created,
            })
            .collect())
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        self.check(Op::Create)?;
        let mut s = self.lock();
        if s.containers.values().any(|c| c.spec.name == spec.name) {
            return Err(RuntimeError::Api(format!(
                "Conflict. The container name {:?} is already in use (status 409)",
                spec.name
            )));
        }
        if !s.images.contains(&spec.image) {
            return Err(RuntimeError::Api(format!(
                "No such image: {} (status 404)",
                spec.image
            )));
        }
        s.next_id += 1;
        let id = format!("fake{:012}", s.next_id);
        let created = s.next_id as i64;
        s.containers.insert(
            id.clone(),
            Container {
                spec: spec.clone(),
                running: false,
                exit: None,
                started_at: None,
                created,
                output: Vec::new(),
                files: Vec::new(),
                uploads: Vec::new(),
                changed: watch::channel(0).0,
            },
        );
        Ok(id)
    }

    async fn upload(&self, id: &str, dest: &str, tar: &Path) -> Result<()> {
        self.check(Op::Upload)?;
        let len = std::fs::metadata(tar)?.len() as usize;
        let mut s = self.lock();
        let c = s.containers.get_mut(id).ok_or_else(|| not_found(id))?;
        c.uploads.push((dest.to_string(), len));
        Ok(())
    }

    fn download(&self, id: &str, path: &str, max_bytes: u64) -> BoxStream<'static, Result<Bytes>> {
        let files = self.lock().containers.get(id).map(|c| c.files.clone());
        let tar = match files {
            None => Err(not_found(id)),
            Some(files) => tar_of(path, &files),
        };
        let chunks: Vec<Result<Bytes>> = match tar {
            Err(e) => vec![Err(e)],
            Ok(t) => t
                .chunks(64 * 1024)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect(),
        };
        super::bounded(
            futures_util::stream::iter(chunks).boxed(),
            format!("{path} in the container"),
            max_bytes,
        )
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.check(Op::Start)?;
        let gate = {
            let s = self.lock();
            let kind = s.containers.get(id).and_then(|c| c.spec.labels.kind());
            s.held
                .as_ref()
                .filter(|(k, _)| Some(*k) == kind)
                .map(|(_, g)| g.clone())
        };
        if let Some(gate) = gate {
            gate.acquire()
                .await
                .map_err(|e| RuntimeError::Api(e.to_string()))?
                .forget();
        }
        {
            let mut s = self.lock();
            let c = s.containers.get_mut(id).ok_or_else(|| not_found(id))?;
            c.running = true;
            c.exit = None;
            c.started_at = Some(OffsetDateTime::now_utc());
            c.changed.send_modify(|v| *v += 1);
        }
        let _ = self.events.send(());
        // A container waiting on stdin runs its script when it gets it (`send_stdin`).
        let waits = self
            .lock()
            .containers
            .get(id)
            .is_some_and(|c| c.spec.open_stdin);
        if !waits {
            self.run_script(id);
        }
        Ok(())
    }

    async fn send_stdin(&self, id: &str, input: &Path) -> Result<()> {
        self.check(Op::Start)?;
        std::fs::metadata(input)?;
        {
            let s = self.lock();
            let c = s.containers.get(id).ok_or_else(|| not_found(id))?;
            if !c.running || !c.spec.open_stdin {
                return Err(RuntimeError::Api(format!(
                    "container {id} is not running with stdin open (status 409)"
                )));
            }
        }
        self.run_script(id);
        Ok(())
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<()> {
        self.check(Op::Stop)?;
        let running = self.lock().containers.get(id).is_some_and(|c| c.running);
        if running {
            // SIGTERM: the fake app exits 143 at once.
            self.exit(id, 143, false);
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.check(Op::Remove)?;
        let gone = {
            let mut s = self.lock();
            let gone = s.containers.remove(id);
            if gone.is_some() {
                s.removed.push(id.to_string());
            }
            gone
        };
        if let Some(c) = gone {
            c.changed.send_modify(|v| *v += 1);
            let _ = self.events.send(());
        }
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>> {
        self.check(Op::Inspect)?;
        let s = self.lock();
        let Some(c) = s.containers.get(id) else {
            return Ok(None);
        };
        let mut addresses = HashMap::new();
        if let (Networking::Fixed { network, ip }, true) = (&c.spec.networking, c.running) {
            addresses.insert(network.clone(), *ip);
        }
        Ok(Some(ContainerInfo {
            running: c.running,
            exit_code: c.exit.and_then(|e| e.code),
            oom_killed: c.exit.is_some_and(|e| e.oom_killed),
            started_at: c.started_at,
            addresses,
            host_port: c.spec.publish_8080.then_some(32768),
        }))
    }

    async fn wait(&self, id: &str) -> Exit {
        let mut rx = {
            let s = self.lock();
            match s.containers.get(id) {
                Some(c) => c.changed.subscribe(),
                None => {
                    return Exit {
                        code: None,
                        oom_killed: false,
                    }
                }
            }
        };
        loop {
            {
                let s = self.lock();
                match s.containers.get(id) {
                    None => {
                        return Exit {
                            code: None,
                            oom_killed: false,
                        }
                    }
                    Some(c) if !c.running => {
                        return c.exit.unwrap_or(Exit {
                            code: Some(0),
                            oom_killed: false,
                        })
                    }
                    Some(_) => {}
                }
            }
            if rx.changed().await.is_err() {
                return Exit {
                    code: None,
                    oom_killed: false,
                };
            }
        }
    }

    fn output(&self, id: &str, opts: OutputOptions) -> BoxStream<'static, Result<OutputChunk>> {
        let rx = self
            .lock()
            .containers
            .get(id)
            .map(|c| c.changed.subscribe());
        let Some(rx) = rx else {
            return futures_util::stream::iter([Err(not_found(id))]).boxed();
        };
        let reader = OutputReader {
            state: self.state.clone(),
            id: id.to_string(),
            opts,
            sent: 0,
            rx,
        };
        futures_util::stream::unfold(reader, |mut r| async move {
            loop {
                let (next, running) = r.next_chunk();
                if let Some(chunk) = next {
                    r.sent += 1;
                    return Some((Ok(chunk), r));
                }
                if !r.opts.follow || !running {
                    return None;
                }
                if r.rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .boxed()
    }

    async fn tail(&self, id: &str, n: usize) -> Vec<String> {
        let s = self.lock();
        let Some(c) = s.containers.get(id) else {
            return Vec::new();
        };
        let text: String = c
            .output
            .iter()
            .map(|(_, o)| String::from_utf8_lossy(&o.bytes).into_owned())
            .collect();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let skip = lines.len().saturating_sub(n);
        lines.into_iter().skip(skip).collect()
    }

    async fn sample(&self, id: &str) -> Option<Sample> {
        let s = self.lock();
        let c = s.containers.get(id).filter(|c| c.running)?;
        Some(s.samples.get(id).copied().unwrap_or(Sample {
            memory_limit_bytes: c.spec.memory_mb * 1024 * 1024,
            online_cpus: 1,
            ..Sample::default()
        }))
    }

    async fn disk_usage(&self, id: &str) -> Option<u64> {
        self.lock().containers.get(id).map(|_| 4096)
    }

    fn events(&self) -> BoxStream<'static, Result<()>> {
        let rx = self.events.subscribe();
        futures_util::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(()) => return Some((Ok(()), rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }

    async fn create_volume(&self, name: &str, labels: &Labels) -> Result<()> {
        self.check(Op::CreateVolume)?;
        self.lock()
            .volumes
            .entry(name.to_string())
            .or_insert_with(|| labels.clone());
        Ok(())
    }

    async fn remove_volume(&self, name: &str) -> Result<()> {
        self.check(Op::RemoveVolume)?;
        self.lock().volumes.remove(name);
        Ok(())
    }

    async fn inspect_network(&self, name: &str) -> Result<Option<NetworkInfo>> {
        Ok(self.lock().networks.get(name).cloned())
    }

    async fn network_subnets(&self) -> Result<Vec<Ipv4Net>> {
        Ok(self
            .lock()
            .networks
            .values()
            .flat_map(|n| n.subnets.clone())
            .collect())
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<()> {
        self.check(Op::CreateNetwork)?;
        let mut s = self.lock();
        if s.networks
            .values()
            .any(|n| n.subnets.iter().any(|x| x.overlaps(&spec.subnet)))
        {
            return Err(RuntimeError::Api(format!(
                "Pool overlaps with other one on this address space ({}) (status 403)",
                spec.subnet
            )));
        }
        s.networks.insert(
            spec.name.clone(),
            NetworkInfo {
                name: spec.name.clone(),
                labels: spec.labels.clone(),
                subnets: vec![spec.subnet],
            },
        );
        Ok(())
    }

    async fn list_networks(&self) -> Result<Vec<NetworkInfo>> {
        let id = self.controller_id.as_str();
        Ok(self
            .lock()
            .networks
            .values()
            .filter(|n| n.labels.controller() == Some(id))
            .cloned()
            .collect())
    }

    async fn remove_network(&self, name: &str) -> Result<()> {
        let mut s = self.lock();
        let attached = s.containers.values().any(
            |c| matches!(&c.spec.networking, Networking::Fixed { network, .. } if network == name),
        );
        if attached {
            return Err(RuntimeError::Api(format!(
                "error while removing network: network {name} has active endpoints (status 403)"
            )));
        }
        s.networks.remove(name);
        s.isolation.remove(name);
        Ok(())
    }

    async fn isolate(&self, network: &str, access: super::HostAccess) -> Result<()> {
        self.lock().isolation.insert(network.to_string(), access);
        Ok(())
    }

    async fn image_exists(&self, image: &str) -> Result<bool> {
        Ok(self.lock().images.iter().any(|i| i == image))
    }

    async fn add_layer(&self, spec: &super::LayerImageSpec) -> Result<()> {
        let mut s = self.lock();
        if !s.images.contains(&spec.base) {
            return Err(not_found(&spec.base));
        }
        if !spec.layer.is_file() {
            return Err(RuntimeError::Api(format!(
                "no layer at {}",
                spec.layer.display()
            )));
        }
        let name = format!("{}:{}", spec.repo, spec.tag);
        s.images.push(name.clone());
        s.committed.insert(name, spec.labels.clone());
        Ok(())
    }

    async fn list_images(&self) -> Result<Vec<super::ImageInfo>> {
        let s = self.lock();
        Ok(s.committed
            .iter()
            .filter(|(_, l)| l.controller() == Some(self.controller_id.as_str()))
            .map(|(name, labels)| super::ImageInfo {
                id: name.clone(),
                tags: std::iter::once(name.clone())
                    .chain(s.aliases.get(name).into_iter().flatten().cloned())
                    .collect(),
                labels: labels.clone(),
            })
            .collect())
    }

    async fn remove_image(&self, image: &str) -> Result<()> {
        let mut s = self.lock();
        if s.containers.values().any(|c| c.spec.image == image) {
            return Err(RuntimeError::Api(format!(
                "conflict: unable to remove {image}: image is being used by a container (status 409)"
            )));
        }
        // As Docker: by id, an image with several names is refused; by one of them, only that
        // name goes.
        if s.aliases.get(image).is_some_and(|a| !a.is_empty()) {
            return Err(RuntimeError::Api(format!(
                "conflict: unable to delete {image} (must be forced) - image is referenced in \
                 multiple repositories (status 409)"
            )));
        }
        for a in s.aliases.values_mut() {
            a.retain(|i| i != image);
        }
        s.aliases.remove(image);
        s.images.retain(|i| i != image);
        s.committed.remove(image);
        Ok(())
    }

    async fn import_image(&self, _rootfs: &Path, spec: &ImportSpec) -> Result<()> {
        self.lock()
            .images
            .push(format!("{}:{}", spec.repo, spec.tag));
        Ok(())
    }

    async fn tag_image(&self, image: &str, repo: &str, tag: &str) -> Result<()> {
        let mut s = self.lock();
        if !s.images.iter().any(|i| i == image) {
            return Err(not_found(image));
        }
        let alias = format!("{repo}:{tag}");
        if s.committed.contains_key(image) {
            s.aliases
                .entry(image.to_string())
                .or_default()
                .push(alias.clone());
        }
        s.images.push(alias);
        Ok(())
    }

    async fn push_image(&self, repo: &str, tag: &str) -> Result<()> {
        self.check(Op::Push)?;
        let name = format!("{repo}:{tag}");
        let mut s = self.lock();
        if !s.images.contains(&name) {
            return Err(not_found(&name));
        }
        s.pushed.push(name);
        Ok(())
    }
}

struct OutputReader {
    state: Arc<Mutex<State>>,
    id: String,
    opts: OutputOptions,
    sent: usize,
    rx: watch::Receiver<u64>,
}

impl OutputReader {
    /// The next chunk not yet sent, and whether the container still runs.
    fn next_chunk(&mut self) -> (Option<OutputChunk>, bool) {
        self.rx.borrow_and_update();
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = s.containers.get(&self.id) else {
            return (None, false);
        };
        let since = self.opts.since.unwrap_or(i64::MIN);
        let chunk = c
            .output
            .iter()
            .filter(|(t, _)| t.unix_timestamp() >= since)
            .nth(self.sent)
            .map(|(t, o)| {
                if !self.opts.timestamps {
                    return o.clone();
                }
                let stamp = t
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                let mut bytes = format!("{stamp} ").into_bytes();
                bytes.extend_from_slice(&o.bytes);
                OutputChunk {
                    stream: o.stream,
                    bytes: Bytes::from(bytes),
                }
            });
        (chunk, c.running)
    }
}

//! Making one instance: allocate its address, create its container (the stack image with the
//! droplet uploaded into it), start it, follow its output, and wait for its health check.
//! Anything that fails before the instance is healthy is removed again, and its address freed at
//! once: no router ever heard of it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use pier_api::{InstanceState, LogSource};
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::desired::{InstanceSpec, SlotKey};
use super::health;
use super::registry::Live;
use super::supervisor::{Crashes, Running};
use super::Instances;
use crate::error::{Error, Result};
use crate::runtime::labels::keys;
use crate::runtime::{ContainerSpec, Kind, Labels, Networking};

/// How a start ended.
pub(super) enum StartOutcome {
    Started(Running),
    Failed {
        reason: String,
        last_output: Vec<String>,
    },
    /// No address may be handed out now; nothing was created. Tried again later.
    NoAddress(String),
    Cancelled,
}

/// One start of an instance for a slot.
pub(super) struct Launch<'a> {
    pub(super) inst: &'a Arc<Instances>,
    pub(super) key: &'a SlotKey,
    pub(super) spec: &'a InstanceSpec,
    pub(super) hash: &'a str,
    /// Started beside a running instance (a replacement), not in its place.
    pub(super) beside: bool,
    pub(super) crashes: &'a Crashes,
    pub(super) cancel: &'a CancellationToken,
    pub(super) shutdown: &'a CancellationToken,
}

const LAUNCH: &str = r#"cd /home/vcap/app || exit 1
if [ -d .profile.d ]; then for f in .profile.d/*.sh; do [ -r "$f" ] && . "$f"; done; fi
if [ -r .profile ]; then . ./.profile; fi
exec bash -c "$PIER_START_COMMAND""#;

/// An instance's CPU weight: in proportion to its memory, as on Cloud Foundry (1 per MiB, so a
/// 1G instance weighs four times a 256M one, and 1024, Docker's default, at 1G).
pub(super) fn cpu_shares(memory_mb: u64) -> i64 {
    memory_mb.clamp(2, 262_144) as i64
}

/// The environment of an instance: the user's, then the platform's (which the user's cannot
/// override).
/// Where an instance runs, for `VCAP_APPLICATION`: its space's and org's names and guids.
#[derive(Debug, Clone, Default)]
pub(super) struct Place {
    pub space_name: String,
    pub org_guid: String,
    pub org_name: String,
}

impl Place {
    /// The space and org of `space_guid` as the store has them (empty names if gone meanwhile).
    pub(super) fn of(store: &crate::store::Store, space_guid: &str) -> Place {
        let space = store.get_space(space_guid).ok().flatten();
        let org = space
            .as_ref()
            .and_then(|s| store.get_org(&s.org_guid).ok().flatten());
        Place {
            space_name: space.map(|s| s.name).unwrap_or_default(),
            org_guid: org.as_ref().map(|o| o.guid.clone()).unwrap_or_default(),
            org_name: org.map(|o| o.name).unwrap_or_default(),
        }
    }
}

pub(super) fn instance_env(spec: &InstanceSpec, instance_id: &str, place: &Place) -> Vec<String> {
    let vcap = serde_json::json!({
        "application_id": spec.app_guid,
        "application_name": spec.app_name,
        "application_uris": spec.uris,
        "application_version": spec.droplet,
        "name": spec.app_name,
        "uris": spec.uris,
        "space_id": spec.space_guid,
        "space_name": place.space_name,
        "organization_id": place.org_guid,
        "organization_name": place.org_name,
        "process_id": format!("{}-{}", spec.app_guid, spec.process),
        "process_type": spec.process.as_str(),
        "instance_index": spec.index,
        "instance_id": instance_id,
        "limits": { "mem": spec.memory_mb, "disk": spec.disk_mb, "fds": 16384 },
    });
    let mut env: BTreeMap<String, String> = spec.env.clone();
    let fixed = [
        ("PORT", "8080".to_string()),
        ("VCAP_APPLICATION", vcap.to_string()),
        (
            "VCAP_SERVICES",
            if spec.vcap_services.is_empty() {
                "{}".to_string()
            } else {
                spec.vcap_services.clone()
            },
        ),
        ("CF_INSTANCE_INDEX", spec.index.to_string()),
        ("CF_INSTANCE_GUID", instance_id.to_string()),
        ("CF_INSTANCE_PORT", "8080".to_string()),
        ("INSTANCE_INDEX", spec.index.to_string()),
        ("INSTANCE_GUID", instance_id.to_string()),
        ("MEMORY_LIMIT", format!("{}m", spec.memory_mb)),
        ("HOME", "/home/vcap/app".to_string()),
        ("USER", "vcap".to_string()),
        ("TMPDIR", "/tmp".to_string()),
        ("PIER_START_COMMAND", spec.command.clone()),
    ];
    for (k, v) in fixed {
        env.insert(k.to_string(), v);
    }
    env.entry("LANG".into()).or_insert_with(|| "C.UTF-8".into());
    env.entry("PATH".into())
        .or_insert_with(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

impl Launch<'_> {
    /// Creates, fills and starts a container for the slot, then waits for its health check.
    pub(super) async fn run(self) -> StartOutcome {
        let instance_id = uuid::Uuid::new_v4().to_string();
        // The app's image: there already (made after staging), or made again from the droplet.
        let image = match self.inst.deps.images.ensure(&self.spec.image_key()).await {
            Ok(name) => name,
            Err(e) => {
                return StartOutcome::Failed {
                    reason: format!("the app's image could not be made: {}", e.to_api().message),
                    last_output: vec![],
                }
            }
        };
        // The space's network (made with the space's first instance), then the address on it:
        // nothing is created unless the controller can hand one out (C4).
        let network = match self
            .inst
            .deps
            .networks
            .for_space(&self.spec.space_guid)
            .await
        {
            Ok(n) => n.name,
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "no instance network for the space"
                );
                return StartOutcome::Failed {
                    reason: format!("the platform could not make the space's network: {e:#}"),
                    last_output: vec![],
                };
            }
        };
        let ip = match self.inst.deps.addresses.allocate(&instance_id, &network) {
            Ok(ip) => ip,
            Err(e) => return StartOutcome::NoAddress(e.to_string()),
        };
        self.show_starting(None);
        self.inst.cell(
            self.key,
            &format!(
                "Creating instance {} ({}) at {ip}",
                self.key.index,
                &instance_id[..8]
            ),
        );
        tracing::info!(app = %self.spec.app_name, process = %self.key.process, index = self.key.index, revision = self.spec.revision, %ip, %network, "creating instance container");
        let mut running = match self.create(&instance_id, (&network, ip), &image).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "could not create an instance container");
                return StartOutcome::Failed {
                    reason: format!(
                        "the platform could not start the container: {}",
                        e.to_api().message
                    ),
                    last_output: vec![],
                };
            }
        };
        tracing::info!(app = %self.spec.app_name, index = self.key.index, container = %running.id, "instance container started; health check next");
        self.show_starting(Some(&running));
        self.inst.cell(
            self.key,
            &format!("Started container for instance {}", self.key.index),
        );
        // Its output, from its first line (Docker keeps it), into the app's log.
        crate::logs::follow_instance(
            self.inst.deps.runtime.clone(),
            self.inst.deps.logs.clone(),
            self.key.app_guid.clone(),
            LogSource::app(&self.key.process, self.key.index),
            running.id.clone(),
            false,
        );
        match self.until_healthy(&running).await {
            Ok(()) => {
                running.since = OffsetDateTime::now_utc();
                running.started = Instant::now();
                StartOutcome::Started(running)
            }
            Err(None) => {
                // Not yet healthy: leave nothing half-started behind.
                self.discard(&running.id, ip, &instance_id).await;
                StartOutcome::Cancelled
            }
            Err(Some(reason)) => {
                let last_output = self.inst.deps.runtime.tail(&running.id, 20).await;
                self.discard(&running.id, ip, &instance_id).await;
                StartOutcome::Failed {
                    reason,
                    last_output,
                }
            }
        }
    }

    /// STARTING in the slot's view (as its replacement when started beside).
    fn show_starting(&self, r: Option<&Running>) {
        let live = Live {
            status: super::supervisor::status(
                self.key,
                InstanceState::Starting,
                r,
                (&self.spec.droplet, self.spec.revision),
                self.crashes,
            ),
            addr: None,
        };
        let beside = self.beside;
        self.inst.registry.set_view(self.key, |v| {
            if beside {
                v.pending = Some(live);
            } else {
                v.current = Some(live);
            }
        });
    }

    fn container_spec(
        &self,
        instance_id: &str,
        (network, ip): (&str, Ipv4Addr),
        image: &str,
    ) -> ContainerSpec {
        let s = &self.inst.deps.settings;
        let spec = self.spec;
        ContainerSpec {
            name: format!(
                "pier-{}-{}-{}-{}",
                spec.app_name,
                spec.process,
                spec.index,
                &instance_id[..8]
            ),
            image: image.to_string(),
            cmd: vec!["bash".into(), "-c".into(), LAUNCH.into()],
            env: instance_env(
                spec,
                instance_id,
                &Place::of(&self.inst.deps.store, &spec.space_guid),
            ),
            user: "vcap".into(),
            working_dir: "/home/vcap/app".into(),
            labels: Labels::new(&s.controller_id, Kind::Instance)
                .with(keys::APP, &spec.app_name)
                .with(keys::APP_GUID, &spec.app_guid)
                .with(keys::PROCESS, &spec.process)
                .with(keys::INDEX, spec.index)
                .with(keys::INSTANCE, instance_id)
                .with(keys::DROPLET, &spec.droplet)
                .with(keys::REVISION, spec.revision)
                .with(keys::SPEC, self.hash),
            memory_mb: spec.memory_mb,
            pids_limit: s.pids_limit,
            networking: Networking::Fixed {
                network: network.to_string(),
                ip,
            },
            mounts: vec![],
            publish_8080: true,
            // tini as PID 1: apps that do not handle SIGTERM themselves still stop on it.
            init: true,
            stop_timeout: Some(s.stop_grace),
            cpu_shares: Some(cpu_shares(spec.memory_mb)),
            nano_cpus: (s.max_cpus > 0.0).then_some((s.max_cpus * 1e9) as i64),
            open_stdin: false,
        }
    }

    /// Creates the container of the app's image and starts it, at exactly the allocated address
    /// on the space's network.
    async fn create(
        &self,
        instance_id: &str,
        (network, ip): (&str, Ipv4Addr),
        image: &str,
    ) -> Result<Running> {
        let inst = self.inst;
        let runtime = &inst.deps.runtime;
        let cspec = self.container_spec(instance_id, (network, ip), image);
        // Owned by its instance id until the runtime says its container id: a reconcile pass in
        // between must not take it for a stray.
        inst.registry.own(instance_id);
        let id = match runtime.create(&cspec).await {
            Ok(id) => id,
            Err(e) => {
                // A failed create may still have made the container; remove it by its name
                // (unique to this instance) before its address is free again.
                self.discard(&cspec.name, ip, instance_id).await;
                inst.registry.disown(instance_id);
                return Err(e.into());
            }
        };
        inst.registry.own(&id);
        inst.registry.disown(instance_id);
        let started = async {
            runtime.start(&id).await?;
            // The runtime must have put it where the controller said; never use another address.
            let info = runtime.inspect(&id).await?;
            let actual = info.as_ref().and_then(|i| i.address_on(network));
            if actual != Some(ip) {
                return Err(Error::Other(format!(
                    "Docker attached the container at {actual:?} on {network}, not at the \
                     allocated address {ip}"
                )));
            }
            Ok::<_, Error>(info.and_then(|i| i.host_port))
        };
        match started.await {
            Ok(host_port) => Ok(Running {
                id,
                instance_id: instance_id.to_string(),
                spec_hash: self.hash.to_string(),
                droplet: self.spec.droplet.clone(),
                revision: self.spec.revision,
                addr: Some(SocketAddr::new(ip.into(), 8080)),
                ip: Some(ip),
                host_port,
                started: Instant::now(),
                since: OffsetDateTime::now_utc(),
            }),
            Err(e) => {
                self.discard(&id, ip, instance_id).await;
                Err(e)
            }
        }
    }

    /// Ok once the health check passes; `Err(None)` when cancelled or shut down meanwhile,
    /// `Err(Some(reason))` when it failed.
    async fn until_healthy(&self, r: &Running) -> std::result::Result<(), Option<String>> {
        let hc = &self.spec.health_check;
        let timeout = Duration::from_secs(u64::from(hc.timeout_secs.clamp(1, 180)));
        let probe = self.inst.deps.probe.as_ref();
        let healthy = async {
            match r.addr {
                Some(addr) => health::wait_healthy(probe, addr, hc, timeout).await,
                None => false,
            }
        };
        // Until it is healthy the instance is in no route table: if it goes, its address is free.
        tokio::select! {
            _ = self.shutdown.cancelled() => Err(None),
            _ = self.cancel.cancelled() => Err(None),
            ok = healthy => if ok {
                Ok(())
            } else {
                Err(Some(format!(
                    "health check ({}) did not pass within {} s",
                    health::describe(hc),
                    timeout.as_secs()
                )))
            },
            exit = self.inst.deps.runtime.wait(&r.id) => Err(Some(match (exit.code, exit.oom_killed) {
                (_, true) => "out of memory during startup: the instance was OOM-killed".to_string(),
                (Some(c), _) => format!("exited with status {c} during startup"),
                (None, _) => "the container was removed during startup".to_string(),
            })),
        }
    }

    /// Removes a container that never served and frees its address.
    async fn discard(&self, container: &str, ip: Ipv4Addr, instance_id: &str) {
        self.inst.discard_unrouted(container, ip, instance_id).await;
        self.inst.registry.disown(container);
    }
}

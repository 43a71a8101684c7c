//! Which network a space's instances attach to ([`Networks`]), making a space's network when its
//! first instance starts and removing it when the space is deleted; and, at start, adopting the
//! networks that exist and removing those of spaces that are gone ([`prepare`]). See the module
//! doc of `network` for the layout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::Context as _;

use super::addresses::{AddressPool, Ipv4Net};
use super::{ensure, ensure_space, space_meta_key, space_network_name, InstanceNetwork};
use crate::runtime::labels::keys;
use crate::runtime::{ContainerRuntime, HostAccess};
use crate::store::tenancy::{DEFAULT_ORG, DEFAULT_SPACE};
use crate::store::Store;

/// The networks found or made at start.
#[derive(Debug, Clone)]
pub struct NetworkSet {
    /// The default space's.
    pub default: InstanceNetwork,
    /// The default space's guid, if the store has that space.
    pub default_space: Option<String>,
    /// Every other space's that exists, by space guid.
    pub spaces: BTreeMap<String, InstanceNetwork>,
}

impl NetworkSet {
    /// Every network with its subnet, for the address pool.
    pub fn subnets(&self) -> Vec<(String, Ipv4Net)> {
        std::iter::once(&self.default)
            .chain(self.spaces.values())
            .map(|n| (n.name.clone(), n.subnet))
            .collect()
    }
}

/// The guid of the default space, if the store has one.
fn default_space(store: &Store) -> anyhow::Result<Option<String>> {
    let Some(org) = store.org_named(DEFAULT_ORG)? else {
        return Ok(None);
    };
    Ok(store.space_named(&org.guid, DEFAULT_SPACE)?.map(|s| s.guid))
}

async fn isolate(
    runtime: &dyn ContainerRuntime,
    network: &InstanceNetwork,
    access: HostAccess,
) -> anyhow::Result<()> {
    runtime
        .isolate(&network.name, access)
        .await
        .with_context(|| {
            format!(
                "cannot keep instances on {} away from the host's addresses (iptables, as root); \
             start with --instance-host-access allow to let them reach it",
                network.name
            )
        })
}

/// At start: the default network and every existing space's network, found or made and kept away
/// from the host; the networks of spaces deleted meanwhile are removed (or left for the next
/// start while a container is still attached).
pub async fn prepare(
    runtime: &dyn ContainerRuntime,
    controller_id: &str,
    wanted: Option<Ipv4Net>,
    access: HostAccess,
    store: &Store,
) -> anyhow::Result<NetworkSet> {
    let default = ensure(runtime, controller_id, wanted, store).await?;
    isolate(runtime, &default, access).await?;
    let mut spaces = BTreeMap::new();
    let listed = runtime
        .list_networks()
        .await
        .context("cannot list the controller's networks")?;
    for n in listed {
        let Some(space) = n.labels.get(keys::SPACE).map(str::to_string) else {
            continue;
        };
        if store.get_space(&space)?.is_none() {
            match runtime.remove_network(&n.name).await {
                Ok(()) => {
                    store.meta_remove(&space_meta_key(&space))?;
                    tracing::info!(network = %n.name, space, "removed the network of a deleted space");
                }
                Err(e) => {
                    tracing::warn!(network = %n.name, error = %e, "the network of a deleted space is still in use; removed at a later start")
                }
            }
            continue;
        }
        // One space's network in a bad way does not stop the platform: that space's next start
        // tries again and says why.
        let ready = async {
            let net = ensure_space(runtime, controller_id, &space, store).await?;
            isolate(runtime, &net, access).await?;
            anyhow::Ok(net)
        };
        match ready.await {
            Ok(net) => {
                tracing::info!(network = %net.name, subnet = %net.subnet, space, "using the space's instance network");
                spaces.insert(space, net);
            }
            Err(e) => {
                tracing::warn!(network = %n.name, error = format!("{e:#}"), "a space's network is not usable; tried again at its next instance start")
            }
        }
    }
    Ok(NetworkSet {
        default,
        default_space: default_space(store)?,
        spaces,
    })
}

/// The instance networks of a running controller.
pub struct Networks {
    runtime: Arc<dyn ContainerRuntime>,
    controller_id: String,
    store: Store,
    access: HostAccess,
    default: InstanceNetwork,
    /// The default space's guid: its instances use [`Networks::default`].
    default_space: Option<String>,
    addresses: Arc<AddressPool>,
    /// The other spaces' networks made or adopted so far. Held while one is made, so two
    /// instances of a new space starting at once make it once.
    spaces: tokio::sync::Mutex<BTreeMap<String, InstanceNetwork>>,
    /// Deleted spaces whose network Docker refused to remove (a container was still attached):
    /// [`Networks::retry_removals`] tries again.
    pending: std::sync::Mutex<BTreeSet<String>>,
    /// Every network that exists now (the default one first), for the internal routes' DNS
    /// server, which listens on each one's gateway (`dns.rs`).
    current: tokio::sync::watch::Sender<Vec<InstanceNetwork>>,
}

impl Networks {
    pub fn new(
        runtime: Arc<dyn ContainerRuntime>,
        controller_id: &str,
        store: Store,
        access: HostAccess,
        set: NetworkSet,
        addresses: Arc<AddressPool>,
    ) -> Arc<Networks> {
        let mut current = vec![set.default.clone()];
        current.extend(set.spaces.values().cloned());
        Arc::new(Networks {
            current: tokio::sync::watch::channel(current).0,
            runtime,
            controller_id: controller_id.to_string(),
            store,
            access,
            default: set.default,
            default_space: set.default_space,
            addresses,
            spaces: tokio::sync::Mutex::new(set.spaces),
            pending: Default::default(),
        })
    }

    /// The address pool handing out addresses on these networks.
    pub fn addresses(&self) -> &Arc<AddressPool> {
        &self.addresses
    }

    /// Every network that exists now, and each change to that list.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<Vec<InstanceNetwork>> {
        self.current.subscribe()
    }

    fn is_default(&self, space_guid: &str) -> bool {
        space_guid.is_empty() || self.default_space.as_deref() == Some(space_guid)
    }

    /// The name of the space's network (whether it exists yet or not).
    pub fn name_for(&self, space_guid: &str) -> String {
        if self.is_default(space_guid) {
            self.default.name.clone()
        } else {
            space_network_name(&self.controller_id, space_guid)
        }
    }

    /// The network the space's instances attach to, made (and kept away from the host) if it is
    /// not there yet; its subnet is then one the address pool hands addresses out on.
    pub async fn for_space(&self, space_guid: &str) -> anyhow::Result<InstanceNetwork> {
        if self.is_default(space_guid) {
            return Ok(self.default.clone());
        }
        let mut spaces = self.spaces.lock().await;
        if let Some(n) = spaces.get(space_guid) {
            return Ok(n.clone());
        }
        let rt = self.runtime.as_ref();
        let net = ensure_space(rt, &self.controller_id, space_guid, &self.store).await?;
        isolate(rt, &net, self.access).await?;
        self.addresses.add_network(&net.name, net.subnet)?;
        tracing::info!(network = %net.name, subnet = %net.subnet, space = space_guid, "the space's instance network is ready");
        spaces.insert(space_guid.to_string(), net.clone());
        self.current.send_modify(|c| c.push(net.clone()));
        Ok(net)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The space is deleted and its instances are gone: its network goes, with its firewall rules
    /// and its remembered subnet. Fails while a container is still attached, and is then tried
    /// again by [`Networks::retry_removals`] (and at the next start). The default space's network
    /// stays.
    pub async fn remove_space(&self, space_guid: &str) -> anyhow::Result<()> {
        if self.is_default(space_guid) {
            return Ok(());
        }
        let mut spaces = self.spaces.lock().await;
        let name = space_network_name(&self.controller_id, space_guid);
        if let Err(e) = self.runtime.remove_network(&name).await {
            self.pending().insert(space_guid.to_string());
            return Err(anyhow::Error::new(e).context(format!(
                "cannot remove the network {name} of a deleted space"
            )));
        }
        self.pending().remove(space_guid);
        self.addresses.remove_network(&name);
        spaces.remove(space_guid);
        self.current.send_modify(|c| c.retain(|n| n.name != name));
        self.store.meta_remove(&space_meta_key(space_guid))?;
        tracing::info!(network = %name, space = space_guid, "removed the deleted space's network");
        Ok(())
    }

    /// Tries again to remove the networks of deleted spaces that were still in use (a reconcile
    /// pass calls it, after removing leftover containers). Nothing to do is the usual case and
    /// costs no Docker call.
    pub async fn retry_removals(&self) {
        let pending: Vec<String> = self.pending().iter().cloned().collect();
        for space in pending {
            if let Err(e) = self.remove_space(&space).await {
                tracing::debug!(
                    space,
                    error = format!("{e:#}"),
                    "a deleted space's network is still in use"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::network::addresses::{Quarantine, SystemClock};
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::{ContainerSpec, Kind, Labels, NetworkSpec, Networking};
    use crate::store::SpaceRecord;

    const SPACE: &str = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d";
    const NET: &str = "pier-c1-0b1c2d3e4f50";

    fn put_space(store: &Store, guid: &str) {
        let org = store.org_named(DEFAULT_ORG).unwrap().unwrap();
        store
            .put_space(&SpaceRecord {
                guid: guid.into(),
                name: "dev".into(),
                org_guid: org.guid,
                created_at: time::OffsetDateTime::now_utc(),
                quota: None,
            })
            .unwrap();
    }

    async fn open(fake: &Arc<FakeRuntime>, store: &Store) -> (Arc<Networks>, Arc<AddressPool>) {
        let set = prepare(fake.as_ref(), "c1", None, HostAccess::Block, store)
            .await
            .unwrap();
        let pool = Arc::new(
            AddressPool::open(
                store.addresses().unwrap(),
                &set.subnets(),
                Quarantine {
                    min: Duration::ZERO,
                    ack_window: Duration::from_secs(60),
                },
                "e1",
                Arc::new(SystemClock),
            )
            .unwrap(),
        );
        let rt: Arc<dyn ContainerRuntime> = fake.clone();
        let n = Networks::new(
            rt,
            "c1",
            store.clone(),
            HostAccess::Block,
            set,
            pool.clone(),
        );
        (n, pool)
    }

    /// A container of the fake attached to `network`.
    async fn attach(fake: &Arc<FakeRuntime>, network: &str) -> String {
        let spec = ContainerSpec {
            name: "x".into(),
            image: crate::runtime::stack::DEFAULT_STACK_IMAGE.into(),
            cmd: vec![],
            env: vec![],
            user: "vcap".into(),
            working_dir: "/".into(),
            labels: Labels::new("c1", Kind::Instance),
            memory_mb: 64,
            pids_limit: 64,
            networking: Networking::Fixed {
                network: network.into(),
                ip: "10.213.0.9".parse().unwrap(),
            },
            mounts: vec![],
            publish_8080: false,
            init: true,
            stop_timeout: None,
            cpu_shares: None,
            nano_cpus: None,
            open_stdin: false,
        };
        ContainerRuntime::create(fake.as_ref(), &spec)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_default_space_keeps_the_one_network_and_another_gets_its_own_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        put_space(&store, SPACE);
        let fake = FakeRuntime::new("c1");
        let (n, pool) = open(&fake, &store).await;
        let default = default_space(&store).unwrap().unwrap();
        assert_eq!(n.for_space(&default).await.unwrap().name, "pier-c1");
        assert_eq!(n.name_for(&default), "pier-c1");
        assert_eq!(n.name_for(SPACE), NET);
        assert!(fake.network(NET).is_none(), "made when first asked for");
        let made = n.for_space(SPACE).await.unwrap();
        assert_eq!(made.name, NET);
        assert_eq!(n.for_space(SPACE).await.unwrap(), made, "once");
        assert_eq!(pool.subnet(NET), Some(made.subnet));
        assert_eq!(fake.isolation(NET), Some(HostAccess::Block));
        assert_eq!(
            fake.network(NET).unwrap().labels.get(keys::SPACE),
            Some(SPACE)
        );
    }

    #[tokio::test]
    async fn a_restart_adopts_a_space_network_and_removes_a_deleted_spaces() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        put_space(&store, SPACE);
        let fake = FakeRuntime::new("c1");
        let (n, _) = open(&fake, &store).await;
        let subnet = n.for_space(SPACE).await.unwrap().subnet;
        let gone = "9f8e7d6c-5b4a-4321-8fed-cba987654321";
        put_space(&store, gone);
        let gone_net = n.for_space(gone).await.unwrap().name;
        store.delete_space(gone).unwrap();
        drop(n);
        let (n, pool) = open(&fake, &store).await;
        assert_eq!(pool.subnet(NET), Some(subnet), "adopted at start");
        assert_eq!(n.for_space(SPACE).await.unwrap().subnet, subnet);
        assert!(
            fake.network(&gone_net).is_none(),
            "the deleted space's went"
        );
        assert!(pool.subnet(&gone_net).is_none());
        let key = crate::network::space_meta_key(gone);
        assert_eq!(store.meta_get(&key).unwrap(), None);
    }

    #[tokio::test]
    async fn the_dns_server_is_told_of_every_network_as_spaces_come_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        put_space(&store, SPACE);
        let fake = FakeRuntime::new("c1");
        let (n, _) = open(&fake, &store).await;
        let mut rx = n.watch();
        let names = |rx: &mut tokio::sync::watch::Receiver<Vec<InstanceNetwork>>| -> Vec<String> {
            rx.borrow_and_update()
                .iter()
                .map(|n| n.name.clone())
                .collect()
        };
        assert_eq!(names(&mut rx), vec!["pier-c1"]);
        let made = n.for_space(SPACE).await.unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(names(&mut rx), vec!["pier-c1", NET]);
        assert_eq!(rx.borrow().last().unwrap(), &made, "with its subnet");
        n.remove_space(SPACE).await.unwrap();
        assert_eq!(names(&mut rx), vec!["pier-c1"]);
        // A restart starts from every network that exists.
        n.for_space(SPACE).await.unwrap();
        drop(n);
        let (n, _) = open(&fake, &store).await;
        assert_eq!(names(&mut n.watch()), vec!["pier-c1", NET]);
    }

    #[tokio::test]
    async fn a_network_in_use_is_not_removed_and_the_default_never_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        put_space(&store, SPACE);
        let fake = FakeRuntime::new("c1");
        let (n, pool) = open(&fake, &store).await;
        let net = n.for_space(SPACE).await.unwrap();
        let id = attach(&fake, NET).await;
        let err = n.remove_space(SPACE).await.unwrap_err();
        assert!(format!("{err:#}").contains("active endpoints"), "{err:#}");
        assert!(fake.network(NET).is_some());
        assert_eq!(pool.subnet(NET), Some(net.subnet), "still usable");
        n.retry_removals().await;
        assert!(fake.network(NET).is_some(), "still in use");
        ContainerRuntime::remove(fake.as_ref(), &id).await.unwrap();
        n.retry_removals().await;
        assert!(
            fake.network(NET).is_none(),
            "removed once its container is gone"
        );
        assert!(pool.subnet(NET).is_none());
        let default = default_space(&store).unwrap().unwrap();
        n.remove_space(&default).await.unwrap();
        assert!(fake.network("pier-c1").is_some());
    }

    #[tokio::test]
    async fn a_network_of_that_name_for_another_space_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let fake = FakeRuntime::new("c1");
        let (n, pool) = open(&fake, &store).await;
        let labels = Labels::new("c1", Kind::Instances).with(keys::SPACE, "other");
        ContainerRuntime::create_network(
            fake.as_ref(),
            &NetworkSpec {
                name: NET.into(),
                subnet: "10.213.99.0/24".parse().unwrap(),
                gateway: "10.213.99.1".parse().unwrap(),
                labels,
            },
        )
        .await
        .unwrap();
        let err = n.for_space(SPACE).await.unwrap_err().to_string();
        assert!(err.contains("is not labelled pier.space="), "{err}");
        assert!(pool.subnet(NET).is_none(), "no address is handed out on it");
        assert_eq!(fake.isolation(NET), None);
    }
}

//! Supervisor tests on paused time: the fake runtime plays the containers, a fake probe plays the
//! health checks, and tokio's clock jumps only when every task waits, so backoff curves and
//! health-check intervals are checked to the millisecond without waiting for them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pier_api::{
    AppState, DropletInfo, EventKind, HealthCheck, HealthCheckType, InstanceState, ProcessType,
};
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::health::tests::FakeProbe;
use super::{desired_slots, InstanceDeps, InstanceSettings, Instances, Routing};
use crate::events::Events;
use crate::logs::LogBroker;
use crate::network::addresses::{AddressPool, Quarantine, SystemClock};
use crate::runtime::fake::FakeRuntime;
use crate::runtime::labels::keys;
use crate::runtime::{ContainerSpec, Kind, Labels, Networking};
use crate::store::{AppRecord, BlobStore, ProcessRecord, Revision, Store};
use crate::testkit::Idle;

const NETWORK: &str = "pier-test";
const BASE: Duration = Duration::from_secs(30);

struct Rig {
    instances: Arc<Instances>,
    fake: Arc<FakeRuntime>,
    probe: Arc<FakeProbe>,
    store: Store,
    shutdown: CancellationToken,
    droplet: String,
    _dir: tempfile::TempDir,
}

fn app(droplet: &str, instances: u32, hc: HealthCheckType) -> AppRecord {
    let mut a = crate::store::tests::app("web");
    a.state = AppState::Started;
    let d = DropletInfo {
        sha256: droplet.to_string(),
        buildpack: "python".into(),
        process_types: BTreeMap::from([("web".into(), "python3 app.py".into())]),
        created_at: OffsetDateTime::now_utc(),
    };
    a.droplet = Some(d.clone());
    a.revisions = vec![Revision {
        version: 1,
        droplet: d,
        env: BTreeMap::new(),
        commands: BTreeMap::new(),
        description: "pushed".into(),
        created_at: OffsetDateTime::now_utc(),
        stack: String::new(),
        vcap_services: "{}".into(),
    }];
    a.current_revision = Some(1);
    a.processes.insert(
        ProcessType::web(),
        ProcessRecord {
            instances,
            memory_mb: 256,
            disk_mb: 1024,
            command: None,
            health_check: HealthCheck {
                kind: hc,
                ..HealthCheck::default()
            },
        },
    );
    a
}

impl Rig {
    fn new() -> Rig {
        Rig::with_standby(0)
    }

    fn with_standby(standby: u32) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let tgz = crate::testkit::targz(&[("app/app.py", b"print('hi')")]);
        let w = blobs.write_reader(&mut &tgz[..]).unwrap();
        let droplet = blobs.commit(w).unwrap();
        let fake = FakeRuntime::new("test");
        let probe = Arc::new(FakeProbe::default());
        let logs = Arc::new(LogBroker::new(100));
        let routing = Arc::new(Routing::new());
        let set = crate::network::NetworkSet {
            default: crate::network::InstanceNetwork {
                name: NETWORK.into(),
                subnet: "10.9.0.0/24".parse().unwrap(),
            },
            // The space of `crate::store::tests::app`'s apps.
            default_space: Some("space-test".into()),
            spaces: BTreeMap::new(),
        };
        let addresses = Arc::new(
            AddressPool::open(
                store.addresses().unwrap(),
                &set.subnets(),
                Quarantine {
                    min: Duration::ZERO,
                    ack_window: Duration::from_secs(600),
                },
                routing.epoch(),
                Arc::new(SystemClock),
            )
            .unwrap(),
        );
        let instances = Instances::new(InstanceDeps {
            runtime: fake.clone(),
            store: store.clone(),
            events: Events::new(store.clone(), logs.clone()),
            logs,
            images: Arc::new(crate::images::Images::new(
                fake.clone(),
                blobs,
                "test",
                crate::runtime::stack::DEFAULT_STACK_IMAGE,
            )),
            networks: crate::network::Networks::new(
                fake.clone(),
                "test",
                store.clone(),
                crate::runtime::HostAccess::Block,
                set,
                addresses.clone(),
            ),
            addresses,
            routing,
            probe: probe.clone(),
            drain: Arc::new(Idle),
            settings: InstanceSettings {
                controller_id: "test".into(),
                pids_limit: 64,
                stop_grace: Duration::from_secs(10),
                crash_backoff_base: BASE,
                drain_timeout: Duration::from_secs(30),
                max_cpus: 0.0,
                standby,
            },
        });
        Rig {
            instances,
            fake,
            probe,
            store,
            shutdown: CancellationToken::new(),
            droplet,
            _dir: dir,
        }
    }

    /// Saves the app and runs one sync, as a reconcile pass would.
    async fn apply(&self, a: &AppRecord) {
        self.store.put_app(a).unwrap();
        let containers = crate::runtime::ContainerRuntime::list(self.fake.as_ref())
            .await
            .unwrap();
        let desired = self.instances.desired(std::slice::from_ref(a));
        self.instances.sync(&desired, &containers, &self.shutdown);
        self.instances.publish_routes();
    }

    /// Instance ids of the backends the route table would get for `a`.
    fn routed(&self, a: &AppRecord) -> Vec<String> {
        let desired = self.instances.desired(std::slice::from_ref(a));
        let mut ids: Vec<String> = self
            .instances
            .registry
            .backends(&a.guid, &desired)
            .into_iter()
            .map(|b| b.instance_id)
            .collect();
        ids.sort();
        ids
    }

    fn running(&self) -> Vec<String> {
        self.fake
            .running(Kind::Instance)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// Waits (in paused time: as long as it takes) for exactly `n` running instances, and
    /// returns them.
    async fn until_running(&self, n: usize) -> Vec<String> {
        for _ in 0..100_000 {
            let r = self.running();
            let states = self
                .instances
                .statuses(&crate::store::tests::app("web").guid);
            if r.len() == n
                && states
                    .iter()
                    .filter(|s| s.state == InstanceState::Running)
                    .count()
                    == n
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never {n} running: {:?}", self.running());
    }

    fn crashes(&self) -> Vec<String> {
        self.store
            .events(&crate::store::tests::app("web").guid, 1000)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == EventKind::Crashed)
            .map(|e| e.message)
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn crashes_follow_cloud_foundrys_backoff_curve() {
    let rig = Rig::new();
    rig.apply(&app(&rig.droplet, 1, HealthCheckType::Port))
        .await;
    let mut id = rig.until_running(1).await.remove(0);
    // Crashes 1 and 2 restart at once; then 30 s, 60 s, 120 s.
    let expected = [0u64, 0, 30, 60, 120];
    for (n, wait) in expected.iter().enumerate() {
        let crashed_at = Instant::now();
        rig.fake.exit(&id, 1, false);
        let new = loop {
            let r = rig.running();
            if r.len() == 1 && r[0] != id {
                break r[0].clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let took = crashed_at.elapsed();
        assert!(
            took >= Duration::from_secs(*wait)
                && took < Duration::from_secs(*wait) + Duration::from_secs(1),
            "crash {}: restarted after {took:?}, expected {wait} s",
            n + 1
        );
        rig.until_running(1).await;
        id = new;
    }
    let crashes = rig.crashes();
    assert_eq!(crashes.len(), 5);
    assert!(
        crashes[0].contains("exited with status 1 (crash 5); restarting in 120 s"),
        "{crashes:?}"
    );
    assert!(
        rig.fake.removed().len() >= 5,
        "every crashed container was removed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_healthy_instance_resets_the_crash_count_after_five_minutes() {
    let rig = Rig::new();
    rig.apply(&app(&rig.droplet, 1, HealthCheckType::Process))
        .await;
    let mut id = rig.until_running(1).await.remove(0);
    for _ in 0..3 {
        rig.fake.exit(&id, 2, false);
        tokio::time::sleep(Duration::from_secs(31)).await;
        id = rig.until_running(1).await.remove(0);
    }
    // Five quiet minutes, then a crash counts as the first again: restarted at once.
    tokio::time::sleep(Duration::from_secs(301)).await;
    let at = Instant::now();
    rig.fake.exit(&id, 2, false);
    loop {
        let r = rig.running();
        if r.len() == 1 && r[0] != id {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(at.elapsed() < Duration::from_secs(1));
    assert!(
        rig.crashes()[0].contains("(crash 1); restarting now"),
        "{:?}",
        rig.crashes()
    );
}

#[tokio::test(start_paused = true)]
async fn three_failed_health_checks_replace_the_instance() {
    let rig = Rig::new();
    rig.apply(&app(&rig.droplet, 1, HealthCheckType::Port))
        .await;
    let id = rig.until_running(1).await.remove(0);
    let spec: ContainerSpec = rig
        .fake
        .running(Kind::Instance)
        .into_iter()
        .next()
        .unwrap()
        .1;
    let Networking::Fixed { ip, .. } = spec.networking else {
        panic!("instances have a fixed address")
    };
    let at = Instant::now();
    rig.probe.set_healthy(ip.into(), false);
    loop {
        if !rig.running().contains(&id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = at.elapsed();
    // Checked every 2 s; the third failure in a row replaces it.
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(7),
        "{took:?}"
    );
    let crashes = rig.crashes();
    assert!(
        crashes[0].contains("health check failed 3 times in a row"),
        "{crashes:?}"
    );
    // Its replacement gets another address (the old one is in quarantine) and is healthy.
    rig.until_running(1).await;
}

#[tokio::test(start_paused = true)]
async fn a_restarted_controller_adopts_the_running_container() {
    let rig = Rig::new();
    let a = app(&rig.droplet, 1, HealthCheckType::Port);
    let desired = desired_slots(std::slice::from_ref(&a));
    let (key, spec) = desired.iter().next().unwrap();
    // A container an earlier controller started for the slot, with the current spec.
    let labels = Labels::new("test", Kind::Instance)
        .with(keys::APP, &spec.app_name)
        .with(keys::APP_GUID, &spec.app_guid)
        .with(keys::PROCESS, &key.process)
        .with(keys::INDEX, key.index)
        .with(keys::INSTANCE, "earlier-instance")
        .with(keys::DROPLET, &spec.droplet)
        .with(keys::REVISION, spec.revision)
        .with(keys::SPEC, spec.hash());
    let earlier = ContainerSpec {
        name: "pier-web-web-0-earlier".into(),
        image: crate::runtime::stack::DEFAULT_STACK_IMAGE.into(),
        cmd: vec![],
        env: vec![],
        user: "vcap".into(),
        working_dir: "/home/vcap/app".into(),
        labels,
        memory_mb: 256,
        pids_limit: 64,
        networking: Networking::Fixed {
            network: NETWORK.into(),
            ip: "10.9.0.7".parse().unwrap(),
        },
        mounts: vec![],
        publish_8080: true,
        init: true,
        stop_timeout: None,
        cpu_shares: None,
        nano_cpus: None,
        open_stdin: false,
    };
    let rt: &dyn crate::runtime::ContainerRuntime = rig.fake.as_ref();
    let id = rt.create(&earlier).await.unwrap();
    rt.start(&id).await.unwrap();
    rig.apply(&a).await;
    let running = rig.until_running(1).await;
    assert_eq!(
        running,
        vec![id.clone()],
        "the same container, not a new one"
    );
    let st = &rig.instances.statuses(&a.guid)[0];
    assert_eq!(st.container_id.as_deref(), Some(id.as_str()));
    assert_eq!(st.instance_id.as_deref(), Some("earlier-instance"));
    assert_eq!(rig.fake.containers().len(), 1);
    assert!(rig.fake.removed().is_empty(), "nothing was restarted");
}

#[tokio::test(start_paused = true)]
async fn out_of_restarts_it_waits_for_a_new_spec() {
    let rig = Rig::new();
    let mut a = app(&rig.droplet, 1, HealthCheckType::Port);
    rig.probe.all_unhealthy();
    rig.apply(&a).await;
    // Every start fails its health check (60 s each) until the 200th crash.
    for _ in 0..2000 {
        if rig.crashes().len() >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    assert!(
        rig.crashes()[0].contains("not restarting after 200 crashes"),
        "{:?}",
        &rig.crashes()[0]
    );
    let starts = rig.fake.removed().len();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(rig.fake.removed().len(), starts, "no more starts");
    // A new spec (a restart) starts it afresh.
    rig.probe.all_healthy();
    a.restart_gen += 1;
    rig.apply(&a).await;
    rig.until_running(1).await;
}

#[tokio::test(start_paused = true)]
async fn standby_instances_start_ahead_and_a_scale_up_routes_them_without_new_containers() {
    let rig = Rig::with_standby(2);
    let guid = crate::store::tests::app("web").guid;
    let mut a = app(&rig.droplet, 1, HealthCheckType::Port);
    rig.apply(&a).await;
    // One listed instance, two standby containers running beside it, healthy but not routed.
    for _ in 0..100_000 {
        if rig.running().len() == 3 && rig.instances.standby_ready(&guid) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rig.running().len(), 3, "1 instance + 2 standby");
    assert_eq!(rig.instances.standby_ready(&guid), 2);
    let listed = rig.instances.statuses(&guid);
    assert_eq!(
        listed.len(),
        1,
        "standby instances are not listed: {listed:?}"
    );
    assert_eq!(listed[0].index, 0);
    assert_eq!(rig.routed(&a).len(), 1, "standby instances get no traffic");
    let warm: Vec<String> = rig.running();

    // Scale to 3: indexes 1 and 2 are the standbys, promoted with the containers they have.
    a.processes.get_mut(&ProcessType::web()).unwrap().instances = 3;
    rig.apply(&a).await;
    let listed = rig.instances.statuses(&guid);
    assert_eq!(listed.len(), 3, "{listed:?}");
    for s in &listed {
        assert_eq!(s.state, InstanceState::Running, "{s:?}");
        let c = s.container_id.clone().unwrap();
        assert!(
            warm.contains(&c),
            "index {} runs a container made ahead of time",
            s.index
        );
    }
    assert_eq!(rig.routed(&a).len(), 3, "all three are routed at once");
    // Two new standbys (indexes 3 and 4) are started behind them.
    for _ in 0..100_000 {
        if rig.running().len() == 5 && rig.instances.standby_ready(&guid) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rig.running().len(), 5);
    assert_eq!(rig.instances.statuses(&guid).len(), 3);

    // Scale back to 1: indexes 1 and 2 become standby again (kept running, unrouted), 3 and 4 go.
    a.processes.get_mut(&ProcessType::web()).unwrap().instances = 1;
    rig.apply(&a).await;
    for _ in 0..100_000 {
        if rig.running().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        rig.running().len(),
        3,
        "the slots past the standby ones stopped"
    );
    assert_eq!(rig.instances.statuses(&guid).len(), 1);
    assert_eq!(rig.routed(&a).len(), 1);
    assert_eq!(rig.instances.standby_ready(&guid), 2);
}

/// A space other than the default one (`Rig`'s default space is `space-test`).
const SPACE: &str = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d";

#[tokio::test(start_paused = true)]
async fn an_instance_of_another_space_runs_on_that_spaces_own_network() {
    let rig = Rig::new();
    let mut a = app(&rig.droplet, 2, HealthCheckType::Port);
    a.space_guid = SPACE.into();
    rig.apply(&a).await;
    rig.until_running(2).await;
    let net = "pier-test-0b1c2d3e4f50";
    let info = rig.fake.network(net).expect("the space's network was made");
    assert_eq!(info.labels.get(keys::SPACE), Some(SPACE));
    assert_eq!(info.labels.kind(), Some(Kind::Instances));
    assert_eq!(
        rig.fake.isolation(net),
        Some(crate::runtime::HostAccess::Block),
        "kept away from the host like the default network"
    );
    let subnet = info.subnets[0];
    assert!(!subnet.overlaps(&"10.9.0.0/24".parse().unwrap()));
    for (_, spec) in rig.fake.running(Kind::Instance) {
        let Networking::Fixed { network, ip } = spec.networking else {
            panic!("an instance without a fixed address")
        };
        assert_eq!(network, net);
        assert!(subnet.contains(ip), "{ip} in {subnet}");
    }
    let kept = rig
        .store
        .meta_get(&format!("instance_subnet:{SPACE}"))
        .unwrap();
    assert_eq!(
        kept,
        Some(subnet.to_string().into_bytes()),
        "kept for restarts"
    );
}

#[tokio::test(start_paused = true)]
async fn a_space_network_that_cannot_be_made_starts_nothing_and_says_why() {
    let rig = Rig::new();
    rig.fake
        .fail_next(crate::runtime::fake::Op::CreateNetwork, 10_000);
    let mut a = app(&rig.droplet, 1, HealthCheckType::Port);
    a.space_guid = SPACE.into();
    rig.apply(&a).await;
    for _ in 0..1000 {
        if !rig.crashes().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let crashes = rig.crashes();
    assert!(
        crashes
            .first()
            .is_some_and(|c| c.contains("could not make the space's network")),
        "{crashes:?}"
    );
    assert!(
        rig.fake
            .containers()
            .iter()
            .all(|(_, s, _)| s.labels.kind() != Some(Kind::Instance)),
        "no instance container was made"
    );
    assert!(rig.fake.removed().is_empty());
    let states: Vec<(std::net::Ipv4Addr, serde_json::Value)> =
        rig.store.addresses().unwrap().load(|_| true).unwrap();
    assert!(states.is_empty(), "no address was taken: {states:?}");
}

#[tokio::test(start_paused = true)]
async fn an_internal_route_names_only_healthy_instances_and_never_reaches_the_routers() {
    use crate::network::dns::Lookup;
    let rig = Rig::new();
    let mut a = app(&rig.droplet, 2, HealthCheckType::Port);
    a.routes = vec![
        "web.localhost".parse().unwrap(),
        "B.apps.internal".parse().unwrap(),
    ];
    let names = rig.instances.deps.routing.internal();
    rig.apply(&a).await;
    assert_eq!(
        names.borrow().lookup(NETWORK, "b.apps.internal"),
        Lookup::Found(vec![]),
        "none healthy yet"
    );
    rig.until_running(2).await;
    let ips = || -> Vec<std::net::Ipv4Addr> {
        let mut v: Vec<_> = rig
            .fake
            .running(Kind::Instance)
            .into_iter()
            .map(|(_, s)| match s.networking {
                Networking::Fixed { ip, .. } => ip,
                Networking::Disabled => panic!("instances have a network"),
            })
            .collect();
        v.sort();
        v
    };
    let both = ips();
    assert_eq!(
        names.borrow().lookup(NETWORK, "b.apps.internal"),
        Lookup::Found(both.clone())
    );
    assert_eq!(
        names.borrow().lookup("pier-other-space", "b.apps.internal"),
        Lookup::Unknown
    );
    let table = rig.instances.deps.routing.current().unwrap();
    let hosts: Vec<&str> = table.routes.iter().map(|r| r.host.as_str()).collect();
    assert_eq!(hosts, vec!["web.localhost"], "the routers never see it");

    // One instance fails its health checks: it is no longer named, the other still is.
    rig.probe.set_healthy(both[0].into(), false);
    for _ in 0..100_000 {
        let Lookup::Found(now) = names.borrow().lookup(NETWORK, "b.apps.internal") else {
            panic!("the route is there")
        };
        if !now.contains(&both[0]) {
            assert!(now.contains(&both[1]), "{now:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the unhealthy instance stayed named");
}

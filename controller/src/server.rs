//! Wiring: opens the store, reaches the runtime, makes sure the stack and the instance network
//! exist, builds each subsystem with exactly the parts it uses, binds the API and the built-in
//! router, and owns the long-lived tasks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pier_api::EventKind;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::apps::{AppDeps, AppService};
use crate::config::Config;
use crate::deployments::{RequestStats, Watcher};
use crate::events::{Actor, Events};
use crate::http::ApiState;
use crate::instances::health::{HealthProbe, NetworkProbe};
use crate::instances::{Drain, InstanceDeps, Instances, Routing};
use crate::locks::AppLocks;
use crate::logs::LogBroker;
use crate::network::addresses::{AddressPool, SystemClock};
use crate::reconcile::{Reconciler, ReconcilerDeps};
use crate::runtime::{ContainerRuntime, DockerRuntime};
use crate::staging::{Buildpacks, Stager};
use crate::store::{BlobStore, Store};

/// A running controller.
pub struct Controller {
    pub api_addr: SocketAddr,
    pub router_addr: Option<SocketAddr>,
    /// The admin token, when this start generated it.
    pub new_token: Option<String>,
    pub token_file: PathBuf,
    parts: Parts,
    api_listener: TcpListener,
    router_listener: Option<TcpListener>,
    /// The controller id and data dir the built-in brokers run with, when they are on.
    builtin_brokers: Option<(String, PathBuf)>,
    /// Answer internal routes' DNS on the instance networks' gateways (on Docker; a fake
    /// runtime's networks are not the host's).
    internal_dns: bool,
}

/// The subsystems, as `run` (and the handler tests) need them.
pub(crate) struct Parts {
    pub(crate) api: ApiState,
    pub(crate) store: Store,
    pub(crate) logs: Arc<LogBroker>,
    pub(crate) reconciler: Arc<Reconciler>,
    pub(crate) watcher: Watcher,
    pub(crate) routing: Arc<Routing>,
    pub(crate) instances: Arc<Instances>,
    /// How often instances' resource use is sampled.
    pub(crate) usage_every: Duration,
    pub(crate) stats: Arc<RequestStats>,
    pub(crate) builtin_router: Option<pier_router::InFlight>,
    pub(crate) serve: crate::http::serve::ServeOptions,
    pub(crate) shutdown: CancellationToken,
}

/// Opens the data dir's store and blob store.
fn open_data(config: &mut Config) -> anyhow::Result<(Store, BlobStore)> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
    config.data_dir = config.data_dir.canonicalize()?;
    let store = Store::open(&config.data_dir.join("db")).map_err(|e| {
        // The store writes as it opens: on a full disk it cannot, and says so.
        let why = if e.is_no_space() {
            "its disk has no space left: free some and start again"
        } else {
            "is another pier-controller using it?"
        };
        anyhow::Error::new(e).context(format!(
            "cannot open the store in {} ({why})",
            config.data_dir.display()
        ))
    })?;
    let blobs = BlobStore::open(&config.data_dir)?;
    private(&config.data_dir)?;
    Ok((store, blobs))
}

/// The data dir holds tokens, packages and logs: only its owner may enter it (0700), and the
/// folders it has made so far too. Files in it are not reachable by others through it, whatever
/// their own mode; the ones the controller writes itself are 0600 anyway.
fn private(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::Permissions::from_mode(0o700);
    std::fs::set_permissions(data_dir, mode.clone())
        .with_context(|| format!("cannot make {} private", data_dir.display()))?;
    for sub in ["db", "blobs", "tmp", "logs"] {
        let p = data_dir.join(sub);
        if p.is_dir() {
            std::fs::set_permissions(&p, mode.clone())?;
        }
    }
    Ok(())
}

/// This controller's id: configured, or made once and kept in the store.
fn controller_id(config: &Config, store: &Store) -> anyhow::Result<String> {
    if let Some(id) = &config.controller_id {
        return Ok(id.clone());
    }
    if let Some(id) = store.meta_get("controller_id")? {
        return Ok(String::from_utf8_lossy(&id).into_owned());
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    store.meta_put("controller_id", id.as_bytes())?;
    Ok(id)
}

/// A staging that was running when the controller died did not finish.
fn fail_interrupted_stagings(store: &Store) -> anyhow::Result<()> {
    for mut app in store.list_apps()? {
        if app.staging.take().is_some() {
            store.put_app(&app)?;
            store.add_event(
                &app.guid,
                EventKind::StagingFailed,
                "staging was interrupted by a controller restart; push again",
                Actor::Platform.as_str(),
            )?;
        }
    }
    Ok(())
}

/// The instance networks (the default space's and every other space's that exists): found or
/// made, kept away from the host (unless allowed). The default one is named in
/// `DATA_DIR/instance-network` for `scripts/down`, which removes every network labelled with the
/// controller id once the instances are gone.
pub(crate) async fn prepare_network(
    runtime: &dyn ContainerRuntime,
    controller_id: &str,
    config: &Config,
    store: &Store,
) -> anyhow::Result<crate::network::NetworkSet> {
    let set = crate::network::prepare(
        runtime,
        controller_id,
        config.instance_subnet,
        config.instance_host_access,
        store,
    )
    .await?;
    std::fs::write(config.data_dir.join("instance-network"), &set.default.name)?;
    Ok(set)
}

/// The port apps are reached at, for URLs: `--router-url`'s, else the built-in router's.
fn route_port(config: &Config, router_addr: Option<SocketAddr>) -> Option<u16> {
    match &config.router_url {
        Some(u) => u
            .rsplit_once(':')
            .and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
            .or(Some(80)),
        None => router_addr.map(|a| a.port()),
    }
}

/// The instance address allocator, with the states the store kept, and the networks it hands
/// addresses out on.
fn open_networks(
    config: &Config,
    store: &Store,
    runtime: &Arc<dyn ContainerRuntime>,
    controller_id: &str,
    networks: crate::network::NetworkSet,
    routing: &Routing,
) -> anyhow::Result<(Arc<AddressPool>, Arc<crate::network::Networks>)> {
    let addresses = AddressPool::open(
        store.addresses()?,
        &networks.subnets(),
        config.address_quarantine(),
        routing.epoch(),
        Arc::new(SystemClock),
    )
    .context("cannot load the instance addresses from the store")?;
    let (in_use, quarantined, free) = addresses.counts();
    tracing::info!(network = %networks.default.name, subnet = %networks.default.subnet,
        spaces = networks.spaces.len(), in_use, quarantined, free,
        quarantine_secs = config.address_quarantine_secs, "instance addresses");
    let addresses = Arc::new(addresses);
    let networks = crate::network::Networks::new(
        runtime.clone(),
        controller_id,
        store.clone(),
        config.instance_host_access,
        networks,
        addresses.clone(),
    );
    Ok((addresses, networks))
}

/// The log broker, with the buffers of apps that still exist restored with their seq numbers.
fn open_logs(config: &Config, store: &Store) -> anyhow::Result<Arc<LogBroker>> {
    let logs = LogBroker::new(config.log_buffer_lines)
        .with_dir(config.data_dir.join("logs"))
        .with_rate_limit(config.log_rate_limit, config.log_rate_burst);
    let app_guids = store.list_apps()?.into_iter().map(|a| a.guid).collect();
    logs.restore(&app_guids)
        .context("cannot read the saved log buffers")?;
    Ok(Arc::new(logs))
}

impl Controller {
    /// Prepares everything and binds the listeners; nothing is served until [`Controller::run`].
    pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Controller> {
        let mut config = config;
        let (store, blobs) = open_data(&mut config)?;
        let token = crate::http::auth::ensure_token(&store, &config.data_dir)?;
        let id = controller_id(&config, &store)?;
        let runtime: Arc<dyn ContainerRuntime> = Arc::new(DockerRuntime::connect(&id).await?);
        let builtin = config
            .builtin_brokers
            .then(|| (id.clone(), config.data_dir.clone()));
        let mut c = Self::start_with(config, store, blobs, runtime, token, id, shutdown).await?;
        c.builtin_brokers = builtin;
        c.internal_dns = true;
        Ok(c)
    }

    /// [`Controller::start`] on a given runtime (tests use [`crate::runtime::fake::FakeRuntime`]).
    pub async fn start_on(
        config: Config,
        runtime: Arc<dyn ContainerRuntime>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Controller> {
        let mut config = config;
        let (store, blobs) = open_data(&mut config)?;
        let token = crate::http::auth::ensure_token(&store, &config.data_dir)?;
        let id = controller_id(&config, &store)?;
        Self::start_with(config, store, blobs, runtime, token, id, shutdown).await
    }

    async fn start_with(
        config: Config,
        store: Store,
        blobs: BlobStore,
        runtime: Arc<dyn ContainerRuntime>,
        token: crate::http::auth::TokenSetup,
        controller_id: String,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Controller> {
        crate::runtime::stack::ensure(runtime.as_ref(), &config.stack_image, config.build_stack)
            .await?;
        let network = prepare_network(runtime.as_ref(), &controller_id, &config, &store).await?;
        fail_interrupted_stagings(&store)?;
        let router_token = crate::http::auth::ensure_router_token(&store, &config.data_dir)?;
        let api_listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let router_listener = match config.router_addr() {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot listen on {a} for the router"))?,
            ),
            None => None,
        };
        let router_addr = router_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;
        let parts = Parts::build(Wiring {
            route_port: route_port(&config, router_addr),
            config,
            store,
            blobs,
            runtime,
            probe: Arc::new(NetworkProbe),
            builtin_router: router_addr.map(|_| pier_router::InFlight::default()),
            drain: None,
            tokens: crate::http::auth::Tokens {
                admin: token.hash,
                router: router_token.hash,
            },
            controller_id,
            network,
            shutdown,
        })?;
        Ok(Controller {
            api_addr: api_listener.local_addr()?,
            router_addr,
            new_token: token.new_token,
            token_file: token.token_file,
            parts,
            api_listener,
            router_listener,
            builtin_brokers: None,
            internal_dns: false,
        })
    }

    /// Adopts what runs, then serves until shutdown. Instances keep running after it returns.
    pub async fn run(self) -> anyhow::Result<()> {
        let p = self.parts;
        let shutdown = p.shutdown.clone();
        let mut tasks = tokio::task::JoinSet::new();
        if self.internal_dns {
            let (nets, names) = (p.instances.networks().watch(), p.routing.internal());
            tasks.spawn(crate::network::dns::serve(nets, names, shutdown.clone()));
        }
        // The first pass adopts running instances and publishes the first route table.
        if let Err(e) = p.reconciler.once().await {
            tracing::warn!(error = %e, "first reconcile pass failed; retrying in the loop");
        }
        // The built-in brokers, before the operations on their instances are followed on.
        if let Some((id, dir)) = &self.builtin_brokers {
            let networks = p.instances.networks().clone();
            let brokers = p.api.apps.brokers();
            let started =
                crate::builtin_brokers::start(brokers, networks, id, dir, shutdown.clone()).await;
            if let Err(e) = started {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "the built-in brokers are not available"
                );
            }
        }
        // Broker operations a stopped controller left in progress are followed on.
        if let Err(e) = p.api.apps.resume_operations() {
            tracing::warn!(error = %e, "cannot resume the broker operations in progress");
        }
        // …and bindings it asked a broker for and did not record are unbound there (read now,
        // before the API serves and new binds start).
        let (apps, left) = (p.api.apps.clone(), p.api.apps.left_pending());
        tasks.spawn(async move {
            if let Err(e) = async { apps.unbind_pending(left?).await }.await {
                tracing::warn!(error = %e, "cannot settle the bindings a stopped controller left pending");
            }
        });
        tasks.spawn(crate::logs::run_persister(p.logs.clone(), shutdown.clone()));
        tasks.spawn(p.reconciler.clone().run());
        tasks.spawn(p.reconciler.clone().follow_events());
        tasks.spawn(p.watcher.run(shutdown.clone()));
        tasks.spawn(
            p.instances
                .clone()
                .sample_usage(p.usage_every, shutdown.clone()),
        );
        if let Some(listener) = self.router_listener {
            let rx = p.routing.subscribe();
            let opts = pier_router::ProxyOptions {
                access_log: Some(access_log(Arc::downgrade(&p.logs), p.stats.clone())),
                in_flight: p.builtin_router.clone().unwrap_or_default(),
                ..pier_router::ProxyOptions::default()
            };
            let sd = shutdown.clone();
            tasks.spawn(async move {
                if let Err(e) = pier_router::serve(listener, rx, opts, sd).await {
                    tracing::error!(error = %e, "built-in router stopped");
                }
            });
        }
        let app = crate::http::router(p.api);
        crate::http::serve::serve(self.api_listener, app, p.serve, shutdown.clone()).await?;
        while tasks.join_next().await.is_some() {}
        // Lines published while the tasks ended.
        let logs = p.logs.clone();
        let _ = tokio::task::spawn_blocking(move || logs.persist(true)).await;
        p.store.flush()?;
        Ok(())
    }
}

/// Everything the subsystems are built from.
pub(crate) struct Wiring {
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) blobs: BlobStore,
    pub(crate) runtime: Arc<dyn ContainerRuntime>,
    pub(crate) probe: Arc<dyn HealthProbe>,
    /// The built-in router's in-flight counts, when it runs (standalone routers report theirs
    /// in their polls).
    pub(crate) builtin_router: Option<pier_router::InFlight>,
    /// For tests: a drain other than the routers'.
    pub(crate) drain: Option<Arc<dyn Drain>>,
    pub(crate) tokens: crate::http::auth::Tokens,
    pub(crate) controller_id: String,
    pub(crate) network: crate::network::NetworkSet,
    pub(crate) route_port: Option<u16>,
    pub(crate) shutdown: CancellationToken,
}

impl Parts {
    pub(crate) fn build(w: Wiring) -> anyhow::Result<Parts> {
        let Wiring {
            config,
            store,
            blobs,
            runtime,
            probe,
            builtin_router,
            drain,
            tokens,
            controller_id,
            network,
            route_port,
            shutdown,
        } = w;
        let routing = Arc::new(Routing::new());
        let (addresses, networks) =
            open_networks(&config, &store, &runtime, &controller_id, network, &routing)?;
        let logs = open_logs(&config, &store)?;
        let events = Events::new(store.clone(), logs.clone());
        let (packs, images, stager) = staging(&config, &controller_id, &runtime, &blobs, &logs)?;
        let instances = Instances::new(InstanceDeps {
            runtime: runtime.clone(),
            store: store.clone(),
            events: events.clone(),
            logs: logs.clone(),
            images: images.clone(),
            addresses: addresses.clone(),
            networks: networks.clone(),
            routing: routing.clone(),
            probe,
            drain: drain.unwrap_or_else(|| router_drain(builtin_router.clone(), &addresses)),
            settings: config.instance_settings(&controller_id),
        });
        let reconciler = Reconciler::new(ReconcilerDeps {
            runtime: runtime.clone(),
            store: store.clone(),
            blobs: blobs.clone(),
            instances: instances.clone(),
            addresses: addresses.clone(),
            stager: stager.clone(),
            images,
            events: events.clone(),
            blob_grace: Duration::from_secs(config.package_gc_grace_secs),
            shutdown: shutdown.clone(),
        });
        let locks = Arc::new(AppLocks::default());
        let stats = Arc::new(RequestStats::default());
        let apps = AppService::new(AppDeps {
            store: store.clone(),
            blobs: blobs.clone(),
            events: events.clone(),
            logs: logs.clone(),
            locks: locks.clone(),
            instances: instances.clone(),
            reconciler: reconciler.clone(),
            stager,
            runtime,
            settings: config.app_settings(route_port),
        });
        let watcher = Watcher {
            store: store.clone(),
            locks,
            instances: instances.clone(),
            stats: stats.clone(),
            events,
            reconciler: reconciler.clone(),
        };
        let api = ApiState {
            tenancy: crate::tenancy::Tenancy::new(store.clone(), apps.clone(), networks),
            apps,
            logs: logs.clone(),
            routing: routing.clone(),
            addresses,
            buildpacks: packs,
            blobs,
            stats: stats.clone(),
            tokens,
            users: open_users(&config, &store)?,
            audit: store.audit()?,
            roles: Arc::new(crate::roles::Roles::new(store.clone())?),
            limits: config.api_limits(),
            stack_image: config.stack_image.clone(),
            shutdown: shutdown.clone(),
        };
        Ok(Parts {
            builtin_router,
            serve: config.serve_options()?,
            api,
            store,
            logs,
            reconciler,
            watcher,
            routing,
            instances,
            usage_every: Duration::from_millis(config.stats_interval_ms),
            stats,
            shutdown,
        })
    }
}

/// The users service on the system clock.
fn open_users(config: &Config, store: &Store) -> anyhow::Result<Arc<crate::users::Users>> {
    let clock = Arc::new(crate::users::SystemClock);
    Ok(Arc::new(crate::users::Users::open(
        store,
        config.user_settings(),
        clock,
    )?))
}

/// The buildpacks, the image builder and the stager, which uses both.
fn staging(
    config: &Config,
    controller_id: &str,
    runtime: &Arc<dyn ContainerRuntime>,
    blobs: &BlobStore,
    logs: &Arc<LogBroker>,
) -> anyhow::Result<(Arc<Buildpacks>, Arc<crate::images::Images>, Arc<Stager>)> {
    let buildpacks = Arc::new(Buildpacks::install(&config.data_dir)?);
    let images = Arc::new(
        crate::images::Images::new(
            runtime.clone(),
            blobs.clone(),
            controller_id,
            &config.stack_image,
        )
        .with_registry(config.registry.clone().map(crate::registry::Registry::new)),
    );
    let stager = Arc::new(Stager::new(
        runtime.clone(),
        blobs.clone(),
        images.clone(),
        logs.clone(),
        buildpacks.clone(),
        config.staging_settings(controller_id),
    ));
    Ok((buildpacks, images, stager))
}

/// How a removed instance is drained when the caller gave no other way: on the built-in router's
/// in-flight counts and the standalone routers' acknowledgements.
fn router_drain(
    builtin: Option<pier_router::InFlight>,
    addresses: &Arc<AddressPool>,
) -> Arc<dyn Drain> {
    Arc::new(crate::drain::RouterDrain {
        builtin,
        addresses: addresses.clone(),
    })
}

/// The built-in router's access log: each request becomes an `RTR/0` line in its app's log,
/// timed when the response ended, and its outcome feeds canary analysis.
fn access_log(
    logs: std::sync::Weak<LogBroker>,
    stats: Arc<RequestStats>,
) -> Arc<dyn pier_router::AccessLog> {
    Arc::new(move |entry: pier_router::AccessLogEntry| {
        let (Some(logs), Some(guid)) = (logs.upgrade(), entry.app_guid.as_deref()) else {
            return;
        };
        if let Some(id) = entry.instance_id.as_deref() {
            stats.record(id, entry.status, entry.duration.as_secs_f64() * 1000.0);
        }
        let ended = time::OffsetDateTime::from(entry.started_at + entry.duration);
        logs.publish(
            guid,
            &pier_api::LogSource::Router(0),
            pier_api::LogStream::Out,
            &entry.to_rtr_line(),
            ended,
        );
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_data_dir_is_private() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut config = Config::for_tests(dir.clone());
        let (store, _blobs) = open_data(&mut config).unwrap();
        let token = crate::http::auth::ensure_token(&store, &config.data_dir).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for sub in ["db", "blobs", "tmp"] {
            assert_eq!(mode(&dir.join(sub)), 0o700, "{sub}");
        }
        assert_eq!(mode(&token.token_file), 0o600);
    }
}

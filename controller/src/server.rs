//! Wiring: opens the store, reaches Docker, makes sure the stack exists, binds the API and the
//! built-in router, and owns the long-lived tasks.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use bollard::Docker;
use pier_api::AppName;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::addresses::{AddressPool, SystemClock};
use crate::blobs::BlobStore;
use crate::config::Config;
use crate::instances::Instances;
use crate::logs::LogBroker;
use crate::network::InstanceNetwork;
use crate::routing::Routing;
use crate::store::{AppRecord, Store};

/// What every handler and task shares.
pub struct Ctx {
    pub config: Config,
    pub store: Store,
    pub blobs: BlobStore,
    pub docker: Docker,
    pub instances: Instances,
    pub logs: LogBroker,
    pub routing: Routing,
    /// The Docker network instances attach to, and the allocator of their addresses on it.
    pub network: InstanceNetwork,
    pub addresses: AddressPool,
    /// Per-instance request outcomes from the router, for canary analysis.
    pub request_stats: crate::deployments::RequestStats,
    pub controller_id: String,
    pub buildpacks_dir: PathBuf,
    pub token_hash: [u8; 32],
    /// Apps with a staging running in this process.
    pub active_stagings: Mutex<HashSet<String>>,
    app_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Port apps are reached at through the router, for URLs.
    pub route_port: Option<u16>,
    /// Requests the built-in router has in flight per instance; `drain` waits on it.
    pub in_flight: pier_router::InFlight,
    pub shutdown: CancellationToken,
}

impl Ctx {
    /// One lock per app: operations that change an app's droplet or state are serialized.
    pub fn app_lock(&self, name: &AppName) -> Arc<tokio::sync::Mutex<()>> {
        self.app_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    pub fn url_for(&self, host: &str, path: &str) -> String {
        match self.route_port {
            Some(80) | None => format!("http://{host}{path}"),
            Some(p) => format!("http://{host}:{p}{path}"),
        }
    }

    /// Records an event in the store and an `API/0` log line.
    pub fn event(&self, app: &AppRecord, kind: &str, message: &str) {
        if let Err(e) = self.store.add_event(&app.guid, kind, message, "admin") {
            tracing::warn!(error = %e, "could not record event");
        }
        self.logs.publish(
            &app.guid,
            "API/0",
            pier_api::LogStream::Out,
            &format!("{message} (by admin)"),
            time::OffsetDateTime::now_utc(),
        );
    }
}

/// A running controller.
pub struct Controller {
    pub api_addr: SocketAddr,
    pub router_addr: Option<SocketAddr>,
    /// The admin token, when this start generated it.
    pub new_token: Option<String>,
    pub token_file: PathBuf,
    pub ctx: Arc<Ctx>,
    api_listener: Option<TcpListener>,
    router_listener: Option<TcpListener>,
}

impl Controller {
    /// Prepares everything and binds the listeners; nothing is served until [`Controller::run`].
    pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Controller> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
        let mut config = config;
        config.data_dir = config.data_dir.canonicalize()?;
        let store = Store::open(&config.data_dir.join("db")).with_context(|| {
            format!(
                "cannot open the store in {} (is another pier-controller using it?)",
                config.data_dir.display()
            )
        })?;
        let blobs = BlobStore::open(&config.data_dir)?;
        let token = crate::auth::ensure_token(&store, &config.data_dir)?;
        let controller_id = match &config.controller_id {
            Some(id) => id.clone(),
            None => match store.meta_get("controller_id")? {
                Some(id) => String::from_utf8_lossy(&id).into_owned(),
                None => {
                    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
                    store.meta_put("controller_id", id.as_bytes())?;
                    id
                }
            },
        };
        let docker = crate::docker::connect().await?;
        crate::stack::ensure(&docker, &config.stack_image, config.build_stack).await?;
        let network =
            crate::network::ensure(&docker, &controller_id, config.instance_subnet, &store).await?;
        // For scripts/down, which removes the network once the instances are gone.
        std::fs::write(config.data_dir.join("instance-network"), &network.name)?;
        let routing = Routing::new();
        let addresses = AddressPool::open(
            store.db(),
            network.subnet,
            config.address_quarantine(),
            routing.epoch(),
            Arc::new(SystemClock),
        )
        .context("cannot load the instance addresses from the store")?;
        let (in_use, quarantined, free) = addresses.counts();
        tracing::info!(network = %network.name, subnet = %network.subnet, in_use, quarantined, free,
            quarantine_secs = config.address_quarantine_secs, "instance addresses");
        let buildpacks_dir = crate::staging::install_buildpacks(&config.data_dir)?;

        // A staging that was running when the controller died did not finish.
        for mut app in store.list_apps()? {
            if app.staging.take().is_some() {
                store.put_app(&app)?;
                store.add_event(
                    &app.guid,
                    "staging_failed",
                    "staging was interrupted by a controller restart; push again",
                    "pier",
                )?;
            }
        }

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
        let route_port = match &config.router_url {
            Some(u) => u
                .rsplit_once(':')
                .and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
                .or(Some(80)),
            None => router_addr.map(|a| a.port()),
        };
        // Log buffers of the apps that still exist come back with their seq numbers.
        let logs = LogBroker::new(config.log_buffer_lines)
            .with_dir(config.data_dir.join("logs"))
            .with_rate_limit(config.log_rate_limit);
        let app_guids = store.list_apps()?.into_iter().map(|a| a.guid).collect();
        logs.restore(&app_guids)
            .context("cannot read the saved log buffers")?;
        let ctx = Arc::new(Ctx {
            logs,
            config,
            store,
            blobs,
            docker,
            instances: Instances::default(),
            routing,
            network,
            addresses,
            request_stats: Default::default(),
            controller_id,
            buildpacks_dir,
            token_hash: token.hash,
            active_stagings: Mutex::new(HashSet::new()),
            app_locks: Mutex::new(HashMap::new()),
            route_port,
            in_flight: pier_router::InFlight::default(),
            shutdown,
        });
        Ok(Controller {
            api_addr: api_listener.local_addr()?,
            router_addr,
            new_token: token.new_token,
            token_file: token.token_file,
            ctx,
            api_listener: Some(api_listener),
            router_listener,
        })
    }

    /// Adopts what runs, then serves until shutdown. Instances keep running after it returns.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let ctx = self.ctx.clone();
        let shutdown = ctx.shutdown.clone();
        // The first pass adopts running instances and publishes the first route table.
        if let Err(e) = crate::instances::reconcile_once(&ctx, &shutdown).await {
            tracing::warn!(error = %e, "first reconcile pass failed; retrying in the loop");
        }
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(crate::logs::run_persister(ctx.clone(), shutdown.clone()));
        tasks.spawn(crate::instances::run_reconciler(
            ctx.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(crate::deployments::run_watcher(
            ctx.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(crate::instances::follow_docker_events(
            ctx.clone(),
            shutdown.clone(),
        ));
        if let Some(listener) = self.router_listener.take() {
            let rx = ctx.routing.subscribe();
            let opts = pier_router::ProxyOptions {
                access_log: Some(crate::logs_http::access_log(Arc::downgrade(&ctx))),
                in_flight: ctx.in_flight.clone(),
                ..pier_router::ProxyOptions::default()
            };
            let sd = shutdown.clone();
            tasks.spawn(async move {
                if let Err(e) = pier_router::serve(listener, rx, opts, sd).await {
                    tracing::error!(error = %e, "built-in router stopped");
                }
            });
        }
        let listener = self
            .api_listener
            .take()
            .ok_or_else(|| anyhow::anyhow!("controller already running"))?;
        let app = crate::http::router(ctx.clone());
        let sd = shutdown.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { sd.cancelled().await })
            .await?;
        while tasks.join_next().await.is_some() {}
        // Lines published while the tasks ended.
        let c = ctx.clone();
        let _ = tokio::task::spawn_blocking(move || c.logs.persist(true)).await;
        ctx.store.flush()?;
        Ok(())
    }
}

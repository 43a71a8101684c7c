//! `pier-router`: the standalone router. Follows the controller's route table and proxies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use pier_router::{
    follow_controller, serve_admin, serve_threads, AccessLog, ProxyOptions, SyncOptions,
};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod access_forward;

/// Pier's HTTP router: routes requests by Host to app instances, learning routes from the
/// controller.
#[derive(Debug, Parser)]
#[command(name = "pier-router", version)]
struct Config {
    /// Address to accept client traffic on (port 0 picks a free port).
    #[arg(long, env = "PIER_ROUTER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address to accept TLS client traffic on; empty turns TLS off. Needs --tls-cert and
    /// --tls-key.
    #[arg(long, env = "PIER_ROUTER_TLS_LISTEN", default_value = "")]
    tls_listen: String,
    /// PEM certificate chain served to every TLS client, e.g. a wildcard for the default domain
    /// (`*.apps.example.com`).
    #[arg(long, env = "PIER_ROUTER_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "PIER_ROUTER_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Address for `/metrics` and `/health`; empty turns the admin listener off.
    #[arg(long, env = "PIER_ROUTER_ADMIN_LISTEN", default_value = "")]
    admin_listen: String,
    /// The controller's API base URL.
    #[arg(
        long,
        env = "PIER_ROUTER_CONTROLLER",
        default_value = "http://127.0.0.1:9000"
    )]
    controller: String,
    /// For an https:// --controller: a PEM file of CA certificates to trust besides the
    /// system's (the controller's own certificate, if it is self-signed).
    #[arg(long, env = "PIER_ROUTER_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Bearer token for the controller's API.
    #[arg(
        long,
        env = "PIER_ROUTER_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    token: String,
    /// File holding the bearer token (used when --token is empty), e.g. the controller's
    /// `admin-token` file in its data dir.
    #[arg(long, env = "PIER_ROUTER_TOKEN_FILE", default_value = "")]
    token_file: String,
    /// Serve a fixed route table from this JSON file (a `pier_api::RouteTable`, as the
    /// controller's `GET /v1/routes` returns it) instead of following the controller; for
    /// benchmarks and tests. The controller options and token are then ignored.
    #[arg(long, env = "PIER_ROUTER_ROUTES_FILE")]
    routes_file: Option<PathBuf>,
    /// Time allowed to connect to an instance (`500ms`, `5s`, `2m`).
    #[arg(long, env = "PIER_ROUTER_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Time allowed for an instance to send its response headers; past it the client gets 504.
    #[arg(long, env = "PIER_ROUTER_UPSTREAM_TIMEOUT", default_value = "900s", value_parser = parse_duration)]
    upstream_timeout: Duration,
    /// Longest a request may take from arrival until its response ends; past it a request still
    /// waiting gets 504 and a streaming response is cut off (WebSockets are not limited).
    #[arg(long, env = "PIER_ROUTER_MAX_REQUEST_TIME", default_value = "900s", value_parser = parse_duration)]
    max_request_time: Duration,
    /// Time a client has to send a request's headers; also how long an idle keep-alive
    /// connection is kept (hyper times both with one clock).
    #[arg(long, env = "PIER_ROUTER_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// Largest request head accepted, in bytes; bigger gets 431.
    #[arg(long, env = "PIER_ROUTER_MAX_HEADER_BYTES", default_value_t = 65536)]
    max_header_bytes: usize,
    /// Client connections served at once.
    #[arg(long, env = "PIER_ROUTER_MAX_CONNECTIONS", default_value_t = 10000)]
    max_connections: usize,
    /// Longest a request body may go without a byte from the client; then the exchange is
    /// aborted (408 if the app has not answered yet).
    #[arg(long, env = "PIER_ROUTER_BODY_READ_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    body_read_timeout: Duration,
    /// Connections to instances open at once (idle pooled ones included); at the limit a
    /// request waits up to --connect-timeout for one, then gets 503 `upstream_limit`.
    #[arg(
        long,
        env = "PIER_ROUTER_MAX_UPSTREAM_CONNECTIONS",
        default_value_t = 10000
    )]
    max_upstream_connections: usize,
    /// Connections to instances one client connection may use at once: the HTTP/2 concurrent
    /// stream limit (an HTTP/1 client uses one at a time).
    #[arg(
        long,
        env = "PIER_ROUTER_MAX_UPSTREAM_PER_CLIENT",
        default_value_t = 128
    )]
    max_upstream_per_client: usize,
    /// Comma-separated CIDR ranges of proxies in front of the router whose X-Forwarded-Host,
    /// X-Forwarded-Proto and Forwarded headers are passed on (e.g. `10.0.0.0/8,192.0.2.7/32`);
    /// empty: trust no client, the router sets them itself.
    #[arg(long, env = "PIER_ROUTER_TRUSTED_PROXIES", default_value = "", value_parser = parse_cidrs)]
    trusted_proxies: Cidrs,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, env = "PIER_ROUTER_DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Threads serving client traffic, each with its own listener (SO_REUSEPORT) and connection
    /// pool; 0 means one per CPU core.
    #[arg(long, env = "PIER_ROUTER_THREADS", default_value_t = 0)]
    threads: usize,
    /// Log filter (tracing-subscriber syntax).
    #[arg(long, env = "PIER_ROUTER_LOG", default_value = "info")]
    log: String,
}

/// A list of CIDR ranges (clap needs one type for the whole flag).
#[derive(Debug, Clone)]
struct Cidrs(Vec<ipnet::IpNet>);

fn parse_cidrs(s: &str) -> Result<Cidrs, String> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            // A bare address is a range of one.
            c.parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("{c:?} is not a CIDR range: use e.g. 10.0.0.0/8 or 192.0.2.7"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Cidrs)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: use e.g. 500ms, 5s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?} has an unknown unit: use ms, s or m")),
    }
}

impl Config {
    fn token(&self) -> Result<String> {
        if !self.token.is_empty() {
            return Ok(self.token.clone());
        }
        if self.token_file.is_empty() {
            bail!("no controller token: pass --token or --token-file (PIER_ROUTER_TOKEN / PIER_ROUTER_TOKEN_FILE)");
        }
        let path = PathBuf::from(&self.token_file);
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        let token = token.trim().to_string();
        if token.is_empty() {
            bail!("the token file {} is empty", path.display());
        }
        Ok(token)
    }
}

/// What the configuration says once it is checked, before any port is bound.
struct Checked {
    /// The fixed table of `--routes-file`, if it is given.
    static_table: Option<pier_api::RouteTable>,
    /// The controller's token (empty with a fixed table).
    token: String,
    admin: Option<SocketAddr>,
    tls: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
}

impl Config {
    /// Checks everything a bad flag could break, so nothing is bound before it is known to be
    /// right.
    fn check(&self) -> Result<Checked> {
        let static_table = match &self.routes_file {
            Some(path) => Some(load_routes_file(path)?),
            None => None,
        };
        let token = match static_table {
            Some(_) => String::new(),
            None => self.token()?,
        };
        let admin: Option<SocketAddr> = if self.admin_listen.is_empty() {
            None
        } else {
            Some(self.admin_listen.parse().with_context(|| {
                format!("--admin-listen {:?} is not an address", self.admin_listen)
            })?)
        };
        let tls = if self.tls_listen.is_empty() {
            None
        } else {
            let addr: SocketAddr = self
                .tls_listen
                .parse()
                .with_context(|| format!("--tls-listen {:?} is not an address", self.tls_listen))?;
            let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
                bail!("--tls-listen needs --tls-cert and --tls-key (PIER_ROUTER_TLS_CERT / PIER_ROUTER_TLS_KEY)");
            };
            Some((addr, pier_router::load_tls(cert, key)?))
        };
        pier_client::check_base_url(&self.controller)
            .with_context(|| format!("--controller {:?} is not a URL", self.controller))?;
        if static_table.is_none() {
            // Reads --ca-cert now: a bad file stops the router before it binds anything.
            pier_client::Client::builder(&self.controller)
                .ca_cert_file(self.ca_cert.clone())
                .build()
                .context("--ca-cert")?;
            if pier_client::is_cleartext_remote(&self.controller) {
                tracing::warn!(
                    controller = %self.controller,
                    "sending the router token in clear text; use an https:// controller"
                );
            }
        }
        Ok(Checked {
            static_table,
            token,
            admin,
            tls,
        })
    }

    fn proxy_options(&self, access_log: Option<Arc<dyn AccessLog>>) -> ProxyOptions {
        ProxyOptions {
            connect_timeout: self.connect_timeout,
            upstream_timeout: self.upstream_timeout,
            max_request_time: self.max_request_time,
            header_read_timeout: self.header_read_timeout,
            max_header_bytes: self.max_header_bytes,
            max_connections: self.max_connections,
            body_read_timeout: self.body_read_timeout,
            max_upstream_connections: self.max_upstream_connections,
            max_upstream_per_client: self.max_upstream_per_client,
            trusted_proxies: self.trusted_proxies.0.clone(),
            drain_timeout: self.drain_timeout,
            access_log,
            ..ProxyOptions::default()
        }
    }

    fn threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// Every listener, bound: one client socket per thread (plain, and TLS if asked for) and the
/// admin listener.
struct Listeners {
    plain: Vec<std::net::TcpListener>,
    tls: Option<(Vec<std::net::TcpListener>, Arc<rustls::ServerConfig>)>,
    admin: Option<tokio::net::TcpListener>,
}

impl Listeners {
    async fn bind(
        config: &Config,
        tls: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
        admin: Option<SocketAddr>,
    ) -> Result<Self> {
        let threads = config.threads();
        let plain = pier_router::bind_reuseport(config.listen, threads)
            .with_context(|| format!("binding {}", config.listen))?;
        let tls = match tls {
            Some((a, tls_config)) => Some((
                pier_router::bind_reuseport(a, threads)
                    .with_context(|| format!("binding the TLS listener {a}"))?,
                tls_config,
            )),
            None => None,
        };
        let admin = match admin {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("binding the admin listener {a}"))?,
            ),
            None => None,
        };
        Ok(Listeners { plain, tls, admin })
    }

    /// Prints the bound addresses: with port 0 they are how a caller learns the ports.
    fn announce(&self) -> Result<()> {
        if let Some(l) = self.plain.first() {
            println!("pier-router listening on {}", l.local_addr()?);
        }
        if let Some(l) = self.tls.as_ref().and_then(|(l, _)| l.first()) {
            println!("pier-router TLS listening on {}", l.local_addr()?);
        }
        if let Some(l) = &self.admin {
            println!("pier-router admin listening on {}", l.local_addr()?);
        }
        Ok(())
    }
}

// This runtime only follows the controller, serves the admin listener and waits for signals;
// client traffic runs on `serve_threads`' own single-threaded runtimes.
#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&config.log)
                .with_context(|| format!("--log {:?} is not a valid filter", config.log))?,
        )
        .with_writer(std::io::stderr)
        .init();
    match pier_router::raise_open_file_limit() {
        Ok((before, after)) => tracing::info!(before, after, "open-file limit (RLIMIT_NOFILE)"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let checked = config.check()?;

    let shutdown = CancellationToken::new();
    // Access lines go to the controller as the apps' RTR logs (not with a fixed table).
    let access_log = match checked.static_table {
        None => Some(access_forward::start(
            &config.controller,
            &checked.token,
            config.ca_cert.clone(),
            shutdown.clone(),
        )?),
        Some(_) => None,
    };
    let opts = config.proxy_options(access_log);
    let metrics = opts.metrics.clone();
    let listeners = Listeners::bind(&config, checked.tls, checked.admin).await?;
    // Registered before the listening line: a SIGTERM sent the moment it is printed drains.
    let stop = pier_router::stop_signals().context("listening for SIGTERM and SIGINT")?;
    listeners.announce()?;

    let (tx, rx) = tokio::sync::watch::channel(None);
    let sync = publish_routes(
        &config,
        checked.static_table,
        checked.token,
        opts.in_flight.clone(),
        tx,
        &shutdown,
    );
    if let Some(l) = listeners.admin {
        tokio::spawn(serve_admin(l, metrics, shutdown.clone()));
    }
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        let signal = stop.await;
        tracing::info!(signal, "shutting down");
        stopping.cancel();
    });

    let data_plane = shutdown.clone();
    let (plain, tls) = (listeners.plain, listeners.tls);
    tokio::task::spawn_blocking(move || serve_threads(plain, tls, rx, opts, data_plane))
        .await
        .context("the data plane panicked")??;
    shutdown.cancel();
    let _ = sync.await;
    Ok(())
}

/// Publishes the route table: the fixed one, or the controller's as it changes.
fn publish_routes(
    config: &Config,
    static_table: Option<pier_api::RouteTable>,
    token: String,
    in_flight: pier_router::InFlight,
    tx: tokio::sync::watch::Sender<Option<Arc<pier_api::RouteTable>>>,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    match static_table {
        Some(table) => {
            tx.send_replace(Some(Arc::new(table)));
            // Keep the sender alive so the table stays published.
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                drop(tx);
            })
        }
        None => tokio::spawn(follow_controller(
            SyncOptions {
                controller: config.controller.clone(),
                token,
                in_flight,
                ca_cert: config.ca_cert.clone(),
                ..SyncOptions::default()
            },
            tx,
            shutdown.clone(),
        )),
    }
}

fn load_routes_file(path: &std::path::Path) -> Result<pier_api::RouteTable> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the routes file {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a route table: expected JSON like {{\"epoch\":\"e\",\"version\":1,\"routes\":[...]}}",
            path.display()
        )
    })
}

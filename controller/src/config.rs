//! The controller's configuration: one clap struct; every field has an env var and a default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::network::addresses::Ipv4Net;

#[derive(Debug, Clone, Parser)]
#[command(name = "pier-controller", version, about = "Pier's control plane")]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the controller (the default).
    Serve,
    /// Print the stack image's name (`--stack-image`, or the default) and exit.
    StackImage,
    /// Build (or rebuild) the stack image and exit.
    BuildStack {
        /// Only build it when it is not in Docker yet.
        #[arg(long)]
        if_missing: bool,
    },
    /// Print the services image's name (the built-in brokers' PostgreSQL and Redis) and exit.
    ServicesImage,
    /// Build (or rebuild) the services image and exit.
    BuildServicesImage {
        /// Only build it when it is not in Docker yet.
        #[arg(long)]
        if_missing: bool,
    },
    /// Print the platform image's name (this pier-controller and pier-router in an image, to run
    /// them as containers or Swarm services; docs/swarm.md) and exit.
    PlatformImage,
    /// Build the platform image (and its base, once, when missing), print its name and exit.
    BuildPlatformImage {
        /// Only build it when it is not in Docker yet.
        #[arg(long)]
        if_missing: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address of the API.
    #[arg(long, env = "PIER_LISTEN", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,

    /// A request head must arrive within this many seconds, or the API closes the connection.
    #[arg(long, env = "PIER_API_HEADER_TIMEOUT", default_value_t = 10)]
    pub api_header_timeout_secs: u64,

    /// An API connection with no request in progress and no bytes moving for this many seconds
    /// is closed.
    #[arg(long, env = "PIER_API_IDLE_TIMEOUT", default_value_t = 60)]
    pub api_idle_timeout_secs: u64,

    /// Most API connections at once; more wait until one closes.
    #[arg(long, env = "PIER_API_MAX_CONNECTIONS", default_value_t = 1024)]
    pub api_max_connections: usize,

    /// PEM certificate chain of the API: given with --tls-key, the API speaks only HTTPS.
    #[arg(long, env = "PIER_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "PIER_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// Where the store, blobs and the admin token live.
    #[arg(long, env = "PIER_DATA_DIR", default_value = ".pier-data")]
    pub data_dir: PathBuf,

    /// Apps get NAME.DOMAIN as their default route.
    #[arg(long, env = "PIER_DOMAIN", default_value = "localhost")]
    pub domain: String,

    /// Address of the built-in router; `none` runs no router in-process (use `pier-router`).
    #[arg(long, env = "PIER_ROUTER_LISTEN", default_value = "127.0.0.1:8080")]
    pub router_listen: String,

    /// The URL apps are reached at, for display (`http://NAME.DOMAIN:PORT`). Defaults to the
    /// built-in router's port.
    #[arg(long, env = "PIER_ROUTER_URL")]
    pub router_url: Option<String>,

    /// The stack image instances and stagings run in.
    #[arg(long, env = "PIER_STACK_IMAGE", default_value = crate::runtime::stack::DEFAULT_STACK_IMAGE)]
    pub stack_image: String,

    /// Build the stack image when it is missing (otherwise refuse to start).
    #[arg(long, env = "PIER_BUILD_STACK", default_value_t = true, action = clap::ArgAction::Set)]
    pub build_stack: bool,

    /// Largest package upload, in bytes (compressed).
    #[arg(long, env = "PIER_MAX_PACKAGE_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub max_package_bytes: u64,

    /// Largest total size of a package's files once extracted, in bytes.
    #[arg(long, env = "PIER_MAX_EXTRACTED_BYTES", default_value_t = 4 * 1024 * 1024 * 1024)]
    pub max_extracted_bytes: u64,

    /// Largest staging output (the droplet and its metadata, as `/tmp/out` in the staging
    /// container), in bytes.
    #[arg(long, env = "PIER_MAX_DROPLET_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    pub max_droplet_bytes: u64,

    /// Most staging output shown (to the pushing CLI and in the app's log), in bytes; past it,
    /// lines are counted and the count is shown.
    #[arg(long, env = "PIER_MAX_STAGING_OUTPUT_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_staging_output_bytes: u64,

    /// Most warm staging containers kept: after an app stages, the container for its next
    /// staging is made ahead of need, so a re-push skips creating and starting one (each costs
    /// an idle process, no CPU; see docs/staging.md). 0 turns this off.
    #[arg(long, env = "PIER_WARM_STAGERS", default_value_t = 8)]
    pub warm_stagers: usize,

    /// Most entries (files, folders, links) a package may hold.
    #[arg(long, env = "PIER_MAX_PACKAGE_ENTRIES", default_value_t = 200_000)]
    pub max_package_entries: u64,

    /// An uploaded package no app refers to is deleted once this many seconds old (uploads wait
    /// this long for their build).
    #[arg(long, env = "PIER_PACKAGE_GC_GRACE", default_value_t = 3600)]
    pub package_gc_grace_secs: u64,

    /// A staging that runs longer is ended, in seconds.
    #[arg(long, env = "PIER_STAGING_TIMEOUT", default_value_t = 900)]
    pub staging_timeout_secs: u64,

    /// Default memory limit of an instance, in MiB.
    #[arg(long, env = "PIER_DEFAULT_MEMORY_MB", default_value_t = 256)]
    pub default_memory_mb: u64,

    /// Default disk quota of an instance, in MiB.
    #[arg(long, env = "PIER_DEFAULT_DISK_MB", default_value_t = 1024)]
    pub default_disk_mb: u64,

    /// Most processes (threads included) one instance may run.
    #[arg(long, env = "PIER_PIDS_LIMIT", default_value_t = 1024)]
    pub pids_limit: i64,

    /// Seconds between SIGTERM and SIGKILL when an instance stops.
    #[arg(long, env = "PIER_STOP_GRACE", default_value_t = 10)]
    pub stop_grace_secs: u64,

    /// Base wait before the third restart of a crashing instance, in milliseconds (doubles up to
    /// 32x). Cloud Foundry's is 30 s; tests use a short one.
    #[arg(long, env = "PIER_CRASH_BACKOFF_BASE_MS", default_value_t = 30_000)]
    pub crash_backoff_base_ms: u64,

    /// Identifies this controller's Docker objects (label `pier.controller`). Defaults to an id
    /// generated once and kept in the data dir.
    #[arg(long, env = "PIER_CONTROLLER_ID")]
    pub controller_id: Option<String>,

    /// Lines of log kept per app.
    #[arg(long, env = "PIER_LOG_BUFFER_LINES", default_value_t = 1000)]
    pub log_buffer_lines: usize,

    /// Revisions kept per app; older droplets are deleted.
    #[arg(long, env = "PIER_REVISIONS_KEPT", default_value_t = DEFAULT_REVISIONS_KEPT)]
    pub revisions_kept: usize,

    /// Run the built-in PostgreSQL and Redis brokers (in process, on a loopback port) and
    /// register them as the platform-wide broker `pier-services`; `false` leaves them off.
    #[arg(long, env = "PIER_BUILTIN_BROKERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub builtin_brokers: bool,

    /// Seconds a service broker has to answer one request (the OSB client's timeout); a
    /// provision or bind that times out is cleaned up (orphan mitigation).
    #[arg(long, env = "PIER_BROKER_TIMEOUT_SECS", default_value_t = 60)]
    pub broker_timeout_secs: u64,

    /// Seconds an asynchronous broker operation is followed (`last_operation`) before it counts
    /// as failed, unless its plan sets `maximum_polling_duration`.
    #[arg(long, env = "PIER_BROKER_MAX_POLL_SECS", default_value_t = 3600)]
    pub broker_max_poll_secs: u64,

    /// Milliseconds between `last_operation` polls when the broker sends no Retry-After.
    #[arg(long, env = "PIER_BROKER_POLL_MS", default_value_t = 2000)]
    pub broker_poll_ms: u64,

    /// A canary whose 5xx rate is more than this fraction above the baseline's is rolled back.
    #[arg(
        long,
        env = "PIER_CANARY_MAX_ERROR_RATE_INCREASE",
        default_value_t = 0.01
    )]
    pub canary_max_error_rate_increase: f64,

    /// A canary whose p99 latency is more than this many ms above the baseline's is rolled back.
    #[arg(long, env = "PIER_CANARY_MAX_P99_INCREASE_MS", default_value_t = 250.0)]
    pub canary_max_p99_increase_ms: f64,

    /// How often each running instance's CPU, memory and disk use is sampled (what `pier app`
    /// shows), in milliseconds. Disk use is walked every 15th sample.
    #[arg(long, env = "PIER_STATS_INTERVAL_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..))]
    pub stats_interval_ms: u64,

    /// How long a removed instance may take to finish the requests it is serving before it gets
    /// SIGTERM, in seconds.
    #[arg(long, env = "PIER_DRAIN_TIMEOUT", default_value_t = 30)]
    pub drain_timeout_secs: u64,

    /// Most lines of app output (`APP/...`) one app may log per second, sustained; past it lines
    /// are dropped and an `LGR` line each second says how many. 0 means no limit.
    #[arg(long, env = "PIER_LOG_RATE_LIMIT", default_value_t = DEFAULT_LOG_RATE_LIMIT)]
    pub log_rate_limit: u64,

    /// Lines of app output one app may log at once above `--log-rate-limit` (a burst this long
    /// passes whole; the allowance refills at the rate limit).
    #[arg(long, env = "PIER_LOG_RATE_BURST", default_value_t = DEFAULT_LOG_RATE_BURST)]
    pub log_rate_burst: u64,

    /// Whether instances may reach the host's own addresses (the API, the routers, anything the
    /// host serves) and link-local addresses (cloud metadata): `block` (iptables rules on the
    /// instance network's bridge; needs root) or `allow`.
    #[arg(
        long,
        env = "PIER_INSTANCE_HOST_ACCESS",
        value_enum,
        default_value = "block"
    )]
    pub instance_host_access: crate::runtime::HostAccess,

    /// Standby instances per app: each started app's web process keeps this many more instances
    /// started and healthy, unrouted and unlisted, for the indexes a scale-up uses next, so
    /// scaling up routes them at once. Each costs what an instance costs (its memory limit, the
    /// app's resident memory, a container). 0 (the default) for none; at most 100.
    #[arg(long, env = "PIER_STANDBY_INSTANCES", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub standby_instances: u32,

    /// A hard CPU cap per instance, in CPUs (e.g. 0.5); 0 for none. Instances always get CPU
    /// shares in proportion to their memory.
    #[arg(long, env = "PIER_INSTANCE_MAX_CPUS", default_value_t = 0.0)]
    pub instance_max_cpus: f64,

    /// IPv4 subnet (CIDR, /16 to /30) of this controller's Docker network `pier-<controller id>`,
    /// where the controller gives each instance its address. Default: a free /24 inside
    /// 10.213.0.0/16, picked at the first start and kept.
    #[arg(long, env = "PIER_INSTANCE_SUBNET")]
    pub instance_subnet: Option<Ipv4Net>,

    /// Seconds a released instance address is held back before another instance may get it,
    /// however quickly the routers acknowledge its removal.
    #[arg(long, env = "PIER_ADDRESS_QUARANTINE", default_value_t = DEFAULT_ADDRESS_QUARANTINE_SECS)]
    pub address_quarantine_secs: u64,

    /// A standalone router that polled for routes within this many seconds must have
    /// acknowledged the table that removed an address before the address is reused; one silent
    /// for longer is taken to be gone.
    #[arg(long, env = "PIER_ROUTER_ACK_WINDOW", default_value_t = DEFAULT_ROUTER_ACK_WINDOW_SECS)]
    pub router_ack_window_secs: u64,

    /// Seconds a user's access token (JWT) is valid; the CLI refreshes it when it expires.
    #[arg(long, env = "PIER_ACCESS_TOKEN_TTL", default_value_t = crate::users::DEFAULT_ACCESS_TOKEN_TTL_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub access_token_ttl_secs: u64,

    /// Seconds a login session (its refresh token) may be refreshed, counted from the login.
    #[arg(long, env = "PIER_REFRESH_TOKEN_TTL", default_value_t = crate::users::DEFAULT_REFRESH_TOKEN_TTL_SECS,
          value_parser = clap::value_parser!(u64).range(60..=31_536_000))]
    pub refresh_token_ttl_secs: u64,

    /// An image registry (`HOST:PORT`, no scheme, no path) every app image is also pushed to, as
    /// `HOST:PORT/<image name>`, and deleted from when the image is (docs/registry.md). Plain
    /// HTTP on a loopback address, HTTPS otherwise. Off by default.
    #[arg(long, env = "PIER_REGISTRY", value_name = "HOST:PORT")]
    pub registry: Option<crate::registry::RegistryAddr>,
}

/// Defaults of the deployment settings, shared by the clap defaults and `Config::for_tests`.
pub const DEFAULT_REVISIONS_KEPT: usize = 10;
/// Sustained app log lines per second per app: far above what an app logs on purpose, far below
/// what one printing in a loop writes (millions a second), which would take the controller's CPU.
pub const DEFAULT_LOG_RATE_LIMIT: u64 = 5_000;
/// A burst this long passes whole (a stack trace storm, a start-up dump).
pub const DEFAULT_LOG_RATE_BURST: u64 = 120_000;
pub const DEFAULT_ADDRESS_QUARANTINE_SECS: u64 = 300;
pub const DEFAULT_ROUTER_ACK_WINDOW_SECS: u64 = 600;
/// A healthy router polls at least every ~45 s (its poll timeout); a shorter window would drop it.
const MIN_ROUTER_ACK_WINDOW_SECS: u64 = 60;

impl Config {
    /// A config for tests and embedding: port 0 everywhere, the given data dir.
    pub fn for_tests(data_dir: PathBuf) -> Config {
        Config {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            api_header_timeout_secs: 10,
            api_idle_timeout_secs: 60,
            api_max_connections: 1024,
            tls_cert: None,
            tls_key: None,
            data_dir,
            domain: "localhost".into(),
            router_listen: "127.0.0.1:0".into(),
            router_url: None,
            stack_image: crate::runtime::stack::DEFAULT_STACK_IMAGE.into(),
            build_stack: false,
            max_package_bytes: 1024 * 1024 * 1024,
            max_extracted_bytes: 4 * 1024 * 1024 * 1024,
            max_package_entries: 200_000,
            package_gc_grace_secs: 3600,
            max_droplet_bytes: 2 * 1024 * 1024 * 1024,
            max_staging_output_bytes: 16 * 1024 * 1024,
            warm_stagers: 0,
            staging_timeout_secs: 900,
            default_memory_mb: 256,
            default_disk_mb: 1024,
            pids_limit: 1024,
            stop_grace_secs: 10,
            crash_backoff_base_ms: 30_000,
            controller_id: None,
            log_buffer_lines: 1000,
            revisions_kept: DEFAULT_REVISIONS_KEPT,
            builtin_brokers: false,
            broker_timeout_secs: 60,
            broker_max_poll_secs: 3600,
            broker_poll_ms: 50,
            canary_max_error_rate_increase: 0.01,
            canary_max_p99_increase_ms: 250.0,
            drain_timeout_secs: 30,
            stats_interval_ms: 2000,
            log_rate_limit: DEFAULT_LOG_RATE_LIMIT,
            log_rate_burst: DEFAULT_LOG_RATE_BURST,
            standby_instances: 0,
            instance_subnet: None,
            instance_host_access: crate::runtime::HostAccess::Block,
            instance_max_cpus: 0.0,
            address_quarantine_secs: DEFAULT_ADDRESS_QUARANTINE_SECS,
            router_ack_window_secs: DEFAULT_ROUTER_ACK_WINDOW_SECS,
            access_token_ttl_secs: crate::users::DEFAULT_ACCESS_TOKEN_TTL_SECS,
            refresh_token_ttl_secs: crate::users::DEFAULT_REFRESH_TOKEN_TTL_SECS,
            registry: None,
        }
    }

    pub fn user_settings(&self) -> crate::users::UserSettings {
        crate::users::UserSettings {
            access_token_ttl_secs: self.access_token_ttl_secs,
            refresh_token_ttl_secs: self.refresh_token_ttl_secs,
            failed_login_delay: crate::users::FAILED_LOGIN_DELAY,
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.domain.is_empty() || !self.domain.split('.').all(pier_api::names::is_dns_label) {
            anyhow::bail!("--domain {:?} is not a valid DNS name", self.domain);
        }
        if self.router_listen != "none" && self.router_listen.parse::<SocketAddr>().is_err() {
            anyhow::bail!(
                "--router-listen {:?} is neither an address like 127.0.0.1:8080 nor `none`",
                self.router_listen
            );
        }
        if !(0.0..=1024.0).contains(&self.instance_max_cpus) || self.instance_max_cpus.is_nan() {
            anyhow::bail!(
                "--instance-max-cpus must be between 0 (no cap) and 1024, got {}",
                self.instance_max_cpus
            );
        }
        if self.log_buffer_lines == 0 {
            anyhow::bail!("--log-buffer-lines must be more than 0");
        }
        if self.max_package_bytes == 0 {
            anyhow::bail!("--max-package-bytes must be more than 0");
        }
        if let Some(id) = &self.controller_id {
            if !is_docker_name(id) {
                anyhow::bail!(
                    "--controller-id {id:?} must be 1-50 letters, digits, `_`, `.` or `-`, starting \
                     with a letter or digit (it names the Docker network pier-<id>)"
                );
            }
        }
        if let Some(net) = &self.instance_subnet {
            if !(16..=30).contains(&net.prefix()) {
                anyhow::bail!(
                    "--instance-subnet {net}: use a prefix from /16 to /30 (a /30 has one address \
                     for instances, a /24 has 253)"
                );
            }
        }
        if self.router_ack_window_secs < MIN_ROUTER_ACK_WINDOW_SECS {
            anyhow::bail!(
                "--router-ack-window-secs must be at least {MIN_ROUTER_ACK_WINDOW_SECS}: a \
                 connected router polls about every 25 s and may take 45 s"
            );
        }
        // Reads the files, so a bad certificate stops the start before anything is touched.
        self.api_tls()?;
        Ok(())
    }

    /// The API's TLS configuration, when --tls-cert and --tls-key are given.
    pub fn api_tls(&self) -> anyhow::Result<Option<std::sync::Arc<rustls::ServerConfig>>> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(crate::http::serve::load_tls(cert, key)?)),
            (Some(_), None) => anyhow::bail!(
                "--tls-cert needs --tls-key (PIER_TLS_KEY): the private key of the certificate"
            ),
            (None, Some(_)) => anyhow::bail!(
                "--tls-key needs --tls-cert (PIER_TLS_CERT): the certificate chain of the key"
            ),
        }
    }

    /// `https` when the API serves TLS, else `http`.
    pub fn api_scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn staging_timeout(&self) -> Duration {
        Duration::from_secs(self.staging_timeout_secs)
    }

    pub fn stop_grace(&self) -> Duration {
        Duration::from_secs(self.stop_grace_secs)
    }

    pub fn router_addr(&self) -> Option<SocketAddr> {
        self.router_listen.parse().ok()
    }

    pub fn staging_settings(&self, controller_id: &str) -> crate::staging::StagingSettings {
        crate::staging::StagingSettings {
            controller_id: controller_id.to_string(),
            stack_image: self.stack_image.clone(),
            pids_limit: self.pids_limit,
            timeout: self.staging_timeout(),
            package_limits: self.package_limits(),
            max_droplet_bytes: self.max_droplet_bytes,
            max_output_bytes: self.max_staging_output_bytes,
            warm_stagers: self.warm_stagers,
        }
    }

    pub fn instance_settings(&self, controller_id: &str) -> crate::instances::InstanceSettings {
        crate::instances::InstanceSettings {
            controller_id: controller_id.to_string(),
            pids_limit: self.pids_limit,
            stop_grace: self.stop_grace(),
            crash_backoff_base: Duration::from_millis(self.crash_backoff_base_ms),
            drain_timeout: Duration::from_secs(self.drain_timeout_secs),
            max_cpus: self.instance_max_cpus,
            standby: self.standby_instances,
        }
    }

    pub fn app_settings(&self, route_port: Option<u16>) -> crate::apps::AppSettings {
        crate::apps::AppSettings {
            domain: self.domain.clone(),
            route_port,
            default_memory_mb: self.default_memory_mb,
            default_disk_mb: self.default_disk_mb,
            package_limits: self.package_limits(),
            deploy: crate::deployments::DeploySettings {
                stack: self.stack_image.clone(),
                revisions_kept: self.revisions_kept,
                max_error_rate_increase: self.canary_max_error_rate_increase,
                max_p99_increase_ms: self.canary_max_p99_increase_ms,
            },
            brokers: crate::brokers::BrokerSettings {
                timeout: std::time::Duration::from_secs(self.broker_timeout_secs),
                max_poll: std::time::Duration::from_secs(self.broker_max_poll_secs),
                poll_every: std::time::Duration::from_millis(self.broker_poll_ms),
            },
        }
    }

    pub fn api_limits(&self) -> crate::http::Limits {
        crate::http::Limits {
            max_package_bytes: self.max_package_bytes,
            package_limits: self.package_limits(),
        }
    }

    pub fn package_limits(&self) -> crate::staging::package::Limits {
        crate::staging::package::Limits {
            max_extracted_bytes: self.max_extracted_bytes,
            max_entries: self.max_package_entries,
        }
    }

    pub fn serve_options(&self) -> anyhow::Result<crate::http::serve::ServeOptions> {
        Ok(crate::http::serve::ServeOptions {
            header_timeout: Duration::from_secs(self.api_header_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(self.api_idle_timeout_secs.max(1)),
            max_connections: self.api_max_connections.max(1),
            tls: self.api_tls()?.map(tokio_rustls::TlsAcceptor::from),
        })
    }

    pub fn address_quarantine(&self) -> crate::network::addresses::Quarantine {
        crate::network::addresses::Quarantine {
            min: Duration::from_secs(self.address_quarantine_secs),
            ack_window: Duration::from_secs(self.router_ack_window_secs),
        }
    }
}

/// Docker's rule for object names, kept short enough for `pier-<id>` and container names.
fn is_docker_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 50
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

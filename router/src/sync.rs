//! Following the controller's route table for the standalone router.
//!
//! ```text
//! loop:
//!   GET {controller}/v1/routes?epoch=E&version=V&router=ID   (Authorization: Bearer TOKEN)
//!     200 + table  → publish it on the watch channel if epoch/version/routes changed
//!     304          → nothing changed; ask again
//!     error        → log, keep the last table, back off (100 ms doubling to `max_backoff`)
//! ```
//! The controller answers at once when its table differs from (E, V) and otherwise holds the
//! request for up to ~30 s. The last good table is kept for as long as the controller is away:
//! the router keeps serving what it knows.
//!
//! `ID` is a uuid made once per process: the controller records which table each router holds, and
//! reuses a released instance address only once every router heard from recently has polled with
//! the table that removed it (docs/router.md, C2). Controllers that predate it ignore it.
//!
//! The HTTP side is `pier_client::Client::poll_routes`: the request timeout covers the whole
//! poll, and a table over `max_table_bytes` is refused while it is read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pier_api::RouteTable;
use pier_client::{Client, ClientError, RoutesPoll};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Where and how to follow the controller.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// The controller's base URL, e.g. `http://127.0.0.1:9000`.
    pub controller: String,
    /// The bearer token the controller accepts.
    pub token: String,
    /// How long one long-poll may take before it counts as failed (longer than the controller's
    /// hold time).
    pub request_timeout: Duration,
    /// The longest wait between attempts while the controller is unreachable.
    pub max_backoff: Duration,
    /// The largest table body accepted.
    pub max_table_bytes: usize,
    /// The data plane's in-flight counts (`ProxyOptions::in_flight`): instances that left the
    /// table but still have requests in flight are named in every poll, so the controller drains
    /// them before stopping them.
    pub in_flight: crate::InFlight,
    /// For an `https://` controller: a PEM file of CA certificates to trust besides the
    /// system's.
    pub ca_cert: Option<std::path::PathBuf>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            controller: "http://127.0.0.1:9000".into(),
            token: String::new(),
            request_timeout: Duration::from_secs(45),
            max_backoff: Duration::from_secs(2),
            max_table_bytes: 64 * 1024 * 1024,
            in_flight: crate::InFlight::default(),
            ca_cert: None,
        }
    }
}

/// How often the draining set is looked at while it is not empty.
const DRAINING_CHECK: Duration = Duration::from_millis(100);

/// Instances with requests in flight that `table` no longer lists.
fn draining(in_flight: &crate::InFlight, table: Option<&RouteTable>) -> Vec<String> {
    let listed: std::collections::HashSet<&str> = table
        .into_iter()
        .flat_map(|t| t.routes.iter())
        .flat_map(|r| r.backends.iter().map(|b| b.instance_id.as_str()))
        .collect();
    in_flight
        .busy()
        .into_iter()
        .filter(|id| !listed.contains(id.as_str()))
        .collect()
}

/// Resolves once the draining set differs from `sent` (never while it is empty and stays so).
async fn draining_changed(
    in_flight: &crate::InFlight,
    table: Option<Arc<RouteTable>>,
    sent: &[String],
) {
    if sent.is_empty() {
        // Only requests to instances that left the table drain; until a table removes one, the
        // next poll is the next table's.
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(DRAINING_CHECK).await;
        if draining(in_flight, table.as_deref()) != sent {
            return;
        }
    }
}

/// Time allowed to connect to the controller, within `request_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What one poll learned: a table (possibly the same one again), or 304 unchanged.
pub type PollOutcome = pier_client::RoutesAnswer;

/// Long-polls the controller and publishes every new table on `tx` until `shutdown`.
///
/// Never clears the table: on errors it logs, keeps the last table and retries with backoff.
pub async fn follow_controller(
    opts: SyncOptions,
    tx: watch::Sender<Option<Arc<RouteTable>>>,
    shutdown: CancellationToken,
) {
    let poller = match Poller::new(opts.clone()) {
        Ok(p) => p,
        // A URL that can never work: say so once, publish nothing, wait for the end.
        Err(e) => {
            tracing::error!(error = %e, "cannot follow the controller");
            shutdown.cancelled().await;
            return;
        }
    };
    let mut backoff = Duration::from_millis(100);
    let mut failing_since: Option<Instant> = None;
    loop {
        let table = tx.borrow().clone();
        let (epoch, version) = match &table {
            Some(t) => (t.epoch.clone(), t.version),
            None => (String::new(), 0),
        };
        let sent = draining(&opts.in_flight, table.as_deref());
        let asked = Instant::now();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            // Requests to a removed instance finished: say so now, not at the next table.
            _ = draining_changed(&opts.in_flight, table.clone(), &sent) => continue,
            r = poller.poll(&epoch, version, &sent) => r,
        };
        let wait = match result {
            Ok(outcome) => {
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        down_for_s = since.elapsed().as_secs(),
                        "controller reachable again"
                    );
                }
                backoff = Duration::from_millis(100);
                let changed = match outcome {
                    PollOutcome::Table(t) => publish(&tx, t),
                    PollOutcome::NotModified => false,
                };
                // A controller that answers "unchanged" at once is not long-polling; don't spin.
                if !changed && asked.elapsed() < Duration::from_millis(500) {
                    Duration::from_millis(500)
                } else {
                    Duration::ZERO
                }
            }
            Err(e) => {
                let first = failing_since.is_none();
                failing_since.get_or_insert_with(Instant::now);
                let have = tx.borrow().as_ref().map(|t| t.version);
                let error = describe(&e);
                if first {
                    tracing::warn!(%error, kept_version = ?have,
                        "route sync failed; serving the last known table and retrying");
                } else {
                    tracing::debug!(%error, "route sync still failing");
                }
                let wait = backoff;
                backoff = (backoff * 2).min(opts.max_backoff);
                wait
            }
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// A poll's failure in the router operator's terms.
fn describe(e: &ClientError) -> String {
    match e.status() {
        Some(status) if e.is_unauthorized() => format!(
            "the controller refused the router's token ({status}): check --token / PIER_ROUTER_TOKEN"
        ),
        _ => e.to_string(),
    }
}

/// Publishes `t` unless it is what the channel holds already. Returns whether it changed.
fn publish(tx: &watch::Sender<Option<Arc<RouteTable>>>, t: RouteTable) -> bool {
    let same = matches!(&*tx.borrow(), Some(cur) if **cur == t);
    if same {
        return false;
    }
    tracing::info!(epoch = %t.epoch, version = t.version, routes = t.routes.len(), "new route table");
    tx.send_replace(Some(Arc::new(t)));
    true
}

/// One controller, one HTTP client.
pub struct Poller {
    client: Client,
    max_table_bytes: usize,
    router_id: String,
}

impl Poller {
    /// Fails only on a controller URL that can never work.
    pub fn new(opts: SyncOptions) -> Result<Self, ClientError> {
        let client = Client::builder(&opts.controller)
            .token(Some(opts.token))
            .ca_cert_file(opts.ca_cert)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(Some(opts.request_timeout))
            .user_agent(concat!("pier-router/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let router_id = uuid::Uuid::new_v4().simple().to_string();
        tracing::info!(router_id = %router_id, "following the controller's route table");
        Ok(Poller {
            client,
            max_table_bytes: opts.max_table_bytes,
            router_id,
        })
    }

    /// The id this router sends with every poll.
    pub fn router_id(&self) -> &str {
        &self.router_id
    }

    /// One long-poll: asks for a table newer than (`epoch`, `version`), naming the instances
    /// it still has requests in flight to that are no longer in that table.
    pub async fn poll(
        &self,
        epoch: &str,
        version: u64,
        draining: &[String],
    ) -> Result<PollOutcome, ClientError> {
        self.client
            .poll_routes(&RoutesPoll {
                epoch,
                version,
                router: Some(&self.router_id),
                max_bytes: self.max_table_bytes,
                draining,
            })
            .await
    }
}

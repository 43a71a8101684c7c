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

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pier_api::RouteTable;
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
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            controller: "http://127.0.0.1:9000".into(),
            token: String::new(),
            request_timeout: Duration::from_secs(45),
            max_backoff: Duration::from_secs(2),
            max_table_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why one poll failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("controller URL {0:?} is not valid: use a base URL like http://127.0.0.1:9000")]
    BadUrl(String),
    #[error("cannot reach the controller at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("the controller at {0} did not answer within the poll timeout")]
    Timeout(String),
    #[error("the controller refused the router's token ({0}): check --token / PIER_ROUTER_TOKEN")]
    Unauthorized(StatusCode),
    #[error("the controller answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("reading the route table failed: {0}")]
    Body(String),
    #[error("the controller sent a route table that is not valid JSON: {0}")]
    Decode(#[from] serde_json::Error),
}

/// What one poll learned.
#[derive(Debug)]
pub enum PollOutcome {
    /// A table (possibly the same one again).
    Table(RouteTable),
    /// 304: unchanged.
    NotModified,
}

/// Long-polls the controller and publishes every new table on `tx` until `shutdown`.
///
/// Never clears the table: on errors it logs, keeps the last table and retries with backoff.
pub async fn follow_controller(
    opts: SyncOptions,
    tx: watch::Sender<Option<Arc<RouteTable>>>,
    shutdown: CancellationToken,
) {
    let poller = Poller::new(opts.clone());
    let mut backoff = Duration::from_millis(100);
    let mut failing_since: Option<Instant> = None;
    loop {
        let (epoch, version) = match &*tx.borrow() {
            Some(t) => (t.epoch.clone(), t.version),
            None => (String::new(), 0),
        };
        let asked = Instant::now();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = poller.poll(&epoch, version) => r,
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
                if first {
                    tracing::warn!(error = %e, kept_version = ?have,
                        "route sync failed; serving the last known table and retrying");
                } else {
                    tracing::debug!(error = %e, "route sync still failing");
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
    opts: SyncOptions,
    client: Client<HttpConnector, Empty<Bytes>>,
    router_id: String,
}

impl Poller {
    pub fn new(opts: SyncOptions) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let router_id = uuid::Uuid::new_v4().simple().to_string();
        tracing::info!(router_id = %router_id, "following the controller's route table");
        Poller {
            opts,
            client,
            router_id,
        }
    }

    /// The id this router sends with every poll.
    pub fn router_id(&self) -> &str {
        &self.router_id
    }

    /// One long-poll: asks for a table newer than (`epoch`, `version`).
    pub async fn poll(&self, epoch: &str, version: u64) -> Result<PollOutcome, SyncError> {
        let base = self.opts.controller.trim_end_matches('/');
        let url = format!(
            "{base}/v1/routes?epoch={}&version={version}&router={}",
            percent_encode(epoch),
            self.router_id
        );
        let uri: Uri = url
            .parse()
            .map_err(|_| SyncError::BadUrl(self.opts.controller.clone()))?;
        let mut req = Request::get(uri);
        if !self.opts.token.is_empty() {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", self.opts.token));
        }
        let req = req
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|_| SyncError::BadUrl(self.opts.controller.clone()))?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|source| SyncError::Unreachable {
                    url: base.to_string(),
                    source,
                })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), self.opts.max_table_bytes)
                .collect()
                .await
                .map_err(|e| SyncError::Body(e.to_string()))?
                .to_bytes();
            match status {
                StatusCode::OK => Ok(PollOutcome::Table(serde_json::from_slice(&body)?)),
                StatusCode::NOT_MODIFIED => Ok(PollOutcome::NotModified),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    Err(SyncError::Unauthorized(status))
                }
                _ => Err(SyncError::Status {
                    status,
                    body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
                }),
            }
        };
        tokio::time::timeout(self.opts.request_timeout, fut)
            .await
            .map_err(|_| SyncError::Timeout(base.to_string()))?
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_epoch() {
        assert_eq!(percent_encode("abc-1_2.3~"), "abc-1_2.3~");
        assert_eq!(percent_encode("a b&c"), "a%20b%26c");
    }
}

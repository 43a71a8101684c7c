//! Standalone `pier-router`: hands each request's access-log line to the controller, which
//! publishes it as `RTR/<index>` in the app's log (`POST /v1/router/logs`).
//!
//! The proxy only does a `try_send` into a bounded queue, so forwarding never slows a request.
//! A task sends what is queued every 200 ms in one batch. When the queue is full or the
//! controller is away, lines are dropped and counted per app; the next batch that gets through
//! carries the counts, and the controller prints them as an `LGR` line in each app's log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pier_api::{RouterLogBatch, RouterLogDropped, RouterLogLine};
use pier_client::{Client, ClientError};
use pier_router::{AccessLog, AccessLogEntry};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const QUEUE: usize = 10_000;
const BATCH: usize = 2_000;
const EVERY: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_secs(5);

type Dropped = Arc<Mutex<HashMap<String, u64>>>;

fn count(dropped: &Dropped, app_guid: &str, n: u64) {
    *dropped
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(app_guid.to_string())
        .or_default() += n;
}

/// The access log to put in `ProxyOptions`; spawns the forwarding task. Fails only on a
/// controller URL that can never work.
pub(crate) fn start(
    controller: &str,
    token: &str,
    ca_cert: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
) -> Result<Arc<dyn AccessLog>, ClientError> {
    let client = Client::builder(controller)
        .token(Some(token.to_string()))
        .ca_cert_file(ca_cert)
        .timeout(Some(TIMEOUT))
        .connect_timeout(TIMEOUT)
        .user_agent(concat!("pier-router/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let (tx, rx) = mpsc::channel::<RouterLogLine>(QUEUE);
    let dropped: Dropped = Arc::default();
    tokio::spawn(forward(client, rx, dropped.clone(), shutdown));
    Ok(Arc::new(move |entry: AccessLogEntry| {
        let Some(guid) = entry.app_guid.clone() else {
            return;
        };
        let line = RouterLogLine::new(guid, entry.started_at + entry.duration, entry.to_rtr_line());
        if let Err(e) = tx.try_send(line) {
            let line = match e {
                mpsc::error::TrySendError::Full(l) | mpsc::error::TrySendError::Closed(l) => l,
            };
            count(&dropped, &line.app_guid, 1);
        }
    }))
}

async fn forward(
    client: Client,
    mut rx: mpsc::Receiver<RouterLogLine>,
    dropped: Dropped,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut lines = Vec::new();
        while lines.len() < BATCH {
            match rx.try_recv() {
                Ok(l) => lines.push(l),
                Err(_) => break,
            }
        }
        let counts: Vec<RouterLogDropped> =
            std::mem::take(&mut *dropped.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .map(|(app_guid, count)| RouterLogDropped { app_guid, count })
                .collect();
        if lines.is_empty() && counts.is_empty() {
            continue;
        }
        let batch = RouterLogBatch {
            router_index: 0,
            lines,
            dropped: counts,
        };
        // Any answer but a 2xx, or none within TIMEOUT, counts as not sent.
        if client.send_router_logs(&batch).await.is_err() {
            // Counted, to be reported once the controller is back.
            for l in &batch.lines {
                count(&dropped, &l.app_guid, 1);
            }
            for d in &batch.dropped {
                count(&dropped, &d.app_guid, d.count);
            }
        }
    }
}

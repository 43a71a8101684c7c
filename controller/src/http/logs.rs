//! Log endpoints, merged into the authenticated API router (every one needs the admin token).
//!
//! - `GET /v1/apps/{name}/logs`: the buffered lines, as a JSON array (`pier logs --recent`).
//! - `GET /v1/apps/{name}/logs/stream?after=SEQ` or `?recent=N`: server-sent events, one
//!   [`pier_api::LogEvent`] per event with `id: <seq>`, until the client goes away, the app is
//!   deleted or the controller stops. `after` (or the standard `Last-Event-ID` header) resumes;
//!   without either the stream starts with the last `recent` buffered lines (all by default).
//!   A comment line every 15 s keeps idle connections open through proxies.
//! - `POST /v1/router/logs`: a standalone `pier-router`'s access-log lines
//!   ([`pier_api::RouterLogBatch`]), published as `RTR/<router index>`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::StreamExt;
use pier_api::{LogEvent, LogLine, LogSource, LogStream, RouterLogBatch};
use serde::Deserialize;

use super::ApiState;
use crate::error::Result;
use crate::logs::Start;
use crate::tenancy::Scope;

/// Lines sent in one write at most.
const MAX_BATCH: usize = 2048;
const KEEPALIVE: Duration = Duration::from_secs(15);

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/apps/{name}/logs", get(recent))
        .route("/v1/apps/{name}/logs/stream", get(stream))
        .route("/v1/router/logs", post(router_logs))
}

async fn recent(
    State(s): State<ApiState>,
    at: Scope,
    Path(name): Path<String>,
) -> Result<Json<Vec<LogLine>>> {
    let app = s.apps.load(&at, &name)?;
    Ok(Json(s.logs.recent(&app.guid)))
}

#[derive(Debug, Default, Deserialize)]
struct StreamQuery {
    after: Option<u64>,
    recent: Option<usize>,
}

async fn stream(
    State(s): State<ApiState>,
    at: Scope,
    Path(name): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    let app = s.apps.load(&at, &name)?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let start = match q.after.or(last_event_id) {
        Some(seq) => Start::After(seq),
        None => Start::Recent(q.recent.unwrap_or(usize::MAX)),
    };
    let reader = s.logs.reader(&app.guid, start);
    // First an event with only an id: where this stream starts, so a client that reconnects
    // before any line came resumes from here (and the response starts at once).
    let hello = Bytes::from(format!("id: {}\n\n", reader.cursor()));
    let shutdown = s.shutdown.clone();
    let lines =
        futures_util::stream::unfold((reader, shutdown), |(mut reader, shutdown)| async move {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return None,
                r = tokio::time::timeout(KEEPALIVE, reader.next(MAX_BATCH)) => r,
            };
            let chunk = match next {
                Err(_) => Bytes::from_static(b": keep-alive\n\n"),
                // The app was deleted.
                Ok(None) => return None,
                Ok(Some(events)) => encode(&events),
            };
            Some((Ok::<_, std::convert::Infallible>(chunk), (reader, shutdown)))
        });
    let body = futures_util::stream::once(async move { Ok(hello) }).chain(lines);
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// Server-sent events: `id: <seq>` and the event as one line of JSON.
fn encode(events: &[LogEvent]) -> Bytes {
    let mut out = Vec::with_capacity(events.len() * 160);
    for e in events {
        out.extend_from_slice(format!("id: {}\ndata: ", e.seq()).as_bytes());
        // Serializing these types cannot fail; a line of JSON has no raw newline.
        let _ = serde_json::to_writer(&mut out, e);
        out.extend_from_slice(b"\n\n");
    }
    Bytes::from(out)
}

async fn router_logs(State(s): State<ApiState>, Json(batch): Json<RouterLogBatch>) -> StatusCode {
    let source = LogSource::Router(batch.router_index);
    for line in &batch.lines {
        // Only apps this controller knows; a stale router must not create logs for others.
        if s.logs.has_app(&line.app_guid) {
            s.logs.publish(
                &line.app_guid,
                &source,
                LogStream::Out,
                &line.text,
                line.time,
            );
        }
    }
    for d in &batch.dropped {
        if d.count > 0 && s.logs.has_app(&d.app_guid) {
            s.logs.publish(
                &d.app_guid,
                &LogSource::Logger,
                LogStream::Err,
                &format!(
                    "{} access log lines dropped by router {}: its queue was full or the \
                     controller was unreachable",
                    d.count, batch.router_index
                ),
                time::OffsetDateTime::now_utc(),
            );
        }
    }
    StatusCode::NO_CONTENT
}

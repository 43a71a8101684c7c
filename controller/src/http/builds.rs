//! Packages and builds: `POST /v1/packages` (a gzipped tar, streamed and checked before it is
//! stored) and `POST /v1/apps/{name}/builds` (an NDJSON stream of staging output ending with one
//! `done` or `error`).

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::StreamExt;
use pier_api::{BuildEvent, BuildRequest, PackageResponse};

use super::{json_body, ApiState};
use crate::apps::Build;
use crate::error::{Error, Result};
use crate::tenancy::Scope;

type S = State<ApiState>;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/apps/{name}/builds", post(build))
        .route(
            "/v1/packages",
            post(upload).layer(DefaultBodyLimit::disable()),
        )
}

async fn upload(State(s): S, req: Request) -> Result<Json<PackageResponse>> {
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = req.into_body().into_data_stream();
    let l = s.limits;
    Ok(Json(
        crate::staging::package::accept(
            &s.blobs,
            body,
            declared,
            l.max_package_bytes,
            l.package_limits,
        )
        .await?,
    ))
}

fn ndjson(ev: &BuildEvent) -> Bytes {
    let mut line = serde_json::to_vec(ev).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

async fn build(State(s): S, at: Scope, Path(name): Path<String>, body: Bytes) -> Result<Response> {
    let req: BuildRequest = json_body(&body)?;
    let body = match s.apps.build(&at, &name, req).await? {
        Build::Done(events) => Body::from(
            events
                .iter()
                .flat_map(|e| ndjson(e).to_vec())
                .collect::<Vec<u8>>(),
        ),
        Build::Staging(rx) => Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx)
                .map(|ev| Ok::<_, Infallible>(ndjson(&ev))),
        ),
    };
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(body)
        .map_err(|e| Error::Other(e.to_string()))
}

//! The OSB v2.17 HTTP API: basic auth and `X-Broker-API-Version: 2.x` on every request, JSON in
//! and out.
//!
//! | Method | Path | Answers |
//! |---|---|---|
//! | GET | /v2/catalog | 200 |
//! | PUT | /v2/service_instances/:id | 202 operation, 200 identical, 409 conflict, 422 AsyncRequired, 400 |
//! | PATCH | /v2/service_instances/:id | 202 operation, 200 nothing to change, 422, 400, 404 |
//! | DELETE | /v2/service_instances/:id | 200, 410 unknown, 422 ConcurrencyError |
//! | GET | /v2/service_instances/:id/last_operation | 200 state, 410 unknown |
//! | PUT | /v2/service_instances/:id/service_bindings/:bid | 201, 200 identical, 409, 404, 422 |
//! | DELETE | /v2/service_instances/:id/service_bindings/:bid | 200, 410 unknown |

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::broker::{Broker, Reply};

/// The header platforms send their OSB version in.
pub const VERSION_HEADER: &str = "x-broker-api-version";

type Q = Query<HashMap<String, String>>;

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

fn answer(r: Result<Reply, Reply>) -> Response {
    match r {
        Ok(r) | Err(r) => r.into_response(),
    }
}

fn accepts_incomplete(q: &HashMap<String, String>) -> bool {
    q.get("accepts_incomplete").map(String::as_str) == Some("true")
}

fn json_body(bytes: &Bytes) -> Result<Value, Reply> {
    if bytes.is_empty() {
        return Err(Reply::error(
            StatusCode::BAD_REQUEST,
            None,
            "the request has no JSON body",
        ));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            None,
            "the request body must be a JSON object",
        )),
        Err(e) => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            None,
            format!("the request body is not JSON: {e}"),
        )),
    }
}

async fn catalog() -> Json<Value> {
    Json(crate::catalog::catalog())
}

async fn provision(State(b): State<Broker>, Path(id): Path<String>, q: Q, body: Bytes) -> Response {
    let body = match json_body(&body) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    answer(b.provision(&id, accepts_incomplete(&q), &body).await)
}

async fn update(State(b): State<Broker>, Path(id): Path<String>, q: Q, body: Bytes) -> Response {
    let body = match json_body(&body) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    answer(b.update(&id, accepts_incomplete(&q), &body).await)
}

async fn deprovision(State(b): State<Broker>, Path(id): Path<String>, q: Q) -> Response {
    answer(
        b.deprovision(&id, q.get("service_id").map(String::as_str))
            .await,
    )
}

/// An operation in progress says when to ask again (OSB's Retry-After, in seconds): a server is
/// usually up within seconds, sooner than a platform's default poll interval.
async fn last_operation(State(b): State<Broker>, Path(id): Path<String>) -> Response {
    let r = b.last_operation(&id).await;
    let in_progress = matches!(&r, Ok(r) if r.body["state"] == "in progress");
    let mut resp = answer(r);
    if in_progress {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    resp
}

async fn bind(
    State(b): State<Broker>,
    Path((id, bid)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let body = match json_body(&body) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    answer(b.bind(&id, &bid, &body).await)
}

async fn unbind(State(b): State<Broker>, Path((id, bid)): Path<(String, String)>) -> Response {
    answer(b.unbind(&id, &bid).await)
}

fn digest(s: &[u8]) -> [u8; 32] {
    Sha256::digest(s).into()
}

/// Basic auth, then the API version.
async fn gate(State(b): State<Broker>, headers: HeaderMap, req: Request, next: Next) -> Response {
    let cfg = b.config();
    let expected = format!("{}:{}", cfg.username, cfg.password);
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
        });
    // Compared as digests: equal length, no early exit on the secret's bytes.
    if given.map(|g| digest(&g)) != Some(digest(expected.as_bytes())) {
        let mut r = Reply::error(StatusCode::UNAUTHORIZED, None, "wrong broker credentials")
            .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"pier-broker\""),
        );
        return r;
    }
    let version = headers.get(VERSION_HEADER).and_then(|v| v.to_str().ok());
    match version {
        Some(v) if v.split('.').next() == Some("2") => next.run(req).await,
        Some(v) => Reply::error(
            StatusCode::PRECONDITION_FAILED,
            None,
            format!("OSB API version {v} is not supported; this broker speaks 2.17 (any 2.x)"),
        )
        .into_response(),
        None => Reply::error(
            StatusCode::PRECONDITION_FAILED,
            None,
            "the X-Broker-API-Version header is missing; this broker speaks 2.17",
        )
        .into_response(),
    }
}

/// The brokers' routes.
pub fn router(broker: Broker) -> Router {
    Router::new()
        .route("/v2/catalog", get(catalog))
        .route(
            "/v2/service_instances/{id}",
            put(provision).patch(update).delete(deprovision),
        )
        .route(
            "/v2/service_instances/{id}/last_operation",
            get(last_operation),
        )
        .route(
            "/v2/service_instances/{id}/service_bindings/{bid}",
            put(bind).delete(unbind),
        )
        .layer(axum::middleware::from_fn_with_state(broker.clone(), gate))
        .with_state(broker)
}

/// Serves the brokers on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Broker,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(broker))
        .with_graceful_shutdown(shutdown)
        .await
}

//! Service instances of a space (`?org=&space=`) and app bindings: `/v1/service-instances`,
//! `/v1/service-instances/{name}`, `/v1/apps/{name}/bindings/{service}`. See
//! [`pier_api::services`] for the shapes and `apps/services.rs` for the rules.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use bytes::Bytes;
use http::StatusCode;
use pier_api::{
    BindingResponse, CreateServiceInstanceRequest, ServiceInstanceResponse,
    UpdateUserProvidedRequest,
};

use super::ApiState;
use crate::error::{Error, Result};
use crate::tenancy::Scope;

type S = State<ApiState>;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/service-instances", get(list).post(create))
        .route(
            "/v1/service-instances/{name}",
            get(show).patch(update).delete(remove),
        )
        .route(
            "/v1/apps/{name}/bindings/{service}",
            put(bind).delete(unbind),
        )
}

/// A JSON body; serde's words can quote what it could not read (credentials in the wrong place),
/// so the error says where instead.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8], shape: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_data() {
            // Field names are ours, not the user's secrets: serde names a missing or unknown one.
            let m = e.to_string();
            if m.starts_with("missing field") || m.starts_with("unknown field") {
                format!("{}; ", m.split(" at line").next().unwrap_or(&m))
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        Error::bad_request(format!(
            "invalid request body at line {} column {}: {what}expected {shape}",
            e.line(),
            e.column()
        ))
    })
}

const CREATE_SHAPE: &str =
    r#"{"name": NAME, "user_provided": {"credentials": {...}, "tags": [...]}}"#;
const UPDATE_SHAPE: &str = r#"{"credentials": {...}, "tags": [...], "syslog_drain_url": URL}"#;

async fn list(State(s): S, at: Scope) -> Result<Json<Vec<ServiceInstanceResponse>>> {
    Ok(Json(s.apps.services(&at)?))
}

async fn create(State(s): S, at: Scope, bytes: Bytes) -> Result<Response> {
    let req: CreateServiceInstanceRequest = body(&bytes, CREATE_SHAPE)?;
    let svc = s.apps.create_service(&at, req).await?;
    Ok((StatusCode::CREATED, Json(svc)).into_response())
}

async fn show(
    State(s): S,
    at: Scope,
    Path(name): Path<String>,
) -> Result<Json<ServiceInstanceResponse>> {
    Ok(Json(s.apps.service(&at, &name)?))
}

async fn update(
    State(s): S,
    at: Scope,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<ServiceInstanceResponse>> {
    let req: UpdateUserProvidedRequest = body(&bytes, UPDATE_SHAPE)?;
    Ok(Json(s.apps.update_service(&at, &name, req).await?))
}

async fn remove(State(s): S, at: Scope, Path(name): Path<String>) -> Result<Response> {
    s.apps.delete_service(&at, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn bind(
    State(s): S,
    at: Scope,
    Path((app, service)): Path<(String, String)>,
) -> Result<Json<BindingResponse>> {
    Ok(Json(s.apps.bind(&at, &app, &service).await?))
}

async fn unbind(
    State(s): S,
    at: Scope,
    Path((app, service)): Path<(String, String)>,
) -> Result<Response> {
    s.apps.unbind(&at, &app, &service).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

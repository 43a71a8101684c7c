//! Service instances of a space (`?org=&space=`) and app bindings: `/v1/service-instances`,
//! `/v1/service-instances/{name}`, `/v1/apps/{name}/bindings/{service}`,
//! `/v1/service-instances/{name}/keys[/{key}]` (`GET .../keys?key=NAME`: one key's credentials). See [`pier_api::services`] and
//! [`pier_api::brokers`] for the shapes, `apps/services.rs` and `apps/managed.rs` for the rules.
//! A create body with an `offering` provisions a managed instance (201, or 202 while the broker
//! works on it); a managed instance's PATCH and DELETE go to its broker.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use bytes::Bytes;
use http::StatusCode;
use pier_api::{
    BindRequest, BindingResponse, CreateManagedInstanceRequest, CreateServiceInstanceRequest,
    CreateServiceKeyRequest, ServiceInstanceResponse, ServiceKeyResponse,
    UpdateManagedInstanceRequest, UpdateUserProvidedRequest,
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
        .route("/v1/service-instances/{name}/keys", get(keys))
        .route(
            "/v1/service-instances/{name}/keys/{key}",
            put(create_key).delete(delete_key),
        )
}

/// A JSON body; serde's words can quote what it could not read (credentials in the wrong place),
/// so the error says where instead.
pub(super) fn body<T: serde::de::DeserializeOwned>(bytes: &[u8], shape: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_data() {
            // Field names are ours, not the user's secrets: serde names a missing or unknown one.
            let m = e.to_string();
            if m.starts_with("missing field") || m.starts_with("unknown field") {
                format!("{}; ", m.split(" at line").next().unwrap_or(&m))
            } else if m.starts_with("invalid type") && m.contains("expected a map") {
                // `parameters` (or credentials) that are not a JSON object.
                "a value that must be a JSON object is not one; ".to_string()
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
const MANAGED_SHAPE: &str = r#"{"name": NAME, "offering": OFFERING, "plan": PLAN, "parameters": {JSON object}, "tags": [...]}"#;
const MANAGED_UPDATE_SHAPE: &str = r#"{"plan": PLAN, "parameters": {JSON object}, "tags": [...]}"#;
const PARAMETERS_SHAPE: &str = r#"{"parameters": {JSON object}}"#;

/// An optional body: `{}` when empty.
fn optional_body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8], shape: &str) -> Result<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    body(bytes, shape)
}

/// A managed instance's answer: 202 while the broker works on it.
fn managed_answer(created: bool, svc: ServiceInstanceResponse, pending: bool) -> Response {
    let status = match (pending, created) {
        (true, _) => StatusCode::ACCEPTED,
        (false, true) => StatusCode::CREATED,
        (false, false) => StatusCode::OK,
    };
    (status, Json(svc)).into_response()
}

async fn list(State(s): S, at: Scope) -> Result<Json<Vec<ServiceInstanceResponse>>> {
    Ok(Json(s.apps.services(&at)?))
}

async fn create(State(s): S, at: Scope, bytes: Bytes) -> Result<Response> {
    let managed = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .is_some_and(|v| v.get("offering").is_some());
    if managed {
        let req: CreateManagedInstanceRequest = body(&bytes, MANAGED_SHAPE)?;
        let (svc, pending) = s.apps.create_managed(&at, req).await?;
        return Ok(managed_answer(true, svc, pending));
    }
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
) -> Result<Response> {
    if s.apps.is_managed(&at, &name)? {
        let req: UpdateManagedInstanceRequest = body(&bytes, MANAGED_UPDATE_SHAPE)?;
        let (svc, pending) = s.apps.update_managed(&at, &name, req).await?;
        return Ok(managed_answer(false, svc, pending));
    }
    let req: UpdateUserProvidedRequest = body(&bytes, UPDATE_SHAPE)?;
    Ok(Json(s.apps.update_service(&at, &name, req).await?).into_response())
}

/// 204 when it is gone; 202 while a broker deprovisions it.
async fn remove(State(s): S, at: Scope, Path(name): Path<String>) -> Result<Response> {
    if s.apps.is_managed(&at, &name)? {
        if s.apps.delete_managed(&at, &name).await? {
            let svc = s.apps.service(&at, &name)?;
            return Ok((StatusCode::ACCEPTED, Json(svc)).into_response());
        }
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    s.apps.delete_service(&at, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn bind(
    State(s): S,
    at: Scope,
    Path((app, service)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Json<BindingResponse>> {
    let req: BindRequest = optional_body(&bytes, PARAMETERS_SHAPE)?;
    Ok(Json(
        s.apps.bind(&at, &app, &service, req.parameters).await?,
    ))
}

async fn unbind(
    State(s): S,
    at: Scope,
    Path((app, service)): Path<(String, String)>,
) -> Result<Response> {
    s.apps.unbind(&at, &app, &service).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(serde::Deserialize)]
struct KeyQuery {
    key: Option<String>,
}

/// The instance's keys without credentials; `?key=NAME`: that one key, with its credentials.
async fn keys(
    State(s): S,
    at: Scope,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<KeyQuery>,
) -> Result<Json<Vec<ServiceKeyResponse>>> {
    match q.key {
        Some(k) => Ok(Json(vec![s.apps.service_key(&at, &name, &k)?])),
        None => Ok(Json(s.apps.service_keys(&at, &name)?)),
    }
}

async fn create_key(
    State(s): S,
    at: Scope,
    Path((name, key)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Response> {
    let req: CreateServiceKeyRequest = optional_body(&bytes, PARAMETERS_SHAPE)?;
    let k = s
        .apps
        .create_service_key(&at, &name, &key, req.parameters)
        .await?;
    Ok((StatusCode::CREATED, Json(k)).into_response())
}

async fn delete_key(
    State(s): S,
    at: Scope,
    Path((name, key)): Path<(String, String)>,
) -> Result<Response> {
    s.apps.delete_service_key(&at, &name, &key).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

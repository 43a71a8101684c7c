//! Service brokers, the marketplace and plan access: `/v1/service-brokers[/{name}]` (the
//! platform admin; every broker), `/v1/space-service-brokers[/{name}]` (`?org=&space=`, the
//! space's developers; that space's brokers), `/v1/marketplace` (`?org=&space=&offering=`),
//! `/v1/service-access` (the admin). Shapes in [`pier_api::brokers`], rules in `brokers/`.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use http::StatusCode;
use pier_api::{
    CreateServiceBrokerRequest, MarketplaceOffering, ServiceAccessRequest, ServiceAccessResponse,
    ServiceBrokerResponse, UpdateServiceBrokerRequest,
};
use serde::Deserialize;

use super::services::body;
use super::ApiState;
use crate::error::Result;
use crate::events::Actor;
use crate::tenancy::Scope;

type S = State<ApiState>;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/service-brokers", get(list).post(create))
        .route("/v1/service-brokers/{name}", put(update).delete(remove))
        .route(
            "/v1/space-service-brokers",
            get(space_list).post(space_create),
        )
        .route(
            "/v1/space-service-brokers/{name}",
            put(space_update).delete(space_remove),
        )
        .route("/v1/marketplace", get(marketplace))
        .route("/v1/service-access", post(access))
}

const CREATE_SHAPE: &str = r#"{"name": NAME, "url": URL, "username": USER, "password": PASSWORD}"#;
const UPDATE_SHAPE: &str = r#"{"url": URL, "username": USER, "password": PASSWORD}"#;
const ACCESS_SHAPE: &str =
    r#"{"offering": OFFERING, "plan": PLAN, "org": ORG, "broker": BROKER, "enable": true}"#;

async fn list(State(s): S) -> Result<Json<Vec<ServiceBrokerResponse>>> {
    Ok(Json(s.apps.brokers().list(None)?))
}

async fn create(State(s): S, Extension(actor): Extension<Actor>, bytes: Bytes) -> Result<Response> {
    let req: CreateServiceBrokerRequest = body(&bytes, CREATE_SHAPE)?;
    let b = s.apps.brokers().create(req, None, &actor).await?;
    Ok((StatusCode::CREATED, Json(b)).into_response())
}

async fn update(
    State(s): S,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<ServiceBrokerResponse>> {
    let req: UpdateServiceBrokerRequest = body(&bytes, UPDATE_SHAPE)?;
    Ok(Json(s.apps.brokers().update(&name, req, None).await?))
}

async fn remove(State(s): S, Path(name): Path<String>) -> Result<Response> {
    s.apps.brokers().delete(&name, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn space_list(State(s): S, at: Scope) -> Result<Json<Vec<ServiceBrokerResponse>>> {
    Ok(Json(s.apps.brokers().list(Some(&at))?))
}

async fn space_create(State(s): S, at: Scope, bytes: Bytes) -> Result<Response> {
    let req: CreateServiceBrokerRequest = body(&bytes, CREATE_SHAPE)?;
    let b = s.apps.brokers().create(req, Some(&at), &at.actor).await?;
    Ok((StatusCode::CREATED, Json(b)).into_response())
}

async fn space_update(
    State(s): S,
    at: Scope,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<ServiceBrokerResponse>> {
    let req: UpdateServiceBrokerRequest = body(&bytes, UPDATE_SHAPE)?;
    Ok(Json(s.apps.brokers().update(&name, req, Some(&at)).await?))
}

async fn space_remove(State(s): S, at: Scope, Path(name): Path<String>) -> Result<Response> {
    s.apps.brokers().delete(&name, Some(&at)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct MarketplaceQuery {
    offering: Option<String>,
}

async fn marketplace(
    State(s): S,
    at: Scope,
    Query(q): Query<MarketplaceQuery>,
) -> Result<Json<Vec<MarketplaceOffering>>> {
    Ok(Json(
        s.apps.brokers().marketplace(&at, q.offering.as_deref())?,
    ))
}

async fn access(State(s): S, bytes: Bytes) -> Result<Json<ServiceAccessResponse>> {
    let req: ServiceAccessRequest = body(&bytes, ACCESS_SHAPE)?;
    Ok(Json(s.apps.brokers().set_access(req).await?))
}

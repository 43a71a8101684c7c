//! User endpoints (behind the token middleware, which put a [`Principal`] in each request):
//!
//! - `GET /v1/whoami` ([`WhoAmIResponse`]): who the token is.
//! - `GET /v1/users`, `POST /v1/users` ([`CreateUserRequest`] → 201 [`UserResponse`], 409 when
//!   the name is taken), `DELETE /v1/users/{name}` (204; the user's sessions are revoked): the
//!   platform admin only (the policy, [`crate::policy`]). Deleting a user deletes their roles.
//! - `PUT /v1/users/{name}/password` ([`SetPasswordRequest`] → 204): a user changes their own
//!   giving the old one; the admin sets anyone's without it (the policy lets no one else call it).
//!
//! Hashing takes tens of milliseconds of CPU, so it runs on a blocking thread.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use pier_api::{CreateUserRequest, SetPasswordRequest, UserResponse, WhoAmIResponse};

use super::{json_body_strict, ApiState};
use crate::error::{Error, Result};
use crate::users::{Principal, Users};

type S = State<ApiState>;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/users", get(list).post(create))
        .route("/v1/users/{name}", delete(remove))
        .route("/v1/users/{name}/password", put(set_password))
}

/// Runs `f` on a blocking thread (argon2id is CPU work).
async fn blocking<T: Send + 'static>(
    users: &Arc<Users>,
    f: impl FnOnce(&Users) -> Result<T> + Send + 'static,
) -> Result<T> {
    let users = users.clone();
    tokio::task::spawn_blocking(move || f(&users))
        .await
        .map_err(|e| Error::Other(format!("user task failed: {e}")))?
}

async fn whoami(Extension(who): Extension<Principal>) -> Json<WhoAmIResponse> {
    let (user_id, admin) = match &who {
        Principal::User { guid, .. } => (guid.clone(), false),
        Principal::Admin => (String::new(), true),
        Principal::Router => (String::new(), false),
    };
    Json(WhoAmIResponse {
        user_name: who.actor(),
        user_id,
        admin,
    })
}

async fn list(State(s): S) -> Result<Json<Vec<UserResponse>>> {
    Ok(Json(s.users.list()?))
}

async fn create(State(s): S, body: Bytes) -> Result<Response> {
    let req: CreateUserRequest = json_body_strict(&body)?;
    let user = blocking(&s.users, move |u| u.create(&req.name, &req.password)).await?;
    Ok((http::StatusCode::CREATED, Json(user)).into_response())
}

async fn remove(State(s): S, Path(name): Path<String>) -> Result<Response> {
    let guid = s.users.delete(&name)?;
    s.roles.forget_user(&guid)?;
    Ok(http::StatusCode::NO_CONTENT.into_response())
}

async fn set_password(
    State(s): S,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response> {
    // The policy let only the user themselves and the admin through.
    let own = matches!(&who, Principal::User { name: n, .. } if *n == name);
    let req: SetPasswordRequest = json_body_strict(&body)?;
    blocking(&s.users, move |u| {
        u.set_password(&name, req.old_password.as_deref(), &req.password, !own)
    })
    .await?;
    Ok(http::StatusCode::NO_CONTENT.into_response())
}

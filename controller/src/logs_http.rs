//! Log endpoints (`GET /v1/apps/{name}/logs`), merged into the authenticated API router.

use std::sync::Arc;

use axum::Router;

use crate::server::Ctx;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
}

//! `pier-controller`: Pier's control plane.
//!
//! ```text
//!   pier CLI ──HTTP──▶ http/ (axum, bearer auth)
//!                        │
//!        ┌───────────────┼──────────────────────────┐
//!        ▼               ▼                          ▼
//!   blobs (sha256)   staging/ (throwaway        store (sled: apps, events,
//!   packages,        container per build,       token hash)
//!   droplets         buildpacks read-only)          │ desired state
//!                                                   ▼
//!                    instances/ (one supervisor task per desired instance slot:
//!                    create → health check → RUNNING → wait for exit → backoff)
//!                        │ actual state (Docker, found by labels)
//!                        ▼
//!                    routing (RouteTable in a watch channel) ──▶ built-in router / GET /v1/routes
//! ```
//!
//! Invariants:
//! - The store is the desired state and is flushed before an API call answers.
//! - Docker is the actual state. Every object the controller makes carries `pier.controller=<id>`
//!   plus app/process/index/droplet labels, so a restarted controller adopts running instances
//!   (same container ids, no restart) and removes what nothing asks for.
//! - The route table only ever lists instances that passed their health check.
//! - Instances live on the controller's own Docker network, at addresses only the controller hands
//!   out ([`addresses`]); a released address is not reused before every router can be assumed to
//!   have the table that removed it (docs/router.md, "Never misroute").

pub mod addresses;
pub mod auth;
pub mod blobs;
pub mod buildpacks_http;
pub mod config;
pub mod deployments;
pub mod docker;
pub mod error;
pub mod http;
pub mod instances;
pub mod logs;
pub mod logs_http;
pub mod network;
pub mod package;
pub mod routing;
pub mod server;
pub mod stack;
pub mod staging;
pub mod store;

pub use config::Config;
pub use server::Controller;

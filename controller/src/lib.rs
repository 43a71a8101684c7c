//! `pier-controller`: Pier's control plane.
//!
//! ```text
//!   pier CLI ──HTTP──▶ http/ (axum, bearer auth: parse, call one service function, present)
//!                        │
//!                        ▼
//!                      apps/ (the app service: config, builds, lifecycle, deployments, delete)
//!        ┌───────────────┼───────────────────────────────┬───────────────────┐
//!        ▼               ▼                               ▼                   ▼
//!   staging/         store/ (sled: apps, events,    deployments/        reconcile.rs
//!   (package →       cleanup, addresses; blobs/     (revisions, canary  (desired vs actual,
//!    droplet in a    by sha256)                     judging, watcher)   every 2 s and on
//!    throwaway            │ desired state                               runtime events)
//!    container)           ▼                                                  │
//!        │           instances/ (one supervisor per desired slot: create → health check →
//!        │           RUNNING → exit/unhealthy → backoff; the route table)  ◀─┘
//!        │                │ actual state, through runtime/ (trait ContainerRuntime)
//!        └────────────────┴──────────▶ runtime/ ──▶ Docker (bollard) | FakeRuntime (tests)
//!                         │
//!                         ▼
//!                   instances/routing (RouteTable in a watch channel) ──▶ built-in router /
//!                                                                        GET /v1/routes
//! ```
//!
//! Dependencies point down the picture: `http` → `apps` → (`staging`, `deployments`,
//! `reconcile`, `instances`, `events`, `store`) → `runtime`, `store`, `logs`, `network`. Nothing
//! below reaches back up, and only `runtime/` talks to Docker.
//!
//! Quotas (`quota.rs`) sit beside `apps/`: every change of an app that can raise a space's or an
//! org's use is admitted there before it is written.
//!
//! Invariants:
//! - The store is the desired state and is flushed before an API call answers; a change that is
//!   saved is answered as saved, whatever convergence then meets (its failures become events).
//! - The runtime is the actual state. Every object the controller makes carries
//!   `pier.controller=<id>` plus app/process/index/droplet labels, so a restarted controller
//!   adopts running instances (same container ids, no restart) and removes what nothing asks for.
//! - The route table only ever lists instances that passed their health check.
//! - Instances live on their space's Docker network (one per space, so spaces cannot reach each
//!   other: `network`), at addresses only the controller hands out (`network/addresses`); a
//!   released address is not reused before every router can be
//!   assumed to have the table that removed it (docs/router.md, "Never misroute").

pub mod apps;
pub mod brokers;
pub mod builtin_brokers;
pub mod changes;
pub mod config;
pub mod deployments;
pub mod drain;
pub mod error;
pub mod events;
pub mod http;
pub mod images;
pub mod instances;
pub mod locks;
pub mod logs;
pub mod network;
pub mod policy;
pub mod quota;
pub mod reconcile;
pub mod registry;
pub mod roles;
pub mod runtime;
pub mod server;
pub mod staging;
pub mod store;
pub mod tenancy;
#[cfg(test)]
mod testkit;
pub mod users;

pub use config::Config;
pub use server::Controller;

//! Pier's built-in service brokers for PostgreSQL and Redis: an Open Service Broker API v2.17
//! server, so the built-ins go through the same protocol as any third-party broker.
//!
//! Every service instance is a container of the services image ([`image`]) running one server,
//! on its space's Docker network ([`placement`]), with its data in a named volume that outlives
//! the container, the broker and the machine (the container restarts unless stopped; a restarted
//! broker adopts its containers, [`Broker::adopt`]). Plans limit memory (the container's limit,
//! PostgreSQL's `shared_buffers`, Redis's `maxmemory`) and connections (`max_connections`,
//! `maxclients`). Each binding gets its own credentials ([`servers`]), revoked on unbind; the
//! broker reaches the server only through `docker exec`. Its records are one JSON file
//! ([`state`]).
//!
//! The controller runs it in process on a loopback port and registers it as a platform-wide
//! broker; `pier-broker serve` runs it alone.

pub mod broker;
pub mod catalog;
pub mod docker;
pub mod http;
pub mod image;
pub mod placement;
pub mod servers;
pub mod state;

pub use broker::{Broker, Config, Reply};
pub use placement::{Attachment, LabelledNetworks, Placement};

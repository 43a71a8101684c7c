//! The log broker: every app has one ring of recent lines, numbered by `seq`, that publishers
//! append to and readers follow with a cursor.
//!
//! ```text
//!  docker logs --follow (per instance) ─┐
//!  staging (STG/0), API/0, CELL/n ──────┼─▶ AppLog ring (seq 1,2,3…; window ≥ buffer) ──▶ readers
//!  router access log (RTR/n) ───────────┘       │  watch<seq> wakes readers                (cursor
//!                                               ▼                                           each)
//!                            persister: every 100 ms append new lines to
//!                            <data>/logs/<app guid>.ndjson (fsync every 1 s),
//!                            compacted to the last `buffer` lines
//! ```
//!
//! Invariants:
//! - Publishing never waits on a reader, on the disk or on the network: it takes the app's lock,
//!   pushes into the ring (evicting the oldest line past the window) and bumps a `watch`.
//! - A reader is a cursor (the last `seq` it got). Its queue is the part of the ring after its
//!   cursor, bounded by the window, so a stalled reader costs nothing and blocks no one. When the
//!   ring has moved past its cursor, the reader gets a [`LogDrop`] naming the exact `seq` range it
//!   missed, then continues with the oldest line still held. `seq` numbers have no holes, so lines
//!   received plus lines reported dropped always add up exactly.
//! - Resuming is starting a cursor at `after=SEQ`: no duplicates, and no gap while the ring still
//!   holds `SEQ + 1`.
//! - Lines longer than [`MAX_LINE_BYTES`] are split; bytes that are not UTF-8 become U+FFFD.
//! - The per-app rate limit (a token bucket: N lines/s sustained, bursts of B pass whole; on by
//!   default) drops app output (never platform lines) past it and publishes an `LGR` line saying
//!   how many were dropped, from which sources.
//! - Persistence: a line published more than ~100 ms before the controller is killed (even with
//!   `kill -9`) is in the file; one published more than ~1 s before a machine crash is on disk.
//!   Files are bounded (at most three buffers' worth of lines) and removed with their app.
//!
//! Modules: [`broker`] (the rings and readers), [`persist`] (the files and the persister task),
//! [`ingest`] (turning a container's output into lines: the one line splitter, used for
//! instances and staging alike). Uses: `runtime/` (to read a container's output), nothing else.

mod broker;
mod ingest;
mod persist;

pub use broker::{split_text, AppLog, LogBroker, Reader, Start, READER_WINDOW};
pub use ingest::{follow_instance, Splitter};
pub use persist::{run_persister, PERSIST_EVERY};

//! Recording what happened to an app: an event in the store (`pier events`) and, for changes made
//! through the API, an `API/0` line in the app's log. Failing to record is logged, never an error
//! of the operation that happened.

use std::sync::Arc;

use pier_api::{EventKind, LogSource, LogStream};
use time::OffsetDateTime;

use crate::logs::LogBroker;
use crate::store::Store;

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The platform admin, through the API (the admin token).
    Admin,
    /// A user, through the API, by name.
    User(String),
    /// The platform itself (crashes, convergence).
    Platform,
}

impl Actor {
    pub fn as_str(&self) -> &str {
        match self {
            Actor::Admin => "admin",
            Actor::User(name) => name,
            Actor::Platform => "pier",
        }
    }
}

#[derive(Clone)]
pub struct Events {
    store: Store,
    logs: Arc<LogBroker>,
}

impl Events {
    pub fn new(store: Store, logs: Arc<LogBroker>) -> Events {
        Events { store, logs }
    }

    /// Records an event; a change made through the API is also an `API/0` line in the app's log.
    pub fn record(&self, app_guid: &str, kind: EventKind, message: &str, actor: &Actor) {
        if let Err(e) = self
            .store
            .add_event(app_guid, kind, message, actor.as_str())
        {
            tracing::warn!(error = %e, %kind, "could not record event");
        }
        if *actor != Actor::Platform {
            self.logs.publish(
                app_guid,
                &LogSource::Api(0),
                LogStream::Out,
                &format!("{message} (by {})", actor.as_str()),
                OffsetDateTime::now_utc(),
            );
        }
    }
}

//! One lock per app: operations that change an app's droplet, revision or state are serialized
//! (the API, the deployment watcher), so each acts on the record the last one saved.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct AppLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl AppLocks {
    /// The lock of the app whose store key ([`crate::store::app_key`]) is `key`.
    pub fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone()
    }
}

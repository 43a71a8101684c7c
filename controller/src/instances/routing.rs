//! The route table as the controller publishes it: built from the store's routes and the
//! instances that passed their health check, sent through a `watch` channel to the built-in
//! router and to `GET /v1/routes` long-polls from standalone routers.

use std::sync::{Arc, Mutex};

use pier_api::{RouteEntry, RouteTable};
use tokio::sync::watch;

pub type TableRx = watch::Receiver<Option<Arc<RouteTable>>>;

pub struct Routing {
    epoch: String,
    tx: watch::Sender<Option<Arc<RouteTable>>>,
    lock: Mutex<()>,
}

impl Default for Routing {
    fn default() -> Self {
        Self::new()
    }
}

impl Routing {
    pub fn new() -> Routing {
        Routing {
            epoch: uuid::Uuid::new_v4().simple().to_string(),
            // None until the first table: routers answer 503, never a wrong 404, meanwhile.
            tx: watch::channel(None).0,
            lock: Mutex::new(()),
        }
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn subscribe(&self) -> TableRx {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Option<Arc<RouteTable>> {
        self.tx.borrow().clone()
    }

    /// Publishes a new table if it differs from the current one. Returns its version.
    pub fn publish(&self, mut routes: Vec<RouteEntry>) -> u64 {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        routes.sort_by(|a, b| (&a.host, &a.path).cmp(&(&b.host, &b.path)));
        for r in &mut routes {
            r.backends.sort_by_key(|b| b.index);
        }
        let current = self.tx.borrow().clone();
        if let Some(cur) = &current {
            if cur.routes == routes {
                return cur.version;
            }
        }
        let version = current.map(|c| c.version + 1).unwrap_or(1);
        self.tx.send_replace(Some(Arc::new(RouteTable {
            epoch: self.epoch.clone(),
            version,
            routes,
        })));
        version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(host: &str) -> RouteEntry {
        RouteEntry {
            host: host.into(),
            path: String::new(),
            app: "a".into(),
            app_guid: "g".into(),
            backends: vec![],
            balancing: Default::default(),
        }
    }

    #[test]
    fn version_moves_only_on_change() {
        let r = Routing::new();
        assert!(r.current().is_none());
        assert_eq!(r.publish(vec![entry("a.localhost")]), 1);
        assert_eq!(r.publish(vec![entry("a.localhost")]), 1);
        assert_eq!(
            r.publish(vec![entry("b.localhost"), entry("a.localhost")]),
            2
        );
        assert_eq!(r.current().unwrap().routes[0].host, "a.localhost");
    }
}

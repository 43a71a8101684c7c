//! The route table as the controller publishes it: built from the store's routes and the
//! instances that passed their health check, sent through a `watch` channel to the built-in
//! router and to `GET /v1/routes` long-polls from standalone routers. Internal routes
//! (`apps.internal`) are never in that table: they go, with the same healthy instances, to the
//! controller's DNS server (`network/dns.rs`) as [`InternalNames`].

use std::sync::{Arc, Mutex};

use pier_api::{RouteEntry, RouteTable};
use tokio::sync::watch;

use crate::network::dns::InternalNames;

pub type TableRx = watch::Receiver<Option<Arc<RouteTable>>>;

pub struct Routing {
    epoch: String,
    tx: watch::Sender<Option<Arc<RouteTable>>>,
    lock: Mutex<()>,
    internal: watch::Sender<Arc<InternalNames>>,
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
            internal: watch::channel(Arc::new(InternalNames::default())).0,
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

    /// The internal routes' names, as the DNS server answers them.
    pub fn internal(&self) -> watch::Receiver<Arc<InternalNames>> {
        self.internal.subscribe()
    }

    /// Publishes the internal routes' names (if they changed).
    pub fn publish_internal(&self, names: InternalNames) {
        self.internal.send_if_modified(|cur| {
            let changed = **cur != names;
            if changed {
                *cur = Arc::new(names);
            }
            changed
        });
    }

    /// Publishes a new table if it differs from the current one. Returns its version. A route on
    /// `apps.internal` is never given to the routers: it is left out (they answer 404 for it).
    pub fn publish(&self, mut routes: Vec<RouteEntry>) -> u64 {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        routes.retain(|r| {
            let internal = pier_api::is_internal_host(&r.host);
            if internal {
                tracing::warn!(host = %r.host, "an internal route is not for the routers; left out of the table");
            }
            !internal
        });
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

    #[test]
    fn internal_routes_never_reach_the_routers_table() {
        let r = Routing::new();
        let v = r.publish(vec![entry("a.localhost"), entry("B.apps.internal")]);
        let t = r.current().unwrap();
        assert_eq!(t.version, v);
        let hosts: Vec<&str> = t.routes.iter().map(|e| e.host.as_str()).collect();
        assert_eq!(hosts, vec!["a.localhost"]);
        assert_eq!(r.publish(vec![entry("a.localhost")]), v, "the same table");
    }

    #[test]
    fn internal_names_are_sent_when_they_change() {
        let r = Routing::new();
        let mut rx = r.internal();
        let mut names = InternalNames::default();
        names.insert(
            "pier-c1",
            "b.apps.internal",
            ["10.213.0.2".parse().unwrap()],
        );
        r.publish_internal(names.clone());
        assert!(rx.has_changed().unwrap());
        assert_eq!(**rx.borrow_and_update(), names);
        r.publish_internal(names);
        assert!(!rx.has_changed().unwrap(), "unchanged: not sent again");
    }
}

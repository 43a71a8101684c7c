//! The routing table: pure data, built once per [`RouteTable`] the controller publishes.
//!
//! Lookup is by host (lowercased, port and trailing dot stripped) and then by the longest path prefix
//! that matches on a segment boundary: route `/api` matches `/api`, `/api/` and `/api/x`, never
//! `/apix`. A route without a path matches every path of its host.
//!
//! Each route owns its load-balancing state (a round-robin cursor that starts at a random index and,
//! for least-connections, a per-backend in-flight count). A new table starts fresh; that is cheap and
//! keeps the table free of locks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::HeaderValue;
use pier_api::{Backend, RouteEntry, RouteTable};

use crate::in_flight::{Counter, InFlight, InFlightGuard};

pub use pier_api::Balancing;

/// One route with its backends and balancing state.
#[derive(Debug)]
pub struct Route {
    pub host: String,
    pub path: String,
    pub app: String,
    pub app_guid: String,
    pub backends: Vec<Backend>,
    pub balancing: Balancing,
    cursor: AtomicUsize,
    /// Per backend, shared by every table that lists the instance (see [`InFlight`]).
    in_flight: Vec<Arc<Counter>>,
    /// Backend indexes in weighted round-robin order (each backend once when weights are equal).
    schedule: Vec<usize>,
    /// Per backend, made once per table rather than per request: the instance id as a header
    /// value.
    instance_ids: Vec<HeaderValue>,
    /// The app guid as a header value (`X-CF-ApplicationID`), made once per table.
    app_guid_header: HeaderValue,
}

impl Route {
    fn new(entry: &RouteEntry, in_flight: &InFlight) -> Self {
        let n = schedule(&entry.backends).len();
        let start = if n > 1 { rand::random_range(0..n) } else { 0 };
        Route {
            host: normalize_host(&entry.host).to_string(),
            path: entry.path.trim_end_matches('/').to_string(),
            app: entry.app.clone(),
            app_guid: entry.app_guid.clone(),
            backends: entry.backends.clone(),
            balancing: entry.balancing,
            cursor: AtomicUsize::new(start),
            in_flight: entry
                .backends
                .iter()
                .map(|b| in_flight.counter(&b.instance_id))
                .collect(),
            schedule: schedule(&entry.backends),
            instance_ids: entry
                .backends
                .iter()
                .map(|b| {
                    HeaderValue::from_str(&b.instance_id)
                        .unwrap_or_else(|_| HeaderValue::from_static("-"))
                })
                .collect(),
            app_guid_header: HeaderValue::from_str(&entry.app_guid)
                .unwrap_or_else(|_| HeaderValue::from_static("-")),
        }
    }

    /// The app guid as a header value (`X-CF-ApplicationID`).
    pub fn app_guid_header(&self) -> &HeaderValue {
        &self.app_guid_header
    }

    /// Backend `i`'s instance id as a header value (`X-CF-InstanceID`).
    pub fn instance_id_header(&self, i: usize) -> &HeaderValue {
        &self.instance_ids[i]
    }

    /// Picks the next backend, skipping those for which `usable` says no. Returns its index into
    /// [`Route::backends`], or `None` when no backend is usable.
    pub fn pick(&self, usable: impl Fn(usize, &Backend) -> bool) -> Option<usize> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let order = (0..n).map(|k| (start.wrapping_add(k)) % n);
        match self.balancing {
            Balancing::RoundRobin => {
                let s = &self.schedule;
                let first = (0..s.len())
                    .map(|k| s[start.wrapping_add(k) % s.len()])
                    .find(|&i| usable(i, &self.backends[i]));
                // Weight-0 backends are out of the rotation, but still better than nothing.
                first.or_else(|| order.into_iter().find(|&i| usable(i, &self.backends[i])))
            }
            Balancing::LeastConnections => order
                .filter(|&i| usable(i, &self.backends[i]))
                .min_by_key(|&i| self.in_flight[i].current()),
        }
    }

    /// The index of the backend whose instance id is `instance_id`, if it is still in this route.
    pub fn find_instance(&self, instance_id: &str) -> Option<usize> {
        self.backends
            .iter()
            .position(|b| b.instance_id == instance_id)
    }

    /// Counts a request in flight on backend `i` until the returned guard drops
    /// (least-connections, and draining: [`InFlight::wait_idle`]).
    pub fn start_request(&self, i: usize) -> InFlightGuard {
        InFlightGuard::start(self.in_flight.get(i))
    }

    /// Whether `path` falls under this route's path prefix, on a segment boundary.
    pub fn matches_path(&self, path: &str) -> bool {
        path_has_prefix(path, &self.path)
    }
}

/// Weighted round-robin order (smooth, as nginx does it: heavy backends are spread out, not
/// bunched). Equal weights give each backend once.
fn schedule(backends: &[Backend]) -> Vec<usize> {
    let weights: Vec<u64> = backends.iter().map(|b| u64::from(b.weight)).collect();
    if weights
        .iter()
        .all(|&w| w == weights.first().copied().unwrap_or(0))
    {
        return (0..backends.len()).collect();
    }
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let g = weights
        .iter()
        .copied()
        .filter(|&w| w > 0)
        .fold(0, gcd)
        .max(1);
    let mut w: Vec<u64> = weights.iter().map(|x| x / g).collect();
    // Bound the schedule's length; keep every non-zero weight at least 1.
    let total: u64 = w.iter().sum();
    if total > 1000 {
        w = w
            .iter()
            .map(|&x| if x == 0 { 0 } else { (x * 1000 / total).max(1) })
            .collect();
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &x) in current.iter_mut().zip(&w) {
            *c += x as i64;
        }
        let Some((best, _)) = current.iter().enumerate().max_by_key(|(_, c)| **c) else {
            break;
        };
        current[best] -= total;
        out.push(best);
    }
    out
}

/// The lookup structure the proxy consults on every request.
#[derive(Debug, Default)]
pub struct Table {
    pub epoch: String,
    pub version: u64,
    /// Routes per host, longest path first.
    hosts: HashMap<String, Vec<Arc<Route>>>,
}

impl Table {
    /// Builds the table, its in-flight counts taken from `in_flight`. When two entries name the
    /// same host and path (the controller should never send that), the first wins, so a route
    /// cannot silently change owner.
    pub fn new(src: &RouteTable, in_flight: &InFlight) -> Self {
        let mut hosts: HashMap<String, Vec<Arc<Route>>> = HashMap::new();
        for entry in &src.routes {
            let route = Route::new(entry, in_flight);
            let routes = hosts.entry(route.host.clone()).or_default();
            if routes.iter().any(|r| r.path == route.path) {
                tracing::warn!(host = %route.host, path = %route.path, app = %route.app,
                    "duplicate route in table; keeping the first");
                continue;
            }
            routes.push(Arc::new(route));
        }
        for routes in hosts.values_mut() {
            routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        }
        Table {
            epoch: src.epoch.clone(),
            version: src.version,
            hosts,
        }
    }

    /// The route for `host` (as found in a Host header) and `path`: longest matching prefix wins.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let host = normalize_host(host);
        let routes = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.hosts.get(&host.to_ascii_lowercase())
        } else {
            self.hosts.get(host)
        }?;
        routes.iter().find(|r| r.matches_path(path))
    }

    /// Number of routes in the table.
    pub fn len(&self) -> usize {
        self.hosts.values().map(Vec::len).sum()
    }

    /// Whether the table holds no route.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

/// Strips the port and a trailing dot from a Host header value. Case is left alone.
pub fn normalize_host(host: &str) -> &str {
    let host = host.trim();
    let host = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: `[::1]:8080`
        match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        match host.rfind(':') {
            Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
            _ => host,
        }
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// `prefix` is empty or starts with `/` and has no trailing `/`.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn backend(port: u16, index: u32) -> Backend {
        Backend {
            addr: ([127, 0, 0, 1], port).into(),
            instance_id: format!("inst-{port}"),
            index,
            weight: 1,
        }
    }

    fn entry(host: &str, path: &str, app: &str, ports: &[u16]) -> RouteEntry {
        RouteEntry {
            host: host.into(),
            path: path.into(),
            app: app.into(),
            app_guid: format!("guid-{app}"),
            backends: ports
                .iter()
                .enumerate()
                .map(|(i, p)| backend(*p, i as u32))
                .collect(),
            balancing: Balancing::RoundRobin,
        }
    }

    fn table(entries: Vec<RouteEntry>) -> Table {
        Table::new(
            &RouteTable {
                epoch: "e".into(),
                version: 1,
                routes: entries,
            },
            &InFlight::default(),
        )
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("a.localhost:8080"), "a.localhost");
        assert_eq!(normalize_host("a.localhost."), "a.localhost");
        assert_eq!(normalize_host("a.localhost.:80"), "a.localhost");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("plain"), "plain");
    }

    #[test]
    fn lookup_by_host_is_case_insensitive_and_ignores_port() {
        let t = table(vec![
            entry("a.localhost", "", "a", &[1]),
            entry("b.localhost", "", "b", &[2]),
        ]);
        assert_eq!(
            t.lookup("A.LocalHost:8080", "/").map(|r| r.app.as_str()),
            Some("a")
        );
        assert_eq!(
            t.lookup("b.localhost", "/x").map(|r| r.app.as_str()),
            Some("b")
        );
        assert!(t.lookup("c.localhost", "/").is_none());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let t = table(vec![
            entry("h.localhost", "", "root", &[1]),
            entry("h.localhost", "/api", "api", &[2]),
            entry("h.localhost", "/api/v2", "v2", &[3]),
        ]);
        let app = |p: &str| t.lookup("h.localhost", p).map(|r| r.app.clone());
        assert_eq!(app("/").as_deref(), Some("root"));
        assert_eq!(app("/api").as_deref(), Some("api"));
        assert_eq!(app("/api/").as_deref(), Some("api"));
        assert_eq!(app("/api/x").as_deref(), Some("api"));
        assert_eq!(app("/apix").as_deref(), Some("root"));
        assert_eq!(app("/api/v2").as_deref(), Some("v2"));
        assert_eq!(app("/api/v2/users").as_deref(), Some("v2"));
        assert_eq!(app("/api/v20").as_deref(), Some("api"));
    }

    #[test]
    fn path_only_routes_do_not_catch_other_paths() {
        let t = table(vec![entry("h.localhost", "/api", "api", &[2])]);
        assert!(t.lookup("h.localhost", "/").is_none());
        assert!(t.lookup("h.localhost", "/apix").is_none());
        assert!(t.lookup("h.localhost", "/api/1").is_some());
    }

    #[test]
    fn duplicate_route_keeps_first_owner() {
        let t = table(vec![
            entry("h.localhost", "", "first", &[1]),
            entry("h.localhost", "", "second", &[2]),
        ]);
        assert_eq!(
            t.lookup("h.localhost", "/").map(|r| r.app.as_str()),
            Some("first")
        );
    }

    #[test]
    fn round_robin_visits_every_backend_evenly() {
        let t = table(vec![entry("h", "", "a", &[1, 2, 3])]);
        let r = t.lookup("h", "/").expect("route");
        let mut counts = [0; 3];
        for _ in 0..30 {
            counts[r.pick(|_, _| true).expect("pick")] += 1;
        }
        assert_eq!(counts, [10, 10, 10]);
    }

    #[test]
    fn round_robin_starts_at_a_random_index() {
        let starts: HashSet<usize> = (0..200)
            .map(|_| {
                let t = table(vec![entry("h", "", "a", &[1, 2, 3, 4])]);
                t.lookup("h", "/")
                    .and_then(|r| r.pick(|_, _| true))
                    .expect("pick")
            })
            .collect();
        assert!(starts.len() > 1, "every table started at the same backend");
    }

    #[test]
    fn pick_skips_unusable_backends() {
        let t = table(vec![entry("h", "", "a", &[1, 2, 3])]);
        let r = t.lookup("h", "/").expect("route");
        for _ in 0..10 {
            assert_eq!(r.pick(|_, b| b.addr.port() == 2), Some(1));
        }
        assert_eq!(r.pick(|_, _| false), None);
        let empty = table(vec![entry("e", "", "a", &[])]);
        assert_eq!(
            empty.lookup("e", "/").expect("route").pick(|_, _| true),
            None
        );
    }

    #[test]
    fn least_connections_prefers_idle_backends() {
        let t = table(vec![RouteEntry {
            balancing: Balancing::LeastConnections,
            ..entry("h", "", "a", &[1, 2])
        }]);
        let r = t.lookup("h", "/").expect("route");
        let first = r.pick(|_, _| true).expect("pick");
        let _busy = r.start_request(first);
        for _ in 0..5 {
            assert_eq!(r.pick(|_, _| true), Some(1 - first));
        }
        drop(_busy);
        let picks: HashSet<usize> = (0..4).filter_map(|_| r.pick(|_, _| true)).collect();
        assert_eq!(picks.len(), 2);
    }

    #[test]
    fn find_instance_by_id() {
        let t = table(vec![entry("h", "", "a", &[1, 2])]);
        let r = t.lookup("h", "/").expect("route");
        assert_eq!(r.find_instance("inst-2"), Some(1));
        assert_eq!(r.find_instance("gone"), None);
    }

    #[test]
    fn weights_share_traffic_and_zero_leaves_the_rotation() {
        let mut bs = vec![backend(1, 0), backend(2, 1), backend(3, 2)];
        bs[0].weight = 90;
        bs[1].weight = 90;
        bs[2].weight = 20; // a canary at 10 % of three... of two baseline instances
        let sched = schedule(&bs);
        let share = |i| sched.iter().filter(|&&x| x == i).count() as f64 / sched.len() as f64;
        assert!((share(2) - 0.1).abs() < 0.01, "{sched:?}");
        assert!((share(0) - 0.45).abs() < 0.01);
        // Spread out, not bunched: the canary never comes twice in a row.
        assert!(sched.windows(2).all(|w| !(w[0] == 2 && w[1] == 2)));
        bs[0].weight = 0;
        bs[1].weight = 0;
        assert_eq!(schedule(&bs), vec![2]);
        let equal = vec![backend(1, 0), backend(2, 1)];
        assert_eq!(schedule(&equal), vec![0, 1]);
    }

    #[test]
    fn in_flight_is_counted_per_instance_across_tables() {
        let e = RouteEntry {
            host: "w.localhost".into(),
            path: String::new(),
            app: "w".into(),
            app_guid: "g".into(),
            backends: vec![backend(4242, 0)],
            balancing: Default::default(),
        };
        let in_flight = InFlight::default();
        let old = Arc::new(Route::new(&e, &in_flight));
        let guard = old.start_request(0);
        assert_eq!(in_flight.count("inst-4242"), 1);
        // A newer table without the instance still sees the old table's request until it ends.
        let _new = Route::new(
            &RouteEntry {
                backends: vec![],
                ..e.clone()
            },
            &in_flight,
        );
        assert_eq!(in_flight.count("inst-4242"), 1);
        drop(guard);
        assert_eq!(in_flight.count("inst-4242"), 0);
    }
}

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::is_dns_label;

/// The domain of internal routes: `<host>.apps.internal` names an app's healthy instances to the
/// other instances of its space (the controller answers DNS for it on each space's network), on
/// the app's own port [`INTERNAL_PORT`], never through a router.
pub const INTERNAL_DOMAIN: &str = "apps.internal";

/// The port an internal route is reached on: the instance's own.
pub const INTERNAL_PORT: u16 = 8080;

/// Whether `host` is on [`INTERNAL_DOMAIN`] (a name under it, or the domain itself).
pub fn is_internal_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == INTERNAL_DOMAIN
        || host
            .strip_suffix(INTERNAL_DOMAIN)
            .is_some_and(|h| h.ends_with('.'))
}

/// A route as a user writes it: `host.domain` or `host.domain/path`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RouteSpec {
    /// Lowercase fully qualified host name, no port.
    pub host: String,
    /// Empty, or a path prefix starting with `/` and not ending with one.
    pub path: String,
}

impl FromStr for RouteSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let s = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
            .unwrap_or(s);
        let (host, path) = match s.find('/') {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, ""),
        };
        let host = host.to_ascii_lowercase();
        if let Some((name, port)) = host.rsplit_once(':') {
            return Err(format!(
                "route {s:?} has a port ({port}): a route is a host and an optional path, reached \
                 on the router's port, or for internal routes ({INTERNAL_DOMAIN}) on the app's port \
                 {INTERNAL_PORT}; map {name:?} instead"
            ));
        }
        if host.is_empty() || host.len() > 253 || !host.split('.').all(is_dns_label) {
            return Err(format!(
                "route {s:?} has an invalid host: use DNS labels separated by dots, like app.example.com"
            ));
        }
        let path = path.trim_end_matches('/');
        if path.contains("//")
            || path.contains("/../")
            || path.ends_with("/..")
            || path.contains(|c: char| c.is_whitespace() || c == '?' || c == '#')
        {
            return Err(format!("route {s:?} has an invalid path"));
        }
        Ok(RouteSpec {
            host,
            path: path.to_string(),
        })
    }
}

impl RouteSpec {
    /// Whether this is an internal route (on [`INTERNAL_DOMAIN`]).
    pub fn is_internal(&self) -> bool {
        is_internal_host(&self.host)
    }
}

impl TryFrom<String> for RouteSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<RouteSpec> for String {
    fn from(r: RouteSpec) -> String {
        r.to_string()
    }
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.host, self.path)
    }
}

/// One running, healthy instance the router may send a route's traffic to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub addr: SocketAddr,
    /// The instance's guid (`CF_INSTANCE_GUID`); unique for the life of the container.
    pub instance_id: String,
    pub index: u32,
    /// Share of the route's traffic relative to the other backends (canary steps); 1 when absent.
    /// 0 takes the backend out of round-robin rotation.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

fn is_one(w: &u32) -> bool {
    *w == 1
}

/// How the router spreads one route's requests over its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balancing {
    /// Round-robin from a random start index (gorouter's default).
    #[default]
    RoundRobin,
    /// The instance with the fewest requests in flight through this router; ties go round-robin.
    LeastConnections,
}

/// A route and the instances behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    pub host: String,
    #[serde(default)]
    pub path: String,
    pub app: String,
    pub app_guid: String,
    /// Empty when the app has no running instance: the router answers 503, not 404.
    pub backends: Vec<Backend>,
    /// Load balancing for this route; absent on the wire means round-robin, so tables from
    /// before this field existed still parse.
    #[serde(default)]
    pub balancing: Balancing,
}

/// The router's whole table. The controller bumps `version` on every change; `epoch` changes each
/// time the controller starts, so a router never mistakes a new controller's version 1 for old news.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RouteTable {
    pub epoch: String,
    pub version: u64,
    pub routes: Vec<RouteEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn route_specs() {
        let r: RouteSpec = "Hello.Example.com/api/".parse().unwrap();
        assert_eq!(r.host, "hello.example.com");
        assert_eq!(r.path, "/api");
        assert_eq!(r.to_string(), "hello.example.com/api");
        assert!("bad_host.com".parse::<RouteSpec>().is_err());
        assert!("".parse::<RouteSpec>().is_err());
        assert!("a.com/x/../y".parse::<RouteSpec>().is_err());
    }

    #[test]
    fn internal_routes_and_ports() {
        let r: RouteSpec = "B.Apps.Internal".parse().unwrap();
        assert!(r.is_internal());
        assert!(is_internal_host("b.apps.internal."));
        assert!(is_internal_host("apps.internal"));
        assert!(!is_internal_host("bapps.internal"));
        assert!(!is_internal_host("b.apps.internal.example.com"));
        assert!(!"b.localhost".parse::<RouteSpec>().unwrap().is_internal());
        let err = "b.apps.internal:8080".parse::<RouteSpec>().unwrap_err();
        assert!(err.contains("has a port (8080)"), "{err}");
        assert!(err.contains("map \"b.apps.internal\" instead"), "{err}");
    }

    #[test]
    fn balancing_defaults_to_round_robin_on_the_wire() {
        let old = r#"{"host":"a.com","app":"a","app_guid":"g","backends":[]}"#;
        let e: RouteEntry = serde_json::from_str(old).unwrap();
        assert_eq!(e.balancing, Balancing::RoundRobin);
        let new = r#"{"host":"a.com","app":"a","app_guid":"g","backends":[],"balancing":"least_connections"}"#;
        let e: RouteEntry = serde_json::from_str(new).unwrap();
        assert_eq!(e.balancing, Balancing::LeastConnections);
        assert!(serde_json::to_string(&e)
            .unwrap()
            .contains("\"least_connections\""));
    }
}

/// Map or unmap a route (`POST /v1/apps/{name}/routes`, `DELETE /v1/apps/{name}/routes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRequest {
    pub route: RouteSpec,
}

/// One route and the app it is mapped to (`GET /v1/route-mappings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteMapping {
    pub route: RouteSpec,
    pub app: String,
    pub url: String,
}

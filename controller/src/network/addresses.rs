//! Instance addresses: the controller is the only allocator of the IPs instances get on its Docker
//! network, and it holds a released address back until no router can still send traffic to it
//! (docs/router.md, invariants C2 and C4).
//!
//! ```text
//!  (free) ──allocate──▶ InUse{instance} ──container gone, after the table without it──▶ Released{at, V, epoch}
//!    ▲                      │ never routed (its start failed, its container is gone)          │
//!    ├──────────────────────┘                                                                 │
//!    └── reusable once BOTH: the quarantine Q has passed since `at` (for an earlier epoch: ────┘
//!        since max(at, this controller's start)), AND every standalone router heard from
//!        within the ack window has polled with this epoch and a version ≥ V (any version of
//!        this epoch for an earlier epoch's release)
//! ```
//!
//! The pool knows every instance network of the controller (one per space, `network/mod.rs`), each
//! with its own subnet; an address is allocated on the network its instance attaches to, while
//! router acknowledgements, drains and quarantine stay in one place for all of them. States are
//! kept by address, not by network, so a subnet that a deleted space's network had and a new one
//! gets again still holds its released addresses back.
//!
//! Allocation is serial per network: it continues after the address handed out last there and
//! wraps around, so a released address is the last one to come back even once it may. The network
//! address, the gateway (network + 1) and the broadcast address are never handed out.
//!
//! The states live in the store ([`AddressStore`]: `a.b.c.d` → [`AddrState`]), written and flushed
//! before the address is used, so a restarted controller knows what is in use and what is still in
//! quarantine. What routers acknowledged is kept in memory only: after a restart, addresses released
//! by the previous run wait the full quarantine from this start (or from their release, if later),
//! and every router seen since must have polled with the new epoch.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::store::AddressStore;

/// An IPv4 network: its (network) address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// `network` must have no host bits set.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Ipv4Net, String> {
        if prefix > 32 {
            return Err(format!("/{prefix} is not an IPv4 prefix length (0-32)"));
        }
        let net = Ipv4Net { network, prefix };
        if u32::from(network) & !net.mask() != 0 {
            let fixed = Ipv4Addr::from(u32::from(network) & net.mask());
            return Err(format!(
                "{network}/{prefix} has host bits set; the network is {fixed}/{prefix}"
            ));
        }
        Ok(net)
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    fn first(&self) -> u32 {
        u32::from(self.network)
    }

    fn last(&self) -> u32 {
        self.first() | !self.mask()
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.last())
    }

    /// The bridge's own address on the network: the first one after the network address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.first().wrapping_add(1))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.first()
    }

    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// Addresses instances may get: all but network, gateway and broadcast.
    pub fn host_count(&self) -> u32 {
        (self.last() - self.first() + 1).saturating_sub(3)
    }

    fn first_host(&self) -> u32 {
        self.first() + 2
    }

    fn last_host(&self) -> u32 {
        self.last() - 1
    }

    /// The `n`-th subnet of length `prefix` inside this network, if there is one.
    pub fn subnet(&self, prefix: u8, n: u32) -> Option<Ipv4Net> {
        if prefix < self.prefix || prefix > 32 {
            return None;
        }
        let bits = u32::from(prefix - self.prefix);
        if bits < 32 && n >= (1u32 << bits) {
            return None;
        }
        let size = if prefix == 0 {
            0
        } else {
            1u32 << (32 - prefix)
        };
        Some(Ipv4Net {
            network: Ipv4Addr::from(self.first() + n * size),
            prefix,
        })
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Ipv4Net, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR like 10.213.7.0/24"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} in {s:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("{prefix:?} in {s:?} is not a prefix length"))?;
        Ipv4Net::new(addr, prefix)
    }
}

/// What the controller knows about one address of its network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AddrState {
    /// Given to an instance (its container may still be being created).
    InUse { instance_id: String },
    /// Its container is gone; `table_version` of `epoch` was published when that was seen, and
    /// no later table lists the address.
    Released {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        table_version: u64,
        epoch: String,
    },
}

/// Wall-clock time, replaceable in tests. Wall clock because release times outlive the process.
pub trait Clock: Send + Sync {
    fn now(&self) -> OffsetDateTime;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// How long released addresses are held back.
#[derive(Debug, Clone, Copy)]
pub struct Quarantine {
    /// The least time between a release and a reuse.
    pub min: Duration,
    /// Routers heard from within this time must have acknowledged the release; a router silent
    /// for longer is taken to be gone.
    pub ack_window: Duration,
}

/// The table a standalone router said it holds, on its latest poll.
#[derive(Debug, Clone)]
struct RouterAck {
    epoch: String,
    version: u64,
    last_seen: OffsetDateTime,
    /// Instances no longer in that table the router still has requests in flight to.
    draining: Vec<String>,
}

/// A router that polled within this long is alive for drains: a connected router is always in a
/// long-poll (held at most ~25 s) or starting the next one. Longer than that, a drain stops
/// waiting for it (the address quarantine still does, for the whole ack window).
const DRAIN_LIVENESS: Duration = Duration::from_secs(45);

/// Most routers remembered at once (ids come from authenticated callers; this only bounds memory).
const MAX_ROUTERS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("{0}")]
    Exhausted(Exhausted),
    #[error("the instance network {0} is not one the address pool knows")]
    UnknownNetwork(String),
    #[error("cannot record instance addresses in the store: {0}")]
    Store(#[from] crate::error::Error),
}

/// No address may be handed out now; says why and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    pub subnet: Ipv4Net,
    pub in_use: usize,
    pub quarantined: usize,
    /// The earliest end of a quarantine still running, if one is.
    pub until: Option<OffsetDateTime>,
    /// Routers whose acknowledgement holds at least one address back.
    pub waiting_for: Vec<String>,
}

impl fmt::Display for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no free instance address in {}: {} in use, {} in quarantine",
            self.subnet, self.in_use, self.quarantined
        )?;
        let mut sep = " until";
        if let Some(t) = self.until {
            write!(f, "{sep} {}", rfc3339_secs(t))?;
            sep = " and until";
        }
        if !self.waiting_for.is_empty() {
            write!(
                f,
                "{sep} router(s) {} acknowledge the route table that removed them",
                self.waiting_for.join(", ")
            )?;
        }
        Ok(())
    }
}

fn rfc3339_secs(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

struct Inner {
    /// The instance networks, by name, and their subnets.
    networks: BTreeMap<String, Ipv4Net>,
    states: BTreeMap<Ipv4Addr, AddrState>,
    /// The address handed out last on each subnet: allocation there continues after it.
    last: HashMap<Ipv4Net, Ipv4Addr>,
    routers: HashMap<String, RouterAck>,
    /// Instances whose address a task of this process looks after (it was allocated here and the
    /// instance is starting or running, or it was adopted). [`AddressPool::sweep`] leaves them be.
    held: HashSet<String>,
}

/// Why one released address may not be reused yet.
struct Blocked {
    until: Option<OffsetDateTime>,
    routers: Vec<String>,
}

/// The allocator. One per controller; every method is quick (no Docker, one sled write at most).
pub struct AddressPool {
    quarantine: Quarantine,
    epoch: String,
    /// When this controller (epoch) started: the restart rule counts from here.
    started: OffsetDateTime,
    clock: Arc<dyn Clock>,
    store: AddressStore,
    inner: Mutex<Inner>,
}

impl AddressPool {
    /// Loads the states kept in `store`; entries outside every one of `networks` (an earlier
    /// network's) are dropped.
    pub fn open(
        store: AddressStore,
        networks: &[(String, Ipv4Net)],
        quarantine: Quarantine,
        epoch: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<AddressPool, AddressError> {
        let states: BTreeMap<Ipv4Addr, AddrState> = store
            .load(|ip| networks.iter().any(|(_, n)| n.contains(ip)))?
            .into_iter()
            .collect();
        let mut last = HashMap::new();
        for (_, subnet) in networks {
            if let Some(ip) = store.last_in(*subnet)? {
                last.insert(*subnet, ip);
            }
        }
        Ok(AddressPool {
            quarantine,
            epoch: epoch.to_string(),
            started: clock.now(),
            clock,
            store,
            inner: Mutex::new(Inner {
                networks: networks.iter().cloned().collect(),
                states,
                last,
                routers: HashMap::new(),
                held: HashSet::new(),
            }),
        })
    }

    /// Addresses may be handed out on `name` (a space's network, made after the pool opened).
    pub fn add_network(&self, name: &str, subnet: Ipv4Net) -> Result<(), AddressError> {
        let last = self.store.last_in(subnet)?;
        let mut inner = self.lock();
        inner.networks.insert(name.to_string(), subnet);
        if let Some(ip) = last {
            inner.last.entry(subnet).or_insert(ip);
        }
        Ok(())
    }

    /// No more addresses on `name` (its network is gone). The states of its addresses stay: a
    /// released one is still held back if the subnet comes back with another network.
    pub fn remove_network(&self, name: &str) {
        self.lock().networks.remove(name);
    }

    /// The subnet of the network `name`, if the pool knows it.
    pub fn subnet(&self, name: &str) -> Option<Ipv4Net> {
        self.lock().networks.get(name).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn persist(&self, ip: Ipv4Addr, state: Option<&AddrState>) -> Result<(), AddressError> {
        Ok(self.store.put(ip, state)?)
    }

    /// Hands out the next reusable address of `network` after the last one there and records it
    /// as in use by `instance_id` (flushed before it returns).
    pub fn allocate(&self, instance_id: &str, network: &str) -> Result<Ipv4Addr, AddressError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let subnet = *inner
            .networks
            .get(network)
            .ok_or_else(|| AddressError::UnknownNetwork(network.to_string()))?;
        let (lo, hi) = (subnet.first_host(), subnet.last_host());
        if lo > hi {
            return Err(AddressError::Exhausted(self.exhausted(&inner, subnet, now)));
        }
        let start = match inner.last.get(&subnet).copied().map(u32::from) {
            Some(l) if (lo..=hi).contains(&l) => l,
            _ => hi,
        };
        let span = hi - lo + 1;
        let mut found = None;
        for step in 1..=span {
            let candidate = Ipv4Addr::from(lo + (start - lo + step) % span);
            let free = match inner.states.get(&candidate) {
                None => true,
                Some(AddrState::InUse { .. }) => false,
                Some(s @ AddrState::Released { .. }) => self.blocked(&inner, s, now).is_none(),
            };
            if free {
                found = Some(candidate);
                break;
            }
        }
        let Some(ip) = found else {
            return Err(AddressError::Exhausted(self.exhausted(&inner, subnet, now)));
        };
        let state = AddrState::InUse {
            instance_id: instance_id.to_string(),
        };
        self.persist(ip, Some(&state))?;
        self.store.set_last(subnet, ip)?;
        inner.states.insert(ip, state);
        inner.last.insert(subnet, ip);
        inner.held.insert(instance_id.to_string());
        Ok(ip)
    }

    /// Records an instance found running (a restarted controller adopting it) as the holder of its
    /// address. Returns false when the address is on none of this pool's networks (an instance
    /// started on Docker's default bridge by an older Pier, say), which the pool does not track.
    pub fn adopt(&self, ip: Ipv4Addr, instance_id: &str) -> Result<bool, AddressError> {
        let mut inner = self.lock();
        if !inner.networks.values().any(|n| n.contains(ip)) {
            return Ok(false);
        }
        let state = AddrState::InUse {
            instance_id: instance_id.to_string(),
        };
        if inner.states.get(&ip) != Some(&state) {
            if let Some(old) = inner.states.get(&ip) {
                tracing::warn!(%ip, instance = instance_id, was = ?old, "adopted instance holds an address the store had otherwise; it is in use again");
            }
            self.persist(ip, Some(&state))?;
            inner.states.insert(ip, state);
        }
        inner.held.insert(instance_id.to_string());
        Ok(true)
    }

    /// The instance's container is gone and `table_version` (published after the table that no
    /// longer lists it) is current: its address goes into quarantine.
    pub fn release(
        &self,
        ip: Ipv4Addr,
        instance_id: &str,
        table_version: u64,
    ) -> Result<(), AddressError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        inner.held.remove(instance_id);
        let ours = matches!(inner.states.get(&ip),
            Some(AddrState::InUse { instance_id: i }) if i == instance_id);
        if !ours {
            return Ok(());
        }
        let state = AddrState::Released {
            at: now,
            table_version,
            epoch: self.epoch.clone(),
        };
        self.persist(ip, Some(&state))?;
        inner.states.insert(ip, state);
        Ok(())
    }

    /// The instance never served (it was never in a route table) and its container is gone: its
    /// address is free at once. No router can have been told about it.
    pub fn free_unrouted(&self, ip: Ipv4Addr, instance_id: &str) -> Result<(), AddressError> {
        let mut inner = self.lock();
        inner.held.remove(instance_id);
        let ours = matches!(inner.states.get(&ip),
            Some(AddrState::InUse { instance_id: i }) if i == instance_id);
        if ours {
            self.persist(ip, None)?;
            inner.states.remove(&ip);
        }
        Ok(())
    }

    /// Nobody here looks after the instance's address any more, but its container may still
    /// exist (a removal failed): [`AddressPool::sweep`] releases it once the container is gone.
    pub fn unhold(&self, instance_id: &str) {
        self.lock().held.remove(instance_id);
    }

    /// Releases the addresses of instances that no task holds and whose containers are not among
    /// `live` (instance ids of every container of this controller, listed before the call).
    /// Returns the addresses released.
    pub fn sweep(
        &self,
        live: &HashSet<String>,
        table_version: u64,
    ) -> Result<Vec<Ipv4Addr>, AddressError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let gone: Vec<Ipv4Addr> = inner
            .states
            .iter()
            .filter_map(|(ip, s)| match s {
                AddrState::InUse { instance_id }
                    if !live.contains(instance_id) && !inner.held.contains(instance_id) =>
                {
                    Some(*ip)
                }
                _ => None,
            })
            .collect();
        for ip in &gone {
            let state = AddrState::Released {
                at: now,
                table_version,
                epoch: self.epoch.clone(),
            };
            self.persist(*ip, Some(&state))?;
            inner.states.insert(*ip, state);
        }
        Ok(gone)
    }

    /// A standalone router polled with the table (`epoch`, `version`): it has every table up to it.
    pub fn router_seen(&self, router: &str, epoch: &str, version: u64) {
        self.router_polled(router, epoch, version, Vec::new());
    }

    /// A standalone router's poll: the table it holds, and the instances no longer in it that it
    /// still has requests in flight to.
    pub fn router_polled(&self, router: &str, epoch: &str, version: u64, draining: Vec<String>) {
        let now = self.clock.now();
        let window = self.quarantine.ack_window;
        let mut inner = self.lock();
        inner.routers.retain(|_, a| now - a.last_seen <= window);
        if inner.routers.len() >= MAX_ROUTERS && !inner.routers.contains_key(router) {
            if let Some(oldest) = inner
                .routers
                .iter()
                .min_by_key(|(_, a)| a.last_seen)
                .map(|(k, _)| k.clone())
            {
                inner.routers.remove(&oldest);
            }
        }
        inner.routers.insert(
            router.to_string(),
            RouterAck {
                epoch: epoch.to_string(),
                version,
                last_seen: now,
                draining,
            },
        );
    }

    /// Live standalone routers (see [`DRAIN_LIVENESS`]) that may still send `instance_id`
    /// requests: they hold a table older than `removed_in` (or of an earlier run), or say they
    /// still have requests in flight to it.
    pub fn routers_draining(&self, instance_id: &str, removed_in: u64) -> Vec<String> {
        let now = self.clock.now();
        let inner = self.lock();
        let mut out: Vec<String> = inner
            .routers
            .iter()
            .filter(|(_, a)| now - a.last_seen <= DRAIN_LIVENESS)
            .filter(|(_, a)| {
                let acked = a.epoch == self.epoch && a.version >= removed_in;
                !acked || a.draining.iter().any(|d| d == instance_id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    }

    /// Standalone routers alive for drains.
    pub fn routers_heard(&self) -> usize {
        let now = self.clock.now();
        self.lock()
            .routers
            .values()
            .filter(|a| now - a.last_seen <= DRAIN_LIVENESS)
            .count()
    }

    /// Why the released address may not be reused at `now`, or None if it may.
    fn blocked(&self, inner: &Inner, state: &AddrState, now: OffsetDateTime) -> Option<Blocked> {
        let AddrState::Released {
            at,
            table_version,
            epoch,
        } = state
        else {
            return Some(Blocked {
                until: None,
                routers: vec![],
            });
        };
        let this_run = *epoch == self.epoch;
        // Released by an earlier run: what routers acknowledged then is lost, so the quarantine
        // counts from this start at the soonest.
        let from = if this_run {
            *at
        } else {
            (*at).max(self.started)
        };
        let ready = from + self.quarantine.min;
        let until = (now < ready).then_some(ready);
        let mut routers: Vec<String> = inner
            .routers
            .iter()
            .filter(|(_, a)| now - a.last_seen <= self.quarantine.ack_window)
            .filter(|(_, a)| {
                let acked = a.epoch == self.epoch && (!this_run || a.version >= *table_version);
                !acked
            })
            .map(|(id, _)| id.clone())
            .collect();
        routers.sort();
        if until.is_none() && routers.is_empty() {
            None
        } else {
            Some(Blocked { until, routers })
        }
    }

    /// What holds the addresses of `subnet`.
    fn exhausted(&self, inner: &Inner, subnet: Ipv4Net, now: OffsetDateTime) -> Exhausted {
        let mut in_use = 0;
        let mut quarantined = 0;
        let mut until: Option<OffsetDateTime> = None;
        let mut waiting = BTreeSet::new();
        let here = inner.states.iter().filter(|(ip, _)| subnet.contains(**ip));
        for (_, s) in here {
            match s {
                AddrState::InUse { .. } => in_use += 1,
                AddrState::Released { .. } => {
                    if let Some(b) = self.blocked(inner, s, now) {
                        quarantined += 1;
                        if let Some(t) = b.until {
                            until = Some(until.map_or(t, |u| u.min(t)));
                        }
                        waiting.extend(b.routers);
                    }
                }
            }
        }
        Exhausted {
            subnet,
            in_use,
            quarantined,
            until,
            waiting_for: waiting.into_iter().collect(),
        }
    }

    /// Counts for the log, over every network: (in use, in quarantine, free).
    pub fn counts(&self) -> (usize, usize, usize) {
        let now = self.clock.now();
        let inner = self.lock();
        let (mut in_use, mut quarantined, mut free) = (0, 0, 0);
        for subnet in inner.networks.values() {
            let e = self.exhausted(&inner, *subnet, now);
            let total = subnet.host_count() as usize;
            in_use += e.in_use;
            quarantined += e.quarantined;
            free += total.saturating_sub(e.in_use + e.quarantined);
        }
        (in_use, quarantined, free)
    }

    /// The recorded state of one address (for tests and diagnostics).
    pub fn state(&self, ip: Ipv4Addr) -> Option<AddrState> {
        self.lock().states.get(&ip).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    struct ManualClock(Mutex<OffsetDateTime>);

    impl ManualClock {
        fn new() -> Arc<ManualClock> {
            Arc::new(ManualClock(Mutex::new(
                OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            )))
        }
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> OffsetDateTime {
            *self.0.lock().unwrap()
        }
    }

    const Q: Duration = Duration::from_secs(300);
    const WINDOW: Duration = Duration::from_secs(600);

    /// The network the pools of these tests hand addresses out on.
    const N: &str = "pier-t";

    fn net() -> Ipv4Net {
        "10.9.0.0/29".parse().unwrap()
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 9, 0, last)
    }

    fn pool(db: &Store, clock: &Arc<ManualClock>, epoch: &str) -> AddressPool {
        AddressPool::open(
            db.addresses().unwrap(),
            &[(N.to_string(), net())],
            Quarantine {
                min: Q,
                ack_window: WINDOW,
            },
            epoch,
            clock.clone(),
        )
        .unwrap()
    }

    fn reopen(dir: &std::path::Path) -> Store {
        crate::store::tests::reopen(dir)
    }

    fn db() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let db = Store::open(dir.path()).unwrap();
        (dir, db)
    }

    fn exhausted(r: Result<Ipv4Addr, AddressError>) -> Exhausted {
        match r {
            Err(AddressError::Exhausted(e)) => e,
            other => panic!("expected exhaustion, got {other:?}"),
        }
    }

    #[test]
    fn cidr_parsing_and_ranges() {
        let n: Ipv4Net = "10.213.7.0/24".parse().unwrap();
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 213, 7, 1));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 213, 7, 255));
        assert_eq!(n.host_count(), 253);
        assert!(n.contains(Ipv4Addr::new(10, 213, 7, 200)));
        assert!(!n.contains(Ipv4Addr::new(10, 213, 8, 1)));
        assert!("10.213.7.5/24"
            .parse::<Ipv4Net>()
            .unwrap_err()
            .contains("10.213.7.0/24"));
        assert!("10.213.7.0".parse::<Ipv4Net>().is_err());
        assert!("10.213.7.0/33".parse::<Ipv4Net>().is_err());
        let range: Ipv4Net = "10.213.0.0/16".parse().unwrap();
        assert_eq!(range.subnet(24, 5).unwrap().to_string(), "10.213.5.0/24");
        assert!(range.subnet(24, 256).is_none());
        assert!(range.overlaps(&n) && n.overlaps(&range));
        assert!(!n.overlaps(&"10.213.8.0/24".parse().unwrap()));
    }

    #[test]
    fn serial_allocation_skips_network_gateway_broadcast_and_wraps() {
        let (_d, db) = db();
        let clock = ManualClock::new();
        let p = pool(&db, &clock, "e1");
        // /29: .0 network, .1 gateway, .7 broadcast; .2-.6 for instances.
        let got: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|i| p.allocate(i, N).unwrap())
            .collect();
        assert_eq!(got, vec![ip(2), ip(3), ip(4)]);
        // .2 never served and is free at once, but allocation goes on after .4 first.
        p.free_unrouted(ip(2), "a").unwrap();
        assert_eq!(p.allocate("d", N).unwrap(), ip(5));
        assert_eq!(p.allocate("e", N).unwrap(), ip(6));
        assert_eq!(p.allocate("f", N).unwrap(), ip(2), "wraps around to .2");
        let e = exhausted(p.allocate("g", N));
        assert_eq!((e.in_use, e.quarantined), (5, 0));
    }

    #[test]
    fn no_reuse_while_in_quarantine() {
        let (_d, db) = db();
        let clock = ManualClock::new();
        let p = pool(&db, &clock, "e1");
        for i in 0..5 {
            p.allocate(&format!("i{i}"), N).unwrap();
        }
        p.release(ip(4), "i2", 7).unwrap();
        clock.advance(Q - Duration::from_secs(1));
        let e = exhausted(p.allocate("new", N));
        assert_eq!((e.in_use, e.quarantined), (4, 1));
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            p.allocate("new", N).unwrap(),
            ip(4),
            "quarantine over, no router to wait for"
        );
    }

    #[test]
    fn a_router_that_has_not_acked_blocks_reuse_until_it_does() {
        let (_d, db) = db();
        let clock = ManualClock::new();
        let p = pool(&db, &clock, "e1");
        p.router_seen("r1", "e1", 6);
        p.router_seen("r2", "e1", 6);
        for i in 0..5 {
            p.allocate(&format!("i{i}"), N).unwrap();
        }
        p.release(ip(2), "i0", 7).unwrap();
        clock.advance(Q + Duration::from_secs(10));
        let e = exhausted(p.allocate("new", N));
        assert_eq!(e.waiting_for, vec!["r1", "r2"]);
        assert_eq!(e.until, None, "the quarantine itself is over");
        p.router_seen("r1", "e1", 7);
        // An ack of another epoch's version 9 says nothing about this epoch's table 7.
        p.router_seen("r2", "old", 9);
        assert_eq!(exhausted(p.allocate("new", N)).waiting_for, vec!["r2"]);
        p.router_seen("r2", "e1", 8);
        assert_eq!(p.allocate("new", N).unwrap(), ip(2));
    }

    #[test]
    fn an_ack_does_not_shorten_the_quarantine() {
        let (_d, db) = db();
        let clock = ManualClock::new();
        let p = pool(&db, &clock, "e1");
        for i in 0..5 {
            p.allocate(&format!("i{i}"), N).unwrap();
        }
        p.release(ip(3), "i1", 4).unwrap();
        p.router_seen("r1", "e1", 5);
        clock.advance(Duration::from_secs(60));
        let e = exhausted(p.allocate("new", N));
        assert!(e.waiting_for.is_empty());
        assert!(e.until.is_some());
        clock.advance(Q);
        assert_eq!(p.allocate("new", N).unwrap(), ip(3));
    }

    #[test]
    fn a_drain_waits_for_live_routers_to_hold_the_new_table_and_finish_their_requests() {
        let (_d, db) = db();
        let clock = ManualClock::new();
        let p = pool(&db, &clock, "e1");
        assert!(
            p.routers_draining("inst", 5).is_empty(),
            "no router: nothing to wait for"
        );
        p.router_polled("a", "e1", 4, vec![]);
        p.router_polled("b", "e1", 5, vec!["inst".into()]);
        p.router_polled("c", "e1", 5, vec!["other".into()]);
        p.router_polled("old", "e0", 9, vec![]);
        // a holds a table from before the removal; b still sends it requests; old is another run's.
        assert_eq!(p.routers_draining("inst", 5), vec!["a", "b", "old"]);
        assert_eq!(p.routers_heard(), 4);
        p.router_polled("a", "e1", 5, vec![]);
        p.router_polled("b", "e1", 6, vec![]);
        p.router_polled("old", "e1", 6, vec![]);
        assert!(p.routers_draining("inst", 5).is_empty());
        // A router silent for longer than a long-poll is not waited for by drains.
        p.router_polled("gone", "e1", 1, vec!["inst".into()]);
        assert_eq!(p.routers_draining("inst", 5), vec!["gone"]);
        clock.advance(DRAIN_LIVENESS + Duration::from_secs(1));
        assert!(p.routers_draining("inst", 5).is_empty());
        assert_eq!(p.routers_heard(), 0);
    }

    #[test]
    fn a_router_silent_for_longer_than_the_window_no_longer_blocks() {
        let (_d, db) = db();
        let clock = ManualClock::new();
        let p = pool(&db, &clock, "e1");
        p.router_seen("stuck", "e1", 1);
        for i in 0..5 {
            p.allocate(&format!("i{i}"), N).unwrap();
        }
        p.release(ip(2), "i0", 3).unwrap();
        clock.advance(WINDOW);
        assert_eq!(exhausted(p.allocate("x", N)).waiting_for, vec!["stuck"]);
        clock.advance(Duration::from_secs(1));
        assert_eq!(p.allocate("x", N).unwrap(), ip(2));
    }

    #[test]
    fn state_survives_a_restart_and_the_previous_runs_releases_wait_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        {
            let db = Store::open(dir.path()).unwrap();
            let p = pool(&db, &clock, "run1");
            p.router_seen("r1", "run1", 50);
            for i in 0..5 {
                p.allocate(&format!("i{i}"), N).unwrap();
            }
            p.release(ip(3), "i1", 51).unwrap();
            // .3 is released long before the restart: counted from its release alone it would be
            // reusable 99 s after the restart.
            clock.advance(Q - Duration::from_secs(100));
            p.release(ip(5), "i3", 52).unwrap();
        }
        clock.advance(Duration::from_secs(1));
        let db = reopen(dir.path());
        let p = pool(&db, &clock, "run2");
        assert_eq!(
            p.state(ip(2)),
            Some(AddrState::InUse {
                instance_id: "i0".into()
            })
        );
        // The router the first run knew is forgotten; the quarantine counts from this start.
        clock.advance(Duration::from_secs(200));
        let e = exhausted(p.allocate("new", N));
        assert_eq!((e.in_use, e.quarantined), (3, 2));
        assert!(e.waiting_for.is_empty());
        // A router seen since the restart still on the old table blocks both.
        p.router_seen("r1", "run1", 60);
        clock.advance(Q);
        assert_eq!(exhausted(p.allocate("new", N)).waiting_for, vec!["r1"]);
        // Any table of this run acknowledges releases of the earlier one.
        p.router_seen("r1", "run2", 1);
        // Serial order survived the restart too: the last handed out was .6, so .3 comes first.
        assert_eq!(p.allocate("new", N).unwrap(), ip(3));
        assert_eq!(p.allocate("new2", N).unwrap(), ip(5));
    }

    #[test]
    fn a_release_later_than_the_restart_counts_from_the_release() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        {
            let db = Store::open(dir.path()).unwrap();
            let p = pool(&db, &clock, "run1");
            for i in 0..5 {
                p.allocate(&format!("i{i}"), N).unwrap();
            }
            // A clock step backwards: the release time is "after" the next start.
            clock.advance(Duration::from_secs(100));
            p.release(ip(2), "i0", 3).unwrap();
            *clock.0.lock().unwrap() -= Duration::from_secs(100);
        }
        let db = reopen(dir.path());
        let p = pool(&db, &clock, "run2");
        clock.advance(Q);
        let e = exhausted(p.allocate("x", N));
        assert_eq!(e.quarantined, 1);
        clock.advance(Duration::from_secs(100));
        assert_eq!(p.allocate("x", N).unwrap(), ip(2));
    }

    #[test]
    fn sweep_releases_only_unheld_instances_whose_containers_are_gone() {
        let (_d, db) = db();
        let clock = ManualClock::new();
        let p = pool(&db, &clock, "e1");
        p.allocate("starting", N).unwrap();
        p.allocate("running", N).unwrap();
        p.allocate("vanished", N).unwrap();
        p.unhold("vanished");
        p.unhold("running");
        let live = HashSet::from(["running".to_string()]);
        assert_eq!(p.sweep(&live, 9).unwrap(), vec![ip(4)]);
        assert!(matches!(
            p.state(ip(4)),
            Some(AddrState::Released {
                table_version: 9,
                ..
            })
        ));
        assert!(matches!(p.state(ip(2)), Some(AddrState::InUse { .. })));
        assert!(matches!(p.state(ip(3)), Some(AddrState::InUse { .. })));
    }

    #[test]
    fn adopting_marks_in_use_and_ignores_other_networks() {
        let (_d, db) = db();
        let clock = ManualClock::new();
        let p = pool(&db, &clock, "e1");
        assert!(p.adopt(ip(3), "old").unwrap());
        assert!(!p.adopt(Ipv4Addr::new(172, 17, 0, 5), "legacy").unwrap());
        assert_eq!(p.allocate("a", N).unwrap(), ip(2));
        assert_eq!(
            p.allocate("b", N).unwrap(),
            ip(4),
            ".3 is the adopted instance's"
        );
    }

    #[test]
    fn exhaustion_says_what_is_in_use_and_until_when() {
        let (_d, db) = db();
        let clock = ManualClock::new();
        let p = pool(&db, &clock, "e1");
        for i in 0..5 {
            p.allocate(&format!("i{i}"), N).unwrap();
        }
        p.release(ip(2), "i0", 3).unwrap();
        clock.advance(Duration::from_secs(10));
        p.release(ip(3), "i1", 4).unwrap();
        p.router_seen("r9", "e1", 3);
        let msg = p.allocate("x", N).unwrap_err().to_string();
        let until = rfc3339_secs(OffsetDateTime::from_unix_timestamp(1_700_000_300).unwrap());
        assert_eq!(
            msg,
            format!(
                "no free instance address in 10.9.0.0/29: 3 in use, 2 in quarantine until \
                 {until} and until router(s) r9 acknowledge the route table that removed them"
            )
        );
        assert_eq!(p.counts(), (3, 2, 0));
    }

    fn two_networks() -> Vec<(String, Ipv4Net)> {
        vec![
            (N.to_string(), net()),
            ("pier-t-space".to_string(), "10.9.1.0/29".parse().unwrap()),
        ]
    }

    fn open_with(db: &Store, clock: &Arc<ManualClock>, nets: &[(String, Ipv4Net)]) -> AddressPool {
        let q = Quarantine {
            min: Q,
            ack_window: WINDOW,
        };
        AddressPool::open(db.addresses().unwrap(), nets, q, "e1", clock.clone()).unwrap()
    }

    #[test]
    fn each_network_hands_out_addresses_of_its_own_subnet_in_its_own_order() {
        let (_d, db) = db();
        let clock = ManualClock::new();
        let p = open_with(&db, &clock, &two_networks());
        let b = Ipv4Addr::new(10, 9, 1, 2);
        assert_eq!(p.allocate("a1", N).unwrap(), ip(2));
        assert_eq!(p.allocate("b1", "pier-t-space").unwrap(), b);
        assert_eq!(p.allocate("a2", N).unwrap(), ip(3), "A's order is A's own");
        // Filling A leaves B alone, and A's exhaustion counts A's addresses only.
        for i in 3..6 {
            p.allocate(&format!("a{i}"), N).unwrap();
        }
        let e = exhausted(p.allocate("a6", N));
        assert_eq!((e.subnet, e.in_use, e.quarantined), (net(), 5, 0));
        assert_eq!(
            p.allocate("b2", "pier-t-space").unwrap(),
            Ipv4Addr::new(10, 9, 1, 3)
        );
        assert_eq!(p.counts(), (7, 0, 3));
    }

    #[test]
    fn an_unknown_network_is_refused_and_nothing_is_recorded() {
        let (_d, db) = db();
        let clock = ManualClock::new();
        let p = open_with(&db, &clock, &two_networks());
        let err = p.allocate("x", "pier-t-gone").unwrap_err();
        assert!(matches!(err, AddressError::UnknownNetwork(ref n) if n == "pier-t-gone"));
        assert_eq!(
            err.to_string(),
            "the instance network pier-t-gone is not one the address pool knows"
        );
        assert_eq!(p.counts(), (0, 0, 10));
        assert_eq!(
            p.allocate("a", N).unwrap(),
            ip(2),
            "no order was moved either"
        );
    }

    #[test]
    fn a_network_added_later_is_kept_across_a_restart_with_its_own_order() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let nets = two_networks();
        {
            let db = Store::open(dir.path()).unwrap();
            let p = open_with(&db, &clock, &nets[..1]);
            assert!(p.subnet("pier-t-space").is_none());
            p.add_network("pier-t-space", nets[1].1).unwrap();
            assert_eq!(p.subnet("pier-t-space"), Some(nets[1].1));
            p.allocate("a1", N).unwrap();
            p.allocate("b1", "pier-t-space").unwrap();
            p.allocate("b2", "pier-t-space").unwrap();
        }
        let db = reopen(dir.path());
        let p = open_with(&db, &clock, &nets);
        let b = |last| Ipv4Addr::new(10, 9, 1, last);
        assert_eq!(
            p.state(b(3)),
            Some(AddrState::InUse {
                instance_id: "b2".into()
            })
        );
        assert_eq!(p.allocate("b3", "pier-t-space").unwrap(), b(4));
        assert_eq!(p.allocate("a2", N).unwrap(), ip(3));
        // Adoption finds the address on whichever network has it.
        assert!(p.adopt(b(6), "b-adopted").unwrap());
        assert!(!p.adopt(Ipv4Addr::new(10, 9, 2, 2), "elsewhere").unwrap());
        drop(p);
        // Opened without the space's network (it was removed): its addresses are forgotten.
        let p = open_with(&db, &clock, &nets[..1]);
        assert_eq!(p.state(b(3)), None);
        assert_eq!(p.state(ip(3)).map(|_| ()), Some(()));
    }

    #[test]
    fn a_subnet_that_comes_back_on_another_network_keeps_its_quarantine() {
        let (_d, db) = db();
        let clock = ManualClock::new();
        let nets = two_networks();
        let p = open_with(&db, &clock, &nets);
        let space = nets[1].1;
        for i in 0..5 {
            p.allocate(&format!("b{i}"), "pier-t-space").unwrap();
        }
        p.release(Ipv4Addr::new(10, 9, 1, 4), "b2", 3).unwrap();
        for i in [0, 1, 3, 4] {
            let ip = Ipv4Addr::new(10, 9, 1, 2 + i);
            p.free_unrouted(ip, &format!("b{i}")).unwrap();
        }
        p.remove_network("pier-t-space");
        assert!(matches!(
            p.allocate("x", "pier-t-space"),
            Err(AddressError::UnknownNetwork(_))
        ));
        // A new space's network gets the same subnet: the released address is still held back.
        p.add_network("pier-t-other", space).unwrap();
        let got: Vec<_> = (0..4)
            .map(|i| p.allocate(&format!("c{i}"), "pier-t-other").unwrap())
            .collect();
        assert!(!got.contains(&Ipv4Addr::new(10, 9, 1, 4)), "{got:?}");
        let e = exhausted(p.allocate("c5", "pier-t-other"));
        assert_eq!((e.subnet, e.in_use, e.quarantined), (space, 4, 1));
        clock.advance(Q);
        assert_eq!(
            p.allocate("c5", "pier-t-other").unwrap(),
            Ipv4Addr::new(10, 9, 1, 4)
        );
    }
}

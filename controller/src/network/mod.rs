//! The controller's Docker bridge networks, where instances get the addresses the controller
//! allocates ([`addresses`]): one per space, so instances of different spaces cannot reach each
//! other while those of one space can.
//!
//! - The default space's network is named `pier-<controller id>`, as when there was only one
//!   (an upgrade keeps it, its subnet and its running instances). Every other space gets
//!   `pier-<controller id>-<first 12 hex digits of the space guid>`, made when the space's first
//!   instance starts. All are labelled `pier.controller=<id>`, `pier.kind=instances`; a space's
//!   also `pier.space=<space guid>`.
//! - Docker lets a container have a fixed IP (`--ip`) only on a network whose subnet was set by
//!   hand, so the controller sets one: for the default network `--instance-subnet`, or else (and
//!   for every space's) a /24 it picks inside [`AUTO_RANGE`] that no Docker network and no host
//!   route overlaps (Docker refuses overlapping pools, so a race with another creator only moves
//!   on to the next candidate). The choice is kept in the store (meta `instance_subnet`, and
//!   `instance_subnet:<space guid>`), so a restart uses the same subnet; a network that already
//!   exists is adopted as it is.
//! - Between networks, Docker's own isolation (its `DOCKER-ISOLATION-STAGE-*` chains) drops what
//!   one bridge forwards to another; within one, containers reach each other. Each network's
//!   bridge also gets the rules that keep instances away from the host (`runtime/firewall.rs`).
//!   The routers and health checks run on the host, which reaches every bridge.
//! - A deleted space's network is removed once its instances are gone (Docker refuses while a
//!   container is attached); one left behind (a container was still there) is tried again by
//!   each reconcile pass, and at the next start. Networks outlive the controller, like its instances do; `scripts/down` and the
//!   e2e harness remove every network labelled with the controller id once their containers are
//!   gone.
//! - Internal routes (`NAME.apps.internal`) are answered by the controller's own DNS server on
//!   each network's gateway, to that network's instances only ([`dns`]).

use std::net::Ipv4Addr;

use anyhow::Context as _;

use crate::runtime::labels::keys;
use crate::runtime::{ContainerRuntime, Kind, Labels, NetworkSpec};
use crate::store::Store;

pub mod addresses;
pub mod dns;
mod spaces;

pub use spaces::{prepare, NetworkSet, Networks};

use addresses::Ipv4Net;

/// Where subnets are picked from when none is configured: 256 /24s.
pub const AUTO_RANGE: &str = "10.213.0.0/16";
pub const AUTO_PREFIX: u8 = 24;
const META_KEY: &str = "instance_subnet";

/// A network instances attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceNetwork {
    pub name: String,
    pub subnet: Ipv4Net,
}

/// The default space's network.
pub fn network_name(controller_id: &str) -> String {
    format!("pier-{controller_id}")
}

/// The network of any other space.
pub fn space_network_name(controller_id: &str, space_guid: &str) -> String {
    let hex: String = space_guid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    format!("pier-{controller_id}-{hex}")
}

pub(crate) fn space_meta_key(space_guid: &str) -> String {
    format!("{META_KEY}:{space_guid}")
}

/// What one network is to be.
struct Want {
    name: String,
    labels: Labels,
    /// The subnet asked for (`--instance-subnet`), if any.
    subnet: Option<Ipv4Net>,
    /// Where the subnet chosen is kept.
    meta_key: String,
    /// Spreads the first candidate subnet over controllers and spaces.
    seed: String,
}

/// Finds or creates this controller's default network (the default space's) and returns it.
pub async fn ensure(
    runtime: &dyn ContainerRuntime,
    controller_id: &str,
    wanted: Option<Ipv4Net>,
    store: &Store,
) -> anyhow::Result<InstanceNetwork> {
    let want = Want {
        name: network_name(controller_id),
        labels: Labels::new(controller_id, Kind::Instances),
        subnet: wanted,
        meta_key: META_KEY.to_string(),
        seed: controller_id.to_string(),
    };
    ensure_one(runtime, controller_id, want, store).await
}

/// Finds or creates the network of the space `space_guid` (not the default space).
pub async fn ensure_space(
    runtime: &dyn ContainerRuntime,
    controller_id: &str,
    space_guid: &str,
    store: &Store,
) -> anyhow::Result<InstanceNetwork> {
    let name = space_network_name(controller_id, space_guid);
    let want = Want {
        labels: Labels::new(controller_id, Kind::Instances).with(keys::SPACE, space_guid),
        subnet: None,
        meta_key: space_meta_key(space_guid),
        seed: name.clone(),
        name,
    };
    ensure_one(runtime, controller_id, want, store).await
}

async fn ensure_one(
    runtime: &dyn ContainerRuntime,
    controller_id: &str,
    want: Want,
    store: &Store,
) -> anyhow::Result<InstanceNetwork> {
    let Want {
        name,
        labels,
        subnet: wanted,
        meta_key,
        seed,
    } = want;
    let space = labels.get(keys::SPACE);
    if let Some(subnet) = existing(runtime, &name, controller_id, space).await? {
        if let Some(w) = wanted {
            if w != subnet {
                anyhow::bail!(
                    "the instance network {name} exists with subnet {subnet}, but \
                     --instance-subnet asks for {w}; Docker cannot change a network's subnet. \
                     Use --instance-subnet {subnet}, or stop its instances and remove it \
                     (docker network rm {name}) to start over"
                );
            }
        }
        store.meta_put(&meta_key, subnet.to_string().as_bytes())?;
        tracing::info!(network = %name, %subnet, "using the existing instance network");
        return Ok(InstanceNetwork { name, subnet });
    }
    if let Some(subnet) = wanted {
        create(runtime, &name, &labels, subnet)
            .await
            .with_context(|| {
                format!(
                    "cannot create the instance network {name} with --instance-subnet {subnet} \
                     (an overlapping Docker network or pool?); pick another subnet"
                )
            })?;
        store.meta_put(&meta_key, subnet.to_string().as_bytes())?;
        tracing::info!(network = %name, %subnet, "created the instance network");
        return Ok(InstanceNetwork { name, subnet });
    }
    let kept = store
        .meta_get(&meta_key)?
        .and_then(|v| String::from_utf8(v).ok()?.parse::<Ipv4Net>().ok());
    let taken = taken_subnets(runtime).await?;
    let range: Ipv4Net = AUTO_RANGE.parse().map_err(anyhow::Error::msg)?;
    let count = 1u32 << (AUTO_PREFIX - range.prefix());
    let offset = fnv(&seed) % count;
    let candidates = kept
        .into_iter()
        .chain((0..count).filter_map(|i| range.subnet(AUTO_PREFIX, (offset + i) % count)));
    let mut tried = 0;
    for subnet in candidates {
        if taken.iter().any(|t| t.overlaps(&subnet)) {
            continue;
        }
        tried += 1;
        match create(runtime, &name, &labels, subnet).await {
            Ok(()) => {
                store.meta_put(&meta_key, subnet.to_string().as_bytes())?;
                tracing::info!(network = %name, %subnet, "created the instance network");
                return Ok(InstanceNetwork { name, subnet });
            }
            Err(e) if e.to_string().to_lowercase().contains("overlap") => {
                tracing::debug!(%subnet, error = %e, "subnet taken meanwhile; trying the next");
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot create the instance network {name}")));
            }
        }
    }
    anyhow::bail!(
        "no free /{AUTO_PREFIX} for the instance network {name} inside {AUTO_RANGE} ({tried} \
         tried; the rest overlap Docker networks or host routes); give the default one with \
         --instance-subnet, or remove unused Docker networks"
    )
}

/// The subnet of this controller's network if it exists; refuses a network of that name that is
/// not this controller's (or not this space's) or has no subnet set by hand.
async fn existing(
    runtime: &dyn ContainerRuntime,
    name: &str,
    controller_id: &str,
    space: Option<&str>,
) -> anyhow::Result<Option<Ipv4Net>> {
    let Some(n) = runtime
        .inspect_network(name)
        .await
        .with_context(|| format!("cannot inspect the network {name}"))?
    else {
        return Ok(None);
    };
    if n.labels.controller() != Some(controller_id) {
        anyhow::bail!(
            "a Docker network named {name} exists but is not labelled {}={controller_id}; \
             remove it (docker network rm {name}) or use another --controller-id",
            keys::CONTROLLER
        );
    }
    if space.is_some() && n.labels.get(keys::SPACE) != space {
        anyhow::bail!(
            "the Docker network {name} is not labelled {}={}; remove it (docker network rm \
             {name}) so the space's network can be made",
            keys::SPACE,
            space.unwrap_or_default()
        );
    }
    match n.subnets.first() {
        Some(s) => Ok(Some(*s)),
        None => anyhow::bail!(
            "the network {name} has no IPv4 subnet set by hand, so instances cannot get fixed \
             addresses on it; remove it (docker network rm {name}) and start again"
        ),
    }
}

async fn create(
    runtime: &dyn ContainerRuntime,
    name: &str,
    labels: &Labels,
    subnet: Ipv4Net,
) -> crate::runtime::Result<()> {
    runtime
        .create_network(&NetworkSpec {
            name: name.to_string(),
            subnet,
            gateway: subnet.gateway(),
            labels: labels.clone(),
        })
        .await
}

/// Subnets in use: every Docker network's and every host route's (other than the default route).
async fn taken_subnets(runtime: &dyn ContainerRuntime) -> anyhow::Result<Vec<Ipv4Net>> {
    let mut out = runtime
        .network_subnets()
        .await
        .context("cannot list Docker networks")?;
    if let Ok(table) = std::fs::read_to_string("/proc/net/route") {
        out.extend(host_routes(&table));
    }
    Ok(out)
}

/// Destination networks of `/proc/net/route` (little-endian hex), without the default route.
fn host_routes(table: &str) -> Vec<Ipv4Net> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?.swap_bytes();
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?.swap_bytes();
            let prefix = mask.leading_ones() as u8;
            if prefix == 0 {
                return None;
            }
            Ipv4Net::new(Ipv4Addr::from(dest & mask), prefix).ok()
        })
        .collect()
}

/// A stable spread of controllers over the candidates (FNV-1a).
fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_host_routes() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let routes: Vec<String> = host_routes(table).iter().map(|n| n.to_string()).collect();
        assert_eq!(routes, vec!["192.0.2.0/24", "172.17.0.0/16"]);
    }

    #[test]
    fn names_and_spread() {
        assert_eq!(network_name("abc"), "pier-abc");
        assert_ne!(fnv("t1") % 256, fnv("t2") % 256);
    }
}

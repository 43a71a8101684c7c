//! What instances may reach on the host: by default, nothing the host itself serves (its API,
//! its routers, anything else listening on any of the host's addresses) and no link-local address
//! (cloud metadata services live at 169.254.169.254); replies to connections the host opened
//! (health checks, routed requests) still flow. Outside addresses stay reachable through Docker's
//! NAT, as on Cloud Foundry's default security groups.
//!
//! Implemented with iptables rules on the instance network's bridge, each tagged with the comment
//! `pier:<controller id>` so they can be found, kept idempotent and removed (`scripts/down` and the
//! test harness delete them with the networks). Every instance network of the controller (one per
//! space) gets them on its own bridge; removing a space's network takes its bridge's rules away.
//! Traffic between two instance networks is not these rules' work: Docker's own
//! `DOCKER-ISOLATION-STAGE-1/2` chains drop what one bridge forwards to another.
//!
//! The one host service instances may reach is the controller's DNS server for internal routes
//! (`network/dns.rs`), on their own network's gateway address, port 53 only; a container of
//! another network sending to that address arrives on its own bridge and is dropped.
//!
//! ```text
//! INPUT        -i BRIDGE -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
//! INPUT        -i BRIDGE -d GATEWAY -p udp --dport 53 -j ACCEPT
//! INPUT        -i BRIDGE -d GATEWAY -p tcp --dport 53 -j ACCEPT
//! INPUT        -i BRIDGE -j DROP
//! DOCKER-USER  -i BRIDGE -d 169.254.0.0/16 -j DROP        (FORWARD when Docker has no DOCKER-USER)
//! ```

use std::net::Ipv4Addr;

use tokio::process::Command;

use super::{Result, RuntimeError};

/// Whether instances may reach the host's own addresses and link-local addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HostAccess {
    /// Blocked (the default).
    Block,
    /// Allowed, as on a plain Docker bridge.
    Allow,
}

/// The rules for `bridge` (whose host address is `gateway`, where the DNS server listens), in
/// the order they must end up in their chains.
fn rules(
    bridge: &str,
    gateway: Option<Ipv4Addr>,
    comment: &str,
    forward_chain: &str,
) -> Vec<(String, Vec<String>)> {
    let tag = |mut r: Vec<String>| {
        r.extend(["-m", "comment", "--comment", comment].map(String::from));
        r
    };
    let v = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut out = vec![(
        "INPUT".into(),
        tag(v(&[
            "-i",
            bridge,
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ])),
    )];
    if let Some(gw) = gateway {
        let gw = format!("{gw}/32");
        for proto in ["udp", "tcp"] {
            out.push((
                "INPUT".into(),
                tag(v(&[
                    "-i", bridge, "-d", &gw, "-p", proto, "-m", proto, "--dport", "53", "-j",
                    "ACCEPT",
                ])),
            ));
        }
    }
    out.push(("INPUT".into(), tag(v(&["-i", bridge, "-j", "DROP"]))));
    out.push((
        forward_chain.to_string(),
        tag(v(&["-i", bridge, "-d", "169.254.0.0/16", "-j", "DROP"])),
    ));
    out
}

async fn iptables(args: &[String]) -> Result<bool> {
    let out = Command::new("iptables")
        .args(args)
        .output()
        .await
        .map_err(|e| RuntimeError::Api(format!("cannot run iptables: {e}")))?;
    if out.status.success() {
        return Ok(true);
    }
    // `-C` answers 1 for "no such rule"; anything else is a failure to report.
    let check = args.first().is_some_and(|a| a == "-C");
    if check && out.status.code() == Some(1) {
        return Ok(false);
    }
    Err(RuntimeError::Api(format!(
        "iptables {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

fn with(op: &str, chain: &str, rule: &[String]) -> Vec<String> {
    let mut a = vec![op.to_string(), chain.to_string()];
    a.extend_from_slice(rule);
    a
}

/// The rules for `bridge`, each with whether it is in place now.
async fn current(
    bridge: &str,
    gateway: Option<Ipv4Addr>,
    controller_id: &str,
) -> Result<Vec<((String, Vec<String>), bool)>> {
    let comment = format!("pier:{controller_id}");
    let forward = if iptables(&["-S".into(), "DOCKER-USER".into()]).await.is_ok() {
        "DOCKER-USER"
    } else {
        "FORWARD"
    };
    let mut out = Vec::new();
    for (chain, rule) in rules(bridge, gateway, &comment, forward) {
        let here = iptables(&with("-C", &chain, &rule)).await?;
        out.push(((chain, rule), here));
    }
    Ok(out)
}

/// Takes the rules for `bridge` away (its network is removed).
pub(super) async fn remove(
    bridge: &str,
    gateway: Option<Ipv4Addr>,
    controller_id: &str,
) -> Result<()> {
    for ((chain, rule), here) in current(bridge, gateway, controller_id).await? {
        if here {
            iptables(&with("-D", &chain, &rule)).await?;
        }
    }
    Ok(())
}

/// Puts the rules in place for `bridge` (or takes them away for [`HostAccess::Allow`]).
pub(super) async fn apply(
    bridge: &str,
    gateway: Option<Ipv4Addr>,
    controller_id: &str,
    access: HostAccess,
) -> Result<()> {
    let (rules, present): (Vec<_>, Vec<bool>) = current(bridge, gateway, controller_id)
        .await?
        .into_iter()
        .unzip();
    let want = access == HostAccess::Block;
    if want && present.iter().all(|p| *p) {
        return Ok(());
    }
    // Start over: remove what is there, then insert in reverse so the first rule ends up first.
    for ((chain, rule), here) in rules.iter().zip(&present) {
        if *here {
            iptables(&with("-D", chain, rule)).await?;
        }
    }
    if want {
        for (chain, rule) in rules.iter().rev() {
            iptables(&with("-I", chain, rule)).await?;
        }
        tracing::info!(
            bridge,
            "instances may not reach the host's own or link-local addresses"
        );
    } else {
        tracing::warn!(
            bridge,
            "instances may reach the host's addresses (--instance-host-access allow)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_comes_before_the_drop_and_every_rule_is_tagged() {
        let r = rules("pier-br0", None, "pier:c1", "DOCKER-USER");
        assert_eq!(r[0].0, "INPUT");
        assert!(r[0].1.contains(&"ACCEPT".to_string()));
        assert!(r[1].1.contains(&"DROP".to_string()));
        assert_eq!(r[2].0, "DOCKER-USER");
        assert!(r[2].1.contains(&"169.254.0.0/16".to_string()));
        assert!(r
            .iter()
            .all(|(_, rule)| rule.ends_with(&["--comment".into(), "pier:c1".into()])));
    }

    #[test]
    fn dns_on_the_gateway_is_let_through_before_the_drop() {
        let r = rules(
            "pier-br0",
            Some("10.213.5.1".parse().unwrap()),
            "pier:c1",
            "FORWARD",
        );
        let joined: Vec<String> = r
            .iter()
            .map(|(c, rule)| format!("{c} {}", rule.join(" ")))
            .collect();
        assert_eq!(r.len(), 5, "{joined:#?}");
        for (i, proto) in [(1, "udp"), (2, "tcp")] {
            assert!(
                joined[i].starts_with(&format!(
                    "INPUT -i pier-br0 -d 10.213.5.1/32 -p {proto} -m {proto} --dport 53 -j ACCEPT"
                )),
                "{}",
                joined[i]
            );
        }
        assert!(
            joined[3].starts_with("INPUT -i pier-br0 -j DROP"),
            "{}",
            joined[3]
        );
        assert!(r
            .iter()
            .all(|(_, rule)| rule.ends_with(&["--comment".into(), "pier:c1".into()])));
    }
}

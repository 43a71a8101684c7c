//! Network isolation between spaces, checked from inside real instance containers: an instance
//! reaches the other instances of its space on their app port, and no instance of another space
//! (nor of the default space), not even through the host's published ports. The routers on the
//! host still reach every space. Each space's network carries the controller's labels and its
//! space's, has the host-access firewall rules on its bridge, and goes when the space is deleted.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use pier_e2e::*;

/// `docker inspect` of an object, as JSON.
fn inspect(kind: &str, name: &str) -> serde_json::Value {
    let out = Command::new("docker")
        .args([kind, "inspect", name])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker {kind} inspect {name}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0].clone()
}

/// The one network a container is attached to, with its address there.
fn only_network(container: &str) -> (String, String) {
    let c = inspect("container", container);
    let nets = c["NetworkSettings"]["Networks"].as_object().unwrap();
    assert_eq!(nets.len(), 1, "one network per instance: {nets:?}");
    let (name, n) = nets.iter().next().unwrap();
    (name.clone(), n["IPAddress"].as_str().unwrap().to_string())
}

/// The host port Docker published the instance's 8080 on.
fn host_port(container: &str) -> u16 {
    let c = inspect("container", container);
    c["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Whether a TCP connection from inside `container` to `host:port` succeeds within 3 s.
fn connects_from(container: &str, host: &str, port: u16) -> bool {
    let code = format!(
        "import socket,sys\ntry:\n socket.create_connection(('{host}', {port}), timeout=3)\nexcept Exception as e:\n print(e); sys.exit(1)"
    );
    let out = Command::new("docker")
        .args(["exec", container, "python3", "-c", &code])
        .output()
        .unwrap();
    out.status.success()
}

fn network_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["network", "inspect", name])
        .output()
        .unwrap()
        .status
        .success()
}

/// The bridge of a network in the host's kernel (Docker names it after the network's id).
fn bridge_of(network: &str) -> String {
    let id = inspect("network", network)["Id"]
        .as_str()
        .unwrap()
        .to_string();
    format!("br-{}", &id[..12])
}

/// The iptables rules (all chains) that name the bridge and carry the controller's tag.
fn rules_on(bridge: &str, controller_id: &str) -> Vec<String> {
    let out = Command::new("iptables").arg("-S").output().unwrap();
    let tag = format!("pier:{controller_id}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(bridge) && l.contains(&tag))
        .map(str::to_string)
        .collect()
}

#[test]
fn instances_reach_their_own_space_only_and_a_deleted_spaces_network_goes() {
    let p = Platform::start();
    let app = copy_dir(&repo_root().join("examples/python-app"));
    let dir = app.path();
    p.pier_ok(&["create-org", "acme"], dir);
    p.pier_ok(&["create-space", "a", "-o", "acme"], dir);
    p.pier_ok(&["create-space", "b", "-o", "acme"], dir);
    p.pier_ok(&["push", "alpha", "-i", "2", "-o", "acme", "-s", "a"], dir);
    p.pier_ok(&["push", "beta", "-o", "acme", "-s", "b"], dir);
    p.pier_ok(&["push", "gamma"], dir); // the default space
    for host in ["alpha.localhost", "beta.localhost", "gamma.localhost"] {
        let (status, body) = p.get_via_router(host, "/");
        assert_eq!(status, 200, "{host} answers through the router: {body}");
    }

    let a = p.instance_ids("alpha");
    let b = p.instance_ids("beta");
    let g = p.instance_ids("gamma");
    assert_eq!((a.len(), b.len(), g.len()), (2, 1, 1));
    let (net_a, ip_a0) = only_network(&a[0]);
    let (net_a1, ip_a1) = only_network(&a[1]);
    let (net_b, ip_b) = only_network(&b[0]);
    let (net_g, ip_g) = only_network(&g[0]);
    assert_eq!(net_a, net_a1, "one network per space");
    assert_eq!(net_g, p.network_name(), "the default space keeps pier-<id>");
    assert!(net_a != net_b && net_a != net_g && net_b != net_g);

    // Each space's network: named after the controller and the space, labelled with both.
    let guid = |space: &str| p.call(p.api().space("acme", space)).unwrap().guid;
    for (space, net) in [("a", &net_a), ("b", &net_b)] {
        let g = guid(space);
        let hex: String = g.chars().filter(|c| *c != '-').take(12).collect();
        assert_eq!(*net, format!("pier-{}-{hex}", p.controller_id));
        let labels: HashMap<String, String> =
            serde_json::from_value(inspect("network", net)["Labels"].clone()).unwrap();
        assert_eq!(labels["pier.controller"], p.controller_id);
        assert_eq!(labels["pier.kind"], "instances");
        assert_eq!(labels["pier.space"], g);
    }
    // The host-access rules are on every network's bridge.
    for net in [&net_a, &net_b, &net_g] {
        let rules = rules_on(&bridge_of(net), &p.controller_id);
        // Three keep instances away from the host; two let DNS through to the network's own
        // gateway (internal routes, docs/internal-routes.md).
        assert_eq!(rules.len(), 5, "{net}: {rules:?}");
        let gw = inspect("network", net)["IPAM"]["Config"][0]["Gateway"]
            .as_str()
            .unwrap()
            .to_string();
        let dns: Vec<_> = rules.iter().filter(|r| r.contains("--dport 53")).collect();
        assert_eq!(dns.len(), 2, "{net}: {rules:?}");
        assert!(
            dns.iter().all(|r| r.contains(&format!("-d {gw}/32"))),
            "{rules:?}"
        );
    }

    // From inside: the other instance of the same space answers on its app port...
    assert!(
        connects_from(&a[0], &ip_a1, 8080),
        "alpha's instances reach each other"
    );
    // ...no instance of another space does, in either direction, nor one of the default space.
    assert!(!connects_from(&a[0], &ip_b, 8080), "a must not reach b");
    assert!(!connects_from(&b[0], &ip_a0, 8080), "b must not reach a");
    assert!(
        !connects_from(&a[0], &ip_g, 8080),
        "a must not reach default"
    );
    assert!(
        !connects_from(&g[0], &ip_b, 8080),
        "default must not reach b"
    );
    // Nor through the port Docker publishes on the host, at the host's address on a's network.
    let gw_a = inspect("network", &net_a)["IPAM"]["Config"][0]["Gateway"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !connects_from(&a[0], &gw_a, host_port(&b[0])),
        "b's published port, from a"
    );

    // Deleting space b removes its network and its bridge's rules; a's and the default stay.
    let bridge_b = bridge_of(&net_b);
    p.pier_ok(&["delete-space", "b", "-o", "acme", "-f"], dir);
    eventually(Duration::from_secs(30), "b's network gone", || {
        (!network_exists(&net_b)).then_some(())
    });
    assert!(rules_on(&bridge_b, &p.controller_id).is_empty());
    assert!(network_exists(&net_a) && network_exists(&net_g));
    assert_eq!(p.get_via_router("alpha.localhost", "/").0, 200);
}

/// A restarted controller adopts the space's network and its running instances at their
/// addresses, and a new instance of that space lands on the same network.
#[test]
fn a_restart_adopts_the_space_network_and_its_instances() {
    let mut p = Platform::start();
    let app = copy_dir(&repo_root().join("examples/python-app"));
    let dir = app.path();
    p.pier_ok(&["create-org", "acme"], dir);
    p.pier_ok(&["create-space", "a", "-o", "acme"], dir);
    p.pier_ok(&["push", "alpha", "-o", "acme", "-s", "a"], dir);
    let before = p.instance_ids("alpha");
    let (net, ip) = only_network(&before[0]);
    p.controller.take(); // stopped; the instance keeps running
    p.start_controller();
    p.pier_ok(&["scale", "alpha", "-i", "2", "-o", "acme", "-s", "a"], dir);
    let after = p.instance_ids("alpha");
    assert_eq!(after.len(), 2);
    assert!(
        after.contains(&before[0]),
        "the running instance was adopted"
    );
    assert_eq!(only_network(&before[0]), (net.clone(), ip.clone()));
    let new = after.iter().find(|c| **c != before[0]).unwrap();
    let (new_net, new_ip) = only_network(new);
    assert_eq!(new_net, net, "the new instance joins the same network");
    assert_ne!(new_ip, ip, "at another address");
    assert!(connects_from(new, &ip, 8080));
    assert_eq!(p.get_via_router("alpha.localhost", "/").0, 200);
}

//! What an instance may reach: by default not the host's own addresses (the platform's API and
//! routers, anything else the host serves), with `--instance-host-access allow` as the switch.
//! Checked from inside a real instance container.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::process::Command;
use std::time::Duration;

use pier_e2e::*;

/// The instance network's gateway: the host's address on the instance network.
fn gateway(p: &Platform) -> String {
    let out = Command::new("docker")
        .args([
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            &p.network_name(),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
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

fn reach_host(args: Vec<String>) -> bool {
    // Something the host serves on every address, as a careless service might.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let p = Platform::start_with(Options {
        controller_args: args,
        ..Options::default()
    });
    let app = copy_dir(&repo_root().join("examples/python-app"));
    p.pier_ok(&["push", "probe"], app.path());
    let id = p
        .instance_ids("probe")
        .into_iter()
        .next()
        .expect("an instance");
    let gw = gateway(&p);
    // The check itself must work: the instance reaches the outside of its own container, here
    // another instance's address on its network.
    eventually(Duration::from_secs(10), "the app answers", || {
        (p.get_via_router("probe.localhost", "/").0 == 200).then_some(())
    });
    connects_from(&id, &gw, port)
}

#[test]
fn instances_cannot_reach_the_host_unless_allowed() {
    assert!(
        !reach_host(vec![]),
        "by default an instance must not reach what the host serves"
    );
    assert!(
        reach_host(vec!["--instance-host-access".into(), "allow".into()]),
        "with --instance-host-access allow it can"
    );
}

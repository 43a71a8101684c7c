//! A third-party Open Service Broker end to end: a broker written with the `openbrokerapi`
//! library from PyPI (e2e/brokers/async_broker.py, pip-installed into a venv the first time),
//! started on loopback, with asynchronous provisioning. The real `pier` and `pier-controller`
//! and Docker: register it, see it in the marketplace, enable access, create a service (followed
//! through last_operation to `create succeeded`), bind it to a pushed app that shows its env,
//! see the credentials in VCAP_SERVICES through the router, unbind, delete.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pier_e2e::*;

const USER: &str = "broker-admin";
const PASSWORD: &str = "e2e-broker-pw-7Hq";

/// A venv with openbrokerapi, made once under target/ (pip from PyPI).
fn venv_python() -> PathBuf {
    let venv = repo_root().join("target").join("e2e-venv-openbrokerapi");
    let python = venv.join("bin").join("python");
    let has = |p: &PathBuf| {
        Command::new(p)
            .args(["-c", "import openbrokerapi"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if has(&python) {
        return python;
    }
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 (with venv) is needed for the broker tests");
    assert!(ok.success(), "python3 -m venv failed");
    let ok = Command::new(venv.join("bin").join("pip"))
        .args(["install", "--quiet", "openbrokerapi==4.7.3"])
        .status()
        .expect("pip");
    assert!(ok.success(), "pip install openbrokerapi failed");
    assert!(
        has(&python),
        "openbrokerapi does not import after pip install"
    );
    python
}

/// The broker process: killed when the test ends, whatever happens; what it printed.
struct Broker {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    url: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    fn start(polls: u32) -> Broker {
        let python = venv_python();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut child = Command::new(python)
            .arg(
                repo_root()
                    .join("e2e")
                    .join("brokers")
                    .join("async_broker.py"),
            )
            .args([&port.to_string(), USER, PASSWORD, &polls.to_string()])
            .env("PYTHONUNBUFFERED", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("the broker starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for s in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(s).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(l);
                }
            });
        }
        let url = format!("http://127.0.0.1:{port}");
        let b = Broker { child, lines, url };
        eventually(Duration::from_secs(30), "the broker answering", || {
            let (s, _, _) = http_request(
                "GET",
                &format!("{}/v2/catalog", b.url),
                None,
                None,
                &[("X-Broker-API-Version", "2.17")],
                b"",
            );
            // 401: it is up (and wants its credentials).
            (s == 401).then_some(())
        });
        b
    }

    fn said(&self, prefix: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect()
    }
}

/// The env the envdump app's instance has, through the router.
fn app_env(p: &Platform) -> serde_json::Value {
    let (s, body) = p.get_via_router("dump.localhost", "/");
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["env"].clone()
}

#[test]
fn a_third_party_broker_s_async_offering_is_provisioned_bound_unbound_and_deleted() {
    let broker = Broker::start(3);
    let p = Platform::start_with(Options {
        // Only the third-party broker: the built-in ones are e2e/tests/services.rs's.
        controller_args: vec![
            "--broker-poll-ms".into(),
            "300".into(),
            "--builtin-brokers".into(),
            "false".into(),
        ],
        ..Options::default()
    });
    let app = copy_dir(&repo_root().join("e2e").join("fixtures").join("envdump"));
    let dir = app.path();

    let out = p.pier_ok(
        &[
            "create-service-broker",
            "kv-broker",
            &broker.url,
            USER,
            PASSWORD,
        ],
        dir,
    );
    assert!(out.contains("Registered service broker kv-broker"), "{out}");
    assert!(out.contains("Offerings: kv"), "{out}");
    assert!(!out.contains(PASSWORD));
    let out = p.pier_ok(&["service-brokers"], dir);
    assert!(
        out.contains("kv-broker") && out.contains(&broker.url),
        "{out}"
    );
    let out = p.pier_ok(&["marketplace"], dir);
    assert!(
        out.contains("kv") && out.contains("standard") && out.contains("kv-broker"),
        "{out}"
    );
    let out = p.pier_ok(&["enable-service-access", "kv"], dir);
    assert!(
        out.contains("Enabled access to all plans of kv for all orgs"),
        "{out}"
    );
    let out = p.pier_ok(&["marketplace", "-e", "kv"], dir);
    assert!(out.contains("standard") && out.contains("all"), "{out}");

    // Asynchronous: 202, then in progress three times, then succeeded.
    let out = p.pier_ok(
        &[
            "create-service",
            "kv",
            "standard",
            "cache",
            "-c",
            r#"{"size": 1}"#,
        ],
        dir,
    );
    assert!(
        out.contains("Service instance cache: create in progress."),
        "{out}"
    );
    let status = eventually(Duration::from_secs(60), "create succeeded", || {
        let out = p.pier_ok(&["service", "cache"], dir);
        (!out.contains("create in progress")).then_some(out)
    });
    assert!(status.contains("status:      create succeeded"), "{status}");
    assert!(
        status.contains("plan:        standard") && status.contains("broker:      kv-broker"),
        "{status}"
    );
    let polls = broker.said("last_operation");
    assert_eq!(
        polls.iter().filter(|l| l.ends_with("in progress")).count(),
        3,
        "{polls:?}"
    );
    assert!(polls.last().unwrap().ends_with("succeeded"), "{polls:?}");
    let provisions = broker.said("provision ");
    assert_eq!(provisions.len(), 1, "{provisions:?}");
    assert!(
        provisions[0].ends_with("space default"),
        "the context named the space: {provisions:?}"
    );
    let out = p.pier_ok(&["services"], dir);
    assert!(
        out.contains("cache") && out.contains("create succeeded"),
        "{out}"
    );

    // Bound to a running app: a rolling deployment, and the credentials in VCAP_SERVICES.
    p.pier_ok(&["push", "dump"], dir);
    assert_eq!(app_env(&p)["VCAP_SERVICES"], "{}");
    let out = p.pier_ok(&["bind-service", "dump", "cache"], dir);
    assert!(out.contains("Bound dump to cache"), "{out}");
    let env = app_env(&p);
    let vcap: serde_json::Value =
        serde_json::from_str(env["VCAP_SERVICES"].as_str().unwrap()).unwrap();
    let e = &vcap["kv"][0];
    assert_eq!(e["name"], "cache", "{vcap}");
    assert_eq!(e["label"], "kv");
    assert_eq!(e["plan"], "standard");
    assert_eq!(e["tags"], serde_json::json!(["kv", "third-party"]));
    let binding = e["binding_guid"].as_str().unwrap().to_string();
    assert_eq!(e["credentials"]["binding"], binding);
    assert_eq!(e["credentials"]["instance"], e["instance_guid"]);
    assert!(e["credentials"]["uri"]
        .as_str()
        .unwrap()
        .starts_with("kv://"));
    // Not a database nor a cache by Heroku's convention.
    assert!(env.get("DATABASE_URL").is_none() && env.get("REDIS_URL").is_none());
    assert_eq!(broker.said("bind ").len(), 1);

    // Deleting it while bound is refused, and changes nothing.
    let out = p.pier(&["delete-service", "cache", "-f"], dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is bound to dump"), "{err}");
    assert!(broker.said("deprovision").is_empty());

    let out = p.pier_ok(&["unbind-service", "dump", "cache"], dir);
    assert!(out.contains("Unbound dump from cache"), "{out}");
    assert_eq!(app_env(&p)["VCAP_SERVICES"], "{}");
    let unbinds = broker.said("unbind ");
    assert_eq!(unbinds.len(), 1);
    assert!(unbinds[0].ends_with(&binding), "{unbinds:?}");

    let out = p.pier_ok(&["delete-service", "cache", "-f"], dir);
    assert!(out.contains("Deleted service instance cache"), "{out}");
    assert_eq!(broker.said("deprovision").len(), 1);
    let out = p.pier_ok(&["services"], dir);
    assert!(!out.contains("cache"), "{out}");
    // With no instances left, the broker may go.
    p.pier_ok(&["delete-service-broker", "kv-broker", "-f"], dir);
    let out = p.pier_ok(&["service-brokers"], dir);
    assert!(out.contains("No service brokers"), "{out}");
}

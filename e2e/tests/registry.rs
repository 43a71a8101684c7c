//! `--registry`: every app image is pushed to the registry as `HOST:PORT/<name>`, pushed again
//! when the registry lost it, and deleted from it when the image goes. The registry is Debian's
//! `docker-registry`, run by the test on a free loopback port with its own storage.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)] // a test: panicking is failing

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pier_e2e::*;

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A `docker-registry serve` on a free loopback port, killed (and its storage removed) on drop.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        assert!(
            std::path::Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: install it with `apt-get install docker-registry` \
             (./scripts/test does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut r = Registry {
            child,
            addr,
            _dir: dir,
        };
        eventually(Duration::from_secs(10), "the registry answering", || {
            assert!(
                r.child.try_wait().unwrap().is_none(),
                "docker-registry exited"
            );
            (r.get("/v2/").0 == 200).then_some(())
        });
        r
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(&format!("http://{}{path}", self.addr), None, None)
    }

    fn json(&self, path: &str) -> (u16, serde_json::Value) {
        let (s, body) = self.get(path);
        (s, serde_json::from_str(&body).unwrap_or_default())
    }

    fn repositories(&self) -> BTreeSet<String> {
        let (s, v) = self.json("/v2/_catalog");
        assert_eq!(s, 200, "{v}");
        v["repositories"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some(r.as_str()?.to_string()))
            .collect()
    }

    /// The repository's tags (none when the registry does not know it).
    fn tags(&self, repo: &str) -> BTreeSet<String> {
        let (s, v) = self.json(&format!("/v2/{repo}/tags/list"));
        assert!(s == 200 || s == 404, "{s} {v}");
        v["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some(r.as_str()?.to_string()))
            .collect()
    }

    /// Deletes `repo:tag` behind the controller's back.
    fn delete(&self, repo: &str, tag: &str) {
        let url = format!("http://{}/v2/{repo}/manifests/{tag}", self.addr);
        let accept = [(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )];
        let (s, h, _) = http_request("HEAD", &url, None, None, &accept, b"");
        assert_eq!(s, 200);
        let digest = h.get("docker-content-digest").expect("a digest");
        let url = format!("http://{}/v2/{repo}/manifests/{digest}", self.addr);
        let (s, _, body) = http_request("DELETE", &url, None, None, &[], b"");
        assert_eq!(s, 202, "{body}");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `repo:tag` of every image labelled with the controller.
fn labelled_images(p: &Platform) -> BTreeSet<String> {
    docker_cli_ok(&[
        "images",
        "--filter",
        &format!("label=pier.controller={}", p.controller_id),
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

/// How many pushes the controller logged so far.
fn pushes(p: &mut Platform) -> usize {
    let c = p.controller.as_mut().expect("a controller");
    c.printed()
        .iter()
        .filter(|l| l.contains("app image pushed to the registry"))
        .count()
}

fn example() -> tempfile::TempDir {
    copy_dir(&repo_root().join("examples/python-app"))
}

#[test]
fn app_images_are_pushed_to_the_registry_and_deleted_from_it_with_the_app() {
    let reg = Registry::start();
    let mut p = Platform::start_with(Options {
        controller_args: vec!["--registry".into(), reg.addr.clone()],
        ..Default::default()
    });
    let app = example();
    p.pier_ok(&["push", "reg"], app.path());
    let ids = p.instance_ids("reg");
    assert_eq!(ids.len(), 1);
    let image = docker_cli_ok(&["inspect", "-f", "{{.Config.Image}}", &ids[0]]);
    let (repo, tag) = image.rsplit_once(':').unwrap();
    assert_eq!(repo, format!("pier-{}/reg", p.controller_id));

    // In the registry, under the image's own name; and tagged so locally.
    assert!(
        reg.repositories().contains(repo),
        "{:?}",
        reg.repositories()
    );
    assert_eq!(reg.tags(repo), BTreeSet::from([tag.to_string()]));
    let remote = format!("{}/{image}", reg.addr);
    assert_eq!(
        labelled_images(&p),
        BTreeSet::from([image.clone(), remote.clone()])
    );

    // Another engine could pull it: without the local registry tag, it comes from the registry.
    let id = docker_cli_ok(&["image", "inspect", "-f", "{{.Id}}", &image]);
    docker_cli_ok(&["rmi", &remote]);
    let pulled = docker_cli(&["pull", &remote]);
    assert!(
        pulled.status.success(),
        "docker pull {remote}: {}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    assert_eq!(
        docker_cli_ok(&["image", "inspect", "-f", "{{.Id}}", &remote]),
        id
    );
    docker_cli_ok(&["rmi", &remote]);

    // Lost from the registry: pushed again before the next start uses it.
    p.pier_ok(&["stop", "reg"], app.path());
    reg.delete(repo, tag);
    assert!(reg.tags(repo).is_empty());
    let before = pushes(&mut p);
    p.pier_ok(&["start", "reg"], app.path());
    assert_eq!(reg.tags(repo), BTreeSet::from([tag.to_string()]));
    assert_eq!(pushes(&mut p), before + 1, "pushed again, once");
    assert!(
        docker_cli(&["image", "inspect", &remote]).status.success(),
        "tagged for the registry again"
    );

    // Deleted with the app: from the registry, and the local registry tag with it.
    p.pier_ok(&["delete", "reg", "-f"], app.path());
    eventually(Duration::from_secs(30), "the app's images gone", || {
        labelled_images(&p).is_empty().then_some(())
    });
    assert!(reg.tags(repo).is_empty(), "{:?}", reg.tags(repo));
    let accept = [(
        "Accept",
        "application/vnd.docker.distribution.manifest.v2+json",
    )];
    let url = format!("http://{}/v2/{repo}/manifests/{tag}", reg.addr);
    assert_eq!(http_request("HEAD", &url, None, None, &accept, b"").0, 404);
}

#[test]
fn a_push_to_a_registry_that_is_not_there_fails_the_build_and_leaves_nothing() {
    let addr = format!("127.0.0.1:{}", free_port());
    let p = Platform::start_with(Options {
        controller_args: vec!["--registry".into(), addr.clone()],
        ..Default::default()
    });
    let app = example();
    let out = p.pier(&["push", "noreg"], app.path());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("the refused push printed:\n{text}");
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!("to the registry {addr} failed")) && text.contains("refused"),
        "{text}"
    );
    assert!(p.instance_ids("noreg").is_empty(), "no instance started");
    let left = labelled_images(&p);
    assert!(
        !left.iter().any(|i| i.starts_with(&addr)),
        "a registry tag was left: {left:?}"
    );
    assert!(
        left.is_empty(),
        "the image made for nothing was removed: {left:?}"
    );
    let a = p.app("noreg").unwrap();
    assert!(a.droplet.is_none(), "no droplet recorded: {a:?}");
}

#[test]
fn a_registry_with_a_scheme_or_a_path_stops_the_controller_at_startup() {
    for (bad, says) in [
        ("http://127.0.0.1:5000", "has a scheme"),
        ("127.0.0.1:5000/pier", "has a path"),
    ] {
        let data = tempfile::tempdir().unwrap();
        let out = Command::new(bin("pier-controller"))
            .args(["--registry", bad, "--data-dir"])
            .arg(data.path())
            .args(["--listen", "127.0.0.1:0", "--router-listen", "none"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: {err}");
        assert!(
            err.contains("--registry") && err.contains(says) && err.contains("HOST:PORT"),
            "{bad}: {err}"
        );
        // Refused before anything was made.
        assert_eq!(std::fs::read_dir(data.path()).unwrap().count(), 0, "{bad}");
    }
}

//! A broker on a loopback port against real Docker, with a space network of its own; every Docker
//! object carries the test's controller id and is removed when the fixture drops, whatever the
//! test did.

#![allow(dead_code)]

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pier_broker::{docker, Broker, Config, LabelledNetworks};
use serde_json::{json, Value};

pub const API_VERSION: &str = "2.17";
pub const PG: &str = pier_broker::catalog::POSTGRESQL.id;
pub const PG_SMALL: &str = pier_broker::catalog::POSTGRESQL.plans[0].id;
pub const PG_MEDIUM: &str = pier_broker::catalog::POSTGRESQL.plans[1].id;
pub const REDIS: &str = pier_broker::catalog::REDIS.id;
pub const REDIS_SMALL: &str = pier_broker::catalog::REDIS.plans[0].id;

pub fn docker_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI is needed by these tests");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Removes every container, volume and network labelled with the controller id.
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label=pier.controller={}", self.0);
        let (_, ids) = docker_cli(&["ps", "-aq", "--filter", &filter]);
        for id in ids.split_whitespace() {
            docker_cli(&["rm", "-f", id]);
        }
        let (_, vols) = docker_cli(&["volume", "ls", "-q", "--filter", &filter]);
        for v in vols.split_whitespace() {
            docker_cli(&["volume", "rm", "-f", v]);
        }
        let (_, nets) = docker_cli(&["network", "ls", "-q", "--filter", &filter]);
        for n in nets.split_whitespace() {
            docker_cli(&["network", "rm", n]);
        }
    }
}

pub struct Fixture {
    pub controller_id: String,
    pub space: String,
    pub network: String,
    pub url: String,
    pub http: reqwest::Client,
    pub data: tempfile::TempDir,
    pub broker: Broker,
    server: tokio::task::JoinHandle<()>,
    // Last: removes the Docker objects after the broker stopped.
    _cleanup: Cleanup,
}

pub async fn docker_or_fail() -> docker::Engine {
    match docker::Engine::connect().await {
        Ok(d) => d,
        Err(e) => panic!("these tests need a running Docker engine: {e:#}"),
    }
}

impl Fixture {
    pub async fn new() -> Fixture {
        Fixture::with_timeout(Duration::from_secs(120)).await
    }

    pub async fn with_timeout(ready_timeout: Duration) -> Fixture {
        let docker = docker_or_fail().await;
        let image = pier_broker::image::DEFAULT_IMAGE;
        assert!(
            docker.image_exists(image).await.unwrap(),
            "the services image {image} is missing: build it with \
             `pier-controller build-services-image --if-missing` (scripts/test does)"
        );
        let controller_id = format!("bt{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let cleanup = Cleanup(controller_id.clone());
        let space = uuid::Uuid::new_v4().to_string();
        let hex: String = space
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(12)
            .collect();
        let network = format!("pier-{controller_id}-{hex}");
        let (ok, out) = docker_cli(&[
            "network",
            "create",
            "--label",
            &format!("pier.controller={controller_id}"),
            "--label",
            "pier.kind=instances",
            "--label",
            &format!("pier.space={space}"),
            &network,
        ]);
        assert!(ok, "cannot create the test network: {out}");
        let data = tempfile::tempdir().unwrap();
        let (url, broker, server) = start(&controller_id, data.path(), ready_timeout).await;
        Fixture {
            controller_id,
            space,
            network,
            url,
            http: reqwest::Client::new(),
            data,
            broker,
            server,
            _cleanup: cleanup,
        }
    }

    /// Stops the broker and starts another on the same data dir (as after a restart).
    pub async fn restart_broker(&mut self) {
        self.server.abort();
        let (url, broker, server) = start(
            &self.controller_id,
            self.data.path(),
            Duration::from_secs(120),
        )
        .await;
        self.url = url;
        self.broker = broker;
        self.server = server;
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .basic_auth("pier", Some("s3cret"))
            .header("X-Broker-API-Version", API_VERSION);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn provision_body(&self, service: &str, plan: &str) -> Value {
        json!({
            "service_id": service,
            "plan_id": plan,
            "organization_guid": "org-1",
            "space_guid": self.space,
            "context": {"platform": "pier", "organization_guid": "org-1", "space_guid": self.space},
        })
    }

    /// Provisions and follows `last_operation` to its end; returns its last answer.
    pub async fn provision(&self, id: &str, service: &str, plan: &str) -> Value {
        let (s, body) = self
            .call(
                reqwest::Method::PUT,
                &format!("/v2/service_instances/{id}?accepts_incomplete=true"),
                Some(self.provision_body(service, plan)),
            )
            .await;
        assert_eq!(s, 202, "{body}");
        let op = body["operation"].as_str().unwrap().to_string();
        self.follow(id, &op).await
    }

    pub async fn follow(&self, id: &str, op: &str) -> Value {
        let started = Instant::now();
        loop {
            let (s, body) = self
                .call(
                    reqwest::Method::GET,
                    &format!("/v2/service_instances/{id}/last_operation?operation={op}"),
                    None,
                )
                .await;
            assert_eq!(s, 200, "{body}");
            if body["state"] != "in progress" {
                return body;
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "still in progress: {body}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn bind(&self, id: &str, bid: &str, service: &str, plan: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::PUT,
            &format!("/v2/service_instances/{id}/service_bindings/{bid}"),
            Some(json!({"service_id": service, "plan_id": plan, "bind_resource": {"app_guid": "app-1"}})),
        )
        .await
    }

    /// Runs `cmd` in a throwaway container of the services image on the space's network (as an
    /// app instance would connect).
    pub fn on_network(&self, cmd: &[&str]) -> (bool, String) {
        let label = format!("pier.controller={}", self.controller_id);
        let mut args = vec![
            "run",
            "--rm",
            "--label",
            &label,
            "--network",
            &self.network,
            "--user",
            "nobody",
            pier_broker::image::DEFAULT_IMAGE,
        ];
        args.extend_from_slice(cmd);
        docker_cli(&args)
    }

    /// Names of the test's containers and volumes.
    pub fn objects(&self) -> (Vec<String>, Vec<String>) {
        let filter = format!("label=pier.controller={}", self.controller_id);
        let (_, c) = docker_cli(&["ps", "-a", "--format", "{{.Names}}", "--filter", &filter]);
        let (_, v) = docker_cli(&["volume", "ls", "-q", "--filter", &filter]);
        (
            c.split_whitespace().map(str::to_string).collect(),
            v.split_whitespace().map(str::to_string).collect(),
        )
    }
}

async fn start(
    controller_id: &str,
    data: &std::path::Path,
    ready_timeout: Duration,
) -> (String, Broker, tokio::task::JoinHandle<()>) {
    let docker = docker_or_fail().await;
    let placement = Arc::new(LabelledNetworks {
        docker: docker.clone(),
        controller_id: controller_id.to_string(),
        default_space: None,
    });
    let config = Config {
        controller_id: controller_id.to_string(),
        image: pier_broker::image::DEFAULT_IMAGE.to_string(),
        data_dir: data.to_path_buf(),
        username: "pier".into(),
        password: "s3cret".into(),
        ready_timeout,
    };
    let broker = Broker::open(config, docker, placement).unwrap();
    broker.adopt().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let b = broker.clone();
    let server = tokio::spawn(async move {
        pier_broker::http::serve(listener, b, std::future::pending())
            .await
            .unwrap();
    });
    (url, broker, server)
}

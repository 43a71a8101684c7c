//! For tests without Docker: the whole controller (store, staging, instances, reconciler, the
//! API's router) on a temporary data dir, the [`FakeRuntime`] and a health probe the test
//! answers. Requests go to the axum router with `oneshot`, no socket.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::instances::health::tests::FakeProbe;
use crate::instances::{Drain, Drained};
use crate::runtime::fake::{FakeRuntime, Script};
use crate::runtime::{Kind, Stream};
use crate::server::{Parts, Wiring};
use crate::store::{BlobStore, Store};

pub(crate) const TOKEN: &str = "pier_test_token";
pub(crate) const ROUTER_TOKEN: &str = "pier_test_router_token";

/// Nothing is ever in flight: drains end at once.
pub(crate) struct Idle;

#[async_trait::async_trait]
impl Drain for Idle {
    async fn wait(&self, _: &str, _: u64, _: tokio::time::Instant) -> Drained {
        Drained {
            idle: true,
            waited_on: "nothing (tests)".into(),
        }
    }
}

pub(crate) struct TestPlatform {
    pub(crate) parts: Parts,
    pub(crate) router: axum::Router,
    pub(crate) fake: Arc<FakeRuntime>,
    pub(crate) probe: Arc<FakeProbe>,
    pub(crate) store: Store,
    pub(crate) blobs: BlobStore,
    _dir: tempfile::TempDir,
}

/// A staging that succeeds with a droplet whose web process runs `python3 app.py`.
pub(crate) fn successful_staging() -> Script {
    Script {
        output: vec![
            (Stream::Out, "-----> Python app detected\n".into()),
            (Stream::Err, "a warning\n".into()),
        ],
        files: vec![
            (
                "/tmp/out/droplet.tgz".into(),
                targz(&[("app/app.py", b"print('hi')")]),
            ),
            ("/tmp/out/buildpack".into(), b"python\n".to_vec()),
            (
                "/tmp/out/release.yml".into(),
                b"default_process_types:\n  web: python3 app.py\n".to_vec(),
            ),
        ],
        exit: Some(0),
    }
}

impl TestPlatform {
    pub(crate) async fn new() -> TestPlatform {
        Self::with_config(|_| {}).await
    }

    /// A platform whose config `f` adjusts first.
    pub(crate) async fn with_config(f: impl FnOnce(&mut Config)) -> TestPlatform {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_tests(dir.path().to_path_buf());
        config.controller_id = Some("test".into());
        config.crash_backoff_base_ms = 1000;
        f(&mut config);
        let store = Store::open(&dir.path().join("db")).expect("store");
        let blobs = BlobStore::open(dir.path()).expect("blobs");
        let fake = FakeRuntime::new("test");
        fake.on_start(Kind::Staging, |_| successful_staging());
        let network = crate::server::prepare_network(fake.as_ref(), "test", &config, &store)
            .await
            .expect("network");
        let probe = Arc::new(FakeProbe::default());
        let shutdown = CancellationToken::new();
        let parts = Parts::build(Wiring {
            config,
            store: store.clone(),
            blobs: blobs.clone(),
            runtime: fake.clone(),
            probe: probe.clone(),
            builtin_router: None,
            drain: Some(Arc::new(Idle)),
            tokens: crate::http::auth::Tokens {
                admin: crate::http::auth::hash(TOKEN),
                router: crate::http::auth::hash(ROUTER_TOKEN),
            },
            controller_id: "test".into(),
            network,
            route_port: Some(8080),
            shutdown,
        })
        .expect("wiring");
        let router = crate::http::router(parts.api.clone());
        // Deployments end as they do in the controller (the reconciler's loop does not run:
        // tests call its passes when they want them).
        tokio::spawn(parts.watcher.clone().run(parts.shutdown.clone()));
        TestPlatform {
            parts,
            router,
            fake,
            probe,
            store,
            blobs,
            _dir: dir,
        }
    }

    /// The platform's data dir.
    pub(crate) fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// One request with the admin token; the answer's status and JSON body (Null when empty).
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_with(
            method,
            path,
            body.map(|b| b.to_string().into_bytes()),
            Some(TOKEN),
        )
        .await
    }

    pub(crate) async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        use tower::ServiceExt as _;
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .expect("request");
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024 * 1024)
            .await
            .expect("body");
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                // NDJSON (builds): one value per line, as an array.
                Value::Array(
                    bytes
                        .split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .filter_map(|l| serde_json::from_slice(l).ok())
                        .collect(),
                )
            })
        };
        (status, v)
    }

    /// Uploads a package made of `files` and returns its sha256.
    pub(crate) async fn upload(&self, files: &[(&str, &[u8])]) -> String {
        let (status, v) = self
            .call_with("POST", "/v1/packages", Some(targz(files)), Some(TOKEN))
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v["sha256"].as_str().expect("sha256").to_string()
    }

    /// Creates app `name`, pushes a package, stages it and starts it; returns the build's events.
    pub(crate) async fn push(&self, name: &str) -> Value {
        self.push_at(name, "", None).await
    }

    /// [`Self::push`] in the space `query` names (`?org=O&space=S`, or empty for the default
    /// one), with `config` as the app's settings.
    pub(crate) async fn push_at(&self, name: &str, query: &str, config: Option<Value>) -> Value {
        let (s, v) = self
            .call("PUT", &format!("/v1/apps/{name}{query}"), config)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let sha = self.upload(&[("app.py", b"print('hi')")]).await;
        let (s, events) = self
            .call(
                "POST",
                &format!("/v1/apps/{name}/builds{query}"),
                Some(serde_json::json!({ "package": sha })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{events}");
        let (s, v) = self
            .call(
                "POST",
                &format!("/v1/apps/{name}/actions/start{query}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        events
    }

    /// Waits (up to 10 s) until `f` holds.
    pub(crate) async fn eventually<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The app's instance statuses as the API shows them.
    pub(crate) async fn instances(&self, name: &str) -> Vec<Value> {
        let (_, v) = self.call("GET", &format!("/v1/apps/{name}"), None).await;
        v["instances"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for TestPlatform {
    fn drop(&mut self) {
        self.parts.shutdown.cancel();
    }
}

/// A gzipped tar of `files`.
/// Every byte under `dir`, file by file.
pub(crate) fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub(crate) fn targz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data).expect("tar entry");
    }
    b.into_inner().and_then(|gz| gz.finish()).expect("targz")
}

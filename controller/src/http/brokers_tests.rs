//! Service brokers, managed instances, bindings and keys through the real axum router, against a
//! fake OSB broker served here (axum on 127.0.0.1:0) whose answers each test sets: sync and async
//! provisioning, a failed last operation, orphan mitigation on a 500 and on a timeout, binding
//! credentials reaching VCAP_SERVICES and DATABASE_URL, every refusal with nothing changed, and
//! the broker password sealed at rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use http::{Request, StatusCode};
use serde_json::{json, Value};

use crate::runtime::Kind;
use crate::testkit::{contains, files_under, TestPlatform};

const BROKER_USER: &str = "broker-user";
const BROKER_PASSWORD: &str = "Zq8-broker-pw-never-stored-plain";
const BIND_SECRET: &str = "bind-secret-4711";

/// How the fake broker answers one kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 201 (200 for deletes and updates).
    Sync,
    /// 202; `last_operation` then says `in progress` `polls` times and then `ends`.
    Async,
    Fail500,
    /// Answers after 3 s (past the controller's 1 s timeout in the tests that set it).
    Hang,
    /// 201 with a body that is not JSON.
    Garbage,
    /// 400 with a description.
    Refuse,
}

struct Fake {
    provision: Mode,
    update: Mode,
    deprovision: Mode,
    bind: Mode,
    catalog_garbage: bool,
    polls: usize,
    /// `succeeded` or `failed`.
    ends: &'static str,
    /// Polls answered per instance.
    polled: HashMap<String, usize>,
    /// "METHOD PATH" of each request.
    calls: Vec<String>,
    /// The last provision body.
    provisioned: Option<Value>,
    /// Headers of the last request.
    headers: Vec<(String, String)>,
}

type Shared = Arc<Mutex<Fake>>;

fn catalog() -> Value {
    json!({"services": [
        {"id": "svc-pg", "name": "pg", "description": "PostgreSQL", "bindable": true,
         "plan_updateable": true, "tags": ["postgresql", "relational"],
         "plans": [
            {"id": "plan-small", "name": "small", "description": "1 GB"},
            {"id": "plan-big", "name": "big", "description": "8 GB", "free": false}]},
        {"id": "svc-cache", "name": "cache", "description": "Redis", "bindable": true,
         "tags": ["redis"], "plans": [{"id": "plan-c", "name": "tiny", "description": "64 MB"}]}
    ]})
}

fn authorized(h: &HeaderMap) -> bool {
    use base64::Engine;
    let want = base64::engine::general_purpose::STANDARD
        .encode(format!("{BROKER_USER}:{BROKER_PASSWORD}"));
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Basic {want}"))
}

fn note(f: &Shared, what: String, h: &HeaderMap) -> Option<Response> {
    let mut g = f.lock().unwrap();
    g.calls.push(what);
    g.headers = h
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    if !authorized(h) {
        return Some((StatusCode::UNAUTHORIZED, "{}").into_response());
    }
    None
}

async fn answer(mode: Mode, done: StatusCode, body: Value) -> Response {
    match mode {
        Mode::Sync => (done, Json(body)).into_response(),
        Mode::Async => (StatusCode::ACCEPTED, Json(json!({"operation": "op-1"}))).into_response(),
        Mode::Fail500 => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"description": "the broker's database is down"})),
        )
            .into_response(),
        Mode::Hang => {
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            (done, Json(body)).into_response()
        }
        Mode::Garbage => (done, "<html>oops</html>").into_response(),
        Mode::Refuse => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "BadParameters", "description": "size must be a number"})),
        )
            .into_response(),
    }
}

async fn fake_catalog(State(f): State<Shared>, h: HeaderMap) -> Response {
    if let Some(r) = note(&f, "GET /v2/catalog".into(), &h) {
        return r;
    }
    if f.lock().unwrap().catalog_garbage {
        return Json(json!({"services": [{"id": "x", "name": "x"}]})).into_response();
    }
    Json(catalog()).into_response()
}

async fn fake_provision(
    State(f): State<Shared>,
    Path(id): Path<String>,
    h: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = note(&f, format!("PUT {id}"), &h) {
        return r;
    }
    let mode = {
        let mut g = f.lock().unwrap();
        g.provisioned = Some(body);
        g.provision
    };
    answer(
        mode,
        StatusCode::CREATED,
        json!({"dashboard_url": "http://dash"}),
    )
    .await
}

async fn fake_update(State(f): State<Shared>, Path(id): Path<String>, h: HeaderMap) -> Response {
    if let Some(r) = note(&f, format!("PATCH {id}"), &h) {
        return r;
    }
    let mode = f.lock().unwrap().update;
    answer(mode, StatusCode::OK, json!({})).await
}

async fn fake_deprovision(
    State(f): State<Shared>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Response {
    if let Some(r) = note(&f, format!("DELETE {id}"), &h) {
        return r;
    }
    let mode = f.lock().unwrap().deprovision;
    answer(mode, StatusCode::OK, json!({})).await
}

async fn fake_last_operation(
    State(f): State<Shared>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> Response {
    if let Some(r) = note(&f, format!("POLL {id}"), &h) {
        return r;
    }
    let mut g = f.lock().unwrap();
    let (polls, ends) = (g.polls, g.ends);
    let n = g.polled.entry(id).or_default();
    *n += 1;
    let (state, description) = if *n <= polls {
        ("in progress", format!("step {n}"))
    } else {
        (ends, "disk full".to_string())
    };
    (
        [("retry-after", "0")],
        Json(json!({"state": state, "description": description})),
    )
        .into_response()
}

async fn fake_bind(
    State(f): State<Shared>,
    Path((id, b)): Path<(String, String)>,
    h: HeaderMap,
) -> Response {
    if let Some(r) = note(&f, format!("BIND {id} {b}"), &h) {
        return r;
    }
    let mode = f.lock().unwrap().bind;
    let creds = json!({"credentials": {
        "uri": format!("postgres://u-{b}:{BIND_SECRET}@db.internal:5432/d"),
        "password": BIND_SECRET}});
    answer(mode, StatusCode::CREATED, creds).await
}

async fn fake_unbind(
    State(f): State<Shared>,
    Path((id, b)): Path<(String, String)>,
    h: HeaderMap,
) -> Response {
    if let Some(r) = note(&f, format!("UNBIND {id} {b}"), &h) {
        return r;
    }
    Json(json!({})).into_response()
}

/// The fake broker, serving until the test ends; its URL and state.
async fn fake_broker() -> (String, Shared) {
    let f: Shared = Arc::new(Mutex::new(Fake {
        provision: Mode::Sync,
        update: Mode::Sync,
        deprovision: Mode::Sync,
        bind: Mode::Sync,
        catalog_garbage: false,
        polls: 3,
        ends: "succeeded",
        polled: HashMap::new(),
        calls: Vec::new(),
        provisioned: None,
        headers: Vec::new(),
    }));
    let app = Router::new()
        .route("/v2/catalog", get(fake_catalog))
        .route(
            "/v2/service_instances/{id}",
            put(fake_provision)
                .patch(fake_update)
                .delete(fake_deprovision),
        )
        .route(
            "/v2/service_instances/{id}/last_operation",
            get(fake_last_operation),
        )
        .route(
            "/v2/service_instances/{id}/service_bindings/{b}",
            put(fake_bind).delete(fake_unbind),
        )
        .with_state(f.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, f)
}

fn calls(f: &Shared) -> Vec<String> {
    f.lock().unwrap().calls.clone()
}

async fn register(p: &TestPlatform, url: &str) {
    let body = json!({"name": "acme", "url": url, "username": BROKER_USER,
        "password": BROKER_PASSWORD});
    let (s, v) = p.call("POST", "/v1/service-brokers", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

async fn enable(p: &TestPlatform, offering: &str) {
    let (s, v) = p
        .call(
            "POST",
            "/v1/service-access",
            Some(json!({"offering": offering, "enable": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

async fn create(p: &TestPlatform, name: &str, plan: &str) -> (StatusCode, Value) {
    p.call(
        "POST",
        "/v1/service-instances",
        Some(json!({"name": name, "offering": "pg", "plan": plan,
            "parameters": {"size": 1}, "tags": ["mine"]})),
    )
    .await
}

/// A platform with the fake broker registered, its `pg` offering enabled, and the app `web`
/// pushed and deployed.
async fn web_beside_the_broker(url: &str) -> TestPlatform {
    let p = TestPlatform::new().await;
    register(&p, url).await;
    enable(&p, "pg").await;
    p.push("web").await;
    deployed(&p, "web").await;
    p
}

async fn last_op(p: &TestPlatform, name: &str) -> Value {
    let (s, v) = p
        .call("GET", &format!("/v1/service-instances/{name}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["managed"]["last_operation"].clone()
}

async fn until_op_ends(p: &TestPlatform, name: &str) -> Value {
    for _ in 0..500 {
        let op = last_op(p, name).await;
        if op["state"] != "in progress" {
            return op;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the operation on {name} did not end");
}

async fn deployed(p: &TestPlatform, app: &str) {
    for _ in 0..500 {
        let (_, d) = p
            .call("GET", &format!("/v1/apps/{app}/deployments"), None)
            .await;
        if d[0]["state"] == "SUCCEEDED" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the deployment of {app} did not end");
}

#[tokio::test]
async fn a_registered_broker_s_catalog_makes_the_marketplace_and_its_password_is_sealed() {
    let (url, f) = fake_broker().await;
    let p = TestPlatform::new().await;
    register(&p, &url).await;
    let c = calls(&f);
    assert_eq!(c, vec!["GET /v2/catalog".to_string()]);
    let headers = f.lock().unwrap().headers.clone();
    assert!(headers.contains(&("x-broker-api-version".into(), "2.17".into())));
    assert!(headers
        .iter()
        .any(|(k, v)| k == "x-broker-api-originating-identity" && v.starts_with("cloudfoundry ")));

    let (s, list) = p.call("GET", "/v1/service-brokers", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list[0]["name"], "acme");
    assert_eq!(list[0]["offerings"], json!(["pg", "cache"]));
    assert!(!list.to_string().contains(BROKER_PASSWORD));
    // The admin sees plans nobody else may use yet.
    let (_, m) = p.call("GET", "/v1/marketplace", None).await;
    assert_eq!(m[0]["name"], "pg");
    assert_eq!(m[0]["plans"][0]["access"], "none");
    let (_, m) = p.call("GET", "/v1/marketplace?offering=cache", None).await;
    assert_eq!(m.as_array().unwrap().len(), 1);
    assert_eq!(m[0]["plans"][0]["name"], "tiny");

    // The password is nowhere in the data dir, in any file, while the broker is usable.
    let (s, v) = create(&p, "db", "small").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    p.store.flush().unwrap();
    let data_dir = p.data_dir().to_path_buf();
    let files = files_under(&data_dir);
    assert!(files.len() > 3, "{files:?}");
    for (path, bytes) in &files {
        assert!(
            !contains(bytes, BROKER_PASSWORD.as_bytes()),
            "the broker password is in {}",
            path.display()
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let key = data_dir.join(crate::store::secrets::KEY_FILE);
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn a_broker_that_is_down_or_answers_garbage_is_refused_and_nothing_is_stored() {
    let (url, f) = fake_broker().await;
    let p = TestPlatform::new().await;
    // Nothing listens there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cases = [
        (format!("http://{closed}"), "service broker acme failed to give its catalog (GET /v2/catalog): cannot connect to it"),
        (url.clone(), "service broker acme answered GET /v2/catalog with a catalog that missing field `description`"),
        ("ftp://x".to_string(), "broker URL \"ftp://x\" is invalid"),
    ];
    f.lock().unwrap().catalog_garbage = true;
    for (u, says) in cases {
        let body = json!({"name": "acme", "url": u, "username": BROKER_USER,
            "password": BROKER_PASSWORD});
        let (s, v) = p.call("POST", "/v1/service-brokers", Some(body)).await;
        let want = if u.starts_with("ftp") {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::BAD_GATEWAY
        };
        assert_eq!(s, want, "{v}");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.starts_with(says), "{msg}");
        assert!(!msg.contains(BROKER_PASSWORD));
    }
    // A wrong password: the broker's 401, named.
    let body = json!({"name": "acme", "url": url, "username": BROKER_USER, "password": "nope"});
    let (s, v) = p.call("POST", "/v1/service-brokers", Some(body)).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("it answered 401"),
        "{v}"
    );
    assert!(p.store.brokers().unwrap().is_empty());
    let (_, list) = p.call("GET", "/v1/service-brokers", None).await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn a_sync_provision_binds_into_vcap_services_and_database_url() {
    let (url, f) = fake_broker().await;
    let p = web_beside_the_broker(&url).await;
    let (s, v) = create(&p, "db", "small").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["kind"], "managed");
    assert_eq!(v["managed"]["offering"], "pg");
    assert_eq!(v["managed"]["plan"], "small");
    assert_eq!(v["managed"]["broker"], "acme");
    assert_eq!(v["managed"]["last_operation"]["type"], "create");
    assert_eq!(v["managed"]["last_operation"]["state"], "succeeded");
    assert_eq!(v["managed"]["dashboard_url"], "http://dash");
    // The OSB body: ids, Cloud Foundry's context, the parameters.
    let body = f.lock().unwrap().provisioned.clone().unwrap();
    assert_eq!(body["service_id"], "svc-pg");
    assert_eq!(body["plan_id"], "plan-small");
    assert_eq!(body["parameters"], json!({"size": 1}));
    assert_eq!(body["context"]["platform"], "cloudfoundry");
    assert_eq!(body["context"]["space_name"], "default");
    assert_eq!(body["context"]["organization_name"], "default");
    assert_eq!(body["context"]["instance_name"], "db");
    assert!(body["context"]["organization_guid"].is_string());
    assert_eq!(calls(&f)[1], format!("PUT {}", v["guid"].as_str().unwrap()));

    let (s, b) = p.call("PUT", "/v1/apps/web/bindings/db", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, d) = p
        .call("POST", "/v1/apps/web/deployments", Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    p.eventually("the instance with the binding", || {
        let r = p.fake.running(Kind::Instance);
        (r.len() == 1 && r[0].1.env.iter().any(|e| e.contains(BIND_SECRET))).then_some(())
    })
    .await;
    deployed(&p, "web").await;
    let r = p.fake.running(Kind::Instance);
    let env = &r[0].1.env;
    let bg = b["guid"].as_str().unwrap();
    assert_vcap_services_entry(env, bg, v["guid"].as_str().unwrap());
    let url = format!("postgres://u-{bg}:{BIND_SECRET}@db.internal:5432/d");
    assert!(env.contains(&format!("DATABASE_URL={url}")), "{env:?}");
    assert!(!env.iter().any(|e| e.starts_with("REDIS_URL=")));
    assert_binding_sealed_at_rest(&p);

    // `pier env` shows it with the platform's variables…
    let (s, e) = p.call("GET", "/v1/apps/web/env", None).await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["system_env"]["DATABASE_URL"], url.as_str(), "{e}");
    assert!(e["system_env"].get("REDIS_URL").is_none(), "{e}");

    // A user's own DATABASE_URL wins (and the platform's is no longer shown).
    let (s, v) = p
        .call(
            "PATCH",
            "/v1/apps/web/env",
            Some(json!({"var": {"DATABASE_URL": "postgres://mine"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["system_env"].get("DATABASE_URL").is_none(), "{v}");
    assert_eq!(
        v["environment_variables"]["DATABASE_URL"],
        "postgres://mine"
    );
    p.call("POST", "/v1/apps/web/deployments", Some(json!({})))
        .await;
    p.eventually("the instance with the user's DATABASE_URL", || {
        let r = p.fake.running(Kind::Instance);
        (r.len() == 1
            && r[0]
                .1
                .env
                .contains(&"DATABASE_URL=postgres://mine".to_string()))
        .then_some(())
    })
    .await;

    // Unbind calls the broker; then the instance may go, and the broker is asked.
    let (s, _) = p.call("DELETE", "/v1/apps/web/bindings/db", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(calls(&f).contains(&format!("UNBIND {} {bg}", v_guid(&p, "db"))));
    let guid = v_guid(&p, "db");
    let (s, v) = p.call("DELETE", "/v1/service-instances/db", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert!(calls(&f).contains(&format!("DELETE {guid}")));
    assert!(p.store.all_services().unwrap().is_empty());
}

/// The instance's `VCAP_SERVICES` holds the binding `binding` of instance `instance` (db, plan
/// small of pg) as Cloud Foundry writes it.
fn assert_vcap_services_entry(env: &[String], binding: &str, instance: &str) {
    let vcap: Value = serde_json::from_str(
        env.iter()
            .find_map(|e| e.strip_prefix("VCAP_SERVICES="))
            .unwrap(),
    )
    .unwrap();
    let e = &vcap["pg"][0];
    assert_eq!(e["name"], "db");
    assert_eq!(e["instance_name"], "db");
    assert_eq!(e["label"], "pg");
    assert_eq!(e["plan"], "small");
    assert_eq!(e["provider"], Value::Null);
    assert_eq!(e["tags"], json!(["postgresql", "relational", "mine"]));
    assert_eq!(e["credentials"]["password"], BIND_SECRET);
    assert_eq!(e["binding_guid"], binding);
    assert_eq!(e["instance_guid"], instance);
    assert_eq!(e["volume_mounts"], json!([]));
}

/// The binding's credentials are sealed in the app's record, and so is the revision's
/// VCAP_SERVICES that holds them again: they are in no file of the data dir.
fn assert_binding_sealed_at_rest(p: &TestPlatform) {
    let app = p.store.list_apps().unwrap().remove(0);
    let sealed = app.bindings[0].credentials.clone().unwrap();
    assert!(sealed.starts_with("v1:") && !sealed.contains(BIND_SECRET));
    assert!(app
        .revisions
        .iter()
        .any(|r| r.vcap_services.contains(BIND_SECRET)));
    p.store.flush().unwrap();
    for (path, bytes) in &files_under(p.data_dir()) {
        assert!(
            !contains(bytes, BIND_SECRET.as_bytes()),
            "the binding's password is in {}",
            path.display()
        );
    }
}

fn default_space(p: &TestPlatform) -> String {
    let org = p.store.org_named("default").unwrap().unwrap();
    p.store
        .space_named(&org.guid, "default")
        .unwrap()
        .unwrap()
        .guid
}

fn v_guid(p: &TestPlatform, name: &str) -> String {
    let space = default_space(p);
    p.store
        .service(&space, name)
        .unwrap()
        .map(|s| s.guid)
        .unwrap_or_default()
}

#[tokio::test]
async fn an_async_provision_is_followed_through_last_operation_to_its_end() {
    let (url, f) = fake_broker().await;
    let p = TestPlatform::new().await;
    register(&p, &url).await;
    enable(&p, "pg").await;
    f.lock().unwrap().provision = Mode::Async;
    let (s, v) = create(&p, "db", "small").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["managed"]["last_operation"]["state"], "in progress");
    // Not bound while it is made.
    p.push("web").await;
    let (s, b) = p.call("PUT", "/v1/apps/web/bindings/db", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("create in progress"),
        "{b}"
    );
    let op = until_op_ends(&p, "db").await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let guid = v["guid"].as_str().unwrap().to_string();
    let polls = calls(&f)
        .iter()
        .filter(|c| **c == format!("POLL {guid}"))
        .count();
    assert_eq!(polls, 4, "three in progress, then succeeded");

    // A failed one says why, and stays for the user to delete.
    {
        let mut g = f.lock().unwrap();
        g.ends = "failed";
        g.polls = 1;
    }
    let (s, v) = create(&p, "db2", "small").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let op = until_op_ends(&p, "db2").await;
    assert_eq!(op["state"], "failed");
    assert_eq!(op["description"], "disk full");
    let (_, list) = p.call("GET", "/v1/service-instances", None).await;
    assert!(list.to_string().contains("disk full"));
    // An async delete is followed too: the record goes once the broker says so.
    {
        let mut g = f.lock().unwrap();
        g.ends = "succeeded";
        g.deprovision = Mode::Async;
        g.polled.clear();
    }
    let (s, v) = p.call("DELETE", "/v1/service-instances/db", None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["managed"]["last_operation"]["type"], "delete");
    p.eventually("db deprovisioned", || {
        p.store
            .all_services()
            .unwrap()
            .iter()
            .all(|s| s.name != "db")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_operation_in_progress_is_followed_again_after_a_restart() {
    let (url, f) = fake_broker().await;
    let p = TestPlatform::new().await;
    register(&p, &url).await;
    enable(&p, "pg").await;
    // A controller that stopped while the broker worked left this in the store.
    {
        let mut g = f.lock().unwrap();
        g.provision = Mode::Async;
        g.polls = 2;
    }
    let (s, _) = create(&p, "db", "small").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let space = default_space(&p);
    let mut svc = p.store.service(&space, "db").unwrap().unwrap();
    // Make the running follower stop (it follows only the instance it was started for) and put
    // the same operation back under a new guid, as a restarted controller would find it.
    svc.guid = "resumed-guid".into();
    p.store.put_service(&svc).unwrap();
    assert_eq!(p.parts.api.apps.resume_operations().unwrap(), 1);
    let op = until_op_ends(&p, "db").await;
    assert_eq!(op["state"], "succeeded");
    assert!(calls(&f).contains(&"POLL resumed-guid".to_string()));
}

#[tokio::test]
async fn a_bind_a_stopped_controller_left_half_made_is_unbound_on_the_broker_at_the_next_start() {
    let (url, f) = fake_broker().await;
    let p = web_beside_the_broker(&url).await;
    let (s, v) = create(&p, "db", "small").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let svc = v["guid"].as_str().unwrap().to_string();

    // The controller stops while the broker works on the bind: the request's future is dropped
    // in the middle, as a killed process would drop it.
    f.lock().unwrap().bind = Mode::Hang;
    let cut = tokio::time::timeout(
        std::time::Duration::from_millis(1500),
        p.call("PUT", "/v1/apps/web/bindings/db", None),
    )
    .await;
    assert!(cut.is_err(), "the bind was still under way");
    assert!(calls(&f)
        .iter()
        .any(|c| c.starts_with(&format!("BIND {svc} "))));
    let left = p.parts.api.apps.left_pending().unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].service_guid, svc);
    let app = p.store.list_apps().unwrap().remove(0);
    assert!(
        app.bindings.is_empty(),
        "nothing recorded: {:?}",
        app.bindings
    );

    // The next start unbinds it on the broker and forgets it.
    let binding = left[0].binding_guid.clone();
    assert_eq!(p.parts.api.apps.unbind_pending(left).await.unwrap(), 1);
    assert!(
        calls(&f).contains(&format!("UNBIND {svc} {binding}")),
        "{:?}",
        calls(&f)
    );
    assert!(p.parts.api.apps.left_pending().unwrap().is_empty());

    // A bind and a key that complete leave nothing pending.
    f.lock().unwrap().bind = Mode::Sync;
    let (s, b) = p.call("PUT", "/v1/apps/web/bindings/db", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, k) = p
        .call("PUT", "/v1/service-instances/db/keys/ci", None)
        .await;
    assert!(s.is_success(), "{k}");
    assert!(p.parts.api.apps.left_pending().unwrap().is_empty());
}

#[tokio::test]
async fn a_provision_that_gets_a_500_or_times_out_is_deprovisioned_and_leaves_nothing() {
    let (url, f) = fake_broker().await;
    let p = TestPlatform::with_config(|c| c.broker_timeout_secs = 1).await;
    register(&p, &url).await;
    enable(&p, "pg").await;
    for (mode, says) in [
        (Mode::Fail500, "service broker acme failed to provision: it answered 500: the broker's database is down; Pier asked it to deprovision"),
        (Mode::Hang, "service broker acme failed to provision: it did not answer within 1 s; Pier asked it to deprovision"),
        (Mode::Garbage, "service broker acme failed to provision: it answered 201 with a body that is not JSON"),
    ] {
        f.lock().unwrap().provision = mode;
        let before = calls(&f).len();
        let (s, v) = create(&p, "db", "small").await;
        assert_eq!(s, StatusCode::BAD_GATEWAY, "{mode:?}: {v}");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.starts_with(says), "{mode:?}: {msg}");
        // The provision, then the orphan mitigation's deprovision of the same instance.
        let new: Vec<String> = calls(&f)[before..].to_vec();
        assert_eq!(new.len(), 2, "{new:?}");
        let id = new[0].strip_prefix("PUT ").unwrap();
        assert_eq!(new[1], format!("DELETE {id}"));
        assert!(p.store.all_services().unwrap().is_empty(), "{mode:?}");
    }
    // A broker that refuses (400) made nothing: no mitigation, no record, the user's fault.
    f.lock().unwrap().provision = Mode::Refuse;
    let before = calls(&f).len();
    let (s, v) = create(&p, "db", "small").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("size must be a number"),
        "{v}"
    );
    assert_eq!(calls(&f).len(), before + 1);
    assert!(p.store.all_services().unwrap().is_empty());

    // A bind that gets a 500 is unbound again, and nothing is kept.
    f.lock().unwrap().provision = Mode::Sync;
    let (s, _) = create(&p, "db", "small").await;
    assert_eq!(s, StatusCode::CREATED);
    p.push("web").await;
    f.lock().unwrap().bind = Mode::Fail500;
    let before = calls(&f).len();
    let (s, v) = p.call("PUT", "/v1/apps/web/bindings/db", None).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("orphan mitigation"),
        "{v}"
    );
    let new: Vec<String> = calls(&f)[before..].to_vec();
    assert!(
        new[0].starts_with("BIND ") && new[1].starts_with("UNBIND "),
        "{new:?}"
    );
    assert!(p.store.list_apps().unwrap()[0].bindings.is_empty());
}

/// What the tests check is unchanged by a refusal.
fn snapshot(p: &TestPlatform) -> String {
    let apps: Vec<_> = p
        .store
        .list_apps()
        .unwrap()
        .into_iter()
        .map(|a| (a.name, a.bindings))
        .collect();
    let keys: Vec<_> = p
        .store
        .all_services()
        .unwrap()
        .iter()
        .map(|s| p.store.service_keys(&s.guid).unwrap())
        .collect();
    format!(
        "{:?}\n{apps:?}\n{keys:?}\n{:?}",
        p.store.all_services().unwrap(),
        p.store.brokers().unwrap()
    )
}

/// Calls the refusal test makes (method, path, body, status, what the message says), against a
/// platform with broker acme (at `url`), app web bound to db and instance keyed with key ci.
fn refusal_cases(url: &str) -> Vec<Case> {
    let mut cases = conflicts();
    cases.extend(bad_bodies(url));
    cases
}

type Case = (
    &'static str,
    &'static str,
    Option<Value>,
    StatusCode,
    &'static str,
);

/// Refusals of what the platform's state does not allow.
fn conflicts() -> Vec<Case> {
    vec![
        (
            "DELETE",
            "/v1/service-instances/db",
            None,
            StatusCode::CONFLICT,
            "is bound to web",
        ),
        (
            "DELETE",
            "/v1/service-instances/keyed",
            None,
            StatusCode::CONFLICT,
            "has service keys (ci)",
        ),
        (
            "PUT",
            "/v1/apps/web/bindings/db",
            None,
            StatusCode::CONFLICT,
            "already bound",
        ),
        (
            "PUT",
            "/v1/service-instances/keyed/keys/ci",
            None,
            StatusCode::CONFLICT,
            "already exists",
        ),
        (
            "DELETE",
            "/v1/service-brokers/acme",
            None,
            StatusCode::CONFLICT,
            "has service instances (db, keyed)",
        ),
    ]
}

/// Refusals of bodies that name what does not exist or are malformed.
fn bad_bodies(url: &str) -> Vec<Case> {
    let new_instance = |body: Value| Some(body);
    vec![
        (
            "POST",
            "/v1/service-instances",
            new_instance(
                json!({"name": "x", "offering": "pg", "plan": "small", "parameters": "size=1"}),
            ),
            StatusCode::BAD_REQUEST,
            "a value that must be a JSON object is not one",
        ),
        (
            "POST",
            "/v1/service-instances",
            new_instance(json!({"name": "x", "offering": "mysql", "plan": "small"})),
            StatusCode::NOT_FOUND,
            "service offering mysql not found (the marketplace has cache, pg)",
        ),
        (
            "POST",
            "/v1/service-instances",
            new_instance(json!({"name": "x", "offering": "pg", "plan": "huge"})),
            StatusCode::NOT_FOUND,
            "service plan huge not found for offering pg (its plans: big, small)",
        ),
        (
            "POST",
            "/v1/service-instances",
            new_instance(json!({"name": "db", "offering": "pg", "plan": "small"})),
            StatusCode::CONFLICT,
            "service instance db already exists",
        ),
        (
            "PATCH",
            "/v1/service-instances/db",
            new_instance(json!({"plan": "huge"})),
            StatusCode::NOT_FOUND,
            "service plan huge not found for offering pg",
        ),
        (
            "PUT",
            "/v1/apps/web/bindings/keyed",
            new_instance(json!({"parameters": [1]})),
            StatusCode::BAD_REQUEST,
            "invalid request body",
        ),
        (
            "POST",
            "/v1/service-brokers",
            new_instance(
                json!({"name": "acme", "url": url, "username": BROKER_USER, "password": BROKER_PASSWORD}),
            ),
            StatusCode::CONFLICT,
            "service broker acme already exists",
        ),
        (
            "POST",
            "/v1/service-access",
            new_instance(json!({"offering": "pg", "plan": "huge", "enable": true})),
            StatusCode::NOT_FOUND,
            "service plan huge not found for offering pg (its plans: small, big)",
        ),
    ]
}

#[tokio::test]
async fn every_refusal_says_why_and_changes_nothing() {
    let (url, f) = fake_broker().await;
    let p = TestPlatform::new().await;
    register(&p, &url).await;
    enable(&p, "pg").await;
    p.push("web").await;
    let (s, _) = create(&p, "db", "small").await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = create(&p, "keyed", "small").await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = p.call("PUT", "/v1/apps/web/bindings/db", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = p
        .call("PUT", "/v1/service-instances/keyed/keys/ci", None)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let cases = refusal_cases(&url);
    let before = snapshot(&p);
    let calls_before = calls(&f).len();
    for (method, path, body, status, says) in cases {
        let (s, v) = p.call(method, path, body).await;
        assert_eq!(s, status, "{method} {path}: {v}");
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{method} {path}: {msg}");
        assert_eq!(snapshot(&p), before, "{method} {path} changed something");
    }
    // Raw garbage is named by where it is.
    let (s, v) = p
        .call_with(
            "POST",
            "/v1/service-instances",
            Some(b"{\"name\": \"x\", \"offering\": ".to_vec()),
            Some(crate::testkit::TOKEN),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("line 1 column"),
        "{v}"
    );
    assert_eq!(
        calls(&f).len(),
        calls_before,
        "no refusal reached the broker"
    );
    assert_eq!(snapshot(&p), before);
}

#[tokio::test]
async fn a_broker_down_at_deprovision_leaves_the_instance_as_delete_failed() {
    let (url, f) = fake_broker().await;
    let p = TestPlatform::new().await;
    register(&p, &url).await;
    enable(&p, "pg").await;
    let (s, _) = create(&p, "db", "small").await;
    assert_eq!(s, StatusCode::CREATED);
    // A broker that is down when deprovisioning: the instance stays, as `delete failed: ...`.
    f.lock().unwrap().deprovision = Mode::Fail500;
    let (s, v) = p.call("DELETE", "/v1/service-instances/db", None).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("failed to deprovision"),
        "{v}"
    );
    let op = last_op(&p, "db").await;
    assert_eq!(op["type"], "delete");
    assert_eq!(op["state"], "failed");
    assert!(op["description"]
        .as_str()
        .unwrap()
        .contains("the broker's database is down"));
    let (_, v) = p.call("GET", "/v1/service-instances/db", None).await;
    assert_eq!(v["managed"]["plan"], "small", "it stays as it was");
    // And a later delete, with the broker back, removes it.
    f.lock().unwrap().deprovision = Mode::Sync;
    let (s, _) = p.call("DELETE", "/v1/service-instances/db", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

/// Org acme with spaces dev and prod, and alice a SpaceDeveloper of both; her token.
async fn developer_in_dev_and_prod(p: &TestPlatform) -> String {
    for (o, s) in [("acme", "dev"), ("acme", "prod")] {
        let (st, v) = p.call("POST", "/v1/orgs", Some(json!({ "name": o }))).await;
        assert!(
            st == StatusCode::CREATED || st == StatusCode::CONFLICT,
            "{v}"
        );
        let (st, v) = p
            .call(
                "POST",
                &format!("/v1/orgs/{o}/spaces"),
                Some(json!({ "name": s })),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }
    let alice = login(p, "alice").await;
    for sp in ["dev", "prod"] {
        let (s, v) = p
            .call(
                "PUT",
                &format!("/v1/orgs/acme/spaces/{sp}/users/alice/roles/SpaceDeveloper"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    }
    alice
}

/// Alice registers broker `mine` (the `body` broker renamed) in acme/dev: dev's marketplace shows
/// its plans as space plans, prod's does not, and the platform list shows both brokers.
async fn space_broker_seen_in_dev_only(p: &TestPlatform, alice: &str, body: &Value) {
    let dev = "?org=acme&space=dev";
    // A space-scoped broker: alice registers it in dev; seen in dev, not in prod.
    let mut sb = body.clone();
    sb["name"] = json!("mine");
    let (s, v) = as_user(
        p,
        "POST",
        &format!("/v1/space-service-brokers{dev}"),
        alice,
        Some(sb),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["space"], "acme/dev");
    let (_, m) = as_user(
        p,
        "GET",
        &format!("/v1/marketplace{dev}&offering=cache"),
        alice,
        None,
    )
    .await;
    assert_eq!(m[0]["broker"], "mine", "{m}");
    assert_eq!(m[0]["plans"][0]["access"], "space");
    let (s, m) = as_user(
        p,
        "GET",
        "/v1/marketplace?org=acme&space=prod&offering=cache",
        alice,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{m}");
    // The platform list shows it with its space; prod's list does not.
    let (_, all) = p.call("GET", "/v1/service-brokers", None).await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (_, prod) = as_user(
        p,
        "GET",
        "/v1/space-service-brokers?org=acme&space=prod",
        alice,
        None,
    )
    .await;
    assert_eq!(prod, json!([]));
}

#[tokio::test]
async fn plans_are_seen_once_enabled_and_space_brokers_only_in_their_space() {
    let (url, _f) = fake_broker().await;
    let p = TestPlatform::new().await;
    let alice = developer_in_dev_and_prod(&p).await;
    let dev = "?org=acme&space=dev";
    let body = json!({"name": "acme", "url": url, "username": BROKER_USER,
        "password": BROKER_PASSWORD});
    // A developer may not register a platform broker: 403, nothing stored.
    let (s, v) = as_user(
        &p,
        "POST",
        "/v1/service-brokers",
        &alice,
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("the platform admin only"),
        "{v}"
    );
    assert!(p.store.brokers().unwrap().is_empty());
    // The admin registers one; its plans are not seen by alice until enabled.
    register(&p, &url).await;
    let (s, m) = as_user(&p, "GET", &format!("/v1/marketplace{dev}"), &alice, None).await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(m, json!([]));
    let create = json!({"name": "db", "offering": "pg", "plan": "small"});
    let path = format!("/v1/service-instances{dev}");
    let (s, v) = as_user(&p, "POST", &path, &alice, Some(create.clone())).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("service offering pg not found"));
    // Enabled for org acme, one plan: alice sees that plan only.
    let (s, v) = p
        .call(
            "POST",
            "/v1/service-access",
            Some(json!({"offering": "pg", "plan": "small", "org": "acme", "enable": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["plans"][0]["access"], "limited");
    assert_eq!(v["plans"][0]["orgs"], json!(["acme"]));
    let (_, m) = as_user(&p, "GET", &format!("/v1/marketplace{dev}"), &alice, None).await;
    assert_eq!(m[0]["plans"].as_array().unwrap().len(), 1, "{m}");
    assert_eq!(m[0]["plans"][0]["name"], "small");

    space_broker_seen_in_dev_only(&p, &alice, &body).await;
    // Two brokers offer pg in dev now: the user names one.
    let (s, v) = as_user(&p, "POST", &path, &alice, Some(create.clone())).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("several brokers (acme, mine)"),
        "{v}"
    );
    let mut named = create.clone();
    named["broker"] = json!("mine");
    let (s, v) = as_user(&p, "POST", &path, &alice, Some(named)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["managed"]["broker"], "mine");
}

async fn login(p: &TestPlatform, name: &str) -> String {
    let pw = "Tr0ub4dor-and-3";
    let (s, v) = p
        .call(
            "POST",
            "/v1/users",
            Some(json!({"name": name, "password": pw})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    use tower::ServiceExt as _;
    let req = Request::builder()
        .method("POST")
        .uri("/oauth/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", "Basic Y2Y6")
        .body(axum::body::Body::from(format!(
            "grant_type=password&username={name}&password={pw}"
        )))
        .unwrap();
    let resp = p.router.clone().oneshot(req).await.unwrap();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

async fn as_user(
    p: &TestPlatform,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    p.call_with(
        method,
        path,
        body.map(|b| b.to_string().into_bytes()),
        Some(token),
    )
    .await
}

#[tokio::test]
async fn service_keys_are_bindings_without_an_app_and_updates_change_the_plan() {
    let (url, f) = fake_broker().await;
    let p = TestPlatform::new().await;
    register(&p, &url).await;
    enable(&p, "pg").await;
    let (s, _) = create(&p, "db", "small").await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, k) = p
        .call(
            "PUT",
            "/v1/service-instances/db/keys/ci",
            Some(json!({"parameters": {"role": "ro"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    assert_eq!(k["credentials"]["password"], BIND_SECRET);
    let (_, list) = p.call("GET", "/v1/service-instances/db/keys", None).await;
    assert_eq!(list[0]["name"], "ci");
    assert_eq!(
        list[0]["credentials"],
        json!({}),
        "lists carry no credentials"
    );
    let (_, one) = p
        .call("GET", "/v1/service-instances/db/keys?key=ci", None)
        .await;
    assert_eq!(one[0]["credentials"]["password"], BIND_SECRET);
    let (s, v) = p
        .call("GET", "/v1/service-instances/db/keys?key=nope", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(
        v["message"],
        "service key nope of service instance db not found"
    );
    let (_, svc) = p.call("GET", "/v1/service-instances/db", None).await;
    assert_eq!(svc["managed"]["keys"], json!(["ci"]));
    // Sealed at rest.
    let space = default_space(&p);
    let guid = p.store.service(&space, "db").unwrap().unwrap().guid;
    let rec = p.store.service_keys(&guid).unwrap().remove(0);
    assert!(!rec.credentials.contains(BIND_SECRET));
    let (s, _) = p
        .call("DELETE", "/v1/service-instances/db/keys/ci", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(calls(&f).contains(&format!("UNBIND {guid} {}", rec.guid)));
    assert!(p.store.service_keys(&guid).unwrap().is_empty());

    // A sync plan change; then an async one, followed to its end.
    let (s, v) = p
        .call(
            "PATCH",
            "/v1/service-instances/db",
            Some(json!({"plan": "big"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["managed"]["plan"], "big");
    assert_eq!(v["managed"]["last_operation"]["type"], "update");
    assert_eq!(v["managed"]["last_operation"]["state"], "succeeded");
    f.lock().unwrap().update = Mode::Async;
    let (s, v) = p
        .call(
            "PATCH",
            "/v1/service-instances/db",
            Some(json!({"plan": "small"})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["managed"]["plan"], "big", "until the broker is done");
    let op = until_op_ends(&p, "db").await;
    assert_eq!(op["state"], "succeeded");
    let (_, v) = p.call("GET", "/v1/service-instances/db", None).await;
    assert_eq!(v["managed"]["plan"], "small");
    // A failed update keeps the plan.
    f.lock().unwrap().update = Mode::Fail500;
    let (s, _) = p
        .call(
            "PATCH",
            "/v1/service-instances/db",
            Some(json!({"plan": "big"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    let (_, v) = p.call("GET", "/v1/service-instances/db", None).await;
    assert_eq!(v["managed"]["plan"], "small");
    assert_eq!(v["managed"]["last_operation"]["state"], "failed");
}

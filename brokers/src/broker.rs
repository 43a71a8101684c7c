//! The brokers' operations, as OSB v2.17 defines them: provision and update (asynchronous,
//! followed through `last_operation`), deprovision, bind and unbind (synchronous). Requests are
//! checked in full before anything is created; a refusal changes nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Value};

use crate::catalog::{self, Engine, Offering, Plan};
use crate::docker::{self, ContainerSpec};
use crate::placement::{Attachment, Placement};
use crate::servers;
use crate::state::{BindingRecord, InstanceRecord, OpState, Operation, State, StateFile};

/// Label keys on the brokers' containers and volumes (besides `pier.controller`, `pier.kind`).
pub mod labels {
    pub const CONTROLLER: &str = "pier.controller";
    pub const KIND: &str = "pier.kind";
    /// The value of [`KIND`] on service containers and volumes.
    pub const KIND_SERVICE: &str = "service";
    pub const SERVICE_INSTANCE: &str = "pier.service-instance";
    pub const SERVICE: &str = "pier.service";
    pub const PLAN: &str = "pier.plan";
    pub const SPACE: &str = "pier.space";
    /// The holder of a fixed address (the controller's address pool keeps it while the container
    /// with this label exists).
    pub const INSTANCE: &str = "pier.instance";
}

/// How the broker is set up.
#[derive(Debug, Clone)]
pub struct Config {
    pub controller_id: String,
    pub image: String,
    /// Where the state file lives.
    pub data_dir: std::path::PathBuf,
    /// Basic-auth credentials platforms use.
    pub username: String,
    pub password: String,
    /// How long a new server may take to accept connections.
    pub ready_timeout: Duration,
}

/// An OSB answer: status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    fn new(status: StatusCode, body: Value) -> Reply {
        Reply { status, body }
    }

    /// An OSB error body: `error` is OSB's machine-readable code, when there is one.
    pub fn error(status: StatusCode, error: Option<&str>, description: impl Into<String>) -> Reply {
        let mut body = json!({ "description": description.into() });
        if let Some(e) = error {
            body["error"] = json!(e);
        }
        Reply { status, body }
    }

    fn bad(description: impl Into<String>) -> Reply {
        Reply::error(StatusCode::BAD_REQUEST, None, description)
    }
}

type Outcome = Result<Reply, Reply>;

/// The brokers.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    docker: docker::Engine,
    placement: Arc<dyn Placement>,
    file: StateFile,
    state: tokio::sync::Mutex<State>,
    /// Held by bind, unbind and deprovision, which change an instance's server synchronously.
    work: tokio::sync::Mutex<()>,
}

fn internal(e: anyhow::Error) -> Reply {
    Reply::error(StatusCode::INTERNAL_SERVER_ERROR, None, format!("{e:#}"))
}

fn str_field<'a>(body: &'a Value, key: &str) -> Result<&'a str, Reply> {
    match body.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(Reply::bad(format!("{key} must be a non-empty string"))),
        None => Err(Reply::bad(format!("{key} is missing"))),
    }
}

/// The request's `parameters`: none are taken, so any is named in the refusal.
fn parameters(body: &Value, offering: &Offering) -> Result<Value, Reply> {
    match body.get("parameters") {
        None | Some(Value::Null) => Ok(json!({})),
        Some(Value::Object(m)) => match m.keys().next() {
            None => Ok(json!({})),
            Some(k) => Err(Reply::bad(format!(
                "unknown parameter {k:?}: the {} offering takes no parameters (pick a plan \
                 for memory and connections)",
                offering.name
            ))),
        },
        Some(_) => Err(Reply::bad("parameters must be a JSON object")),
    }
}

/// A context field (OSB 2.17 `context`, else the older top-level field).
fn context_field(body: &Value, key: &str) -> Option<String> {
    body.get("context")
        .and_then(|c| c.get(key))
        .or_else(|| body.get(key))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn async_required() -> Reply {
    Reply::error(
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("AsyncRequired"),
        "this broker provisions and updates asynchronously: send accepts_incomplete=true",
    )
}

fn concurrency(id: &str) -> Reply {
    Reply::error(
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("ConcurrencyError"),
        format!("an operation on the service instance {id} is still in progress"),
    )
}

/// Docker-safe letters of an id (lower-case letters, digits).
fn slug(id: &str, max: usize) -> String {
    id.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(max)
        .collect()
}

fn secret() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

fn holder(id: &str) -> String {
    format!("svc-{id}")
}

fn plan_of(inst: &InstanceRecord) -> Result<(Offering, Plan), String> {
    catalog::find(&inst.service_id, &inst.plan_id)
}

impl Broker {
    /// Opens the state in `config.data_dir`. Call [`Broker::adopt`] next.
    pub fn open(
        config: Config,
        docker: docker::Engine,
        placement: Arc<dyn Placement>,
    ) -> anyhow::Result<Broker> {
        let (file, state) = StateFile::open(&config.data_dir)?;
        Ok(Broker {
            inner: Arc::new(Inner {
                config,
                docker,
                placement,
                file,
                state: tokio::sync::Mutex::new(state),
                work: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    async fn save(&self, state: &State) -> Result<(), Reply> {
        self.inner.file.save(state).map_err(internal)
    }

    /// `PUT /v2/service_instances/:id`.
    pub async fn provision(&self, id: &str, accepts_incomplete: bool, body: &Value) -> Outcome {
        if !accepts_incomplete {
            return Err(async_required());
        }
        let service_id = str_field(body, "service_id")?;
        let plan_id = str_field(body, "plan_id")?;
        let (offering, _) = catalog::find(service_id, plan_id).map_err(Reply::bad)?;
        let params = parameters(body, &offering)?;
        let space = context_field(body, "space_guid")
            .ok_or_else(|| Reply::bad("context.space_guid is missing"))?;
        let org = context_field(body, "organization_guid").unwrap_or_default();
        let mut state = self.inner.state.lock().await;
        if let Some(old) = state.instances.get(id) {
            let same = old.service_id == service_id
                && old.plan_id == plan_id
                && old.space_guid == space
                && old.parameters == params;
            return match (same, old.operation.state) {
                (true, OpState::InProgress) => Ok(Reply::new(
                    StatusCode::ACCEPTED,
                    json!({ "operation": old.operation.id }),
                )),
                (true, OpState::Succeeded) => Ok(Reply::new(StatusCode::OK, json!({}))),
                (true, OpState::Failed) => Err(Reply::error(
                    StatusCode::CONFLICT,
                    None,
                    format!(
                        "the service instance {id} exists and its provisioning failed ({}); \
                         deprovision it first",
                        old.operation.description
                    ),
                )),
                (false, _) => Err(Reply::error(
                    StatusCode::CONFLICT,
                    None,
                    format!("the service instance {id} exists with other attributes"),
                )),
            };
        }
        let image = &self.inner.config.image;
        match self.inner.docker.image_exists(image).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(internal(anyhow::anyhow!(
                    "the services image {image} is missing; build it with \
                     `pier-controller build-services-image`"
                )))
            }
            Err(e) => return Err(internal(e)),
        }
        let at = self
            .inner
            .placement
            .attach(&space, &holder(id))
            .await
            .map_err(internal)?;
        let name = format!(
            "pier-{}-{}-{}",
            self.inner.config.controller_id,
            match offering.engine {
                Engine::Postgresql => "pg",
                Engine::Redis => "redis",
            },
            slug(id, 32)
        );
        let record = InstanceRecord {
            id: id.to_string(),
            engine: offering.engine,
            service_id: service_id.to_string(),
            plan_id: plan_id.to_string(),
            space_guid: space,
            organization_guid: org,
            parameters: params,
            volume: format!("{name}-data"),
            container: name,
            network: at.network.clone(),
            ip: at.ip,
            admin_password: secret(),
            operation: Operation {
                id: format!("provision-{}", uuid::Uuid::new_v4()),
                state: OpState::InProgress,
                description: "starting the server".into(),
            },
        };
        let op = record.operation.id.clone();
        state.instances.insert(id.to_string(), record);
        if let Err(e) = self.save(&state).await {
            state.instances.remove(id);
            self.inner.placement.detach(&at, &holder(id)).await;
            return Err(e);
        }
        drop(state);
        self.spawn_converge(id, op.clone(), true);
        Ok(Reply::new(StatusCode::ACCEPTED, json!({ "operation": op })))
    }

    /// `PATCH /v2/service_instances/:id`: a plan change recreates the container on the same
    /// volume with the new plan's limits.
    pub async fn update(&self, id: &str, accepts_incomplete: bool, body: &Value) -> Outcome {
        if !accepts_incomplete {
            return Err(async_required());
        }
        let service_id = str_field(body, "service_id")?;
        let mut state = self.inner.state.lock().await;
        let Some(inst) = state.instances.get(id) else {
            return Err(Reply::error(
                StatusCode::NOT_FOUND,
                None,
                format!("no service instance {id}"),
            ));
        };
        if inst.service_id != service_id {
            return Err(Reply::bad(format!(
                "service_id {service_id:?} is not the instance's ({})",
                inst.service_id
            )));
        }
        let (offering, _) = plan_of(inst).map_err(Reply::bad)?;
        parameters(body, &offering)?;
        let plan = match body.get("plan_id") {
            None | Some(Value::Null) => return Ok(Reply::new(StatusCode::OK, json!({}))),
            Some(_) => {
                catalog::find_plan(&offering, str_field(body, "plan_id")?).map_err(Reply::bad)?
            }
        };
        match inst.operation.state {
            OpState::InProgress => return Err(concurrency(id)),
            OpState::Failed if inst.operation.id.starts_with("provision-") => {
                return Err(Reply::bad(format!(
                    "the service instance {id} failed to provision; deprovision it"
                )))
            }
            _ => {}
        }
        if plan.id == inst.plan_id {
            return Ok(Reply::new(StatusCode::OK, json!({})));
        }
        let op = format!("update-{}", uuid::Uuid::new_v4());
        let before = inst.clone();
        if let Some(inst) = state.instances.get_mut(id) {
            inst.plan_id = plan.id.to_string();
            inst.operation = Operation {
                id: op.clone(),
                state: OpState::InProgress,
                description: format!("moving to the {} plan", plan.name),
            };
        }
        if let Err(e) = self.save(&state).await {
            state.instances.insert(id.to_string(), before);
            return Err(e);
        }
        drop(state);
        self.spawn_converge(id, op.clone(), false);
        Ok(Reply::new(StatusCode::ACCEPTED, json!({ "operation": op })))
    }

    /// `GET /v2/service_instances/:id/last_operation`.
    pub async fn last_operation(&self, id: &str) -> Outcome {
        let state = self.inner.state.lock().await;
        match state.instances.get(id) {
            None => Err(Reply::error(
                StatusCode::GONE,
                None,
                format!("no service instance {id}"),
            )),
            Some(i) => Ok(Reply::new(
                StatusCode::OK,
                json!({
                    "state": i.operation.state.as_str(),
                    "description": i.operation.description,
                }),
            )),
        }
    }

    /// `DELETE /v2/service_instances/:id`: the container, its volume (the data) and every
    /// binding go, synchronously.
    pub async fn deprovision(&self, id: &str, service_id: Option<&str>) -> Outcome {
        let _work = self.inner.work.lock().await;
        let inst = {
            let state = self.inner.state.lock().await;
            let Some(inst) = state.instances.get(id).cloned() else {
                return Err(Reply::error(
                    StatusCode::GONE,
                    None,
                    format!("no service instance {id}"),
                ));
            };
            inst
        };
        if service_id.is_some_and(|s| s != inst.service_id) {
            return Err(Reply::bad(format!(
                "service_id {:?} is not the instance's ({})",
                service_id.unwrap_or_default(),
                inst.service_id
            )));
        }
        if inst.operation.state == OpState::InProgress {
            return Err(concurrency(id));
        }
        self.remove_resources(&inst).await.map_err(internal)?;
        let mut state = self.inner.state.lock().await;
        state.instances.remove(id);
        state.bindings.retain(|_, b| b.instance_id != id);
        self.save(&state).await?;
        tracing::info!(instance = id, container = %inst.container, "deprovisioned; its data is gone");
        Ok(Reply::new(StatusCode::OK, json!({})))
    }

    async fn remove_resources(&self, inst: &InstanceRecord) -> anyhow::Result<()> {
        let d = &self.inner.docker;
        d.remove(&inst.container).await?;
        d.remove_volume(&inst.volume).await?;
        let at = Attachment {
            network: inst.network.clone(),
            ip: inst.ip,
        };
        self.inner.placement.detach(&at, &holder(&inst.id)).await;
        Ok(())
    }

    /// `PUT /v2/service_instances/:id/service_bindings/:binding_id`.
    pub async fn bind(&self, id: &str, binding_id: &str, body: &Value) -> Outcome {
        let service_id = str_field(body, "service_id")?;
        str_field(body, "plan_id")?;
        let app_guid = body
            .get("bind_resource")
            .and_then(|r| r.get("app_guid"))
            .or_else(|| body.get("app_guid"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let _work = self.inner.work.lock().await;
        let (inst, existing) = {
            let state = self.inner.state.lock().await;
            let Some(inst) = state.instances.get(id).cloned() else {
                return Err(Reply::error(
                    StatusCode::NOT_FOUND,
                    None,
                    format!("no service instance {id}"),
                ));
            };
            (inst, state.bindings.get(binding_id).cloned())
        };
        if inst.service_id != service_id {
            return Err(Reply::bad(format!(
                "service_id {service_id:?} is not the instance's ({})",
                inst.service_id
            )));
        }
        let (offering, _) = plan_of(&inst).map_err(Reply::bad)?;
        let params = parameters(body, &offering)?;
        if let Some(b) = existing {
            if b.instance_id == id && b.app_guid == app_guid && b.parameters == params {
                let creds = servers::credentials(&inst, &b);
                return Ok(Reply::new(StatusCode::OK, json!({ "credentials": creds })));
            }
            return Err(Reply::error(
                StatusCode::CONFLICT,
                None,
                format!("the binding {binding_id} exists with other attributes"),
            ));
        }
        if inst.operation.state != OpState::Succeeded {
            return Err(concurrency(id));
        }
        let b = BindingRecord {
            id: binding_id.to_string(),
            instance_id: id.to_string(),
            app_guid,
            parameters: params,
            username: match inst.engine {
                Engine::Postgresql => format!("b_{}", slug(binding_id, 24)),
                Engine::Redis => format!("b-{}", slug(binding_id, 24)),
            },
            password: secret(),
        };
        if let Err(e) = servers::bind(&self.inner.docker, &inst, &b).await {
            // Leave nothing behind: a role half made is dropped again.
            if let Err(u) = servers::unbind(&self.inner.docker, &inst, &b).await {
                tracing::warn!(binding = binding_id, error = %u, "cleaning up a failed binding failed");
            }
            return Err(internal(e));
        }
        let mut state = self.inner.state.lock().await;
        state.bindings.insert(binding_id.to_string(), b.clone());
        self.save(&state).await?;
        let creds = servers::credentials(&inst, &b);
        Ok(Reply::new(
            StatusCode::CREATED,
            json!({ "credentials": creds }),
        ))
    }

    /// `DELETE /v2/service_instances/:id/service_bindings/:binding_id`: revokes the credentials.
    pub async fn unbind(&self, id: &str, binding_id: &str) -> Outcome {
        let _work = self.inner.work.lock().await;
        let (inst, b) = {
            let state = self.inner.state.lock().await;
            match (state.instances.get(id), state.bindings.get(binding_id)) {
                (Some(i), Some(b)) if b.instance_id == id => (i.clone(), b.clone()),
                _ => {
                    return Err(Reply::error(
                        StatusCode::GONE,
                        None,
                        format!("no binding {binding_id} of the service instance {id}"),
                    ))
                }
            }
        };
        servers::unbind(&self.inner.docker, &inst, &b)
            .await
            .map_err(internal)?;
        let mut state = self.inner.state.lock().await;
        state.bindings.remove(binding_id);
        self.save(&state).await?;
        Ok(Reply::new(StatusCode::OK, json!({})))
    }

    fn labels(&self, inst: &InstanceRecord, plan: &Plan) -> HashMap<String, String> {
        let mut l = HashMap::from([
            (
                labels::CONTROLLER.into(),
                self.inner.config.controller_id.clone(),
            ),
            (labels::KIND.into(), labels::KIND_SERVICE.into()),
            (labels::SERVICE_INSTANCE.into(), inst.id.clone()),
            (labels::SERVICE.into(), inst.engine.as_str().into()),
            (labels::PLAN.into(), plan.name.into()),
            (labels::SPACE.into(), inst.space_guid.clone()),
        ]);
        if inst.ip.is_some() {
            l.insert(labels::INSTANCE.into(), holder(&inst.id));
        }
        l
    }

    fn container_spec(&self, inst: &InstanceRecord, plan: &Plan) -> ContainerSpec {
        let (cmd, env) = servers::start_command(inst.engine, plan, &inst.admin_password);
        ContainerSpec {
            name: inst.container.clone(),
            image: self.inner.config.image.clone(),
            cmd,
            env,
            labels: self.labels(inst, plan),
            volume: inst.volume.clone(),
            data_dir: servers::DATA_DIR.into(),
            memory_bytes: (plan.memory_mib * 1024 * 1024) as i64,
            network: inst.network.clone(),
            ip: inst.ip,
            aliases: vec![inst.container.clone()],
        }
    }

    fn spawn_converge(&self, id: &str, op: String, fresh: bool) {
        let me = self.clone();
        let id = id.to_string();
        tokio::spawn(async move { me.converge(&id, &op, fresh).await });
    }

    /// Brings the instance's container to its record's plan and waits until the server accepts
    /// connections, then records the operation's outcome. A failed provisioning (`fresh`)
    /// leaves nothing behind; a failed update keeps the data.
    async fn converge(&self, id: &str, op: &str, fresh: bool) {
        let result = self.bring_up(id).await;
        let mut state = self.inner.state.lock().await;
        let Some(inst) = state.instances.get(id).cloned() else {
            return;
        };
        if inst.operation.id != op {
            return;
        }
        let (st, description) = match &result {
            Ok(()) => (
                OpState::Succeeded,
                "the server accepts connections".to_string(),
            ),
            Err(e) => (OpState::Failed, format!("{e:#}")),
        };
        if let Err(e) = &result {
            tracing::warn!(
                instance = id,
                error = format!("{e:#}"),
                "service operation failed"
            );
            if fresh {
                if let Err(r) = self.remove_resources(&inst).await {
                    tracing::warn!(instance = id, error = format!("{r:#}"), "cleanup failed");
                }
            }
        }
        if let Some(i) = state.instances.get_mut(id) {
            i.operation.state = st;
            i.operation.description = description;
        }
        if let Err(e) = self.save(&state).await {
            tracing::warn!(instance = id, error = ?e.body, "cannot record the operation's end");
        }
    }

    async fn bring_up(&self, id: &str) -> anyhow::Result<()> {
        let inst = self
            .inner
            .state
            .lock()
            .await
            .instances
            .get(id)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("the instance is gone"))?;
        let (_, plan) = plan_of(&inst).map_err(anyhow::Error::msg)?;
        let spec = self.container_spec(&inst, &plan);
        let d = &self.inner.docker;
        d.ensure_volume(&inst.volume, &spec.labels).await?;
        let found = d
            .containers_labelled(&[format!("{}={}", labels::SERVICE_INSTANCE, inst.id)])
            .await?;
        let current = found.iter().find(|c| c.name == inst.container);
        match current {
            Some(c) if c.labels.get(labels::PLAN).map(String::as_str) == Some(plan.name) => {
                d.start(&inst.container).await?
            }
            Some(_) => {
                d.remove(&inst.container).await?;
                d.run(&spec).await?
            }
            None => d.run(&spec).await?,
        }
        self.wait_ready(&inst).await?;
        servers::set_up(d, &inst).await
    }

    async fn wait_ready(&self, inst: &InstanceRecord) -> anyhow::Result<()> {
        let started = Instant::now();
        let timeout = self.inner.config.ready_timeout;
        loop {
            if servers::ready(&self.inner.docker, inst)
                .await
                .unwrap_or(false)
            {
                return Ok(());
            }
            if started.elapsed() > timeout {
                let running = self.inner.docker.state(&inst.container).await?;
                anyhow::bail!(
                    "the {} server did not accept connections within {} s (its container {} is {})",
                    inst.engine.as_str(),
                    timeout.as_secs(),
                    inst.container,
                    match running {
                        Some(true) => "running",
                        Some(false) => "stopped",
                        None => "gone",
                    }
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// After a restart: operations cut short are taken up again, containers of ready instances
    /// that are stopped are started (or made again on their volume when gone), and containers
    /// of this controller's brokers that no record names are removed (their volumes are kept).
    pub async fn adopt(&self) -> anyhow::Result<()> {
        let found = self
            .inner
            .docker
            .containers_labelled(&[
                format!("{}={}", labels::CONTROLLER, self.inner.config.controller_id),
                format!("{}={}", labels::KIND, labels::KIND_SERVICE),
            ])
            .await?;
        let instances: Vec<InstanceRecord> = self
            .inner
            .state
            .lock()
            .await
            .instances
            .values()
            .cloned()
            .collect();
        for c in &found {
            if !instances.iter().any(|i| i.container == c.name) {
                tracing::warn!(container = %c.name, "removing a service container no record names");
                self.inner.docker.remove(&c.name).await?;
            }
        }
        for inst in instances {
            let container = found.iter().find(|c| c.name == inst.container);
            match (inst.operation.state, container) {
                (OpState::InProgress, _) => {
                    let fresh = inst.operation.id.starts_with("provision-");
                    self.spawn_converge(&inst.id, inst.operation.id.clone(), fresh);
                }
                (OpState::Succeeded, Some(c)) if c.running => {}
                (OpState::Succeeded, _) => {
                    tracing::info!(instance = %inst.id, "bringing a service container back");
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = me.bring_up(&inst.id).await {
                            tracing::warn!(instance = %inst.id, error = format!("{e:#}"), "cannot bring the service back");
                        }
                    });
                }
                (OpState::Failed, _) => {}
            }
        }
        Ok(())
    }

    /// Names of the instances' containers, for tests and the operator.
    pub async fn instance(&self, id: &str) -> Option<InstanceRecord> {
        self.inner.state.lock().await.instances.get(id).cloned()
    }

    /// The stored parameters of a binding, for tests and the operator.
    pub async fn binding(&self, id: &str) -> Option<BindingRecord> {
        self.inner.state.lock().await.bindings.get(id).cloned()
    }

    /// The docker engine the broker uses.
    pub fn docker(&self) -> &docker::Engine {
        &self.inner.docker
    }
}

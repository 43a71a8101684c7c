//! Managed service instances: provisioned, updated and deprovisioned by a service broker
//! (OSB v2.17, `accepts_incomplete=true`), in the same `services` namespace as user-provided
//! ones, and their bindings and service keys.
//!
//! Invariants:
//! - A managed instance's record says its last operation (`create in progress`,
//!   `update succeeded`, `delete failed: ...`). An operation the broker answers 202 is followed
//!   through `last_operation` by a background task (Retry-After honoured, until the plan's
//!   `maximum_polling_duration` or `--broker-max-poll-secs`); the operation in progress is in the
//!   store, so a restarted controller follows it on ([`AppService::resume_operations`]).
//! - No half state: a provision the broker refuses, or that cannot reach it, leaves no record; one
//!   that times out, gets a 5xx or a body Pier cannot use is deprovisioned (orphan mitigation)
//!   and leaves no record once that succeeded (else `create failed: ...`, so a `delete-service`
//!   can try again). A bind or key likewise: unbound on the broker, nothing stored; and one a
//!   controller stopped in the middle of (a broker's 202 is followed inline) is in the store as
//!   pending, unbound on the broker at the next start ([`AppService::unbind_pending`]). A failed
//!   update or deprovision leaves the instance as it was, with `update failed: ...` or
//!   `delete failed: ...`.
//! - While an operation is in progress, the instance is not updated, deleted or bound (409).
//! - Credentials a broker gives (bindings, keys) are sealed at rest in their records.

use std::sync::Arc;
use std::time::Duration;

use pier_api::{
    CreateManagedInstanceRequest, ErrorCode, ManagedInfo, UpdateManagedInstanceRequest,
};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::AppService;
use crate::brokers::client::{Bound, OsbError};
use crate::brokers::{broker_error, Outcome, Target};
use crate::error::{Error, Result};
use crate::store::services::{FAILED, IN_PROGRESS, SUCCEEDED};
use crate::store::{
    BrokerRecord, ManagedRecord, OfferingRecord, OperationRecord, PendingBindingRecord, PlanRecord,
    ServiceInstanceRecord,
};
use crate::tenancy::Scope;

/// Parameters given to a broker: at most this much JSON.
const MAX_PARAMETERS_BYTES: usize = 64 * 1024;
/// Polls never wait longer than this, whatever Retry-After says.
const MAX_POLL_WAIT: Duration = Duration::from_secs(60);

pub(super) fn check_parameters(p: &Option<Map<String, Value>>) -> Result<()> {
    let size = p
        .as_ref()
        .map_or(0, |m| serde_json::to_vec(m).map_or(0, |v| v.len()));
    if size > MAX_PARAMETERS_BYTES {
        return Err(Error::bad_request(format!(
            "parameters are {size} bytes of JSON; at most {MAX_PARAMETERS_BYTES}"
        )));
    }
    Ok(())
}

/// The OSB `context` (Cloud Foundry's profile).
fn context(at: &Scope, instance_name: &str) -> Value {
    json!({
        "platform": "cloudfoundry",
        "organization_guid": at.org.guid,
        "organization_name": at.org.name,
        "space_guid": at.space.guid,
        "space_name": at.space.name,
        "instance_name": instance_name,
    })
}

fn operation(kind: &str, max: Duration) -> OperationRecord {
    let now = OffsetDateTime::now_utc();
    OperationRecord {
        kind: kind.into(),
        state: IN_PROGRESS.into(),
        description: None,
        operation: None,
        new_plan: None,
        started_at: now,
        updated_at: now,
        deadline: now + max,
    }
}

fn conflict(msg: String) -> Error {
    Error::api(ErrorCode::Conflict, msg)
}

fn busy(svc: &ServiceInstanceRecord) -> Result<()> {
    match &svc.managed {
        Some(m) if m.last_operation.in_progress() => Err(conflict(format!(
            "service instance {} has an operation in progress ({} in progress): wait for it to end",
            svc.name, m.last_operation.kind
        ))),
        _ => Ok(()),
    }
}

/// The plan an update moves to (None: the same), if the offering has it and allows changes.
fn changed_plan(
    o: &OfferingRecord,
    cur: Option<&PlanRecord>,
    m: &ManagedRecord,
    plan: Option<&str>,
) -> Result<Option<PlanRecord>> {
    let Some(p) = plan.filter(|p| *p != m.plan_name) else {
        return Ok(None);
    };
    let Some(plan) = o.plans.iter().find(|q| q.name == p) else {
        let names: Vec<&str> = o.plans.iter().map(|q| q.name.as_str()).collect();
        return Err(Error::api(
            ErrorCode::NotFound,
            format!(
                "service plan {p} not found for offering {} (its plans: {})",
                o.name,
                names.join(", ")
            ),
        ));
    };
    if !cur
        .and_then(|c| c.plan_updateable)
        .unwrap_or(o.plan_updateable)
    {
        return Err(Error::bad_request(format!(
            "the plan of offering {} cannot be changed (the broker says it is not \
             plan_updateable)",
            o.name
        )));
    }
    Ok(Some(plan.clone()))
}

/// What a finished operation did, for [`AppService::finish`].
enum Ended {
    Succeeded,
    Failed(String),
}

impl AppService {
    /// The broker (with its target), offering and plan of a managed instance.
    pub(super) fn managed_parts(
        &self,
        m: &ManagedRecord,
    ) -> Result<(BrokerRecord, Target, OfferingRecord, Option<PlanRecord>)> {
        let b = self
            .d
            .store
            .broker_by_guid(&m.broker_guid)?
            .ok_or_else(|| {
                Error::Other(format!(
                    "the broker of offering {} is no longer registered",
                    m.offering_name
                ))
            })?;
        let t = self.brokers.target(&b)?;
        let o = b
            .catalog
            .iter()
            .find(|o| o.id == m.offering_id)
            .cloned()
            .ok_or_else(|| {
                Error::Other(format!(
                    "offering {} left its broker's catalog",
                    m.offering_name
                ))
            })?;
        let p = o.plans.iter().find(|p| p.id == m.plan_id).cloned();
        Ok((b, t, o, p))
    }

    /// How long an operation on `plan` is followed.
    fn max_poll(&self, plan: Option<&PlanRecord>) -> Duration {
        plan.and_then(|p| p.maximum_polling_duration)
            .map(Duration::from_secs)
            .unwrap_or(self.brokers.settings.max_poll)
    }

    /// The managed part of an instance's answer.
    pub(super) fn managed_info(&self, svc: &ServiceInstanceRecord) -> Result<Option<ManagedInfo>> {
        let Some(m) = &svc.managed else {
            return Ok(None);
        };
        let broker = self
            .d
            .store
            .broker_by_guid(&m.broker_guid)?
            .map(|b| b.name)
            .unwrap_or_default();
        let op = &m.last_operation;
        Ok(Some(ManagedInfo {
            offering: m.offering_name.clone(),
            plan: m.plan_name.clone(),
            broker,
            last_operation: pier_api::LastOperation {
                kind: op.kind.clone(),
                state: op.state.clone(),
                description: op.description.clone(),
                updated_at: op.updated_at,
            },
            dashboard_url: m.dashboard_url.clone(),
            keys: self
                .d
                .store
                .service_keys(&svc.guid)?
                .into_iter()
                .map(|k| k.name)
                .collect(),
        }))
    }

    /// Whether the scope's service instance `name` is a managed one (404 when there is none).
    pub fn is_managed(&self, at: &Scope, name: &str) -> Result<bool> {
        Ok(self.find_service(at, name)?.managed.is_some())
    }

    /// Provisions an instance; `true` with it when the broker works on it asynchronously (202).
    pub async fn create_managed(
        self: &Arc<Self>,
        at: &Scope,
        req: CreateManagedInstanceRequest,
    ) -> Result<(pier_api::ServiceInstanceResponse, bool)> {
        super::services::check_service_name(&req.name)?;
        super::services::check_tags(&req.tags)?;
        check_parameters(&req.parameters)?;
        let (b, o, p) =
            self.brokers
                .find_plan(at, &req.offering, &req.plan, req.broker.as_deref())?;
        let t = self.brokers.target(&b)?;
        let now = OffsetDateTime::now_utc();
        let mut svc = ServiceInstanceRecord {
            guid: uuid::Uuid::new_v4().to_string(),
            name: req.name.clone(),
            space_guid: at.space.guid.clone(),
            user_provided: Default::default(),
            managed: Some(ManagedRecord {
                broker_guid: b.guid.clone(),
                offering_id: o.id.clone(),
                offering_name: o.name.clone(),
                plan_id: p.id.clone(),
                plan_name: p.name.clone(),
                tags: req.tags.clone(),
                dashboard_url: None,
                last_operation: operation("create", self.max_poll(Some(&p))),
            }),
            created_at: now,
            updated_at: now,
        };
        {
            let _l = self.services_lock.lock().await;
            let _b = self.brokers.lock.lock().await;
            if self.d.store.broker_by_guid(&b.guid)?.is_none() {
                return Err(Error::not_found(format!("service broker {}", b.name)));
            }
            if !self.d.store.insert_service(&svc)? {
                return Err(conflict(format!(
                    "service instance {} already exists in space {}",
                    svc.name, at.space.name
                )));
            }
        }
        let body = json!({
            "service_id": o.id,
            "plan_id": p.id,
            "organization_guid": at.org.guid,
            "space_guid": at.space.guid,
            "context": context(at, &req.name),
            "parameters": req.parameters.unwrap_or_default(),
        });
        let who = at.actor.as_str().to_string();
        let res = self.brokers.osb.provision(&t, &svc.guid, &body, &who).await;
        let m = svc
            .managed
            .as_mut()
            .ok_or_else(|| Error::Other("managed".into()))?;
        match res {
            Ok((outcome, dashboard)) => {
                m.dashboard_url = dashboard;
                let pending = match outcome {
                    Outcome::Done(()) => {
                        m.last_operation.state = SUCCEEDED.into();
                        false
                    }
                    Outcome::Accepted { operation } => {
                        m.last_operation.operation = operation;
                        true
                    }
                };
                m.last_operation.updated_at = OffsetDateTime::now_utc();
                self.d.store.put_service(&svc)?;
                tracing::info!(service = %svc.name, offering = %o.name, plan = %p.name,
                    broker = %b.name, pending, by = %who, "managed service instance provisioned");
                if pending {
                    self.follow(&svc);
                }
                let apps = self.d.store.list_space_apps(&at.space.guid)?;
                Ok((self.service_response(at, &svc, &apps)?, pending))
            }
            Err(e) => Err(self.provision_failed(&t, &mut svc, &o, &p, e, &who).await),
        }
    }

    /// A provision that failed: no record, after orphan mitigation where the spec asks for it
    /// (if that fails too, the record stays as `create failed` for a later delete to retry).
    async fn provision_failed(
        &self,
        t: &Target,
        svc: &mut ServiceInstanceRecord,
        o: &OfferingRecord,
        p: &PlanRecord,
        e: OsbError,
        who: &str,
    ) -> Error {
        let mut err = broker_error(&t.name, "provision", &e);
        let mut kept = false;
        if e.needs_mitigation() {
            let osb = &self.brokers.osb;
            match osb.deprovision(t, &svc.guid, &o.id, &p.id, who).await {
                Ok(_) => {
                    err = Error::api(
                        err.to_api().code,
                        format!(
                            "{}; Pier asked it to deprovision what it may have made (orphan \
                             mitigation), nothing is kept",
                            err.to_api().message
                        ),
                    );
                }
                Err(e2) => {
                    kept = true;
                    if let Some(m) = svc.managed.as_mut() {
                        m.last_operation.state = FAILED.into();
                        m.last_operation.description = Some(format!(
                            "{e}; orphan mitigation (deprovision) failed too: {e2}; delete the \
                             service to try again"
                        ));
                        m.last_operation.updated_at = OffsetDateTime::now_utc();
                    }
                    err = Error::api(
                        err.to_api().code,
                        format!(
                            "{}; deprovisioning it (orphan mitigation) failed too: {e2}; the \
                             instance is kept as create failed: delete it to try again",
                            err.to_api().message
                        ),
                    );
                }
            }
        }
        let stored = if kept {
            self.d.store.put_service(svc)
        } else {
            self.d.store.delete_service(&svc.space_guid, &svc.name)
        };
        if let Err(se) = stored {
            tracing::error!(service = %svc.name, error = %se, "cannot record a failed provision");
        }
        tracing::warn!(service = %svc.name, broker = %t.name, error = %e, kept, "provision failed");
        err
    }

    /// Changes a managed instance's plan, parameters or tags; `true` when the broker works on it.
    pub async fn update_managed(
        self: &Arc<Self>,
        at: &Scope,
        name: &str,
        req: UpdateManagedInstanceRequest,
    ) -> Result<(pier_api::ServiceInstanceResponse, bool)> {
        check_parameters(&req.parameters)?;
        if let Some(t) = &req.tags {
            super::services::check_tags(t)?;
        }
        let mut svc = {
            let _l = self.services_lock.lock().await;
            let svc = self.find_service(at, name)?;
            busy(&svc)?;
            svc
        };
        let m = svc
            .managed
            .clone()
            .ok_or_else(|| Error::Other("managed".into()))?;
        let (_b, t, o, cur) = self.managed_parts(&m)?;
        let new_plan = changed_plan(&o, cur.as_ref(), &m, req.plan.as_deref())?;
        if let Some(tags) = req.tags.clone() {
            if let Some(mm) = svc.managed.as_mut() {
                mm.tags = tags;
            }
        }
        if new_plan.is_none() && req.parameters.is_none() {
            svc.updated_at = OffsetDateTime::now_utc();
            self.d.store.put_service(&svc)?;
            let apps = self.d.store.list_space_apps(&at.space.guid)?;
            return Ok((self.service_response(at, &svc, &apps)?, false));
        }
        let mut op = operation("update", self.max_poll(new_plan.as_ref().or(cur.as_ref())));
        op.new_plan = new_plan.as_ref().map(|p| (p.id.clone(), p.name.clone()));
        if let Some(mm) = svc.managed.as_mut() {
            mm.last_operation = op;
        }
        self.d.store.put_service(&svc)?;
        let body = json!({
            "service_id": m.offering_id,
            "plan_id": new_plan.as_ref().map_or(&m.plan_id, |p| &p.id),
            "parameters": req.parameters.unwrap_or_default(),
            "context": context(at, name),
            "previous_values": {
                "service_id": m.offering_id,
                "plan_id": m.plan_id,
                "organization_id": at.org.guid,
                "space_id": at.space.guid,
            },
        });
        let res = self
            .brokers
            .osb
            .update(&t, &svc.guid, &body, at.actor.as_str())
            .await;
        let pending = match res {
            Ok(Outcome::Done(())) => {
                self.finish(&svc.space_guid, &svc.name, &svc.guid, Ended::Succeeded)
                    .await?;
                false
            }
            Ok(Outcome::Accepted { operation }) => {
                self.set_operation_token(&mut svc, operation)?;
                self.follow(&svc);
                true
            }
            Err(e) => {
                let err = broker_error(&t.name, "update", &e);
                self.finish(
                    &svc.space_guid,
                    &svc.name,
                    &svc.guid,
                    Ended::Failed(e.to_string()),
                )
                .await?;
                return Err(err);
            }
        };
        let svc = self.find_service(at, name)?;
        let apps = self.d.store.list_space_apps(&at.space.guid)?;
        Ok((self.service_response(at, &svc, &apps)?, pending))
    }

    fn set_operation_token(
        &self,
        svc: &mut ServiceInstanceRecord,
        token: Option<String>,
    ) -> Result<()> {
        if let Some(m) = svc.managed.as_mut() {
            m.last_operation.operation = token;
            m.last_operation.updated_at = OffsetDateTime::now_utc();
        }
        self.d.store.put_service(svc)
    }

    /// Deprovisions a managed instance with no bindings and no keys; `true` while the broker
    /// works on it (the record goes once it is done).
    pub async fn delete_managed(self: &Arc<Self>, at: &Scope, name: &str) -> Result<bool> {
        let mut svc = {
            let _l = self.services_lock.lock().await;
            let svc = self.find_service(at, name)?;
            busy(&svc)?;
            let apps = self.d.store.list_space_apps(&at.space.guid)?;
            let bound = self.service_response(at, &svc, &apps)?.bound_apps;
            if !bound.is_empty() {
                return Err(conflict(format!(
                    "service instance {name} is bound to {}: unbind it first (pier unbind-service APP {name})",
                    bound.join(", ")
                )));
            }
            let keys = self.d.store.service_keys(&svc.guid)?;
            if !keys.is_empty() {
                let names: Vec<String> = keys.into_iter().map(|k| k.name).collect();
                return Err(conflict(format!(
                    "service instance {name} has service keys ({}): delete them first (pier delete-service-key {name} KEY)",
                    names.join(", ")
                )));
            }
            let m = svc
                .managed
                .as_ref()
                .ok_or_else(|| Error::Other("managed".into()))?;
            let (_, _, _, plan) = self.managed_parts(m)?;
            let mut svc = svc.clone();
            if let Some(m) = svc.managed.as_mut() {
                m.last_operation = operation("delete", self.max_poll(plan.as_ref()));
            }
            self.d.store.put_service(&svc)?;
            svc
        };
        let m = svc
            .managed
            .clone()
            .ok_or_else(|| Error::Other("managed".into()))?;
        let (_, t, _, _) = self.managed_parts(&m)?;
        let res = self
            .brokers
            .osb
            .deprovision(&t, &svc.guid, &m.offering_id, &m.plan_id, at.actor.as_str())
            .await;
        match res {
            Ok(Outcome::Done(())) => {
                self.finish(&svc.space_guid, &svc.name, &svc.guid, Ended::Succeeded)
                    .await?;
                Ok(false)
            }
            Ok(Outcome::Accepted { operation }) => {
                self.set_operation_token(&mut svc, operation)?;
                self.follow(&svc);
                Ok(true)
            }
            Err(e) => {
                let err = broker_error(&t.name, "deprovision", &e);
                self.finish(
                    &svc.space_guid,
                    &svc.name,
                    &svc.guid,
                    Ended::Failed(e.to_string()),
                )
                .await?;
                Err(err)
            }
        }
    }

    /// Records the end of an instance's operation in progress (if it is still that instance).
    async fn finish(&self, space_guid: &str, name: &str, guid: &str, ended: Ended) -> Result<()> {
        let _l = self.services_lock.lock().await;
        let Some(mut svc) = self.d.store.service(space_guid, name)? else {
            return Ok(());
        };
        if svc.guid != guid {
            return Ok(());
        }
        let Some(m) = svc.managed.as_mut() else {
            return Ok(());
        };
        let op = &mut m.last_operation;
        op.updated_at = OffsetDateTime::now_utc();
        match ended {
            Ended::Succeeded if op.kind == "delete" => {
                tracing::info!(service = %name, "managed service instance deprovisioned");
                return self.d.store.delete_service(space_guid, name);
            }
            Ended::Succeeded => {
                op.state = SUCCEEDED.into();
                op.description = None;
                if let Some((id, plan)) = op.new_plan.take() {
                    m.plan_id = id;
                    m.plan_name = plan;
                }
            }
            Ended::Failed(why) => {
                op.state = FAILED.into();
                op.description = Some(why);
                op.new_plan = None;
            }
        }
        tracing::info!(service = %name, operation = %m.last_operation.kind,
            state = %m.last_operation.state, "managed service operation ended");
        svc.updated_at = OffsetDateTime::now_utc();
        self.d.store.put_service(&svc)
    }

    /// Follows the instance's operation in progress in the background.
    fn follow(self: &Arc<Self>, svc: &ServiceInstanceRecord) {
        let this = self.clone();
        let (space, name, guid) = (svc.space_guid.clone(), svc.name.clone(), svc.guid.clone());
        tokio::spawn(async move {
            if let Err(e) = this.follow_loop(&space, &name, &guid).await {
                tracing::warn!(service = %name, error = %e, "cannot follow a broker operation");
            }
        });
    }

    /// Follows every operation a controller that stopped left in progress.
    pub fn resume_operations(self: &Arc<Self>) -> Result<usize> {
        let mut n = 0;
        for svc in self.d.store.all_services()? {
            if svc
                .managed
                .as_ref()
                .is_some_and(|m| m.last_operation.in_progress())
            {
                self.follow(&svc);
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(
                operations = n,
                "following broker operations left in progress"
            );
        }
        Ok(n)
    }

    async fn follow_loop(&self, space: &str, name: &str, guid: &str) -> Result<()> {
        let mut wait = self.brokers.settings.poll_every;
        loop {
            tokio::time::sleep(wait).await;
            wait = self.brokers.settings.poll_every;
            let Some(svc) = self.d.store.service(space, name)? else {
                return Ok(());
            };
            let Some(m) = svc.managed.as_ref().filter(|_| svc.guid == guid) else {
                return Ok(());
            };
            let op = &m.last_operation;
            if !op.in_progress() {
                return Ok(());
            }
            if OffsetDateTime::now_utc() > op.deadline {
                let secs = (op.deadline - op.started_at).whole_seconds();
                let why = format!("the broker did not finish within {secs} s");
                return self.finish(space, name, guid, Ended::Failed(why)).await;
            }
            let (_, t, _, _) = self.managed_parts(m)?;
            let res = self
                .brokers
                .osb
                .last_operation(
                    &t,
                    guid,
                    None,
                    (&m.offering_id, &m.plan_id),
                    op.operation.as_deref(),
                )
                .await;
            let last = match res {
                Ok(l) => l,
                Err(e) => {
                    // The broker may be back later: poll on until the deadline.
                    tracing::warn!(service = %name, broker = %t.name, error = %e, "last_operation failed");
                    continue;
                }
            };
            if let Some(r) = last.retry_after {
                wait = r.min(MAX_POLL_WAIT);
            }
            let ended = match last.state.as_str() {
                "succeeded" => Ended::Succeeded,
                "gone" if op.kind == "delete" => Ended::Succeeded,
                "gone" => {
                    Ended::Failed("the broker no longer knows the instance (410 Gone)".into())
                }
                "failed" => Ended::Failed(
                    last.description
                        .unwrap_or_else(|| "the broker gave no reason".into()),
                ),
                _ => {
                    if last.description != op.description {
                        self.note_progress(space, name, guid, last.description)
                            .await?;
                    }
                    continue;
                }
            };
            return self.finish(space, name, guid, ended).await;
        }
    }

    /// The broker's words on an operation still in progress.
    async fn note_progress(
        &self,
        space: &str,
        name: &str,
        guid: &str,
        description: Option<String>,
    ) -> Result<()> {
        let _l = self.services_lock.lock().await;
        if let Some(mut svc) = self.d.store.service(space, name)? {
            if let Some(m) = svc.managed.as_mut().filter(|_| svc.guid == guid) {
                m.last_operation.description = description;
                m.last_operation.updated_at = OffsetDateTime::now_utc();
                self.d.store.put_service(&svc)?;
            }
        }
        Ok(())
    }

    /// A binding (for an app, or a service key when `app_guid` is None) made on the broker: its
    /// credentials, following a 202 until it ends. Failures that need it are unbound again
    /// (orphan mitigation); the error names the broker.
    pub(super) async fn broker_bind(
        &self,
        at: &Scope,
        svc: &ServiceInstanceRecord,
        binding: &str,
        app_guid: Option<&str>,
        parameters: Option<Map<String, Value>>,
    ) -> Result<Bound> {
        check_parameters(&parameters)?;
        let m = svc
            .managed
            .as_ref()
            .ok_or_else(|| Error::Other("managed".into()))?;
        match &m.last_operation {
            op if op.kind == "create" && op.state != SUCCEEDED => {
                return Err(conflict(format!(
                    "service instance {} is not ready ({}): bind it once it says create succeeded",
                    svc.name,
                    pier_api::LastOperation {
                        kind: op.kind.clone(),
                        state: op.state.clone(),
                        description: op.description.clone(),
                        updated_at: op.updated_at,
                    }
                )))
            }
            _ => busy(svc)?,
        }
        let (_, t, o, p) = self.managed_parts(m)?;
        let bindable = p.as_ref().map_or(o.bindable, |p| o.plan_bindable(p));
        if !bindable {
            return Err(Error::bad_request(format!(
                "service offering {} (plan {}) is not bindable",
                o.name, m.plan_name
            )));
        }
        let mut body = json!({
            "service_id": m.offering_id,
            "plan_id": m.plan_id,
            "context": context(at, &svc.name),
            "parameters": parameters.unwrap_or_default(),
        });
        if let Some(a) = app_guid {
            body["app_guid"] = json!(a);
            body["bind_resource"] = json!({ "app_guid": a });
        }
        let osb = &self.brokers.osb;
        let who = at.actor.as_str();
        let ids = (m.offering_id.as_str(), m.plan_id.as_str());
        self.d.store.put_pending_binding(&PendingBindingRecord {
            binding_guid: binding.to_string(),
            space_guid: svc.space_guid.clone(),
            service_name: svc.name.clone(),
            service_guid: svc.guid.clone(),
            started_at: OffsetDateTime::now_utc(),
        })?;
        let res = match osb.bind(&t, &svc.guid, binding, &body, who).await {
            Ok(Outcome::Done(b)) => Ok(b),
            Ok(Outcome::Accepted { operation }) => {
                self.follow_binding(&t, &svc.guid, binding, ids, operation, p.as_ref())
                    .await
            }
            Err(e) => Err(e),
        };
        match res {
            Ok(b) => Ok(b),
            Err(e) => Err(self.bind_failed(&t, svc, binding, ids, who, &e).await),
        }
    }

    /// A bind the broker did not complete: unbound there when it may have made something
    /// (orphan mitigation); the pending record goes once nothing can be left on the broker.
    async fn bind_failed(
        &self,
        t: &Target,
        svc: &ServiceInstanceRecord,
        binding: &str,
        ids: (&str, &str),
        who: &str,
        e: &OsbError,
    ) -> Error {
        let mut msg = broker_error(&t.name, "bind", e).to_api();
        let mut settled = true;
        if e.needs_mitigation() {
            let undone = self
                .brokers
                .osb
                .unbind(t, &svc.guid, binding, ids, who)
                .await;
            settled = undone.is_ok();
            msg.message.push_str(match undone {
                Ok(_) => "; Pier asked it to unbind what it may have made (orphan mitigation), nothing is kept",
                Err(_) => "; unbinding it (orphan mitigation) failed too; nothing is kept",
            });
        }
        if settled {
            if let Err(e) = self.d.store.remove_pending_binding(binding) {
                tracing::warn!(error = %e, "cannot forget a settled pending binding");
            }
        }
        tracing::warn!(service = %svc.name, broker = %t.name, error = %e, "bind failed");
        Error::Api(msg)
    }

    /// The binding `broker_bind` made is recorded (in the app or as a key): nothing is pending.
    pub(super) fn binding_recorded(&self, binding: &str) -> Result<()> {
        self.d.store.remove_pending_binding(binding)
    }

    /// The bindings a stopped controller asked brokers for and did not record. Read before the
    /// API serves: a bind that is under way now is pending too, and is not left over.
    pub fn left_pending(&self) -> Result<Vec<PendingBindingRecord>> {
        self.d.store.pending_bindings()
    }

    /// Unbinds `left` ([`AppService::left_pending`]) on their brokers (orphan mitigation);
    /// returns how many were settled. One whose broker cannot be reached stays pending, for the
    /// next start.
    pub async fn unbind_pending(&self, left: Vec<PendingBindingRecord>) -> Result<usize> {
        let mut settled = 0;
        for pb in left {
            let svc = self.d.store.service(&pb.space_guid, &pb.service_name)?;
            let Some((svc, m)) = svc
                .filter(|s| s.guid == pb.service_guid)
                .and_then(|s| s.managed.clone().map(|m| (s, m)))
            else {
                // The instance is gone, and with it whatever its broker bound.
                self.d.store.remove_pending_binding(&pb.binding_guid)?;
                settled += 1;
                continue;
            };
            let t = match self.managed_parts(&m) {
                Ok((_, t, _, _)) => t,
                Err(e) => {
                    tracing::warn!(service = %svc.name, error = %e,
                        "a binding a stopped controller left half-made cannot be unbound: its broker is not usable");
                    continue;
                }
            };
            let ids = (m.offering_id.as_str(), m.plan_id.as_str());
            let who = crate::events::Actor::Platform;
            match self
                .brokers
                .osb
                .unbind(&t, &svc.guid, &pb.binding_guid, ids, who.as_str())
                .await
            {
                Ok(_) => {
                    self.d.store.remove_pending_binding(&pb.binding_guid)?;
                    settled += 1;
                    tracing::info!(service = %svc.name, broker = %t.name, binding = %pb.binding_guid,
                        "a binding a stopped controller left half-made was unbound on the broker (orphan mitigation)");
                }
                Err(e) => tracing::warn!(service = %svc.name, broker = %t.name, error = %e,
                    "a binding a stopped controller left half-made cannot be unbound yet; trying again at the next start"),
            }
        }
        Ok(settled)
    }

    /// An asynchronous binding, followed inline to its end, then fetched.
    async fn follow_binding(
        &self,
        t: &Target,
        instance: &str,
        binding: &str,
        ids: (&str, &str),
        operation: Option<String>,
        plan: Option<&PlanRecord>,
    ) -> std::result::Result<Bound, OsbError> {
        let osb = &self.brokers.osb;
        let max = self.max_poll(plan);
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let mut wait = self.brokers.settings.poll_every;
            let last = osb
                .last_operation(t, instance, Some(binding), ids, operation.as_deref())
                .await?;
            match last.state.as_str() {
                "succeeded" => return osb.fetch_binding(t, instance, binding).await,
                "failed" | "gone" => {
                    return Err(OsbError::Status {
                        status: 200,
                        error: Some("binding failed".into()),
                        description: last.description,
                    })
                }
                _ => {}
            }
            if let Some(r) = last.retry_after {
                wait = r.min(MAX_POLL_WAIT);
            }
            if tokio::time::Instant::now() + wait > deadline {
                return Err(OsbError::Timeout(max.as_secs()));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Removes a binding (or key) on the broker, following a 202 to its end.
    pub(super) async fn broker_unbind(
        &self,
        at: &Scope,
        svc: &ServiceInstanceRecord,
        binding: &str,
    ) -> Result<()> {
        let m = svc
            .managed
            .as_ref()
            .ok_or_else(|| Error::Other("managed".into()))?;
        let (_, t, _, p) = self.managed_parts(m)?;
        let osb = &self.brokers.osb;
        let ids = (m.offering_id.as_str(), m.plan_id.as_str());
        let fail = |e: &OsbError| broker_error(&t.name, "unbind", e);
        match osb
            .unbind(&t, &svc.guid, binding, ids, at.actor.as_str())
            .await
        {
            Ok(Outcome::Done(())) => Ok(()),
            Ok(Outcome::Accepted { operation }) => {
                let deadline = tokio::time::Instant::now() + self.max_poll(p.as_ref());
                loop {
                    let last = osb
                        .last_operation(&t, &svc.guid, Some(binding), ids, operation.as_deref())
                        .await
                        .map_err(|e| fail(&e))?;
                    match last.state.as_str() {
                        "succeeded" | "gone" => return Ok(()),
                        "failed" => {
                            return Err(fail(&OsbError::Status {
                                status: 200,
                                error: Some("unbind failed".into()),
                                description: last.description,
                            }))
                        }
                        _ => {}
                    }
                    let wait = last.retry_after.unwrap_or(self.brokers.settings.poll_every);
                    if tokio::time::Instant::now() + wait > deadline {
                        return Err(fail(&OsbError::Timeout(
                            self.max_poll(p.as_ref()).as_secs(),
                        )));
                    }
                    tokio::time::sleep(wait.min(MAX_POLL_WAIT)).await;
                }
            }
            Err(e) => Err(fail(&e)),
        }
    }
}

//! Service instances of a space and the bindings of its apps to them (user-provided services here,
//! managed ones' broker operations in `managed.rs`), and the `VCAP_SERVICES` the bindings make.
//!
//! Invariants:
//! - A binding names a service instance of the app's space that exists: creating, deleting,
//!   binding and unbinding run one at a time (the services lock), and a service with a binding is
//!   not deleted (409, naming the apps).
//! - A binding reaches instances with the app's next deployment: the revision fixes
//!   `VCAP_SERVICES` when it is made (`pier bind-service` deploys, rolling, unless
//!   `--no-restart`), so a rollback runs with the services its revision had.
//! - Credentials are shown only to callers who see env values; events name services, never
//!   credentials.

use pier_api::{
    BindingResponse, CreateServiceInstanceRequest, ErrorCode, EventKind, ServiceInstanceResponse,
    UpdateUserProvidedRequest, UserProvided, MANAGED, USER_PROVIDED,
};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::{AppService, HIDDEN_VALUE};
use crate::error::{Error, Result};
use crate::store::{AppRecord, BindingRecord, ServiceInstanceRecord};
use crate::tenancy::Scope;

/// Bounds on what a user-provided service holds.
const MAX_CREDENTIALS_BYTES: usize = 64 * 1024;
const MAX_TAGS: usize = 32;

/// Service instance names: 1–64 of letters, digits, `-`, `_`, `.`.
pub(super) fn check_service_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::api(
            ErrorCode::InvalidName,
            format!(
                "service instance name {name:?} is invalid: use 1-64 letters, digits, '-', '_' \
                 and '.'"
            ),
        ))
    }
}

pub(super) fn check_tags(tags: &[String]) -> Result<()> {
    if tags.len() > MAX_TAGS || tags.iter().any(|t| t.is_empty() || t.len() > 64) {
        return Err(Error::bad_request(format!(
            "at most {MAX_TAGS} tags of 1-64 characters each"
        )));
    }
    Ok(())
}

fn check_user_provided(u: &UserProvided) -> Result<()> {
    let size = serde_json::to_vec(&u.credentials).map_or(0, |v| v.len());
    if size > MAX_CREDENTIALS_BYTES {
        return Err(Error::bad_request(format!(
            "credentials are {size} bytes of JSON; at most {MAX_CREDENTIALS_BYTES}"
        )));
    }
    check_tags(&u.tags)?;
    if let Some(url) = &u.syslog_drain_url {
        if !(url.starts_with("syslog://")
            || url.starts_with("syslog-tls://")
            || url.starts_with("https://"))
        {
            return Err(Error::bad_request(
                "syslog_drain_url must start with syslog://, syslog-tls:// or https://",
            ));
        }
    }
    Ok(())
}

impl AppService {
    pub(super) fn find_service(&self, at: &Scope, name: &str) -> Result<ServiceInstanceRecord> {
        self.d.store.service(&at.space.guid, name)?.ok_or_else(|| {
            Error::api(
                ErrorCode::NotFound,
                format!("service instance {name} not found"),
            )
        })
    }

    pub(super) fn service_response(
        &self,
        at: &Scope,
        svc: &ServiceInstanceRecord,
        apps: &[AppRecord],
    ) -> Result<ServiceInstanceResponse> {
        let mut credentials = svc.user_provided.credentials.clone();
        if !at.sees_env {
            for v in credentials.values_mut() {
                *v = serde_json::Value::String(HIDDEN_VALUE.into());
            }
        }
        let mut bound_apps: Vec<String> = apps
            .iter()
            .filter(|a| a.bindings.iter().any(|b| b.service_guid == svc.guid))
            .map(|a| a.name.to_string())
            .collect();
        bound_apps.sort();
        let managed = self.managed_info(svc)?;
        Ok(ServiceInstanceResponse {
            name: svc.name.clone(),
            guid: svc.guid.clone(),
            kind: if managed.is_some() {
                MANAGED
            } else {
                USER_PROVIDED
            }
            .into(),
            credentials,
            tags: match &svc.managed {
                Some(m) => m.tags.clone(),
                None => svc.user_provided.tags.clone(),
            },
            syslog_drain_url: svc.user_provided.syslog_drain_url.clone(),
            bound_apps,
            created_at: svc.created_at,
            managed,
        })
    }

    pub fn services(&self, at: &Scope) -> Result<Vec<ServiceInstanceResponse>> {
        let apps = self.d.store.list_space_apps(&at.space.guid)?;
        let svcs = self.d.store.services_of(&at.space.guid)?;
        svcs.iter()
            .map(|s| self.service_response(at, s, &apps))
            .collect()
    }

    pub fn service(&self, at: &Scope, name: &str) -> Result<ServiceInstanceResponse> {
        let svc = self.find_service(at, name)?;
        let apps = self.d.store.list_space_apps(&at.space.guid)?;
        self.service_response(at, &svc, &apps)
    }

    pub async fn create_service(
        &self,
        at: &Scope,
        req: CreateServiceInstanceRequest,
    ) -> Result<ServiceInstanceResponse> {
        check_service_name(&req.name)?;
        check_user_provided(&req.user_provided)?;
        let _l = self.services_lock.lock().await;
        let now = OffsetDateTime::now_utc();
        let svc = ServiceInstanceRecord {
            guid: uuid::Uuid::new_v4().to_string(),
            name: req.name,
            space_guid: at.space.guid.clone(),
            user_provided: req.user_provided,
            managed: None,
            created_at: now,
            updated_at: now,
        };
        if !self.d.store.insert_service(&svc)? {
            return Err(Error::api(
                ErrorCode::Conflict,
                format!(
                    "service instance {} already exists in space {}",
                    svc.name, at.space.name
                ),
            ));
        }
        tracing::info!(service = %svc.name, space = %at.space.name, by = at.actor.as_str(), "user-provided service created");
        self.service_response(at, &svc, &[])
    }

    /// Replaces the fields given; bound apps see the change with their next deployment.
    pub async fn update_service(
        &self,
        at: &Scope,
        name: &str,
        req: UpdateUserProvidedRequest,
    ) -> Result<ServiceInstanceResponse> {
        let _l = self.services_lock.lock().await;
        let mut svc = self.find_service(at, name)?;
        if svc.managed.is_some() {
            return Err(Error::bad_request(format!(
                "service instance {name} is managed by a broker: change its plan or parameters"
            )));
        }
        let mut u = svc.user_provided.clone();
        if let Some(c) = req.credentials {
            u.credentials = c;
        }
        if let Some(t) = req.tags {
            u.tags = t;
        }
        if let Some(d) = req.syslog_drain_url {
            u.syslog_drain_url = (!d.is_empty()).then_some(d);
        }
        check_user_provided(&u)?;
        svc.user_provided = u;
        svc.updated_at = OffsetDateTime::now_utc();
        self.d.store.put_service(&svc)?;
        let apps = self.d.store.list_space_apps(&at.space.guid)?;
        self.service_response(at, &svc, &apps)
    }

    pub async fn delete_service(&self, at: &Scope, name: &str) -> Result<()> {
        let _l = self.services_lock.lock().await;
        let svc = self.find_service(at, name)?;
        if svc.managed.is_some() {
            return Err(Error::Other("a managed instance is deprovisioned".into()));
        }
        let apps = self.d.store.list_space_apps(&at.space.guid)?;
        let bound = self.service_response(at, &svc, &apps)?.bound_apps;
        if !bound.is_empty() {
            return Err(Error::api(
                ErrorCode::Conflict,
                format!(
                    "service instance {name} is bound to {}: unbind it first (pier unbind-service APP {name})",
                    bound.join(", ")
                ),
            ));
        }
        self.d.store.delete_service(&at.space.guid, name)
    }

    /// Binds the app to the service instance; it reaches the instances with the next deployment.
    /// A managed instance's binding is made on its broker first (with `parameters`), and its
    /// credentials kept sealed.
    pub async fn bind(
        &self,
        at: &Scope,
        app: &str,
        service: &str,
        parameters: Option<Map<String, Value>>,
    ) -> Result<BindingResponse> {
        let _l = self.services_lock.lock().await;
        let svc = self.find_service(at, service)?;
        let a = self.load(at, app)?;
        let lock = self.d.locks.get(&a.key());
        let _guard = lock.lock().await;
        let mut a = self.load(at, app)?;
        if a.bindings.iter().any(|b| b.service_guid == svc.guid) {
            return Err(Error::api(
                ErrorCode::Conflict,
                format!("app {app} is already bound to service instance {service}"),
            ));
        }
        let mut b = BindingRecord {
            guid: uuid::Uuid::new_v4().to_string(),
            service_guid: svc.guid.clone(),
            created_at: OffsetDateTime::now_utc(),
            credentials: None,
            syslog_drain_url: None,
            volume_mounts: Vec::new(),
        };
        if svc.managed.is_some() {
            let bound = self
                .broker_bind(at, &svc, &b.guid, Some(&a.guid), parameters)
                .await?;
            b.credentials = Some(self.d.store.secrets().seal_json(&bound.credentials)?);
            b.syslog_drain_url = bound.syslog_drain_url;
            b.volume_mounts = bound.volume_mounts;
        } else if parameters.is_some() {
            return Err(Error::bad_request(format!(
                "service instance {service} is user-provided: binding parameters are for managed \
                 instances"
            )));
        }
        a.bindings.push(b.clone());
        a.updated_at = OffsetDateTime::now_utc();
        self.d.store.put_app(&a)?;
        self.binding_recorded(&b.guid)?;
        self.event(
            at,
            &a,
            EventKind::Updated,
            &format!("bound to service {service}"),
        );
        Ok(BindingResponse {
            guid: b.guid,
            app: a.name.to_string(),
            service_instance: svc.name,
            created_at: b.created_at,
        })
    }

    pub async fn unbind(&self, at: &Scope, app: &str, service: &str) -> Result<()> {
        let _l = self.services_lock.lock().await;
        let svc = self.find_service(at, service)?;
        let a = self.load(at, app)?;
        let lock = self.d.locks.get(&a.key());
        let _guard = lock.lock().await;
        let mut a = self.load(at, app)?;
        let Some(binding) = a.bindings.iter().find(|b| b.service_guid == svc.guid) else {
            return Err(Error::api(
                ErrorCode::NotFound,
                format!("app {app} is not bound to service instance {service}"),
            ));
        };
        if svc.managed.is_some() {
            self.broker_unbind(at, &svc, &binding.guid.clone()).await?;
        }
        a.bindings.retain(|b| b.service_guid != svc.guid);
        a.updated_at = OffsetDateTime::now_utc();
        self.d.store.put_app(&a)?;
        self.event(
            at,
            &a,
            EventKind::Updated,
            &format!("unbound from service {service}"),
        );
        Ok(())
    }

    /// The `VCAP_SERVICES` the app's bindings make now (JSON text), in Cloud Foundry's shape:
    /// an object keyed by label (`user-provided`, a managed offering's name), each a list of
    /// bindings in the order they were made.
    pub(super) fn vcap_services(&self, at: &Scope, app: &AppRecord) -> Result<String> {
        if app.bindings.is_empty() {
            return Ok("{}".into());
        }
        let svcs = self.d.store.services_of(&at.space.guid)?;
        let mut out: Map<String, Value> = Map::new();
        for b in &app.bindings {
            let Some(s) = svcs.iter().find(|s| s.guid == b.service_guid) else {
                continue;
            };
            let (label, entry) = match &s.managed {
                None => (
                    USER_PROVIDED.to_string(),
                    serde_json::json!({
                        "name": s.name,
                        "instance_name": s.name,
                        "binding_name": null,
                        "label": USER_PROVIDED,
                        "tags": s.user_provided.tags,
                        "credentials": s.user_provided.credentials,
                        "instance_guid": s.guid,
                        "binding_guid": b.guid,
                        "syslog_drain_url": s.user_provided.syslog_drain_url,
                        "volume_mounts": [],
                    }),
                ),
                Some(m) => (m.offering_name.clone(), self.managed_entry(s, m, b)?),
            };
            if let Value::Array(list) = out.entry(label).or_insert_with(|| Value::Array(vec![])) {
                list.push(entry);
            }
        }
        Ok(Value::Object(out).to_string())
    }

    /// A managed instance's binding in `VCAP_SERVICES`: tags are the offering's, the plan's (none
    /// in OSB catalogs) and the instance's.
    fn managed_entry(
        &self,
        s: &ServiceInstanceRecord,
        m: &crate::store::ManagedRecord,
        b: &BindingRecord,
    ) -> Result<Value> {
        let mut tags: Vec<String> = self
            .d
            .store
            .broker_by_guid(&m.broker_guid)?
            .and_then(|br| br.catalog.into_iter().find(|o| o.id == m.offering_id))
            .map(|o| o.tags)
            .unwrap_or_default();
        for t in &m.tags {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        let credentials: Value = match &b.credentials {
            Some(sealed) => self.d.store.secrets().open_json(sealed)?,
            None => Value::Object(Map::new()),
        };
        Ok(serde_json::json!({
            "name": s.name,
            "instance_name": s.name,
            "binding_name": null,
            "label": m.offering_name,
            "plan": m.plan_name,
            "provider": null,
            "tags": tags,
            "credentials": credentials,
            "instance_guid": s.guid,
            "binding_guid": b.guid,
            "syslog_drain_url": b.syslog_drain_url,
            "volume_mounts": b.volume_mounts,
        }))
    }
}

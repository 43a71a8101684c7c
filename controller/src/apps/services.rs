//! Service instances of a space and the bindings of its apps to them (user-provided services for
//! now), and the `VCAP_SERVICES` the bindings make.
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
    UpdateUserProvidedRequest, UserProvided, USER_PROVIDED,
};
use time::OffsetDateTime;

use super::{AppService, HIDDEN_VALUE};
use crate::error::{Error, Result};
use crate::store::{AppRecord, BindingRecord, ServiceInstanceRecord};
use crate::tenancy::Scope;

/// Bounds on what a user-provided service holds.
const MAX_CREDENTIALS_BYTES: usize = 64 * 1024;
const MAX_TAGS: usize = 32;

/// Service instance names: 1–64 of letters, digits, `-`, `_`, `.`.
fn check_service_name(name: &str) -> Result<()> {
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

fn check_user_provided(u: &UserProvided) -> Result<()> {
    let size = serde_json::to_vec(&u.credentials).map_or(0, |v| v.len());
    if size > MAX_CREDENTIALS_BYTES {
        return Err(Error::bad_request(format!(
            "credentials are {size} bytes of JSON; at most {MAX_CREDENTIALS_BYTES}"
        )));
    }
    if u.tags.len() > MAX_TAGS || u.tags.iter().any(|t| t.is_empty() || t.len() > 64) {
        return Err(Error::bad_request(format!(
            "at most {MAX_TAGS} tags of 1-64 characters each"
        )));
    }
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
    fn find_service(&self, at: &Scope, name: &str) -> Result<ServiceInstanceRecord> {
        self.d.store.service(&at.space.guid, name)?.ok_or_else(|| {
            Error::api(
                ErrorCode::NotFound,
                format!("service instance {name} not found"),
            )
        })
    }

    fn service_response(
        &self,
        at: &Scope,
        svc: &ServiceInstanceRecord,
        apps: &[AppRecord],
    ) -> ServiceInstanceResponse {
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
        ServiceInstanceResponse {
            name: svc.name.clone(),
            guid: svc.guid.clone(),
            kind: USER_PROVIDED.into(),
            credentials,
            tags: svc.user_provided.tags.clone(),
            syslog_drain_url: svc.user_provided.syslog_drain_url.clone(),
            bound_apps,
            created_at: svc.created_at,
            managed: None,
        }
    }

    pub fn services(&self, at: &Scope) -> Result<Vec<ServiceInstanceResponse>> {
        let apps = self.d.store.list_space_apps(&at.space.guid)?;
        let svcs = self.d.store.services_of(&at.space.guid)?;
        Ok(svcs
            .iter()
            .map(|s| self.service_response(at, s, &apps))
            .collect())
    }

    pub fn service(&self, at: &Scope, name: &str) -> Result<ServiceInstanceResponse> {
        let svc = self.find_service(at, name)?;
        let apps = self.d.store.list_space_apps(&at.space.guid)?;
        Ok(self.service_response(at, &svc, &apps))
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
        Ok(self.service_response(at, &svc, &[]))
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
        Ok(self.service_response(at, &svc, &apps))
    }

    pub async fn delete_service(&self, at: &Scope, name: &str) -> Result<()> {
        let _l = self.services_lock.lock().await;
        let svc = self.find_service(at, name)?;
        let apps = self.d.store.list_space_apps(&at.space.guid)?;
        let bound = self.service_response(at, &svc, &apps).bound_apps;
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
    pub async fn bind(&self, at: &Scope, app: &str, service: &str) -> Result<BindingResponse> {
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
        let b = BindingRecord {
            guid: uuid::Uuid::new_v4().to_string(),
            service_guid: svc.guid.clone(),
            created_at: OffsetDateTime::now_utc(),
            credentials: None,
            syslog_drain_url: None,
            volume_mounts: Vec::new(),
        };
        a.bindings.push(b.clone());
        a.updated_at = OffsetDateTime::now_utc();
        self.d.store.put_app(&a)?;
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
        let before = a.bindings.len();
        a.bindings.retain(|b| b.service_guid != svc.guid);
        if a.bindings.len() == before {
            return Err(Error::api(
                ErrorCode::NotFound,
                format!("app {app} is not bound to service instance {service}"),
            ));
        }
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
    /// an object keyed by label, each a list of bindings.
    pub(super) fn vcap_services(&self, at: &Scope, app: &AppRecord) -> Result<String> {
        if app.bindings.is_empty() {
            return Ok("{}".into());
        }
        let svcs = self.d.store.services_of(&at.space.guid)?;
        let mut ups = Vec::new();
        for b in &app.bindings {
            let Some(s) = svcs.iter().find(|s| s.guid == b.service_guid) else {
                continue;
            };
            ups.push(serde_json::json!({
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
            }));
        }
        Ok(serde_json::json!({ USER_PROVIDED: ups }).to_string())
    }
}

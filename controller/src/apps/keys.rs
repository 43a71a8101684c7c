//! Service keys: bindings of a managed instance with no app (OSB bindings without
//! `bind_resource.app_guid`), for using a service from outside the platform. Credentials are
//! sealed in the `service_keys` tree and shown only to those who see env values.

use pier_api::{ErrorCode, ServiceKeyResponse};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::{AppService, HIDDEN_VALUE};
use crate::error::{Error, Result};
use crate::store::ServiceKeyRecord;
use crate::tenancy::Scope;

impl AppService {
    fn key_response(
        &self,
        at: &Scope,
        service: &str,
        k: &ServiceKeyRecord,
        with_credentials: bool,
    ) -> Result<ServiceKeyResponse> {
        let mut credentials = Map::new();
        if with_credentials {
            credentials = self.d.store.secrets().open_json(&k.credentials)?;
            if !at.sees_env {
                for v in credentials.values_mut() {
                    *v = Value::String(HIDDEN_VALUE.into());
                }
            }
        }
        Ok(ServiceKeyResponse {
            name: k.name.clone(),
            guid: k.guid.clone(),
            service_instance: service.to_string(),
            credentials,
            created_at: k.created_at,
        })
    }

    fn find_key(&self, service_guid: &str, service: &str, key: &str) -> Result<ServiceKeyRecord> {
        self.d
            .store
            .service_keys(service_guid)?
            .into_iter()
            .find(|k| k.name == key)
            .ok_or_else(|| {
                Error::api(
                    ErrorCode::NotFound,
                    format!("service key {key} of service instance {service} not found"),
                )
            })
    }

    /// The instance's keys, without credentials.
    pub fn service_keys(&self, at: &Scope, service: &str) -> Result<Vec<ServiceKeyResponse>> {
        let svc = self.find_service(at, service)?;
        self.d
            .store
            .service_keys(&svc.guid)?
            .iter()
            .map(|k| self.key_response(at, service, k, false))
            .collect()
    }

    pub fn service_key(&self, at: &Scope, service: &str, key: &str) -> Result<ServiceKeyResponse> {
        let svc = self.find_service(at, service)?;
        let k = self.find_key(&svc.guid, service, key)?;
        self.key_response(at, service, &k, true)
    }

    /// Makes a key on the instance's broker and keeps its credentials.
    pub async fn create_service_key(
        &self,
        at: &Scope,
        service: &str,
        key: &str,
        parameters: Option<Map<String, Value>>,
    ) -> Result<ServiceKeyResponse> {
        super::services::check_service_name(key).map_err(|_| {
            Error::api(
                ErrorCode::InvalidName,
                format!("service key name {key:?} is invalid: use 1-64 letters, digits, '-', '_' and '.'"),
            )
        })?;
        let _l = self.services_lock.lock().await;
        let svc = self.find_service(at, service)?;
        if svc.managed.is_none() {
            return Err(Error::bad_request(format!(
                "service instance {service} is user-provided: service keys are for managed instances"
            )));
        }
        if self.find_key(&svc.guid, service, key).is_ok() {
            return Err(Error::api(
                ErrorCode::Conflict,
                format!("service key {key} of service instance {service} already exists"),
            ));
        }
        let guid = uuid::Uuid::new_v4().to_string();
        let bound = self.broker_bind(at, &svc, &guid, None, parameters).await?;
        let k = ServiceKeyRecord {
            guid,
            name: key.to_string(),
            service_guid: svc.guid.clone(),
            credentials: self.d.store.secrets().seal_json(&bound.credentials)?,
            created_at: OffsetDateTime::now_utc(),
        };
        if !self.d.store.insert_service_key(&k)? {
            return Err(Error::Other("a service key appeared under the lock".into()));
        }
        self.binding_recorded(&k.guid)?;
        tracing::info!(service = %service, key = %key, by = at.actor.as_str(), "service key created");
        self.key_response(at, service, &k, true)
    }

    /// Removes the key on the broker, then here; a broker that fails keeps it (502).
    pub async fn delete_service_key(&self, at: &Scope, service: &str, key: &str) -> Result<()> {
        let _l = self.services_lock.lock().await;
        let svc = self.find_service(at, service)?;
        let k = self.find_key(&svc.guid, service, key)?;
        self.broker_unbind(at, &svc, &k.guid).await?;
        self.d.store.delete_service_key(&svc.guid, key)
    }
}

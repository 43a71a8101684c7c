//! The service broker, marketplace, managed instance and service key endpoints
//! ([`pier_api::brokers`]).

use pier_api::{
    BindRequest, BindingResponse, CreateManagedInstanceRequest, CreateServiceBrokerRequest,
    CreateServiceKeyRequest, MarketplaceOffering, ServiceAccessRequest, ServiceAccessResponse,
    ServiceBrokerResponse, ServiceInstanceResponse, ServiceKeyResponse,
    UpdateManagedInstanceRequest, UpdateServiceBrokerRequest,
};
use reqwest::Method;

use crate::{segment, Client, Result};

/// Platform-wide brokers' path, or a space's (`/v1/space-service-brokers`, in the target space).
fn brokers_path(space_scoped: bool) -> &'static str {
    if space_scoped {
        "/v1/space-service-brokers"
    } else {
        "/v1/service-brokers"
    }
}

impl Client {
    /// `GET /v1/service-brokers` (the admin: every broker) or the target space's.
    pub async fn service_brokers(&self, space_scoped: bool) -> Result<Vec<ServiceBrokerResponse>> {
        self.json(
            self.call(Method::GET, brokers_path(space_scoped)),
            "service brokers",
        )
        .await
    }

    /// `POST /v1/service-brokers` (or the target space's).
    pub async fn create_service_broker(
        &self,
        req: &CreateServiceBrokerRequest,
        space_scoped: bool,
    ) -> Result<ServiceBrokerResponse> {
        let r = self
            .call(Method::POST, brokers_path(space_scoped))
            .json(req);
        self.json(r, "service broker").await
    }

    /// `PUT /v1/service-brokers/{name}` (or the target space's).
    pub async fn update_service_broker(
        &self,
        name: &str,
        req: &UpdateServiceBrokerRequest,
        space_scoped: bool,
    ) -> Result<ServiceBrokerResponse> {
        let path = format!("{}/{}", brokers_path(space_scoped), segment(name));
        self.json(self.call(Method::PUT, &path).json(req), "service broker")
            .await
    }

    /// `DELETE /v1/service-brokers/{name}` (or the target space's).
    pub async fn delete_service_broker(&self, name: &str, space_scoped: bool) -> Result<()> {
        let path = format!("{}/{}", brokers_path(space_scoped), segment(name));
        self.empty(self.call(Method::DELETE, &path)).await
    }

    /// `GET /v1/marketplace` in the target space, optionally one offering.
    pub async fn marketplace(&self, offering: Option<&str>) -> Result<Vec<MarketplaceOffering>> {
        let mut r = self.call(Method::GET, "/v1/marketplace");
        if let Some(o) = offering {
            r = r.query(&[("offering", o)]);
        }
        self.json(r, "marketplace").await
    }

    /// `POST /v1/service-access`.
    pub async fn service_access(
        &self,
        req: &ServiceAccessRequest,
    ) -> Result<ServiceAccessResponse> {
        let r = self.call(Method::POST, "/v1/service-access").json(req);
        self.json(r, "service access").await
    }

    /// `POST /v1/service-instances` of a managed instance (201, or 202 while the broker works).
    pub async fn create_managed_service(
        &self,
        req: &CreateManagedInstanceRequest,
    ) -> Result<ServiceInstanceResponse> {
        let r = self.call(Method::POST, "/v1/service-instances").json(req);
        self.json(r, "service").await
    }

    /// `PATCH /v1/service-instances/{name}` of a managed instance.
    pub async fn update_managed_service(
        &self,
        name: &str,
        req: &UpdateManagedInstanceRequest,
    ) -> Result<ServiceInstanceResponse> {
        let path = format!("/v1/service-instances/{}", segment(name));
        self.json(self.call(Method::PATCH, &path).json(req), "service")
            .await
    }

    /// `PUT /v1/apps/{name}/bindings/{service}` with binding parameters.
    pub async fn bind_service_with(
        &self,
        app: &pier_api::AppName,
        service: &str,
        req: &BindRequest,
    ) -> Result<BindingResponse> {
        let path = format!("/v1/apps/{app}/bindings/{}", segment(service));
        self.json(self.call(Method::PUT, &path).json(req), "binding")
            .await
    }

    /// `GET /v1/service-instances/{name}/keys` (no credentials).
    pub async fn service_keys(&self, service: &str) -> Result<Vec<ServiceKeyResponse>> {
        let path = format!("/v1/service-instances/{}/keys", segment(service));
        self.json(self.call(Method::GET, &path), "service keys")
            .await
    }

    /// One key with its credentials (`GET .../keys?key=NAME`).
    pub async fn service_key(&self, service: &str, key: &str) -> Result<ServiceKeyResponse> {
        let path = format!("/v1/service-instances/{}/keys", segment(service));
        let r = self.call(Method::GET, &path).query(&[("key", key)]);
        let mut keys: Vec<ServiceKeyResponse> = self.json(r, "service key").await?;
        keys.pop().ok_or_else(|| crate::ClientError::Decode {
            what: "service key",
            detail: "an empty list".into(),
        })
    }

    /// `PUT /v1/service-instances/{name}/keys/{key}`.
    pub async fn create_service_key(
        &self,
        service: &str,
        key: &str,
        req: &CreateServiceKeyRequest,
    ) -> Result<ServiceKeyResponse> {
        let path = format!(
            "/v1/service-instances/{}/keys/{}",
            segment(service),
            segment(key)
        );
        self.json(self.call(Method::PUT, &path).json(req), "service key")
            .await
    }

    /// `DELETE /v1/service-instances/{name}/keys/{key}`.
    pub async fn delete_service_key(&self, service: &str, key: &str) -> Result<()> {
        let path = format!(
            "/v1/service-instances/{}/keys/{}",
            segment(service),
            segment(key)
        );
        self.empty(self.call(Method::DELETE, &path)).await
    }
}

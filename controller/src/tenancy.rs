//! Orgs and spaces: creating, listing and deleting them, and resolving the space a request acts
//! in ([`Scope`]).
//!
//! Invariants:
//! - Org names are unique on the platform and space names within their org; both are DNS labels
//!   (they appear in host names and in labels). The check and the write happen under one lock, so
//!   two concurrent creates of one name make one org.
//! - Deleting a space deletes its apps first, and the roles held in it after it (each as `pier delete` does: instances, routes,
//!   blobs, cache), then the space; deleting an org does that for each of its spaces. A failure
//!   part way leaves the space (or org) in place with what is left, so the delete can be retried.
//!
//! - Assigning a quota to an org or a space happens under this lock and the quota service's
//!   ([`crate::quota::Quotas::assigning`]), so it can neither race a delete of the org or space
//!   nor a delete of the quota.
//!
//! Uses: `store/` (records), `apps/` (deleting a space's apps), `quota` (assigning, use shown),
//! `events` (who acts), `network` (a deleted space's network goes).

use std::sync::Arc;

use pier_api::{ErrorCode, OrgResponse, SpaceResponse};
use time::OffsetDateTime;

use crate::apps::AppService;
use crate::error::{Error, Result};
use crate::events::Actor;
use crate::store::tenancy::{DEFAULT_ORG, DEFAULT_SPACE};
use crate::store::{OrgRecord, SpaceRecord, Store};

/// Where a request acts and who makes it.
#[derive(Debug, Clone)]
pub struct Scope {
    pub org: OrgRecord,
    pub space: SpaceRecord,
    pub actor: Actor,
    /// Whether answers show env values (the platform admin and the space's developers), else
    /// each value is [`crate::apps::HIDDEN_VALUE`].
    pub sees_env: bool,
}

pub struct Tenancy {
    store: Store,
    apps: Arc<AppService>,
    /// A deleted space's instance network goes with it.
    networks: Arc<crate::network::Networks>,
    /// Serializes creates and deletes of orgs and spaces (name checks and writes together).
    lock: tokio::sync::Mutex<()>,
}

fn check_name(kind: &str, name: &str) -> Result<()> {
    if pier_api::names::is_dns_label(name) {
        return Ok(());
    }
    Err(Error::api(
        ErrorCode::InvalidName,
        format!(
            "{kind} name {name:?} is invalid: use 1-63 lowercase letters, digits and hyphens, \
             starting and ending with a letter or digit"
        ),
    ))
}

impl Tenancy {
    pub fn new(
        store: Store,
        apps: Arc<AppService>,
        networks: Arc<crate::network::Networks>,
    ) -> Arc<Tenancy> {
        Arc::new(Tenancy {
            store,
            apps,
            networks,
            lock: Default::default(),
        })
    }

    /// The org named `name`, or a 404 naming it.
    pub fn org(&self, name: &str) -> Result<OrgRecord> {
        self.store
            .org_named(name)?
            .ok_or_else(|| Error::api(ErrorCode::NotFound, format!("org {name} not found")))
    }

    /// The space `space` of org `org`, or a 404 naming what is missing.
    pub fn space(&self, org: &str, space: &str) -> Result<(OrgRecord, SpaceRecord)> {
        let o = self.org(org)?;
        let s = self.store.space_named(&o.guid, space)?.ok_or_else(|| {
            Error::api(
                ErrorCode::NotFound,
                format!("space {space} not found in org {org}"),
            )
        })?;
        Ok((o, s))
    }

    /// The org and space a request naming `org` and `space` acts in (each `default` when not
    /// given).
    pub fn target(
        &self,
        org: Option<&str>,
        space: Option<&str>,
    ) -> Result<(OrgRecord, SpaceRecord)> {
        self.space(org.unwrap_or(DEFAULT_ORG), space.unwrap_or(DEFAULT_SPACE))
    }

    pub fn org_response(&self, org: &OrgRecord) -> Result<OrgResponse> {
        Ok(OrgResponse {
            name: org.name.clone(),
            guid: org.guid.clone(),
            spaces: self
                .store
                .spaces_of(&org.guid)?
                .into_iter()
                .map(|s| s.name)
                .collect(),
            created_at: org.created_at,
            quota: self.apps.quotas().view(org.quota.as_deref())?,
            usage: self.apps.quotas().org_usage(org)?,
        })
    }

    pub fn space_response(&self, org: &OrgRecord, space: &SpaceRecord) -> Result<SpaceResponse> {
        let mut apps: Vec<String> = self
            .store
            .list_space_apps(&space.guid)?
            .into_iter()
            .map(|a| a.name.to_string())
            .collect();
        apps.sort();
        Ok(SpaceResponse {
            name: space.name.clone(),
            guid: space.guid.clone(),
            org: org.name.clone(),
            apps,
            created_at: space.created_at,
            quota: self.apps.quotas().view(space.quota.as_deref())?,
            usage: self.apps.quotas().space_usage(space)?,
        })
    }

    /// Assigns the quota `quota` to the org, or none (unlimited). Allowed even when the org uses
    /// more than the quota allows: from then on only changes that use less are admitted.
    pub async fn set_org_quota(
        &self,
        org: &OrgRecord,
        quota: Option<&str>,
        actor: &Actor,
    ) -> Result<OrgRecord> {
        let _guard = self.lock.lock().await;
        let org = self.apps.quotas().assigning(quota, || {
            let mut org = self.store.get_org(&org.guid)?.ok_or_else(|| {
                Error::api(ErrorCode::NotFound, format!("org {} not found", org.name))
            })?;
            org.quota = quota.map(str::to_string);
            self.store.put_org(&org)?;
            Ok(org)
        })?;
        tracing::info!(org = %org.name, quota = ?quota, by = actor.as_str(), "org quota set");
        Ok(org)
    }

    /// Assigns the quota `quota` to the space, or none (the org's quota still applies).
    pub async fn set_space_quota(
        &self,
        org: &OrgRecord,
        space: &SpaceRecord,
        quota: Option<&str>,
        actor: &Actor,
    ) -> Result<SpaceRecord> {
        let _guard = self.lock.lock().await;
        let space = self.apps.quotas().assigning(quota, || {
            let mut space = self.store.get_space(&space.guid)?.ok_or_else(|| {
                Error::api(
                    ErrorCode::NotFound,
                    format!("space {} not found in org {}", space.name, org.name),
                )
            })?;
            space.quota = quota.map(str::to_string);
            self.store.put_space(&space)?;
            Ok(space)
        })?;
        tracing::info!(org = %org.name, space = %space.name, quota = ?quota, by = actor.as_str(), "space quota set");
        Ok(space)
    }

    pub fn orgs(&self) -> Result<Vec<OrgRecord>> {
        self.store.list_orgs()
    }

    pub fn spaces(&self, org: &OrgRecord) -> Result<Vec<SpaceRecord>> {
        self.store.spaces_of(&org.guid)
    }

    pub async fn create_org(&self, name: &str, actor: &Actor) -> Result<OrgRecord> {
        check_name("org", name)?;
        let _guard = self.lock.lock().await;
        if self.store.org_named(name)?.is_some() {
            return Err(Error::api(
                ErrorCode::Conflict,
                format!("org {name} already exists"),
            ));
        }
        let org = OrgRecord {
            guid: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            created_at: OffsetDateTime::now_utc(),
            quota: None,
        };
        self.store.put_org(&org)?;
        tracing::info!(org = %name, by = actor.as_str(), "org created");
        Ok(org)
    }

    pub async fn create_space(
        &self,
        org: &OrgRecord,
        name: &str,
        actor: &Actor,
    ) -> Result<SpaceRecord> {
        check_name("space", name)?;
        let _guard = self.lock.lock().await;
        if self.store.get_org(&org.guid)?.is_none() {
            return Err(Error::api(
                ErrorCode::NotFound,
                format!("org {} not found", org.name),
            ));
        }
        if self.store.space_named(&org.guid, name)?.is_some() {
            return Err(Error::api(
                ErrorCode::Conflict,
                format!("space {name} already exists in org {}", org.name),
            ));
        }
        let space = SpaceRecord {
            guid: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            org_guid: org.guid.clone(),
            created_at: OffsetDateTime::now_utc(),
            quota: None,
        };
        self.store.put_space(&space)?;
        tracing::info!(org = %org.name, space = %name, by = actor.as_str(), "space created");
        Ok(space)
    }

    /// Deletes the space's apps, then the space.
    pub async fn delete_space(
        &self,
        org: &OrgRecord,
        space: &SpaceRecord,
        actor: &Actor,
    ) -> Result<()> {
        let _guard = self.lock.lock().await;
        self.delete_space_locked(org, space, actor).await
    }

    async fn delete_space_locked(
        &self,
        org: &OrgRecord,
        space: &SpaceRecord,
        actor: &Actor,
    ) -> Result<()> {
        let scope = Scope {
            org: org.clone(),
            space: space.clone(),
            actor: actor.clone(),
            sees_env: true,
        };
        // A broker holds what a managed instance is: it is deprovisioned first, by its owner.
        let managed: Vec<String> = self
            .store
            .services_of(&space.guid)?
            .into_iter()
            .filter(|s| s.managed.is_some())
            .map(|s| s.name)
            .collect();
        if !managed.is_empty() {
            return Err(Error::api(
                ErrorCode::Conflict,
                format!(
                    "space {} has managed service instances ({}): delete them first",
                    space.name,
                    managed.join(", ")
                ),
            ));
        }
        for app in self.store.list_space_apps(&space.guid)? {
            self.apps.delete(&scope, app.name.as_str()).await?;
        }
        for svc in self.store.services_of(&space.guid)? {
            self.store.delete_service(&space.guid, &svc.name)?;
        }
        for b in self.store.brokers()? {
            if b.space_guid.as_deref() == Some(space.guid.as_str()) {
                self.store.delete_broker(&b.name)?;
            }
        }
        self.store.delete_space(&space.guid)?;
        self.store.roles()?.delete_in(&[space.guid.as_str()])?;
        // Its apps' instances are gone (each delete waited for them); a network still in use is
        // removed by a later reconcile pass instead.
        if let Err(e) = self.networks.remove_space(&space.guid).await {
            tracing::warn!(space = %space.name, error = format!("{e:#}"), "the space's network stays until its containers are gone");
        }
        tracing::info!(org = %org.name, space = %space.name, by = actor.as_str(), "space deleted");
        Ok(())
    }

    /// Deletes each of the org's spaces (and their apps), then the org.
    pub async fn delete_org(&self, org: &OrgRecord, actor: &Actor) -> Result<()> {
        let _guard = self.lock.lock().await;
        for space in self.store.spaces_of(&org.guid)? {
            self.delete_space_locked(org, &space, actor).await?;
        }
        self.store.delete_org(&org.guid)?;
        self.store.roles()?.delete_in(&[org.guid.as_str()])?;
        tracing::info!(org = %org.name, by = actor.as_str(), "org deleted");
        Ok(())
    }
}

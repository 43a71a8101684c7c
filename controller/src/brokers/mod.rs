//! Service brokers (the Open Service Broker API, v2.17): registering them, their catalogs, the
//! marketplace those make and who may use each plan. Managed service instances, bindings and keys
//! (the operations on a broker's offerings) are in `apps/managed.rs`; the OSB client is
//! [`client`], the catalog's checks [`catalog`].
//!
//! Invariants:
//! - A broker is stored only after its catalog was fetched and is valid: a broker that is down
//!   or answers garbage is refused (502, naming the broker and what was wrong), nothing stored.
//! - Its password is sealed at rest ([`crate::store::Secrets`]); it is never in an answer, an
//!   event, a log line or an error.
//! - A plan is seen (marketplace) and used (create-service) by non-admins only once access is
//!   enabled for all orgs or theirs; a space-scoped broker's plans are seen in its space only, by
//!   that space's members, without enabling.
//! - A broker with service instances is not deleted (409); names are unique on the platform.

use std::time::Duration;

use pier_api::{
    CreateServiceBrokerRequest, ErrorCode, MarketplaceOffering, MarketplacePlan,
    ServiceAccessRequest, ServiceAccessResponse, ServiceBrokerResponse, UpdateServiceBrokerRequest,
};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::events::Actor;
use crate::store::{BrokerRecord, OfferingRecord, PlanRecord, Store};
use crate::tenancy::Scope;

pub mod catalog;
pub mod client;

pub use client::{Osb, OsbError, Outcome, Target};

/// How brokers are called and their asynchronous operations followed.
#[derive(Debug, Clone, Copy)]
pub struct BrokerSettings {
    /// One request's timeout.
    pub timeout: Duration,
    /// How long an asynchronous operation is followed unless its plan says.
    pub max_poll: Duration,
    /// Between polls when the broker sends no Retry-After.
    pub poll_every: Duration,
}

pub struct Brokers {
    store: Store,
    pub(crate) osb: Osb,
    pub(crate) settings: BrokerSettings,
    /// Broker writes, and the instance inserts that must not race a broker's delete.
    pub(crate) lock: tokio::sync::Mutex<()>,
}

/// The error for a broker that failed, naming it: 502, or what the broker said it refused
/// (400 and 422 are the request's fault, 409 a conflict there).
pub fn broker_error(broker: &str, what: &str, e: &OsbError) -> Error {
    let code = match e {
        OsbError::Status {
            status: 400 | 422, ..
        } => ErrorCode::InvalidRequest,
        OsbError::Status { status: 409, .. } => ErrorCode::Conflict,
        _ => ErrorCode::BadGateway,
    };
    Error::api(
        code,
        format!("service broker {broker} failed to {what}: {e}"),
    )
}

fn check_broker_name(name: &str) -> Result<()> {
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
                "service broker name {name:?} is invalid: use 1-64 letters, digits, '-', '_' and '.'"
            ),
        ))
    }
}

fn check_url(url: &str) -> Result<()> {
    let parsed = url.parse::<http::Uri>().ok();
    let ok = parsed.as_ref().is_some_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https"))
            && u.host().is_some()
            && u.query().is_none()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "broker URL {url:?} is invalid: give http(s)://HOST[:PORT][/PATH]"
        )))
    }
}

/// Who may use a plan, in words.
fn access_of(b: &BrokerRecord, p: &PlanRecord) -> &'static str {
    if b.space_guid.is_some() {
        "space"
    } else if p.public {
        "all"
    } else if p.orgs.is_empty() {
        "none"
    } else {
        "limited"
    }
}

impl Brokers {
    pub fn new(store: Store, settings: BrokerSettings) -> Brokers {
        Brokers {
            store,
            osb: Osb::new(settings.timeout),
            settings,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The broker's address and credentials (its password unsealed).
    pub fn target(&self, b: &BrokerRecord) -> Result<Target> {
        let password = String::from_utf8(self.store.secrets().open(&b.password)?)
            .map_err(|_| Error::Other("a sealed broker password is not text".into()))?;
        Ok(Target {
            name: b.name.clone(),
            url: b.url.clone(),
            username: b.username.clone(),
            password,
        })
    }

    fn response(&self, b: &BrokerRecord) -> Result<ServiceBrokerResponse> {
        let space = match &b.space_guid {
            None => None,
            Some(g) => {
                let sp = self.store.get_space(g)?;
                let org = match &sp {
                    Some(s) => self.store.get_org(&s.org_guid)?,
                    None => None,
                };
                Some(format!(
                    "{}/{}",
                    org.map(|o| o.name).unwrap_or_default(),
                    sp.map(|s| s.name).unwrap_or_default()
                ))
            }
        };
        Ok(ServiceBrokerResponse {
            name: b.name.clone(),
            guid: b.guid.clone(),
            url: b.url.clone(),
            username: b.username.clone(),
            space,
            offerings: b.catalog.iter().map(|o| o.name.clone()).collect(),
            created_at: b.created_at,
        })
    }

    /// Fetches and checks the catalog at `t`: what the broker offers, or a 502 saying why not.
    async fn fetch_catalog(&self, t: &Target) -> Result<Vec<OfferingRecord>> {
        let body = self
            .osb
            .catalog(t)
            .await
            .map_err(|e| broker_error(&t.name, "give its catalog (GET /v2/catalog)", &e))?;
        catalog::parse(body).map_err(|why| {
            Error::api(
                ErrorCode::BadGateway,
                format!(
                    "service broker {} answered GET /v2/catalog with {why}",
                    t.name
                ),
            )
        })
    }

    /// Registers a broker, platform-wide (`space` None) or for one space.
    pub async fn create(
        &self,
        req: CreateServiceBrokerRequest,
        space: Option<&Scope>,
        actor: &Actor,
    ) -> Result<ServiceBrokerResponse> {
        check_broker_name(&req.name)?;
        check_url(&req.url)?;
        if self.store.broker(&req.name)?.is_some() {
            return Err(taken(&req.name));
        }
        let t = Target {
            name: req.name.clone(),
            url: req.url.clone(),
            username: req.username.clone(),
            password: req.password.clone(),
        };
        let catalog = self.fetch_catalog(&t).await?;
        let now = OffsetDateTime::now_utc();
        let b = BrokerRecord {
            guid: uuid::Uuid::new_v4().to_string(),
            name: req.name,
            url: req.url,
            username: req.username,
            password: self.store.secrets().seal(req.password.as_bytes())?,
            space_guid: space.map(|s| s.space.guid.clone()),
            catalog,
            created_at: now,
            updated_at: now,
        };
        let _l = self.lock.lock().await;
        if !self.store.insert_broker(&b)? {
            return Err(taken(&b.name));
        }
        tracing::info!(broker = %b.name, url = %b.url, offerings = b.catalog.len(),
            space_scoped = b.space_guid.is_some(), by = actor.as_str(), "service broker registered");
        self.response(&b)
    }

    /// A broker by name: platform-wide callers (`space` None, the admin) reach every broker; a
    /// space's, only that space's brokers (others are 404, as if they did not exist).
    fn find(&self, name: &str, space: Option<&Scope>) -> Result<BrokerRecord> {
        let b = self.store.broker(name)?;
        match (b, space) {
            (Some(b), None) => Ok(b),
            (Some(b), Some(s)) if b.space_guid.as_deref() == Some(s.space.guid.as_str()) => Ok(b),
            _ => Err(Error::api(
                ErrorCode::NotFound,
                format!("service broker {name} not found"),
            )),
        }
    }

    /// New URL and credentials: the catalog is fetched with them and replaces the old one (each
    /// plan keeping its access); nothing changes when that fails.
    pub async fn update(
        &self,
        name: &str,
        req: UpdateServiceBrokerRequest,
        space: Option<&Scope>,
    ) -> Result<ServiceBrokerResponse> {
        check_url(&req.url)?;
        let old = self.find(name, space)?;
        let t = Target {
            name: name.to_string(),
            url: req.url.clone(),
            username: req.username.clone(),
            password: req.password.clone(),
        };
        let fetched = self.fetch_catalog(&t).await?;
        let _l = self.lock.lock().await;
        let mut b = self.find(name, space)?;
        for o in &b.catalog {
            let in_use = self
                .store
                .all_services()?
                .into_iter()
                .filter_map(|s| s.managed)
                .any(|m| m.broker_guid == b.guid && m.offering_id == o.id);
            if in_use && !fetched.iter().any(|n| n.id == o.id) {
                return Err(Error::api(
                    ErrorCode::Conflict,
                    format!(
                        "the new catalog of service broker {name} drops offering {}, which has \
                         service instances",
                        o.name
                    ),
                ));
            }
        }
        b.catalog = catalog::keep_access(&old.catalog, fetched);
        b.url = req.url;
        b.username = req.username;
        b.password = self.store.secrets().seal(req.password.as_bytes())?;
        b.updated_at = OffsetDateTime::now_utc();
        self.store.put_broker(&b)?;
        self.response(&b)
    }

    /// Deletes a broker that has no service instances (409 naming them otherwise).
    pub async fn delete(&self, name: &str, space: Option<&Scope>) -> Result<()> {
        let _l = self.lock.lock().await;
        let b = self.find(name, space)?;
        let mut used: Vec<String> = self
            .store
            .all_services()?
            .into_iter()
            .filter(|s| s.managed.as_ref().is_some_and(|m| m.broker_guid == b.guid))
            .map(|s| s.name)
            .collect();
        if !used.is_empty() {
            used.sort();
            return Err(Error::api(
                ErrorCode::Conflict,
                format!(
                    "service broker {name} has service instances ({}): delete them first",
                    used.join(", ")
                ),
            ));
        }
        self.store.delete_broker(name)
    }

    /// The brokers: every one (`space` None) or one space's.
    pub fn list(&self, space: Option<&Scope>) -> Result<Vec<ServiceBrokerResponse>> {
        self.store
            .brokers()?
            .iter()
            .filter(|b| match space {
                None => true,
                Some(s) => b.space_guid.as_deref() == Some(s.space.guid.as_str()),
            })
            .map(|b| self.response(b))
            .collect()
    }

    /// Whether the scope's caller may see and use plan `p` of broker `b`.
    fn visible(at: &Scope, b: &BrokerRecord, p: &PlanRecord) -> bool {
        match &b.space_guid {
            Some(g) => *g == at.space.guid,
            None => matches!(at.actor, Actor::Admin) || p.public || p.orgs.contains(&at.org.guid),
        }
    }

    fn plan_view(&self, b: &BrokerRecord, p: &PlanRecord) -> Result<MarketplacePlan> {
        let mut orgs = Vec::new();
        for g in &p.orgs {
            if let Some(o) = self.store.get_org(g)? {
                orgs.push(o.name);
            }
        }
        Ok(MarketplacePlan {
            name: p.name.clone(),
            description: p.description.clone(),
            free: p.free,
            access: access_of(b, p).into(),
            orgs,
        })
    }

    /// The offerings whose plans the scope's caller sees, each with those plans.
    pub fn marketplace(
        &self,
        at: &Scope,
        offering: Option<&str>,
    ) -> Result<Vec<MarketplaceOffering>> {
        let mut out = Vec::new();
        for b in self.store.brokers()? {
            for o in &b.catalog {
                if offering.is_some_and(|n| n != o.name) {
                    continue;
                }
                let mut plans = Vec::new();
                for p in o.plans.iter().filter(|p| Self::visible(at, &b, p)) {
                    plans.push(self.plan_view(&b, p)?);
                }
                if plans.is_empty() {
                    continue;
                }
                out.push(MarketplaceOffering {
                    name: o.name.clone(),
                    description: o.description.clone(),
                    broker: b.name.clone(),
                    tags: o.tags.clone(),
                    bindable: o.bindable,
                    plan_updateable: o.plan_updateable,
                    plans,
                });
            }
        }
        if let (Some(name), true) = (offering, out.is_empty()) {
            return Err(Error::api(
                ErrorCode::NotFound,
                format!("service offering {name} not found in the marketplace"),
            ));
        }
        Ok(out)
    }

    /// The broker, offering and plan the scope's caller asked for by name, if they may use it;
    /// else a 404 naming what was not found and what there is.
    pub fn find_plan(
        &self,
        at: &Scope,
        offering: &str,
        plan: &str,
        broker: Option<&str>,
    ) -> Result<(BrokerRecord, OfferingRecord, PlanRecord)> {
        let mut seen_offering = false;
        let mut plans_seen = Vec::new();
        let mut found = Vec::new();
        for b in self.store.brokers()? {
            if broker.is_some_and(|n| n != b.name) {
                continue;
            }
            for o in b.catalog.iter().filter(|o| o.name == offering) {
                let visible: Vec<&PlanRecord> = o
                    .plans
                    .iter()
                    .filter(|p| Self::visible(at, &b, p))
                    .collect();
                if visible.is_empty() {
                    continue;
                }
                seen_offering = true;
                plans_seen.extend(visible.iter().map(|p| p.name.clone()));
                if let Some(p) = visible.iter().find(|p| p.name == plan) {
                    found.push((b.clone(), o.clone(), (*p).clone()));
                }
            }
        }
        if found.len() > 1 {
            let names: Vec<String> = found.iter().map(|f| f.0.name.clone()).collect();
            return Err(Error::api(
                ErrorCode::Conflict,
                format!(
                    "service offering {offering} is offered by several brokers ({}): name one \
                     with -b",
                    names.join(", ")
                ),
            ));
        }
        if let Some(f) = found.pop() {
            return Ok(f);
        }
        if !seen_offering {
            let mut names: Vec<String> = self
                .marketplace(at, None)?
                .into_iter()
                .map(|o| o.name)
                .collect();
            names.sort();
            names.dedup();
            let there = if names.is_empty() {
                "the marketplace is empty".to_string()
            } else {
                format!("the marketplace has {}", names.join(", "))
            };
            return Err(Error::api(
                ErrorCode::NotFound,
                format!("service offering {offering} not found ({there})"),
            ));
        }
        plans_seen.sort();
        Err(Error::api(
            ErrorCode::NotFound,
            format!(
                "service plan {plan} not found for offering {offering} (its plans: {})",
                plans_seen.join(", ")
            ),
        ))
    }

    /// Enables or disables plans of a platform-wide broker's offering, for every org or one.
    pub async fn set_access(&self, req: ServiceAccessRequest) -> Result<ServiceAccessResponse> {
        let org =
            match &req.org {
                Some(n) => Some(self.store.org_named(n)?.ok_or_else(|| {
                    Error::api(ErrorCode::NotFound, format!("org {n} not found"))
                })?),
                None => None,
            };
        let _l = self.lock.lock().await;
        let mut matches: Vec<BrokerRecord> = self
            .store
            .brokers()?
            .into_iter()
            .filter(|b| b.space_guid.is_none())
            .filter(|b| req.broker.as_ref().is_none_or(|n| *n == b.name))
            .filter(|b| b.catalog.iter().any(|o| o.name == req.offering))
            .collect();
        let mut b = match matches.len() {
            0 => {
                return Err(Error::api(
                    ErrorCode::NotFound,
                    format!(
                        "service offering {} not found among the platform's brokers",
                        req.offering
                    ),
                ))
            }
            1 => matches.remove(0),
            _ => {
                return Err(Error::api(
                    ErrorCode::Conflict,
                    format!(
                        "service offering {} is offered by several brokers: name one with -b",
                        req.offering
                    ),
                ))
            }
        };
        let o = b
            .catalog
            .iter_mut()
            .find(|o| o.name == req.offering)
            .ok_or_else(|| Error::Other("the offering went".into()))?;
        if let Some(p) = &req.plan {
            if !o.plans.iter().any(|q| q.name == *p) {
                let names: Vec<&str> = o.plans.iter().map(|q| q.name.as_str()).collect();
                return Err(Error::api(
                    ErrorCode::NotFound,
                    format!(
                        "service plan {p} not found for offering {} (its plans: {})",
                        o.name,
                        names.join(", ")
                    ),
                ));
            }
        }
        for p in o
            .plans
            .iter_mut()
            .filter(|q| req.plan.as_ref().is_none_or(|n| *n == q.name))
        {
            match (&org, req.enable) {
                (None, e) => {
                    p.public = e;
                    if !e {
                        p.orgs.clear();
                    }
                }
                (Some(org), true) => {
                    if !p.orgs.contains(&org.guid) {
                        p.orgs.push(org.guid.clone());
                    }
                }
                (Some(org), false) => p.orgs.retain(|g| *g != org.guid),
            }
        }
        b.updated_at = OffsetDateTime::now_utc();
        self.store.put_broker(&b)?;
        let o = b
            .catalog
            .iter()
            .find(|o| o.name == req.offering)
            .ok_or_else(|| Error::Other("the offering went".into()))?;
        let mut plans = Vec::new();
        for p in &o.plans {
            plans.push(self.plan_view(&b, p)?);
        }
        Ok(ServiceAccessResponse {
            offering: o.name.clone(),
            broker: b.name.clone(),
            plans,
        })
    }
}

fn taken(name: &str) -> Error {
    Error::api(
        ErrorCode::Conflict,
        format!("service broker {name} already exists"),
    )
}

/// `DATABASE_URL` and `REDIS_URL` for an app's `VCAP_SERVICES` (Heroku's convention): the `uri`
/// (or `url`) of the first binding whose credentials' URI has the scheme `postgres`/`postgresql`
/// (resp. `redis`/`rediss`), or else whose tags or label say `postgresql`/`postgres` (resp.
/// `redis`). Bindings are taken in `VCAP_SERVICES` order: labels alphabetically, then each
/// label's bindings in the order they were made.
pub fn service_urls(vcap_services: &str) -> Vec<(String, String)> {
    let Ok(serde_json::Value::Object(labels)) =
        serde_json::from_str::<serde_json::Value>(vcap_services)
    else {
        return Vec::new();
    };
    let entries: Vec<&serde_json::Value> = labels
        .values()
        .filter_map(|v| v.as_array())
        .flatten()
        .collect();
    let uri = |e: &serde_json::Value| -> Option<String> {
        let c = e.get("credentials")?;
        c.get("uri")
            .or_else(|| c.get("url"))
            .and_then(|u| u.as_str())
            .map(str::to_string)
    };
    let tagged = |e: &serde_json::Value, names: &[&str]| -> bool {
        let label = e.get("label").and_then(|l| l.as_str()).unwrap_or_default();
        names.contains(&label)
            || e.get("tags").and_then(|t| t.as_array()).is_some_and(|t| {
                t.iter()
                    .any(|t| t.as_str().is_some_and(|t| names.contains(&t)))
            })
    };
    let kinds: [(&str, &[&str], &[&str]); 2] = [
        (
            "DATABASE_URL",
            &["postgres", "postgresql"],
            &["postgresql", "postgres"],
        ),
        ("REDIS_URL", &["redis", "rediss"], &["redis"]),
    ];
    let mut out = Vec::new();
    for (var, schemes, tags) in kinds {
        let by_scheme = entries.iter().find_map(|e| {
            let u = uri(e)?;
            let scheme = u.split_once("://")?.0.to_ascii_lowercase();
            schemes.contains(&scheme.as_str()).then_some(u)
        });
        let by_tag = || {
            entries
                .iter()
                .filter(|e| tagged(e, tags))
                .find_map(|e| uri(e))
        };
        if let Some(u) = by_scheme.or_else(by_tag) {
            out.push((var.to_string(), u));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::service_urls;

    #[test]
    fn database_and_redis_urls_come_from_the_first_binding_of_each_kind() {
        let vcap = json!({
            "cache": [{"label": "cache", "tags": ["redis"],
                "credentials": {"uri": "http://not-by-scheme:1"}}],
            "pg": [
                {"label": "pg", "tags": [], "credentials": {"uri": "postgres://u:p@db1:5432/d"}},
                {"label": "pg", "tags": [], "credentials": {"uri": "postgresql://u:p@db2/d"}},
            ],
            "user-provided": [{"label": "user-provided", "tags": [],
                "credentials": {"uri": "rediss://r:6380"}}],
        })
        .to_string();
        let urls = service_urls(&vcap);
        assert_eq!(
            urls,
            vec![
                (
                    "DATABASE_URL".to_string(),
                    "postgres://u:p@db1:5432/d".to_string()
                ),
                // By scheme before by tag.
                ("REDIS_URL".to_string(), "rediss://r:6380".to_string()),
            ]
        );
        // By tag when no URI says it.
        let tagged = json!({"db": [{"label": "db", "tags": ["postgresql"],
            "credentials": {"uri": "tcp://h:1"}}]})
        .to_string();
        assert_eq!(
            service_urls(&tagged),
            vec![("DATABASE_URL".to_string(), "tcp://h:1".to_string())]
        );
        assert!(service_urls("{}").is_empty());
        assert!(service_urls("").is_empty());
    }
}

//! Quotas: named limits on what an org or a space may use, and the one place they are enforced.
//!
//! A quota limits four things, each optional (unlimited when absent), counted over the apps of a
//! space (a space quota) or of every space of an org (an org quota):
//! - memory: the sum over started apps of `instances × memory_mb` of each process;
//! - instances: the sum of the instances of every process of started apps;
//! - apps: the number of apps, started or not;
//! - routes: the number of routes mapped to apps.
//!
//! Standby instances (`--standby-instances`) are not counted: they are capacity the operator
//! reserves per controller, not something an app asks for. Neither are the extra instances a
//! rolling deployment runs for a moment beside the old ones, nor staging containers.
//!
//! Invariants:
//! - Every change that can raise a use (creating or updating an app, scaling, starting,
//!   deploying, mapping a route) calls [`Quotas::admit`] with the app as the change would leave
//!   it, before anything is written or started. A refusal (`quota_exceeded`, 422) names the org or
//!   space, the quota, the limit, the use and what the change needs; the store is unchanged.
//! - Only what a change raises is checked: a quota lowered below what is in use refuses further
//!   growth but never a stop, a scale down or an unmapping.
//! - The check and the write it admits happen under one lock (the [`Admitted`] guard is held
//!   until the caller has saved the app), so two concurrent pushes cannot both take the last
//!   memory. The lock is innermost (taken under an app's lock or the tenancy lock, never the
//!   other way round) and never held across an `.await`.
//! - A quota assigned to an org or a space exists: deleting a quota in use is refused (409), and
//!   assigning checks it exists, both under the lock.
//!
//! Uses: `store/` (quota records, apps, orgs and spaces), `tenancy` (the [`Scope`] a change acts
//! in).

use std::sync::{Arc, Mutex, MutexGuard};

use pier_api::{AppState, CreateQuotaRequest, ErrorCode, QuotaLimits, QuotaResponse, QuotaUsage};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::store::{AppRecord, OrgRecord, QuotaRecord, SpaceRecord, Store};
use crate::tenancy::Scope;

/// Proof that a change was checked against the quotas; hold it until the change is saved.
#[must_use = "hold the guard until the admitted change is saved"]
pub struct Admitted<'a> {
    _guard: MutexGuard<'a, ()>,
}

pub struct Quotas {
    store: Store,
    lock: Mutex<()>,
}

/// What one app uses. `as_started` counts its instances and memory even when it is stopped.
fn app_usage(app: &AppRecord, as_started: bool) -> QuotaUsage {
    let runs = as_started || app.state == AppState::Started;
    let (mut memory_mb, mut instances) = (0u64, 0u64);
    if runs {
        for p in app.processes.values() {
            instances += u64::from(p.instances);
            memory_mb += u64::from(p.instances) * p.memory_mb;
        }
    }
    QuotaUsage {
        memory_mb,
        instances,
        apps: 1,
        routes: app.routes.len() as u64,
    }
}

fn add(a: &mut QuotaUsage, b: QuotaUsage) {
    a.memory_mb += b.memory_mb;
    a.instances += b.instances;
    a.apps += b.apps;
    a.routes += b.routes;
}

fn total<'a>(apps: impl IntoIterator<Item = &'a AppRecord>) -> QuotaUsage {
    let mut sum = QuotaUsage::default();
    for a in apps {
        add(&mut sum, app_usage(a, false));
    }
    sum
}

/// The first limit of `quota` that `used + needs` goes over, where `needs` is more than zero, as
/// the refusal's message. `holder` is "org acme" or "space dev of org acme".
fn over(holder: &str, quota: &QuotaRecord, used: QuotaUsage, needs: QuotaUsage) -> Option<String> {
    let l = &quota.limits;
    let checks = [
        (l.memory_mb, used.memory_mb, needs.memory_mb, "memory"),
        (l.instances, used.instances, needs.instances, "instances"),
        (l.apps, used.apps, needs.apps, "apps"),
        (l.routes, used.routes, needs.routes, "routes"),
    ];
    let (limit, used, needs, what) = checks
        .into_iter()
        .find(|(limit, used, needs, _)| *needs > 0 && limit.is_some_and(|l| used + needs > l))?;
    let limit = limit.unwrap_or_default();
    let q = &quota.name;
    let detail = if what == "memory" {
        format!(
            "allows {limit} MiB of memory; {used} MiB is in use and this needs {needs} MiB more"
        )
    } else {
        let verb = if used == 1 { "is" } else { "are" };
        format!("allows {limit} {what}; {used} {verb} in use and this needs {needs} more")
    };
    Some(format!(
        "{holder}'s quota {q} {detail} (stop, scale down or delete apps, or ask a platform admin \
         to raise the quota)"
    ))
}

/// What `after` adds to the use of the apps it is among: its use minus that of the record it
/// replaces (none when new), per resource, never below zero.
fn needs(apps: &[AppRecord], after: &AppRecord, as_started: bool) -> QuotaUsage {
    let new = app_usage(after, as_started);
    let old = apps
        .iter()
        .find(|a| a.guid == after.guid)
        .map(|a| app_usage(a, false))
        .unwrap_or_default();
    QuotaUsage {
        memory_mb: new.memory_mb.saturating_sub(old.memory_mb),
        instances: new.instances.saturating_sub(old.instances),
        apps: new.apps.saturating_sub(old.apps),
        routes: new.routes.saturating_sub(old.routes),
    }
}

fn check_name(name: &str) -> Result<()> {
    if pier_api::names::is_dns_label(name) {
        return Ok(());
    }
    Err(Error::api(
        ErrorCode::InvalidName,
        format!(
            "quota name {name:?} is invalid: use 1-63 lowercase letters, digits and hyphens, \
             starting and ending with a letter or digit"
        ),
    ))
}

fn not_found(name: &str) -> Error {
    Error::api(ErrorCode::NotFound, format!("quota {name} not found"))
}

impl Quotas {
    pub fn new(store: Store) -> Arc<Quotas> {
        Arc::new(Quotas {
            store,
            lock: Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks that `after`, the app as a change would leave it (its guid names the record it
    /// replaces; a guid not in the store is a new app), keeps its space and org within their
    /// quotas. With `as_started` its instances and memory count even if it is stopped (a new app
    /// is made to be started: a push is refused when it is created, so nothing of it is made).
    pub fn admit(&self, at: &Scope, after: &AppRecord, as_started: bool) -> Result<Admitted<'_>> {
        let guard = self.lock();
        // Re-read: the quota assigned may have changed since the request's scope was resolved.
        let space = self
            .store
            .get_space(&at.space.guid)?
            .unwrap_or_else(|| at.space.clone());
        let org = self
            .store
            .get_org(&at.org.guid)?
            .unwrap_or_else(|| at.org.clone());
        let space_apps = self.store.list_space_apps(&space.guid)?;
        if let Some(q) = self.assigned(space.quota.as_deref())? {
            let holder = format!("space {} of org {}", space.name, org.name);
            let needs = needs(&space_apps, after, as_started);
            if let Some(msg) = over(&holder, &q, total(&space_apps), needs) {
                return Err(Error::api(ErrorCode::QuotaExceeded, msg));
            }
        }
        if let Some(q) = self.assigned(org.quota.as_deref())? {
            let org_apps = self.org_apps(&org)?;
            let needs = needs(&org_apps, after, as_started);
            if let Some(msg) = over(&format!("org {}", org.name), &q, total(&org_apps), needs) {
                return Err(Error::api(ErrorCode::QuotaExceeded, msg));
            }
        }
        Ok(Admitted { _guard: guard })
    }

    fn assigned(&self, name: Option<&str>) -> Result<Option<QuotaRecord>> {
        match name {
            Some(n) => self.store.get_quota(n),
            None => Ok(None),
        }
    }

    fn org_apps(&self, org: &OrgRecord) -> Result<Vec<AppRecord>> {
        let mut apps = Vec::new();
        for s in self.store.spaces_of(&org.guid)? {
            apps.extend(self.store.list_space_apps(&s.guid)?);
        }
        Ok(apps)
    }

    pub fn org_usage(&self, org: &OrgRecord) -> Result<QuotaUsage> {
        Ok(total(&self.org_apps(org)?))
    }

    pub fn space_usage(&self, space: &SpaceRecord) -> Result<QuotaUsage> {
        Ok(total(&self.store.list_space_apps(&space.guid)?))
    }

    /// The quota named `name` (assigned to an org or a space), as the API shows it.
    pub fn view(&self, name: Option<&str>) -> Result<Option<QuotaResponse>> {
        match self.assigned(name)? {
            Some(q) => Ok(Some(self.response(&q)?)),
            None => Ok(None),
        }
    }

    fn response(&self, q: &QuotaRecord) -> Result<QuotaResponse> {
        let orgs = self.store.list_orgs()?;
        let mut spaces = Vec::new();
        for s in self.store.list_spaces()? {
            if s.quota.as_deref() != Some(q.name.as_str()) {
                continue;
            }
            let org = orgs.iter().find(|o| o.guid == s.org_guid);
            spaces.push(format!(
                "{}/{}",
                org.map_or("?", |o| o.name.as_str()),
                s.name
            ));
        }
        spaces.sort();
        Ok(QuotaResponse {
            name: q.name.clone(),
            limits: q.limits.clone(),
            orgs: orgs
                .iter()
                .filter(|o| o.quota.as_deref() == Some(q.name.as_str()))
                .map(|o| o.name.clone())
                .collect(),
            spaces,
        })
    }

    pub fn list(&self) -> Result<Vec<QuotaResponse>> {
        let quotas = self.store.list_quotas()?;
        quotas.iter().map(|q| self.response(q)).collect()
    }

    pub fn get(&self, name: &str) -> Result<QuotaResponse> {
        let q = self.store.get_quota(name)?.ok_or_else(|| not_found(name))?;
        self.response(&q)
    }

    pub fn create(&self, req: &CreateQuotaRequest) -> Result<QuotaResponse> {
        check_name(&req.name)?;
        let _guard = self.lock();
        if self.store.get_quota(&req.name)?.is_some() {
            return Err(Error::api(
                ErrorCode::Conflict,
                format!(
                    "quota {} already exists; change it with `pier update-quota`",
                    req.name
                ),
            ));
        }
        let q = QuotaRecord {
            name: req.name.clone(),
            limits: req.limits(),
            created_at: OffsetDateTime::now_utc(),
        };
        self.store.put_quota(&q)?;
        tracing::info!(quota = %q.name, limits = ?q.limits, "quota created");
        self.response(&q)
    }

    /// Replaces the quota's limits. Lowering one below what is in use is allowed: it refuses
    /// further growth only.
    pub fn update(&self, name: &str, limits: QuotaLimits) -> Result<QuotaResponse> {
        let _guard = self.lock();
        let mut q = self.store.get_quota(name)?.ok_or_else(|| not_found(name))?;
        q.limits = limits;
        self.store.put_quota(&q)?;
        tracing::info!(quota = %q.name, limits = ?q.limits, "quota updated");
        self.response(&q)
    }

    /// Deletes the quota; refused while an org or a space has it.
    pub fn delete(&self, name: &str) -> Result<()> {
        let _guard = self.lock();
        let q = self.store.get_quota(name)?.ok_or_else(|| not_found(name))?;
        let used = self.response(&q)?;
        let users: Vec<String> = (used.orgs.iter().map(|o| format!("org {o}")))
            .chain(used.spaces.iter().map(|s| format!("space {s}")))
            .collect();
        if !users.is_empty() {
            return Err(Error::api(
                ErrorCode::Conflict,
                format!(
                    "quota {name} is assigned to {}; assign them another quota (or none) first",
                    users.join(", ")
                ),
            ));
        }
        self.store.delete_quota(name)?;
        tracing::info!(quota = %name, "quota deleted");
        Ok(())
    }

    /// Checks that the quota `name` exists and runs `write` (which assigns it) under the lock, so
    /// it cannot be deleted in between.
    pub fn assigning<T>(&self, name: Option<&str>, write: impl FnOnce() -> Result<T>) -> Result<T> {
        let _guard = self.lock();
        if let Some(n) = name {
            self.store.get_quota(n)?.ok_or_else(|| not_found(n))?;
        }
        write()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(limits: QuotaLimits) -> QuotaRecord {
        QuotaRecord {
            name: "small".into(),
            limits,
            created_at: OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn only_what_a_change_raises_is_checked_and_the_message_says_it_all() {
        let q = quota(QuotaLimits {
            memory_mb: Some(1024),
            apps: Some(2),
            ..QuotaLimits::default()
        });
        let used = QuotaUsage {
            memory_mb: 768,
            instances: 3,
            apps: 2,
            routes: 9,
        };
        let mem = QuotaUsage {
            memory_mb: 512,
            ..QuotaUsage::default()
        };
        assert_eq!(
            over("org acme", &q, used, mem).as_deref(),
            Some(
                "org acme's quota small allows 1024 MiB of memory; 768 MiB is in use and this \
                 needs 512 MiB more (stop, scale down or delete apps, or ask a platform admin to \
                 raise the quota)"
            )
        );
        let fits = QuotaUsage {
            memory_mb: 256,
            ..QuotaUsage::default()
        };
        assert_eq!(
            over("org acme", &q, used, fits),
            None,
            "768 + 256 fits 1024"
        );
        let app = QuotaUsage {
            apps: 1,
            ..QuotaUsage::default()
        };
        let msg = over("space dev of org acme", &q, used, app).unwrap();
        assert!(
            msg.starts_with("space dev of org acme's quota small allows 2 apps; 2 are in use"),
            "{msg}"
        );
        // Over already (the quota was lowered) but asking for nothing more: not refused.
        let over_used = QuotaUsage {
            memory_mb: 4096,
            ..used
        };
        assert_eq!(over("org acme", &q, over_used, QuotaUsage::default()), None);
        // Unlimited resources are never refused.
        let routes = QuotaUsage {
            routes: 100,
            ..QuotaUsage::default()
        };
        assert_eq!(over("org acme", &q, used, routes), None);
    }
}

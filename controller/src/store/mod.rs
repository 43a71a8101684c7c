//! Desired state in sled, and the blob store beside it. Only the controller opens the database
//! (sled locks its folder), and no raw database handle leaves this module: every other module
//! reads and writes through the typed methods here.
//!
//! Trees:
//! - `apps`: `<space guid>/<app name>` → [`AppRecord`] (JSON; the user's env vars and each
//!   revision's env and `VCAP_SERVICES` sealed, [`secrets`])
//! - `orgs`, `spaces`: guid → [`OrgRecord`], [`SpaceRecord`] ([`tenancy`])
//! - `quotas`: quota name → [`QuotaRecord`] ([`quotas`])
//! - `events`: `<app guid>/<time ns>/<id>` → [`AppEvent`]
//! - `meta`: token hash, controller id, instance subnet, the store's schema version
//! - `cleanup`: app guid → [`Cleanup`]: what a deleted app left in the runtime and the blob store,
//!   written in the same transaction that deletes the app, removed once it is all gone
//! - `addresses`, `addresses_meta`: instance address states ([`AddressStore`])
//! - `users`, `sessions`: users and their login sessions ([`UserStore`]); the access tokens'
//!   signing key is in `meta`
//! - `audit`: `<time ns><id>` → [`pier_api::AuditEntry`], the newest [`AUDIT_KEPT`]
//!   ([`AuditStore`])
//! - `services`: `<space guid>/<name>` → [`ServiceInstanceRecord`] ([`services`]; a
//!   user-provided one's credentials sealed); bindings are in the app's record
//! - `roles`: `<user guid>/<org or space guid>/<role>` → [`RoleRecord`] ([`RoleStore`])
//! - `service_brokers`, `service_keys`: brokers and service keys ([`brokers`]); their secrets are
//!   sealed with the key in `DATA_DIR/secrets.key` ([`secrets`])
//! - `pending_bindings`: binding guid → [`PendingBindingRecord`]: a binding or service key asked of
//!   a broker and not yet recorded here, written before the broker is asked and removed once the
//!   binding is recorded or known not to exist ([`services`])
//!
//! Invariants:
//! - Every write is flushed before the call returns, so an API answer means the change is on disk.
//! - Two writes that belong together go in one transaction (deleting an app and queueing its
//!   cleanup), so a controller killed between them leaves neither half.
//! - [`Store::open`] migrates a store an older Pier wrote (schema 1: apps keyed by name, no orgs)
//!   in one transaction: every app moves into the space `default` of the org `default`, keeping its
//!   guid, events, revisions and instances. A new store starts with that org and space too.

use std::path::Path;

use pier_api::{AppEvent, AppName, EventKind};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use time::OffsetDateTime;

use crate::error::{Error, Result};

/// Events kept per app: the oldest go once there are more.
pub const EVENTS_KEPT: usize = 1000;

mod addresses;
mod apps;
mod audit;
pub mod blobs;
pub mod brokers;
pub mod quotas;
mod roles;
pub mod secrets;
pub mod services;
pub mod tenancy;
mod users;

pub use addresses::AddressStore;
pub use apps::{app_key, AppRecord, BindingRecord, DeploymentRecord, ProcessRecord, Revision};
pub use audit::{AuditStore, AUDIT_KEPT};
pub use brokers::{BrokerRecord, OfferingRecord, PlanRecord, ServiceKeyRecord};
pub use quotas::QuotaRecord;
pub use roles::{RoleRecord, RoleStore};
pub use secrets::Secrets;
pub use services::{ManagedRecord, OperationRecord, PendingBindingRecord, ServiceInstanceRecord};
pub use tenancy::{OrgRecord, SpaceRecord};

/// The store's layout version, in `meta`: 1 (no key) before orgs and spaces, 2 since.
const SCHEMA_KEY: &str = "schema";
const SCHEMA: &[u8] = b"2";
pub use blobs::BlobStore;
pub use users::{SessionRecord, UserRecord, UserStore};

/// What is left to remove after an app was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleanup {
    pub app_guid: String,
    pub app_name: String,
    /// Blobs (packages, droplets) to delete unless another app uses them.
    pub blobs: Vec<String>,
    /// Runtime volumes to remove (the buildpack cache).
    pub volumes: Vec<String>,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    apps: sled::Tree,
    events: sled::Tree,
    meta: sled::Tree,
    cleanup: sled::Tree,
    orgs: sled::Tree,
    spaces: sled::Tree,
    quotas: sled::Tree,
    services: sled::Tree,
    brokers: sled::Tree,
    service_keys: sled::Tree,
    pending_bindings: sled::Tree,
    secrets: std::sync::Arc<Secrets>,
    changes: crate::changes::Changes,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        let db = sled::open(dir)?;
        let store = Store {
            apps: db.open_tree("apps")?,
            events: db.open_tree("events")?,
            meta: db.open_tree("meta")?,
            cleanup: db.open_tree("cleanup")?,
            orgs: db.open_tree("orgs")?,
            spaces: db.open_tree("spaces")?,
            quotas: db.open_tree("quotas")?,
            services: db.open_tree("services")?,
            brokers: db.open_tree("service_brokers")?,
            service_keys: db.open_tree("service_keys")?,
            pending_bindings: db.open_tree("pending_bindings")?,
            // Beside the database, in the data dir.
            secrets: std::sync::Arc::new(Secrets::at(
                &dir.parent().unwrap_or(dir).join(secrets::KEY_FILE),
            )),
            changes: Default::default(),
            db,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Brings a schema-1 (or new) store to schema 2: the `default` org and space, and every app
    /// keyed by name moved into that space, in one transaction with the schema mark.
    fn migrate(&self) -> Result<()> {
        if self.meta.get(SCHEMA_KEY)?.as_deref() == Some(SCHEMA) {
            return Ok(());
        }
        let now = OffsetDateTime::now_utc();
        let org = OrgRecord {
            guid: uuid::Uuid::new_v4().to_string(),
            name: tenancy::DEFAULT_ORG.into(),
            created_at: now,
            quota: None,
        };
        let space = SpaceRecord {
            guid: uuid::Uuid::new_v4().to_string(),
            name: tenancy::DEFAULT_SPACE.into(),
            org_guid: org.guid.clone(),
            created_at: now,
            quota: None,
        };
        let mut moved = Vec::new();
        for item in self.apps.iter() {
            let (key, value) = item?;
            if key.contains(&b'/') {
                continue;
            }
            let mut app: AppRecord = serde_json::from_slice(&value)?;
            app.space_guid = space.guid.clone();
            moved.push((key, app.key(), serde_json::to_vec(&app)?));
        }
        let (org_json, space_json) = (serde_json::to_vec(&org)?, serde_json::to_vec(&space)?);
        (&self.apps, &self.orgs, &self.spaces, &self.meta)
            .transaction(|(apps, orgs, spaces, meta)| {
                for (old, new, value) in &moved {
                    apps.remove(old)?;
                    apps.insert(new.as_bytes(), value.as_slice())?;
                }
                orgs.insert(org.guid.as_bytes(), org_json.as_slice())?;
                spaces.insert(space.guid.as_bytes(), space_json.as_slice())?;
                meta.insert(SCHEMA_KEY, SCHEMA)?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => Error::Store(e),
                TransactionError::Abort(()) => Error::Other("migration aborted".into()),
            })?;
        if !moved.is_empty() {
            tracing::info!(
                apps = moved.len(),
                "moved the apps of an older store into org default, space default"
            );
        }
        self.flush()
    }

    /// What seals broker passwords and the credentials brokers give.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// The counter every app, event and instance change bumps.
    pub fn changes(&self) -> crate::changes::Changes {
        self.changes.clone()
    }

    /// The persistence of instance addresses.
    pub fn addresses(&self) -> Result<AddressStore> {
        AddressStore::open(&self.db)
    }

    /// The audit log, keeping the newest [`AUDIT_KEPT`] entries.
    pub fn audit(&self) -> Result<AuditStore> {
        AuditStore::open(&self.db, AUDIT_KEPT)
    }

    /// The persistence of users and login sessions.
    pub fn users(&self) -> Result<UserStore> {
        UserStore::open(&self.db)
    }

    /// The persistence of roles.
    pub fn roles(&self) -> Result<RoleStore> {
        RoleStore::open(&self.db)
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// An app record as stored: the user's env (the app's and each revision's) and each
    /// revision's `VCAP_SERVICES` (the bindings' credentials again) sealed ([`seal_field`]).
    fn app_bytes(&self, app: &AppRecord) -> Result<Vec<u8>> {
        let mut v = serde_json::to_value(app)?;
        seal_field(&self.secrets, &mut v, "env")?;
        for rev in revisions_mut(&mut v) {
            seal_field(&self.secrets, rev, "env")?;
            seal_field(&self.secrets, rev, "vcap_services")?;
        }
        Ok(serde_json::to_vec(&v)?)
    }

    /// An app record as read: what [`Store::app_bytes`] sealed opened (an older Pier's plain
    /// values as they are).
    fn app_from(&self, bytes: &[u8]) -> Result<AppRecord> {
        let mut v: serde_json::Value = serde_json::from_slice(bytes)?;
        open_field(&self.secrets, &mut v, "env")?;
        for rev in revisions_mut(&mut v) {
            open_field(&self.secrets, rev, "env")?;
            open_field(&self.secrets, rev, "vcap_services")?;
        }
        Ok(serde_json::from_value(v)?)
    }

    pub fn get_app(&self, space_guid: &str, name: &AppName) -> Result<Option<AppRecord>> {
        match self.apps.get(app_key(space_guid, name))? {
            Some(v) => Ok(Some(self.app_from(&v)?)),
            None => Ok(None),
        }
    }

    pub fn list_apps(&self) -> Result<Vec<AppRecord>> {
        let mut out = Vec::new();
        for item in self.apps.iter() {
            let (_, v) = item?;
            out.push(self.app_from(&v)?);
        }
        Ok(out)
    }

    /// The apps of one space.
    pub fn list_space_apps(&self, space_guid: &str) -> Result<Vec<AppRecord>> {
        let mut out = Vec::new();
        for item in self.apps.scan_prefix(format!("{space_guid}/")) {
            let (_, v) = item?;
            out.push(self.app_from(&v)?);
        }
        Ok(out)
    }

    pub fn put_app(&self, app: &AppRecord) -> Result<()> {
        debug_assert!(!app.space_guid.is_empty(), "an app belongs to a space");
        self.apps.insert(app.key(), self.app_bytes(app)?)?;
        self.changes.bump();
        self.flush()
    }

    /// Deletes the app and its events, and queues `cleanup`, in one transaction.
    pub fn delete_app(&self, app: &AppRecord, cleanup: &Cleanup) -> Result<()> {
        let prefix = format!("{}/", app.guid);
        let event_keys = self
            .events
            .scan_prefix(prefix.as_bytes())
            .keys()
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let job = serde_json::to_vec(cleanup)?;
        (&self.apps, &self.events, &self.cleanup)
            .transaction(|(apps, events, jobs)| {
                apps.remove(app.key().as_bytes())?;
                for k in &event_keys {
                    events.remove(k)?;
                }
                jobs.insert(app.guid.as_bytes(), job.as_slice())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => Error::Store(e),
                TransactionError::Abort(()) => Error::Other("delete transaction aborted".into()),
            })?;
        self.changes.bump();
        self.flush()
    }

    /// Cleanups still to do, oldest app first.
    pub fn cleanups(&self) -> Result<Vec<Cleanup>> {
        let mut out = Vec::new();
        for item in self.cleanup.iter() {
            let (_, v) = item?;
            out.push(serde_json::from_slice(&v)?);
        }
        Ok(out)
    }

    pub fn cleanup_done(&self, app_guid: &str) -> Result<()> {
        self.cleanup.remove(app_guid.as_bytes())?;
        self.flush()
    }

    pub fn add_event(
        &self,
        app_guid: &str,
        kind: EventKind,
        message: &str,
        actor: &str,
    ) -> Result<()> {
        let ev = AppEvent {
            time: OffsetDateTime::now_utc(),
            kind,
            message: message.to_string(),
            actor: actor.to_string(),
        };
        // Keys sort by time; the id breaks ties between events in the same nanosecond.
        let id = self.db.generate_id()?;
        let key = format!(
            "{app_guid}/{:020}/{id:020}",
            ev.time.unix_timestamp_nanos().max(0)
        );
        self.events
            .insert(key.as_bytes(), serde_json::to_vec(&ev)?)?;
        self.prune_events(app_guid)?;
        self.changes.bump();
        self.flush()
    }

    /// Keeps the newest [`EVENTS_KEPT`] events of the app (a crash loop must not fill the disk).
    fn prune_events(&self, app_guid: &str) -> Result<()> {
        let prefix = format!("{app_guid}/");
        let keys = self.events.scan_prefix(prefix.as_bytes()).keys();
        let keys = keys.collect::<std::result::Result<Vec<_>, _>>()?;
        for k in keys.iter().take(keys.len().saturating_sub(EVENTS_KEPT)) {
            self.events.remove(k)?;
        }
        Ok(())
    }

    /// Events of an app, newest first.
    pub fn events(&self, app_guid: &str, limit: usize) -> Result<Vec<AppEvent>> {
        let prefix = format!("{app_guid}/");
        let mut out = Vec::new();
        for item in self.events.scan_prefix(prefix.as_bytes()).rev().take(limit) {
            let (_, v) = item?;
            out.push(serde_json::from_slice(&v)?);
        }
        Ok(out)
    }

    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    pub fn meta_put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.meta.insert(key, value)?;
        self.flush()
    }

    pub fn meta_remove(&self, key: &str) -> Result<()> {
        self.meta.remove(key)?;
        self.flush()
    }
}

/// The revisions of an app record's JSON.
fn revisions_mut(app: &mut serde_json::Value) -> impl Iterator<Item = &mut serde_json::Value> {
    app.get_mut("revisions")
        .and_then(|r| r.as_array_mut())
        .into_iter()
        .flatten()
}

/// The value of `obj[field]`, unless empty (`{}`, `""`, `"{}"`, null), moved sealed to
/// `obj["sealed_<field>"]`; `obj[field]` keeps an empty value of its kind.
fn seal_field(secrets: &Secrets, obj: &mut serde_json::Value, field: &str) -> Result<()> {
    use serde_json::Value;
    let Some(o) = obj.as_object_mut() else {
        return Ok(());
    };
    let empty = match o.get(field) {
        Some(Value::Object(m)) if !m.is_empty() => Value::Object(Default::default()),
        Some(Value::String(t)) if !t.is_empty() && t != "{}" => Value::String("{}".into()),
        _ => return Ok(()),
    };
    let plain = o.insert(field.into(), empty);
    o.insert(format!("sealed_{field}"), secrets.seal_json(&plain)?.into());
    Ok(())
}

/// `obj["sealed_<field>"]` ([`seal_field`]) opened back into `obj[field]`.
fn open_field(secrets: &Secrets, obj: &mut serde_json::Value, field: &str) -> Result<()> {
    let Some(o) = obj.as_object_mut() else {
        return Ok(());
    };
    if let Some(serde_json::Value::String(sealed)) = o.remove(&format!("sealed_{field}")) {
        let plain: serde_json::Value = secrets.open_json(&sealed)?;
        o.insert(field.into(), plain);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use pier_api::AppState;

    use super::*;

    pub(crate) fn app(name: &str) -> AppRecord {
        AppRecord {
            name: name.parse().unwrap(),
            guid: format!("guid-{name}"),
            space_guid: "space-test".into(),
            state: AppState::Stopped,
            package: None,
            droplet: None,
            processes: BTreeMap::new(),
            routes: vec![],
            env: BTreeMap::new(),
            buildpacks: vec![],
            bindings: vec![],
            staging: None,
            restart_gen: 0,
            revisions: vec![],
            droplet_source: None,
            current_revision: None,
            deployments: vec![],
            old_blobs: vec![],
            created_at: OffsetDateTime::now_utc(),
            updated_at: OffsetDateTime::now_utc(),
        }
    }

    /// sled's background flusher lets go of the folder's lock a moment after the drop.
    pub(crate) fn reopen(dir: &Path) -> Store {
        (0..100)
            .find_map(|_| {
                Store::open(dir)
                    .map_err(|_| std::thread::sleep(std::time::Duration::from_millis(20)))
                    .ok()
            })
            .expect("store reopens")
    }

    #[test]
    fn events_are_pruned_to_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for i in 0..EVENTS_KEPT + 25 {
            s.add_event("g", EventKind::Crashed, &format!("crash {i}"), "pier")
                .unwrap();
        }
        let ev = s.events("g", usize::MAX).unwrap();
        assert_eq!(ev.len(), EVENTS_KEPT);
        assert_eq!(
            ev[0].message,
            format!("crash {}", EVENTS_KEPT + 24),
            "newest kept"
        );
        assert_eq!(ev.last().unwrap().message, "crash 25", "oldest gone");
    }

    #[test]
    fn env_credentials_in_revisions_and_user_provided_services_are_sealed_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let vcap = r#"{"user-provided":[{"credentials":{"password":"Rev-s3cret-77"}}]}"#;
        let mut a = app("a");
        a.env.insert("API_KEY".into(), "Env-s3cret-66".into());
        a.revisions = vec![Revision {
            version: 1,
            droplet: pier_api::DropletInfo {
                sha256: "d".into(),
                buildpack: "b".into(),
                process_types: BTreeMap::new(),
                created_at: OffsetDateTime::now_utc(),
            },
            env: BTreeMap::from([("API_KEY".into(), "Env-s3cret-66".into())]),
            commands: BTreeMap::new(),
            description: "pushed".into(),
            created_at: OffsetDateTime::now_utc(),
            stack: String::new(),
            vcap_services: vcap.into(),
        }];
        let now = OffsetDateTime::now_utc();
        let mut svc = ServiceInstanceRecord {
            guid: "g".into(),
            name: "smtp".into(),
            space_guid: "space-test".into(),
            user_provided: Default::default(),
            managed: None,
            created_at: now,
            updated_at: now,
        };
        svc.user_provided
            .credentials
            .insert("password".into(), "Ups-s3cret-88".into());
        {
            let s = Store::open(&db).unwrap();
            s.put_app(&a).unwrap();
            assert!(s.insert_service(&svc).unwrap());
        }
        let files = crate::testkit::files_under(dir.path());
        for secret in ["Rev-s3cret-77", "Ups-s3cret-88", "Env-s3cret-66"] {
            let on_disk = files
                .iter()
                .any(|(_, b)| crate::testkit::contains(b, secret.as_bytes()));
            assert!(!on_disk, "{secret} on disk");
        }
        let s = reopen(&db);
        assert_eq!(s.list_apps().unwrap(), vec![a.clone()]);
        assert_eq!(s.get_app("space-test", &a.name).unwrap().unwrap(), a);
        assert_eq!(s.list_apps().unwrap()[0].revisions[0].vcap_services, vcap);
        assert_eq!(s.service("space-test", "smtp").unwrap().unwrap(), svc);
        assert_eq!(s.all_services().unwrap(), vec![svc.clone()]);

        // What an older Pier wrote in plain text reads as it is.
        s.apps
            .insert(a.key(), serde_json::to_vec(&a).unwrap())
            .unwrap();
        s.services
            .insert("space-test/smtp", serde_json::to_vec(&svc).unwrap())
            .unwrap();
        assert_eq!(s.list_space_apps("space-test").unwrap(), vec![a]);
        assert_eq!(s.services_of("space-test").unwrap(), vec![svc]);
    }

    #[test]
    fn apps_and_events_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put_app(&app("a")).unwrap();
            s.add_event("guid-a", EventKind::Created, "one", "admin")
                .unwrap();
            s.add_event("guid-a", EventKind::Staged, "two", "admin")
                .unwrap();
        }
        let s = reopen(dir.path());
        assert_eq!(s.list_apps().unwrap().len(), 1);
        let ev = s.events("guid-a", 10).unwrap();
        assert_eq!(ev[0].kind, EventKind::Staged, "newest first");
        assert_eq!(ev[1].kind, EventKind::Created);
        let job = Cleanup {
            app_guid: "guid-a".into(),
            app_name: "a".into(),
            blobs: vec!["b".into()],
            volumes: vec!["v".into()],
        };
        s.delete_app(&app("a"), &job).unwrap();
        assert!(s
            .get_app("space-test", &"a".parse().unwrap())
            .unwrap()
            .is_none());
        assert!(s.events("guid-a", 10).unwrap().is_empty());
        assert_eq!(s.cleanups().unwrap(), vec![job]);
        s.cleanup_done("guid-a").unwrap();
        assert!(s.cleanups().unwrap().is_empty());
    }

    /// A store as Pier wrote it before orgs and spaces (schema 1): apps keyed by name, records
    /// without a space, no schema mark. Opening it moves every app into default/default, keeping
    /// the record, its guid and its events, and a second open changes nothing.
    #[test]
    fn a_schema_1_store_is_migrated_into_the_default_space() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = serde_json::to_value(app("hello")).unwrap();
        old.as_object_mut().unwrap().remove("space_guid");
        old["env"] = serde_json::json!({"GREETING": "hi"});
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("apps")
                .unwrap()
                .insert("hello", serde_json::to_vec(&old).unwrap())
                .unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("admin_token_sha256", &[7u8; 32][..])
                .unwrap();
            db.flush().unwrap();
        }
        let s = reopen(dir.path());
        s.add_event("guid-hello", EventKind::Created, "kept", "admin")
            .unwrap();
        let migrated = s.default_space_app("hello").unwrap().expect("moved");
        let space = s.list_spaces().unwrap().pop().unwrap();
        assert_eq!(migrated.space_guid, space.guid);
        assert_eq!(migrated.guid, "guid-hello", "same app");
        assert_eq!(migrated.env["GREETING"], "hi");
        assert_eq!(s.list_apps().unwrap().len(), 1, "moved, not copied");
        assert_eq!(
            s.meta_get("admin_token_sha256").unwrap().unwrap(),
            vec![7u8; 32],
            "the rest of the store is kept"
        );
        drop(s);
        let s = reopen(dir.path());
        assert_eq!(s.list_orgs().unwrap().len(), 1, "migrated once");
        assert_eq!(s.list_spaces().unwrap(), vec![space]);
        assert_eq!(s.default_space_app("hello").unwrap(), Some(migrated));
        assert_eq!(s.events("guid-hello", 10).unwrap().len(), 1);
    }
}

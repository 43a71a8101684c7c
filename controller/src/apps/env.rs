//! An app's environment: what `pier env` shows (the user's variables, `VCAP_APPLICATION`,
//! `VCAP_SERVICES`) and `pier set-env` / `unset-env` change.
//!
//! A change is stored and recorded as an event naming the variables, never their values; it
//! reaches the instances with the app's next deployment, which makes a revision described "env
//! changed" (the CLI starts one unless `--no-restart`). Values are shown only to callers whose
//! scope sees env values (the platform admin and the space's developers).

use std::collections::BTreeMap;

use pier_api::{EnvPatchRequest, EnvResponse, EventKind};
use time::OffsetDateTime;

use super::config::check_env_var;
use super::{AppService, HIDDEN_VALUE};
use crate::error::Result;
use crate::store::AppRecord;
use crate::tenancy::Scope;

/// At most this many variables in one change (a request is small; this bounds the work).
const MAX_VARS_PER_CHANGE: usize = 100;

impl AppService {
    /// The app's environment as `at`'s caller may see it.
    pub fn env(&self, at: &Scope, name: &str) -> Result<EnvResponse> {
        let app = self.load(at, name)?;
        self.env_response(at, &app)
    }

    /// Sets and unsets variables (a `null` value unsets); answers the environment after.
    pub async fn patch_env(
        &self,
        at: &Scope,
        name: &str,
        req: EnvPatchRequest,
    ) -> Result<EnvResponse> {
        if req.var.len() > MAX_VARS_PER_CHANGE {
            return Err(crate::error::Error::bad_request(format!(
                "at most {MAX_VARS_PER_CHANGE} env vars per change, got {}",
                req.var.len()
            )));
        }
        for (k, v) in &req.var {
            check_env_var(k, v.as_deref())?;
        }
        let app = self.load(at, name)?;
        let lock = self.d.locks.get(&app.key());
        let _guard = lock.lock().await;
        let mut app = self.load(at, name)?;
        let mut changed: Vec<String> = Vec::new();
        for (k, v) in req.var {
            let before = app.env.get(&k).cloned();
            match v {
                Some(v) if before.as_ref() != Some(&v) => {
                    app.env.insert(k.clone(), v);
                    changed.push(format!("{k} set"));
                }
                None if before.is_some() => {
                    app.env.remove(&k);
                    changed.push(format!("{k} unset"));
                }
                _ => {}
            }
        }
        if !changed.is_empty() {
            app.updated_at = OffsetDateTime::now_utc();
            self.d.store.put_app(&app)?;
            let what = format!("env: {}", changed.join(", "));
            self.event(at, &app, EventKind::Updated, &what);
        }
        self.env_response(at, &app)
    }

    fn env_response(&self, at: &Scope, app: &AppRecord) -> Result<EnvResponse> {
        let hide = |v: &String| {
            if at.sees_env {
                v.clone()
            } else {
                HIDDEN_VALUE.to_string()
            }
        };
        let uris: Vec<String> = app.routes.iter().map(|r| r.to_string()).collect();
        let web = app.web();
        let vcap_application = serde_json::json!({
            "application_id": app.guid,
            "application_name": app.name.as_str(),
            "application_uris": uris,
            "name": app.name.as_str(),
            "uris": uris,
            "space_id": at.space.guid,
            "space_name": at.space.name,
            "organization_id": at.org.guid,
            "organization_name": at.org.name,
            "limits": {
                "mem": web.map_or(0, |p| p.memory_mb),
                "disk": web.map_or(0, |p| p.disk_mb),
                "fds": 16384,
            },
        });
        let vcap_services = self.vcap_services(at, app)?;
        let mut system_env = BTreeMap::from([
            ("VCAP_APPLICATION".to_string(), vcap_application.to_string()),
            ("VCAP_SERVICES".to_string(), hide(&vcap_services)),
        ]);
        // The Heroku names the instances get for the first database and cache bound, unless
        // the user's own variable of that name wins (as in `instances/launch`).
        for (k, v) in crate::brokers::service_urls(&vcap_services) {
            if !app.env.contains_key(&k) {
                system_env.insert(k, hide(&v));
            }
        }
        let deployed = match app.running_revision() {
            Some(rev) => rev.env == app.env && rev.vcap_services == vcap_services,
            None => app.env.is_empty(),
        };
        Ok(EnvResponse {
            environment_variables: app.env.iter().map(|(k, v)| (k.clone(), hide(v))).collect(),
            system_env,
            deployed,
        })
    }
}

//! What the desired state asks for: one [`InstanceSpec`] per instance slot of every started app.
//! Pure: computed from app records alone, so it is unit tested without anything running.

use std::collections::BTreeMap;
use std::time::Duration;

use pier_api::{AppState, DeploymentStrategy, HealthCheck, ProcessType};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::runtime::labels::keys;
use crate::runtime::{Kind, Managed};
use crate::store::{AppRecord, ProcessRecord, Revision};

/// After this many crashes an instance is not restarted any more.
pub const MAX_CRASHES: u32 = 200;

/// The wait before restarting an instance after its `crash_count`-th crash, or `None` for never.
/// Cloud Foundry's policy: crashes 1 and 2 restart at once, then `base` doubling up to 32 × `base`.
pub fn restart_delay(crash_count: u32, base: Duration) -> Option<Duration> {
    match crash_count {
        0..=2 => Some(Duration::ZERO),
        n if n >= MAX_CRASHES => None,
        n => {
            let factor = 1u32 << (n - 3).min(5);
            Some(base * factor)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub app_guid: String,
    pub process: ProcessType,
    pub index: u32,
}

/// Everything that makes an instance what it is. A different [`InstanceSpec::hash`] means the
/// running container must be replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceSpec {
    pub app_name: String,
    pub app_guid: String,
    pub process: ProcessType,
    pub index: u32,
    pub droplet: String,
    /// The stack image the app image is made from (empty: the controller's current stack).
    pub stack: String,
    pub command: String,
    pub env: BTreeMap<String, String>,
    /// The revision's `VCAP_SERVICES` (JSON text). Left out of the hash when there are none, so
    /// instances made before bindings existed keep theirs.
    #[serde(skip_serializing_if = "no_services")]
    pub vcap_services: String,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub health_check: HealthCheck,
    pub restart_gen: u64,
    pub revision: u64,
    #[serde(skip)]
    pub uris: Vec<String>,
    /// The app's space (for `VCAP_APPLICATION`; apps never move between spaces).
    #[serde(skip)]
    pub space_guid: String,
    /// Deployment settings: how a change of this spec is rolled out, not what runs.
    #[serde(skip)]
    pub recreate: bool,
    #[serde(skip)]
    pub max_in_flight: u32,
    /// Share of the route's traffic, relative to the other instances (canary steps).
    #[serde(skip)]
    pub weight: u32,
    /// A standby instance (`--standby-instances`): started and health-checked ahead of a
    /// scale-up, but not routed, not listed and not counted. Not part of the hash: a scale-up
    /// turns a standby slot into a serving one without replacing its container.
    #[serde(skip)]
    pub standby: bool,
}

fn no_services(s: &str) -> bool {
    s.is_empty() || s == "{}"
}

impl InstanceSpec {
    /// What the instance's image is made of.
    pub fn image_key(&self) -> crate::images::ImageKey {
        crate::images::ImageKey {
            app_name: self.app_name.clone(),
            app_guid: self.app_guid.clone(),
            droplet: self.droplet.clone(),
            stack: self.stack.clone(),
        }
    }

    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&Sha256::digest(&json)[..8])
    }
}

/// What the desired state asks for: one spec per instance slot of every started app.
///
/// Instances run the app's current revision. During a canary deployment the usual slots keep the
/// previous revision and one extra web slot runs the new one, weighted by the canary's step.
pub fn desired_slots(apps: &[AppRecord]) -> BTreeMap<SlotKey, InstanceSpec> {
    let mut out = BTreeMap::new();
    for app in apps {
        if app.state != AppState::Started {
            continue;
        }
        let Some(current) = app.running_revision() else {
            continue;
        };
        let deployment = app.active_deployment();
        let strategy = deployment.map(|d| d.strategy).unwrap_or_default();
        let max_in_flight = deployment.map(|d| d.max_in_flight).unwrap_or(1).max(1);
        let canary = deployment.and_then(|d| {
            let c = d.canary.as_ref()?;
            let base = app.revision(d.previous_revision?)?;
            Some((base, c.steps.get(c.step).copied().unwrap_or(100)))
        });
        let spec =
            |rev: &Revision, process: &ProcessType, index: u32, p: &ProcessRecord, weight: u32| {
                let command = app.command_in(rev, process)?;
                Some(InstanceSpec {
                    app_name: app.name.to_string(),
                    app_guid: app.guid.clone(),
                    process: process.clone(),
                    index,
                    revision: rev.version,
                    droplet: rev.droplet.sha256.clone(),
                    stack: rev.stack.clone(),
                    command,
                    env: rev.env.clone(),
                    vcap_services: rev.vcap_services.clone(),
                    memory_mb: p.memory_mb,
                    disk_mb: p.disk_mb,
                    health_check: p.health_check.clone(),
                    restart_gen: app.restart_gen,
                    uris: app.routes.iter().map(|r| r.to_string()).collect(),
                    space_guid: app.space_guid.clone(),
                    recreate: strategy == DeploymentStrategy::Recreate,
                    max_in_flight,
                    weight,
                    standby: false,
                })
            };
        for (process, p) in &app.processes {
            let (rev, base_weight) = match (canary, process.is_web()) {
                // The canary takes `pct`% of traffic: it weighs pct × n against n × (100 − pct).
                (Some((base, pct)), true) => (base, 100u32.saturating_sub(pct)),
                _ => (current, 1),
            };
            for index in 0..p.instances {
                let key = SlotKey {
                    app_guid: app.guid.clone(),
                    process: process.clone(),
                    index,
                };
                if let Some(s) = spec(rev, process, index, p, base_weight) {
                    out.insert(key, s);
                }
            }
            if let (Some((_, pct)), true) = (canary, process.is_web()) {
                let index = p.instances;
                let key = SlotKey {
                    app_guid: app.guid.clone(),
                    process: process.clone(),
                    index,
                };
                if let Some(s) = spec(current, process, index, p, pct * p.instances.max(1)) {
                    out.insert(key, s);
                }
            }
        }
    }
    out
}

/// [`desired_slots`] plus `standby` standby slots after each started app's web instances: the
/// indexes a scale-up would use next, started ahead of need. None while a deployment is active
/// (its slots are in motion), for an app scaled to 0, or for other process types.
pub fn desired_slots_with_standby(
    apps: &[AppRecord],
    standby: u32,
) -> BTreeMap<SlotKey, InstanceSpec> {
    let mut out = desired_slots(apps);
    if standby == 0 {
        return out;
    }
    let mut extra = Vec::new();
    for app in apps {
        let web = app.processes.iter().find(|(p, _)| p.is_web());
        let Some((process, p)) = web else { continue };
        if app.active_deployment().is_some() || p.instances == 0 {
            continue;
        }
        let last = SlotKey {
            app_guid: app.guid.clone(),
            process: process.clone(),
            index: p.instances - 1,
        };
        // The last serving slot's spec is what a new index would run (a stopped app has none).
        let Some(base) = out.get(&last) else { continue };
        for index in p.instances..p.instances.saturating_add(standby) {
            let key = SlotKey {
                index,
                ..last.clone()
            };
            extra.push((
                key,
                InstanceSpec {
                    index,
                    standby: true,
                    ..base.clone()
                },
            ));
        }
    }
    out.extend(extra);
    out
}

/// The slot a container serves, from its labels (instances only).
pub fn slot_of(c: &Managed) -> Option<SlotKey> {
    if c.labels.kind() != Some(Kind::Instance) {
        return None;
    }
    Some(SlotKey {
        app_guid: c.labels.app_guid()?.to_string(),
        process: c.labels.get(keys::PROCESS)?.parse().ok()?,
        index: c.labels.get(keys::INDEX)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_foundry_backoff() {
        let base = Duration::from_secs(30);
        assert_eq!(restart_delay(1, base), Some(Duration::ZERO));
        assert_eq!(restart_delay(2, base), Some(Duration::ZERO));
        assert_eq!(restart_delay(3, base), Some(Duration::from_secs(30)));
        assert_eq!(restart_delay(4, base), Some(Duration::from_secs(60)));
        assert_eq!(restart_delay(5, base), Some(Duration::from_secs(120)));
        assert_eq!(restart_delay(8, base), Some(Duration::from_secs(960)));
        assert_eq!(
            restart_delay(9, base),
            Some(Duration::from_secs(960)),
            "16 min cap"
        );
        assert_eq!(restart_delay(199, base), Some(Duration::from_secs(960)));
        assert_eq!(restart_delay(200, base), None);
    }
}

//! The broker's own records: its service instances and bindings, in one JSON file in its data
//! directory (`broker.json`, mode 0600: it holds the bindings' passwords), rewritten whole and
//! atomically (a temporary file, fsync, rename) after every change. A restarted broker reads it
//! and adopts the containers it names ([`crate::Broker::adopt`]).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::Engine;

/// How an operation stands, in OSB's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpState {
    #[serde(rename = "in progress")]
    InProgress,
    #[serde(rename = "succeeded")]
    Succeeded,
    #[serde(rename = "failed")]
    Failed,
}

impl OpState {
    pub fn as_str(self) -> &'static str {
        match self {
            OpState::InProgress => "in progress",
            OpState::Succeeded => "succeeded",
            OpState::Failed => "failed",
        }
    }
}

/// The last asynchronous operation on an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// `provision-…` or `update-…`: what `last_operation` is asked about.
    pub id: String,
    pub state: OpState,
    pub description: String,
}

/// One service instance: a container of the services image with its data volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: String,
    pub engine: Engine,
    pub service_id: String,
    pub plan_id: String,
    pub space_guid: String,
    pub organization_guid: String,
    /// As provisioned (for telling an identical request from a conflicting one).
    pub parameters: Value,
    /// The container's name: also the host name apps on its network reach it by.
    pub container: String,
    pub volume: String,
    pub network: String,
    /// A fixed address on the network, when someone else hands the network's addresses out.
    pub ip: Option<Ipv4Addr>,
    /// The broker's own secret for the server (Redis: the `pier-admin` ACL user's password;
    /// PostgreSQL needs none: the broker runs psql as `postgres` over the local socket).
    pub admin_password: String,
    pub operation: Operation,
}

/// One binding: its own role (PostgreSQL) or ACL user (Redis) on the instance's server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingRecord {
    pub id: String,
    pub instance_id: String,
    pub app_guid: Option<String>,
    pub parameters: Value,
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub instances: BTreeMap<String, InstanceRecord>,
    pub bindings: BTreeMap<String, BindingRecord>,
}

/// The state file.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// Opens (or, when absent, starts) the state in `dir`, which is made if missing.
    pub fn open(dir: &Path) -> anyhow::Result<(StateFile, State)> {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("cannot make the broker's data dir {}: {e}", dir.display())
        })?;
        let path = dir.join("broker.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!("the broker's state {} is not readable: {e}", path.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        Ok((StateFile { path }, state))
    }

    /// Writes `state` in place of the file's contents, durably.
    pub fn save(&self, state: &State) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(state)?;
        let write = || -> std::io::Result<()> {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| anyhow::anyhow!("cannot write {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let (file, mut state) = StateFile::open(dir.path()).unwrap();
        assert_eq!(state, State::default());
        state.bindings.insert(
            "b".into(),
            BindingRecord {
                id: "b".into(),
                instance_id: "i".into(),
                app_guid: None,
                parameters: Value::Null,
                username: "u".into(),
                password: "p".into(),
            },
        );
        file.save(&state).unwrap();
        let (_, again) = StateFile::open(dir.path()).unwrap();
        assert_eq!(again, state);
        let mode = std::fs::metadata(dir.path().join("broker.json"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("broker.json"), b"{nope").unwrap();
        let e = StateFile::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("broker.json") && e.contains("not readable"),
            "{e}"
        );
    }
}

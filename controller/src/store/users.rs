//! Persistence of users and login sessions (the logic is in `users/`):
//! - tree `users`: user name → [`UserRecord`] (JSON)
//! - tree `sessions`: session id → [`SessionRecord`] (JSON): one per login, holding only the
//!   sha256 of its current refresh token
//!
//! Every write is flushed before it returns, so an answer means the change is on disk: a lock
//! after failed logins survives a restart, and a revoked session stays revoked. Deleting a user
//! and its sessions is one transaction.

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::error::{Error, Result};

/// A user. Times are unix seconds.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub guid: String,
    pub name: String,
    /// argon2id, as a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`).
    pub password_hash: String,
    pub created_at: i64,
    /// Failed logins not yet forgotten, oldest first.
    #[serde(default)]
    pub failed_logins: Vec<i64>,
    /// Logins are refused until then.
    #[serde(default)]
    pub locked_until: Option<i64>,
}

// The hash stays out of logs even though it is not the password.
impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("guid", &self.guid)
            .field("name", &self.name)
            .field("created_at", &self.created_at)
            .field("failed_logins", &self.failed_logins)
            .field("locked_until", &self.locked_until)
            .finish_non_exhaustive()
    }
}

/// One login: the refresh token's hash and how long the session may be refreshed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub user_guid: String,
    /// The user's name then (names are never reused for another guid while a session lives:
    /// deleting a user deletes its sessions).
    pub user_name: String,
    /// sha256 of the current refresh token, hex.
    pub refresh_sha256: String,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Clone)]
pub struct UserStore {
    users: sled::Tree,
    sessions: sled::Tree,
}

fn tx_error(e: TransactionError<()>) -> Error {
    match e {
        TransactionError::Storage(e) => Error::Store(e),
        TransactionError::Abort(()) => Error::Other("user transaction aborted".into()),
    }
}

impl UserStore {
    pub(super) fn open(db: &sled::Db) -> Result<UserStore> {
        Ok(UserStore {
            users: db.open_tree("users")?,
            sessions: db.open_tree("sessions")?,
        })
    }

    fn flush(&self) -> Result<()> {
        self.users.flush()?;
        self.sessions.flush()?;
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<Option<UserRecord>> {
        match self.users.get(name)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Every user, by name.
    pub fn list(&self) -> Result<Vec<UserRecord>> {
        let mut out = Vec::new();
        for item in self.users.iter() {
            let (_, v) = item?;
            out.push(serde_json::from_slice(&v)?);
        }
        Ok(out)
    }

    /// Adds `user` unless its name is taken (atomically): false when it was.
    pub fn insert_new(&self, user: &UserRecord) -> Result<bool> {
        let v = serde_json::to_vec(user)?;
        let swapped =
            self.users
                .compare_and_swap(user.name.as_str(), None as Option<&[u8]>, Some(v))?;
        self.flush()?;
        Ok(swapped.is_ok())
    }

    /// Replaces the record of an existing user (failed logins, lock, password).
    pub fn put(&self, user: &UserRecord) -> Result<()> {
        self.users
            .insert(user.name.as_str(), serde_json::to_vec(user)?)?;
        self.flush()
    }

    /// Deletes the user and every session of theirs in one transaction; false if there was none.
    pub fn delete(&self, name: &str) -> Result<bool> {
        let Some(user) = self.get(name)? else {
            return Ok(false);
        };
        let ids = self.session_ids_of(&user.guid)?;
        (&self.users, &self.sessions)
            .transaction(|(users, sessions)| {
                users.remove(name)?;
                for id in &ids {
                    sessions.remove(id.as_bytes())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(tx_error)?;
        self.flush()?;
        Ok(true)
    }

    fn session_ids_of(&self, user_guid: &str) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for item in self.sessions.iter() {
            let (k, v) = item?;
            let s: SessionRecord = serde_json::from_slice(&v)?;
            if s.user_guid == user_guid {
                ids.push(String::from_utf8_lossy(&k).into_owned());
            }
        }
        Ok(ids)
    }

    pub fn session(&self, id: &str) -> Result<Option<SessionRecord>> {
        match self.sessions.get(id)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    pub fn put_session(&self, id: &str, session: &SessionRecord) -> Result<()> {
        self.sessions.insert(id, serde_json::to_vec(session)?)?;
        self.flush()
    }

    /// Replaces the session only if it is still `old` (two refreshes with one token: one wins).
    pub fn swap_session(&self, id: &str, old: &SessionRecord, new: &SessionRecord) -> Result<bool> {
        let swapped = self.sessions.compare_and_swap(
            id,
            Some(serde_json::to_vec(old)?),
            Some(serde_json::to_vec(new)?),
        )?;
        self.flush()?;
        Ok(swapped.is_ok())
    }

    /// Removes the session; false if there was none.
    pub fn delete_session(&self, id: &str) -> Result<bool> {
        let had = self.sessions.remove(id)?.is_some();
        self.flush()?;
        Ok(had)
    }

    /// Removes every session of the user; how many there were.
    pub fn delete_sessions_of(&self, user_guid: &str) -> Result<usize> {
        let ids = self.session_ids_of(user_guid)?;
        for id in &ids {
            self.sessions.remove(id.as_bytes())?;
        }
        self.flush()?;
        Ok(ids.len())
    }

    /// Removes sessions that can no longer be refreshed; how many.
    pub fn prune_sessions(&self, now: i64) -> Result<usize> {
        let mut gone = 0;
        for item in self.sessions.iter() {
            let (k, v) = item?;
            let s: SessionRecord = serde_json::from_slice(&v)?;
            if s.expires_at <= now {
                self.sessions.remove(k)?;
                gone += 1;
            }
        }
        self.flush()?;
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn user(name: &str) -> UserRecord {
        UserRecord {
            guid: format!("guid-{name}"),
            name: name.into(),
            password_hash: "$argon2id$x".into(),
            created_at: 1,
            failed_logins: vec![],
            locked_until: None,
        }
    }

    fn session(guid: &str) -> SessionRecord {
        SessionRecord {
            user_guid: guid.into(),
            user_name: guid.trim_start_matches("guid-").into(),
            refresh_sha256: "ab".into(),
            created_at: 1,
            expires_at: 100,
        }
    }

    #[test]
    fn a_name_is_taken_once_and_deleting_takes_the_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap().users().unwrap();
        assert!(s.insert_new(&user("alice")).unwrap());
        let mut other = user("alice");
        other.guid = "another".into();
        assert!(!s.insert_new(&other).unwrap(), "name taken");
        assert_eq!(s.get("alice").unwrap().unwrap().guid, "guid-alice");
        s.insert_new(&user("bob")).unwrap();
        s.put_session("s1", &session("guid-alice")).unwrap();
        s.put_session("s2", &session("guid-alice")).unwrap();
        s.put_session("s3", &session("guid-bob")).unwrap();
        assert!(s.delete("alice").unwrap());
        assert!(!s.delete("alice").unwrap());
        assert!(s.session("s1").unwrap().is_none());
        assert!(s.session("s2").unwrap().is_none());
        assert!(s.session("s3").unwrap().is_some(), "bob's stays");
        assert_eq!(s.list().unwrap().len(), 1);
    }

    #[test]
    fn a_session_swaps_only_from_what_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap().users().unwrap();
        let a = session("g");
        s.put_session("s", &a).unwrap();
        let mut b = a.clone();
        b.refresh_sha256 = "cd".into();
        assert!(s.swap_session("s", &a, &b).unwrap());
        assert!(!s.swap_session("s", &a, &b).unwrap(), "already moved on");
        assert_eq!(s.session("s").unwrap().unwrap(), b);
        assert_eq!(s.prune_sessions(99).unwrap(), 0);
        assert_eq!(s.prune_sessions(100).unwrap(), 1);
        assert!(s.session("s").unwrap().is_none());
    }
}

//! Persistence of roles: tree `roles`, key `<user guid>/<target guid>/<role>` → [`RoleRecord`]
//! (JSON), where the target is an org (org roles) or a space (space roles). Keyed by the user's
//! guid, so a user deleted and made again under the same name starts with no role; the record
//! keeps the name for listings (names are never changed).
//!
//! Every write is flushed before it returns: a revoked role is revoked on disk when the answer
//! says so.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use pier_api::Role;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRecord {
    pub user_guid: String,
    pub user_name: String,
    /// The org's guid for an org role, the space's for a space role.
    pub target_guid: String,
    pub role: Role,
}

#[derive(Clone)]
pub struct RoleStore {
    roles: sled::Tree,
}

fn key(user_guid: &str, target_guid: &str, role: Role) -> String {
    format!("{user_guid}/{target_guid}/{role}")
}

impl RoleStore {
    pub(super) fn open(db: &sled::Db) -> Result<RoleStore> {
        Ok(RoleStore {
            roles: db.open_tree("roles")?,
        })
    }

    /// Gives the role; true when it was not held yet.
    pub fn grant(&self, r: &RoleRecord) -> Result<bool> {
        let old = self.roles.insert(
            key(&r.user_guid, &r.target_guid, r.role),
            serde_json::to_vec(r)?,
        )?;
        self.roles.flush()?;
        Ok(old.is_none())
    }

    /// Takes the role away; true when it was held.
    pub fn revoke(&self, user_guid: &str, target_guid: &str, role: Role) -> Result<bool> {
        let old = self.roles.remove(key(user_guid, target_guid, role))?;
        self.roles.flush()?;
        Ok(old.is_some())
    }

    /// Every role the user holds, anywhere.
    pub fn of_user(&self, user_guid: &str) -> Result<Vec<RoleRecord>> {
        let mut out = Vec::new();
        for item in self.roles.scan_prefix(format!("{user_guid}/")) {
            out.push(serde_json::from_slice(&item?.1)?);
        }
        Ok(out)
    }

    /// Every role held in the org or space `target_guid`, by user name then role.
    pub fn in_target(&self, target_guid: &str) -> Result<Vec<RoleRecord>> {
        let mut out: Vec<RoleRecord> = Vec::new();
        for item in self.roles.iter() {
            let r: RoleRecord = serde_json::from_slice(&item?.1)?;
            if r.target_guid == target_guid {
                out.push(r);
            }
        }
        out.sort_by(|a, b| (&a.user_name, a.role).cmp(&(&b.user_name, b.role)));
        Ok(out)
    }

    /// Deletes every role held in any of `targets` (an org and its spaces, or one space).
    pub fn delete_in(&self, targets: &[&str]) -> Result<usize> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.roles.iter() {
            let (k, v) = item?;
            let r: RoleRecord = serde_json::from_slice(&v)?;
            if targets.contains(&r.target_guid.as_str()) {
                batch.remove(k);
                n += 1;
            }
        }
        self.roles.apply_batch(batch)?;
        self.roles.flush()?;
        Ok(n)
    }

    /// Deletes every role of the user.
    pub fn delete_user(&self, user_guid: &str) -> Result<usize> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.roles.scan_prefix(format!("{user_guid}/")) {
            batch.remove(item?.0);
            n += 1;
        }
        self.roles.apply_batch(batch)?;
        self.roles.flush()?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(user: &str, target: &str, role: Role) -> RoleRecord {
        RoleRecord {
            user_guid: format!("g-{user}"),
            user_name: user.into(),
            target_guid: target.into(),
            role,
        }
    }

    #[test]
    fn roles_are_granted_revoked_listed_and_deleted_with_their_user_or_target() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("db")).unwrap();
        let roles = store.roles().unwrap();
        assert!(roles
            .grant(&rec("bob", "space1", Role::SpaceDeveloper))
            .unwrap());
        assert!(!roles
            .grant(&rec("bob", "space1", Role::SpaceDeveloper))
            .unwrap());
        roles.grant(&rec("bob", "org1", Role::OrgUser)).unwrap();
        roles
            .grant(&rec("alice", "space1", Role::SpaceAuditor))
            .unwrap();
        roles
            .grant(&rec("alice", "space2", Role::SpaceManager))
            .unwrap();
        // A guid that is a prefix of another's is not mixed up with it.
        roles
            .grant(&rec("bo", "space1", Role::SpaceAuditor))
            .unwrap();

        let bob: Vec<Role> = roles
            .of_user("g-bob")
            .unwrap()
            .iter()
            .map(|r| r.role)
            .collect();
        assert_eq!(bob.len(), 2, "{bob:?}");
        let in1: Vec<(String, Role)> = roles
            .in_target("space1")
            .unwrap()
            .into_iter()
            .map(|r| (r.user_name, r.role))
            .collect();
        assert_eq!(
            in1,
            [
                ("alice".into(), Role::SpaceAuditor),
                ("bo".into(), Role::SpaceAuditor),
                ("bob".into(), Role::SpaceDeveloper)
            ]
        );
        assert!(roles
            .revoke("g-bob", "space1", Role::SpaceDeveloper)
            .unwrap());
        assert!(!roles
            .revoke("g-bob", "space1", Role::SpaceDeveloper)
            .unwrap());
        assert_eq!(roles.delete_in(&["space1"]).unwrap(), 2);
        assert_eq!(roles.delete_user("g-alice").unwrap(), 1);
        let left: Vec<RoleRecord> = ["g-bob", "g-alice", "g-bo"]
            .iter()
            .flat_map(|u| roles.of_user(u).unwrap())
            .collect();
        assert_eq!(left, [rec("bob", "org1", Role::OrgUser)]);
        // On disk: a reopened store has the same.
        drop(roles);
        drop(store);
        let store = crate::store::tests::reopen(&dir.path().join("db"));
        assert_eq!(store.roles().unwrap().of_user("g-bob").unwrap().len(), 1);
    }
}

//! Role assignments: the `roles` tree, `<user guid>/<org or space guid>/<role>` → [`RoleRecord`]
//! (JSON), so one user's roles are one prefix scan (every authorized request reads them).
//!
//! Invariants: an org role names an org, a space role a space (checked by the caller before the
//! write); deleting a user, org or space deletes the roles that name it.

use pier_api::Role;
use serde::{Deserialize, Serialize};

use super::Store;
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRecord {
    pub user_guid: String,
    /// The org's guid for an org role, the space's for a space role.
    pub target_guid: String,
    pub role: Role,
}

fn key(user_guid: &str, target_guid: &str, role: Role) -> String {
    format!("{user_guid}/{target_guid}/{role}")
}

impl Store {
    /// Every role `user_guid` holds.
    pub fn roles_of(&self, user_guid: &str) -> Result<Vec<RoleRecord>> {
        let mut out = Vec::new();
        for item in self.roles.scan_prefix(format!("{user_guid}/")) {
            out.push(serde_json::from_slice(&item?.1)?);
        }
        Ok(out)
    }

    /// Every role held in the org or space `target_guid`.
    pub fn roles_in(&self, target_guid: &str) -> Result<Vec<RoleRecord>> {
        let mut out = Vec::new();
        for item in self.roles.iter() {
            let r: RoleRecord = serde_json::from_slice(&item?.1)?;
            if r.target_guid == target_guid {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Gives the role; true when it was not held before.
    pub fn put_role(&self, r: &RoleRecord) -> Result<bool> {
        let old = self.roles.insert(
            key(&r.user_guid, &r.target_guid, r.role),
            serde_json::to_vec(r)?,
        )?;
        self.changes.bump();
        self.flush()?;
        Ok(old.is_none())
    }

    /// Takes the role away; true when it was held.
    pub fn delete_role(&self, r: &RoleRecord) -> Result<bool> {
        let old = self
            .roles
            .remove(key(&r.user_guid, &r.target_guid, r.role))?;
        self.changes.bump();
        self.flush()?;
        Ok(old.is_some())
    }

    /// Deletes every role of the user, or in the org or space, `guid` names.
    pub fn delete_roles_naming(&self, guid: &str) -> Result<()> {
        for item in self.roles.iter() {
            let (k, v) = item?;
            let r: RoleRecord = serde_json::from_slice(&v)?;
            if r.user_guid == guid || r.target_guid == guid {
                self.roles.remove(k)?;
            }
        }
        self.changes.bump();
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_found_by_user_and_by_target_and_go_with_either() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let dev = |user: &str, space: &str| RoleRecord {
            user_guid: user.into(),
            target_guid: space.into(),
            role: Role::SpaceDeveloper,
        };
        assert!(s.put_role(&dev("alice", "s1")).unwrap());
        assert!(!s.put_role(&dev("alice", "s1")).unwrap(), "held already");
        s.put_role(&dev("alice", "s2")).unwrap();
        s.put_role(&dev("bob", "s1")).unwrap();
        assert_eq!(s.roles_of("alice").unwrap().len(), 2);
        assert_eq!(s.roles_in("s1").unwrap().len(), 2);
        assert!(s.delete_role(&dev("bob", "s1")).unwrap());
        assert!(!s.delete_role(&dev("bob", "s1")).unwrap(), "not held");
        s.delete_roles_naming("s2").unwrap();
        assert_eq!(s.roles_of("alice").unwrap(), vec![dev("alice", "s1")]);
        s.delete_roles_naming("alice").unwrap();
        assert!(s.roles_of("alice").unwrap().is_empty());
    }
}

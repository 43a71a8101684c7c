//! Giving and taking roles, and what a user's roles let them see ([`Grants`]). What each role may
//! do is decided in [`crate::policy`]; this module keeps the records consistent:
//! - an org role is given in an org, a space role in a space (the other is refused, naming the
//!   command to use);
//! - a space role makes its holder an `OrgUser` of the org when they hold no org role there (a
//!   user must be in an org to hold a role in its spaces);
//! - the last org role of a user who still holds roles in the org's spaces is not taken away
//!   (409, naming the spaces), so no one holds a space role outside their org.
//!
//! Roles are deleted with their user (`http/users.rs`), their space and their org (`tenancy`).
//! Changes are serialized by one lock, so the checks above and the writes they guard do not race.

use std::collections::BTreeMap;

use pier_api::{ErrorCode, Role, RoleHolder};

use crate::error::{Error, Result};
use crate::events::Actor;
use crate::policy::Standing;
use crate::store::{OrgRecord, RoleRecord, RoleStore, SpaceRecord, Store};
use crate::users::Users;

/// Every role one user holds, to decide what they see.
#[derive(Debug, Clone, Default)]
pub struct Grants(Vec<RoleRecord>);

impl Grants {
    fn roles_in(&self, target_guid: &str) -> Vec<Role> {
        self.0
            .iter()
            .filter(|r| r.target_guid == target_guid)
            .map(|r| r.role)
            .collect()
    }

    /// The user's standing where a request acts: in `org`, and in `space` if given.
    pub fn standing(&self, org: Option<&str>, space: Option<&str>) -> Standing {
        Standing {
            org_roles: org.map(|o| self.roles_in(o)).unwrap_or_default(),
            space_roles: space.map(|s| self.roles_in(s)).unwrap_or_default(),
            developer_somewhere: self.0.iter().any(|r| r.role == Role::SpaceDeveloper),
            own: false,
        }
    }

    pub fn sees_org(&self, org: &OrgRecord) -> bool {
        self.standing(Some(&org.guid), None).sees_org()
    }

    pub fn sees_space(&self, space: &SpaceRecord) -> bool {
        self.standing(Some(&space.org_guid), Some(&space.guid))
            .sees_space()
    }
}

pub struct Roles {
    store: Store,
    roles: RoleStore,
    lock: std::sync::Mutex<()>,
}

/// Where a role is given: an org, or a space of it.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    Org(&'a OrgRecord),
    Space(&'a OrgRecord, &'a SpaceRecord),
}

impl Target<'_> {
    fn guid(&self) -> &str {
        match self {
            Target::Org(o) => &o.guid,
            Target::Space(_, s) => &s.guid,
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Org(o) => format!("org {}", o.name),
            Target::Space(o, s) => format!("space {} of org {}", s.name, o.name),
        }
    }
}

impl Roles {
    pub fn new(store: Store) -> Result<Roles> {
        Ok(Roles {
            roles: store.roles()?,
            store,
            lock: std::sync::Mutex::new(()),
        })
    }

    /// Every role of the user with guid `user_guid`.
    pub fn grants(&self, user_guid: &str) -> Result<Grants> {
        Ok(Grants(self.roles.of_user(user_guid)?))
    }

    /// The users holding roles in the org or space, by name, each with their roles there.
    pub fn holders(&self, at: Target<'_>) -> Result<Vec<RoleHolder>> {
        let mut by_user: BTreeMap<String, Vec<Role>> = BTreeMap::new();
        for r in self.roles.in_target(at.guid())? {
            by_user.entry(r.user_name).or_default().push(r.role);
        }
        Ok(by_user
            .into_iter()
            .map(|(user, roles)| RoleHolder { user, roles })
            .collect())
    }

    fn check_kind(at: Target<'_>, role: Role) -> Result<()> {
        match (at, role.is_org_role()) {
            (Target::Org(_), true) | (Target::Space(..), false) => Ok(()),
            (Target::Org(_), false) => Err(Error::bad_request(format!(
                "{role} is a space role: give it in a space (pier set-space-role USER ORG SPACE \
                 {role})"
            ))),
            (Target::Space(..), true) => Err(Error::bad_request(format!(
                "{role} is an org role: give it in an org (pier set-org-role USER ORG {role})"
            ))),
        }
    }

    /// Gives `role` to the user in `at`; giving a role already held changes nothing.
    pub fn set(
        &self,
        users: &Users,
        user_name: &str,
        at: Target<'_>,
        role: Role,
        by: &Actor,
    ) -> Result<()> {
        Self::check_kind(at, role)?;
        let user = users.user(user_name)?;
        let _l = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let record = |target_guid: &str, role| RoleRecord {
            user_guid: user.guid.clone(),
            user_name: user.name.clone(),
            target_guid: target_guid.to_string(),
            role,
        };
        if let Target::Space(org, _) = at {
            let held = self.roles.of_user(&user.guid)?;
            if !held.iter().any(|r| r.target_guid == org.guid) {
                self.roles.grant(&record(&org.guid, Role::OrgUser))?;
            }
        }
        if self.roles.grant(&record(at.guid(), role))? {
            tracing::info!(user = %user.name, %role, at = %at.describe(), by = by.as_str(), "role given");
        }
        Ok(())
    }

    /// Takes `role` away from the user in `at`; taking a role not held changes nothing.
    pub fn unset(
        &self,
        users: &Users,
        user_name: &str,
        at: Target<'_>,
        role: Role,
        by: &Actor,
    ) -> Result<()> {
        Self::check_kind(at, role)?;
        let user = users.user(user_name)?;
        let _l = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Target::Org(org) = at {
            let held = self.roles.of_user(&user.guid)?;
            let other_org_roles = held
                .iter()
                .any(|r| r.target_guid == org.guid && r.role != role);
            let spaces: Vec<String> = self
                .store
                .spaces_of(&org.guid)?
                .into_iter()
                .filter(|s| held.iter().any(|r| r.target_guid == s.guid))
                .map(|s| s.name)
                .collect();
            let holds_it = held
                .iter()
                .any(|r| r.target_guid == org.guid && r.role == role);
            if holds_it && !other_org_roles && !spaces.is_empty() {
                return Err(Error::api(
                    ErrorCode::Conflict,
                    format!(
                        "{} holds roles in spaces of org {} ({}): take those away first \
                         (pier unset-space-role); a user must be in an org to hold roles in its \
                         spaces",
                        user.name,
                        org.name,
                        spaces.join(", ")
                    ),
                ));
            }
        }
        if self.roles.revoke(&user.guid, at.guid(), role)? {
            tracing::info!(user = %user.name, %role, at = %at.describe(), by = by.as_str(), "role taken away");
        }
        Ok(())
    }

    /// Deletes every role of a deleted user.
    pub fn forget_user(&self, user_guid: &str) -> Result<()> {
        let _l = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.roles.delete_user(user_guid)?;
        Ok(())
    }
}

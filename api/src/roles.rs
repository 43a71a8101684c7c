//! Roles, as Cloud Foundry's: org roles (`OrgUser`, `OrgManager`, `OrgAuditor`) held in one org,
//! space roles (`SpaceManager`, `SpaceDeveloper`, `SpaceAuditor`) held in one space. The platform
//! admin is not a role here: it is the admin token. A user must be in an org (hold any org role)
//! to hold a role in one of its spaces; giving a space role makes the user an `OrgUser` of the org
//! when they are not in it yet, as `cf set-space-role` does.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Member of the org: sees the org's name and nothing in it.
    OrgUser,
    /// Manages the org: creates and deletes its spaces, gives org and space roles, sees (but does
    /// not change) every space's apps.
    OrgManager,
    /// Reads the org: its spaces, users and quota; not its apps.
    OrgAuditor,
    /// Manages the space: gives its roles; reads its apps, events and logs (no env values).
    SpaceManager,
    /// Works in the space: pushes, scales, starts, stops, deletes apps, reads everything.
    SpaceDeveloper,
    /// Reads the space's apps, events and logs; changes nothing and sees no env values.
    SpaceAuditor,
}

/// Every role, org roles first.
pub const ALL_ROLES: [Role; 6] = [
    Role::OrgUser,
    Role::OrgManager,
    Role::OrgAuditor,
    Role::SpaceManager,
    Role::SpaceDeveloper,
    Role::SpaceAuditor,
];

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::OrgUser => "OrgUser",
            Role::OrgManager => "OrgManager",
            Role::OrgAuditor => "OrgAuditor",
            Role::SpaceManager => "SpaceManager",
            Role::SpaceDeveloper => "SpaceDeveloper",
            Role::SpaceAuditor => "SpaceAuditor",
        }
    }

    /// Whether it is held in an org (else in a space).
    pub fn is_org_role(self) -> bool {
        matches!(self, Role::OrgUser | Role::OrgManager | Role::OrgAuditor)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown role name; its message lists the known ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRole(pub String);

impl fmt::Display for UnknownRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known: Vec<&str> = ALL_ROLES.iter().map(|r| r.as_str()).collect();
        write!(
            f,
            "unknown role {:?}; roles are {}",
            self.0,
            known.join(", ")
        )
    }
}

impl std::error::Error for UnknownRole {}

impl FromStr for Role {
    type Err = UnknownRole;

    /// The exact names, also in any case (`spacedeveloper`), as the cf CLI accepts them.
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        ALL_ROLES
            .iter()
            .copied()
            .find(|r| r.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// One user and the roles they hold in an org or a space (`GET /v1/orgs/{org}/users`,
/// `GET /v1/orgs/{org}/spaces/{space}/users`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleHolder {
    pub user: String,
    pub roles: Vec<Role>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_in_any_case_and_unknown_ones_list_the_known() {
        assert_eq!("SpaceDeveloper".parse::<Role>(), Ok(Role::SpaceDeveloper));
        assert_eq!("orgmanager".parse::<Role>(), Ok(Role::OrgManager));
        let e = "Owner".parse::<Role>().unwrap_err().to_string();
        assert!(e.contains("\"Owner\"") && e.contains("SpaceAuditor"), "{e}");
        for r in ALL_ROLES {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
    }
}

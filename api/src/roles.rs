//! Roles, as Cloud Foundry's: a user holds roles in orgs and spaces; the platform admin (the
//! admin token) holds every right. What each role may do is decided in one place, the
//! controller's policy table (`docs/roles.md` is generated from it).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    OrgManager,
    OrgAuditor,
    SpaceManager,
    SpaceDeveloper,
    SpaceAuditor,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::OrgManager,
        Role::OrgAuditor,
        Role::SpaceManager,
        Role::SpaceDeveloper,
        Role::SpaceAuditor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::OrgManager => "OrgManager",
            Role::OrgAuditor => "OrgAuditor",
            Role::SpaceManager => "SpaceManager",
            Role::SpaceDeveloper => "SpaceDeveloper",
            Role::SpaceAuditor => "SpaceAuditor",
        }
    }

    /// Held in an org (else in a space).
    pub fn is_org_role(self) -> bool {
        matches!(self, Role::OrgManager | Role::OrgAuditor)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown role {s:?}: the roles are OrgManager, OrgAuditor (in an org) and \
                     SpaceManager, SpaceDeveloper, SpaceAuditor (in a space)"
                )
            })
    }
}

/// `GET /v1/orgs/{org}/users` and `GET /v1/orgs/{org}/spaces/{space}/users`: each user holding a
/// role there, with those roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleHolder {
    pub user: String,
    pub roles: Vec<Role>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_by_name_in_any_case() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert_eq!(r.as_str().to_lowercase().parse::<Role>(), Ok(r));
        }
        let err = "Admin".parse::<Role>().unwrap_err();
        assert!(err.contains("unknown role \"Admin\""), "{err}");
    }
}

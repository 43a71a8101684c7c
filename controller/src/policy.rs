//! Who may do what: the one table every API endpoint is looked up in ([`ENDPOINTS`]), what each
//! [`Action`] needs, and the decision for one caller ([`Standing::decide`]). The authorization
//! middleware (`http/authorize.rs`) finds each request's endpoint here by its route pattern and
//! method, and an endpoint missing from the table is refused to everyone (admin too), so a new
//! endpoint cannot slip past the policy; a test checks that every route the HTTP modules declare
//! is in the table. `docs/roles.md` is generated from it ([`render_docs`]) and checked by a test.
//!
//! The rules, as Cloud Foundry's:
//! - The platform admin (the admin token) may do everything; the router token only what a
//!   standalone router needs.
//! - An org action needs one of its roles in that org; a space action one of its roles in that
//!   space or an org role (`OrgManager`) that reaches every space of the org.
//! - What a user cannot see answers 404 with the same message as what does not exist, so names do
//!   not leak across orgs and spaces: an org is seen by its members (any org role), a space by
//!   holders of a role in it and by its org's managers. What a user sees but may not do is 403.
//! - Env values are seen by the platform admin and the space's developers only.

use pier_api::Role;

/// What an endpoint does, as far as permission goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// No token needed (`/v1/info`, the OAuth endpoints).
    Public,
    /// Any logged-in user: who they are.
    WhoAmI,
    /// A user's own password (the admin: anyone's).
    ChangePassword,
    ManageUsers,
    /// The platform's audit log (`GET /v1/audit`).
    ReadAudit,
    /// The orgs list: anyone, filtered to the orgs they are in.
    ListOrgs,
    CreateOrg,
    ReadQuotas,
    ManageQuotas,
    ReadBuildpacks,
    ManageBuildpacks,
    /// Uploading a package: a developer of some space (the package is of no space until built).
    UploadPackage,
    ReadRouteTable,
    PostRouterLogs,
    ReadOrg,
    DeleteOrg,
    AssignOrgQuota,
    /// An org's spaces: its members, filtered to the spaces they see.
    ListSpaces,
    CreateSpace,
    ReadOrgUsers,
    ManageOrgRoles,
    ReadSpace,
    DeleteSpace,
    AssignSpaceQuota,
    ReadSpaceUsers,
    ManageSpaceRoles,
    /// An app's state, events, deployments, revisions, routes.
    ReadApps,
    /// An app's logs and log stream.
    ReadLogs,
    /// Pushing, staging, scaling, starting, stopping, deploying, routes, deleting.
    ChangeApps,
    /// Platform-wide service brokers and access to their plans.
    ManageServiceBrokers,
    /// A space's own (space-scoped) service brokers.
    ManageSpaceBrokers,
}

/// Where an action applies, which decides whose roles count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Public,
    Platform,
    Org,
    Space,
}

const ORG_MEMBERS: &[Role] = &[Role::OrgUser, Role::OrgManager, Role::OrgAuditor];
const SPACE_READERS: &[Role] = &[
    Role::OrgManager,
    Role::SpaceManager,
    Role::SpaceDeveloper,
    Role::SpaceAuditor,
];

impl Action {
    pub fn level(self) -> Level {
        use Action::*;
        match self {
            Public => Level::Public,
            WhoAmI | ChangePassword | ManageUsers | ReadAudit | ListOrgs | CreateOrg
            | ReadQuotas | ManageQuotas | ReadBuildpacks | ManageBuildpacks | UploadPackage
            | ReadRouteTable | PostRouterLogs | ManageServiceBrokers => Level::Platform,
            ReadOrg | DeleteOrg | AssignOrgQuota | ListSpaces | CreateSpace | ReadOrgUsers
            | ManageOrgRoles => Level::Org,
            ReadSpace | DeleteSpace | AssignSpaceQuota | ReadSpaceUsers | ManageSpaceRoles
            | ReadApps | ReadLogs | ChangeApps | ManageSpaceBrokers => Level::Space,
        }
    }

    /// The roles that allow an org or space action; empty: the platform admin only.
    pub fn roles(self) -> &'static [Role] {
        use Action::*;
        match self {
            ReadOrg | ListSpaces | ReadOrgUsers => ORG_MEMBERS,
            CreateSpace | ManageOrgRoles | DeleteSpace | AssignSpaceQuota => &[Role::OrgManager],
            ReadSpace | ReadSpaceUsers | ReadApps | ReadLogs => SPACE_READERS,
            ManageSpaceRoles => &[Role::OrgManager, Role::SpaceManager],
            ChangeApps | ManageSpaceBrokers => &[Role::SpaceDeveloper],
            // Platform actions are decided by `user_may`; these are the admin's alone.
            DeleteOrg | AssignOrgQuota => &[],
            Public | WhoAmI | ChangePassword | ManageUsers | ReadAudit | ListOrgs | CreateOrg
            | ReadQuotas | ManageQuotas | ReadBuildpacks | ManageBuildpacks | UploadPackage
            | ReadRouteTable | PostRouterLogs | ManageServiceBrokers => &[],
        }
    }

    /// For platform actions: who besides the admin may.
    fn platform_rule(self) -> PlatformRule {
        use Action::*;
        match self {
            Public => PlatformRule::Anyone,
            WhoAmI | ListOrgs | ReadQuotas | ReadBuildpacks => PlatformRule::AnyUser,
            ChangePassword => PlatformRule::Themselves,
            UploadPackage => PlatformRule::AnyDeveloper,
            ReadRouteTable | PostRouterLogs => PlatformRule::Router,
            _ => PlatformRule::AdminOnly,
        }
    }

    /// Who may do a platform action, in words (the docs' last column).
    pub fn describe(self) -> &'static str {
        use Action::*;
        match self {
            Public => "anyone, no token",
            WhoAmI | ListOrgs | ReadQuotas | ReadBuildpacks => "any logged-in user",
            ChangePassword => "the user themselves (the admin: anyone's)",
            UploadPackage => "a SpaceDeveloper of any space",
            ReadRouteTable | PostRouterLogs => "the router token",
            ManageUsers | ReadAudit | CreateOrg | ManageQuotas | ManageBuildpacks | DeleteOrg
            | AssignOrgQuota | ManageServiceBrokers => "the platform admin only",
            _ => "",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlatformRule {
    Anyone,
    AnyUser,
    Themselves,
    AnyDeveloper,
    Router,
    AdminOnly,
}

/// One endpoint: its method, its route pattern (as axum's `MatchedPath` gives it) and action.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub action: Action,
}

const fn ep(method: &'static str, path: &'static str, action: Action) -> Endpoint {
    Endpoint {
        method,
        path,
        action,
    }
}

/// Every endpoint of the API. Space endpoints under `/v1/apps`, `/v1/route-mappings`,
/// `/v1/service-instances`, `/v1/marketplace` and `/v1/space-service-brokers` act in the space of
/// `?org=&space=`; the others name their org and space in the path.
pub const ENDPOINTS: &[Endpoint] = {
    use Action::*;
    &[
        ep("GET", "/v1/info", Public),
        ep("POST", "/oauth/token", Public),
        ep("POST", "/oauth/revoke", Public),
        ep("GET", "/v1/whoami", WhoAmI),
        ep("PUT", "/v1/users/{name}/password", ChangePassword),
        ep("GET", "/v1/users", ManageUsers),
        ep("POST", "/v1/users", ManageUsers),
        ep("DELETE", "/v1/users/{name}", ManageUsers),
        ep("GET", "/v1/audit", ReadAudit),
        ep("GET", "/v1/orgs", ListOrgs),
        ep("POST", "/v1/orgs", CreateOrg),
        ep("GET", "/v1/quotas", ReadQuotas),
        ep("GET", "/v1/quotas/{name}", ReadQuotas),
        ep("POST", "/v1/quotas", ManageQuotas),
        ep("PUT", "/v1/quotas/{name}", ManageQuotas),
        ep("DELETE", "/v1/quotas/{name}", ManageQuotas),
        ep("GET", "/v1/buildpacks", ReadBuildpacks),
        ep("POST", "/v1/buildpacks", ManageBuildpacks),
        ep("PUT", "/v1/buildpacks/{name}", ManageBuildpacks),
        ep("DELETE", "/v1/buildpacks/{name}", ManageBuildpacks),
        ep("POST", "/v1/packages", UploadPackage),
        ep("GET", "/v1/routes", ReadRouteTable),
        ep("POST", "/v1/router/logs", PostRouterLogs),
        ep("GET", "/v1/orgs/{org}", ReadOrg),
        ep("DELETE", "/v1/orgs/{org}", DeleteOrg),
        ep("PUT", "/v1/orgs/{org}/quota", AssignOrgQuota),
        ep("GET", "/v1/orgs/{org}/spaces", ListSpaces),
        ep("POST", "/v1/orgs/{org}/spaces", CreateSpace),
        ep("GET", "/v1/orgs/{org}/users", ReadOrgUsers),
        ep(
            "PUT",
            "/v1/orgs/{org}/users/{user}/roles/{role}",
            ManageOrgRoles,
        ),
        ep(
            "DELETE",
            "/v1/orgs/{org}/users/{user}/roles/{role}",
            ManageOrgRoles,
        ),
        ep("GET", "/v1/orgs/{org}/spaces/{space}", ReadSpace),
        ep("DELETE", "/v1/orgs/{org}/spaces/{space}", DeleteSpace),
        ep(
            "PUT",
            "/v1/orgs/{org}/spaces/{space}/quota",
            AssignSpaceQuota,
        ),
        ep("GET", "/v1/orgs/{org}/spaces/{space}/users", ReadSpaceUsers),
        ep(
            "PUT",
            "/v1/orgs/{org}/spaces/{space}/users/{user}/roles/{role}",
            ManageSpaceRoles,
        ),
        ep(
            "DELETE",
            "/v1/orgs/{org}/spaces/{space}/users/{user}/roles/{role}",
            ManageSpaceRoles,
        ),
        ep("GET", "/v1/apps", ReadApps),
        ep("GET", "/v1/apps/{name}", ReadApps),
        ep("GET", "/v1/apps/{name}/events", ReadApps),
        ep("GET", "/v1/apps/{name}/env", ReadApps),
        ep("GET", "/v1/apps/{name}/deployments", ReadApps),
        ep("GET", "/v1/apps/{name}/revisions", ReadApps),
        ep("GET", "/v1/route-mappings", ReadApps),
        ep("GET", "/v1/service-instances", ReadApps),
        ep("GET", "/v1/service-instances/{name}", ReadApps),
        ep("GET", "/v1/apps/{name}/logs", ReadLogs),
        ep("GET", "/v1/apps/{name}/logs/stream", ReadLogs),
        ep("PUT", "/v1/apps/{name}", ChangeApps),
        ep("PATCH", "/v1/apps/{name}/env", ChangeApps),
        ep("DELETE", "/v1/apps/{name}", ChangeApps),
        ep("POST", "/v1/apps/{name}/builds", ChangeApps),
        ep("POST", "/v1/apps/{name}/actions/{action}", ChangeApps),
        ep("PUT", "/v1/apps/{name}/processes/{process}", ChangeApps),
        ep("POST", "/v1/apps/{name}/deployments", ChangeApps),
        ep(
            "POST",
            "/v1/apps/{name}/deployments/{id}/{action}",
            ChangeApps,
        ),
        ep("POST", "/v1/apps/{name}/routes", ChangeApps),
        ep("DELETE", "/v1/apps/{name}/routes", ChangeApps),
        ep("DELETE", "/v1/apps/{name}/cache", ChangeApps),
        ep("POST", "/v1/service-instances", ChangeApps),
        ep("PATCH", "/v1/service-instances/{name}", ChangeApps),
        ep("DELETE", "/v1/service-instances/{name}", ChangeApps),
        ep("PUT", "/v1/apps/{name}/bindings/{service}", ChangeApps),
        ep("DELETE", "/v1/apps/{name}/bindings/{service}", ChangeApps),
        ep("GET", "/v1/service-instances/{name}/keys", ReadApps),
        ep("PUT", "/v1/service-instances/{name}/keys/{key}", ChangeApps),
        ep(
            "DELETE",
            "/v1/service-instances/{name}/keys/{key}",
            ChangeApps,
        ),
        ep("GET", "/v1/marketplace", ReadApps),
        ep("GET", "/v1/service-brokers", ManageServiceBrokers),
        ep("POST", "/v1/service-brokers", ManageServiceBrokers),
        ep("PUT", "/v1/service-brokers/{name}", ManageServiceBrokers),
        ep("DELETE", "/v1/service-brokers/{name}", ManageServiceBrokers),
        ep("POST", "/v1/service-access", ManageServiceBrokers),
        ep("GET", "/v1/space-service-brokers", ReadApps),
        ep("POST", "/v1/space-service-brokers", ManageSpaceBrokers),
        ep(
            "PUT",
            "/v1/space-service-brokers/{name}",
            ManageSpaceBrokers,
        ),
        ep(
            "DELETE",
            "/v1/space-service-brokers/{name}",
            ManageSpaceBrokers,
        ),
    ]
};

/// The endpoint of a request, by method and route pattern.
pub fn endpoint(method: &str, path: &str) -> Option<&'static Endpoint> {
    ENDPOINTS
        .iter()
        .find(|e| e.method == method && e.path == path)
}

/// Whether the router token may call `method path` (a request path, not a pattern: its two
/// endpoints have no parameters). The token check refuses it anything else before routing, so it
/// gets 403 even where no route matches.
pub fn router_may(method: &str, path: &str) -> bool {
    ENDPOINTS.iter().any(|e| {
        e.action.platform_rule() == PlatformRule::Router && e.method == method && e.path == path
    })
}

/// What a request decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// 404, as if it did not exist.
    Hidden,
    /// 403: seen, not allowed.
    Forbidden,
}

/// Who is asking, as the policy sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Router,
    User,
}

/// A caller's roles where one request acts: in its org and (for space actions) its space, and
/// whether they are a developer of any space (for package uploads). `own` says whether the user
/// named in the path is the caller (for passwords).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    pub org_roles: Vec<Role>,
    pub space_roles: Vec<Role>,
    pub developer_somewhere: bool,
    pub own: bool,
}

impl Standing {
    /// An org is seen by its members; a space role makes its holder a member.
    pub fn sees_org(&self) -> bool {
        !self.org_roles.is_empty() || !self.space_roles.is_empty()
    }

    /// A space is seen by holders of a role in it and by its org's managers.
    pub fn sees_space(&self) -> bool {
        !self.space_roles.is_empty() || self.org_roles.contains(&Role::OrgManager)
    }

    /// Whether env values are shown: to the space's developers.
    pub fn sees_env(&self) -> bool {
        self.space_roles.contains(&Role::SpaceDeveloper)
    }

    fn holds_any(&self, roles: &[Role]) -> bool {
        roles
            .iter()
            .any(|r| self.org_roles.contains(r) || self.space_roles.contains(r))
    }

    pub fn decide(&self, caller: Caller, action: Action) -> Decision {
        let rule = action.platform_rule();
        match (caller, action.level()) {
            (_, Level::Public) | (Caller::Admin, _) => Decision::Allow,
            (Caller::Router, _) if rule == PlatformRule::Router => Decision::Allow,
            (Caller::Router, _) => Decision::Forbidden,
            (Caller::User, Level::Platform) => {
                let ok = match rule {
                    PlatformRule::Anyone | PlatformRule::AnyUser => true,
                    PlatformRule::Themselves => self.own,
                    PlatformRule::AnyDeveloper => self.developer_somewhere,
                    PlatformRule::Router | PlatformRule::AdminOnly => false,
                };
                if ok {
                    Decision::Allow
                } else {
                    Decision::Forbidden
                }
            }
            (Caller::User, level) => {
                if !self.sees_org() || (level == Level::Space && !self.sees_space()) {
                    Decision::Hidden
                } else if self.holds_any(action.roles()) {
                    Decision::Allow
                } else {
                    Decision::Forbidden
                }
            }
        }
    }
}

/// Who may, for the docs: a role's mark in the table.
fn mark(action: Action, role: Role) -> &'static str {
    let mut s = Standing::default();
    if role.is_org_role() {
        s.org_roles.push(role);
    } else {
        s.space_roles.push(role);
        s.org_roles.push(Role::OrgUser);
    }
    match s.decide(Caller::User, action) {
        Decision::Allow => "yes",
        Decision::Forbidden => "403",
        Decision::Hidden => "404",
    }
}

/// The generated part of `docs/roles.md`: one row per endpoint.
pub fn render_docs() -> String {
    let roles = pier_api::ALL_ROLES;
    let mut out = String::from("| method | path |");
    for r in roles {
        out.push_str(&format!(" {r} |"));
    }
    out.push_str(" others |\n|---|---|");
    for _ in roles {
        out.push_str("---|");
    }
    out.push_str("---|\n");
    for e in ENDPOINTS {
        out.push_str(&format!("| {} | `{}` |", e.method, e.path));
        let level = e.action.level();
        for r in roles {
            let m = if matches!(level, Level::Org | Level::Space) {
                mark(e.action, r)
            } else {
                ""
            };
            out.push_str(&format!(" {m} |"));
        }
        out.push_str(&format!(" {} |\n", e.action.describe()));
    }
    out
}

#[cfg(test)]
mod tests;

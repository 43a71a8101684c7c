//! Who may do what: the one place that decides. Every authenticated endpoint is a row of
//! [`ENDPOINTS`] naming its [`Action`]; [`allows`] says which roles may take each action; the
//! API's authorization layer (`http/authorize.rs`) looks the request up here and lets it through,
//! answers 404, or answers 403. `docs/roles.md` is generated from these tables (a test checks that
//! it is up to date).
//!
//! Rules:
//! - The platform admin (the admin token) may do everything. The router token may only read the
//!   route table and post access logs.
//! - A user sees an org when they hold any role in it or in one of its spaces, and a space when
//!   they hold a role in it or any role in its org. What a user cannot see answers 404 exactly as
//!   if it did not exist, so names do not leak across orgs and spaces; what they see but may not
//!   do answers 403 naming the role it needs.
//! - Auditors read and change nothing, and see env var names but not their values (only the admin
//!   and SpaceDevelopers see values).
//! - An endpoint missing from [`ENDPOINTS`] is refused to everyone but the admin (fail closed).

use pier_api::Role;

/// What an endpoint does, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Any logged-in user: who am I, my own password, the buildpack list.
    Anyone,
    /// The platform admin only: users, orgs' creation and deletion, buildpacks, quotas, audit.
    Admin,
    /// The router token (and the admin): the route table and access logs.
    Router,
    /// Upload a package: a SpaceDeveloper of any space.
    Upload,
    /// List the orgs (each user sees the ones visible to them).
    ListOrgs,
    /// Read an org: its spaces (those visible), its users.
    OrgRead,
    /// Manage an org: create and delete spaces, give and take org roles.
    OrgManage,
    /// Read a space's apps, their events, revisions, deployments, logs and routes.
    SpaceRead,
    /// Change a space's apps: push, stage, start, stop, scale, routes, delete.
    SpaceWrite,
    /// Give and take space roles.
    SpaceManage,
}

/// Where an action applies: the org and space it needs resolved first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Platform,
    Org,
    Space,
}

impl Action {
    pub fn level(self) -> Level {
        match self {
            Action::Anyone | Action::Admin | Action::Router | Action::Upload | Action::ListOrgs => {
                Level::Platform
            }
            Action::OrgRead | Action::OrgManage => Level::Org,
            Action::SpaceRead | Action::SpaceWrite | Action::SpaceManage => Level::Space,
        }
    }

    /// How the docs name it.
    pub fn describe(self) -> &'static str {
        match self {
            Action::Anyone => "any logged-in user",
            Action::Admin => "platform admin only",
            Action::Router => "router token (and admin)",
            Action::Upload => "SpaceDeveloper of any space",
            Action::ListOrgs => "any user (sees the orgs they are in)",
            Action::OrgRead => "org read",
            Action::OrgManage => "org manage",
            Action::SpaceRead => "space read",
            Action::SpaceWrite => "space write",
            Action::SpaceManage => "space manage",
        }
    }
}

/// Every authenticated endpoint: method, path as routed, action. `GET /v1/info`, `/oauth/token`
/// and `/oauth/revoke` need no token and are not here.
pub const ENDPOINTS: &[(&str, &str, Action)] = &[
    ("GET", "/v1/whoami", Action::Anyone),
    ("PUT", "/v1/users/{name}/password", Action::Anyone),
    ("GET", "/v1/buildpacks", Action::Anyone),
    ("GET", "/v1/users", Action::Admin),
    ("POST", "/v1/users", Action::Admin),
    ("DELETE", "/v1/users/{name}", Action::Admin),
    ("POST", "/v1/buildpacks", Action::Admin),
    ("PUT", "/v1/buildpacks/{name}", Action::Admin),
    ("DELETE", "/v1/buildpacks/{name}", Action::Admin),
    ("POST", "/v1/orgs", Action::Admin),
    ("DELETE", "/v1/orgs/{org}", Action::Admin),
    ("GET", "/v1/routes", Action::Router),
    ("POST", "/v1/router/logs", Action::Router),
    ("POST", "/v1/packages", Action::Upload),
    ("GET", "/v1/orgs", Action::ListOrgs),
    ("GET", "/v1/orgs/{org}", Action::OrgRead),
    ("GET", "/v1/orgs/{org}/spaces", Action::OrgRead),
    ("GET", "/v1/orgs/{org}/users", Action::OrgRead),
    ("POST", "/v1/orgs/{org}/spaces", Action::OrgManage),
    ("DELETE", "/v1/orgs/{org}/spaces/{space}", Action::OrgManage),
    ("PUT", "/v1/orgs/{org}/users/{user}/roles/{role}", Action::OrgManage),
    ("DELETE", "/v1/orgs/{org}/users/{user}/roles/{role}", Action::OrgManage),
    ("GET", "/v1/orgs/{org}/spaces/{space}", Action::SpaceRead),
    ("GET", "/v1/orgs/{org}/spaces/{space}/users", Action::SpaceRead),
    ("PUT", "/v1/orgs/{org}/spaces/{space}/users/{user}/roles/{role}", Action::SpaceManage),
    ("DELETE", "/v1/orgs/{org}/spaces/{space}/users/{user}/roles/{role}", Action::SpaceManage),
    ("GET", "/v1/apps", Action::SpaceRead),
    ("GET", "/v1/apps/{name}", Action::SpaceRead),
    ("GET", "/v1/apps/{name}/events", Action::SpaceRead),
    ("GET", "/v1/apps/{name}/logs", Action::SpaceRead),
    ("GET", "/v1/apps/{name}/logs/stream", Action::SpaceRead),
    ("GET", "/v1/apps/{name}/deployments", Action::SpaceRead),
    ("GET", "/v1/apps/{name}/revisions", Action::SpaceRead),
    ("GET", "/v1/route-mappings", Action::SpaceRead),
    ("PUT", "/v1/apps/{name}", Action::SpaceWrite),
    ("DELETE", "/v1/apps/{name}", Action::SpaceWrite),
    ("POST", "/v1/apps/{name}/builds", Action::SpaceWrite),
    ("POST", "/v1/apps/{name}/actions/{action}", Action::SpaceWrite),
    ("PUT", "/v1/apps/{name}/processes/{process}", Action::SpaceWrite),
    ("POST", "/v1/apps/{name}/deployments", Action::SpaceWrite),
    ("POST", "/v1/apps/{name}/deployments/{id}/{action}", Action::SpaceWrite),
    ("POST", "/v1/apps/{name}/routes", Action::SpaceWrite),
    ("DELETE", "/v1/apps/{name}/routes", Action::SpaceWrite),
    ("DELETE", "/v1/apps/{name}/cache", Action::SpaceWrite),
];

/// The action of an endpoint, if the table has it.
pub fn action_of(method: &str, route: &str) -> Option<Action> {
    ENDPOINTS
        .iter()
        .find(|(m, r, _)| *m == method && *r == route)
        .map(|(_, _, a)| *a)
}

/// Whether `role` (held in the org or space the request acts in) allows `action`.
pub fn allows(role: Role, action: Action) -> bool {
    use Action::*;
    use Role::*;
    match action {
        OrgRead => true,
        OrgManage => role == OrgManager,
        SpaceRead => role != OrgAuditor,
        SpaceWrite => role == SpaceDeveloper,
        SpaceManage => matches!(role, OrgManager | SpaceManager),
        Anyone | ListOrgs => true,
        Upload => role == SpaceDeveloper,
        Admin | Router => false,
    }
}

/// Whether `role` sees env var values (the rest see names only).
pub fn sees_env_values(role: Role) -> bool {
    role == Role::SpaceDeveloper
}

/// The roles a user holds where a request acts: in its org, and in its space.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    pub org: Vec<Role>,
    pub space: Vec<Role>,
}

/// What the policy answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// As if it did not exist (the user may not see it).
    Hidden,
    /// Seen but not allowed; the roles that would allow it.
    Forbidden(Vec<Role>),
}

impl Standing {
    fn roles(&self) -> impl Iterator<Item = Role> + '_ {
        self.org.iter().chain(self.space.iter()).copied()
    }

    /// Sees the org: any role in it or in one of its spaces (the caller adds the latter to `org`
    /// when it resolves an org-level request).
    pub fn sees_org(&self) -> bool {
        self.roles().next().is_some()
    }

    /// The decision for a user's request taking `action`, `self` being what they hold there.
    pub fn decide(&self, action: Action) -> Decision {
        if matches!(action, Action::Anyone | Action::ListOrgs) {
            return Decision::Allow;
        }
        let allowed = self.roles().any(|r| allows(r, action));
        let visible = match action.level() {
            Level::Platform => true,
            Level::Org | Level::Space => self.sees_org(),
        };
        match (allowed, visible) {
            (true, _) => Decision::Allow,
            (false, false) => Decision::Hidden,
            (false, true) => Decision::Forbidden(
                Role::ALL
                    .into_iter()
                    .filter(|r| allows(*r, action))
                    .collect(),
            ),
        }
    }

    pub fn sees_env_values(&self) -> bool {
        self.roles().any(sees_env_values)
    }
}

/// `docs/roles.md`'s tables, from [`ENDPOINTS`] and [`allows`].
pub fn render_docs() -> String {
    let mut out = String::from(
        "| action | OrgManager | OrgAuditor | SpaceManager | SpaceDeveloper | SpaceAuditor |\n\
         |---|---|---|---|---|---|\n",
    );
    let scoped = [
        Action::OrgRead,
        Action::OrgManage,
        Action::SpaceRead,
        Action::SpaceWrite,
        Action::SpaceManage,
        Action::Upload,
    ];
    for a in scoped {
        let cells: Vec<&str> = Role::ALL
            .iter()
            .map(|r| if allows(*r, a) { "yes" } else { "-" })
            .collect();
        out.push_str(&format!("| {} | {} |\n", a.describe(), cells.join(" | ")));
    }
    out.push_str("\n| method | path | action |\n|---|---|---|\n");
    for (m, r, a) in ENDPOINTS {
        out.push_str(&format!("| {m} | `{r}` | {} |\n", a.describe()));
    }
    out
}

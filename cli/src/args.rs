//! The command line. Parsing only: values that need checking beyond their type (app names, sizes)
//! are parsed into validated types here, so a bad value is a usage error before any network call.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use pier_api::AppName;

/// Push and run apps on a Pier controller, the way `cf` does on Cloud Foundry.
#[derive(Debug, Parser)]
#[command(name = "pier", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// The org to act in, for this command only (default: the one `pier target` saved, else
    /// PIER_ORG, else the controller's `default`).
    #[arg(short = 'o', long = "org", value_name = "ORG", global = true)]
    pub org: Option<String>,
    /// The space to act in, for this command only (default: the one `pier target` saved, else
    /// PIER_SPACE, else the controller's `default`).
    #[arg(short = 's', long = "space", value_name = "SPACE", global = true)]
    pub space: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the controller and the token (or log in as a user), then save both in the config file.
    Login(LoginArgs),
    /// Revoke the saved login at the controller and remove its tokens from the config file.
    Logout,
    /// Who the saved login is.
    Whoami,
    /// List the users (platform admin).
    Users(AppsArgs),
    /// Add a user with a password (platform admin).
    CreateUser(CreateUserArgs),
    /// Delete a user; their logins end (platform admin).
    DeleteUser(DeleteUserArgs),
    /// Change your password, or (platform admin) set another user's.
    Passwd(PasswdArgs),
    /// Upload a folder, stage it with buildpacks and start it.
    Push(PushArgs),
    /// List every app.
    Apps(AppsArgs),
    /// Show one app and its instances.
    App(AppArgs),
    /// Delete an app: its instances, routes, packages and droplets.
    Delete(DeleteArgs),
    /// Start an app's instances and wait until they are running.
    Start(NameArg),
    /// Stop every instance of an app.
    Stop(NameArg),
    /// Replace an app's instances and wait until the new ones are running.
    Restart(NameArg),
    /// Stage the app's package again, then restart it on the new droplet.
    Restage(NameArg),
    /// Show an app's logs: the recent lines, then every instance's output live (Ctrl-C stops).
    Logs(LogsArgs),
    /// Change how many instances of a process run, or their memory and disk, without restaging.
    Scale(ScaleArgs),
    /// Set how the platform checks that a process's instances are healthy.
    SetHealthCheck(HealthCheckArgs),
    /// What happened to an app, newest first: pushes, stagings, scaling, crashes.
    Events(EventsArgs),
    /// List the installed buildpacks in detection order.
    Buildpacks(BuildpacksArgs),
    /// Install a buildpack (a folder or a .tgz) at a position in the detection order.
    CreateBuildpack(CreateBuildpackArgs),
    /// Move, enable/disable, or replace the files of a buildpack.
    UpdateBuildpack(UpdateBuildpackArgs),
    /// Delete an admin buildpack.
    DeleteBuildpack(DeleteBuildpackArgs),
    /// Clear an app's buildpack cache; the next staging starts cold.
    ClearBuildpackCache(NameArg),
    /// Write a running app's manifest (manifest.yml, or -p PATH).
    CreateAppManifest(CreateAppManifestArgs),
    /// The deployment in progress and past ones.
    Deployments(EventsArgs),
    /// Stop the deployment in progress and roll back to the previous revision.
    CancelDeployment(NameArg),
    /// Move a canary deployment to its next step now.
    ContinueDeployment(NameArg),
    /// The app's revisions (droplet + env + command combinations that ran), newest first.
    Revisions(EventsArgs),
    /// Map a route (host under DOMAIN, optional path) to an app.
    MapRoute(RouteArgs),
    /// Unmap a route from an app.
    UnmapRoute(RouteArgs),
    /// Every route and the app it leads to.
    Routes(AppsArgs),
    /// Deploy an earlier revision, rolling.
    #[command(disable_version_flag = true)]
    Rollback(RollbackArgs),
    /// Show where commands act, or set it: `pier target -o ORG [-s SPACE]`.
    Target,
    /// List the orgs.
    Orgs(AppsArgs),
    /// List the spaces of the targeted org (or -o ORG).
    Spaces(AppsArgs),
    /// Create an org.
    CreateOrg(OrgNameArg),
    /// Delete an org with its spaces and their apps.
    DeleteOrg(DeleteNamedArgs),
    /// Create a space in the targeted org (or -o ORG).
    CreateSpace(OrgNameArg),
    /// Delete a space of the targeted org (or -o ORG) with its apps.
    DeleteSpace(DeleteNamedArgs),
    /// Show an app's env: the user's variables, VCAP_APPLICATION and VCAP_SERVICES.
    Env(EnvArgs),
    /// Set an env variable; a running app is deployed with it (rolling) unless --no-restart.
    SetEnv(SetEnvArgs),
    /// Remove an env variable; a running app is deployed without it unless --no-restart.
    UnsetEnv(UnsetEnvArgs),
    /// Create a user-provided service: credentials as JSON (-p '{"k":"v"}') or asked for (-p k1,k2).
    #[command(name = "create-user-provided-service", visible_alias = "cups")]
    CreateUserProvidedService(CreateUpsArgs),
    /// Replace a user-provided service's credentials, tags or syslog drain.
    #[command(name = "update-user-provided-service", visible_alias = "uups")]
    UpdateUserProvidedService(UpdateUpsArgs),
    /// List the service instances of the space.
    Services(ServicesArgs),
    /// Show one service instance.
    Service(ServiceArgs),
    /// Delete a service instance (refused while an app is bound to it).
    DeleteService(DeleteNamedArgs),
    /// Bind an app to a service instance; a running app is deployed with it (rolling).
    BindService(BindServiceArgs),
    /// Unbind an app from a service instance; a running app is deployed without it (rolling).
    UnbindService(UnbindServiceArgs),
    /// Register an Open Service Broker API broker: platform-wide (admin) or --space-scoped.
    CreateServiceBroker(CreateBrokerArgs),
    /// List the service brokers (the admin: all; others: the target space's).
    ServiceBrokers(ServicesArgs),
    /// Give a broker a new URL and credentials; its catalog is fetched again.
    UpdateServiceBroker(UpdateBrokerArgs),
    /// Remove a broker (refused while it has service instances).
    DeleteServiceBroker(DeleteNamedArgs),
    /// The offerings and plans you may use in the target space (-e OFFERING: one).
    Marketplace(MarketplaceArgs),
    /// Let orgs use an offering's plans (platform admin): all orgs, or -o ORG; all plans or -p.
    EnableServiceAccess(ServiceAccessArgs),
    /// Take access to an offering's plans away (platform admin).
    DisableServiceAccess(ServiceAccessArgs),
    /// Create a managed service instance: OFFERING PLAN NAME, provisioned by its broker.
    CreateService(CreateServiceArgs),
    /// Change a managed service instance's plan or parameters.
    UpdateService(UpdateServiceArgs),
    /// Create a service key (credentials for use outside the platform).
    CreateServiceKey(ServiceKeyArgs),
    /// List a service instance's keys.
    ServiceKeys(NameArgString),
    /// Show a service key's credentials.
    ServiceKey(ServiceKeyNameArgs),
    /// Delete a service key.
    DeleteServiceKey(DeleteServiceKeyArgs),
    /// Give a user a role in an org: OrgManager, OrgAuditor or OrgUser.
    SetOrgRole(OrgRoleArgs),
    /// Take an org role away from a user.
    UnsetOrgRole(OrgRoleArgs),
    /// Give a user a role in a space: SpaceManager, SpaceDeveloper or SpaceAuditor.
    SetSpaceRole(SpaceRoleArgs),
    /// Take a space role away from a user.
    UnsetSpaceRole(SpaceRoleArgs),
    /// The users holding roles in an org, by role.
    OrgUsers(OrgUsersArgs),
    /// The users holding roles in a space, by role.
    SpaceUsers(SpaceUsersArgs),
    /// Show an org: its spaces, its quota and what it uses of it.
    Org(ShowNamedArgs),
    /// Show a space of the targeted org (or -o ORG): its apps, its quota and what it uses.
    Space(ShowNamedArgs),
    /// List the quotas (platform admin).
    Quotas(AppsArgs),
    /// Show one quota and where it is assigned.
    Quota(ShowNamedArgs),
    /// Define a quota: limits an org or a space may not go over (platform admin).
    CreateQuota(QuotaArgs),
    /// Change the limits given; the others stay as they are (platform admin).
    UpdateQuota(QuotaArgs),
    /// Delete a quota no org or space has (platform admin).
    DeleteQuota(DeleteNamedArgs),
    /// Assign a quota to an org (platform admin).
    SetQuota(SetQuotaArgs),
    /// Remove an org's quota: it is unlimited again (platform admin).
    UnsetQuota(OrgNameArg),
    /// Assign a quota to a space of the targeted org (or -o ORG), within the org's (platform admin).
    SetSpaceQuota(SetQuotaArgs),
    /// Remove a space's own quota; the org's still applies (platform admin).
    UnsetSpaceQuota(OrgNameArg),
    /// The platform's audit log, newest first: every change, refusal and login (platform admin).
    Audit(AuditArgs),
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries since then: an age like 30m, 1h, 2d, or an RFC 3339 time like
    /// 2026-12-01T10:00:00Z.
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    pub since: Option<time::OffsetDateTime>,
    /// At most this many entries (the newest; default 1000, at most 10000).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Print the entries as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `30s`, `15m`, `1h`, `2d` ago, or an RFC 3339 time.
pub fn parse_since(s: &str) -> Result<time::OffsetDateTime, String> {
    let bad = || {
        format!("invalid time {s:?}: use an age like 30m, 1h or 2d, or an RFC 3339 time like 2026-12-01T10:00:00Z")
    };
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t);
    }
    let t = s.trim();
    let unit = t.chars().last().ok_or_else(bad)?;
    let secs: i64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    let n: i64 = t[..t.len() - 1].parse().map_err(|_| bad())?;
    let ago = n.checked_mul(secs).filter(|v| *v >= 0).ok_or_else(bad)?;
    Ok(time::OffsetDateTime::now_utc() - time::Duration::seconds(ago))
}

#[derive(Debug, Args)]
pub struct ShowNamedArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Print it as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A quota limit on the command line: a value, or `unlimited` (also `-1`, as cf has it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Unlimited,
    At(u64),
}

impl Limit {
    pub fn value(self) -> Option<u64> {
        match self {
            Limit::Unlimited => None,
            Limit::At(n) => Some(n),
        }
    }
}

/// `pier create-quota` and `pier update-quota`. The flags are cf's where cf has the limit.
#[derive(Debug, Args)]
pub struct QuotaArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Total memory of all started instances, like 10G or 512M (`unlimited`).
    #[arg(short = 'm', long = "memory", value_name = "MEM", value_parser = parse_memory_limit,
          allow_negative_numbers = true)]
    pub memory: Option<Limit>,
    /// Total instances of all started apps (`unlimited`).
    #[arg(short = 'a', long = "app-instances", value_name = "N", value_parser = parse_count_limit,
          allow_negative_numbers = true)]
    pub instances: Option<Limit>,
    /// Number of apps, started or not (`unlimited`; cf has no such limit).
    #[arg(long = "apps", value_name = "N", value_parser = parse_count_limit,
          allow_negative_numbers = true)]
    pub apps: Option<Limit>,
    /// Number of routes mapped to apps (`unlimited`).
    #[arg(short = 'r', long = "routes", value_name = "N", value_parser = parse_count_limit,
          allow_negative_numbers = true)]
    pub routes: Option<Limit>,
}

#[derive(Debug, Args)]
pub struct SetQuotaArgs {
    /// The org (set-quota) or the space (set-space-quota).
    #[arg(value_name = "NAME")]
    pub name: String,
    #[arg(value_name = "QUOTA")]
    pub quota: String,
}

fn parse_memory_limit(s: &str) -> Result<Limit, String> {
    if is_unlimited(s) {
        return Ok(Limit::Unlimited);
    }
    pier_api::parse_size_mb(s).map(Limit::At)
}

fn parse_count_limit(s: &str) -> Result<Limit, String> {
    if is_unlimited(s) {
        return Ok(Limit::Unlimited);
    }
    s.trim()
        .parse::<u64>()
        .map(Limit::At)
        .map_err(|_| format!("invalid limit {s:?}: use a whole number, or `unlimited`"))
}

fn is_unlimited(s: &str) -> bool {
    s.eq_ignore_ascii_case("unlimited") || s.trim() == "-1"
}

#[derive(Debug, Args)]
pub struct EnvArgs {
    #[arg(value_name = "NAME", value_parser = parse_app_name)]
    pub name: AppName,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SetEnvArgs {
    #[arg(value_name = "NAME", value_parser = parse_app_name)]
    pub name: AppName,
    #[arg(value_name = "ENV_VAR_NAME")]
    pub var: String,
    #[arg(value_name = "ENV_VAR_VALUE", allow_hyphen_values = true)]
    pub value: String,
    /// Store the change only; it takes effect at the next restart or deployment.
    #[arg(long)]
    pub no_restart: bool,
}

#[derive(Debug, Args)]
pub struct UnsetEnvArgs {
    #[arg(value_name = "NAME", value_parser = parse_app_name)]
    pub name: AppName,
    #[arg(value_name = "ENV_VAR_NAME")]
    pub var: String,
    /// Store the change only; it takes effect at the next restart or deployment.
    #[arg(long)]
    pub no_restart: bool,
}

#[derive(Debug, Args)]
pub struct CreateUpsArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Credentials: a JSON object, or comma-separated key names to be asked for.
    #[arg(short = 'p', value_name = "CREDENTIALS")]
    pub credentials: Option<String>,
    /// Comma-separated tags.
    #[arg(short = 't', value_name = "TAGS")]
    pub tags: Option<String>,
    /// Where the app's logs are drained (syslog://, syslog-tls:// or https://).
    #[arg(short = 'l', value_name = "URL")]
    pub syslog_drain_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpdateUpsArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// New credentials: a JSON object, or comma-separated key names to be asked for.
    #[arg(short = 'p', value_name = "CREDENTIALS")]
    pub credentials: Option<String>,
    /// New comma-separated tags.
    #[arg(short = 't', value_name = "TAGS")]
    pub tags: Option<String>,
    /// New syslog drain URL ("" removes it).
    #[arg(short = 'l', value_name = "URL")]
    pub syslog_drain_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Print JSON (credentials included, for those who may see them).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CreateBrokerArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    #[arg(value_name = "URL")]
    pub url: String,
    #[arg(value_name = "USERNAME")]
    pub username: String,
    #[arg(value_name = "PASSWORD")]
    pub password: String,
    /// Only for the target space (its SpaceDevelopers may register one); its plans are seen
    /// there only.
    #[arg(long)]
    pub space_scoped: bool,
}

#[derive(Debug, Args)]
pub struct UpdateBrokerArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    #[arg(value_name = "URL")]
    pub url: String,
    #[arg(value_name = "USERNAME")]
    pub username: String,
    #[arg(value_name = "PASSWORD")]
    pub password: String,
}

#[derive(Debug, Args)]
pub struct MarketplaceArgs {
    /// Show one offering's plans.
    #[arg(short = 'e', value_name = "OFFERING")]
    pub offering: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `-o ORG` is the global org flag: with it, access is for that org only.
#[derive(Debug, Args)]
pub struct ServiceAccessArgs {
    #[arg(value_name = "OFFERING")]
    pub offering: String,
    /// One plan (default: all of the offering's).
    #[arg(short = 'p', value_name = "PLAN")]
    pub plan: Option<String>,
    /// The broker, when two offer the same offering name.
    #[arg(short = 'b', value_name = "BROKER")]
    pub broker: Option<String>,
}

#[derive(Debug, Args)]
pub struct CreateServiceArgs {
    #[arg(value_name = "OFFERING")]
    pub offering: String,
    #[arg(value_name = "PLAN")]
    pub plan: String,
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Parameters for the broker: a JSON object.
    #[arg(short = 'c', value_name = "JSON")]
    pub parameters: Option<String>,
    /// Comma-separated tags, added to the offering's in VCAP_SERVICES.
    #[arg(short = 't', value_name = "TAGS")]
    pub tags: Option<String>,
    /// The broker, when two offer the same offering name.
    #[arg(short = 'b', value_name = "BROKER")]
    pub broker: Option<String>,
    /// Wait until the broker has finished (`create succeeded` or `create failed`).
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct UpdateServiceArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// A new plan.
    #[arg(short = 'p', value_name = "PLAN")]
    pub plan: Option<String>,
    /// Parameters for the broker: a JSON object.
    #[arg(short = 'c', value_name = "JSON")]
    pub parameters: Option<String>,
    /// New comma-separated tags.
    #[arg(short = 't', value_name = "TAGS")]
    pub tags: Option<String>,
    /// Wait until the broker has finished.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct ServiceKeyArgs {
    #[arg(value_name = "SERVICE_INSTANCE")]
    pub service: String,
    #[arg(value_name = "KEY")]
    pub key: String,
    /// Parameters for the broker: a JSON object.
    #[arg(short = 'c', value_name = "JSON")]
    pub parameters: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServiceKeyNameArgs {
    #[arg(value_name = "SERVICE_INSTANCE")]
    pub service: String,
    #[arg(value_name = "KEY")]
    pub key: String,
}

#[derive(Debug, Args)]
pub struct DeleteServiceKeyArgs {
    #[arg(value_name = "SERVICE_INSTANCE")]
    pub service: String,
    #[arg(value_name = "KEY")]
    pub key: String,
    /// Don't ask for confirmation.
    #[arg(short = 'f', long = "force")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct NameArgString {
    #[arg(value_name = "SERVICE_INSTANCE")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct BindServiceArgs {
    #[arg(value_name = "APP", value_parser = parse_app_name)]
    pub app: AppName,
    #[arg(value_name = "SERVICE_INSTANCE")]
    pub service: String,
    /// Binding parameters for a managed instance's broker: a JSON object.
    #[arg(short = 'c', value_name = "JSON")]
    pub parameters: Option<String>,
    /// Store the change only; it takes effect at the next restart or deployment.
    #[arg(long)]
    pub no_restart: bool,
}

/// `unbind-service`: no `-c`, as on Cloud Foundry (an unbind takes no parameters).
#[derive(Debug, Args)]
pub struct UnbindServiceArgs {
    #[arg(value_name = "APP", value_parser = parse_app_name)]
    pub app: AppName,
    #[arg(value_name = "SERVICE_INSTANCE")]
    pub service: String,
    /// Store the change only; it takes effect at the next restart or deployment.
    #[arg(long)]
    pub no_restart: bool,
}

impl From<UnbindServiceArgs> for BindServiceArgs {
    fn from(a: UnbindServiceArgs) -> BindServiceArgs {
        BindServiceArgs {
            app: a.app,
            service: a.service,
            parameters: None,
            no_restart: a.no_restart,
        }
    }
}

/// A role name, checked before anything is sent.
fn parse_role(s: &str) -> Result<pier_api::Role, String> {
    s.parse()
        .map_err(|e: pier_api::roles::UnknownRole| e.to_string())
}

#[derive(Debug, Args)]
pub struct OrgRoleArgs {
    #[arg(value_name = "USER")]
    pub user: String,
    #[arg(value_name = "ORG")]
    pub org: String,
    #[arg(value_name = "ROLE", value_parser = parse_role)]
    pub role: pier_api::Role,
}

#[derive(Debug, Args)]
pub struct SpaceRoleArgs {
    #[arg(value_name = "USER")]
    pub user: String,
    #[arg(value_name = "ORG")]
    pub org: String,
    #[arg(value_name = "SPACE")]
    pub space: String,
    #[arg(value_name = "ROLE", value_parser = parse_role)]
    pub role: pier_api::Role,
}

#[derive(Debug, Args)]
pub struct OrgUsersArgs {
    #[arg(value_name = "ORG")]
    pub org: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SpaceUsersArgs {
    #[arg(value_name = "ORG")]
    pub org: String,
    #[arg(value_name = "SPACE")]
    pub space: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct OrgNameArg {
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct DeleteNamedArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Don't ask for confirmation.
    #[arg(short = 'f', long = "force")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The controller's API URL, like http://127.0.0.1:9000.
    #[arg(long, value_name = "URL")]
    pub api: String,
    /// The admin token pier-controller printed on its first start.
    #[arg(
        long,
        value_name = "TOKEN",
        required_unless_present = "username",
        conflicts_with = "username"
    )]
    pub token: Option<String>,
    /// Log in as this user (asks for the password unless -p is given).
    #[arg(short = 'u', long = "username", value_name = "NAME")]
    pub username: Option<String>,
    /// The user's password (for scripts; it shows in the process list, prefer the prompt).
    #[arg(
        short = 'p',
        long = "password",
        value_name = "PASS",
        requires = "username"
    )]
    pub password: Option<String>,
    /// For an https:// API: a PEM file of CA certificates to trust besides the system's (the
    /// controller's own certificate, if it is self-signed). Saved with the login. Default:
    /// PIER_CA_CERT.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Accept any certificate from an https:// API, saved with the login. Anyone between you and
    /// the controller can then read the token: only for trying things out.
    #[arg(long)]
    pub skip_ssl_validation: bool,
}

#[derive(Debug, Args)]
pub struct CreateUserArgs {
    /// The user's name: lowercase letters, digits, `.`, `_`, `-`, `@`.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The password (asked twice when missing).
    #[arg(short = 'p', long = "password", value_name = "PASS")]
    pub password: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeleteUserArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Don't ask for confirmation.
    #[arg(short = 'f', long = "force")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// Another user whose password the platform admin sets; without it, your own.
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The app's name (a DNS label). May come from the manifest instead.
    #[arg(value_name = "NAME", value_parser = parse_app_name)]
    pub name: Option<AppName>,
    /// The folder (or single file) to upload. Default: the manifest's `path`, else the current folder.
    #[arg(short = 'p', long = "path", value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Number of web instances.
    #[arg(short = 'i', long = "instances", value_name = "N")]
    pub instances: Option<u32>,
    /// Memory limit per instance, like 256M or 1G.
    #[arg(short = 'm', long = "memory", value_name = "MEM", value_parser = parse_size)]
    pub memory_mb: Option<u64>,
    /// Disk limit per instance, like 512M or 1G.
    #[arg(short = 'k', long = "disk", value_name = "DISK", value_parser = parse_size)]
    pub disk_mb: Option<u64>,
    /// Buildpack to use: an installed one's name, or a folder (`./path`) uploaded with the app.
    /// Repeat for several, in order: all but the last supply, the last finalizes. `default` means
    /// detect over the installed ones.
    #[arg(short = 'b', long = "buildpack", value_name = "BUILDPACK")]
    pub buildpacks: Vec<String>,
    /// Start command, overriding the Procfile and the buildpack's default.
    #[arg(short = 'c', long = "start-command", value_name = "CMD")]
    pub command: Option<String>,
    /// Upload and stage, but don't start the app.
    #[arg(long)]
    pub no_start: bool,
    #[command(flatten)]
    pub deploy: DeployArgs,
    /// The manifest to read (a file, or a folder holding manifest.yml). Default: ./manifest.yml.
    #[arg(
        short = 'f',
        long = "manifest",
        value_name = "MANIFEST",
        conflicts_with = "no_manifest"
    )]
    pub manifest: Option<PathBuf>,
    /// Ignore manifest.yml in the current folder.
    #[arg(long)]
    pub no_manifest: bool,
    /// A manifest variable: `((NAME))` becomes VALUE. Repeatable; wins over --vars-file.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// A YAML file of manifest variables (`name: value` lines). Repeatable; later files win.
    #[arg(long = "vars-file", value_name = "FILE")]
    pub vars_files: Vec<PathBuf>,
    /// Let a manifest's `path:` point outside the manifest's folder (otherwise refused, so a
    /// manifest you did not write cannot upload your other files).
    #[arg(long)]
    pub allow_outside: bool,
}

impl PushArgs {
    /// True when a flag that sets one app's configuration was given (these can't apply to several
    /// apps of a manifest at once).
    pub fn has_app_flags(&self) -> bool {
        self.path.is_some()
            || self.instances.is_some()
            || self.memory_mb.is_some()
            || self.disk_mb.is_some()
            || !self.buildpacks.is_empty()
            || self.command.is_some()
    }
}

#[derive(Debug, Args)]
pub struct AppsArgs {
    /// Print the apps as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AppArgs {
    #[arg(value_name = "NAME", value_parser = parse_app_name)]
    pub name: AppName,
    /// Print the app as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[arg(value_name = "NAME", value_parser = parse_app_name)]
    pub name: AppName,
    /// Don't ask for confirmation.
    #[arg(short = 'f', long = "force")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    #[arg(value_name = "NAME", value_parser = parse_app_name)]
    pub name: AppName,
    /// Number of instances (0 stops them all).
    #[arg(short = 'i', long = "instances")]
    pub instances: Option<u32>,
    /// Memory limit per instance, like 256M or 1G. Instances are replaced one at a time.
    #[arg(short = 'm', long = "memory", value_parser = parse_size)]
    pub memory_mb: Option<u64>,
    /// Disk quota per instance, like 1G.
    #[arg(short = 'k', long = "disk", value_parser = parse_size)]
    pub disk_mb: Option<u64>,
    /// The process type to scale.
    #[arg(long = "process", default_value = "web")]
    pub process: pier_api::ProcessType,
}

#[derive(Debug, Args)]
pub struct HealthCheckArgs {
    #[arg(value_name = "NAME", value_parser = parse_app_name)]
    pub name: AppName,
    /// `port` (TCP connect to $PORT), `http` (GET an endpoint; 200-399 is healthy) or `process`.
    #[arg(value_name = "TYPE")]
    pub kind: pier_api::HealthCheckType,
    /// For `http`: the path to GET.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Seconds a new instance has to pass its first check (1-180).
    #[arg(short = 't', long = "timeout")]
    pub timeout: Option<u32>,
    /// Seconds one http check may take.
    #[arg(long = "invocation-timeout")]
    pub invocation_timeout: Option<u32>,
    /// The process type.
    #[arg(long = "process", default_value = "web")]
    pub process: pier_api::ProcessType,
}

#[derive(Debug, Args)]
pub struct RouteArgs {
    #[arg(value_name = "NAME", value_parser = parse_app_name)]
    pub name: AppName,
    /// The domain, like localhost or example.com.
    #[arg(value_name = "DOMAIN")]
    pub domain: String,
    /// The host name in front of the domain.
    #[arg(long)]
    pub hostname: Option<String>,
    /// A path prefix, like /api; the longest matching prefix wins.
    #[arg(long)]
    pub path: Option<String>,
}

impl RouteArgs {
    pub fn route(&self) -> Result<pier_api::RouteSpec, String> {
        let host = match &self.hostname {
            Some(h) => format!("{h}.{}", self.domain),
            None => self.domain.clone(),
        };
        let path = self.path.as_deref().unwrap_or("");
        if !path.is_empty() && !path.starts_with('/') {
            return Err(format!("path {path:?} must start with /"));
        }
        format!("{host}{path}").parse()
    }
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[arg(value_name = "NAME", value_parser = parse_app_name)]
    pub name: AppName,
    /// The revision to go back to (see `pier revisions NAME`).
    #[arg(long = "version")]
    pub version: u64,
}

/// How a start of new code reaches the instances that run.
#[derive(Debug, Args, Clone, Default)]
pub struct DeployArgs {
    /// `rolling` (default: new instances beside the old, drained one by one), `recreate` (stop,
    /// then start) or `canary` (one new instance, promoted step by step while it does no worse).
    #[arg(long)]
    pub strategy: Option<pier_api::DeploymentStrategy>,
    /// New instances started at once in a rolling deployment.
    #[arg(long = "max-in-flight")]
    pub max_in_flight: Option<u32>,
    /// Canary traffic percentages, like 10,50,100.
    #[arg(long = "instance-steps", value_delimiter = ',')]
    pub instance_steps: Option<Vec<u32>>,
    /// Seconds of traffic compared at each canary step (default 60).
    #[arg(long = "analysis-window")]
    pub analysis_window: Option<u32>,
}

impl DeployArgs {
    pub fn request(&self) -> pier_api::DeployRequest {
        pier_api::DeployRequest {
            strategy: self.strategy,
            max_in_flight: self.max_in_flight,
            instance_steps: self.instance_steps.clone(),
            analysis_window_secs: self.analysis_window,
            ..Default::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[arg(value_name = "NAME", value_parser = parse_app_name)]
    pub name: AppName,
    /// Print the events as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[arg(value_name = "NAME", value_parser = parse_app_name)]
    pub name: AppName,
    /// Print the buffered lines (the last 1000 by default) and exit instead of following.
    #[arg(long)]
    pub recent: bool,
    /// Print one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BuildpacksArgs {
    /// Print the buildpacks as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CreateBuildpackArgs {
    /// The buildpack's name (lowercase letters, digits, '_', '-', '.').
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The buildpack: a folder with bin/detect, or a .tgz / .tar.gz of one.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Position in the detection order (1 is tried first). Default: last.
    #[arg(short = 'i', long = "position", value_name = "N")]
    pub position: Option<u32>,
    /// Install it disabled: detection skips it, but apps can still name it with -b.
    #[arg(long)]
    pub disable: bool,
}

#[derive(Debug, Args)]
pub struct UpdateBuildpackArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// New files: a folder with bin/detect, or a .tgz / .tar.gz of one (admin buildpacks only).
    #[arg(short = 'p', long = "path", value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// New position in the detection order (1 is tried first).
    #[arg(short = 'i', long = "position", value_name = "N")]
    pub position: Option<u32>,
    /// Let detection use it again.
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Skip it in detection (apps can still name it with -b).
    #[arg(long)]
    pub disable: bool,
}

#[derive(Debug, Args)]
pub struct DeleteBuildpackArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Don't ask for confirmation.
    #[arg(short = 'f', long = "force")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CreateAppManifestArgs {
    #[arg(value_name = "NAME", value_parser = parse_app_name)]
    pub name: AppName,
    /// Where to write it. Default: ./manifest.yml.
    #[arg(short = 'p', long = "path", value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Replace the file if it exists.
    #[arg(short = 'f', long = "force")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct NameArg {
    #[arg(value_name = "NAME", value_parser = parse_app_name)]
    pub name: AppName,
}

fn parse_app_name(s: &str) -> Result<AppName, String> {
    s.parse::<AppName>().map_err(|e| e.to_string())
}

fn parse_size(s: &str) -> Result<u64, String> {
    pier_api::parse_size_mb(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn since_is_an_age_or_a_time() {
        let now = time::OffsetDateTime::now_utc();
        let t = parse_since("1h").unwrap();
        assert!((now - t - time::Duration::hours(1)).abs() < time::Duration::seconds(5));
        let t = parse_since("2026-12-01T10:00:00Z").unwrap();
        assert_eq!(t.unix_timestamp(), 1_796_119_200);
        for bad in ["", "h", "1y", "-1h", "yesterday"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn push_flags_parse_and_validate() {
        let cli = Cli::try_parse_from([
            "pier",
            "push",
            "hello",
            "-i",
            "2",
            "-m",
            "512M",
            "-b",
            "python",
            "-b",
            "staticfile",
        ])
        .expect("valid push");
        let Command::Push(p) = cli.command else {
            panic!("not push")
        };
        assert_eq!(p.name.map(|n| n.to_string()).as_deref(), Some("hello"));
        assert_eq!(p.instances, Some(2));
        assert_eq!(p.memory_mb, Some(512));
        assert_eq!(p.buildpacks, ["python", "staticfile"]);
        assert!(Cli::try_parse_from(["pier", "push", "Bad_Name"]).is_err());
        assert!(Cli::try_parse_from(["pier", "push", "ok", "-m", "lots"]).is_err());
    }
}

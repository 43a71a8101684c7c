//! One module per command. Each has `pub async fn run(args) -> anyhow::Result<()>`; the code two
//! commands share (staging a build, waiting for instances) lives in `stage` and `wait`.

use anyhow::Result;
use pier_api::DeploymentAction;

use crate::args::{Cli, Command};
use crate::client::Client;
use crate::config::Settings;

pub mod app;
pub mod apps;
pub mod audit;
pub mod brokers;
pub mod buildpacks;
pub mod create_app_manifest;
pub mod create_buildpack;
pub mod delete;
pub mod delete_buildpack;
pub mod deployments;
pub mod env;
pub mod events;
pub mod health_check;
pub mod login;
pub mod logout;
pub mod logs;
pub mod orgs;
pub mod push;
pub mod quotas;
pub mod restage;
pub mod restart;
pub mod roles;
pub mod routes;
pub mod scale;
pub mod services;
pub mod stage;
pub mod start;
pub mod stop;
pub mod update_buildpack;
pub mod users;
pub mod wait;

pub async fn run(cli: Cli) -> Result<()> {
    crate::config::set_space_flags(cli.org.clone(), cli.space.clone());
    match cli.command {
        Command::Login(args) => login::run(args).await,
        Command::Logout => logout::run().await,
        Command::Whoami => users::whoami().await,
        Command::Users(args) => users::list(args).await,
        Command::CreateUser(args) => users::create(args).await,
        Command::DeleteUser(args) => users::delete(args).await,
        Command::Passwd(args) => users::passwd(args).await,
        Command::Push(args) => push::run(args).await,
        Command::Apps(args) => apps::run(args).await,
        Command::App(args) => app::run(args).await,
        Command::Delete(args) => delete::run(args).await,
        Command::Start(args) => start::run(args).await,
        Command::Stop(args) => stop::run(args).await,
        Command::Restart(args) => restart::run(args).await,
        Command::Restage(args) => restage::run(args).await,
        Command::Logs(args) => logs::run(args).await,
        Command::Scale(args) => scale::run(args).await,
        Command::SetHealthCheck(args) => health_check::run(args).await,
        Command::Events(args) => events::run(args).await,
        Command::Buildpacks(args) => buildpacks::run(args).await,
        Command::CreateBuildpack(args) => create_buildpack::run(args).await,
        Command::UpdateBuildpack(args) => update_buildpack::run(args).await,
        Command::DeleteBuildpack(args) => delete_buildpack::run(args).await,
        Command::ClearBuildpackCache(args) => buildpacks::clear_cache(args).await,
        Command::CreateAppManifest(args) => create_app_manifest::run(args).await,
        Command::Deployments(args) => deployments::list(args).await,
        Command::CancelDeployment(args) => deployments::act(args, DeploymentAction::Cancel).await,
        Command::ContinueDeployment(args) => {
            deployments::act(args, DeploymentAction::Continue).await
        }
        Command::Revisions(args) => deployments::revisions(args).await,
        Command::Rollback(args) => deployments::rollback(args).await,
        Command::MapRoute(args) => routes::map(args, true).await,
        Command::UnmapRoute(args) => routes::map(args, false).await,
        Command::Routes(args) => routes::list(args).await,
        Command::Target => orgs::target(cli.org, cli.space).await,
        Command::Orgs(args) => orgs::list_orgs(args).await,
        Command::Spaces(args) => orgs::list_spaces(args).await,
        Command::CreateOrg(args) => orgs::create_org(args).await,
        Command::DeleteOrg(args) => orgs::delete_org(args).await,
        Command::CreateSpace(args) => orgs::create_space(args).await,
        Command::DeleteSpace(args) => orgs::delete_space(args).await,
        Command::Env(args) => env::show(args).await,
        Command::SetEnv(args) => env::set(args).await,
        Command::UnsetEnv(args) => env::unset(args).await,
        Command::CreateUserProvidedService(args) => services::create_ups(args).await,
        Command::UpdateUserProvidedService(args) => services::update_ups(args).await,
        Command::Services(args) => services::list(args).await,
        Command::Service(args) => services::show(args).await,
        Command::DeleteService(args) => services::delete(args).await,
        Command::BindService(args) => services::bind(args, true).await,
        Command::UnbindService(args) => services::bind(args.into(), false).await,
        Command::CreateServiceBroker(args) => brokers::create(args).await,
        Command::ServiceBrokers(args) => brokers::list(args).await,
        Command::UpdateServiceBroker(args) => brokers::update(args).await,
        Command::DeleteServiceBroker(args) => brokers::delete(args).await,
        Command::Marketplace(args) => brokers::marketplace(args).await,
        Command::EnableServiceAccess(args) => brokers::access(args, cli.org.clone(), true).await,
        Command::DisableServiceAccess(args) => brokers::access(args, cli.org.clone(), false).await,
        Command::CreateService(args) => services::create_managed(args).await,
        Command::UpdateService(args) => services::update_managed(args).await,
        Command::CreateServiceKey(args) => services::create_key(args).await,
        Command::ServiceKeys(args) => services::keys(args).await,
        Command::ServiceKey(args) => services::key(args).await,
        Command::DeleteServiceKey(args) => services::delete_key(args).await,
        Command::SetOrgRole(args) => roles::org_role(args, true).await,
        Command::UnsetOrgRole(args) => roles::org_role(args, false).await,
        Command::SetSpaceRole(args) => roles::space_role(args, true).await,
        Command::UnsetSpaceRole(args) => roles::space_role(args, false).await,
        Command::OrgUsers(args) => roles::org_users(args).await,
        Command::SpaceUsers(args) => roles::space_users(args).await,
        Command::Org(args) => quotas::show_org(args).await,
        Command::Space(args) => quotas::show_space(args).await,
        Command::Quotas(args) => quotas::list(args).await,
        Command::Quota(args) => quotas::show(args).await,
        Command::CreateQuota(args) => quotas::create(args).await,
        Command::UpdateQuota(args) => quotas::update(args).await,
        Command::DeleteQuota(args) => quotas::delete(args).await,
        Command::SetQuota(args) => quotas::set_org(args).await,
        Command::UnsetQuota(args) => quotas::unset_org(args).await,
        Command::SetSpaceQuota(args) => quotas::set_space(args).await,
        Command::UnsetSpaceQuota(args) => quotas::unset_space(args).await,
        Command::Audit(args) => audit::run(args).await,
    }
}

/// A client for the controller the environment and config file name.
pub fn connect() -> Result<Client> {
    let target = Settings::from_env().target()?;
    Ok(crate::client::connect(&target)?)
}

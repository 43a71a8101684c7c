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
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the controller and the token, then save both in the config file.
    Login(LoginArgs),
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
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The controller's API URL, like http://127.0.0.1:9000.
    #[arg(long, value_name = "URL")]
    pub api: String,
    /// The admin token pier-controller printed on its first start.
    #[arg(long, value_name = "TOKEN")]
    pub token: String,
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
    /// Buildpack to use; repeat for several, in order. `default` means detect over all of them.
    #[arg(short = 'b', long = "buildpack", value_name = "BUILDPACK")]
    pub buildpacks: Vec<String>,
    /// Start command, overriding the Procfile and the buildpack's default.
    #[arg(short = 'c', long = "start-command", value_name = "CMD")]
    pub command: Option<String>,
    /// Upload and stage, but don't start the app.
    #[arg(long)]
    pub no_start: bool,
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

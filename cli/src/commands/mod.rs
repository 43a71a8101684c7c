//! One module per command. Each has `pub async fn run(args) -> anyhow::Result<()>`; the code two
//! commands share (staging a build, waiting for instances) lives in `stage` and `wait`.

use anyhow::Result;

use crate::args::{Cli, Command};
use crate::client::Client;
use crate::config::Settings;

pub mod app;
pub mod apps;
pub mod delete;
pub mod login;
pub mod push;
pub mod restage;
pub mod restart;
pub mod stage;
pub mod start;
pub mod stop;
pub mod wait;

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Login(args) => login::run(args).await,
        Command::Push(args) => push::run(args).await,
        Command::Apps(args) => apps::run(args).await,
        Command::App(args) => app::run(args).await,
        Command::Delete(args) => delete::run(args).await,
        Command::Start(args) => start::run(args).await,
        Command::Stop(args) => stop::run(args).await,
        Command::Restart(args) => restart::run(args).await,
        Command::Restage(args) => restage::run(args).await,
    }
}

/// A client for the controller the environment and config file name.
pub fn connect() -> Result<Client> {
    let target = Settings::from_env().target()?;
    Ok(Client::new(&target.api, target.token)?)
}

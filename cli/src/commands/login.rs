use anyhow::Result;

use crate::args::LoginArgs;
use pier_client::StatusCode;

use crate::client;
use crate::config::{self, ConfigFile, Settings};
use crate::output::Failure;

/// Checks the controller answers (`/v1/info`) and accepts the token (`/v1/apps`) before saving
/// anything, so a typo never ends up in the config file.
pub async fn run(args: LoginArgs) -> Result<()> {
    let api = config::normalize_api(&args.api)?;
    let token = args.token.trim().to_string();
    if token.is_empty() {
        return Err(Failure::new("the token is empty")
            .hint("pass the token pier-controller printed on its first start")
            .into());
    }
    let path = Settings::from_env().config_path()?;

    let info = client::connect(&api, None)?.info().await?;
    let client = client::connect(&api, Some(token.clone()))?;
    match client.apps().await {
        Ok(_) => {}
        Err(e) if e.status() == Some(StatusCode::UNAUTHORIZED) => return Err(Failure::new(
            format!("the controller at {api} refused the token"),
        )
        .hint(
            "use the token pier-controller printed on its first start; it also wrote it \
                     to a file in its data dir",
        )
        .into()),
        Err(e) => return Err(e.into()),
    }

    config::save(
        &path,
        &ConfigFile {
            api: Some(api.clone()),
            token: Some(token),
        },
    )?;
    println!("Logged in to {api} ({} {}).", info.name, info.version);
    println!(
        "Apps are reached at {} as NAME.{}; saved to {}.",
        info.router_url,
        info.domain,
        path.display()
    );
    Ok(())
}

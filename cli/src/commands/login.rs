use anyhow::Result;

use crate::args::LoginArgs;
use pier_client::StatusCode;

use crate::client;
use crate::config::{self, ConfigFile, Settings, Target};
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
    let settings = Settings::from_env();
    let path = settings.config_path()?;
    // The flag, else PIER_CA_CERT; saved absolute, so it holds from any folder.
    let ca_cert = args
        .ca_cert
        .or(settings.ca_cert)
        .map(|file| std::path::absolute(&file).unwrap_or(file));
    let mut target = Target {
        api: api.clone(),
        token: None,
        ca_cert,
        skip_ssl_validation: args.skip_ssl_validation,
        ..Target::default()
    };

    let info = client::connect(&target)?.info().await?;
    target.token = Some(token.clone());
    let client = client::connect(&target)?;
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
            ca_cert: target.ca_cert,
            skip_ssl_validation: target.skip_ssl_validation,
            ..ConfigFile::default()
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

//! `pier login --api URL --token TOKEN` (the admin token) or `pier login --api URL -u NAME
//! [-p PASS]` (a user: the password grant at `/oauth/token`; the access and refresh tokens and
//! the name are saved). Nothing is saved until the controller has accepted the login.

use anyhow::Result;

use crate::args::LoginArgs;
use pier_client::{ClientError, StatusCode};

use crate::client;
use crate::config::{self, ConfigFile, Settings, Target};
use crate::output::Failure;

/// Checks the controller answers (`/v1/info`) and accepts the token (`/v1/apps`) before saving
/// anything, so a typo never ends up in the config file.
pub async fn run(args: LoginArgs) -> Result<()> {
    let api = config::normalize_api(&args.api)?;
    let settings = Settings::from_env();
    let path = settings.config_path()?;
    // The flag, else PIER_CA_CERT; saved absolute, so it holds from any folder.
    let ca_cert = args
        .ca_cert
        .clone()
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
    let saved = match &args.username {
        Some(name) => user_login(&target, name, args.password.clone()).await?,
        None => token_login(&mut target, args.token.as_deref().unwrap_or_default()).await?,
    };
    config::save(
        &path,
        &ConfigFile {
            api: Some(api.clone()),
            ca_cert: target.ca_cert,
            skip_ssl_validation: target.skip_ssl_validation,
            ..saved
        },
    )?;
    match &args.username {
        Some(name) => println!(
            "Logged in to {api} as {name} ({} {}).",
            info.name, info.version
        ),
        None => println!("Logged in to {api} ({} {}).", info.name, info.version),
    }
    println!(
        "Apps are reached at {} as NAME.{}; saved to {}.",
        info.router_url,
        info.domain,
        path.display()
    );
    Ok(())
}

async fn token_login(target: &mut Target, token: &str) -> Result<ConfigFile> {
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(Failure::new("the token is empty")
            .hint("pass the token pier-controller printed on its first start")
            .into());
    }
    target.token = Some(token.clone());
    let client = client::connect(target)?;
    match client.apps().await {
        Ok(_) => {}
        Err(e) if e.status() == Some(StatusCode::UNAUTHORIZED) => {
            return Err(Failure::new(format!(
                "the controller at {} refused the token",
                target.api
            ))
            .hint(
                "use the token pier-controller printed on its first start; it also wrote it \
                 to a file in its data dir",
            )
            .into())
        }
        Err(e) => return Err(e.into()),
    }
    Ok(ConfigFile {
        token: Some(token),
        ..ConfigFile::default()
    })
}

async fn user_login(target: &Target, name: &str, password: Option<String>) -> Result<ConfigFile> {
    let password = match password {
        Some(p) => p,
        None => rpassword::prompt_password(format!("Password for {name}: ")).map_err(|e| {
            Failure::new(format!("cannot read the password: {e}")).hint("pass it with -p PASS")
        })?,
    };
    let client = client::connect(target)?;
    let answer = match client.password_grant(name, &password).await {
        Ok(a) => a,
        Err(ClientError::OAuth { error, .. }) => {
            return Err(Failure::new(format!(
                "the controller at {} refused the login: {}",
                target.api, error.error_description
            ))
            .into())
        }
        Err(e) => return Err(e.into()),
    };
    Ok(ConfigFile {
        token: Some(answer.access_token),
        refresh_token: Some(answer.refresh_token),
        user: Some(name.to_string()),
        ..ConfigFile::default()
    })
}

//! `pier logout`: revokes the saved refresh token at the controller (best effort: an unreachable
//! controller is said, and the tokens are removed anyway) and removes the tokens from the config
//! file. The API address and certificate settings stay.

use anyhow::Result;

use crate::config::{self, ConfigFile, Settings, Target};

pub async fn run() -> Result<()> {
    let settings = Settings::from_env();
    let path = settings.config_path()?;
    let file = config::load(&path)?;
    if file.token.is_none() && file.refresh_token.is_none() {
        println!("Not logged in.");
        return Ok(());
    }
    if let (Some(api), Some(refresh)) = (&file.api, &file.refresh_token) {
        let target = Target {
            api: config::normalize_api(api)?,
            token: None,
            ca_cert: file.ca_cert.clone(),
            skip_ssl_validation: file.skip_ssl_validation,
            ..Target::default()
        };
        let revoked = match crate::client::connect(&target) {
            Ok(client) => client.revoke(refresh).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = revoked {
            eprintln!(
                "warning: could not revoke the login at the controller ({e}); its refresh token \
                 stays valid until it expires"
            );
        }
    }
    config::save(
        &path,
        &ConfigFile {
            token: None,
            refresh_token: None,
            user: None,
            ..file.clone()
        },
    )?;
    match file.user {
        Some(user) => println!("Logged out {user}."),
        None => println!("Logged out (the admin token was removed from the config)."),
    }
    Ok(())
}

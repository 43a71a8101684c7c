//! `pier env`, `pier set-env`, `pier unset-env`, as the cf CLI spells them. A change is stored,
//! then deployed rolling as a new revision ("env changed") when the app runs, unless
//! `--no-restart`; values are never printed back by set-env.

use anyhow::{Context, Result};
use pier_api::{EnvPatchRequest, EnvResponse};

use crate::args::{EnvArgs, SetEnvArgs, UnsetEnvArgs};

pub async fn show(args: EnvArgs) -> Result<()> {
    let client = super::connect()?;
    let env = client.env(&args.name).await?;
    if args.json {
        let text = serde_json::to_string_pretty(&env).context("cannot encode the env")?;
        println!("{text}");
        return Ok(());
    }
    print!("{}", render(&env));
    if !env.deployed {
        println!(
            "\nThe running instances do not have these yet: `pier restart {}` applies them.",
            args.name
        );
    }
    Ok(())
}

/// `cf env`'s layout: the user's variables, then the platform's (JSON pretty-printed).
fn render(env: &EnvResponse) -> String {
    let mut out = String::from("User-Provided:\n");
    if env.environment_variables.is_empty() {
        out.push_str("(none)\n");
    }
    for (k, v) in &env.environment_variables {
        out.push_str(&format!("{k}: {v}\n"));
    }
    out.push_str("\nSystem-Provided:\n");
    for (k, v) in &env.system_env {
        let pretty = serde_json::from_str::<serde_json::Value>(v)
            .ok()
            .and_then(|j| serde_json::to_string_pretty(&j).ok())
            .unwrap_or_else(|| v.clone());
        out.push_str(&format!("{k}: {pretty}\n"));
    }
    out
}

pub async fn set(args: SetEnvArgs) -> Result<()> {
    let client = super::connect()?;
    println!("Setting env variable {} for app {}...", args.var, args.name);
    let req = EnvPatchRequest {
        var: [(args.var.clone(), Some(args.value))].into(),
    };
    client.patch_env(&args.name, &req).await?;
    super::wait::deploy_change(
        &client,
        &args.name,
        args.no_restart,
        ("Stored. ", "the new env"),
    )
    .await
}

pub async fn unset(args: UnsetEnvArgs) -> Result<()> {
    let client = super::connect()?;
    println!(
        "Removing env variable {} from app {}...",
        args.var, args.name
    );
    let req = EnvPatchRequest {
        var: [(args.var.clone(), None)].into(),
    };
    client.patch_env(&args.name, &req).await?;
    super::wait::deploy_change(
        &client,
        &args.name,
        args.no_restart,
        ("Stored. ", "the new env"),
    )
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn env_is_shown_as_cf_shows_it() {
        let env = pier_api::EnvResponse {
            environment_variables: [("GREETING".into(), "hi".into())].into(),
            system_env: [("VCAP_SERVICES".into(), "{}".into())].into(),
            deployed: true,
        };
        assert_eq!(
            super::render(&env),
            "User-Provided:\nGREETING: hi\n\nSystem-Provided:\nVCAP_SERVICES: {}\n"
        );
    }
}

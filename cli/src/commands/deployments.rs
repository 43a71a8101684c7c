use anyhow::{Context, Result};
use pier_api::{DeployRequest, DeploymentAction};
use pier_client::CURRENT_DEPLOYMENT;

use crate::args::{EventsArgs, NameArg, RollbackArgs};
use crate::output::{format_time, table};

pub async fn list(args: EventsArgs) -> Result<()> {
    let client = super::connect()?;
    let all = client.deployments(&args.name).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&all).context("cannot encode JSON")?
        );
        return Ok(());
    }
    if all.is_empty() {
        println!("No deployments of {} yet.", args.name);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|d| {
            let strategy = match &d.canary {
                Some(c) => format!(
                    "canary {}% of {:?}",
                    c.steps.get(c.step).copied().unwrap_or(100),
                    c.steps
                ),
                None => format!("{:?}", d.strategy).to_lowercase(),
            };
            vec![
                d.id.get(..8).unwrap_or(&d.id).to_string(),
                format!("{:?}", d.state).to_uppercase(),
                d.revision.to_string(),
                strategy,
                format_time(d.created_at),
                d.reason
                    .clone()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["id", "state", "revision", "strategy", "started", "reason"],
            &rows
        )
    );
    Ok(())
}

pub async fn act(args: NameArg, action: DeploymentAction) -> Result<()> {
    let client = super::connect()?;
    let d = client
        .deployment_action(&args.name, CURRENT_DEPLOYMENT, action)
        .await?;
    println!(
        "Deployment {} of {}: {}",
        d.id.get(..8).unwrap_or(&d.id),
        args.name,
        d.reason.unwrap_or_else(|| format!("{:?}", d.state))
    );
    if action == DeploymentAction::Cancel {
        let app = super::wait::until_running_revision(&client, &args.name).await?;
        super::wait::print_running(&app);
    }
    Ok(())
}

pub async fn revisions(args: EventsArgs) -> Result<()> {
    let client = super::connect()?;
    let all = client.revisions(&args.name).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&all).context("cannot encode JSON")?
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|r| {
            vec![
                format!("{}{}", r.version, if r.current { " (current)" } else { "" }),
                format_time(r.created_at),
                r.description.clone(),
                r.buildpack.clone(),
                r.droplet.get(..12).unwrap_or(&r.droplet).to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["revision", "created", "description", "buildpack", "droplet"],
            &rows
        )
    );
    Ok(())
}

pub async fn rollback(args: RollbackArgs) -> Result<()> {
    let client = super::connect()?;
    let d = client
        .deploy(
            &args.name,
            &DeployRequest {
                revision: Some(args.version),
                ..Default::default()
            },
        )
        .await?;
    println!(
        "Rolling {} back to revision {} (as revision {})...",
        args.name, args.version, d.revision
    );
    let app = super::wait::until_deployed(&client, &args.name, &d).await?;
    super::wait::print_running(&app);
    Ok(())
}

use anyhow::Result;
use pier_api::{AppAction, BuildRequest};

use crate::args::NameArg;

/// Stages the app's current package again (new buildpacks, new env), then restarts it on the new
/// droplet.
pub async fn run(args: NameArg) -> Result<()> {
    let client = super::connect()?;
    super::stage::run(&client, &args.name, &BuildRequest { package: None }).await?;
    println!("Restarting {}...", args.name);
    client.action(&args.name, AppAction::Restart).await?;
    let app = super::wait::until_latest_deployed(&client, &args.name).await?;
    super::wait::print_running(&app);
    Ok(())
}

use anyhow::Result;
use pier_api::AppAction;

use crate::args::NameArg;

pub async fn run(args: NameArg) -> Result<()> {
    let client = super::connect()?;
    println!("Restarting {}...", args.name);
    client.action(&args.name, AppAction::Restart).await?;
    let app = super::wait::until_latest_deployed(&client, &args.name).await?;
    super::wait::print_running(&app);
    Ok(())
}

use anyhow::Result;
use pier_api::AppAction;

use crate::args::NameArg;

pub async fn run(args: NameArg) -> Result<()> {
    let client = super::connect()?;
    println!("Starting {}...", args.name);
    client.action(&args.name, AppAction::Start).await?;
    let app = super::wait::until_latest_deployed(&client, &args.name).await?;
    super::wait::print_running(&app);
    Ok(())
}

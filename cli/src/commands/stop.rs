use anyhow::Result;
use pier_api::AppAction;

use crate::args::NameArg;

pub async fn run(args: NameArg) -> Result<()> {
    let client = super::connect()?;
    client.action(&args.name, AppAction::Stop).await?;
    println!("Stopped {}.", args.name);
    Ok(())
}

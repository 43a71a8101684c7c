use anyhow::Result;

use crate::args::NameArg;

pub async fn run(args: NameArg) -> Result<()> {
    let client = super::connect()?;
    client.action(&args.name, "stop").await?;
    println!("Stopped {}.", args.name);
    Ok(())
}

use anyhow::Result;

use crate::args::NameArg;

pub async fn run(args: NameArg) -> Result<()> {
    let client = super::connect()?;
    println!("Starting {}...", args.name);
    let app = client.action(&args.name, "start").await?;
    let droplet = super::wait::current_droplet(&app)?;
    let app = super::wait::until_running(&client, app, &droplet).await?;
    super::wait::print_running(&app);
    Ok(())
}

//! `pier delete-buildpack NAME [-f]`.

use anyhow::Result;

use crate::args::DeleteBuildpackArgs;

pub async fn run(args: DeleteBuildpackArgs) -> Result<()> {
    let question = format!("Really delete the buildpack {}?", args.name);
    if !crate::output::confirm(&question, args.force)? {
        println!("Not deleted.");
        return Ok(());
    }
    let client = super::connect()?;
    client.delete_buildpack(&args.name).await?;
    println!("Deleted buildpack {}.", args.name);
    Ok(())
}

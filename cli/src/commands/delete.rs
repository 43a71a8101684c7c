use anyhow::Result;
use pier_api::ErrorCode;

use crate::args::DeleteArgs;

pub async fn run(args: DeleteArgs) -> Result<()> {
    let name = &args.name;
    let question = format!("Really delete the app {name}, its instances, routes and uploads?");
    if !crate::output::confirm(&question, args.force)? {
        println!("Not deleted.");
        return Ok(());
    }
    let client = super::connect()?;
    match client.delete_app(name).await {
        Ok(()) => println!("Deleted {name}."),
        // As `cf delete` does: deleting what isn't there is not a failure. (A space or org that
        // is not there, or not seen, is.)
        Err(e)
            if e.code() == Some(ErrorCode::NotFound)
                && e.to_string().contains(&format!("app {name} not found")) =>
        {
            println!("App {name} does not exist.")
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

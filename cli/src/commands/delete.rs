use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result};
use pier_api::ErrorCode;

use crate::args::DeleteArgs;
use crate::client::ClientError;

pub async fn run(args: DeleteArgs) -> Result<()> {
    let name = &args.name;
    // Ask only when someone is there to answer.
    if !args.force && std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        eprint!("Really delete the app {name}, its instances, routes and uploads? [y/N] ");
        std::io::stderr()
            .flush()
            .context("cannot write the prompt")?;
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .context("cannot read the answer")?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("Not deleted.");
            return Ok(());
        }
    }
    let client = super::connect()?;
    match client.delete_app(name).await {
        Ok(()) => println!("Deleted {name}."),
        // As `cf delete` does: deleting what isn't there is not a failure.
        Err(e @ ClientError::Api(_)) if e.code() == Some(ErrorCode::NotFound) => {
            println!("App {name} does not exist.")
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

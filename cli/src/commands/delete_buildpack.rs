//! `pier delete-buildpack NAME [-f]`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result};

use crate::args::DeleteBuildpackArgs;

pub async fn run(args: DeleteBuildpackArgs) -> Result<()> {
    if !args.force && std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        eprint!("Really delete the buildpack {}? [y/N] ", args.name);
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
    client.delete_buildpack(&args.name).await?;
    println!("Deleted buildpack {}.", args.name);
    Ok(())
}

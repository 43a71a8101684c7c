//! `pier buildpacks [--json]` and `pier clear-buildpack-cache NAME`.

use anyhow::Result;

use crate::args::{BuildpacksArgs, NameArg};
use crate::output;

pub async fn run(args: BuildpacksArgs) -> Result<()> {
    let client = super::connect()?;
    let list = client.buildpacks().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|b| {
            vec![
                b.position.to_string(),
                b.name.clone(),
                if b.enabled { "yes" } else { "no" }.to_string(),
                if b.builtin { "built-in" } else { "admin" }.to_string(),
                b.scripts.join(" "),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(&["position", "name", "enabled", "kind", "scripts"], &rows)
    );
    Ok(())
}

pub async fn clear_cache(args: NameArg) -> Result<()> {
    let client = super::connect()?;
    client.clear_cache(&args.name).await?;
    println!(
        "Cleared the buildpack cache of {}; its next staging starts cold.",
        args.name
    );
    Ok(())
}

use anyhow::{Context, Result};

use crate::args::EventsArgs;
use crate::output::{format_time, table};

pub async fn run(args: EventsArgs) -> Result<()> {
    let client = super::connect()?;
    let events = client.events(&args.name).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&events).context("cannot encode events as JSON")?
        );
        return Ok(());
    }
    if events.is_empty() {
        println!("No events for {}.", args.name);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                format_time(e.time),
                e.kind.to_string(),
                e.actor.clone(),
                e.message.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["time", "event", "actor", "description"], &rows)
    );
    Ok(())
}

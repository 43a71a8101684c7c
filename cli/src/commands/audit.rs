//! `pier audit [--since 1h|RFC3339] [--limit N] [--json]`: the platform's audit log (platform
//! admin), newest first: when, who, what, on what, where, and the answer's status.

use anyhow::{Context, Result};
use pier_api::AuditQuery;

use crate::args::AuditArgs;
use crate::output::{format_time, table};

pub async fn run(args: AuditArgs) -> Result<()> {
    let client = super::connect()?;
    let entries = client
        .audit(&AuditQuery {
            since: args.since,
            limit: args.limit,
        })
        .await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries)
                .context("cannot encode the audit log as JSON")?
        );
        return Ok(());
    }
    if entries.is_empty() {
        println!("Nothing in the audit log for that time.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let place = match (&e.org, &e.space) {
                (Some(o), Some(s)) => format!("{o}/{s}"),
                (Some(o), None) => o.clone(),
                _ => "-".into(),
            };
            vec![
                format_time(e.time),
                e.actor.clone(),
                e.status.to_string(),
                e.action.clone(),
                e.target.clone().unwrap_or_else(|| "-".into()),
                place,
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["time", "actor", "status", "action", "target", "org/space"],
            &rows
        )
    );
    Ok(())
}

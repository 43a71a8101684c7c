use anyhow::{Context, Result};

use crate::args::{AppsArgs, RouteArgs};
use crate::output::{table, Failure};

pub async fn map(args: RouteArgs, map: bool) -> Result<()> {
    let route = args.route().map_err(Failure::new)?;
    let client = super::connect()?;
    let app = if map {
        client.map_route(&args.name, &route).await?
    } else {
        client.unmap_route(&args.name, &route).await?
    };
    if map {
        println!("Mapped {route} to {}", app.name);
    } else {
        println!("Unmapped {route} from {}", app.name);
    }
    Ok(())
}

pub async fn list(args: AppsArgs) -> Result<()> {
    let client = super::connect()?;
    let all = client.route_mappings().await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&all).context("cannot encode JSON")?
        );
        return Ok(());
    }
    if all.is_empty() {
        println!("No routes.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|m| {
            vec![
                m.route.host.clone(),
                m.route.path.clone(),
                m.app.clone(),
                m.url.clone(),
            ]
        })
        .collect();
    print!("{}", table(&["host", "path", "app", "url"], &rows));
    Ok(())
}

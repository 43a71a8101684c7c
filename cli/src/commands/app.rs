use anyhow::{Context, Result};
use pier_api::{AppResponse, HealthCheckType};

use crate::args::AppArgs;
use crate::output::{self, format_mb, format_time};

pub async fn run(args: AppArgs) -> Result<()> {
    let client = super::connect()?;
    let app = client.app_with_stats(&args.name).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&app).context("cannot encode the app as JSON")?
        );
        return Ok(());
    }
    print_details(&app);
    Ok(())
}

pub fn print_details(app: &AppResponse) {
    let mut rows: Vec<(&str, String)> = vec![
        ("name", app.name.to_string()),
        ("state", super::apps::state_str(app.state).to_string()),
        (
            "routes",
            if app.routes.is_empty() {
                "none".to_string()
            } else {
                app.routes.join(", ")
            },
        ),
        ("instances", super::apps::running_of_desired(app)),
    ];
    if let Some(p) = output::main_process(app) {
        rows.push(("memory", format_mb(p.memory_mb)));
        rows.push(("disk", format_mb(p.disk_mb)));
        let hc = &p.health_check;
        let kind = match hc.kind {
            HealthCheckType::Port => "port".to_string(),
            HealthCheckType::Process => "process".to_string(),
            HealthCheckType::Http => format!("http {}", hc.endpoint.as_deref().unwrap_or("/")),
        };
        rows.push((
            "health check",
            format!("{kind}, start timeout {} s", hc.timeout_secs),
        ));
        if let Some(cmd) = &p.command {
            rows.push(("command", cmd.clone()));
        }
    }
    match &app.droplet {
        Some(d) => {
            rows.push(("buildpack", d.buildpack.clone()));
            rows.push((
                "droplet",
                format!(
                    "{} (staged {})",
                    short(&d.sha256),
                    format_time(d.created_at)
                ),
            ));
        }
        None => rows.push(("droplet", "none: not staged yet".to_string())),
    }
    if let Some(age) = sample_age(app) {
        rows.push(("stats", format!("sampled {age} ago")));
    }
    if app.standby_ready > 0 {
        rows.push((
            "standby",
            format!(
                "{} instances started ahead of a scale-up",
                app.standby_ready
            ),
        ));
    }
    for (key, value) in rows {
        println!("{:<14}{value}", format!("{key}:"));
    }
    if !app.instances.is_empty() {
        println!();
        print!("{}", output::instance_table(&app.instances, true));
    }
}

/// How old the oldest instance figures are, like `1.4s`.
fn sample_age(app: &AppResponse) -> Option<String> {
    let oldest = app
        .instances
        .iter()
        .filter_map(|i| i.stats.as_ref()?.sampled_at)
        .min()?;
    let age = (time::OffsetDateTime::now_utc() - oldest)
        .as_seconds_f64()
        .max(0.0);
    Some(format!("{age:.1}s"))
}

/// The first 12 hex digits of a sha256, enough to tell droplets apart.
pub fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

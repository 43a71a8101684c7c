use anyhow::{Context, Result};
use pier_api::{AppResponse, AppState, InstanceState};

use crate::args::AppsArgs;
use crate::output::{self, format_mb};

pub async fn run(args: AppsArgs) -> Result<()> {
    let client = super::connect()?;
    let apps = client.apps().await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&apps).context("cannot encode the apps as JSON")?
        );
        return Ok(());
    }
    if apps.is_empty() {
        println!("No apps yet: push one with `pier push NAME`.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|app| {
            let memory = output::main_process(app)
                .map(|p| format_mb(p.memory_mb))
                .unwrap_or_else(|| "-".into());
            vec![
                app.name.to_string(),
                state_str(app.state).to_string(),
                running_of_desired(app),
                memory,
                app.routes.join(", "),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(&["name", "state", "instances", "memory", "routes"], &rows)
    );
    Ok(())
}

pub fn state_str(state: AppState) -> &'static str {
    match state {
        AppState::Started => "started",
        AppState::Stopped => "stopped",
    }
}

/// `running/desired` for the app's web process.
pub fn running_of_desired(app: &AppResponse) -> String {
    let Some(process) = output::main_process(app) else {
        return "0/0".to_string();
    };
    let running = app
        .instances
        .iter()
        .filter(|i| i.process == process.kind && i.state == InstanceState::Running)
        .count();
    format!("{running}/{}", process.instances)
}

use anyhow::Result;
use pier_api::ProcessConfigRequest;

use crate::args::ScaleArgs;
use crate::output::{self, format_mb, Failure};

pub async fn run(args: ScaleArgs) -> Result<()> {
    if args.instances.is_none() && args.memory_mb.is_none() && args.disk_mb.is_none() {
        return Err(Failure::new("nothing to change")
            .hint("give -i INSTANCES, -m MEMORY or -k DISK")
            .into());
    }
    let client = super::connect()?;
    let req = ProcessConfigRequest {
        instances: args.instances,
        memory_mb: args.memory_mb,
        disk_mb: args.disk_mb,
        ..Default::default()
    };
    let app = client.put_process(&args.name, &args.process, &req).await?;
    let Some(p) = app.processes.iter().find(|p| p.kind == args.process) else {
        return Ok(());
    };
    println!(
        "Scaled {} {}: {} instances, {} memory, {} disk",
        app.name,
        p.kind,
        p.instances,
        format_mb(p.memory_mb),
        format_mb(p.disk_mb)
    );
    if p.kind.is_web() && app.state == pier_api::AppState::Started && p.instances > 0 {
        if let Some(d) = &app.droplet {
            let app = super::wait::until_running(&client, app.clone(), &d.sha256).await?;
            print!("{}", output::instance_table(&app.instances, false));
        }
    }
    Ok(())
}

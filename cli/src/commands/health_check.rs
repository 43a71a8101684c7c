use anyhow::Result;
use pier_api::{HealthCheckType, ProcessConfigRequest};

use crate::args::HealthCheckArgs;
use crate::output::Failure;

pub async fn run(args: HealthCheckArgs) -> Result<()> {
    if args.endpoint.is_some() && args.kind != HealthCheckType::Http {
        return Err(Failure::new("--endpoint only goes with the http health check type").into());
    }
    let client = super::connect()?;
    let app = client.app(&args.name).await?;
    let Some(current) = app.processes.iter().find(|p| p.kind == args.process) else {
        return Err(
            Failure::new(format!("{} has no process type {}", app.name, args.process)).into(),
        );
    };
    // Only what was given changes; the rest of the current check is kept.
    let mut hc = current.health_check.clone();
    hc.kind = args.kind;
    hc.endpoint = match args.kind {
        HealthCheckType::Http => args.endpoint.or(hc.endpoint).or(Some("/".into())),
        _ => None,
    };
    if let Some(t) = args.timeout {
        hc.timeout_secs = t;
    }
    if let Some(t) = args.invocation_timeout {
        hc.invocation_timeout_secs = t;
    }
    let req = ProcessConfigRequest {
        health_check: Some(hc.clone()),
        ..Default::default()
    };
    client.put_process(&args.name, &args.process, &req).await?;
    let what = match hc.kind {
        HealthCheckType::Http => format!("http {}", hc.endpoint.as_deref().unwrap_or("/")),
        HealthCheckType::Port => "port".into(),
        HealthCheckType::Process => "process".into(),
    };
    println!(
        "Health check of {} {} set to {what}; running instances are replaced one at a time",
        args.name, args.process
    );
    Ok(())
}

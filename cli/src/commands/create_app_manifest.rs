//! `pier create-app-manifest NAME [-p PATH] [-f]`: the app as it is, written as a manifest that
//! `pier push` reads back (name, instances, memory, disk, buildpacks, command, env, routes, stack,
//! health check, and the other process types under `processes:`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use pier_api::{AppResponse, HealthCheck, HealthCheckType};
use serde::Serialize;

use crate::args::CreateAppManifestArgs;
use crate::output::Failure;

#[derive(Serialize)]
struct Manifest {
    applications: Vec<App>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "kebab-case")]
struct App {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    instances: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<String>,
    #[serde(rename = "disk_quota", skip_serializing_if = "Option::is_none")]
    disk_quota: Option<String>,
    stack: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    buildpacks: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Route>,
    #[serde(skip_serializing_if = "Option::is_none")]
    no_route: Option<bool>,
    #[serde(flatten)]
    health: Health,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    processes: Vec<Process>,
}

#[derive(Serialize)]
struct Route {
    route: String,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "kebab-case")]
struct Health {
    #[serde(skip_serializing_if = "Option::is_none")]
    health_check_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_check_http_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_check_invocation_timeout: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Process {
    #[serde(rename = "type")]
    kind: String,
    instances: u32,
    memory: String,
    #[serde(rename = "disk_quota")]
    disk_quota: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(flatten)]
    health: Health,
}

fn health(hc: &HealthCheck, default: HealthCheckType) -> Health {
    let d = HealthCheck::default();
    let kind = match hc.kind {
        HealthCheckType::Port => "port",
        HealthCheckType::Http => "http",
        HealthCheckType::Process => "process",
    };
    Health {
        health_check_type: (hc.kind != default).then(|| kind.to_string()),
        health_check_http_endpoint: hc.endpoint.clone(),
        health_check_invocation_timeout: (hc.invocation_timeout_secs != d.invocation_timeout_secs)
            .then_some(hc.invocation_timeout_secs),
        timeout: (hc.timeout_secs != d.timeout_secs).then_some(hc.timeout_secs),
    }
}

fn mb(n: u64) -> String {
    if n % 1024 == 0 {
        format!("{}G", n / 1024)
    } else {
        format!("{n}M")
    }
}

/// `http://host:port/path` → `host/path`, as a manifest route.
fn route_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (hostport, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let host = hostport.split(':').next().unwrap_or(hostport);
    format!("{host}{path}")
}

/// The manifest of an app as the API describes it.
pub fn manifest_yaml(app: &AppResponse) -> Result<String> {
    let mut out = App {
        name: app.name.to_string(),
        stack: "pier-bookworm".into(),
        buildpacks: app.buildpacks.clone(),
        command: app.command.clone(),
        env: app.env.clone(),
        routes: app
            .routes
            .iter()
            .map(|u| Route { route: route_of(u) })
            .collect(),
        ..App::default()
    };
    if app.routes.is_empty() {
        out.no_route = Some(true);
    }
    for p in &app.processes {
        if p.kind.is_web() {
            out.instances = Some(p.instances);
            out.memory = Some(mb(p.memory_mb));
            out.disk_quota = Some(mb(p.disk_mb));
            out.health = health(&p.health_check, HealthCheckType::Port);
        } else {
            // The command only when the user set one (not the Procfile's or buildpack's).
            let from_droplet = app
                .droplet
                .as_ref()
                .and_then(|d| d.process_types.get(p.kind.as_str()));
            let command = p.command.clone().filter(|c| Some(c) != from_droplet);
            out.processes.push(Process {
                kind: p.kind.to_string(),
                instances: p.instances,
                memory: mb(p.memory_mb),
                disk_quota: mb(p.disk_mb),
                command,
                health: health(&p.health_check, HealthCheckType::Process),
            });
        }
    }
    let yaml = serde_yaml_ng::to_string(&Manifest {
        applications: vec![out],
    })?;
    Ok(format!("---\n{yaml}"))
}

pub async fn run(args: CreateAppManifestArgs) -> Result<()> {
    let path = args
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from("manifest.yml"));
    if path.exists() && !args.force {
        return Err(Failure::new(format!("{} already exists", path.display()))
            .hint("pass -f to replace it, or -p to write somewhere else")
            .into());
    }
    let client = super::connect()?;
    let app = client.app(&args.name).await?;
    let yaml = manifest_yaml(&app)?;
    std::fs::write(&path, yaml).with_context(|| format!("cannot write {}", path.display()))?;
    println!("Wrote the manifest of {} to {}.", app.name, path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_lose_scheme_and_port() {
        assert_eq!(route_of("http://a.localhost:8080"), "a.localhost");
        assert_eq!(route_of("http://a.example.com/v1"), "a.example.com/v1");
        assert_eq!(mb(1024), "1G");
        assert_eq!(mb(256), "256M");
    }
}

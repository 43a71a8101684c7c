//! `pier create-user-provided-service`, `update-user-provided-service`, `services`, `service`,
//! `delete-service`, `bind-service`, `unbind-service`, as the cf CLI spells them. Credentials are
//! given as a JSON object (`-p '{"k":"v"}'`) or as key names to be asked for (`-p k1,k2`, one
//! line each on stdin); they are never printed back. Binding or unbinding deploys a running app,
//! rolling, unless `--no-restart`.

use std::io::BufRead;

use anyhow::{Context, Result};
use pier_api::{CreateServiceInstanceRequest, UpdateUserProvidedRequest, UserProvided};
use serde_json::{Map, Value};

use crate::args::{
    BindServiceArgs, CreateUpsArgs, DeleteNamedArgs, ServiceArgs, ServicesArgs, UpdateUpsArgs,
};
use crate::output::{self, Failure};

/// `-p`: a JSON object, or comma-separated key names whose values are read from stdin.
fn credentials(p: &str) -> Result<Map<String, Value>> {
    let p = p.trim();
    if p.starts_with('{') {
        return match serde_json::from_str::<Value>(p) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(Failure::new("-p must be a JSON object, like '{\"user\":\"u\"}'").into()),
            Err(e) => Err(Failure::new(format!(
                "-p is not valid JSON (line {} column {}); give a JSON object, or key names \
                 like -p user,password to be asked for their values",
                e.line(),
                e.column()
            ))
            .into()),
        };
    }
    let keys: Vec<&str> = p
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    if keys.is_empty() {
        return Err(Failure::new("-p names no credential").into());
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut out = Map::new();
    for k in keys {
        eprint!("{k}> ");
        let v = lines
            .next()
            .with_context(|| format!("no value for {k} on stdin"))?
            .context("cannot read stdin")?;
        out.insert(k.to_string(), Value::String(v));
    }
    Ok(out)
}

fn tags(t: &Option<String>) -> Option<Vec<String>> {
    t.as_ref().map(|t| {
        t.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

pub async fn create_ups(args: CreateUpsArgs) -> Result<()> {
    let creds = match &args.credentials {
        Some(p) => credentials(p)?,
        None => Map::new(),
    };
    let client = super::connect()?;
    let req = CreateServiceInstanceRequest {
        name: args.name.clone(),
        user_provided: UserProvided {
            credentials: creds,
            tags: tags(&args.tags).unwrap_or_default(),
            syslog_drain_url: args.syslog_drain_url.clone(),
        },
    };
    client.create_service(&req).await?;
    println!("Created user-provided service {}.", args.name);
    println!("Next: `pier bind-service APP {}`.", args.name);
    Ok(())
}

pub async fn update_ups(args: UpdateUpsArgs) -> Result<()> {
    let credentials = match &args.credentials {
        Some(p) => Some(credentials(p)?),
        None => None,
    };
    let client = super::connect()?;
    let req = UpdateUserProvidedRequest {
        credentials,
        tags: tags(&args.tags),
        syslog_drain_url: args.syslog_drain_url.clone(),
    };
    let svc = client.update_service(&args.name, &req).await?;
    println!("Updated user-provided service {}.", args.name);
    if !svc.bound_apps.is_empty() {
        println!(
            "Bound apps see it after their next restart: {} (`pier restart APP`).",
            svc.bound_apps.join(", ")
        );
    }
    Ok(())
}

pub async fn list(args: ServicesArgs) -> Result<()> {
    let client = super::connect()?;
    let svcs = client.services().await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&svcs).context("cannot encode")?
        );
        return Ok(());
    }
    if svcs.is_empty() {
        println!("No service instances in this space.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = svcs
        .iter()
        .map(|s| vec![s.name.clone(), s.kind.clone(), s.bound_apps.join(", ")])
        .collect();
    print!(
        "{}",
        output::table(&["name", "service", "bound apps"], &rows)
    );
    Ok(())
}

pub async fn show(args: ServiceArgs) -> Result<()> {
    let client = super::connect()?;
    let s = client.service(&args.name).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&s).context("cannot encode")?
        );
        return Ok(());
    }
    println!("name:        {}", s.name);
    println!("service:     {}", s.kind);
    println!("tags:        {}", s.tags.join(", "));
    let keys: Vec<&str> = s.credentials.keys().map(String::as_str).collect();
    println!(
        "credentials: {} (values: `pier service {} --json`)",
        keys.join(", "),
        s.name
    );
    println!("bound apps:  {}", s.bound_apps.join(", "));
    Ok(())
}

pub async fn delete(args: DeleteNamedArgs) -> Result<()> {
    let question = format!("Really delete the service instance {}?", args.name);
    if !output::confirm(&question, args.force)? {
        println!("Not deleted.");
        return Ok(());
    }
    let client = super::connect()?;
    client.delete_service(&args.name).await?;
    println!("Deleted service instance {}.", args.name);
    Ok(())
}

pub async fn bind(args: BindServiceArgs, bind: bool) -> Result<()> {
    let client = super::connect()?;
    client.bind_service(&args.app, &args.service, bind).await?;
    if bind {
        println!("Bound {} to {}.", args.app, args.service);
    } else {
        println!("Unbound {} from {}.", args.app, args.service);
    }
    super::wait::deploy_change(&client, &args.app, args.no_restart, ("", "its services")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_credentials_are_an_object_and_bad_json_is_refused_without_echoing_it() {
        let m = credentials(r#"{"host": "mail", "port": 25}"#).unwrap();
        assert_eq!(m["port"], 25);
        let e = credentials(r#"{"password": "s3cret""#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid JSON") && !e.contains("s3cret"), "{e}");
        assert!(credentials("[1]").is_err());
    }
}

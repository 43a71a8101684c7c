//! `pier create-user-provided-service`, `update-user-provided-service`, `create-service`,
//! `update-service`, `services`, `service`, `delete-service`, `bind-service`, `unbind-service`,
//! `create-service-key`, `service-keys`, `service-key`, `delete-service-key`, as the cf CLI
//! spells them. Credentials are
//! given as a JSON object (`-p '{"k":"v"}'`) or as key names to be asked for (`-p k1,k2`, one
//! line each on stdin); they are never printed back. Binding or unbinding deploys a running app,
//! rolling, unless `--no-restart`.

use std::io::BufRead;

use anyhow::{Context, Result};
use pier_api::{
    BindRequest, CreateManagedInstanceRequest, CreateServiceInstanceRequest,
    CreateServiceKeyRequest, ServiceInstanceResponse, UpdateManagedInstanceRequest,
    UpdateUserProvidedRequest, UserProvided,
};
use serde_json::{Map, Value};

use crate::args::{
    BindServiceArgs, CreateServiceArgs, CreateUpsArgs, DeleteNamedArgs, DeleteServiceKeyArgs,
    NameArgString, ServiceArgs, ServiceKeyArgs, ServiceKeyNameArgs, ServicesArgs,
    UpdateServiceArgs, UpdateUpsArgs,
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
    let managed = svcs.iter().any(|s| s.managed.is_some());
    let rows: Vec<Vec<String>> = svcs
        .iter()
        .map(|s| {
            let mut row = vec![s.name.clone(), s.kind.clone(), s.bound_apps.join(", ")];
            if managed {
                let m = s.managed.as_ref();
                row[1] = m.map_or(s.kind.clone(), |m| m.offering.clone());
                row.insert(2, m.map_or("-".into(), |m| m.plan.clone()));
                row.push(last_operation(s));
                row.push(m.map_or("-".into(), |m| m.broker.clone()));
            }
            row
        })
        .collect();
    let header: &[&str] = if managed {
        &[
            "name",
            "service",
            "plan",
            "bound apps",
            "last operation",
            "broker",
        ]
    } else {
        &["name", "service", "bound apps"]
    };
    print!("{}", output::table(header, &rows));
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
    if let Some(m) = &s.managed {
        println!("service:     {}", m.offering);
        println!("plan:        {}", m.plan);
        println!("broker:      {}", m.broker);
        println!("status:      {}", m.last_operation);
        if let Some(d) = &m.dashboard_url {
            println!("dashboard:   {d}");
        }
        println!("tags:        {}", s.tags.join(", "));
        println!("keys:        {}", m.keys.join(", "));
        println!("bound apps:  {}", s.bound_apps.join(", "));
        return Ok(());
    }
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
    // A broker may still be deprovisioning it.
    match client.service(&args.name).await {
        Ok(s) => report(&args.name, Some(&s)),
        Err(_) => {
            println!("Deleted service instance {}.", args.name);
            Ok(())
        }
    }
}

pub async fn bind(args: BindServiceArgs, bind: bool) -> Result<()> {
    let params = parameters(&args.parameters)?;
    let client = super::connect()?;
    match params {
        Some(p) if bind => {
            let req = BindRequest {
                parameters: Some(p),
            };
            client
                .bind_service_with(&args.app, &args.service, &req)
                .await?;
        }
        _ => client.bind_service(&args.app, &args.service, bind).await?,
    }
    if bind {
        println!("Bound {} to {}.", args.app, args.service);
    } else {
        println!("Unbound {} from {}.", args.app, args.service);
    }
    super::wait::deploy_change(&client, &args.app, args.no_restart, ("", "its services")).await
}

/// `-c`: a JSON object, or a clear error naming what is wrong (never echoing the value).
fn parameters(c: &Option<String>) -> Result<Option<Map<String, Value>>> {
    let Some(c) = c else {
        return Ok(None);
    };
    match serde_json::from_str::<Value>(c.trim()) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(Failure::new("-c must be a JSON object, like '{\"size\":\"small\"}'").into()),
        Err(e) => Err(Failure::new(format!(
            "-c is not valid JSON (line {} column {}): give a JSON object, like '{{\"size\":\"small\"}}'",
            e.line(),
            e.column()
        ))
        .into()),
    }
}

/// The last operation as Cloud Foundry shows it (`create succeeded`), or `-` for user-provided.
fn last_operation(s: &ServiceInstanceResponse) -> String {
    s.managed
        .as_ref()
        .map_or("-".into(), |m| m.last_operation.to_string())
}

/// Polls the instance until its operation ends (or it is gone, for a delete).
async fn wait_done(
    client: &crate::client::Client,
    name: &str,
) -> Result<Option<ServiceInstanceResponse>> {
    loop {
        let s = match client.service(name).await {
            Ok(s) => s,
            Err(e) if e.code() == Some(pier_api::ErrorCode::NotFound) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if s.managed
            .as_ref()
            .is_none_or(|m| m.last_operation.state != "in progress")
        {
            return Ok(Some(s));
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Says how an operation stands; an error when it failed.
fn report(name: &str, s: Option<&ServiceInstanceResponse>) -> Result<()> {
    let Some(s) = s else {
        println!("Service instance {name} is gone.");
        return Ok(());
    };
    let op = last_operation(s);
    println!("Service instance {name}: {op}.");
    if op.contains(" in progress") {
        println!("Follow it with `pier service {name}` (or --wait).");
    }
    if s.managed
        .as_ref()
        .is_some_and(|m| m.last_operation.state == "failed")
    {
        return Err(Failure::new(format!("{name}: {op}")).into());
    }
    Ok(())
}

pub async fn create_managed(args: CreateServiceArgs) -> Result<()> {
    let params = parameters(&args.parameters)?;
    let client = super::connect()?;
    let req = CreateManagedInstanceRequest {
        name: args.name.clone(),
        offering: args.offering.clone(),
        plan: args.plan.clone(),
        broker: args.broker.clone(),
        parameters: params,
        tags: tags(&args.tags).unwrap_or_default(),
    };
    let mut s = Some(client.create_managed_service(&req).await?);
    if args.wait {
        s = wait_done(&client, &args.name).await?;
    }
    report(&args.name, s.as_ref())?;
    println!("Next: `pier bind-service APP {}`.", args.name);
    Ok(())
}

pub async fn update_managed(args: UpdateServiceArgs) -> Result<()> {
    let params = parameters(&args.parameters)?;
    let client = super::connect()?;
    let req = UpdateManagedInstanceRequest {
        plan: args.plan.clone(),
        parameters: params,
        tags: tags(&args.tags),
    };
    let mut s = Some(client.update_managed_service(&args.name, &req).await?);
    if args.wait {
        s = wait_done(&client, &args.name).await?;
    }
    report(&args.name, s.as_ref())
}

pub async fn create_key(args: ServiceKeyArgs) -> Result<()> {
    let params = parameters(&args.parameters)?;
    let client = super::connect()?;
    let req = CreateServiceKeyRequest { parameters: params };
    client
        .create_service_key(&args.service, &args.key, &req)
        .await?;
    println!(
        "Created service key {} of {}; see it with `pier service-key {} {}`.",
        args.key, args.service, args.service, args.key
    );
    Ok(())
}

pub async fn keys(args: NameArgString) -> Result<()> {
    let client = super::connect()?;
    let keys = client.service_keys(&args.name).await?;
    if keys.is_empty() {
        println!("No service keys for {}.", args.name);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = keys.iter().map(|k| vec![k.name.clone()]).collect();
    print!("{}", output::table(&["name"], &rows));
    Ok(())
}

pub async fn key(args: ServiceKeyNameArgs) -> Result<()> {
    let client = super::connect()?;
    let k = client.service_key(&args.service, &args.key).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&k.credentials).context("cannot encode")?
    );
    Ok(())
}

pub async fn delete_key(args: DeleteServiceKeyArgs) -> Result<()> {
    let question = format!(
        "Really delete the service key {} of {}?",
        args.key, args.service
    );
    if !output::confirm(&question, args.force)? {
        println!("Not deleted.");
        return Ok(());
    }
    let client = super::connect()?;
    client.delete_service_key(&args.service, &args.key).await?;
    println!("Deleted service key {} of {}.", args.key, args.service);
    Ok(())
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

    #[test]
    fn parameters_are_a_json_object_and_bad_json_is_named_without_echoing_it() {
        assert_eq!(parameters(&None).unwrap(), None);
        let m = parameters(&Some(r#"{"size": 2}"#.into())).unwrap().unwrap();
        assert_eq!(m["size"], 2);
        let e = parameters(&Some(r#"{"secret": "x""#.into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("-c is not valid JSON (line 1 column") && !e.contains("secret"),
            "{e}"
        );
        let e = parameters(&Some("[1]".into())).unwrap_err().to_string();
        assert!(e.contains("-c must be a JSON object"), "{e}");
    }
}

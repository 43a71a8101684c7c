//! `pier create-service-broker`, `service-brokers`, `update-service-broker`,
//! `delete-service-broker`, `marketplace`, `enable-service-access`, `disable-service-access`, as
//! the cf CLI spells them. A broker's password is sent once and never printed.

use anyhow::{Context, Result};
use pier_api::{
    CreateServiceBrokerRequest, ErrorCode, ServiceAccessRequest, UpdateServiceBrokerRequest,
};

use crate::args::{
    CreateBrokerArgs, DeleteNamedArgs, MarketplaceArgs, ServiceAccessArgs, ServicesArgs,
    UpdateBrokerArgs,
};
use crate::client::ClientError;
use crate::output;

fn forbidden(e: &ClientError) -> bool {
    e.code() == Some(ErrorCode::Forbidden)
}

pub async fn create(args: CreateBrokerArgs) -> Result<()> {
    let client = super::connect()?;
    let req = CreateServiceBrokerRequest {
        name: args.name.clone(),
        url: args.url.clone(),
        username: args.username.clone(),
        password: args.password.clone(),
    };
    let b = client
        .create_service_broker(&req, args.space_scoped)
        .await?;
    match &b.space {
        Some(sp) => println!("Registered service broker {} for space {sp}.", b.name),
        None => println!("Registered service broker {}.", b.name),
    }
    println!("Offerings: {}", b.offerings.join(", "));
    if b.space.is_none() {
        println!(
            "Next: `pier enable-service-access OFFERING` so that orgs see its plans in `pier marketplace`."
        );
    }
    Ok(())
}

pub async fn list(args: ServicesArgs) -> Result<()> {
    let client = super::connect()?;
    // The admin sees every broker; others, the target space's.
    let brokers = match client.service_brokers(false).await {
        Err(e) if forbidden(&e) => client.service_brokers(true).await?,
        other => other?,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&brokers).context("cannot encode")?
        );
        return Ok(());
    }
    if brokers.is_empty() {
        println!("No service brokers.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = brokers
        .iter()
        .map(|b| {
            vec![
                b.name.clone(),
                b.url.clone(),
                b.space.clone().unwrap_or_else(|| "(all)".into()),
                b.offerings.join(", "),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(&["name", "url", "space", "offerings"], &rows)
    );
    Ok(())
}

pub async fn update(args: UpdateBrokerArgs) -> Result<()> {
    let client = super::connect()?;
    let req = UpdateServiceBrokerRequest {
        url: args.url.clone(),
        username: args.username.clone(),
        password: args.password.clone(),
    };
    let b = match client.update_service_broker(&args.name, &req, false).await {
        Err(e) if forbidden(&e) => client.update_service_broker(&args.name, &req, true).await?,
        other => other?,
    };
    println!(
        "Updated service broker {}; offerings: {}",
        b.name,
        b.offerings.join(", ")
    );
    Ok(())
}

pub async fn delete(args: DeleteNamedArgs) -> Result<()> {
    let question = format!("Really delete the service broker {}?", args.name);
    if !output::confirm(&question, args.force)? {
        println!("Not deleted.");
        return Ok(());
    }
    let client = super::connect()?;
    match client.delete_service_broker(&args.name, false).await {
        Err(e) if forbidden(&e) => client.delete_service_broker(&args.name, true).await?,
        other => other?,
    }
    println!("Deleted service broker {}.", args.name);
    Ok(())
}

pub async fn marketplace(args: MarketplaceArgs) -> Result<()> {
    let client = super::connect()?;
    let offerings = client.marketplace(args.offering.as_deref()).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&offerings).context("cannot encode")?
        );
        return Ok(());
    }
    if offerings.is_empty() {
        println!("No service offerings are available in this space.");
        return Ok(());
    }
    if args.offering.is_some() {
        for o in &offerings {
            println!("offering: {} (broker {})", o.name, o.broker);
            println!("{}", o.description);
            let rows: Vec<Vec<String>> = o
                .plans
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.description.clone(),
                        if p.free { "free" } else { "paid" }.into(),
                        p.access.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(&["plan", "description", "free or paid", "access"], &rows)
            );
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = offerings
        .iter()
        .map(|o| {
            let plans: Vec<&str> = o.plans.iter().map(|p| p.name.as_str()).collect();
            vec![
                o.name.clone(),
                plans.join(", "),
                o.description.clone(),
                o.broker.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(&["offering", "plans", "description", "broker"], &rows)
    );
    Ok(())
}

pub async fn access(args: ServiceAccessArgs, org: Option<String>, enable: bool) -> Result<()> {
    let client = super::connect()?;
    let req = ServiceAccessRequest {
        offering: args.offering.clone(),
        plan: args.plan.clone(),
        org: org.clone(),
        broker: args.broker.clone(),
        enable,
    };
    let r = client.service_access(&req).await?;
    let verb = if enable { "Enabled" } else { "Disabled" };
    let plans = args.plan.clone().unwrap_or_else(|| "all plans".into());
    let whom = org.map_or("all orgs".to_string(), |o| format!("org {o}"));
    println!("{verb} access to {plans} of {} for {whom}.", r.offering);
    let rows: Vec<Vec<String>> = r
        .plans
        .iter()
        .map(|p| vec![p.name.clone(), p.access.clone(), p.orgs.join(", ")])
        .collect();
    print!("{}", output::table(&["plan", "access", "orgs"], &rows));
    Ok(())
}

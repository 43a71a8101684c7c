//! Quotas: `pier quotas`, `quota NAME`, `create-quota`, `update-quota`, `delete-quota`,
//! `set-quota ORG QUOTA`, `unset-quota ORG`, `set-space-quota SPACE QUOTA`, `unset-space-quota
//! SPACE`; and `pier org NAME` / `pier space NAME`, which show use against the quota.
//!
//! Flags are cf's where cf has the limit (`-m` total memory, `-a` app instances, `-r` routes);
//! `--apps` (number of apps) is Pier's own. A limit is a number or `unlimited` (`-1`, as cf
//! writes it). Pier has one kind of named quota, assignable to orgs and to spaces, so there is no
//! `create-space-quota`; cf's `-i` (memory per instance) has no Pier limit yet.

use anyhow::Result;
use pier_api::{CreateQuotaRequest, ErrorCode, QuotaLimits, QuotaResponse, QuotaUsage};

use super::orgs::{connect, not_found, org_of, print_json};
use crate::args::ShowNamedArgs;
use crate::args::{AppsArgs, DeleteNamedArgs, Limit, OrgNameArg, QuotaArgs, SetQuotaArgs};
use crate::output::{self, format_mb, Failure};

fn count(n: Option<u64>) -> String {
    n.map_or_else(|| "unlimited".into(), |n| n.to_string())
}

fn memory(n: Option<u64>) -> String {
    n.map_or_else(|| "unlimited".into(), format_mb)
}

/// What an unknown quota's 404 says, with where to look.
fn quota_not_found(e: pier_client::ClientError, name: &str) -> anyhow::Error {
    not_found(e, &format!("quota {name}"), "pier quotas")
}

pub async fn list(args: AppsArgs) -> Result<()> {
    let (_, client) = connect()?;
    let quotas = client.quotas().await?;
    if args.json {
        return print_json(&quotas, "the quotas");
    }
    if quotas.is_empty() {
        println!("No quotas yet: define one with `pier create-quota NAME -m 10G -a 50 -r 100`.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = quotas
        .iter()
        .map(|q| {
            let assigned: Vec<String> = q.orgs.iter().chain(&q.spaces).cloned().collect();
            vec![
                q.name.clone(),
                memory(q.limits.memory_mb),
                count(q.limits.instances),
                count(q.limits.apps),
                count(q.limits.routes),
                if assigned.is_empty() {
                    "-".into()
                } else {
                    assigned.join(", ")
                },
            ]
        })
        .collect();
    let header = [
        "name",
        "total memory",
        "app instances",
        "apps",
        "routes",
        "assigned to",
    ];
    print!("{}", output::table(&header, &rows));
    Ok(())
}

pub async fn show(args: ShowNamedArgs) -> Result<()> {
    let (_, client) = connect()?;
    let q = client
        .quota(&args.name)
        .await
        .map_err(|e| quota_not_found(e, &args.name))?;
    if args.json {
        return print_json(&q, "the quota");
    }
    let none = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    println!("name:            {}", q.name);
    print_limits(&q.limits);
    println!("orgs:            {}", none(&q.orgs));
    println!("spaces:          {}", none(&q.spaces));
    Ok(())
}

fn print_limits(l: &QuotaLimits) {
    println!("total memory:    {}", memory(l.memory_mb));
    println!("app instances:   {}", count(l.instances));
    println!("apps:            {}", count(l.apps));
    println!("routes:          {}", count(l.routes));
}

/// The limits given on the command line over `base` (for create, all unlimited).
fn apply(args: &QuotaArgs, mut base: QuotaLimits) -> QuotaLimits {
    let set = |slot: &mut Option<u64>, given: Option<Limit>| {
        if let Some(l) = given {
            *slot = l.value();
        }
    };
    set(&mut base.memory_mb, args.memory);
    set(&mut base.instances, args.instances);
    set(&mut base.apps, args.apps);
    set(&mut base.routes, args.routes);
    base
}

pub async fn create(args: QuotaArgs) -> Result<()> {
    let (_, client) = connect()?;
    let l = apply(&args, QuotaLimits::default());
    let q = client
        .create_quota(&CreateQuotaRequest {
            name: args.name.clone(),
            memory_mb: l.memory_mb,
            instances: l.instances,
            apps: l.apps,
            routes: l.routes,
        })
        .await?;
    println!("Created quota {}.", q.name);
    print_limits(&q.limits);
    println!("Next: `pier set-quota ORG {}`.", q.name);
    Ok(())
}

pub async fn update(args: QuotaArgs) -> Result<()> {
    if args.memory.is_none()
        && args.instances.is_none()
        && args.apps.is_none()
        && args.routes.is_none()
    {
        return Err(Failure::new("nothing to change: give at least one limit")
            .hint("pier update-quota NAME [-m MEM] [-a INSTANCES] [--apps N] [-r ROUTES]")
            .into());
    }
    let (_, client) = connect()?;
    // The API replaces all four limits: start from the quota's own, so unnamed ones stay.
    let current = client
        .quota(&args.name)
        .await
        .map_err(|e| quota_not_found(e, &args.name))?;
    let limits = apply(&args, current.limits);
    let q = client.update_quota(&args.name, &limits).await?;
    println!("Updated quota {}.", q.name);
    print_limits(&q.limits);
    Ok(())
}

pub async fn delete(args: DeleteNamedArgs) -> Result<()> {
    let name = &args.name;
    if !output::confirm(&format!("Really delete the quota {name}?"), args.force)? {
        println!("Not deleted.");
        return Ok(());
    }
    let (_, client) = connect()?;
    match client.delete_quota(name).await {
        Ok(()) => println!("Deleted quota {name}."),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => println!("Quota {name} does not exist."),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

pub async fn set_org(args: SetQuotaArgs) -> Result<()> {
    let (_, client) = connect()?;
    let org = client.set_org_quota(&args.name, Some(&args.quota)).await?;
    println!("Org {} now has quota {}.", org.name, args.quota);
    Ok(())
}

pub async fn unset_org(args: OrgNameArg) -> Result<()> {
    let (_, client) = connect()?;
    let org = client.set_org_quota(&args.name, None).await?;
    println!("Org {} has no quota now (unlimited).", org.name);
    Ok(())
}

pub async fn set_space(args: SetQuotaArgs) -> Result<()> {
    let (target, client) = connect()?;
    let org = org_of(&target);
    let space = client
        .set_space_quota(&org, &args.name, Some(&args.quota))
        .await?;
    println!(
        "Space {} of org {org} now has quota {}.",
        space.name, args.quota
    );
    Ok(())
}

pub async fn unset_space(args: OrgNameArg) -> Result<()> {
    let (target, client) = connect()?;
    let org = org_of(&target);
    let space = client.set_space_quota(&org, &args.name, None).await?;
    println!(
        "Space {} of org {org} has no quota of its own now (the org's applies).",
        space.name
    );
    Ok(())
}

/// `used of limit` lines for each thing a quota counts.
fn print_usage(quota: Option<&QuotaResponse>, used: &QuotaUsage) {
    let limits = quota.map(|q| q.limits.clone()).unwrap_or_default();
    println!(
        "total memory:    {} of {}",
        format_mb(used.memory_mb),
        memory(limits.memory_mb)
    );
    println!(
        "app instances:   {} of {}",
        used.instances,
        count(limits.instances)
    );
    println!("apps:            {} of {}", used.apps, count(limits.apps));
    println!(
        "routes:          {} of {}",
        used.routes,
        count(limits.routes)
    );
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}

/// `pier org NAME`: cf's `cf org` shape, plus what the org uses of its quota.
pub async fn show_org(args: ShowNamedArgs) -> Result<()> {
    let (_, client) = connect()?;
    let name = &args.name;
    let org = client
        .org(name)
        .await
        .map_err(|e| not_found(e, &format!("org {name}"), "pier orgs"))?;
    if args.json {
        return print_json(&org, "the org");
    }
    println!("name:            {}", org.name);
    println!("spaces:          {}", list_or_none(&org.spaces));
    match &org.quota {
        Some(q) => println!("quota:           {}", q.name),
        None => println!("quota:           none (unlimited)"),
    }
    print_usage(org.quota.as_ref(), &org.usage);
    Ok(())
}

/// `pier space NAME`: cf's `cf space` shape, plus what the space uses of its quota (and of the
/// org's, which applies too).
pub async fn show_space(args: ShowNamedArgs) -> Result<()> {
    let (target, client) = connect()?;
    let org_name = org_of(&target);
    let name = &args.name;
    let space = client
        .space(&org_name, name)
        .await
        .map_err(|e| not_found(e, &format!("space {name} in org {org_name}"), "pier spaces"))?;
    if args.json {
        return print_json(&space, "the space");
    }
    println!("name:            {}", space.name);
    println!("org:             {}", space.org);
    println!("apps:            {}", list_or_none(&space.apps));
    match &space.quota {
        Some(q) => println!("space quota:     {}", q.name),
        None => println!("space quota:     none"),
    }
    print_usage(space.quota.as_ref(), &space.usage);
    let org = client.org(&org_name).await?;
    if let Some(q) = &org.quota {
        println!();
        println!("org {} has quota {}:", org.name, q.name);
        print_usage(Some(q), &org.usage);
    }
    Ok(())
}

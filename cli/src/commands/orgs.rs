//! `pier target`, `orgs`, `spaces`, `create-org`, `delete-org`, `create-space`, `delete-space`.
//!
//! The target (org and space) is kept in the config file; `-o/-s` (or `PIER_ORG`/`PIER_SPACE`)
//! override it for one command. With none anywhere, commands act in the controller's `default`
//! org and space, where a new platform (and an older one's apps) start.

use anyhow::{Context, Result};
use pier_api::ErrorCode;

use crate::args::{AppsArgs, DeleteNamedArgs, OrgNameArg};
use crate::client::Client;
use crate::config::{self, Settings, Target};
use crate::output::{self, Failure};

const DEFAULT: &str = "default";

pub(super) fn connect() -> Result<(Target, Client)> {
    let target = Settings::from_env().target()?;
    let client = crate::client::connect(&target)?;
    Ok((target, client))
}

/// The org a space command acts in: the target's, else the controller's default.
pub(super) fn org_of(target: &Target) -> String {
    target.org.clone().unwrap_or_else(|| DEFAULT.into())
}

pub(super) fn print_json<T: serde::Serialize>(value: &T, what: &str) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).with_context(|| format!("cannot encode {what}"))?;
    println!("{text}");
    Ok(())
}

/// `pier target`: shows the target; with `-o`/`-s`, checks and saves it first.
pub async fn target(org: Option<String>, space: Option<String>) -> Result<()> {
    let settings = Settings::from_env();
    let current = settings.target()?;
    let (org, space) = if org.is_some() || space.is_some() {
        let client = crate::client::connect(&current)?;
        let org = org
            .or(current.org.clone())
            .unwrap_or_else(|| DEFAULT.into());
        let found = client
            .org(&org)
            .await
            .map_err(|e| not_found(e, &format!("org {org}"), "pier orgs"))?;
        // An org alone: its only space, if it has just one (as cf target does); else none yet.
        let space = match space {
            Some(s) => Some(s),
            None if found.spaces.len() == 1 => found.spaces.first().cloned(),
            None => None,
        };
        if let Some(s) = &space {
            client
                .space(&org, s)
                .await
                .map_err(|e| not_found(e, &format!("space {s} in org {org}"), "pier spaces"))?;
        }
        let path = settings.config_path()?;
        let mut file = config::load(&path)?;
        file.org = Some(org.clone());
        file.space = space.clone();
        config::save(&path, &file)?;
        (Some(org), space)
    } else {
        (current.org, current.space)
    };
    println!("API endpoint: {}", current.api);
    println!("org:          {}", org.as_deref().unwrap_or(DEFAULT));
    match (&org, &space) {
        (Some(_), None) => {
            println!("space:        (none: pick one with `pier target -s SPACE`)");
        }
        (_, space) => println!("space:        {}", space.as_deref().unwrap_or(DEFAULT)),
    }
    Ok(())
}

/// A 404 as "X does not exist" with the command that lists what does.
pub(super) fn not_found(e: pier_client::ClientError, what: &str, list: &str) -> anyhow::Error {
    if e.code() == Some(ErrorCode::NotFound) {
        return Failure::new(format!("{what} does not exist"))
            .hint(format!("`{list}` lists what there is"))
            .into();
    }
    e.into()
}

pub async fn list_orgs(args: AppsArgs) -> Result<()> {
    let (_, client) = connect()?;
    let orgs = client.orgs().await?;
    if args.json {
        return print_json(&orgs, "the orgs");
    }
    let rows: Vec<Vec<String>> = orgs
        .iter()
        .map(|o| vec![o.name.clone(), o.spaces.join(", ")])
        .collect();
    print!("{}", output::table(&["name", "spaces"], &rows));
    Ok(())
}

pub async fn list_spaces(args: AppsArgs) -> Result<()> {
    let (target, client) = connect()?;
    let org = org_of(&target);
    let spaces = client
        .spaces(&org)
        .await
        .map_err(|e| not_found(e, &format!("org {org}"), "pier orgs"))?;
    if args.json {
        return print_json(&spaces, "the spaces");
    }
    if spaces.is_empty() {
        println!("Org {org} has no spaces: create one with `pier create-space NAME -o {org}`.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = spaces
        .iter()
        .map(|s| vec![s.name.clone(), s.apps.len().to_string()])
        .collect();
    print!("{}", output::table(&["name", "apps"], &rows));
    Ok(())
}

pub async fn create_org(args: OrgNameArg) -> Result<()> {
    let (_, client) = connect()?;
    let org = client.create_org(&args.name).await?;
    println!("Created org {}.", org.name);
    println!("Next: `pier create-space NAME -o {}`.", org.name);
    Ok(())
}

pub async fn create_space(args: OrgNameArg) -> Result<()> {
    let (target, client) = connect()?;
    let org = org_of(&target);
    let space = client
        .create_space(&org, &args.name)
        .await
        .map_err(|e| not_found(e, &format!("org {org}"), "pier orgs"))?;
    println!("Created space {} in org {org}.", space.name);
    println!("Next: `pier target -o {org} -s {}`.", space.name);
    Ok(())
}

pub async fn delete_org(args: DeleteNamedArgs) -> Result<()> {
    let name = &args.name;
    let question = format!("Really delete the org {name}, all its spaces and all their apps?");
    if !output::confirm(&question, args.force)? {
        println!("Not deleted.");
        return Ok(());
    }
    let (_, client) = connect()?;
    match client.delete_org(name).await {
        Ok(()) => println!("Deleted org {name}."),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => println!("Org {name} does not exist."),
        Err(e) => return Err(e.into()),
    }
    forget_target(|t| {
        let hit = t.org.as_deref() == Some(name.as_str());
        if hit {
            (t.org, t.space) = (None, None);
        }
        hit
    })
}

pub async fn delete_space(args: DeleteNamedArgs) -> Result<()> {
    let (target, client) = connect()?;
    let org = org_of(&target);
    let name = &args.name;
    let question = format!("Really delete the space {name} of org {org} and all its apps?");
    if !output::confirm(&question, args.force)? {
        println!("Not deleted.");
        return Ok(());
    }
    match client.delete_space(&org, name).await {
        Ok(()) => println!("Deleted space {name} of org {org}."),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => {
            println!("Space {name} does not exist in org {org}.")
        }
        Err(e) => return Err(e.into()),
    }
    forget_target(|t| {
        let hit =
            t.org.as_deref().unwrap_or(DEFAULT) == org && t.space.as_deref() == Some(name.as_str());
        if hit {
            t.space = None;
        }
        hit
    })
}

/// Clears the saved target when it names what was just deleted (`clear` says whether it did).
fn forget_target(clear: impl FnOnce(&mut config::ConfigFile) -> bool) -> Result<()> {
    let path = Settings::from_env().config_path()?;
    let mut file = config::load(&path)?;
    if clear(&mut file) {
        config::save(&path, &file)?;
        println!(
            "The target named it and was cleared: pick another with `pier target -o ORG -s SPACE`."
        );
    }
    Ok(())
}

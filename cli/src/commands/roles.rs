//! `pier set-org-role`, `unset-org-role`, `set-space-role`, `unset-space-role`, `org-users`,
//! `space-users`, as the cf CLI spells them. The role name is checked before anything is sent.

use anyhow::{Context, Result};
use pier_api::{ErrorCode, Role, RoleHolder};

use crate::args::{OrgRoleArgs, OrgUsersArgs, SpaceRoleArgs, SpaceUsersArgs};
use crate::output::Failure;

/// A refusal as the controller words it, with what to try.
fn explain(e: pier_client::ClientError) -> anyhow::Error {
    match e.code() {
        Some(ErrorCode::NotFound) => Failure::new(e.to_string())
            .hint("`pier orgs`, `pier spaces -o ORG` and `pier users` list what there is")
            .into(),
        Some(ErrorCode::Forbidden) => Failure::new(e.to_string())
            .hint("`pier whoami` shows who you are logged in as")
            .into(),
        _ => e.into(),
    }
}

pub async fn org_role(args: OrgRoleArgs, give: bool) -> Result<()> {
    let client = super::connect()?;
    client
        .set_role(&args.org, None, &args.user, args.role, give)
        .await
        .map_err(explain)?;
    if give {
        println!("{} now holds {} in org {}.", args.user, args.role, args.org);
    } else {
        println!(
            "{} no longer holds {} in org {}.",
            args.user, args.role, args.org
        );
    }
    Ok(())
}

pub async fn space_role(args: SpaceRoleArgs, give: bool) -> Result<()> {
    let client = super::connect()?;
    client
        .set_role(&args.org, Some(&args.space), &args.user, args.role, give)
        .await
        .map_err(explain)?;
    let at = format!("space {} of org {}", args.space, args.org);
    if give {
        println!("{} now holds {} in {at}.", args.user, args.role);
    } else {
        println!("{} no longer holds {} in {at}.", args.user, args.role);
    }
    Ok(())
}

pub async fn org_users(args: OrgUsersArgs) -> Result<()> {
    let client = super::connect()?;
    let holders = client
        .role_holders(&args.org, None)
        .await
        .map_err(explain)?;
    if args.json {
        return print_json(&holders);
    }
    println!("Users of org {}:", args.org);
    print_roles(
        &holders,
        &[Role::OrgManager, Role::OrgAuditor, Role::OrgUser],
    );
    Ok(())
}

pub async fn space_users(args: SpaceUsersArgs) -> Result<()> {
    let client = super::connect()?;
    let holders = client
        .role_holders(&args.org, Some(&args.space))
        .await
        .map_err(explain)?;
    if args.json {
        return print_json(&holders);
    }
    println!("Users of space {} of org {}:", args.space, args.org);
    print_roles(
        &holders,
        &[Role::SpaceManager, Role::SpaceDeveloper, Role::SpaceAuditor],
    );
    Ok(())
}

fn print_json(holders: &[RoleHolder]) -> Result<()> {
    let text = serde_json::to_string_pretty(holders).context("cannot encode the users")?;
    println!("{text}");
    Ok(())
}

/// One heading per role (`SPACE DEVELOPER`), its holders under it, as `cf space-users` shows.
fn print_roles(holders: &[RoleHolder], roles: &[Role]) {
    for role in roles {
        let heading = heading(*role);
        println!("\n{heading}");
        let names: Vec<&str> = holders
            .iter()
            .filter(|h| h.roles.contains(role))
            .map(|h| h.user.as_str())
            .collect();
        if names.is_empty() {
            println!("  No {heading} found");
        }
        for n in names {
            println!("  {n}");
        }
    }
}

/// `SpaceDeveloper` → `SPACE DEVELOPER`.
fn heading(role: Role) -> String {
    let mut out = String::new();
    for (i, c) in role.as_str().chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn headings_are_cf_s() {
        assert_eq!(
            super::heading(pier_api::Role::SpaceDeveloper),
            "SPACE DEVELOPER"
        );
        assert_eq!(super::heading(pier_api::Role::OrgUser), "ORG USER");
    }
}

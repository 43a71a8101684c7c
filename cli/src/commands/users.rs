//! User commands: `pier whoami`, `pier users [--json]`, `pier create-user NAME [-p PASS]`,
//! `pier delete-user NAME [-f]`, `pier passwd [NAME]`. Passwords are asked for on the terminal
//! (`rpassword`, nothing echoed) when not given; a new one is asked twice.

use anyhow::{Context, Result};
use pier_api::{CreateUserRequest, ErrorCode, SetPasswordRequest};

use crate::args::{AppsArgs, CreateUserArgs, DeleteUserArgs, PasswdArgs};
use crate::output::{self, Failure};

fn prompt(question: &str) -> Result<String> {
    rpassword::prompt_password(question).map_err(|e| {
        Failure::new(format!("cannot read the password: {e}"))
            .hint("run it at a terminal, or pass the password with -p where the command has it")
            .into()
    })
}

/// A new password, asked twice; refused when the two differ or it is too short.
fn new_password(question: &str) -> Result<String> {
    let first = prompt(question)?;
    if let Some(why) = pier_api::users::password_problem(&first) {
        return Err(Failure::new(why).into());
    }
    if prompt("Again: ")? != first {
        return Err(Failure::new("the two passwords differ; nothing was changed").into());
    }
    Ok(first)
}

pub async fn whoami() -> Result<()> {
    let me = super::connect()?.whoami().await?;
    if me.admin {
        println!("{} (the platform admin)", me.user_name);
    } else {
        println!("{} (user {})", me.user_name, me.user_id);
    }
    Ok(())
}

pub async fn list(args: AppsArgs) -> Result<()> {
    let users = super::connect()?.users().await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&users).context("cannot encode the users as JSON")?
        );
        return Ok(());
    }
    if users.is_empty() {
        println!("No users yet: add one with `pier create-user NAME`.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                output::format_time(u.created_at),
                u.locked_until
                    .map(|t| format!("locked until {}", output::format_time(t)))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!("{}", output::table(&["name", "created", "lock"], &rows));
    Ok(())
}

pub async fn create(args: CreateUserArgs) -> Result<()> {
    // Checked here too, so a bad name is refused before a password is asked for.
    args.name
        .parse::<pier_api::UserName>()
        .map_err(|e| Failure::new(e.to_string()))?;
    let client = super::connect()?;
    let password = match args.password {
        Some(p) => p,
        None => new_password(&format!("Password for {}: ", args.name))?,
    };
    let user = client
        .create_user(&CreateUserRequest {
            name: args.name,
            password,
        })
        .await?;
    println!("Created user {}.", user.name);
    Ok(())
}

pub async fn delete(args: DeleteUserArgs) -> Result<()> {
    let name = &args.name;
    let question = format!("Really delete the user {name}? Their logins end.");
    if !output::confirm(&question, args.force)? {
        println!("Not deleted.");
        return Ok(());
    }
    match super::connect()?.delete_user(name).await {
        Ok(()) => println!("Deleted user {name}."),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => println!("User {name} does not exist."),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

pub async fn passwd(args: PasswdArgs) -> Result<()> {
    let client = super::connect()?;
    let (name, own) = match args.name {
        Some(n) => (n, false),
        None => {
            let me = client.whoami().await?;
            if me.admin {
                return Err(Failure::new("the admin token has no password")
                    .hint("name the user whose password to set: pier passwd NAME")
                    .into());
            }
            (me.user_name, true)
        }
    };
    // Your own needs the current one; the admin sets another user's without it.
    let old_password = if own {
        Some(prompt("Current password: ")?)
    } else {
        None
    };
    let req = SetPasswordRequest {
        old_password,
        password: new_password("New password: ")?,
    };
    client.set_password(&name, &req).await?;
    println!("Password of {name} changed.");
    Ok(())
}

use anyhow::Result;
use pier_api::ErrorCode;

use crate::args::DeleteArgs;

pub async fn run(args: DeleteArgs) -> Result<()> {
    let name = &args.name;
    let question = format!("Really delete the app {name}, its instances, routes and uploads?");
    if !crate::output::confirm(&question, args.force)? {
        println!("Not deleted.");
        return Ok(());
    }
    let client = super::connect()?;
    match client.delete_app(name).await {
        Ok(()) => println!("Deleted {name}."),
        // As `cf delete` does: deleting what isn't there is not a failure. (A space or org that
        // is not there, or not seen, is.)
        Err(e) if e.code() == Some(ErrorCode::NotFound) && !names_space_or_org(&e.to_string()) => {
            println!("App {name} does not exist.")
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Whether a 404 is about the space or org (not there, or not seen), not about the app.
fn names_space_or_org(message: &str) -> bool {
    message.contains(" not found in org ")
        || (message.contains("org ") && !message.contains("app "))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_space_is_not_a_missing_app() {
        assert!(super::names_space_or_org("space dev not found in org acme"));
        assert!(super::names_space_or_org("org acme not found"));
        assert!(!super::names_space_or_org("app hello not found"));
        assert!(!super::names_space_or_org("app \"hello\" not found"));
    }
}

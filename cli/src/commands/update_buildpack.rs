//! `pier update-buildpack NAME [-p PATH] [-i POSITION] [--enable | --disable]`.

use anyhow::Result;
use pier_api::UpdateBuildpackRequest;

use crate::args::UpdateBuildpackArgs;
use crate::output::Failure;

pub async fn run(args: UpdateBuildpackArgs) -> Result<()> {
    if args.path.is_none() && args.position.is_none() && !args.enable && !args.disable {
        return Err(Failure::new("nothing to change")
            .hint("give -p PATH (new files), -i POSITION, --enable or --disable")
            .into());
    }
    if args.position == Some(0) {
        return Err(Failure::new("--position must be 1 or more (1 is tried first)").into());
    }
    let bp = args
        .path
        .as_deref()
        .map(super::create_buildpack::prepare)
        .transpose()?;
    let client = super::connect()?;
    let package = match bp {
        Some(bp) => Some(super::create_buildpack::upload(&client, bp).await?),
        None => None,
    };
    let enabled = match (args.enable, args.disable) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let b = client
        .update_buildpack(
            &args.name,
            &UpdateBuildpackRequest {
                position: args.position,
                package,
                enabled,
            },
        )
        .await?;
    println!(
        "Updated buildpack {}: position {}, {}.",
        b.name,
        b.position,
        if b.enabled { "enabled" } else { "disabled" }
    );
    Ok(())
}

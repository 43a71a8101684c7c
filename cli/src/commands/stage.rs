//! Staging, shared by `push` and `restage`: start a build and print its output as it arrives.

use anyhow::Result;
use futures_util::StreamExt;
use pier_api::{AppName, BuildEvent, BuildRequest, DropletInfo, ErrorCode};

use crate::client::Client;
use crate::output::Failure;

/// Streams the build's log lines to stdout, indented, and returns the droplet.
pub async fn run(client: &Client, name: &AppName, request: &BuildRequest) -> Result<DropletInfo> {
    println!("Staging {name}...");
    let mut events = client.build(name, request).await?;
    while let Some(event) = events.next().await {
        match event? {
            BuildEvent::Log(line) => println!("  {}", line.text),
            BuildEvent::Done(droplet) => {
                println!("Staged with buildpack {}", droplet.buildpack);
                return Ok(droplet);
            }
            BuildEvent::Error(e) => {
                let hint = match e.code {
                    ErrorCode::NoBuildpack => {
                        "name a buildpack with -b, or add what one detects (requirements.txt or \
                         app.py for python, index.html or Staticfile for staticfile)"
                    }
                    ErrorCode::StagingFailed => "the buildpack's output above says what went wrong",
                    _ => "the staging output above may say more",
                };
                return Err(
                    Failure::new(format!("staging {name} failed: {}", e.message))
                        .hint(hint)
                        .into(),
                );
            }
        }
    }
    Err(Failure::new(format!(
        "the controller ended the staging of {name} without saying whether it succeeded"
    ))
    .hint(format!(
        "check the controller's log, then try `pier restage {name}`"
    ))
    .into())
}

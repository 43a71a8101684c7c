//! Waiting for an app's instances after start, restart, restage or push.
//!
//! Done when as many web instances as desired run the expected droplet and are RUNNING (their
//! health check passed). Failed when one of them crashes, or when the health check's start timeout
//! plus a margin passes. Instances of an older droplet don't count either way: the controller is
//! replacing them.
//!
//! Each wait follows the app with long-polls ([`Follow`]): the controller answers the moment any
//! state changes, so a wait ends as soon as the last instance is healthy, not on a polling tick.

use std::time::{Duration, Instant};

use anyhow::Result;
use pier_api::{AppResponse, AppState, InstanceState, InstanceStatus};

use crate::client::Client;
use crate::output::{self, Failure};

/// Between polls, with a controller that does not long-poll.
const POLL: Duration = Duration::from_millis(250);
/// The longest long-poll.
const LONG_POLL: Duration = Duration::from_secs(30);
/// Time beyond the health check's own timeout for the controller to create containers and report.
const MARGIN: Duration = Duration::from_secs(15);

/// An app's successive states, each fetched as soon as the controller's state changed.
struct Follow<'a> {
    client: &'a Client,
    name: pier_api::AppName,
    /// `state_version` of the last answer (0: none known yet).
    seen: u64,
    /// True once a plain fetch came back without a version: the controller does not long-poll.
    polling: bool,
}

impl<'a> Follow<'a> {
    fn new(client: &'a Client, app: &AppResponse) -> Self {
        Follow {
            client,
            name: app.name.clone(),
            seen: app.state_version,
            polling: false,
        }
    }

    /// The app after the next change (at most `until`, and never past [`LONG_POLL`]).
    async fn next(&mut self, until: Option<Instant>) -> Result<AppResponse> {
        let app = if self.seen > 0 {
            let left = until.map_or(LONG_POLL, |d| d.saturating_duration_since(Instant::now()));
            let wait = left.clamp(Duration::from_secs(1), LONG_POLL);
            self.client.app_after(&self.name, self.seen, wait).await?
        } else {
            if self.polling {
                tokio::time::sleep(POLL).await;
            }
            self.client.app(&self.name).await?
        };
        self.polling = app.state_version == 0;
        self.seen = app.state_version;
        Ok(app)
    }
}

/// The sha256 of the droplet the app runs, or an error saying it has never been staged.
pub fn current_droplet(app: &AppResponse) -> Result<String> {
    match &app.droplet {
        Some(d) => Ok(d.sha256.clone()),
        None => Err(
            Failure::new(format!("{} has no droplet: it was never staged", app.name))
                .hint(format!(
                    "push it with `pier push {}`, or stage its package with `pier restage {}`",
                    app.name, app.name
                ))
                .into(),
        ),
    }
}

/// Polls the app until it runs `droplet` on every desired web instance.
pub async fn until_running(
    client: &Client,
    mut app: AppResponse,
    droplet: &str,
) -> Result<AppResponse> {
    let Some(process) = output::main_process(&app).cloned() else {
        return Ok(app);
    };
    let desired = process.instances as usize;
    if desired == 0 {
        return Ok(app);
    }
    let limit = Duration::from_secs(u64::from(process.health_check.timeout_secs)) + MARGIN;
    let deadline = Instant::now() + limit;
    let mut last_report = String::new();
    let mut follow = Follow::new(client, &app);
    loop {
        if app.state == AppState::Stopped {
            return Err(
                Failure::new(format!("{} was stopped while it was starting", app.name)).into(),
            );
        }
        let new: Vec<&InstanceStatus> = app
            .instances
            .iter()
            .filter(|i| i.process == process.kind && i.droplet.as_deref() == Some(droplet))
            .collect();
        if let Some(bad) = new.iter().find(|i| crashed(i)) {
            return Err(crash_failure(&app, bad));
        }
        let running = new
            .iter()
            .filter(|i| i.state == InstanceState::Running)
            .count();
        if running >= desired {
            return Ok(app);
        }
        let report = format!("{running} of {desired} instances running");
        if report != last_report {
            eprintln!("Waiting for {}: {report}", app.name);
            last_report = report;
        }
        if Instant::now() >= deadline {
            return Err(timeout_failure(&app, &new, limit));
        }
        app = follow.next(Some(deadline)).await?;
    }
}

/// CRASHED, or restarted after a crash and not running again yet (crashes 1 and 2 restart at
/// once, so the CRASHED state may never be seen between two polls).
fn crashed(i: &InstanceStatus) -> bool {
    i.state == InstanceState::Crashed || (i.crash_count > 0 && i.state != InstanceState::Running)
}

fn last_output(i: &InstanceStatus) -> Vec<String> {
    if i.last_output.is_empty() {
        return vec![format!("instance #{} printed nothing", i.index)];
    }
    let mut lines = vec![format!("last output of instance #{}:", i.index)];
    lines.extend(i.last_output.iter().map(|l| format!("  {l}")));
    lines
}

fn hint(app: &AppResponse) -> String {
    format!(
        "`pier logs {} --recent` shows more; check the start command (-c, the manifest's command \
         or the Procfile) and that the app listens on $PORT",
        app.name
    )
}

fn crash_failure(app: &AppResponse, i: &InstanceStatus) -> anyhow::Error {
    let reason = i.reason.as_deref().unwrap_or("it exited");
    Failure::new(format!(
        "instance #{} of {} crashed: {reason}",
        i.index, app.name
    ))
    .details(last_output(i))
    .hint(hint(app))
    .into()
}

fn timeout_failure(app: &AppResponse, new: &[&InstanceStatus], limit: Duration) -> anyhow::Error {
    let waiting: Vec<&&InstanceStatus> = new
        .iter()
        .filter(|i| i.state != InstanceState::Running)
        .collect();
    let Some(first) = waiting.first() else {
        return Failure::new(format!(
            "{} did not start its instances within {} s",
            app.name,
            limit.as_secs()
        ))
        .hint(format!(
            "check the controller's log; `pier app {}` shows the app's state",
            app.name
        ))
        .into();
    };
    let reason = first
        .reason
        .as_deref()
        .unwrap_or("its health check never passed");
    let mut details = Vec::new();
    for i in &waiting {
        details.extend(last_output(i));
    }
    Failure::new(format!(
        "instance #{} of {} was not healthy within {} s ({}): {reason}",
        first.index,
        app.name,
        limit.as_secs(),
        first.state.as_str()
    ))
    .details(details)
    .hint(hint(app))
    .into()
}

/// The URLs and the instances, once an app runs.
pub fn print_running(app: &AppResponse) {
    let desired = output::main_process(app).map_or(0, |p| p.instances);
    println!();
    if desired == 0 {
        println!("{} has 0 instances: none were started.", app.name);
    } else {
        println!("{} is running.", app.name);
    }
    match app.routes.as_slice() {
        [] => println!("It has no routes."),
        [one] => println!("url: {one}"),
        many => {
            println!("urls:");
            for url in many {
                println!("  {url}");
            }
        }
    }
    if !app.instances.is_empty() {
        println!();
        print!("{}", output::instance_table(&app.instances, false));
    }
}

/// Waits for a deployment to end: success prints nothing here and returns the app; failure or
/// cancellation returns the reason (which names the failed instance and its last output). A canary
/// returns once its first new instance serves its share: the rest takes minutes and goes on in the
/// controller (`pier deployments NAME`).
pub async fn until_deployed(
    client: &Client,
    name: &pier_api::AppName,
    started: &pier_api::DeploymentResponse,
) -> Result<AppResponse> {
    use pier_api::DeploymentState as S;
    let mut last_report = String::new();
    let mut app = client.app(name).await?;
    let mut follow = Follow::new(client, &app);
    loop {
        let all = client.deployments(name).await?;
        let d = all
            .iter()
            .find(|d| d.id == started.id)
            .cloned()
            .unwrap_or_else(|| started.clone());
        match d.state {
            S::Succeeded => return Ok(client.app(name).await?),
            S::Failed | S::Canceled => {
                let reason = d.reason.unwrap_or_else(|| "no reason given".into());
                let mut lines = reason.lines();
                let head = lines.next().unwrap_or_default().to_string();
                let details: Vec<String> = lines.map(str::to_string).collect();
                return Err(Failure::new(format!(
                    "deployment of {name} (revision {}) {}: {head}",
                    d.revision,
                    if d.state == S::Failed { "failed" } else { "was canceled" }
                ))
                .details(details)
                .hint(format!(
                    "`pier logs {name} --recent` shows more; `pier deployments {name}` shows the history"
                ))
                .into());
            }
            S::Deploying | S::Paused => {}
        }
        if let Some(c) = &d.canary {
            let up = app
                .instances
                .iter()
                .any(|i| i.revision == Some(d.revision) && i.state == InstanceState::Running);
            if up {
                println!(
                    "Canary of revision {} is serving {}% of traffic; it moves through steps {:?} \
                     as its figures allow. Follow it with `pier deployments {name}`.",
                    d.revision,
                    c.steps.get(c.step).copied().unwrap_or(100),
                    c.steps
                );
                return Ok(app);
            }
        }
        let desired = output::main_process(&app).map_or(0, |p| p.instances) as usize;
        let new = app
            .instances
            .iter()
            .filter(|i| i.revision == Some(d.revision) && i.state == InstanceState::Running)
            .count();
        let report = format!(
            "{} of {desired} instances on revision {} running",
            new.min(desired),
            d.revision
        );
        if report != last_report {
            eprintln!("Waiting for {name}: {report}");
            last_report = report;
        }
        app = follow.next(None).await?;
    }
}

/// Waits for whatever deployment the app has last (after `start` or `restart`).
pub async fn until_latest_deployed(
    client: &Client,
    name: &pier_api::AppName,
) -> Result<AppResponse> {
    match client.deployments(name).await?.into_iter().next() {
        Some(d) => until_deployed(client, name, &d).await,
        None => Ok(client.app(name).await?),
    }
}

/// After a cancel: waits until every web instance runs the app's current revision again.
pub async fn until_running_revision(
    client: &Client,
    name: &pier_api::AppName,
) -> Result<AppResponse> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut app = client.app(name).await?;
    let mut follow = Follow::new(client, &app);
    loop {
        let revs = client.revisions(name).await?;
        let current = revs.iter().find(|r| r.current).map(|r| r.version);
        let desired = output::main_process(&app).map_or(0, |p| p.instances) as usize;
        let on = app
            .instances
            .iter()
            .filter(|i| {
                i.process.is_web() && i.revision == current && i.state == InstanceState::Running
            })
            .count();
        let others = app
            .instances
            .iter()
            .filter(|i| i.process.is_web() && i.revision != current)
            .count();
        if on >= desired && others == 0 {
            return Ok(app);
        }
        if Instant::now() > deadline {
            return Err(Failure::new(format!(
                "{name} did not settle back on revision {current:?} within 180 s"
            ))
            .into());
        }
        app = follow.next(Some(deadline)).await?;
    }
}

/// After a stored change of env or bindings: deploys the app with it (rolling, as a push) when it
/// runs, unless `no_restart`. `stored` starts the messages that say it only was stored; `with`
/// names what the deployment brings.
pub async fn deploy_change(
    client: &Client,
    name: &pier_api::AppName,
    no_restart: bool,
    (stored, with): (&str, &str),
) -> Result<()> {
    let app = client.app(name).await?;
    if no_restart {
        println!("{stored}It takes effect at the next `pier restart {name}` or deployment.");
        return Ok(());
    }
    if app.state != AppState::Started || app.droplet.is_none() {
        println!("{stored}{name} is not running; it takes effect when it starts.");
        return Ok(());
    }
    println!("Deploying {name} with {with} (rolling)...");
    let d = client
        .deploy(name, &pier_api::DeployRequest::default())
        .await?;
    let app = until_deployed(client, name, &d).await?;
    print_running(&app);
    Ok(())
}

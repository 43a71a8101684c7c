use anyhow::Context as _;
use clap::Parser;
use pier_controller::config::{Cli, Command};
use pier_controller::runtime::ContainerRuntime as _;
use pier_controller::Controller;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let default = "info,bollard=warn,hyper=warn";
    let mut filter = std::env::var("PIER_LOG").unwrap_or_else(|_| default.into());
    // The DNS server of internal routes logs every query instances send at info: not unless asked.
    if !filter.contains("hickory") {
        filter.push_str(",hickory_server=warn");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| format!("{default},hickory_server=warn").into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Every instance log stream, API and router connection is a file.
    match pier_router::raise_open_file_limit() {
        Ok((before, after)) => tracing::info!(before, after, "open-file limit (RLIMIT_NOFILE)"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::BuildStack { if_missing } => {
            let runtime = pier_controller::runtime::DockerRuntime::connect("build-stack").await?;
            let image = &cli.config.stack_image;
            if if_missing && runtime.image_exists(image).await? {
                println!("stack image {image} is already there");
                return Ok(());
            }
            pier_controller::runtime::stack::build_stack(&runtime, image).await
        }
        Command::BuildServicesImage { if_missing } => {
            let runtime =
                pier_controller::runtime::DockerRuntime::connect("build-services-image").await?;
            let image = pier_broker::image::DEFAULT_IMAGE;
            if if_missing && runtime.image_exists(image).await? {
                println!("services image {image} is already there");
                return Ok(());
            }
            pier_controller::runtime::stack::build_services_image(&runtime, image).await
        }
        Command::ServicesImage => {
            println!("{}", pier_broker::image::DEFAULT_IMAGE);
            Ok(())
        }
        Command::PlatformImage => {
            let binaries = pier_controller::runtime::platform::binaries()?;
            println!(
                "{}",
                pier_controller::runtime::platform::image_name(&binaries)?
            );
            Ok(())
        }
        Command::BuildPlatformImage { if_missing } => {
            let runtime =
                pier_controller::runtime::DockerRuntime::connect("build-platform-image").await?;
            let binaries = pier_controller::runtime::platform::binaries()?;
            let name =
                pier_controller::runtime::platform::build(&runtime, &binaries, if_missing).await?;
            println!("{name}");
            Ok(())
        }
        Command::StackImage => {
            println!("{}", cli.config.stack_image);
            Ok(())
        }
        Command::Serve => serve(cli.config).await,
    }
}

async fn serve(config: pier_controller::Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    // Registered before anything is printed: a SIGTERM right after the listening line stops
    // the controller cleanly instead of killing it (the signal's default action).
    let stop = pier_router::stop_signals().context("listening for SIGTERM and SIGINT")?;
    let scheme = config.api_scheme();
    let controller = Controller::start(config, shutdown.clone()).await?;
    let api = format!("{scheme}://{}", controller.api_addr);
    println!("pier-controller listening on {api}");
    if let Some(r) = controller.router_addr {
        println!("pier-router (built in) listening on http://{r}");
    }
    match &controller.new_token {
        Some(t) => {
            println!("Admin token written to {}", controller.token_file.display());
            println!("Log in with:\n  pier login --api {api} --token {t}");
        }
        None => println!(
            "Log in with:\n  pier login --api {api} --token $(cat {})",
            controller.token_file.display()
        ),
    }
    tokio::spawn(async move {
        let signal = stop.await;
        tracing::info!(signal, "shutting down; instances keep running");
        shutdown.cancel();
    });
    controller.run().await
}

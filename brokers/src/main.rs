//! `pier-broker serve`: the built-in PostgreSQL and Redis brokers on their own (the controller
//! runs them in process by default).

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pier_broker::{docker, Broker, Config, LabelledNetworks};

#[derive(Parser)]
#[command(
    name = "pier-broker",
    about = "Pier's built-in PostgreSQL and Redis OSB brokers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OSB API.
    Serve {
        #[arg(long, env = "PIER_BROKER_LISTEN", default_value = "127.0.0.1:9300")]
        listen: String,
        /// The controller whose spaces' networks instances join (and whose labels they carry).
        #[arg(long, env = "PIER_CONTROLLER_ID", default_value = "default")]
        controller_id: String,
        /// The default space's guid: its network is `pier-<controller id>`.
        #[arg(long)]
        default_space: Option<String>,
        #[arg(long, env = "PIER_BROKER_DATA", default_value = "pier-broker-data")]
        data_dir: std::path::PathBuf,
        #[arg(long, env = "PIER_BROKER_USER", default_value = "pier")]
        user: String,
        #[arg(long, env = "PIER_BROKER_PASSWORD")]
        password: String,
        #[arg(long, default_value = pier_broker::image::DEFAULT_IMAGE)]
        image: String,
    },
    /// Print the services image's name and exit.
    Image,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PIER_LOG")
                .unwrap_or_else(|_| "info,bollard=warn,hyper=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Image => {
            println!("{}", pier_broker::image::DEFAULT_IMAGE);
            Ok(())
        }
        Command::Serve {
            listen,
            controller_id,
            default_space,
            data_dir,
            user,
            password,
            image,
        } => {
            let docker = docker::Engine::connect().await?;
            let placement = Arc::new(LabelledNetworks {
                docker: docker.clone(),
                controller_id: controller_id.clone(),
                default_space,
            });
            let config = Config {
                controller_id,
                image,
                data_dir,
                username: user,
                password,
                ready_timeout: Duration::from_secs(120),
            };
            let broker = Broker::open(config, docker, placement)?;
            broker.adopt().await?;
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            println!("pier-broker listening on http://{}", listener.local_addr()?);
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            pier_broker::http::serve(listener, broker, shutdown).await?;
            Ok(())
        }
    }
}

//! `pier`, the command-line client of a Pier controller.
//!
//! ```text
//! args (clap) ─► commands::<cmd>::run ─► pier_client (typed HTTP over pier-api) ─► pier-controller
//!                     │                      ▲
//!                     ├─ config   (PIER_HOME/config.json, env)
//!                     ├─ manifest (manifest.yml, validated with field and line)
//!                     ├─ archive  (folder → .tar.gz, .cfignore, symlink checks)
//!                     └─ output   (tables, errors with hints; stdout for results, stderr for progress)
//! ```
//!
//! Every error reaches `main` as an `anyhow::Error`; a [`output::Failure`] in its chain adds detail
//! lines and a `hint:`; a `pier_client::ClientError` gets the CLI's wording and hint from
//! [`client`]. Usage errors are clap's (exit 2); everything else exits 1.

pub mod archive;
pub mod args;
pub mod client;
pub mod commands;
pub mod config;
pub mod manifest;
pub mod output;

/// Parses the command line and runs the command, printing errors the way every command does.
/// Returns the process exit code.
pub fn main_with_args() -> i32 {
    use clap::Parser;
    let args = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(commands::run(args)) {
        Ok(()) => 0,
        Err(err) => {
            output::print_error(&err);
            1
        }
    }
}

//! The `abs-socket` binary: parses the command line, sets up logging, runs a command.

use abs_socket::cli::{Cli, Command};
use abs_socket::{manage, server};
use clap::Parser;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("abs-socket: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve(Default::default())) {
        Command::Serve(serve) => server::run(cli.global, serve).await,
        Command::User(cmd) => {
            let (opened, secret, _) = server::open(&cli.global).await?;
            manage::user(&opened.store, &secret, cmd).await
        }
        Command::Apikey(cmd) => {
            let (opened, secret, _) = server::open(&cli.global).await?;
            manage::api_key(&opened.store, &secret, cmd).await
        }
    }
}

//! The `abs-socket` binary: parses the command line, sets up logging, runs a command.

use abs_socket::cli::{Cli, Command};
use abs_socket::logging::{self, LogLine};
use abs_socket::{manage, server};
use clap::Parser;
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let log_lines = logging::init();
    match run(cli, log_lines).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("abs-socket: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, log_lines: mpsc::Receiver<LogLine>) -> anyhow::Result<()> {
    let command = match cli.command {
        Some(c) => c,
        // No command: `serve` with its defaults (and environment).
        None => Cli::parse_from(["abs-socket", "serve"])
            .command
            .expect("serve parses"),
    };
    match command {
        Command::Serve(serve) => server::run(cli.global, serve, log_lines).await,
        Command::User(cmd) => {
            let (opened, secret) = server::open(&cli.global).await?;
            manage::user(&opened.store, &secret, cmd).await
        }
        Command::Apikey(cmd) => {
            let (opened, secret) = server::open(&cli.global).await?;
            manage::api_key(&opened.store, &secret, cmd).await
        }
        Command::Import { from } => manage::import(&cli.global, &from).await,
    }
}

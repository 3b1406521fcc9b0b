//! The `abs-socket` binary: parses the command line, sets up logging, runs a command.

use abs_socket::cli::{Cli, Command};
use abs_socket::logging::{self, LogLine};
use abs_socket::{manage, server};
use clap::Parser;
use tokio::sync::mpsc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match runtime(cli.global.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("abs-socket: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let log_lines = logging::init();
    match runtime.block_on(run(cli, log_lines)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("abs-socket: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The runtime the sockets run on. One thread by default: a storm of `auth` costs about a third
/// less CPU per socket there than on tokio's work-stealing runtime with two workers, which pays
/// for waking and stealing between its threads (BENCHMARKS.md, "What each change bought").
fn runtime(worker_threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(usize::from(worker_threads));
        b
    };
    builder.enable_all().build()
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

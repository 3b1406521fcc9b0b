//! `abs-bench`: a load generator for audiobookshelf-compatible Socket.IO servers, and a runner
//! that measures abs-socket and a faithful Node.js reference one after the other.
//!
//! It connects only to the address it is given, with bounded counts and times. Server cost is
//! read from `/proc/<pid>` (user + system CPU, resident memory), the figure that matters on a
//! shared machine where the load generator uses the same cores.

mod floor;
mod proc_stats;
mod scenarios;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;

#[derive(Parser)]
#[command(about = "Load generator and comparison runner for audiobookshelf socket servers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// N sockets connect and emit `auth` at once; time until all have `init`.
    AuthStorm {
        #[command(flatten)]
        target: scenarios::Target,
        #[arg(long, default_value_t = 1000)]
        n: usize,
    },
    /// N authenticated sockets; an admin sends `message_all_users`; delivery latency per round.
    Fanout {
        #[command(flatten)]
        target: scenarios::Target,
        #[arg(long, default_value_t = 1000)]
        n: usize,
        #[arg(long, default_value_t = 50)]
        rounds: usize,
        /// Admin token of the sender.
        #[arg(long)]
        admin_token: String,
    },
    /// N authenticated sockets held (answering pings) for a while.
    Idle {
        #[command(flatten)]
        target: scenarios::Target,
        #[arg(long, default_value_t = 1000)]
        n: usize,
        #[arg(long, default_value_t = 60)]
        secs: u64,
    },
    /// N authenticated sockets; publishing-API requests to `--to`; latency until the last
    /// socket the target reaches has the event (with `--every K`, every K-th socket from the
    /// first: the sockets of the first of K tokens given round-robin).
    ApiFanout {
        #[command(flatten)]
        target: scenarios::Target,
        #[arg(long, default_value_t = 1000)]
        n: usize,
        #[arg(long, default_value_t = 50)]
        rounds: usize,
        /// Admin token authorising the requests.
        #[arg(long)]
        admin_token: String,
        /// The request's `to`, as JSON.
        #[arg(long, default_value = r#"{"all":true}"#)]
        to: String,
        /// The target reaches every K-th socket only (default: all of them).
        #[arg(long)]
        every: Option<usize>,
    },
    /// Fan-out on one abs-socket node, then over several nodes on one Redis (started here).
    Cluster(scenarios::ClusterArgs),
    /// The floor server (`floor.rs`): the least any server does for these scenarios, so that a
    /// run can show what the machine itself costs. `compare` starts it.
    FloorServer {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long)]
        port: u16,
    },
    /// Builds nothing, starts abs-socket, the reference and the floor in turn on copies of one
    /// database, runs every scenario against each, and prints their figures and ratios.
    Compare(scenarios::CompareArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        // Its own one-thread runtime: the floor must not pay for the load generator's.
        Command::FloorServer { host, port } => floor::serve(&host, port),
        command => tokio::runtime::Runtime::new()?.block_on(run(command)),
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::AuthStorm { target, n } => {
            let r = scenarios::auth_storm(&target, n).await?;
            println!("{r}");
        }
        Command::Fanout {
            target,
            n,
            rounds,
            admin_token,
        } => {
            let r = scenarios::fanout(&target, n, rounds, &admin_token).await?;
            println!("{r}");
        }
        Command::Idle { target, n, secs } => {
            let r = scenarios::idle(&target, n, secs, None).await?;
            println!("{r}");
        }
        Command::ApiFanout {
            target,
            n,
            rounds,
            admin_token,
            to,
            every,
        } => {
            let to: serde_json::Value = serde_json::from_str(&to)?;
            let t = scenarios::ApiTarget {
                name: to.to_string(),
                to,
                reaches: every.map(|every| {
                    let every = every.max(1);
                    std::sync::Arc::new(move |k: usize| k.is_multiple_of(every)) as _
                }),
            };
            for r in scenarios::api_fanout(&target, n, rounds, &admin_token, &[t]).await? {
                println!("{r}");
            }
        }
        Command::Cluster(args) => scenarios::cluster(args).await?,
        Command::Compare(args) => scenarios::compare(args).await?,
        Command::FloorServer { .. } => unreachable!("served by main"),
    }
    Ok(())
}

/// Parses `host:port`.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| format!("{s}: {e}"))
}

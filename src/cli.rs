//! The command line: `serve` (the default) and the management commands.
//!
//! Flags fall back to the environment variables audiobookshelf uses (`PORT`, `HOST`,
//! `CONFIG_PATH`, `ROUTER_BASE_PATH`, `JWT_SECRET_KEY`) so one environment file serves both.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "abs-socket",
    version,
    about = "Socket.IO server for audiobookshelf clients"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Args, Clone)]
pub struct Global {
    /// The database: a path or a sqlite:// URL. Default: absdatabase.sqlite in CONFIG_PATH, else
    /// in the current folder (created if missing).
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database: Option<String>,
    /// audiobookshelf's config folder, where the default database lives.
    #[arg(long, env = "CONFIG_PATH", global = true)]
    pub config_path: Option<PathBuf>,
    /// The JWT secret; default: settings 'server-settings'.tokenSecret in the database.
    #[arg(long, env = "JWT_SECRET_KEY", global = true, hide_env_values = true)]
    pub jwt_secret_key: Option<String>,
    /// How long to wait for a database lock held by audiobookshelf, in seconds.
    #[arg(long, env = "DB_BUSY_TIMEOUT", default_value_t = 10.0, global = true)]
    pub db_busy_timeout: f64,
    /// Threads that run the sockets. 1 (the default) runs everything on one thread, as
    /// audiobookshelf does, which costs the least CPU per socket; more spreads sockets over that
    /// many threads (tokio's work-stealing runtime), for hosts where one core is not enough.
    /// SQLite queries always run on their own threads.
    #[arg(long, env = "TOKIO_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..), global = true)]
    pub worker_threads: u16,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default when no command is given).
    Serve(Serve),
    /// Manage users (writes audiobookshelf's own formats).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Apikey(ApiKeyCommand),
    /// Copy the users, API keys and settings (the JWT secret among them) of an audiobookshelf
    /// database into this one, abs-socket's own store (PostgreSQL, say); rows already there are
    /// updated, so it can be run again after changes in audiobookshelf.
    Import {
        /// The audiobookshelf database (absdatabase.sqlite); opened read-only.
        from: PathBuf,
    },
}

#[derive(Debug, Args, Clone)]
pub struct Serve {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 3333)]
    pub port: u16,
    /// The second base path of the socket (and HTTP) routes; empty turns it off.
    /// Default: /audiobookshelf.
    #[arg(long)]
    pub router_base_path: Option<String>,
    /// Largest body `POST /api/socket/emit` accepts, in bytes.
    #[arg(long, env = "MAX_EMIT_BYTES", default_value_t = 1_000_000)]
    pub max_emit_bytes: usize,
    /// Cut off a socket authenticated with an access token when the token expires (by default,
    /// as in audiobookshelf, it stays authenticated until the client re-sends auth).
    #[arg(long, env = "STRICT_TOKEN_EXPIRY", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub strict_token_expiry: bool,
    /// How often revocation is checked against the database, in milliseconds.
    #[arg(long, env = "REVOCATION_INTERVAL_MS", default_value_t = 500)]
    pub revocation_interval_ms: u64,
    /// Refuse a connection when this many are open from the same address (off by default).
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Take the client's address from X-Forwarded-For (behind a reverse proxy).
    #[arg(long, env = "TRUST_PROXY", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_value = "false", default_missing_value = "true")]
    pub trust_proxy: bool,
    /// Disconnect a socket that has not authenticated within this many seconds (off by default).
    #[arg(long, env = "AUTH_TIMEOUT")]
    pub auth_timeout: Option<f64>,
    /// Redis (7 or newer, or Valkey) shared by several nodes, e.g. redis://127.0.0.1:6379; without
    /// it the node runs on its own.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// An unmodified audiobookshelf server to bridge (e.g. http://127.0.0.1:13378): its own
    /// events reach the clients through one upstream connection per online user.
    #[arg(long, env = "ABS_UPSTREAM_URL")]
    pub upstream: Option<String>,
    /// Seconds a user's upstream connection stays open after their last socket left.
    #[arg(long, env = "BRIDGE_GRACE", default_value_t = 30.0)]
    pub bridge_grace: f64,
}

impl Serve {
    /// `--router-base-path`, else `ROUTER_BASE_PATH` even when empty (empty turns it off), else
    /// `/audiobookshelf`.
    pub fn base_path(&self) -> String {
        self.router_base_path
            .clone()
            .or_else(|| std::env::var("ROUTER_BASE_PATH").ok())
            .unwrap_or_else(|| "/audiobookshelf".to_owned())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UserType {
    Root,
    Admin,
    User,
    Guest,
}

impl UserType {
    pub fn as_str(self) -> &'static str {
        match self {
            UserType::Root => "root",
            UserType::Admin => "admin",
            UserType::User => "user",
            UserType::Guest => "guest",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user.
    Add(UserAdd),
    /// List users.
    List,
    /// Print a token for a user: a 1-hour access token, or with --legacy the stored legacy token.
    Token {
        username: String,
        #[arg(long)]
        legacy: bool,
        /// Lifetime of the access token, in seconds.
        #[arg(long, default_value_t = 3600)]
        expires_in: u64,
    },
}

#[derive(Debug, Args)]
pub struct UserAdd {
    pub username: String,
    #[arg(long = "type", value_enum, default_value_t = UserType::User)]
    pub kind: UserType,
    /// Password (stored as a bcrypt hash, as audiobookshelf does).
    #[arg(long)]
    pub password: Option<String>,
    /// Restrict to these library ids (comma-separated); default: all libraries.
    #[arg(long, value_delimiter = ',')]
    pub libraries: Vec<String>,
    /// Restrict to items with one of these tags (comma-separated); default: all tags.
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    /// With --tags: the tags are a deny-list instead of an allow-list.
    #[arg(long, requires = "tags")]
    pub deny_tags: bool,
    /// Refuse explicit content.
    #[arg(long)]
    pub no_explicit: bool,
    /// Create the user deactivated.
    #[arg(long)]
    pub inactive: bool,
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create an API key for a user and print it (it is not stored; only its id is).
    Create {
        username: String,
        #[arg(long)]
        name: String,
        /// Lifetime in seconds; default: never expires.
        #[arg(long)]
        expires_in: Option<u64>,
    },
    /// Deactivate an API key, by id or name.
    Deactivate { key: String },
}

//! Several nodes as one server: the Redis connection behind socketioxide's Redis adapter.
//!
//! With `--redis-url`, rooms and broadcasts span every node through `socketioxide-redis` (its
//! `fred` driver, which reconnects by itself), and who is online is shared through Redis too
//! ([`presence`]). Without it, the node uses socketioxide's in-memory adapter and this is a no-op.
//!
//! At start, a node whose Redis is down waits for it, retrying, and answers HTTP meanwhile with
//! `503` (see `server.rs`): a node serving alone would show its users a partial `usersOnline` and
//! miss other nodes' broadcasts without anyone noticing. Once running, a Redis outage is survived:
//! the driver reconnects and re-subscribes, deliveries go to this node's sockets meanwhile, and
//! `/healthz` says `"redis": "reconnecting"`.

pub mod presence;

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::RespVersion;
use fred::types::config::{Config, ConnectionConfig, PerformanceConfig, ReconnectPolicy};
use serde_json::{Value, json};
use socketioxide_redis::drivers::fred::FredDriver;
use socketioxide_redis::{RedisAdapterConfig, RedisAdapterCtr};
use std::sync::Arc;
use std::time::Duration;

/// The prefix of every key and channel abs-socket uses in Redis.
pub const PREFIX: &str = "abs-socket";

/// How long a command may wait on a Redis that stopped answering before it fails (and the
/// delivery falls back to this node).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// Messages from other nodes that may wait to be handled, in fred's channel and then in the
/// adapter's. fred's default (32) lost cross-node messages in the 10,000-socket benchmark: every
/// auth is a `user_online` broadcast, so a storm of connections is a storm of messages. Past
/// this a lagging node drops the oldest, and the driver logs it.
const MESSAGE_BUFFER: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid Redis URL: {0}")]
    Url(String),
    #[error("Redis: {0}")]
    Redis(#[from] fred::error::Error),
}

/// This node's link to the others; cheap to clone. The default is a node on its own.
#[derive(Clone, Default)]
pub struct Cluster(Option<Arc<Link>>);

pub struct Link {
    /// The adapter's connection (sharded pub/sub); its state is the cluster's state.
    subscriber: SubscriberClient,
    /// Presence reads and writes.
    client: Client,
    /// This node's id in Redis keys.
    node: String,
    /// `host:port` of Redis, for logs (never the URL: it may hold a password).
    server: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Cluster(local)"),
            Some(link) => write!(f, "Cluster(redis {}, node {})", link.server, link.node),
        }
    }
}

/// Where Redis is, for log lines: the host and port of a URL, without credentials.
fn display_server(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}:{}",
            u.host_str().unwrap_or("?"),
            u.port().unwrap_or(6379)
        ),
        Err(_) => "(unparsable URL)".to_owned(),
    }
}

/// Subscribes the adapter's channels again after every reconnection (a fresh connection, or a
/// restarted Redis, knows none of them).
///
/// Written here instead of fred's `manage_subscriptions`: its `resubscribe_all` sends a bare
/// `SUBSCRIBE` when there are no plain channels, which Redis refuses, and gives up before the
/// sharded channels, the only kind the adapter uses. One channel per command, as a sharded
/// subscription must stay within one hash slot.
async fn resubscribe(subscriber: SubscriberClient, server: String) {
    let mut reconnected = subscriber.reconnect_rx();
    while reconnected.recv().await.is_ok() {
        for channel in subscriber.tracked_shard_channels() {
            if let Err(e) = subscriber.ssubscribe(channel.to_string()).await {
                tracing::warn!(redis = %server, error = %e, "could not subscribe again after a reconnection");
            }
        }
        tracing::info!(redis = %server, "Redis reconnected; broadcasts cross nodes again");
    }
}

impl Cluster {
    /// Connects to Redis at `url`, waiting (and saying so every few seconds) until it answers.
    /// Returns the cluster handle and the adapter's constructor.
    pub async fn connect(
        url: &str,
    ) -> Result<(Cluster, RedisAdapterCtr<FredDriver>), ClusterError> {
        let server = display_server(url);
        let mut config = Config::from_url(url).map_err(|e| ClusterError::Url(e.to_string()))?;
        // The adapter's sharded pub/sub needs RESP3 (Redis 7 or Valkey).
        config.version = RespVersion::RESP3;
        // Keep retrying the first connection too, rather than fail at once.
        config.fail_fast = false;
        let perf = PerformanceConfig {
            default_command_timeout: COMMAND_TIMEOUT,
            broadcast_channel_capacity: MESSAGE_BUFFER,
            ..Default::default()
        };
        let connection = ConnectionConfig {
            connection_timeout: Duration::from_secs(2),
            internal_command_timeout: Duration::from_secs(2),
            max_command_attempts: 1,
            ..Default::default()
        };
        // Forever, from 100 ms doubling up to 2 s between attempts.
        let policy = || ReconnectPolicy::new_exponential(0, 100, 2000, 2);
        let subscriber = SubscriberClient::new(
            config.clone(),
            Some(perf.clone()),
            Some(connection.clone()),
            Some(policy()),
        );
        let client = Client::new(config, Some(perf), Some(connection), Some(policy()));

        let waiting = {
            let server = server.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    tracing::warn!(redis = %server, "waiting for Redis; this node serves nothing until it answers");
                    tokio::time::sleep(Duration::from_secs(4)).await;
                }
            })
        };
        let connected = async {
            client.init().await?;
            let ctr = RedisAdapterCtr::new_with_fred_config(
                subscriber.clone(),
                RedisAdapterConfig::new()
                    .with_prefix(PREFIX)
                    .with_stream_buffer(MESSAGE_BUFFER),
            )
            .await?;
            Ok::<_, fred::error::Error>(ctr)
        }
        .await;
        waiting.abort();
        let ctr = connected?;
        tokio::spawn(resubscribe(subscriber.clone(), server.clone()));

        {
            let server = server.clone();
            subscriber.on_error(move |(e, _)| {
                tracing::warn!(redis = %server, error = %e, "Redis connection lost; delivering on this node only until it is back");
                async { Ok(()) }
            });
        }
        let node = uuid::Uuid::new_v4().simple().to_string();
        tracing::info!(redis = %server, node = %node, "joined the cluster through Redis");
        Ok((
            Cluster(Some(Arc::new(Link {
                subscriber,
                client,
                node,
                server,
            }))),
            ctr,
        ))
    }

    /// Whether broadcasts can cross nodes right now (always, for a node on its own: there is
    /// nothing to cross to, and the in-memory adapter delivers locally).
    pub fn is_up(&self) -> bool {
        match &self.0 {
            None => true,
            Some(link) => link.subscriber.is_connected(),
        }
    }

    pub fn link(&self) -> Option<&Arc<Link>> {
        self.0.as_ref()
    }

    /// What `/healthz` shows.
    pub fn health(&self) -> Value {
        match &self.0 {
            None => json!({ "mode": "single" }),
            Some(link) => json!({
                "mode": "redis",
                "node": link.node,
                "redis": if link.subscriber.is_connected() && link.client.is_connected() {
                    "connected"
                } else {
                    "reconnecting"
                },
            }),
        }
    }

    /// Closes the Redis connections (after the sockets are closed).
    pub async fn close(&self) {
        if let Some(link) = &self.0 {
            let _ = link.client.quit().await;
            let _ = link.subscriber.quit().await;
        }
    }
}

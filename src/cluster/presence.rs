//! Who is online on every node: each node's share of `usersOnline`, kept in Redis.
//!
//! Presence lives in Redis, not in the adapter's request/response (`fetchSockets`), for two
//! reasons: an admin's `init` needs it at once (a request to every node waits for the slowest,
//! or for a timeout when a node died), and a node that dies must drop out by itself. So each
//! node keeps one hash, `abs-socket:presence:<node>`, user id to that user's entry on this node
//! (with its `connections` here), written through on every change and given a time to live of
//! [`TTL`] that the node renews every [`HEARTBEAT`]. A node killed without a goodbye leaves
//! no ghost for longer than [`TTL`]. The set `abs-socket:nodes` lists the hashes to read.

use super::{Link, PREFIX};
use crate::presence::{OnlineUser, Presence};
use crate::state::App;
use fred::interfaces::{HashesInterface, KeysInterface, SetsInterface};
use fred::prelude::FredResult;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a node's presence outlives its last heartbeat.
pub const TTL: Duration = Duration::from_secs(3);
/// How often a node renews its presence.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

fn nodes_key() -> String {
    format!("{PREFIX}:nodes")
}

fn node_key(node: &str) -> String {
    format!("{PREFIX}:presence:{node}")
}

/// Keeps this node's hash in step with its presence until the process ends.
pub async fn run(link: Arc<Link>, app: App) {
    let presence = &app.presence;
    let key = node_key(&link.node);
    // After a failure (or Redis restarting empty) the whole hash is rewritten.
    let mut stale = true;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let changes = tokio::select! {
            changes = presence.changes() => changes,
            _ = heartbeat.tick() => Vec::new(),
        };
        let result = if stale {
            rewrite(&link, &key, presence).await
        } else {
            apply(&link, &key, &changes).await
        };
        match result {
            Ok(present) => {
                if stale {
                    tracing::info!("presence written to Redis");
                }
                // A hash that vanished although users are online: Redis restarted empty.
                stale = !present && presence.socket_count() > 0;
            }
            Err(e) => {
                if !stale {
                    tracing::warn!(error = %e, "presence not written to Redis; retrying");
                }
                stale = true;
            }
        }
    }
}

/// Writes `changes`, then renews the time to live; returns whether the hash exists.
async fn apply(
    link: &Link,
    key: &str,
    changes: &[(String, Option<OnlineUser>)],
) -> FredResult<bool> {
    let pipe = link.client.pipeline();
    for (id, entry) in changes {
        match entry {
            Some(entry) => {
                let json = serde_json::to_string(entry).unwrap_or_default();
                let _: () = pipe.hset(key, (id.as_str(), json)).await?;
            }
            None => {
                let _: () = pipe.hdel(key, id.as_str()).await?;
            }
        }
    }
    let _: () = pipe.sadd(nodes_key(), link.node.as_str()).await?;
    let _: () = pipe.pexpire(key, TTL.as_millis() as i64, None).await?;
    let results: Vec<fred::types::Value> = pipe.all().await?;
    Ok(results.last().and_then(|v| v.as_i64()) == Some(1))
}

/// Replaces the hash with everything `presence` holds.
async fn rewrite(link: &Link, key: &str, presence: &Presence) -> FredResult<bool> {
    let entries: Vec<(String, String)> = presence
        .users_online()
        .into_iter()
        .map(|u| {
            let json = serde_json::to_string(&u).unwrap_or_default();
            (u.user.id, json)
        })
        .collect();
    let pipe = link.client.pipeline();
    let _: () = pipe.del(key).await?;
    if !entries.is_empty() {
        let _: () = pipe.hset(key, entries).await?;
    }
    let _: () = pipe.sadd(nodes_key(), link.node.as_str()).await?;
    let _: () = pipe.pexpire(key, TTL.as_millis() as i64, None).await?;
    let _: Vec<fred::types::Value> = pipe.all().await?;
    Ok(true)
}

/// `usersOnline` over every node: `local` (this node's, always current) merged with the other
/// nodes' hashes, `connections` summed per user. When Redis cannot be read, `local` alone.
pub async fn users_online(link: &Link, local: Vec<OnlineUser>) -> Vec<OnlineUser> {
    match remote(link).await {
        Ok(remote) => merge(local, remote),
        Err(e) => {
            tracing::warn!(error = %e, "usersOnline from this node only: Redis unreadable");
            local
        }
    }
}

async fn remote(link: &Link) -> FredResult<Vec<OnlineUser>> {
    let nodes: Vec<String> = link.client.smembers(nodes_key()).await?;
    let mut users = Vec::new();
    for node in nodes.into_iter().filter(|n| *n != link.node) {
        let entries: HashMap<String, String> = link.client.hgetall(node_key(&node)).await?;
        if entries.is_empty() {
            // Expired (the node is gone) or empty; a live node adds itself back at its heartbeat.
            let _: () = link.client.srem(nodes_key(), node.as_str()).await?;
            continue;
        }
        users.extend(
            entries
                .values()
                .filter_map(|json| serde_json::from_str::<OnlineUser>(json).ok()),
        );
    }
    Ok(users)
}

/// One entry per user, this node's details first, `connections` summed over nodes.
fn merge(local: Vec<OnlineUser>, remote: Vec<OnlineUser>) -> Vec<OnlineUser> {
    let mut by_id: indexmap::IndexMap<String, OnlineUser> =
        local.into_iter().map(|u| (u.user.id.clone(), u)).collect();
    for u in remote {
        by_id
            .entry(u.user.id.clone())
            .and_modify(|e| e.connections += u.connections)
            .or_insert(u);
    }
    by_id.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::PublicUser;

    fn online(id: &str, connections: usize) -> OnlineUser {
        OnlineUser {
            user: PublicUser {
                id: id.into(),
                username: Some(id.into()),
                kind: Some("user".into()),
                session: None,
                last_seen: None,
                created_at: 1,
            },
            connections,
        }
    }

    #[test]
    fn merge_sums_connections_per_user_across_nodes() {
        let merged = merge(
            vec![online("a", 1), online("b", 2)],
            vec![online("b", 3), online("c", 1), online("a", 1)],
        );
        let counts: Vec<(String, usize)> = merged
            .iter()
            .map(|u| (u.user.id.clone(), u.connections))
            .collect();
        assert_eq!(
            counts,
            vec![("a".into(), 2), ("b".into(), 5), ("c".into(), 1)]
        );
    }

    #[test]
    fn entries_survive_the_trip_through_redis() {
        let json = serde_json::to_string(&online("a", 2)).unwrap();
        let back: OnlineUser = serde_json::from_str(&json).unwrap();
        assert_eq!(back.user, online("a", 2).user);
        assert_eq!(back.connections, 2);
    }
}

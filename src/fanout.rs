//! Fan-out: every delivery of an event to the sockets audiobookshelf would reach.
//!
//! One module for every target of `CONTRACT.md` sections 3 and 6, used by the socket handlers and
//! the publishing API alike. Every delivery is one emit to a set of rooms (socketioxide sends a
//! socket that is in several of them the event once), so that a cross-node adapter carries it.
//! Library and item targets become the rooms of the users allowed to see them, decided from the
//! users' permissions, read from the database at most [`PERMISSIONS_TTL`] ago.

use crate::access::{ItemAccess, UserAccess};
use crate::cluster::Cluster;
use crate::rooms;
use crate::store::Store;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;
use socketioxide::BroadcastError;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How old the permissions used for library and item targets may be.
pub const PERMISSIONS_TTL: Duration = Duration::from_secs(2);

/// Serializes as no arguments at all: `socket.emit('pong')`, not `socket.emit('pong', null)`.
pub const NO_ARGS: [(); 0] = [];

/// Who an event goes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    All,
    Admins,
    Users(Vec<String>),
    Library(String),
    Item(ItemAccess),
    /// Admins listening to log lines of this level (a line goes to every listener whose chosen
    /// level is at or below it).
    LogListeners(u8),
}

impl Target {
    /// A node's own log lines go to the listeners on that node; everything else to the cluster.
    fn scope(&self) -> Scope {
        match self {
            Target::LogListeners(_) => Scope::Local,
            _ => Scope::Cluster,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("database unavailable: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// Which sockets a delivery may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every node's sockets (through the adapter).
    Cluster,
    /// This node's sockets only: log lines, the bridge, and every delivery while Redis is away.
    Local,
}

/// What the fan-out needs of the Socket.IO server, whatever its adapter. Object-safe, so that the
/// adapter type (chosen at start) stays in `server.rs`.
pub trait Broadcast: Send + Sync + 'static {
    /// Emits `event` (with `data`, or no argument at all for `None`) to every socket in `rooms`
    /// within `scope`; returns the sockets reached on this node when `count` asks for it.
    fn emit<'a>(
        &'a self,
        rooms: Vec<String>,
        event: &'a str,
        data: Option<Value>,
        scope: Scope,
        count: bool,
    ) -> BoxFuture<'a, usize>;
}

impl<A: Adapter> Broadcast for SocketIo<A> {
    fn emit<'a>(
        &'a self,
        rooms: Vec<String>,
        event: &'a str,
        data: Option<Value>,
        scope: Scope,
        count: bool,
    ) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            // `None` once the server is closing: there is nobody left to deliver to.
            let Some(ns) = self.of("/") else {
                return 0;
            };
            let reached = if count {
                ns.clone().local().to(rooms.clone()).sockets().len()
            } else {
                0
            };
            let res = match scope {
                Scope::Cluster => {
                    match send(ns.clone().to(rooms.clone()), event, data.as_ref()).await {
                        // The adapter publishes to Redis before it delivers locally, and gives up on
                        // both when Redis cannot be reached: this node's sockets must still get it.
                        Err(BroadcastError::Adapter(e)) => {
                            tracing::warn!(event, error = %e, "Redis unreachable: delivered on this node only");
                            send(ns.local().to(rooms), event, data.as_ref()).await
                        }
                        res => res,
                    }
                }
                Scope::Local => send(ns.local().to(rooms), event, data.as_ref()).await,
            };
            if let Err(e) = res {
                // A socket whose outgoing queue is full (a client that stopped reading) misses
                // this event; everyone else got it. Per-broadcast, so not a warning: a mass
                // disconnect would print thousands.
                tracing::debug!(event, error = %e, "broadcast not delivered to every socket");
            }
            reached
        })
    }
}

/// One emit, with `data` as its argument or with none at all.
async fn send<A: Adapter>(
    op: socketioxide::operators::BroadcastOperators<A>,
    event: &str,
    data: Option<&Value>,
) -> Result<(), BroadcastError> {
    match data {
        Some(data) => op.emit(event, data).await,
        None => op.emit(event, &NO_ARGS).await,
    }
}

/// Whether a delivery counts the local sockets it reached.
#[derive(Debug, Clone, Copy)]
enum Count {
    Yes,
    No,
}

pub struct Fanout {
    io: Arc<dyn Broadcast>,
    cluster: Cluster,
    store: Store,
    permissions: Mutex<Option<(Instant, Arc<Vec<UserAccess>>)>>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fanout")
    }
}

impl Fanout {
    pub fn new(io: Arc<dyn Broadcast>, cluster: Cluster, store: Store) -> Self {
        Self {
            io,
            cluster,
            store,
            permissions: Mutex::new(None),
        }
    }

    /// The users and their permissions, re-read when older than [`PERMISSIONS_TTL`]. One reader
    /// refreshes; concurrent callers wait for it rather than query too.
    async fn users(&self) -> Result<Arc<Vec<UserAccess>>, FanoutError> {
        let mut cached = self.permissions.lock().await;
        if let Some((at, users)) = cached.as_ref()
            && at.elapsed() < PERMISSIONS_TTL
        {
            return Ok(users.clone());
        }
        let started = Instant::now();
        let users = Arc::new(self.store.all_user_access().await?);
        *cached = Some((started, users.clone()));
        Ok(users)
    }

    /// The rooms a target resolves to.
    async fn rooms(&self, target: &Target) -> Result<Vec<String>, FanoutError> {
        Ok(match target {
            Target::All => vec![rooms::AUTHENTICATED.to_owned()],
            Target::Admins => vec![rooms::ADMINS.to_owned()],
            Target::Users(ids) => ids.iter().map(|id| rooms::user(id)).collect(),
            Target::LogListeners(level) => (0..=*level).map(crate::logging::room).collect(),
            Target::Library(library) => self
                .users()
                .await?
                .iter()
                .filter(|u| u.can_access_library(library))
                .map(|u| rooms::user(&u.id))
                .collect(),
            Target::Item(item) => self
                .users()
                .await?
                .iter()
                .filter(|u| u.can_access_item(item))
                .map(|u| rooms::user(&u.id))
                .collect(),
        })
    }

    /// Emits `event` with `data` (or, with `None`, no argument) to `target`.
    pub async fn emit<T: Serialize + ?Sized>(
        &self,
        target: &Target,
        event: &str,
        data: Option<&T>,
    ) -> Result<(), FanoutError> {
        let rooms = self.rooms(target).await?;
        self.emit_to(rooms, event, data, target.scope(), Count::No)
            .await;
        Ok(())
    }

    /// [`Fanout::emit`], also counting the sockets on this node it reached (for the publishing
    /// API's answer; the server's own events skip the count, which walks every socket reached).
    pub async fn emit_counted<T: Serialize + ?Sized>(
        &self,
        target: &Target,
        event: &str,
        data: Option<&T>,
    ) -> Result<usize, FanoutError> {
        let rooms = self.rooms(target).await?;
        Ok(self
            .emit_to(rooms, event, data, target.scope(), Count::Yes)
            .await)
    }

    /// `libraryItemsEmitter`: each user receives one event whose argument is the array of the
    /// `data` elements (same order as `items`) they may access; a user with none receives nothing.
    /// Returns the number of sockets on this node reached.
    pub async fn emit_items(
        &self,
        items: &[ItemAccess],
        event: &str,
        data: &[Value],
    ) -> Result<usize, FanoutError> {
        debug_assert_eq!(items.len(), data.len());
        let users = self.users().await?;
        // Users who may see the same subset get one broadcast between them.
        let mut groups: BTreeMap<Vec<usize>, Vec<String>> = BTreeMap::new();
        for user in users.iter() {
            let subset: Vec<usize> = (0..items.len())
                .filter(|&i| user.can_access_item(&items[i]))
                .collect();
            if !subset.is_empty() {
                groups
                    .entry(subset)
                    .or_default()
                    .push(rooms::user(&user.id));
            }
        }
        let mut reached = 0;
        for (subset, rooms) in groups {
            let payload: Vec<&Value> = subset.iter().map(|&i| &data[i]).collect();
            reached += self
                .emit_to(rooms, event, Some(&payload), Scope::Cluster, Count::Yes)
                .await;
        }
        Ok(reached)
    }

    async fn emit_to<T: Serialize + ?Sized>(
        &self,
        rooms: Vec<String>,
        event: &str,
        data: Option<&T>,
        scope: Scope,
        count: Count,
    ) -> usize {
        if rooms.is_empty() {
            return 0;
        }
        let data = match data.map(serde_json::to_value).transpose() {
            Ok(data) => data,
            Err(e) => {
                tracing::error!(event, error = %e, "event payload cannot be serialized; not sent");
                return 0;
            }
        };
        // Unless Redis is known to be down: then at once to this node only, rather than after
        // a command timeout.
        let scope = if scope == Scope::Local || !self.cluster.is_up() {
            Scope::Local
        } else {
            Scope::Cluster
        };
        self.io
            .emit(rooms, event, data, scope, matches!(count, Count::Yes))
            .await
    }

    /// Emits to this node's sockets in `rooms` only (the bridge: each node delivers what its own
    /// upstream connection received).
    pub async fn emit_local(&self, rooms: Vec<String>, event: &str, data: Option<Value>) -> usize {
        self.io.emit(rooms, event, data, Scope::Local, false).await
    }
}

//! The server's shared state, handed to every socket and HTTP handler.

use crate::api::MaxEmitBytes;
use crate::auth::Authenticator;
use crate::bridge::Bridge;
use crate::cluster::Cluster;
use crate::fanout::Fanout;
use crate::limits::{ConnectionCounts, Limits};
use crate::presence::Presence;
use crate::registry::Registry;
use crate::revocation::{Policy, Stats};
use crate::store::Store;
use crate::writer::Writer;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use std::sync::{Arc, OnceLock};

/// What links this node to others: the cluster (Redis) and the bridge (audiobookshelf).
#[derive(Clone, Debug, Default)]
pub struct Links {
    pub cluster: Cluster,
    pub bridge: Bridge,
}

/// Cheap to clone: one `Arc`.
#[derive(Clone, Debug)]
pub struct App(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub auth: Authenticator,
    pub store: Store,
    pub writer: Writer,
    pub presence: Presence,
    pub max_emit_bytes: MaxEmitBytes,
    pub registry: Registry,
    pub revocation: Policy,
    pub revocation_stats: Stats,
    pub limits: Limits,
    pub connections: ConnectionCounts,
    pub log_listeners: crate::logging::Listeners,
    pub cluster: Cluster,
    pub bridge: Bridge,
    fanout: OnceLock<Fanout>,
}

impl App {
    pub fn new(
        auth: Authenticator,
        store: Store,
        writer: Writer,
        max_emit_bytes: MaxEmitBytes,
        revocation: Policy,
        limits: Limits,
        Links { cluster, bridge }: Links,
    ) -> Self {
        Self(Arc::new(Inner {
            auth,
            store,
            writer,
            presence: if cluster.link().is_some() {
                Presence::tracking_changes()
            } else {
                Presence::default()
            },
            max_emit_bytes,
            registry: Registry::default(),
            revocation,
            revocation_stats: Stats::default(),
            limits,
            connections: ConnectionCounts::default(),
            log_listeners: Default::default(),
            cluster,
            bridge,
            fanout: OnceLock::new(),
        }))
    }

    /// Set once, right after the Socket.IO layer is built (it needs the state first).
    pub fn set_io<A: Adapter>(&self, io: SocketIo<A>) {
        let fanout = Fanout::new(Arc::new(io), self.cluster.clone(), self.store.clone());
        let _ = self.0.fanout.set(fanout);
    }

    /// `usersOnline`: this node's, and with several nodes everyone's.
    pub async fn users_online(&self) -> Vec<crate::presence::OnlineUser> {
        let local = self.presence.users_online();
        match self.cluster.link() {
            Some(link) => crate::cluster::presence::users_online(link, local).await,
            None => local,
        }
    }

    /// Every delivery goes through here.
    pub fn fanout(&self) -> &Fanout {
        self.0.fanout.get().expect("set with the SocketIo")
    }
}

impl std::ops::Deref for App {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

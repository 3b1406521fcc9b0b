//! A connected socket of this node, whatever the adapter that carries its rooms.
//!
//! socketioxide's `SocketRef<A>` is generic over the adapter (in-memory, or Redis across nodes).
//! The adapter is chosen at start from the configuration, so the handlers, the registry, the
//! revocation sweep and the bridge work through this object-safe view instead of being generic
//! themselves; only `socket/mod.rs`, where socketioxide hands over the socket, knows the type.

use serde_json::Value;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::socket::{Sid, Socket};
use std::sync::Arc;

/// What abs-socket does with one of its own sockets. Every operation is local to this node.
pub trait LocalSocket: Send + Sync + 'static {
    fn id(&self) -> Sid;
    fn join(&self, rooms: Vec<String>);
    fn leave(&self, room: &str);
    fn leave_all(&self);
    /// Sends `event` with one argument; a socket that is gone or too far behind misses it.
    fn emit(&self, event: &str, data: &Value);
    fn is_connected(&self) -> bool;
    fn disconnect(&self);
}

/// A shared handle on a [`LocalSocket`].
pub type Sock = Arc<dyn LocalSocket>;

impl<A: Adapter> LocalSocket for SocketRef<A> {
    fn id(&self) -> Sid {
        self.id
    }
    fn join(&self, rooms: Vec<String>) {
        Socket::join(self, rooms)
    }
    fn leave(&self, room: &str) {
        Socket::leave(self, room.to_owned())
    }
    fn leave_all(&self) {
        Socket::leave_all(self)
    }
    fn emit(&self, event: &str, data: &Value) {
        let _ = Socket::emit(self, event, data);
    }
    fn is_connected(&self) -> bool {
        self.connected()
    }
    fn disconnect(&self) {
        let _ = self.clone().disconnect();
    }
}

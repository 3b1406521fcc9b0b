//! The authenticated sockets of this node, with their sessions: what the revocation sweep checks.
//!
//! Delivery never iterates this map (it goes through rooms); only revocation does, because it
//! must reach sockets by the credential that authenticated them.

use crate::socket::handle::Sock;
use crate::socket::session::{Identity, Session};
use socketioxide::socket::Sid;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct Entry {
    pub socket: Sock,
    pub session: Arc<Session>,
}

#[derive(Default)]
pub struct Registry {
    inner: Mutex<HashMap<Sid, Entry>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl Registry {
    pub fn insert(&self, socket: Sock, session: Arc<Session>) {
        self.inner
            .lock()
            .unwrap()
            .insert(socket.id(), Entry { socket, session });
    }

    /// The socket `sid`, when it is authenticated on this node.
    pub fn get(&self, sid: Sid) -> Option<Entry> {
        self.inner.lock().unwrap().get(&sid).cloned()
    }

    pub fn remove(&self, sid: Sid) {
        self.inner.lock().unwrap().remove(&sid);
    }

    /// The authenticated sockets for which `pick`, shown each identity as of now, returns
    /// something, with what it returned. Nothing is cloned for the others: the revocation sweep
    /// runs this over every socket twice a second, and almost always picks none.
    pub fn select<T>(&self, mut pick: impl FnMut(&Identity) -> Option<T>) -> Vec<(Entry, T)> {
        self.inner
            .lock()
            .unwrap()
            .values()
            .filter_map(|e| {
                let picked = e.session.with_identity(|i| pick(i?))?;
                Some((e.clone(), picked))
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

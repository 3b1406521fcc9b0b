//! The server's shared state, handed to every socket and HTTP handler.

use crate::auth::Authenticator;
use crate::presence::Presence;
use crate::store::Store;
use crate::writer::Writer;
use socketioxide::SocketIo;
use std::sync::{Arc, OnceLock};

/// Cheap to clone: one `Arc`.
#[derive(Clone, Debug)]
pub struct App(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub auth: Authenticator,
    pub store: Store,
    pub writer: Writer,
    pub presence: Presence,
    io: OnceLock<SocketIo>,
}

impl App {
    pub fn new(auth: Authenticator, store: Store, writer: Writer) -> Self {
        Self(Arc::new(Inner {
            auth,
            store,
            writer,
            presence: Presence::default(),
            io: OnceLock::new(),
        }))
    }

    /// Set once, right after the Socket.IO layer is built (it needs the state first).
    pub fn set_io(&self, io: SocketIo) {
        let _ = self.0.io.set(io);
    }

    pub fn io(&self) -> &SocketIo {
        self.0
            .io
            .get()
            .expect("SocketIo is set before the server accepts connections")
    }
}

impl std::ops::Deref for App {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

//! Where a socket event is handled: the default namespace and its handlers.
//!
//! Every handler is attached in a connect *middleware*, which socketioxide awaits before it answers
//! the client's CONNECT. The audiobookshelf clients emit `auth` the instant they see `connect`, and
//! socketioxide drops an event that arrives before its handler exists; handlers registered in the
//! connect handler itself (which runs in a task spawned after the answer) would race that `auth`.

mod handlers;
pub mod session;

use crate::fanout::NO_ARGS;
use crate::state::App;
use serde_json::Value;
use session::Session;
use socketioxide::ParserError;
use socketioxide::SocketIo;
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use std::convert::Infallible;
use std::future::{Future, Ready};
use std::sync::Arc;

/// Registers the default namespace, the only one audiobookshelf clients use.
pub fn register(io: &SocketIo) {
    io.ns("/", on_connect.with(attach_handlers));
}

async fn on_connect() {}

/// Wraps a handler so that it runs on the socket's queue, in arrival order; see [`session`].
fn queued<F, Fut>(
    session: &Arc<Session>,
    event: &'static str,
    handler: F,
) -> impl Fn(SocketRef, State<App>, TryData<Value>) -> Ready<()> + Clone + Send + Sync + 'static
where
    F: Fn(App, SocketRef, Arc<Session>, Result<Value, ParserError>) -> Fut
        + Clone
        + Send
        + Sync
        + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let session = session.clone();
    move |s: SocketRef, State(app): State<App>, TryData(data): TryData<Value>| {
        let sid = s.id;
        if !session.run(handler(app, s, session.clone(), data)) {
            tracing::warn!(%sid, event, "socket is flooding; event dropped");
        }
        std::future::ready(())
    }
}

async fn attach_handlers(s: SocketRef) -> Result<(), Infallible> {
    let session = Arc::new(Session::default());
    s.on("auth", queued(&session, "auth", handlers::auth));
    s.on(
        "message_all_users",
        queued(&session, "message_all_users", handlers::message_all_users),
    );
    s.on(
        "search_covers",
        queued(&session, "search_covers", handlers::search_covers),
    );
    s.on(
        "cancel_scan",
        queued(&session, "cancel_scan", handlers::cancel_scan),
    );
    s.on(
        "cancel_cover_search",
        queued(
            &session,
            "cancel_cover_search",
            handlers::cancel_cover_search,
        ),
    );
    // `ping` needs no state and no order: answer at once.
    s.on("ping", |s: SocketRef| {
        let _ = s.emit("pong", &NO_ARGS);
        std::future::ready(())
    });
    let on_close = session.clone();
    s.on_disconnect(move |s: SocketRef, State(app): State<App>| {
        // Behind any auth still queued, so that a socket never stays online after it left.
        let session = on_close.clone();
        on_close.run(handlers::disconnect(app, s.id, session));
        std::future::ready(())
    });
    Ok(())
}

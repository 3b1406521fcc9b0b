//! Where a socket event is handled: the default namespace and its handlers.
//!
//! Every handler is attached in a connect *middleware*, which socketioxide awaits before it answers
//! the client's CONNECT. The audiobookshelf clients emit `auth` the instant they see `connect`, and
//! socketioxide drops an event that arrives before its handler exists; handlers registered in the
//! connect handler itself (which runs in a task spawned after the answer) would race that `auth`.
//! The socket's queue is held until the connect handler runs, so a token that came with the
//! handshake is judged first and nothing is sent before the client has its CONNECT answer.

pub mod handle;
pub(crate) mod handlers;
pub mod session;

use crate::fanout::NO_ARGS;
use crate::limits::client_ip;
use crate::state::App;
use handle::Sock;
use serde_json::Value;
use session::Session;
use socketioxide::ParserError;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide_core::adapter::DefinedAdapter;
use std::future::{Future, Ready};
use std::sync::Arc;
use std::time::Instant;

/// Registers the default namespace, the only one audiobookshelf clients use.
pub fn register<A: Adapter + DefinedAdapter>(io: &SocketIo<A>) -> A::InitRes {
    io.ns("/", on_connect::<A>.with(attach_handlers::<A>))
}

/// Wraps a handler so that it runs on the socket's queue, in arrival order; see [`session`].
fn queued<A: Adapter, F, Fut>(
    session: &Arc<Session>,
    event: &'static str,
    handler: F,
) -> impl Fn(SocketRef<A>, State<App>, TryData<Value>) -> Ready<()> + Clone + Send + Sync + 'static
where
    F: Fn(App, Sock, Arc<Session>, Result<Value, ParserError>) -> Fut
        + Clone
        + Send
        + Sync
        + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let session = session.clone();
    move |s: SocketRef<A>, State(app): State<App>, TryData(data): TryData<Value>| {
        let sid = s.id;
        if !session.run(handler(app, Arc::new(s), session.clone(), data)) {
            tracing::warn!(%sid, event, "socket is flooding; event dropped");
        }
        std::future::ready(())
    }
}

/// Why a connection was refused before it was accepted.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("Too many connections")]
    TooManyConnections,
}

async fn attach_handlers<A: Adapter>(
    s: SocketRef<A>,
    State(app): State<App>,
    TryData(connect_auth): TryData<Value>,
) -> Result<(), Refused> {
    let (session, released) = Session::new_held();
    if let Some(max) = app.limits.max_connections_per_ip
        && let Some(ip) = client_ip(s.req_parts(), app.limits.trust_proxy)
    {
        if !app.connections.try_add(ip, max) {
            tracing::warn!(%ip, max, "connection refused: too many from this address");
            return Err(Refused::TooManyConnections);
        }
        *session.counted_ip.lock().unwrap() = Some(ip);
    }

    // The first job: wait for the CONNECT answer, then judge a token given at the handshake.
    let handshake = handlers::handshake_token(s.req_parts(), connect_auth);
    let at = Instant::now();
    session.run({
        let (app, s, session) = (app.clone(), Arc::new(s.clone()) as Sock, session.clone());
        async move {
            let _ = released.await;
            if let Some(token) = handshake {
                handlers::auth_token(app, s, session, token, at).await;
            }
        }
    });

    s.on(
        "auth",
        queued(&session, "auth", |app, s, session, data| {
            let at = Instant::now(); // arrival, for the attempt limit
            handlers::auth(app, s, session, data, at)
        }),
    );
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
    s.on(
        "set_log_listener",
        queued(&session, "set_log_listener", handlers::set_log_listener),
    );
    s.on(
        "remove_log_listener",
        queued(
            &session,
            "remove_log_listener",
            handlers::remove_log_listener,
        ),
    );
    // `ping` needs no state and no order: answer at once.
    s.on("ping", |s: SocketRef<A>| {
        let _ = s.emit("pong", &NO_ARGS);
        std::future::ready(())
    });
    let on_close = session.clone();
    s.on_disconnect(move |s: SocketRef<A>, State(app): State<App>| {
        let session = on_close.clone();
        // Never held back: a socket that leaves before its CONNECT answer must still be cleaned.
        session.connected();
        if let Some(ip) = session.counted_ip.lock().unwrap().take() {
            app.connections.remove(ip);
        }
        // Behind any auth still queued, so that a socket never stays online after it left.
        on_close.run(handlers::disconnect(app, Arc::new(s), session));
        std::future::ready(())
    });
    s.extensions.insert(session);
    Ok(())
}

async fn on_connect<A: Adapter>(s: SocketRef<A>, State(app): State<App>) {
    let Some(session) = s.extensions.get::<Arc<Session>>() else {
        return;
    };
    session.connected();
    if let Some(deadline) = app.limits.auth_timeout {
        tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            if !session.is_authenticated() && s.connected() {
                tracing::info!(sid = %s.id, "disconnecting a socket that did not authenticate in time");
                let _ = s.disconnect();
            }
        });
    }
}

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
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{Event, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide_core::adapter::DefinedAdapter;
use std::future::Ready;
use std::sync::Arc;
use std::time::Instant;

/// Registers the default namespace, the only one audiobookshelf clients use.
pub fn register<A: Adapter + DefinedAdapter>(io: &SocketIo<A>) -> A::InitRes {
    io.ns("/", on_connect::<A>.with(attach_handlers::<A>))
}

/// Every client event of one socket, by name.
///
/// One handler per socket rather than one `on` per event: socketioxide keeps, per socket, a map
/// of its handlers and a boxed handler per entry, which is memory every idle socket pays and
/// allocations every connection pays (BENCHMARKS.md). Each event's work is queued on the socket's
/// queue, in arrival order (see [`session`]); events audiobookshelf does not handle are ignored,
/// as it ignores them.
fn dispatch<A: Adapter>(
    session: Arc<Session>,
) -> impl Fn(SocketRef<A>, State<App>, Event, TryData<Value>) -> Ready<()> + Clone + Send + Sync + 'static
{
    move |s: SocketRef<A>,
          State(app): State<App>,
          Event(event): Event,
          TryData(data): TryData<Value>| {
        let at = Instant::now(); // arrival, for the attempt limit
        // Made only for the events that are queued: `ping` and unknown events allocate nothing.
        let (q, sock, me) = (&session, || Arc::new(s.clone()) as Sock, || session.clone());
        let queued = match event.as_str() {
            "auth" => q.run(handlers::auth(app, sock(), me(), data, at)),
            "message_all_users" => q.run(handlers::message_all_users(app, sock(), me(), data)),
            "search_covers" => q.run(handlers::search_covers(app, sock(), me(), data)),
            "cancel_scan" => q.run(handlers::cancel_scan(app, sock(), me(), data)),
            "cancel_cover_search" => q.run(handlers::cancel_cover_search(app, sock(), me(), data)),
            "set_log_listener" => q.run(handlers::set_log_listener(app, sock(), me(), data)),
            "remove_log_listener" => q.run(handlers::remove_log_listener(app, sock(), me(), data)),
            // `ping` needs no state and no order: answer at once.
            "ping" => {
                let _ = s.emit("pong", &NO_ARGS);
                true
            }
            _ => true,
        };
        if !queued {
            tracing::warn!(sid = %s.id, event, "socket is flooding; event dropped");
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

    s.on_fallback(dispatch::<A>(session.clone()));
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

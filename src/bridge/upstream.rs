//! One user's upstream connection: connect, authenticate with a minted token, relay, reconnect.

use super::{Command, OWN_EVENTS, Shared, State, UNAVAILABLE};
use crate::rooms;
use crate::state::App;
use serde_json::{Value, json};
use sio_client::{Conn, Event};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Lifetime of a minted access token: it only has to outlive the `auth` it is sent in.
const TOKEN_LIFETIME_SECS: i64 = 300;
/// Reconnection backoff: from this, doubling, up to [`MAX_BACKOFF`], with jitter.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// How long a connection attempt (TCP, websocket, namespace, `auth`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs until the link's command sender is dropped (the link closed).
pub async fn run(
    app: App,
    shared: Arc<Shared>,
    user_id: String,
    username: Option<String>,
    state: Arc<Mutex<State>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut lost_at: Option<Instant> = None;
    loop {
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut conn = Conn::connect(&shared.endpoint).await?;
            conn.auth(&mint(&app, &user_id, username.as_deref()))
                .await?;
            Ok::<_, sio_client::Error>(conn)
        });
        let Some(connected) = while_down(attempt, &mut commands).await else {
            return;
        };
        match connected {
            Ok(Ok(mut conn)) => {
                *state.lock().unwrap() = State::Connected;
                backoff = MIN_BACKOFF;
                match lost_at.take() {
                    Some(at) => {
                        shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(user = ?username, lost_for_secs = at.elapsed().as_secs_f64(), "upstream connection back; audiobookshelf's events for this user in between were lost");
                    }
                    None => tracing::info!(user = ?username, "upstream connection authenticated"),
                }
                match relay(&app, &shared, &user_id, &mut conn, &mut commands).await {
                    Ended::Closed => {
                        conn.close().await;
                        return;
                    }
                    Ended::Renew => {
                        conn.close().await;
                        tracing::info!(user = ?username, "the user's rights changed; authenticating upstream again");
                        *state.lock().unwrap() = State::Connecting;
                        continue;
                    }
                    Ended::Broken => abandon_searches(&app, &shared, &user_id),
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(user = ?username, upstream = %shared.display, error = %e, "upstream connection failed")
            }
            Err(_) => {
                tracing::warn!(user = ?username, upstream = %shared.display, "upstream connection timed out")
            }
        }
        if lost_at.is_none() {
            lost_at = Some(Instant::now());
            tracing::warn!(user = ?username, upstream = %shared.display, "upstream connection lost; reconnecting. audiobookshelf keeps no history: its events until then are lost");
        }
        *state.lock().unwrap() = State::Reconnecting(lost_at.unwrap_or_else(Instant::now));
        let pause = jitter(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if while_down(tokio::time::sleep(pause), &mut commands)
            .await
            .is_none()
        {
            return;
        }
    }
}

/// Runs `fut` while the link is not connected; `None` when the link was closed first.
///
/// Commands that arrive meanwhile are dropped: nothing can be sent before the link is up
/// (`forward` refuses meanwhile), and a connection still being made sees the user as they are
/// now, so a renewal is moot.
async fn while_down<T>(
    fut: impl std::future::Future<Output = T>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Option<T> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return Some(out),
            cmd = commands.recv() => match cmd {
                None => return None,
                Some(cmd) => tracing::debug!(?cmd, "upstream not connected; dropped"),
            },
        }
    }
}

/// Why [`relay`] ended.
enum Ended {
    /// The link was closed (its last socket left, or the user was revoked).
    Closed,
    /// The connection broke.
    Broken,
    /// The user's rights changed.
    Renew,
}

/// Relays until the connection breaks, the link is closed or renewed.
async fn relay(
    app: &App,
    shared: &Shared,
    user_id: &str,
    conn: &mut Conn,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Ended {
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => return Ended::Closed,
                Some(Command::Renew) => return Ended::Renew,
                Some(Command::Emit { event, args }) => {
                    if conn.emit(&event, &args).await.is_err() {
                        return Ended::Broken;
                    }
                }
            },
            event = conn.next_event() => match event {
                Ok(event) => deliver(app, shared, user_id, event).await,
                Err(_) => return Ended::Broken,
            },
        }
    }
}

/// Tells each socket whose cover search was running that it failed: the connection that would
/// have carried its results is gone.
fn abandon_searches(app: &App, shared: &Shared, user_id: &str) {
    for (sid, request_id) in shared.abandon_searches(user_id) {
        if let Some(entry) = app.registry.get(sid) {
            entry.socket.emit(
                "cover_search_error",
                &json!({ "requestId": request_id, "error": UNAVAILABLE }),
            );
        }
    }
}

/// An access token for `user_id`, as audiobookshelf's own login would issue it.
fn mint(app: &App, user_id: &str, username: Option<&str>) -> String {
    let iat = chrono::Utc::now().timestamp();
    app.auth.secret().sign(&json!({
        "userId": user_id,
        "username": username,
        "jti": uuid::Uuid::new_v4().to_string(),
        "type": "access",
        "iat": iat,
        "exp": iat + TOKEN_LIFETIME_SECS,
    }))
}

/// Delivers what audiobookshelf emitted to this user's sockets on this node: a cover-search
/// reply to the socket that asked, anything else to all of them, abs-socket's own events never.
async fn deliver(app: &App, shared: &Shared, user_id: &str, event: Event) {
    if OWN_EVENTS.contains(&event.name.as_str()) {
        return;
    }
    shared.forwarded.fetch_add(1, Ordering::Relaxed);
    // audiobookshelf emits one argument per event; a second one would be dropped here.
    let data: Option<Value> = event.args.into_iter().next();
    if event.name.starts_with("cover_search_") {
        if let Some(sid) = shared.asker(user_id, &event.name, data.as_ref())
            && let Some(entry) = app.registry.get(sid)
        {
            entry
                .socket
                .emit(&event.name, data.as_ref().unwrap_or(&Value::Null));
        }
        return;
    }
    app.fanout()
        .emit_local(vec![rooms::user(user_id)], &event.name, data)
        .await;
}

/// `d` plus or minus a quarter, so that the links of many users do not reconnect in step.
fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::random_range(0.75..1.25);
    d.mul_f64(f)
}

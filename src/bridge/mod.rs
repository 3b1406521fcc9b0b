//! The bridge: abs-socket in front of an unmodified audiobookshelf (`CONTRACT.md` section 7).
//!
//! With `--upstream`, each user with an authenticated socket on this node gets **one** Socket.IO
//! connection to audiobookshelf ([`upstream`]), authenticated as that user with an access token
//! minted here. What audiobookshelf emits on it goes to that user's sockets on this node only
//! (so that several nodes never deliver twice), except the events abs-socket answers itself; the
//! replies to a cover search go to the one socket that asked. A link opens with the user's first
//! socket, closes a grace period after the last one leaves (at once when the user is revoked),
//! and reconnects with backoff when audiobookshelf restarts.

pub mod upstream;

use serde_json::{Value, json};
use sio_client::Endpoint;
use socketioxide::socket::Sid;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Events audiobookshelf emits that abs-socket answers itself, so never forwarded.
pub const OWN_EVENTS: [&str; 5] = ["init", "auth_failed", "pong", "user_online", "user_offline"];

/// What a cover search gets when audiobookshelf cannot be reached.
pub const UNAVAILABLE: &str = "Library server unavailable";

/// The cover-search replies that end a search (its `requestId` is forgotten after them).
const SEARCH_ENDS: [&str; 3] = [
    "cover_search_complete",
    "cover_search_cancelled",
    "cover_search_error",
];

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("invalid --upstream: {0}")]
    Url(#[from] sio_client::Error),
}

/// When a link whose last socket left is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// After the grace period (a socket that reconnects meanwhile keeps it).
    AfterGrace,
    /// At once: the user's credential was revoked.
    Now,
}

/// What a link's task is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Send this event upstream.
    Emit { event: String, args: Vec<Value> },
    /// Authenticate again, on a new connection: the user's rights changed, and audiobookshelf
    /// judges a socket's rights (admin events, say) by the user as it was at its `auth`.
    Renew,
}

/// A link's connection state, as `/healthz` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    Connected,
    /// Lost at this instant; what audiobookshelf emitted since is lost.
    Reconnecting(Instant),
}

struct Link {
    sockets: HashSet<Sid>,
    commands: mpsc::UnboundedSender<Command>,
    state: Arc<Mutex<State>>,
    /// Bumped on every attach, so that a grace timer started before it does nothing.
    generation: u64,
}

pub struct Shared {
    pub endpoint: Endpoint,
    /// The upstream URL, for logs and `/healthz`.
    pub display: String,
    grace: Duration,
    links: Mutex<HashMap<String, Link>>,
    /// Each cover search in flight, by `(user id, requestId as a key)`: the socket that asked
    /// and the `requestId` as it gave it.
    searches: Mutex<HashMap<(String, String), (Sid, Value)>>,
    pub forwarded: AtomicU64,
    pub reconnects: AtomicU64,
}

/// The bridge of this node; `Bridge::default()` is no bridge at all.
#[derive(Clone, Default)]
pub struct Bridge(Option<Arc<Shared>>);

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Bridge(off)"),
            Some(s) => write!(f, "Bridge({})", s.display),
        }
    }
}

impl Bridge {
    pub fn new(upstream: &str, grace: Duration) -> Result<Self, BridgeError> {
        let endpoint = Endpoint::from_url(upstream)?;
        let display = format!(
            "http://{}:{}{}",
            endpoint.host, endpoint.port, endpoint.path
        );
        Ok(Self(Some(Arc::new(Shared {
            endpoint,
            display,
            grace,
            links: Mutex::default(),
            searches: Mutex::default(),
            forwarded: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        }))))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Socket `sid` is now authenticated as `user_id` on this node: the user's link opens if it
    /// was not open (or stays open if it was closing).
    pub fn attach(&self, app: &crate::state::App, user_id: &str, username: Option<&str>, sid: Sid) {
        let Some(shared) = &self.0 else { return };
        let mut links = shared.links.lock().unwrap();
        if let Some(link) = links.get_mut(user_id) {
            link.sockets.insert(sid);
            link.generation += 1;
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(Mutex::new(State::Connecting));
        links.insert(
            user_id.to_owned(),
            Link {
                sockets: HashSet::from([sid]),
                commands: tx,
                state: state.clone(),
                generation: 0,
            },
        );
        tracing::info!(user = ?username, upstream = %shared.display, "opening the user's upstream connection");
        tokio::spawn(upstream::run(
            app.clone(),
            shared.clone(),
            user_id.to_owned(),
            username.map(str::to_owned),
            state,
            rx,
        ));
    }

    /// Socket `sid` of `user_id` is no longer authenticated: when it was the user's last, the
    /// link closes, now or after the grace period.
    pub fn detach(&self, user_id: &str, sid: Sid, close: Close) {
        let Some(shared) = &self.0 else { return };
        shared
            .searches
            .lock()
            .unwrap()
            .retain(|(user, _), (asker, _)| !(user == user_id && *asker == sid));
        let generation = {
            let mut links = shared.links.lock().unwrap();
            let Some(link) = links.get_mut(user_id) else {
                return;
            };
            link.sockets.remove(&sid);
            if !link.sockets.is_empty() {
                return;
            }
            if close == Close::Now || shared.grace.is_zero() {
                // Dropping the link drops its command sender, which ends its task.
                links.remove(user_id);
                tracing::info!(user_id, "closed the user's upstream connection");
                return;
            }
            link.generation
        };
        let (shared, user_id) = (shared.clone(), user_id.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(shared.grace).await;
            let mut links = shared.links.lock().unwrap();
            if links
                .get(&user_id)
                .is_some_and(|l| l.sockets.is_empty() && l.generation == generation)
            {
                links.remove(&user_id);
                tracing::info!(
                    user_id,
                    "closed the user's upstream connection after the grace period"
                );
            }
        });
    }

    /// Sends `event` upstream on `user_id`'s link, for socket `sid`. `false` when the link is
    /// not connected (nothing was sent).
    pub fn forward(&self, user_id: &str, sid: Sid, event: &str, args: Vec<Value>) -> bool {
        let Some(shared) = &self.0 else { return false };
        let links = shared.links.lock().unwrap();
        let Some(link) = links.get(user_id) else {
            return false;
        };
        if *link.state.lock().unwrap() != State::Connected {
            return false;
        }
        if event == "search_covers"
            && let Some(given) = args.first().and_then(|p| p.get("requestId"))
            && let Some(id) = request_id(given)
        {
            shared
                .searches
                .lock()
                .unwrap()
                .insert((user_id.to_owned(), id), (sid, given.clone()));
        }
        link.commands
            .send(Command::Emit {
                event: event.to_owned(),
                args,
            })
            .is_ok()
    }

    /// `user_id`'s rights changed (promoted or demoted): their link authenticates again.
    pub fn renew(&self, user_id: &str) {
        let Some(shared) = &self.0 else { return };
        if let Some(link) = shared.links.lock().unwrap().get(user_id) {
            let _ = link.commands.send(Command::Renew);
        }
    }

    /// What `/healthz` shows.
    pub fn health(&self) -> Value {
        let Some(shared) = &self.0 else {
            return json!({ "enabled": false });
        };
        let links = shared.links.lock().unwrap();
        let (mut connected, mut connecting, mut reconnecting) = (0, 0, 0);
        let mut lost_for: Option<f64> = None;
        for link in links.values() {
            match *link.state.lock().unwrap() {
                State::Connected => connected += 1,
                State::Connecting => connecting += 1,
                State::Reconnecting(since) => {
                    reconnecting += 1;
                    let secs = since.elapsed().as_secs_f64();
                    lost_for = Some(lost_for.map_or(secs, |l: f64| l.max(secs)));
                }
            }
        }
        json!({
            "enabled": true,
            "upstream": shared.display,
            "users": links.len(),
            "connected": connected,
            "connecting": connecting,
            "reconnecting": reconnecting,
            // While any link is down, audiobookshelf's events for its user are being lost.
            "eventsLostForSeconds": lost_for,
            "forwarded": shared.forwarded.load(Ordering::Relaxed),
            "reconnects": shared.reconnects.load(Ordering::Relaxed),
        })
    }
}

impl Shared {
    /// Forgets `user_id`'s searches in flight and returns them, `(asker, requestId)`: their
    /// replies will never come once the upstream connection is gone.
    fn abandon_searches(&self, user_id: &str) -> Vec<(Sid, Value)> {
        let mut abandoned = Vec::new();
        self.searches.lock().unwrap().retain(|(user, _), search| {
            let keep = user != user_id;
            if !keep {
                abandoned.push(search.clone());
            }
            keep
        });
        abandoned
    }

    /// The socket that asked for the cover search an upstream reply belongs to; the search is
    /// forgotten with its last reply.
    fn asker(&self, user_id: &str, event: &str, payload: Option<&Value>) -> Option<Sid> {
        let id = payload?.get("requestId").and_then(request_id)?;
        let key = (user_id.to_owned(), id);
        let mut searches = self.searches.lock().unwrap();
        if SEARCH_ENDS.contains(&event) {
            searches.remove(&key).map(|(sid, _)| sid)
        } else {
            searches.get(&key).map(|(sid, _)| *sid)
        }
    }
}

/// A `requestId` as a key: clients send strings, but a number is kept apart from its string.
fn request_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(format!("#{n}")),
        _ => None,
    }
}

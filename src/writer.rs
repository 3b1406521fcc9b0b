//! The background writer: `lastSeen` after each authentication and the deactivation of expired API
//! keys, coalesced, retried until written.
//!
//! audiobookshelf awaits its `lastSeen` save before answering `init`; abs-socket answers first and
//! hands the write to this task, so that a storm of sockets costs one transaction per batch rather
//! than one per socket, and a database locked by audiobookshelf delays the write, never `init`. A
//! batch that fails stays pending and is retried with backoff, merged with newer values (the newest
//! time per user wins), so no write is lost; each batch is one transaction, so none is half-written.

use crate::store::Store;
use entity::AbsDate;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long the writer gathers more sightings before writing a batch; well under the one-second
/// bound the contract gives for `lastSeen`.
const GATHER: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

enum Msg {
    Seen(String, AbsDate),
    DeactivateKey(String, AbsDate),
    /// Write what is pending, then stop.
    Close,
}

/// A handle to the writer task; cheap to clone.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl Writer {
    pub fn spawn(store: Store) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(store, rx));
        (Self { tx }, task)
    }

    /// Records that `user_id` was seen at `at`; written within about [`GATHER`].
    pub fn seen(&self, user_id: &str, at: AbsDate) {
        let _ = self.tx.send(Msg::Seen(user_id.to_owned(), at));
    }

    /// Records that the API key `key_id` expired and must be deactivated (`isActive = 0`).
    pub fn deactivate_key(&self, key_id: &str, at: AbsDate) {
        let _ = self.tx.send(Msg::DeactivateKey(key_id.to_owned(), at));
    }

    /// Asks the writer to finish what is pending and stop; await its task to know it has.
    pub fn close(&self) {
        let _ = self.tx.send(Msg::Close);
    }
}

async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut pending = Pending::default();
    let mut backoff = Duration::from_millis(100);
    let mut open = true;
    loop {
        if pending.is_empty() {
            if !open {
                return;
            }
            match rx.recv().await {
                Some(Msg::Close) | None => return,
                Some(msg) => absorb(msg, &mut pending),
            }
            // Gather what arrives shortly after, to write it in the same transaction.
            let deadline = tokio::time::sleep(GATHER);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    msg = rx.recv() => match msg {
                        Some(Msg::Close) | None => { open = false; break }
                        Some(msg) => absorb(msg, &mut pending),
                    },
                }
            }
        }
        let seen: Vec<(String, AbsDate)> =
            pending.seen.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let keys: Vec<(String, AbsDate)> =
            pending.keys.iter().map(|(k, v)| (k.clone(), *v)).collect();
        match store.save_batch(&seen, &keys).await {
            Ok(()) => {
                // A newer sighting that arrived during the write stays pending.
                for (user, at) in &seen {
                    if pending.seen.get(user) == Some(at) {
                        pending.seen.remove(user);
                    }
                }
                for (key, _) in &keys {
                    pending.keys.remove(key);
                }
                backoff = Duration::from_millis(100);
                tracing::debug!(users = seen.len(), keys = keys.len(), "batch written");
            }
            Err(e) => {
                tracing::warn!(users = seen.len(), keys = keys.len(), error = %e, retry_in = ?backoff, "database write failed; will retry");
                let sleep = tokio::time::sleep(backoff);
                tokio::pin!(sleep);
                // Keep absorbing while waiting, so senders never block and newer values merge.
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        msg = rx.recv(), if open => match msg {
                            Some(Msg::Close) | None => open = false,
                            Some(msg) => absorb(msg, &mut pending),
                        },
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[derive(Default)]
struct Pending {
    seen: HashMap<String, AbsDate>,
    keys: HashMap<String, AbsDate>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.seen.is_empty() && self.keys.is_empty()
    }
}

fn absorb(msg: Msg, pending: &mut Pending) {
    match msg {
        Msg::Seen(user, at) => {
            let slot = pending.seen.entry(user).or_insert(at);
            if at > *slot {
                *slot = at;
            }
        }
        Msg::DeactivateKey(key, at) => {
            pending.keys.entry(key).or_insert(at);
        }
        Msg::Close => {}
    }
}

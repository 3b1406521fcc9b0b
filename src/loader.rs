//! Batched user lookups for authentication.
//!
//! Every `auth` must read the user as the database holds it at that moment, but a storm of
//! sockets (a server restart brings every client back at once) would otherwise cost one query
//! each, and each query costs far more in hand-offs to SQLite's thread and back than in SQLite
//! itself. So lookups are answered together by one `WHERE id IN (...)` query issued after they
//! arrived: each answer is still read after its request, never from a cache. One batch runs at a
//! time; lookups that arrive meanwhile form the next one. A batch waits a few scheduler ticks for
//! more while they keep coming, and, when the one before it held more than one lookup (a storm),
//! [`STORM_GATHER`] first: a storm makes few large batches, and a lone `auth` waits one tick. This
//! is the dataloader pattern; no maintained crate provides it for SeaORM without a cache, so it is
//! written here.

use crate::store::Store;
use entity::users;
use sea_orm::DbErr;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Ids looked up in one query at most.
const MAX_BATCH: usize = 500;
/// Scheduler ticks a batch waits for more lookups, as long as each tick brings some.
const GATHER_TICKS: usize = 8;
/// How long a batch gathers lookups in a storm. In a 10,000-socket storm, 5 ms made batches of
/// about 90 instead of 15 and cut the server's CPU per `auth` by about 7 % (BENCHMARKS.md); no
/// client notices 5 ms more before its `init`.
const STORM_GATHER: Duration = Duration::from_millis(5);
/// The least a lookup is given, whatever the busy timeout (which may be zero: then SQLite fails
/// at once on a lock, but an unlocked query still needs its moment).
const MIN_WAIT: Duration = Duration::from_secs(1);

type Reply = oneshot::Sender<Result<Option<users::Model>, String>>;

#[derive(Clone, Debug)]
pub struct UserLoader {
    tx: mpsc::UnboundedSender<(String, Reply)>,
    /// The longest a lookup waits, queue included.
    max_wait: Duration,
}

impl UserLoader {
    /// `max_wait` (at least [`MIN_WAIT`]) bounds each lookup, however long the batches before it
    /// take: a lookup queued behind a batch that waits on audiobookshelf's lock fails when its
    /// own time is up, not after that batch's time and then its own.
    pub fn spawn(store: Store, max_wait: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx));
        Self {
            tx,
            max_wait: max_wait.max(MIN_WAIT),
        }
    }

    /// The user a token names, by `id` or `extraData.oldUserId`, read after this call.
    pub async fn load(&self, id: &str) -> Result<Option<users::Model>, DbErr> {
        let stopped = || DbErr::Custom("user loader stopped".into());
        let (tx, rx) = oneshot::channel();
        self.tx.send((id.to_owned(), tx)).map_err(|_| stopped())?;
        match tokio::time::timeout(self.max_wait, rx).await {
            Ok(answer) => answer.map_err(|_| stopped())?.map_err(DbErr::Custom),
            Err(_) => Err(DbErr::Custom(format!(
                "no answer from the database within {:?}",
                self.max_wait
            ))),
        }
    }
}

async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<(String, Reply)>) {
    let mut storm = false;
    while let Some(first) = rx.recv().await {
        if storm {
            tokio::time::sleep(STORM_GATHER).await;
        }
        let mut batch = vec![first];
        gather(&mut rx, &mut batch).await;
        storm = batch.len() > 1;
        // A lookup whose caller gave up (timed out, socket gone) is not worth a row.
        batch.retain(|(_, reply)| !reply.is_closed());
        if !batch.is_empty() {
            answer(&store, batch).await;
        }
    }
}

/// Adds the lookups already queued to `batch`, then yields to the runtime (letting the sockets
/// whose `auth` is already readable send theirs) and adds those, while each tick brings more.
async fn gather(
    rx: &mut mpsc::UnboundedReceiver<(String, Reply)>,
    batch: &mut Vec<(String, Reply)>,
) {
    for tick in 0..=GATHER_TICKS {
        let before = batch.len();
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        let quiet = tick > 0 && batch.len() == before;
        if quiet || batch.len() >= MAX_BATCH || tick == GATHER_TICKS {
            return;
        }
        tokio::task::yield_now().await;
    }
}

async fn answer(store: &Store, batch: Vec<(String, Reply)>) {
    let mut ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    match store.users_by_ids_or_old_ids(&ids).await {
        Ok(found) => {
            let by_id: HashMap<&str, &users::Model> =
                found.iter().map(|u| (u.id.as_str(), u)).collect();
            let by_old: HashMap<&str, &users::Model> = found
                .iter()
                .filter_map(|u| Some((u.extra_data.as_ref()?.old_user_id.as_deref()?, u)))
                .collect();
            for (id, reply) in batch {
                // A real id wins over another user's oldUserId, as in the single lookup.
                let user = by_id.get(id.as_str()).or_else(|| by_old.get(id.as_str()));
                let _ = reply.send(Ok(user.map(|u| (*u).clone())));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for (_, reply) in batch {
                let _ = reply.send(Err(msg.clone()));
            }
        }
    }
}

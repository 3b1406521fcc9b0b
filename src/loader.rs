//! Batched user lookups for authentication.
//!
//! Every `auth` must read the user as the database holds it at that moment, but a storm of
//! sockets (a server restart brings every client back at once) would otherwise cost one query and
//! one pool connection each, and queue behind each other. So lookups that arrive while earlier ones
//! are running are answered together by one `WHERE id IN (...)` query issued after they arrived:
//! each answer is still read after its request, never from a cache. This is the dataloader pattern;
//! no maintained crate provides it for SeaORM without a cache, so it is written here.

use crate::store::Store;
use entity::users;
use sea_orm::DbErr;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Ids looked up in one query at most.
const MAX_BATCH: usize = 500;
/// Batches in flight at once (each holds one pool connection).
const CONCURRENT: usize = 4;

type Reply = oneshot::Sender<Result<Option<users::Model>, String>>;

#[derive(Clone, Debug)]
pub struct UserLoader {
    tx: mpsc::UnboundedSender<(String, Reply)>,
}

impl UserLoader {
    pub fn spawn(store: Store) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx));
        Self { tx }
    }

    /// The user a token names, by `id` or `extraData.oldUserId`, read after this call.
    pub async fn load(&self, id: &str) -> Result<Option<users::Model>, DbErr> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((id.to_owned(), tx))
            .map_err(|_| DbErr::Custom("user loader stopped".into()))?;
        rx.await
            .map_err(|_| DbErr::Custom("user loader stopped".into()))?
            .map_err(DbErr::Custom)
    }
}

async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<(String, Reply)>) {
    let permits = Arc::new(Semaphore::new(CONCURRENT));
    while let Some(first) = rx.recv().await {
        // While every batch slot is busy, requests keep arriving and join the next batch.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            let _permit = permit;
            answer(&store, batch).await;
        });
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

//! Who is online: the authenticated sockets of this server, grouped by user.
//!
//! audiobookshelf derives `usersOnline` from its table of clients; this is that table, reduced to
//! what the events carry. It is only ever read to build `usersOnline` and the `user_*` payloads;
//! delivery goes through rooms, never through this map. With several nodes, each node's share is
//! copied to Redis as it changes (`cluster::presence`), which asks for the changes here.

use entity::users;
use serde::{Deserialize, Serialize};
use socketioxide::socket::Sid;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use tokio::sync::Notify;

/// A user as audiobookshelf shows them to admins (`User.toJSONForPublic`), times in epoch ms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicUser {
    pub id: String,
    pub username: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The user's open playback session; abs-socket has none to show.
    pub session: Option<()>,
    pub last_seen: Option<i64>,
    pub created_at: i64,
}

impl PublicUser {
    pub fn from_model(user: &users::Model) -> Self {
        Self {
            id: user.id.clone(),
            username: user.username.clone(),
            kind: user.kind.clone(),
            session: None,
            last_seen: user.last_seen.map(|d| d.millis()),
            created_at: user.created_at.millis(),
        }
    }
}

/// An entry of `usersOnline`: the public user and how many sockets they have open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OnlineUser {
    #[serde(flatten)]
    pub user: PublicUser,
    pub connections: usize,
}

#[derive(Default)]
struct Inner {
    by_socket: HashMap<Sid, String>,
    users: HashMap<String, OnlineUser>,
}

/// The users whose entry changed since the last [`Presence::changes`].
#[derive(Default)]
struct Changes {
    ids: Mutex<HashSet<String>>,
    notify: Notify,
}

#[derive(Default)]
pub struct Presence {
    inner: Mutex<Inner>,
    /// Only when something copies the changes elsewhere (several nodes).
    changes: Option<Changes>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Presence")
    }
}

impl Presence {
    /// A presence whose changes are collected for [`Presence::changes`].
    pub fn tracking_changes() -> Self {
        Self {
            changes: Some(Changes::default()),
            ..Self::default()
        }
    }

    fn changed(&self, user_id: &str) {
        if let Some(c) = &self.changes {
            c.ids.lock().unwrap().insert(user_id.to_owned());
            c.notify.notify_one();
        }
    }

    /// Waits for changes, then returns each changed user's entry as it is now (`None`: offline on
    /// this node). Never returns without a presence made by [`Presence::tracking_changes`].
    pub async fn changes(&self) -> Vec<(String, Option<OnlineUser>)> {
        let Some(c) = &self.changes else {
            return std::future::pending().await;
        };
        loop {
            let ids = std::mem::take(&mut *c.ids.lock().unwrap());
            if !ids.is_empty() {
                let inner = self.inner.lock().unwrap();
                return ids
                    .into_iter()
                    .map(|id| {
                        let entry = inner.users.get(&id).cloned();
                        (id, entry)
                    })
                    .collect();
            }
            c.notify.notified().await;
        }
    }

    /// Marks `sid` as authenticated as `user` (replacing any earlier user of that socket, which
    /// is returned when it was another user).
    pub fn join(&self, sid: Sid, user: PublicUser) -> Option<PublicUser> {
        self.changed(&user.id);
        let mut inner = self.inner.lock().unwrap();
        let previous = match inner.by_socket.insert(sid, user.id.clone()) {
            Some(prev) if prev == user.id => {
                // Re-authentication of the same user: same connection, fresher details.
                if let Some(entry) = inner.users.get_mut(&user.id) {
                    entry.user = user;
                }
                return None;
            }
            Some(prev) => self.release(&mut inner, &prev),
            None => None,
        };
        inner
            .users
            .entry(user.id.clone())
            .and_modify(|e| {
                e.connections += 1;
                e.user = user.clone();
            })
            .or_insert(OnlineUser {
                user,
                connections: 1,
            });
        previous
    }

    /// Forgets `sid`; returns its user as last known, when it was authenticated.
    pub fn leave(&self, sid: Sid) -> Option<PublicUser> {
        let mut inner = self.inner.lock().unwrap();
        let user_id = inner.by_socket.remove(&sid)?;
        self.release(&mut inner, &user_id)
    }

    fn release(&self, inner: &mut Inner, user_id: &str) -> Option<PublicUser> {
        self.changed(user_id);
        let entry = inner.users.get_mut(user_id)?;
        let user = entry.user.clone();
        entry.connections -= 1;
        if entry.connections == 0 {
            inner.users.remove(user_id);
        }
        Some(user)
    }

    /// Records a new `lastSeen` for an online user.
    pub fn set_last_seen(&self, user_id: &str, millis: i64) {
        if let Some(e) = self.inner.lock().unwrap().users.get_mut(user_id) {
            e.user.last_seen = Some(millis);
            self.changed(user_id);
        }
    }

    /// Records a new `type` for an online user (after a promotion or demotion).
    pub fn set_kind(&self, user_id: &str, kind: &str) {
        if let Some(e) = self.inner.lock().unwrap().users.get_mut(user_id) {
            e.user.kind = Some(kind.to_owned());
            self.changed(user_id);
        }
    }

    /// `usersOnline`: one entry per online user.
    pub fn users_online(&self) -> Vec<OnlineUser> {
        self.inner.lock().unwrap().users.values().cloned().collect()
    }

    pub fn socket_count(&self) -> usize {
        self.inner.lock().unwrap().by_socket.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> PublicUser {
        PublicUser {
            id: id.into(),
            username: Some(id.into()),
            kind: Some("user".into()),
            session: None,
            last_seen: None,
            created_at: 1,
        }
    }

    #[test]
    fn counts_connections_per_user_and_reports_switches() {
        let p = Presence::default();
        let (a, b) = (Sid::new(), Sid::new());
        assert_eq!(p.join(a, user("u1")), None);
        assert_eq!(p.join(b, user("u1")), None);
        assert_eq!(p.users_online()[0].connections, 2);
        assert_eq!(
            p.join(a, user("u1")),
            None,
            "same user again is not a switch"
        );
        assert_eq!(p.users_online()[0].connections, 2);
        assert_eq!(p.join(a, user("u2")).map(|u| u.id), Some("u1".into()));
        assert_eq!(p.users_online().len(), 2);
        assert_eq!(p.leave(b).map(|u| u.id), Some("u1".into()));
        assert_eq!(p.leave(b), None);
        assert_eq!(p.users_online().len(), 1);
        let json = serde_json::to_value(&p.users_online()[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":"u2","username":"u2","type":"user","session":null,"lastSeen":null,"createdAt":1,"connections":1})
        );
    }
}

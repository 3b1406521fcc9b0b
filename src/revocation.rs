//! Live revocation: sockets lose what their credential no longer grants (`CONTRACT.md` section 6).
//!
//! audiobookshelf checks a token once; afterwards a deactivated user or a revoked API key keeps
//! receiving events. audiobookshelf (or a person) changes the database directly and tells nobody,
//! so this sweep looks for itself: every interval it reads the state of all users and all API keys
//! (two queries, however many sockets are open; no trust in `updatedAt`, so deleted rows and edits
//! that leave it alone count too) and judges each authenticated socket against it. Expiry instants
//! are judged at the same sweeps, so a key that expires is cut off within one interval.

use crate::auth::{Credential, now_secs, token};
use crate::registry::Entry;
use crate::rooms;
use crate::socket::handlers;
use crate::socket::session::Identity;
use crate::state::App;
use crate::store::{ApiKeyState, UserState};
use entity::AbsDate;
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How the sweep is run.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub interval: Duration,
    /// Cut off user tokens at their `exp` (by default, as in audiobookshelf, a socket stays
    /// authenticated past it).
    pub strict_token_expiry: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            strict_token_expiry: false,
        }
    }
}

/// What the sweep has done, for `/healthz` (and for tests that count its queries).
#[derive(Debug, Default)]
pub struct Stats {
    sweeps: AtomicU64,
    queries: AtomicU64,
    revoked: AtomicU64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsView {
    pub interval_ms: u64,
    pub sweeps: u64,
    pub queries: u64,
    pub revoked: u64,
}

impl Stats {
    pub fn view(&self, policy: &Policy) -> StatsView {
        StatsView {
            interval_ms: policy.interval.as_millis() as u64,
            sweeps: self.sweeps.load(Ordering::Relaxed),
            queries: self.queries.load(Ordering::Relaxed),
            revoked: self.revoked.load(Ordering::Relaxed),
        }
    }
}

/// What to do with one socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// `auth_failed` with this message, and out of every room.
    Revoke(&'static str),
    /// Still authenticated, but admin rights changed to this.
    Admin(bool),
    /// Revoke as expired, and deactivate the key's row (as audiobookshelf does on use).
    KeyExpired {
        deactivate: bool,
    },
}

/// Judges one socket's identity against the database as the sweep read it.
pub fn judge(
    identity: &Identity,
    users: &HashMap<String, UserState>,
    keys: &HashMap<String, ApiKeyState>,
    now: f64,
    strict: bool,
) -> Verdict {
    match &identity.credential {
        Credential::UserToken { exp } => {
            if strict && token::expired(*exp, now) {
                return Verdict::Revoke("Invalid token");
            }
        }
        Credential::ApiKey { key_id, exp } => {
            let key = keys.get(key_id);
            let row_expired = key
                .and_then(|k| k.expires_at)
                .is_some_and(|at| at.reached(now));
            if token::expired(*exp, now) || row_expired {
                return Verdict::KeyExpired {
                    deactivate: key.is_some_and(|k| k.active),
                };
            }
            match key {
                Some(k) if k.active && k.user_id.as_deref() == Some(identity.user_id.as_str()) => {}
                _ => return Verdict::Revoke("Invalid API key"),
            }
        }
    }
    let Some(user) = users.get(&identity.user_id) else {
        return match identity.credential {
            Credential::UserToken { .. } => Verdict::Revoke("Invalid token"),
            Credential::ApiKey { .. } => Verdict::Revoke("Invalid API key"),
        };
    };
    if !user.active {
        return Verdict::Revoke("Invalid user");
    }
    if user.is_admin() != identity.is_admin {
        return Verdict::Admin(user.is_admin());
    }
    Verdict::Keep
}

/// Runs the sweep until the process ends.
pub async fn run(app: App, policy: Policy) {
    let mut ticker = tokio::time::interval(policy.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        sweep(&app, &policy).await;
    }
}

async fn sweep(app: &App, policy: &Policy) {
    if app.registry.is_empty() {
        return;
    }
    let stats = &app.revocation_stats;
    stats.sweeps.fetch_add(1, Ordering::Relaxed);
    stats.queries.fetch_add(2, Ordering::Relaxed);
    let (users, keys) = match tokio::try_join!(app.store.user_states(), app.store.api_key_states())
    {
        Ok(states) => states,
        Err(e) => {
            // Never revoke on a read error: a locked database is no reason to cut anyone off.
            tracing::warn!(error = %e, "revocation sweep could not read the database; retrying next interval");
            return;
        }
    };
    let now = now_secs();
    let changed = app.registry.select(|identity| {
        let verdict = judge(identity, &users, &keys, now, policy.strict_token_expiry);
        (verdict != Verdict::Keep).then(|| (identity.clone(), verdict))
    });
    for (entry, (identity, verdict)) in changed {
        let app = app.clone();
        let session = entry.session.clone();
        session.run(apply(app, entry, identity, verdict));
    }
}

/// Carries out a verdict on the socket's own queue, so that it cannot interleave with an `auth`
/// the client sent meanwhile; an identity that changed since the sweep is left alone.
async fn apply(app: App, entry: Entry, judged: Identity, verdict: Verdict) {
    if entry.session.identity().as_ref() != Some(&judged) {
        return;
    }
    let s = &entry.socket;
    match verdict {
        Verdict::Keep => {}
        Verdict::Admin(is_admin) => {
            entry.session.set_identity(Some(Identity {
                is_admin,
                ..judged.clone()
            }));
            if is_admin {
                s.join(vec![rooms::ADMINS.to_owned()]);
            } else {
                s.leave(rooms::ADMINS);
                handlers::stop_listening(&app, s, &entry.session);
            }
            app.presence
                .set_kind(&judged.user_id, if is_admin { "admin" } else { "user" });
            app.bridge.renew(&judged.user_id);
            tracing::info!(sid = %s.id(), user = ?judged.username, is_admin, "admin rights changed");
        }
        Verdict::Revoke(message) => revoke(&app, &entry, &judged, message).await,
        Verdict::KeyExpired { deactivate } => {
            if let (true, Credential::ApiKey { key_id, .. }) = (deactivate, &judged.credential) {
                app.writer.deactivate_key(key_id, AbsDate::now());
            }
            revoke(&app, &entry, &judged, "API key expired").await;
        }
    }
}

/// Ends a socket's authentication: `auth_failed` first, then `user_offline` to the admins.
pub async fn revoke(app: &App, entry: &Entry, judged: &Identity, message: &'static str) {
    let s = &entry.socket;
    let user = handlers::end_authentication(app, s, &entry.session, crate::bridge::Close::Now);
    s.leave_all();
    app.revocation_stats.revoked.fetch_add(1, Ordering::Relaxed);
    tracing::info!(sid = %s.id(), user = ?judged.username, reason = message, "authentication revoked");
    s.emit("auth_failed", &json!({ "message": message }));
    if let Some(user) = user {
        handlers::to_admins(app, "user_offline", &user).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(credential: Credential, is_admin: bool) -> Identity {
        Identity {
            user_id: "u1".into(),
            username: Some("tom".into()),
            is_admin,
            credential,
        }
    }

    fn users(active: bool, kind: &str) -> HashMap<String, UserState> {
        HashMap::from([(
            "u1".to_owned(),
            UserState {
                active,
                kind: Some(kind.into()),
            },
        )])
    }

    fn key(
        active: bool,
        expires_at: Option<f64>,
        owner: Option<&str>,
    ) -> HashMap<String, ApiKeyState> {
        HashMap::from([(
            "k1".to_owned(),
            ApiKeyState {
                active,
                expires_at: expires_at.map(|s| AbsDate::from_millis((s * 1000.0) as i64).unwrap()),
                user_id: owner.map(str::to_owned),
            },
        )])
    }

    const NOW: f64 = 1_800_000_000.0;
    const USER: Credential = Credential::UserToken { exp: None };

    fn api(exp: Option<f64>) -> Credential {
        Credential::ApiKey {
            key_id: "k1".into(),
            exp,
        }
    }

    #[test]
    fn user_tokens() {
        let none = HashMap::new();
        let id = identity(USER, false);
        assert_eq!(
            judge(&id, &users(true, "user"), &none, NOW, false),
            Verdict::Keep
        );
        assert_eq!(
            judge(&id, &users(false, "user"), &none, NOW, false),
            Verdict::Revoke("Invalid user")
        );
        assert_eq!(
            judge(&id, &HashMap::new(), &none, NOW, false),
            Verdict::Revoke("Invalid token")
        );
        assert_eq!(
            judge(&id, &users(true, "admin"), &none, NOW, false),
            Verdict::Admin(true)
        );
        let admin = identity(USER, true);
        assert_eq!(
            judge(&admin, &users(true, "user"), &none, NOW, false),
            Verdict::Admin(false)
        );
        assert_eq!(
            judge(&admin, &users(true, "root"), &none, NOW, false),
            Verdict::Keep
        );
    }

    #[test]
    fn strict_expiry_only_when_asked() {
        let none = HashMap::new();
        let id = identity(
            Credential::UserToken {
                exp: Some(NOW - 1.0),
            },
            false,
        );
        assert_eq!(
            judge(&id, &users(true, "user"), &none, NOW, false),
            Verdict::Keep
        );
        assert_eq!(
            judge(&id, &users(true, "user"), &none, NOW, true),
            Verdict::Revoke("Invalid token")
        );
        let legacy = identity(USER, false);
        assert_eq!(
            judge(&legacy, &users(true, "user"), &none, NOW, true),
            Verdict::Keep
        );
    }

    #[test]
    fn api_keys() {
        let u = users(true, "user");
        let id = identity(api(None), false);
        assert_eq!(
            judge(&id, &u, &key(true, None, Some("u1")), NOW, false),
            Verdict::Keep
        );
        assert_eq!(
            judge(&id, &u, &key(false, None, Some("u1")), NOW, false),
            Verdict::Revoke("Invalid API key")
        );
        assert_eq!(
            judge(&id, &u, &HashMap::new(), NOW, false),
            Verdict::Revoke("Invalid API key")
        );
        assert_eq!(
            judge(&id, &u, &key(true, None, None), NOW, false),
            Verdict::Revoke("Invalid API key")
        );
        assert_eq!(
            judge(
                &id,
                &users(false, "user"),
                &key(true, None, Some("u1")),
                NOW,
                false
            ),
            Verdict::Revoke("Invalid user")
        );
        assert_eq!(
            judge(&id, &u, &key(true, Some(NOW - 0.5), Some("u1")), NOW, false),
            Verdict::KeyExpired { deactivate: true }
        );
        assert_eq!(
            judge(
                &id,
                &u,
                &key(false, Some(NOW - 0.5), Some("u1")),
                NOW,
                false
            ),
            Verdict::KeyExpired { deactivate: false }
        );
        let expiring = identity(api(Some(NOW)), false);
        assert_eq!(
            judge(&expiring, &u, &key(true, None, Some("u1")), NOW, false),
            Verdict::KeyExpired { deactivate: true },
            "an API key's exp always counts, strict or not"
        );
    }
}

//! One socket's state, and the queue that runs its events in the order they arrived.
//!
//! socketioxide spawns a task per incoming event, so two events from one socket may run in either
//! order or at once. A client that sends `auth` and then `message_all_users`, or re-sends `auth`
//! after a token refresh, must see them handled in order. So each handler only enqueues its work
//! (synchronously, in the order socketioxide reads the packets) and one task per busy socket runs
//! the queue. An idle socket has no task. No crate offers a lazily spawned per-key serial executor.

use crate::auth::Credential;
use futures_util::FutureExt;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Events a socket may have waiting; past this it is flooding, and the excess is dropped.
pub const MAX_PENDING: usize = 64;

/// `auth` attempts allowed per socket per [`ATTEMPT_WINDOW`]; later ones are refused unread.
pub const MAX_ATTEMPTS: usize = 10;
pub const ATTEMPT_WINDOW: Duration = Duration::from_secs(10);

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Who a socket is authenticated as.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user_id: String,
    pub username: Option<String>,
    pub is_admin: bool,
    pub credential: Credential,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    running: bool,
}

#[derive(Default)]
pub struct Session {
    identity: Mutex<Option<Identity>>,
    queue: Mutex<Queue>,
    attempts: Mutex<VecDeque<Instant>>,
    connected: Mutex<Option<oneshot::Sender<()>>>,
    /// The level of `log` events this socket listens to, if it does.
    pub log_level: Mutex<Option<u8>>,
    /// The remote address this socket counts against, when connections per address are limited.
    pub counted_ip: Mutex<Option<std::net::IpAddr>>,
}

impl Session {
    /// A session whose queue holds back every job until [`Session::connected`] is called, so that
    /// nothing is sent to the client before socketioxide has answered its CONNECT.
    pub fn new_held() -> (Arc<Self>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let session = Arc::new(Self::default());
        *session.connected.lock().unwrap() = Some(tx);
        (session, rx)
    }

    /// Releases the queue held by [`Session::new_held`].
    pub fn connected(&self) {
        if let Some(tx) = self.connected.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }

    /// Counts an `auth` attempt that arrived at `at`; false past [`MAX_ATTEMPTS`] in the window.
    pub fn allow_attempt(&self, at: Instant) -> bool {
        let mut attempts = self.attempts.lock().unwrap();
        while attempts
            .front()
            .is_some_and(|t| at.saturating_duration_since(*t) >= ATTEMPT_WINDOW)
        {
            attempts.pop_front();
        }
        if attempts.len() >= MAX_ATTEMPTS {
            return false;
        }
        attempts.push_back(at);
        true
    }

    pub fn identity(&self) -> Option<Identity> {
        self.with_identity(|i| i.cloned())
    }

    /// `f` applied to the identity in place, without cloning it.
    pub fn with_identity<R>(&self, f: impl FnOnce(Option<&Identity>) -> R) -> R {
        f(self.identity.lock().unwrap().as_ref())
    }

    pub fn is_admin(&self) -> bool {
        self.identity
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|i| i.is_admin)
    }

    pub fn is_authenticated(&self) -> bool {
        self.identity.lock().unwrap().is_some()
    }

    /// Replaces the identity, returning the previous one.
    pub fn set_identity(&self, identity: Option<Identity>) -> Option<Identity> {
        std::mem::replace(&mut *self.identity.lock().unwrap(), identity)
    }

    /// Queues `job` behind this socket's earlier events. Returns false when the queue is full.
    pub fn run(self: &Arc<Self>, job: impl Future<Output = ()> + Send + 'static) -> bool {
        let mut q = self.queue.lock().unwrap();
        if q.jobs.len() >= MAX_PENDING {
            return false;
        }
        q.jobs.push_back(Box::pin(job));
        if !q.running {
            q.running = true;
            tokio::spawn(self.clone().drain());
        }
        true
    }

    async fn drain(self: Arc<Self>) {
        loop {
            let job = {
                let mut q = self.queue.lock().unwrap();
                match q.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        q.running = false;
                        return;
                    }
                }
            };
            // A bug in one handler must not stop this socket's later events.
            if AssertUnwindSafe(job).catch_unwind().await.is_err() {
                tracing::error!("a socket event handler panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_run_one_at_a_time_in_order() {
        let s = Arc::new(Session::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        for i in 0..20u64 {
            let log = log.clone();
            assert!(s.run(async move {
                tokio::time::sleep(Duration::from_millis(20 - i)).await;
                log.lock().unwrap().push(i);
            }));
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(*log.lock().unwrap(), (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn ten_attempts_per_ten_seconds() {
        let s = Session::default();
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(
                s.allow_attempt(t0 + Duration::from_millis(i)),
                "attempt {i}"
            );
        }
        assert!(!s.allow_attempt(t0 + Duration::from_millis(20)));
        assert!(!s.allow_attempt(t0 + Duration::from_millis(9_999)));
        // The first attempt leaves the window at 10 s, and one more is allowed.
        assert!(s.allow_attempt(t0 + Duration::from_secs(10)));
        assert!(!s.allow_attempt(t0 + Duration::from_secs(10)));
    }

    #[tokio::test]
    async fn a_flood_is_cut_and_a_panic_does_not_stop_the_queue() {
        let s = Arc::new(Session::default());
        s.run(async { panic!("boom") });
        let accepted = (0..MAX_PENDING + 10)
            .filter(|_| s.run(async { tokio::task::yield_now().await }))
            .count();
        assert!(accepted < MAX_PENDING + 10);
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(s.run(async move { tx.send(()).unwrap() }));
        rx.await.unwrap();
    }
}

//! Logging: stderr lines filtered by `RUST_LOG`, and `log` events for admins who listen.
//!
//! Two rules hold whatever `RUST_LOG` asks for. Dependencies never log below INFO (the database
//! drivers never below WARN): their DEBUG and TRACE output includes packets, query values and
//! request lines, where tokens and the JWT secret would leak; abs-socket's own log lines never
//! carry a token. And only abs-socket's own lines reach the `log` listeners, never one produced
//! while delivering a `log` event, so a listener cannot make the server log about itself forever.

use serde::Serialize;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Targets that are abs-socket's own.
const OWN: [&str; 3] = ["abs_socket", "entity", "migration"];

/// A `log` event, in audiobookshelf's shape.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    pub timestamp: String,
    pub source: String,
    pub message: String,
    pub level_name: &'static str,
    pub level: u8,
}

/// audiobookshelf's levels: 0 TRACE, 1 DEBUG, 2 INFO, 3 WARN, 4 ERROR, 5 FATAL, 6 NOTE.
pub fn abs_level(level: &Level) -> u8 {
    match *level {
        Level::TRACE => 0,
        Level::DEBUG => 1,
        Level::INFO => 2,
        Level::WARN => 3,
        Level::ERROR => 4,
    }
}

pub const MAX_LEVEL: u8 = 6;

/// Where captured lines go, and the lowest level anyone listens at (`u8::MAX`: nobody).
pub struct Tap {
    tx: mpsc::Sender<LogLine>,
    lowest: AtomicU8,
}

static TAP: OnceLock<Tap> = OnceLock::new();

tokio::task_local! {
    /// Set while a `log` event is being delivered; lines logged then are not captured.
    static FORWARDING: ();
}

/// Runs `f` as part of delivering `log` events (what it logs is not captured).
pub async fn forwarding<F: Future>(f: F) -> F::Output {
    FORWARDING.scope((), f).await
}

/// Tells the tap the lowest level any listener wants (`None`: no listener).
fn set_lowest_listener(level: Option<u8>) {
    if let Some(tap) = TAP.get() {
        tap.lowest
            .store(level.unwrap_or(u8::MAX), Ordering::Relaxed);
    }
}

/// How many sockets listen at each level; keeps the tap's lowest level up to date.
#[derive(Debug, Default)]
pub struct Listeners {
    counts: std::sync::Mutex<[usize; MAX_LEVEL as usize + 1]>,
}

impl Listeners {
    pub fn add(&self, level: u8) {
        let mut counts = self.counts.lock().unwrap();
        counts[level as usize] += 1;
        set_lowest_listener(counts.iter().position(|&n| n > 0).map(|l| l as u8));
    }

    pub fn remove(&self, level: u8) {
        let mut counts = self.counts.lock().unwrap();
        counts[level as usize] = counts[level as usize].saturating_sub(1);
        set_lowest_listener(counts.iter().position(|&n| n > 0).map(|l| l as u8));
    }
}

/// The room of the sockets listening at `level`.
pub fn room(level: u8) -> String {
    format!("log:{level}")
}

/// Runs for every log event the filters look at, so it must not allocate.
fn is_own(target: &str) -> bool {
    OWN.iter().any(|own| {
        target
            .strip_prefix(own)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

struct ListenerLayer;

impl<S: Subscriber> Layer<S> for ListenerLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some(tap) = TAP.get() else { return };
        let meta = event.metadata();
        let level = abs_level(meta.level());
        if level < tap.lowest.load(Ordering::Relaxed) || !is_own(meta.target()) {
            return;
        }
        if FORWARDING.try_with(|_| ()).is_ok() {
            return;
        }
        let mut visitor = MessageVisitor::default();
        event.record(&mut visitor);
        let line = LogLine {
            timestamp: chrono::Local::now()
                .format("%Y-%m-%d %H:%M:%S%.3f")
                .to_string(),
            source: match (meta.file(), meta.line()) {
                (Some(f), Some(l)) => format!("{f}:{l}"),
                _ => meta.target().to_owned(),
            },
            message: visitor.line(),
            level_name: meta.level().as_str(),
            level,
        };
        // Never block logging: a slow listener loses lines, not the server its speed.
        let _ = tap.tx.try_send(line);
    }
}

/// The event's message, then its fields as `name=value`.
#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl MessageVisitor {
    fn line(self) -> String {
        self.message + &self.fields
    }
}

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

/// Whether a dependency's line may be shown at all, whatever `RUST_LOG` says.
fn dependency_cap(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    if is_own(target) {
        return true;
    }
    let db = ["sea_orm", "sea_query"]
        .iter()
        .any(|t| target.starts_with(t));
    // sqlx warns once per slow pool acquire: under a storm that is thousands of lines, and the
    // server reports the condition itself (`Server busy`).
    let cap = if target.starts_with("sqlx") {
        Level::ERROR
    } else if db {
        Level::WARN
    } else {
        Level::INFO
    };
    *meta.level() <= cap
}

/// Installs the subscriber: stderr, `RUST_LOG` (default `info`), and the listener tap. Returns
/// the receiving end of the tap, to be drained by the server (see [`crate::socket`]).
pub fn init() -> mpsc::Receiver<LogLine> {
    let (tx, rx) = mpsc::channel(1024);
    let _ = TAP.set(Tap {
        tx,
        lowest: AtomicU8::new(u8::MAX),
    });
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let log_max = log_crate_max(env.max_level_hint());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(env);
    let listeners = ListenerLayer.with_filter(filter_fn(|m| is_own(m.target())));
    tracing_subscriber::registry()
        .with(fmt)
        .with(listeners)
        .with(filter_fn(dependency_cap))
        .init();
    log::set_max_level(log_max);
    rx
}

/// How much the `log` crate builds and hands to tracing: only dependencies log through it, and
/// none of their lines is shown below INFO ([`dependency_cap`]). Without this cap every
/// `log::trace!` in tungstenite's frame code is forwarded to tracing only to be dropped, which
/// cost about 2 % of the CPU of an `auth` storm.
fn log_crate_max(env: Option<tracing::level_filters::LevelFilter>) -> log::LevelFilter {
    use tracing::level_filters::LevelFilter;
    use tracing_log::AsLog;
    env.unwrap_or(LevelFilter::TRACE)
        .min(LevelFilter::INFO)
        .as_log()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_targets() {
        assert!(is_own("abs_socket"));
        assert!(is_own("abs_socket::socket::handlers"));
        assert!(is_own("migration"));
        assert!(!is_own("abs_socketx"));
        assert!(!is_own("socketioxide::client"));
        assert!(!is_own("sea_orm::driver"));
    }

    #[test]
    fn log_crate_never_below_info() {
        use tracing::level_filters::LevelFilter;
        assert_eq!(
            log_crate_max(Some(LevelFilter::TRACE)),
            log::LevelFilter::Info
        );
        assert_eq!(log_crate_max(None), log::LevelFilter::Info);
        assert_eq!(
            log_crate_max(Some(LevelFilter::WARN)),
            log::LevelFilter::Warn
        );
        assert_eq!(log_crate_max(Some(LevelFilter::OFF)), log::LevelFilter::Off);
    }

    #[test]
    fn levels() {
        assert_eq!(abs_level(&Level::TRACE), 0);
        assert_eq!(abs_level(&Level::INFO), 2);
        assert_eq!(abs_level(&Level::ERROR), 4);
    }
}

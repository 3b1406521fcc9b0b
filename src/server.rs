//! `abs-socket serve`: opens the database, builds the Socket.IO server, and runs until a signal.

use crate::api::MaxEmitBytes;
use crate::auth::{Authenticator, Secret, secret};
use crate::bridge::Bridge;
use crate::cli::{Global, Serve};
use crate::cluster::Cluster;
use crate::db::{self, Location};
use crate::limits::Limits;
use crate::logging::{self, LogLine};
use crate::state::{App, Links};
use crate::writer::Writer;
use crate::{cluster, http, revocation, socket};
use anyhow::Context;
use migration::Schema;
use socketioxide::adapter::Adapter;
use socketioxide::{SocketIo, SocketIoBuilder};
use socketioxide_redis::FredAdapter;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

/// audiobookshelf's socket.io settings (`CONTRACT.md` section 1).
const PING_INTERVAL: Duration = Duration::from_secs(25);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
pub const MAX_MESSAGE: usize = 1_000_000;
/// Initial websocket read buffer per socket (socketioxide's default is 4 KiB); it grows for the
/// rare large message. Audiobookshelf clients send small events.
const WS_READ_BUFFER: usize = 1024;
/// Packets queued per socket before further ones are dropped for it (socketioxide's default is
/// 128). An admin sees one `user_offline` per socket when many clients leave at once; the queue's
/// memory is only taken while packets wait in it.
const OUTGOING_QUEUE: usize = 1024;

/// Opens the database named by the global flags and loads the secret.
pub async fn open(global: &Global) -> anyhow::Result<(db::Opened, Secret)> {
    let location = Location::resolve(global.database.as_deref(), global.config_path.as_deref());
    let opts = db::Options {
        busy_timeout: busy_timeout(global)?,
        ..db::Options::default()
    };
    let opened = db::open(&location, &opts).await?;
    match &opened.schema {
        Schema::Created => {
            tracing::info!(database = %location.display(), "created the audiobookshelf tables")
        }
        Schema::Existing {
            abs_version,
            missing,
        } => {
            tracing::info!(database = %location.display(), abs_version = abs_version.as_deref().unwrap_or("none"), "opened existing database");
            if opened.schema.version_known() == Some(false) {
                tracing::warn!(
                    abs_version = abs_version.as_deref().unwrap_or(""),
                    "this audiobookshelf version is not one abs-socket was checked against (2.26 to 2.36)"
                );
            }
            if !missing.is_empty() {
                tracing::warn!(
                    ?missing,
                    "the database lacks tables abs-socket uses; features that need them are refused"
                );
            }
        }
    }
    // A database abs-socket created (no audiobookshelf version in it) is its own to complete.
    let ours = matches!(
        opened.schema,
        Schema::Created
            | Schema::Existing {
                abs_version: None,
                ..
            }
    );
    let secret = secret::load(&opened.store, global.jwt_secret_key.as_deref(), ours).await?;
    Ok((opened, Secret::new(&secret)?))
}

/// How long to wait for a lock audiobookshelf holds (`--db-busy-timeout`).
fn busy_timeout(global: &Global) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(global.db_busy_timeout)
        .context("--db-busy-timeout must be a non-negative number of seconds")
}

pub async fn run(
    global: Global,
    serve: Serve,
    log_lines: mpsc::Receiver<LogLine>,
) -> anyhow::Result<()> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(open_files = n, "raised the open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let (opened, secret) = open(&global).await?;
    let store = opened.store;
    let (writer, writer_task) = Writer::spawn(store.clone());
    let auth = Authenticator::new(
        secret,
        store.clone(),
        writer.clone(),
        busy_timeout(&global)?,
    );
    let bridge = match &serve.upstream {
        None => Bridge::default(),
        Some(url) => {
            let grace = Duration::try_from_secs_f64(serve.bridge_grace)
                .context("--bridge-grace must be a non-negative number of seconds")?;
            let bridge = Bridge::new(url, grace)?;
            tracing::info!(upstream = ?bridge, grace_secs = serve.bridge_grace, "bridging an audiobookshelf server");
            bridge
        }
    };
    let addr = format!("{}:{}", serve.host, serve.port);
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "listening");

    let (cluster, adapter) = match &serve.redis_url {
        None => (Cluster::default(), None),
        Some(url) => match join_cluster(&listener, url).await? {
            Some((cluster, ctr)) => (cluster, Some(ctr)),
            None => return Ok(()), // stopped by a signal while waiting for Redis
        },
    };
    let app = App::new(
        auth,
        store.clone(),
        writer.clone(),
        MaxEmitBytes(serve.max_emit_bytes),
        revocation::Policy {
            interval: Duration::from_millis(serve.revocation_interval_ms.max(50)),
            strict_token_expiry: serve.strict_token_expiry,
        },
        Limits {
            max_connections_per_ip: serve.max_connections_per_ip,
            trust_proxy: serve.trust_proxy,
            auth_timeout: serve
                .auth_timeout
                .map(Duration::try_from_secs_f64)
                .transpose()
                .context("--auth-timeout must be a non-negative number of seconds")?,
        },
        Links {
            cluster: cluster.clone(),
            bridge,
        },
    );

    let builder = SocketIo::builder()
        .req_path(http::SOCKET_PATH)
        .ping_interval(PING_INTERVAL)
        .ping_timeout(PING_TIMEOUT)
        .max_payload(MAX_MESSAGE as u64)
        .ws_max_message_size(MAX_MESSAGE)
        .ws_max_frame_size(MAX_MESSAGE)
        .ws_read_buffer_size(WS_READ_BUFFER)
        .max_buffer_size(OUTGOING_QUEUE);
    let base_path = serve.base_path();
    let (router, io): (_, Arc<dyn Closing>) = match adapter {
        None => {
            let (layer, io) = build(builder, &app);
            socket::register(&io);
            (http::router(app.clone(), layer, base_path), Arc::new(io))
        }
        Some(ctr) => {
            let (layer, io) = build(builder.with_adapter::<FredAdapter<_>>(ctr), &app);
            socket::register(&io)
                .await
                .map_err(|e| anyhow::anyhow!("cannot subscribe to Redis channels: {e}"))?;
            (http::router(app.clone(), layer, base_path), Arc::new(io))
        }
    };
    if let Some(link) = cluster.link() {
        tokio::spawn(cluster::presence::run(link.clone(), app.clone()));
    }
    tokio::spawn(revocation::run(app.clone(), app.revocation));
    tokio::spawn(forward_log_lines(app.clone(), log_lines));

    if store.user_count().await? == 0 {
        tracing::warn!(
            "no users yet. Create one and get a token:\n  abs-socket user add admin --type root\n  abs-socket user token admin"
        );
    }

    accept_until(&listener, router, shutdown_signal(), Duration::from_secs(5)).await;
    drop(listener);
    tracing::info!("shutting down: closing sockets and finishing writes");
    // Tells every client the server is closing (a Socket.IO disconnect).
    io.close().await;
    cluster.close().await;
    writer.close();
    if tokio::time::timeout(Duration::from_secs(30), writer_task)
        .await
        .is_err()
    {
        tracing::error!("pending database writes could not be finished within 30 s");
    }
    tracing::info!("stopped");
    Ok(())
}

/// hyper's HTTP/1 read buffer, kept for the life of an upgraded websocket (hyper's default lets
/// it grow to 16 KiB and more per connection; 8 KiB is hyper's minimum and far above any request
/// head an audiobookshelf client sends).
const HTTP_READ_BUFFER: usize = 8192;

/// Builds the Socket.IO layer over adapter `A` and hands its handle to the fan-out.
fn build<A: Adapter>(
    builder: SocketIoBuilder<A>,
    app: &App,
) -> (socketioxide::layer::SocketIoLayer<A>, SocketIo<A>) {
    let (layer, io) = builder.with_state(app.clone()).build_layer();
    app.set_io(io.clone());
    (layer, io)
}

/// The Socket.IO server's shutdown, whatever its adapter.
trait Closing: Send + Sync {
    fn close(&self) -> futures_util::future::BoxFuture<'_, ()>;
}

impl<A: Adapter> Closing for SocketIo<A> {
    fn close(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(SocketIo::close(self))
    }
}

/// Connects to Redis; until it answers, every HTTP request (sockets included) gets `503` with
/// `{"status": "starting", "redis": "connecting"}`, so that a load balancer and an operator both
/// see why. `None` when a signal came first.
async fn join_cluster(
    listener: &TcpListener,
    url: &str,
) -> anyhow::Result<
    Option<(
        Cluster,
        socketioxide_redis::RedisAdapterCtr<socketioxide_redis::drivers::fred::FredDriver>,
    )>,
> {
    use axum::http::StatusCode;
    let starting = axum::Router::new().fallback(|| async {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "starting", "redis": "connecting" })),
        )
    });
    let done = Notify::new();
    let connect = async {
        let joined = tokio::select! {
            joined = Cluster::connect(url) => Some(joined),
            _ = shutdown_signal() => None,
        };
        done.notify_one();
        joined
    };
    let (joined, ()) = tokio::join!(
        connect,
        accept_until(listener, starting, done.notified(), Duration::from_secs(1))
    );
    match joined {
        None => Ok(None),
        Some(joined) => Ok(Some(joined.context("cannot use Redis")?)),
    }
}

/// Accepts connections until `stop`, then stops accepting and gives open requests `grace`.
///
/// Written out instead of `axum::serve` for one reason: it does not expose hyper's builder, and
/// hyper's read buffer size is the largest single item of an idle socket's memory (BENCHMARKS.md).
async fn accept_until(
    listener: &TcpListener,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt;

    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(HTTP_READ_BUFFER);
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors, typically: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let service = router.clone().map_request(
            move |req: axum::extract::Request<hyper::body::Incoming>| {
                let mut req = detach_head(req);
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(remote));
                req
            },
        );
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    // Plain HTTP requests in flight get a moment; upgraded websockets are closed by the caller.
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}

/// Copies the request head out of hyper's read buffer.
///
/// hyper parses a request's URI and header values as slices of its connection's read buffer (one
/// 8 KiB allocation), and engineioxide keeps the head of a websocket's request for the socket's
/// whole life (`req_parts`). Either slice would keep that buffer alive next to the upgraded
/// socket, so the URI and headers are rebuilt from fresh allocations. The extensions a socket
/// keeps are trimmed after routing (`http::socket_head`), where axum has added its own.
fn detach_head<B>(req: hyper::Request<B>) -> hyper::Request<B> {
    use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
    let (mut parts, body) = req.into_parts();
    if let Ok(uri) = Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(name, value);
        }
    }
    parts.headers = headers;
    hyper::Request::from_parts(parts, body)
}

/// Delivers captured log lines to the admins listening for them (`set_log_listener`).
async fn forward_log_lines(app: App, mut lines: mpsc::Receiver<LogLine>) {
    while let Some(line) = lines.recv().await {
        let target = crate::fanout::Target::LogListeners(line.level);
        logging::forwarding(async {
            let _ = app.fanout().emit(&target, "log", Some(&line)).await;
        })
        .await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

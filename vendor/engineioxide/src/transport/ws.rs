//! The ws transport module is responsible for handling websocket connections
//! The only public function is [`new_req`] which is used to upgrade a http request to a websocket connection
//!
//! Other functions are used internally to serve the websocket connection and to handle upgrade
//! from polling to ws
//!
//! Vendored change (abs-socket, `vendor/README.md`): each websocket connection is served by
//! **one** task. The published crate runs three per socket: the connection task (reading), a
//! writer task (`forward_to_socket`) on the other half of the split stream, and a heartbeat
//! task. Here the connection task reads, writes and runs the heartbeat in one `select!`, on
//! the unsplit stream; the setup (open handshake, or upgrade from polling) runs boxed, so that
//! its larger futures do not size the task for the connection's whole life. A session upgraded
//! from polling keeps the heartbeat task that polling started. An idle socket costs about
//! 3.5 KB less this way (two task cells and the split stream's shared lock).

use std::{
    future::{Future, poll_fn},
    ops::ControlFlow,
    pin::{Pin, pin},
    sync::Arc,
    task::Poll,
};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use smallvec::smallvec;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::{Instant, Sleep},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
};
use tokio_util::future::FutureExt as _;

use engineioxide_core::{Packet, ProtocolVersion, Sid, Str, TransportType};

use crate::{
    DisconnectReason, Socket, body::ResponseBody, config::EngineIoConfig, engine::EngineIo,
    errors::Error, handler::EngineIoHandler, socket::InternalRx, transport::make_open_packet,
};

/// Create a response for websocket upgrade
fn ws_response<B>(ws_key: &HeaderValue) -> Response<ResponseBody<B>> {
    let derived = derive_accept_key(ws_key.as_bytes());
    let sec = derived.parse::<HeaderValue>().unwrap();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )
        .header(http::header::SEC_WEBSOCKET_ACCEPT, sec)
        .body(ResponseBody::empty_response())
        .unwrap() // we are only using constants
}

/// Upgrade a websocket request to create a websocket connection.
///
/// If a sid is provided in the query it means that is is upgraded from an existing HTTP polling request.
/// In this case the http polling request is closed and the SID is kept for the websocket
pub fn new_req<R: Send + 'static, B, H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    mut req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error> {
    let ws_key = req
        .headers()
        .get("Sec-WebSocket-Key")
        .ok_or(Error::InvalidWebSocketKey)?
        .clone();

    // The upgrade handle is taken out of the request, so that the request head can go to the
    // session as it is, without a copy kept beside it for the upgrade.
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _body) = req.into_parts();

    // Boxed: the setup's futures (the HTTP upgrade, the request head, the open handshake or an
    // upgrade from polling under a timeout) are larger than the connection's steady state, and
    // a task keeps the size of its largest state for its whole life. Boxed, they are freed
    // when the setup ends.
    let setup = Box::pin({
        let engine = engine.clone();
        async move {
            match on_upgrade.await {
                Ok(conn) => {
                    let conn = hyper_util::rt::TokioIo::new(conn);
                    setup(&engine, conn, protocol, sid, parts).await.map(Some)
                }
                Err(_e) => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!("ws upgrade error: {}", _e);
                    Ok(None)
                }
            }
        }
    });
    tokio::spawn(connection(engine, sid, setup));

    Ok(ws_response(&ws_key))
}

/// The task of one websocket connection: its (boxed) setup, then serving it until it closes.
async fn connection<H, S, F>(engine: Arc<EngineIo<H>>, sid: Option<Sid>, setup: Pin<Box<F>>)
where
    H: EngineIoHandler,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Future<Output = Result<Option<Ready<H::Data, S>>, Error>>,
{
    // The session is moved out whole before `serve` is awaited: a match arm awaiting on
    // fields it moved out of the match's value would keep that value's slot in the task.
    let ready = match setup.await {
        Ok(Some(ready)) => ready,
        Ok(None) | Err(Error::MultipleWebsocketRequests) => return,
        Err(_e) => {
            #[cfg(feature = "tracing")]
            tracing::debug!(?sid, "ws closed with error: {_e}");
            if let Some(sid) = sid {
                engine.close_session(sid, DisconnectReason::TransportError);
            }
            return;
        }
    };
    serve(&engine, ready).await;
    #[cfg(feature = "tracing")]
    tracing::debug!(?sid, "ws closed")
}

/// Serves a websocket connection on a stream whose HTTP upgrade is done: sends the open packet
/// (or completes an upgrade from polling), then serves the session until it closes.
pub fn on_init<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> impl Future<Output = Result<(), Error>> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Boxed for the same reason as in `new_req`.
    let setup = Box::pin({
        let engine = engine.clone();
        async move { setup(&engine, conn, protocol, sid, req_data).await }
    });
    async move {
        let ready = setup.await?;
        serve(&engine, ready).await;
        Ok(())
    }
}

/// A websocket session ready to be served: its socket, its stream, and whether the heartbeat
/// is this connection's to run (a session upgraded from polling keeps the heartbeat task that
/// polling started).
type Ready<D, S> = (Arc<Socket<D>>, WebSocketStream<S>, bool);

/// Opens a new websocket session, or upgrades a polling one to this websocket.
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", name = "init_websocket", skip(engine, conn, req_data))
)]
async fn setup<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<Ready<H::Data, S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(engine.config.ws_read_buffer_size)
        .max_message_size(Some(engine.config.ws_max_message_size))
        .max_frame_size(Some(engine.config.ws_max_frame_size));

    let ws_init = move || WebSocketStream::from_raw_socket(conn, Role::Server, Some(ws_config));
    if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() => Err(Error::MultipleWebsocketRequests),
            Some(socket) => {
                let mut ws = ws_init().await;

                let upgrade_fut = upgrade_handshake::<H, S>(&socket, &mut ws);
                match tokio::time::timeout(engine.config.upgrade_timeout, upgrade_fut)
                    .with_cancellation_token(&socket.cancellation_token)
                    .await
                {
                    Some(Ok(res)) => res?,
                    Some(Err(_)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade timed out, closing session");
                        engine.close_session(socket.id, DisconnectReason::TransportError);
                        return Err(Error::Upgrade);
                    }
                    None => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "socket is being closed");
                        return Err(Error::Upgrade);
                    }
                }
                Ok((socket, ws, false))
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        let mut ws = ws_init().await;
        init_handshake(socket.id, &mut ws, &engine.config).await?;
        // Engine.IO v3 runs its heartbeat the other way round (the client pings, the server
        // answers): its sessions keep the published heartbeat task.
        if protocol == ProtocolVersion::V3 {
            socket
                .clone()
                .spawn_heartbeat(engine.config.ping_interval, engine.config.ping_timeout);
            return Ok((socket, ws, false));
        }
        Ok((socket, ws, true))
    }
}

/// The heartbeat of a websocket session, run by its connection task: a ping every
/// `ping_interval`, the first one interval after the open, each to be answered within
/// `ping_timeout`. engine.io (Node), which audiobookshelf runs, keeps this schedule; the
/// published crate pings at once, which costs every new socket a ping and a pong it does not
/// need (about 10 % of the CPU of an `auth` storm). `Socket::heartbeat_job` keeps the same one.
struct Heartbeat {
    /// When the current ping was sent, the base of the next one.
    last_ping: Instant,
    /// Whether a ping is waiting for its pong.
    awaiting_pong: bool,
}

impl Heartbeat {
    /// `deadline` passed: sends a ping and sets `deadline` for its pong, or fails if the last
    /// ping went unanswered.
    fn on_deadline<D: Default + Send + Sync + 'static>(
        &mut self,
        deadline: Pin<&mut Sleep>,
        socket: &Socket<D>,
        config: &EngineIoConfig,
    ) -> Result<(), Error> {
        if self.awaiting_pong {
            return Err(Error::HeartbeatTimeout);
        }
        #[cfg(feature = "tracing")]
        tracing::trace!(sid = ?socket.id, "emitting ping");
        // Queued like any packet, so a client that reads nothing fills its queue and is
        // dropped, as with the published heartbeat task.
        socket
            .internal_tx
            .try_send(smallvec![Packet::Ping])
            .map_err(|_| Error::HeartbeatTimeout)?;
        self.last_ping = Instant::now();
        self.awaiting_pong = true;
        deadline.reset(self.last_ping + config.ping_timeout);
        Ok(())
    }

    /// A pong arrived: `deadline` becomes the next ping's, one interval after the last one.
    fn on_pong(&mut self, deadline: Pin<&mut Sleep>, config: &EngineIoConfig) {
        // Some clients send a pong first; the published heartbeat ignores it too.
        if self.awaiting_pong {
            self.awaiting_pong = false;
            deadline.reset(self.last_ping + config.ping_interval);
        }
    }
}

/// Writes in a row after which the client's side is polled once, whatever the queue holds.
const READ_EVERY: usize = 16;

/// What stopped a write to the client before it was done.
enum Interrupted {
    /// The session is being closed.
    Closing,
    /// The heartbeat failed: the client answered no ping in time.
    Failed(Error),
}

/// How the connection's loop ends after an interrupted write.
impl From<Interrupted> for Result<(), Error> {
    fn from(stop: Interrupted) -> Self {
        match stop {
            Interrupted::Closing => Ok(()),
            Interrupted::Failed(e) => Err(e),
        }
    }
}

/// Runs `write`, a write to the client, while the session's cancellation and the heartbeat go
/// on. With one task per connection, a client that stops reading would otherwise block them
/// with the write, and stay connected for as long as its kernel keeps the connection open.
///
/// The write is pinned by the caller and borrowed here, so that the connection task stores it
/// once (a future taken by value and pinned here would be stored twice).
async fn while_writing<D: Default + Send + Sync + 'static>(
    mut write: Pin<&mut impl Future<Output = ()>>,
    (mut deadline, heartbeat, run_heartbeat): (Pin<&mut Sleep>, &mut Heartbeat, bool),
    socket: &Socket<D>,
    config: &EngineIoConfig,
) -> Result<(), Interrupted> {
    loop {
        tokio::select! {
            // The write first: the other branches are only polled (and their wakers only
            // registered) when it cannot finish at once, which is rare.
            biased;
            () = write.as_mut() => return Ok(()),
            _ = socket.cancellation_token.cancelled() => return Err(Interrupted::Closing),
            () = deadline.as_mut(), if run_heartbeat => {
                if let Err(e) = heartbeat.on_deadline(deadline.as_mut(), socket, config) {
                    return Err(Interrupted::Failed(e));
                }
            }
        }
    }
}

/// Serves an open websocket session until it closes: client packets to the handler, queued
/// packets to the client (flushed once the queue is drained), and the heartbeat.
///
/// A `fn` returning an `async move` block that borrows the session in place, rather than an
/// `async fn`: an `async fn` moves each argument into a local of its future and keeps the
/// argument's own slot too (rust-lang/rust#62958), which stored the websocket stream twice in
/// every connection task.
#[allow(clippy::manual_async_fn)] // on purpose, see above
fn serve<'a, H: EngineIoHandler, S>(
    engine: &'a Arc<EngineIo<H>>,
    mut ready: Ready<H::Data, S>,
) -> impl Future<Output = ()> + Send + 'a
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let (socket, ws, run_heartbeat) = (&ready.0, &mut ready.1, ready.2);
        // A polling request that was in progress during the upgrade may still hold the lock.
        let Some(mut internal_rx) = socket
            .internal_rx
            .lock()
            .with_cancellation_token(&socket.cancellation_token)
            .await
        else {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "session closed before starting the ws writer");
            return;
        };
        let InternalRx {
            buffered_rx,
            volatile_rx,
            ..
        } = &mut *internal_rx;

        let config = &engine.config;
        let mut heartbeat = Heartbeat {
            last_ping: Instant::now(),
            awaiting_pong: false,
        };
        let deadline = tokio::time::sleep_until(heartbeat.last_ping + config.ping_interval);
        tokio::pin!(deadline);
        // Kept across the loop's turns, so that it is not registered anew at every one.
        let cancelled = socket.cancellation_token.cancelled();
        tokio::pin!(cancelled);
        let mut writes_in_a_row: usize = 0;

        let end: Result<(), Error> = loop {
            let mut read = None;
            // Queued packets first, so that a broadcast's wake-up polls one branch. Alone, that
            // order would let a steady stream of outgoing packets starve the client's messages
            // (its pongs among them): every `READ_EVERY` writes in a row, the client's side is
            // polled once before the queue again.
            tokio::select! {
                biased;
                items = buffered_rx.recv() => {
                    let Some(packets) = items else { break Ok(()) };
                    // What is queued is written and flushed once; at most one queue's worth,
                    // so that a sustained stream cannot keep one write (and the reads) going.
                    {
                        let write = pin!(async {
                            write_packets(ws, socket, packets).await;
                            for _ in 1..config.max_buffer_size {
                                let Ok(packets) = buffered_rx.try_recv() else { break };
                                write_packets(ws, socket, packets).await;
                            }
                            flush(ws, socket).await;
                        });
                        let hb = (deadline.as_mut(), &mut heartbeat, run_heartbeat);
                        if let Err(stop) = while_writing(write, hb, socket, config).await {
                            break stop.into();
                        }
                    }
                    writes_in_a_row += 1;
                    if writes_in_a_row >= READ_EVERY {
                        writes_in_a_row = 0;
                        // With this task's waker: if nothing is there, the read stays armed.
                        let polled = poll_fn(|cx| Poll::Ready(ws.poll_next_unpin(cx))).await;
                        if let Poll::Ready(msg) = polled {
                            read = Some(msg);
                        }
                    }
                }
                _ = &mut cancelled => break Ok(()),
                () = &mut deadline, if run_heartbeat => {
                    if let Err(e) = heartbeat.on_deadline(deadline.as_mut(), socket, config) {
                        break Err(e);
                    }
                }
                Ok(()) = volatile_rx.changed() => {
                    let val = volatile_rx.borrow_and_update().clone();
                    if let Some(packets) = val {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(sid = ?socket.id, "ws volatile flush: {} packets", packets.len());
                        let write = pin!(async {
                            write_packets(ws, socket, packets).await;
                            flush(ws, socket).await;
                        });
                        let hb = (deadline.as_mut(), &mut heartbeat, run_heartbeat);
                        if let Err(stop) = while_writing(write, hb, socket, config).await {
                            break stop.into();
                        }
                    }
                }
                msg = ws.next() => read = Some(msg),
            }
            let Some(msg) = read else { continue };
            writes_in_a_row = 0;
            let msg = match msg {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => break Err(e.into()),
                None => break Ok(()),
            };
            match on_ws_message(engine, socket, msg) {
                Ok(ControlFlow::Continue(pong)) => {
                    if pong && run_heartbeat {
                        heartbeat.on_pong(deadline.as_mut(), config);
                    } else if pong {
                        // The heartbeat task that polling started waits for it.
                        socket.heartbeat.notify_one();
                    }
                }
                Ok(ControlFlow::Break(())) => break Ok(()),
                Err(e) => break Err(e),
            }
        };

        if socket.cancellation_token.is_cancelled() {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "socket is closing");
            // The session is being closed by whoever cancelled it. What was queued before the
            // close still goes out (a socket.io DISCONNECT, say), as the published writer task
            // wrote its queue before it looked at the cancellation.
            while let Ok(packets) = buffered_rx.try_recv() {
                write_packets(ws, socket, packets).await;
            }
            drop(internal_rx);
            close(ws, config).await;
            return;
        }

        let reason = match &end {
            Ok(()) => DisconnectReason::TransportClose,
            Err(e) => {
                Option::<DisconnectReason>::from(e).unwrap_or(DisconnectReason::TransportError)
            }
        };
        #[cfg(feature = "tracing")]
        tracing::debug!(sid = %socket.id, ?end, "ws transport closed");
        // The session's close waits for this lock to close the queue and tell the handler.
        drop(internal_rx);
        engine.close_session(socket.id, reason);
        close(ws, config).await;
    }
}

/// Handles one websocket message from the client. `Continue(true)` for a pong (v4) or a ping
/// (v3), which feed the heartbeat; `Break` when the client closed the session.
fn on_ws_message<H: EngineIoHandler>(
    engine: &Arc<EngineIo<H>>,
    socket: &Arc<Socket<H::Data>>,
    msg: Message,
) -> Result<ControlFlow<(), bool>, Error> {
    match msg {
        Message::Text(msg) => match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
            Packet::Close => {
                #[cfg(feature = "tracing")]
                tracing::debug!("[sid={}] closing session", socket.id);
                Ok(ControlFlow::Break(()))
            }
            Packet::Pong | Packet::Ping => Ok(ControlFlow::Continue(true)),
            Packet::Message(msg) => {
                engine.handler.on_message(msg, socket.clone());
                Ok(ControlFlow::Continue(false))
            }
            p => Err(Error::BadPacket(p)),
        },
        Message::Binary(mut data) => {
            if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                // The first byte is the message type, which we don't need.
                data = data.split_off(1);
            }
            engine.handler.on_binary(data, socket.clone());
            Ok(ControlFlow::Continue(false))
        }
        Message::Close(_) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("websocket closed, closing session");
            Ok(ControlFlow::Break(()))
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = ?socket.id, "unexpected ws message");
            Ok(ControlFlow::Continue(false))
        }
    }
}

/// Feeds packets to the websocket, unflushed. (A `fn` for the reason given at [`serve`].)
#[allow(clippy::manual_async_fn)] // on purpose, see above
fn write_packets<'a, D, S>(
    ws: &'a mut WebSocketStream<S>,
    socket: &'a Socket<D>,
    packets: engineioxide_core::PacketBuf,
) -> impl Future<Output = ()> + Send + 'a
where
    D: Default + Send + Sync + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async move {
        for packet in packets {
            let res = match packet {
                Packet::Binary(bin) | Packet::BinaryV3(bin) => {
                    if socket.protocol == ProtocolVersion::V3 {
                        // v3 protocol requires packet type as the first byte.
                        // This requires a new buffer. This is OK as it is only for the V3 protocol.
                        let mut buff = Vec::with_capacity(bin.len() + 1);
                        buff.push(0x04);
                        buff.extend(bin);
                        ws.feed(Message::Binary(buff.into())).await
                    } else {
                        ws.feed(Message::Binary(bin)).await
                    }
                }
                // A Noop Packet maybe sent by the server to upgrade from a polling connection
                // In the case that the packet was not poll in time it will remain in the buffer and therefore
                // it should be discarded here
                Packet::Noop => Ok(()),
                packet => {
                    let packet: String = packet.into();
                    ws.feed(Message::Text(packet.into())).await
                }
            };
            if let Err(_e) = res {
                #[cfg(feature = "tracing")]
                tracing::debug!("[sid={}] error sending packet: {}", socket.id, _e);
            }
        }
    }
}

async fn flush<D, S>(ws: &mut WebSocketStream<S>, _socket: &Socket<D>)
where
    D: Default + Send + Sync + 'static,
    S: AsyncRead + AsyncWrite + Unpin,
{
    #[cfg(feature = "tracing")]
    tracing::trace!(sid = %_socket.id, "ws flush");
    ws.flush().await.ok();
}

/// Flushes what is left and closes the websocket, giving a client that reads nothing at most
/// `ping_timeout` (the published writer task could wait on such a client forever).
async fn close<S>(ws: &mut WebSocketStream<S>, config: &EngineIoConfig)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let closing = async {
        ws.flush().await.ok();
        ws.close(None).await.ok();
    };
    tokio::time::timeout(config.ping_timeout, closing)
        .await
        .ok();
}

/// Send a Engine.IO [`OpenPacket`] to initiate a websocket connection
async fn init_handshake<S>(
    sid: Sid,
    ws: &mut WebSocketStream<S>,
    config: &EngineIoConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let packet = Packet::Open(Box::new(make_open_packet(
        TransportType::Websocket,
        sid,
        config,
    )));
    let packet: String = packet.into();
    ws.send(Message::Text(packet.into())).await?;
    Ok(())
}

/// Upgrade a session from a polling request to a websocket request.
///
/// Before upgrading the session the server should send a NOOP packet to any pending polling request.
///
/// ## Handshake :
/// ```text
/// CLIENT                                                 SERVER
///│                                                      │
///│   GET /engine.io/?EIO=4&transport=websocket&sid=...  │
///│ ───────────────────────────────────────────────────► │
///│  ◄─────────────────────────────────────────────────┘ │
///│            HTTP 101 (WebSocket handshake)            │
///│                                                      │
///│            -----  WebSocket frames -----             │
///│  ─────────────────────────────────────────────────►  │
///│                         2probe                       │ (ping packet)
///│  ◄─────────────────────────────────────────────────  │
///│                         3probe                       │ (pong packet)
///│  ─────────────────────────────────────────────────►  │
///│                         5                            │ (upgrade packet)
///│                                                      │
///│            -----  WebSocket frames -----             │
/// ```
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", skip(socket, ws))
)]
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    tracing::debug!("starting websocket connection upgrade");

    // The socket is upgrading, from now on all polling
    // request will return a `Packet::Noop`
    socket.start_upgrade();

    // We send a last Noop request to close a potential waiting polling request.
    socket
        .internal_tx
        .send(smallvec![Packet::Noop])
        .await
        .map_err(|_| Error::Upgrade)?;

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.internal_rx.lock().await;

    // Fetch the next packet from the ws stream, it should be a PingUpgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        _ => Err(Error::Upgrade)?,
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            // Respond with a PongUpgrade packet
            ws.send(Message::Text(String::from(Packet::PongUpgrade).into()))
                .await?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // Fetch the next packet from the ws stream, it should be an Upgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        Some(Ok(Message::Close(_))) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws stream closed before upgrade");
            Err(Error::Upgrade)?
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!("unexpected ws message before upgrade");
            Err(Error::Upgrade)?
        }
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

fn ws_bytes_to_str(bytes: tungstenite::Utf8Bytes) -> Str {
    // SAFETY: the bytes are guaranteed to be valid UTF-8 by the tungstenite parser
    unsafe { Str::from_bytes_unchecked(bytes.into()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use http::Request;
    use tokio::{io::DuplexStream, sync::mpsc};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    /// Echoes every message and reports every disconnection with its reason.
    #[derive(Debug)]
    struct EchoHandler {
        disconnects: mpsc::UnboundedSender<DisconnectReason>,
    }
    impl EngineIoHandler for EchoHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, reason: DisconnectReason) {
            self.disconnects.send(reason).ok();
        }
        fn on_message(self: &Arc<Self>, msg: Str, socket: Arc<Socket<()>>) {
            socket.emit(msg).ok();
        }
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    fn engine(
        config: EngineIoConfig,
    ) -> (
        Arc<EngineIo<EchoHandler>>,
        mpsc::UnboundedReceiver<DisconnectReason>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handler = Arc::new(EchoHandler { disconnects: tx });
        (Arc::new(EngineIo::new(handler, config)), rx)
    }

    fn session(engine: &Arc<EngineIo<EchoHandler>>) -> Arc<Socket<()>> {
        engine.create_session(
            ProtocolVersion::V4,
            TransportType::Websocket,
            Request::<()>::default().into_parts().0,
            false,
        )
    }

    async fn ws_pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(1024);
        (
            WebSocketStream::from_raw_socket(server, Role::Server, None).await,
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    async fn next_text(client: &mut WebSocketStream<DuplexStream>) -> String {
        let msg = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("a message in time")
            .expect("an open stream")
            .expect("a valid message");
        msg.into_text().expect("a text message").to_string()
    }

    /// A ping every 60 ms, to be answered within 40 ms.
    fn fast_heartbeat() -> EngineIoConfig {
        EngineIoConfig::builder()
            .ping_interval(Duration::from_millis(60))
            .ping_timeout(Duration::from_millis(40))
            .build()
    }

    /// Serves `server` as `socket`'s websocket in a task of its own.
    fn spawn_serve(
        engine: &Arc<EngineIo<EchoHandler>>,
        socket: Arc<Socket<()>>,
        server: WebSocketStream<DuplexStream>,
        heartbeat: bool,
    ) -> tokio::task::JoinHandle<()> {
        let engine = engine.clone();
        tokio::spawn(async move { serve(&engine, (socket, server, heartbeat)).await })
    }

    /// The session was closed for `reason`, and its task ended.
    async fn assert_closed(
        disconnects: &mut mpsc::UnboundedReceiver<DisconnectReason>,
        served: tokio::task::JoinHandle<()>,
        reason: DisconnectReason,
    ) {
        let got = tokio::time::timeout(TIMEOUT, disconnects.recv())
            .await
            .expect("a disconnection in time");
        assert_eq!(got, Some(reason));
        tokio::time::timeout(TIMEOUT, served)
            .await
            .expect("serve should stop")
            .unwrap();
    }

    /// A polling request can still hold the lock at the end of an upgrade.
    #[tokio::test]
    async fn serve_waits_for_the_lock_of_a_polling_request() {
        let (engine, _) = engine(EngineIoConfig::default());
        let socket = session(&engine);
        let (server, mut client) = ws_pair().await;

        let polling = socket.internal_rx.lock().await;
        let served = spawn_serve(&engine, socket.clone(), server, false);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!served.is_finished(), "serve should wait for the lock");

        drop(polling);
        socket.emit(Str::from("hello")).unwrap();
        assert_eq!(next_text(&mut client).await, "4hello");
    }

    #[tokio::test]
    async fn serve_waiting_for_the_lock_stops_with_the_session() {
        let (engine, _) = engine(EngineIoConfig::default());
        let socket = session(&engine);
        let (server, _client) = ws_pair().await;

        let _polling = socket.internal_rx.lock().await;
        let served = spawn_serve(&engine, socket.clone(), server, false);
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, served)
            .await
            .expect("serve should stop")
            .unwrap();
    }

    /// One task reads and writes: messages read are answered while more arrive.
    #[tokio::test]
    async fn reads_and_writes_interleave_in_one_task() {
        let (engine, _) = engine(EngineIoConfig::default());
        let socket = session(&engine);
        let (server, mut client) = ws_pair().await;
        spawn_serve(&engine, socket, server, false);

        for i in 0..50 {
            client.send(Message::text(format!("4m{i}"))).await.unwrap();
        }
        for i in 0..50 {
            assert_eq!(next_text(&mut client).await, format!("4m{i}"));
        }
    }

    /// The heartbeat pings one interval after the open (as engine.io does) and then every
    /// interval while pongs come back, and closes the session with `HeartbeatTimeout` when one
    /// does not.
    #[tokio::test]
    async fn heartbeat_pings_and_times_out() {
        let (engine, mut disconnects) = engine(fast_heartbeat());
        let socket = session(&engine);
        let (server, mut client) = ws_pair().await;
        let start = Instant::now();
        let served = spawn_serve(&engine, socket.clone(), server, true);

        for round in 0..3 {
            assert_eq!(next_text(&mut client).await, "2", "ping {round}");
            if round == 0 {
                assert!(
                    start.elapsed() >= Duration::from_millis(55),
                    "no ping at once"
                );
            }
            client.send(Message::text("3")).await.unwrap();
        }
        // Three pings answered, one every interval.
        assert!(start.elapsed() >= Duration::from_millis(170));

        // The fourth goes unanswered.
        assert_eq!(next_text(&mut client).await, "2");
        assert_closed(&mut disconnects, served, DisconnectReason::HeartbeatTimeout).await;
    }

    /// A client that stops reading blocks the writes to it; the heartbeat still drops it.
    #[tokio::test]
    async fn a_client_that_stops_reading_is_dropped_by_the_heartbeat() {
        let (engine, mut disconnects) = engine(fast_heartbeat());
        let socket = session(&engine);
        let (server, _client) = ws_pair().await; // never read
        let served = spawn_serve(&engine, socket.clone(), server, true);
        // Far more than the 1 KiB pipe holds: the writer blocks.
        let big = "x".repeat(1000);
        for _ in 0..100 {
            socket.emit(Str::from(big.clone())).ok();
        }

        assert_closed(&mut disconnects, served, DisconnectReason::HeartbeatTimeout).await;
    }

    /// A websocket close from the client ends the session as a transport close.
    #[tokio::test]
    async fn client_close_ends_the_session() {
        let (engine, mut disconnects) = engine(EngineIoConfig::default());
        let socket = session(&engine);
        let (server, mut client) = ws_pair().await;
        let served = spawn_serve(&engine, socket.clone(), server, true);
        client.send(Message::text("4hi")).await.unwrap();
        assert_eq!(next_text(&mut client).await, "4hi");
        client.close(None).await.unwrap();

        assert_closed(&mut disconnects, served, DisconnectReason::TransportClose).await;
    }
}

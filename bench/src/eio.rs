//! Engine.IO v4 / Socket.IO v5 over a raw websocket: just what a client of the default
//! namespace needs (open, connect, events, ping answers), so one process can drive tens of
//! thousands of sockets. A full client crate keeps far more state per socket than a load
//! generator can afford.

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use tokio::net::TcpSocket;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

pub struct Conn {
    ws: WebSocketStream<tokio::net::TcpStream>,
}

/// An event received: its name and its arguments.
pub struct Event {
    pub name: String,
    pub args: Vec<Value>,
}

impl Conn {
    /// Connects from `source` to `server` on `path` (e.g. `/socket.io`) and joins namespace `/`.
    pub async fn connect(
        server: SocketAddr,
        source: IpAddr,
        path: &str,
        query: &str,
    ) -> anyhow::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket
            .bind(SocketAddr::new(source, 0))
            .context("binding a source address")?;
        let stream = socket.connect(server).await.context("connecting")?;
        stream.set_nodelay(true)?;
        let url = format!("ws://{server}{path}/?EIO=4&transport=websocket{query}");
        let (ws, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .context("websocket handshake")?;
        let mut conn = Self { ws };
        let open = conn.next_text().await?;
        if !open.starts_with('0') {
            bail!("expected an Engine.IO open packet, got {open:.40}");
        }
        conn.send("40").await?;
        loop {
            let msg = conn.next_text().await?;
            if msg.starts_with("40") {
                return Ok(conn);
            }
            if msg.starts_with("44") {
                bail!("connect refused: {msg:.80}");
            }
        }
    }

    async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await.context("sending")
    }

    /// Emits `event` with `args`.
    pub async fn emit(&mut self, event: &str, args: &[Value]) -> anyhow::Result<()> {
        let mut packet = vec![Value::from(event)];
        packet.extend_from_slice(args);
        self.send(&format!("42{}", Value::Array(packet))).await
    }

    /// The next text frame, answering pings on the way.
    async fn next_text(&mut self) -> anyhow::Result<String> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str() == "2" {
                        self.send("3").await?;
                        continue;
                    }
                    return Ok(t.as_str().to_owned());
                }
                Some(Ok(Message::Close(_))) | None => bail!("closed by the server"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e).context("receiving"),
            }
        }
    }

    /// The next Socket.IO event.
    pub async fn next_event(&mut self) -> anyhow::Result<Event> {
        loop {
            let text = self.next_text().await?;
            let Some(body) = text.strip_prefix("42") else {
                if text.starts_with("41") {
                    bail!("disconnected by the server");
                }
                continue;
            };
            let Ok(Value::Array(mut parts)) = serde_json::from_str::<Value>(body) else {
                continue;
            };
            if parts.is_empty() {
                continue;
            }
            let name = parts.remove(0).as_str().unwrap_or_default().to_owned();
            return Ok(Event { name, args: parts });
        }
    }

    /// Emits `auth` and waits for `init`; `Err` on `auth_failed`.
    pub async fn auth(&mut self, token: &str) -> anyhow::Result<()> {
        self.emit("auth", &[Value::from(token)]).await?;
        loop {
            let ev = self.next_event().await?;
            match ev.name.as_str() {
                "init" => return Ok(()),
                "auth_failed" => bail!("auth_failed {:?}", ev.args),
                _ => {}
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

//! Engine.IO v4 / Socket.IO v5, the client side, over a raw websocket: what a client of the
//! default namespace needs (open, connect, events, ping answers) and nothing more.
//!
//! Shared by abs-socket's bridge (one connection per online user to an upstream audiobookshelf)
//! and the load generator (tens of thousands of sockets in one process). The Socket.IO client
//! crates keep far more state per socket than a load generator can afford, reconnect on their own
//! terms (the bridge needs its own backoff and its own record of what was lost), and several poll
//! first; audiobookshelf's server takes a websocket directly.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid server URL: {0}")]
    Url(String),
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("websocket: {0}")]
    Websocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("expected an Engine.IO open packet, got {0:.40}")]
    NotEngineIo(String),
    #[error("namespace connection refused: {0:.80}")]
    Refused(String),
    #[error("closed by the server")]
    Closed,
    #[error("auth_failed {0}")]
    AuthFailed(Value),
}

pub type Result<T> = std::result::Result<T, Error>;

/// One socket, connected to the default namespace.
pub struct Conn {
    ws: WebSocketStream<TcpStream>,
}

/// An event received: its name and its arguments.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    pub args: Vec<Value>,
}

/// Where a Socket.IO server is: `http://host:port/base` serves `/base/socket.io`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// The Engine.IO path, e.g. `/socket.io` or `/audiobookshelf/socket.io`.
    pub path: String,
}

impl Endpoint {
    /// From an `http://` (or `ws://`) URL; its path, if any, is the base path in front of
    /// `/socket.io`.
    pub fn from_url(url: &str) -> Result<Self> {
        let u = url::Url::parse(url).map_err(|e| Error::Url(e.to_string()))?;
        match u.scheme() {
            "http" | "ws" => {}
            other => {
                return Err(Error::Url(format!(
                    "scheme {other:?} is not supported (use http:// on the internal network)"
                )));
            }
        }
        let host = u.host_str().ok_or_else(|| Error::Url("no host".into()))?;
        let base = u.path().trim_end_matches('/');
        Ok(Self {
            host: host.to_owned(),
            port: u.port().unwrap_or(80),
            path: format!("{base}/socket.io"),
        })
    }
}

impl Conn {
    /// Connects to `endpoint` by name and joins namespace `/`.
    pub async fn connect(endpoint: &Endpoint) -> Result<Self> {
        let stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(Error::Connect)?;
        let host = format!("{}:{}", endpoint.host, endpoint.port);
        Self::handshake(stream, &host, &endpoint.path, "").await
    }

    /// Connects from `source` to `server` on `path` (e.g. `/socket.io`) and joins namespace `/`:
    /// a load generator spreads its sockets over several source addresses.
    pub async fn connect_from(
        server: SocketAddr,
        source: IpAddr,
        path: &str,
        query: &str,
    ) -> Result<Self> {
        let socket = TcpSocket::new_v4().map_err(Error::Connect)?;
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(Error::Connect)?;
        let stream = socket.connect(server).await.map_err(Error::Connect)?;
        Self::handshake(stream, &server.to_string(), path, query).await
    }

    async fn handshake(stream: TcpStream, host: &str, path: &str, query: &str) -> Result<Self> {
        stream.set_nodelay(true).map_err(Error::Connect)?;
        let url = format!("ws://{host}{path}/?EIO=4&transport=websocket{query}");
        let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
        let mut conn = Self { ws };
        let open = conn.next_text().await?;
        if !open.starts_with('0') {
            return Err(Error::NotEngineIo(open));
        }
        conn.send("40").await?;
        loop {
            let msg = conn.next_text().await?;
            if msg.starts_with("40") {
                return Ok(conn);
            }
            if msg.starts_with("44") {
                return Err(Error::Refused(msg));
            }
        }
    }

    async fn send(&mut self, text: &str) -> Result<()> {
        Ok(self.ws.send(Message::text(text)).await?)
    }

    /// Emits `event` with `args`.
    pub async fn emit(&mut self, event: &str, args: &[Value]) -> Result<()> {
        let mut packet = vec![Value::from(event)];
        packet.extend_from_slice(args);
        self.send(&format!("42{}", Value::Array(packet))).await
    }

    /// The next text frame, answering pings on the way.
    async fn next_text(&mut self) -> Result<String> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str() == "2" {
                        self.send("3").await?;
                        continue;
                    }
                    return Ok(t.as_str().to_owned());
                }
                Some(Ok(Message::Close(_))) | None => return Err(Error::Closed),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// The next Socket.IO event. Cancel-safe between frames: a `select!` may drop it to send.
    pub async fn next_event(&mut self) -> Result<Event> {
        loop {
            let text = self.next_text().await?;
            let Some(body) = text.strip_prefix("42") else {
                if text.starts_with("41") {
                    return Err(Error::Closed);
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

    /// Emits `auth` and waits for `init`, whose argument it returns; `Err` on `auth_failed`.
    pub async fn auth(&mut self, token: &str) -> Result<Value> {
        self.emit("auth", &[Value::from(token)]).await?;
        loop {
            let mut ev = self.next_event().await?;
            match ev.name.as_str() {
                "init" => return Ok(ev.args.pop().unwrap_or(Value::Null)),
                "auth_failed" => {
                    return Err(Error::AuthFailed(ev.args.pop().unwrap_or(Value::Null)));
                }
                _ => {}
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_from_urls() {
        let e = Endpoint::from_url("http://abs.lan:13378").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("abs.lan", 13378, "/socket.io")
        );
        let e = Endpoint::from_url("http://127.0.0.1/audiobookshelf/").unwrap();
        assert_eq!((e.port, e.path.as_str()), (80, "/audiobookshelf/socket.io"));
        assert!(Endpoint::from_url("https://abs.example").is_err());
        assert!(Endpoint::from_url("not a url").is_err());
    }
}

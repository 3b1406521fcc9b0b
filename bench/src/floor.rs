//! The floor: the least a Socket.IO server can do for the load generator's scenarios on this
//! machine, measured in the same run as the real servers.
//!
//! The targets are judged on server CPU time, and half of a server's CPU time here is the
//! kernel's (accepting, one `write` per recipient on a loopback TCP socket). This server does
//! only what the scenarios need from any server, and nothing else: the websocket upgrade, the
//! Engine.IO open packet (in the same write as the upgrade answer), the Socket.IO CONNECT
//! answer, `init` for any `auth` (no token check, no database), and for `message_all_users` one
//! pre-encoded `admin_message` frame written with one `write` per authenticated socket, from the
//! task that read the request (no queue, no task woken per recipient). It sends no heartbeat.
//! Whatever abs-socket spends above these figures is its own; what they cost already is the
//! machine's.
//!
//! Written by hand, with no websocket or HTTP crate: the point is to be the minimum, and every
//! framework keeps per-socket buffers, queues and tasks that this must not have. One thread
//! (tokio's current-thread runtime), so no cross-thread wake-up is paid either.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use tokio::net::{TcpListener, TcpStream};

/// Server-side read buffer per socket; abs-socket's websocket read buffer is the same size.
const READ_BUFFER: usize = 1024;

/// The authenticated sockets, by connection number.
#[derive(Default)]
struct Hub {
    authenticated: RefCell<HashMap<u64, Rc<TcpStream>>>,
}

/// Serves on `host:port` until killed.
pub fn serve(host: &str, port: u16) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind((host, port)).await?;
        let hub = Rc::new(Hub::default());
        let mut next = 0u64;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            next += 1;
            let (id, hub) = (next, hub.clone());
            tokio::task::spawn_local(async move {
                let _ = connection(id, Rc::new(stream), &hub).await;
                hub.authenticated.borrow_mut().remove(&id);
            });
        }
    })
}

async fn connection(id: u64, stream: Rc<TcpStream>, hub: &Hub) -> io::Result<()> {
    let mut buf = Vec::with_capacity(READ_BUFFER);
    // The upgrade request.
    let head_end = loop {
        read_some(&stream, &mut buf).await?;
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > 8192 {
            return Ok(());
        }
    };
    let Some(key) = header(&buf[..head_end], "sec-websocket-key") else {
        return Ok(());
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes();
    let sid = format!("floor{id:015}");
    out.extend(frame(
        format!(
            r#"0{{"sid":"{sid}","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}}"#
        )
        .as_bytes(),
    ));
    write_all(&stream, &out).await?;
    buf.drain(..head_end);
    buf.shrink_to(READ_BUFFER);

    loop {
        while let Some((opcode, payload, used)) = client_frame(&buf) {
            buf.drain(..used);
            match opcode {
                0x8 => return Ok(()),
                0x1 => on_text(id, &stream, hub, &payload).await?,
                _ => {}
            }
        }
        read_some(&stream, &mut buf).await?;
    }
}

async fn on_text(id: u64, stream: &Rc<TcpStream>, hub: &Hub, text: &[u8]) -> io::Result<()> {
    if text == b"40" {
        let reply = format!(r#"40{{"sid":"floor-s{id}"}}"#);
        return write_all(stream, &frame(reply.as_bytes())).await;
    }
    let Some(event) = text.strip_prefix(b"42") else {
        return Ok(());
    };
    if event.starts_with(br#"["auth""#) {
        hub.authenticated.borrow_mut().insert(id, stream.clone());
        let init = br#"42["init",{"userId":"floor","username":"floor"}]"#;
        return write_all(stream, &frame(init)).await;
    }
    if event.starts_with(br#"["message_all_users""#) {
        let Ok(serde_json::Value::Array(args)) = serde_json::from_slice(event) else {
            return Ok(());
        };
        let message = args.get(1).and_then(|p| p.get("message")).cloned();
        let packet = serde_json::json!(["admin_message", message]);
        let encoded = frame(format!("42{packet}").as_bytes());
        let peers = hub.authenticated.borrow();
        // One write per recipient; a full socket buffer is reported, not waited for.
        let missed = peers
            .values()
            .filter(|peer| !matches!(peer.try_write(&encoded), Ok(n) if n == encoded.len()))
            .count();
        if missed > 0 {
            eprintln!("floor: {missed} of {} frames not written", peers.len());
        }
    }
    Ok(())
}

async fn read_some(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    loop {
        stream.readable().await?;
        if buf.capacity() - buf.len() < 256 {
            buf.reserve(READ_BUFFER);
        }
        match stream.try_read_buf(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` (lower case) in a request head.
fn header<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(head)
        .ok()?
        .split("\r\n")
        .find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
}

/// A final, unmasked text frame (server to client).
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x81);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= u16::MAX as usize => {
            f.push(126);
            f.extend((n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend((n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// One whole client frame at the start of `buf`: its opcode, unmasked payload and length.
fn client_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (b0, b1) = (*buf.first()?, *buf.get(1)?);
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let mask: [u8; 4] = if masked {
        let m = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        m
    } else {
        [0; 4]
    };
    let payload = buf.get(at..at.checked_add(len)?)?;
    let unmasked = payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Some((b0 & 0x0f, unmasked, at + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_a_client_mask() {
        for len in [0, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut f = frame(&payload);
            // Mask it as a client would.
            let at = f.len() - len;
            let mask = [1u8, 2, 3, 4];
            f[1] |= 0x80;
            let body: Vec<u8> = f
                .split_off(at)
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            f.extend(mask);
            f.extend(body);
            f.extend(b"rest");
            let (op, got, used) = client_frame(&f).unwrap();
            assert_eq!((op, got, used), (1, payload, f.len() - 4));
            assert!(client_frame(&f[..used - 1]).is_none());
        }
    }

    #[test]
    fn headers_are_found_whatever_their_case() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: abc==\r\n\r\n";
        assert_eq!(header(head, "sec-websocket-key"), Some("abc=="));
        assert_eq!(header(head, "upgrade"), None);
    }
}

//! Optional limits on connections: per remote address, and a deadline to authenticate.
//!
//! Both are off by default, as in audiobookshelf. Behind a reverse proxy every connection comes
//! from the proxy's address, so `--trust-proxy` takes the client's from `X-Forwarded-For`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub max_connections_per_ip: Option<usize>,
    pub trust_proxy: bool,
    pub auth_timeout: Option<Duration>,
}

/// Open connections per remote address.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnectionCounts {
    /// Counts a connection from `ip` unless it would exceed `max`.
    pub fn try_add(&self, ip: IpAddr, max: usize) -> bool {
        let mut counts = self.counts.lock().unwrap();
        let n = counts.entry(ip).or_default();
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    pub fn remove(&self, ip: IpAddr) {
        let mut counts = self.counts.lock().unwrap();
        if let Some(n) = counts.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&ip);
            }
        }
    }
}

/// The client's address: the first `X-Forwarded-For` hop when the proxy is trusted, else the peer.
pub fn client_ip(parts: &axum::http::request::Parts, trust_proxy: bool) -> Option<IpAddr> {
    if trust_proxy
        && let Some(ip) = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return Some(ip);
    }
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let c = ConnectionCounts::default();
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(c.try_add(ip, 2));
        assert!(c.try_add(ip, 2));
        assert!(!c.try_add(ip, 2));
        c.remove(ip);
        assert!(c.try_add(ip, 2));
    }

    #[test]
    fn forwarded_for_only_when_trusted() {
        let req = axum::http::Request::builder()
            .header("x-forwarded-for", "203.0.113.7, 10.0.0.1")
            .extension(axum::extract::ConnectInfo::<SocketAddr>(
                "127.0.0.1:5000".parse().unwrap(),
            ))
            .body(())
            .unwrap();
        let (parts, _) = req.into_parts();
        assert_eq!(
            client_ip(&parts, true),
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(client_ip(&parts, false), Some("127.0.0.1".parse().unwrap()));
    }
}

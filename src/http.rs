//! The HTTP side: the socket paths, `/healthz`, and the page in `static/`.
//!
//! socketioxide answers one request path. audiobookshelf's clients use two (`/socket.io` and
//! `${ROUTER_BASE_PATH}/socket.io`), and the mobile app sometimes a third (`//socket.io`). Rather
//! than run a server per path, requests are rewritten onto the root before anything routes them,
//! so both paths reach one Socket.IO server and one set of rooms.

use crate::state::App;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri};
use axum::response::{Html, IntoResponse, Json};
use axum::routing::{get, post};
use serde_json::json;
use socketioxide::adapter::Adapter;
use socketioxide::layer::SocketIoLayer;
use std::net::SocketAddr;
use tower::ServiceExt;
use tower::util::MapRequestLayer;
use tower_http::cors::{Any, CorsLayer};

const INDEX: &str = include_str!("../static/index.html");

/// The path Socket.IO is served on, once `strip_base` has mapped the other socket paths onto it.
pub const SOCKET_PATH: &str = "/socket.io";

/// The whole HTTP service: `base_path` is `ROUTER_BASE_PATH` (empty to serve the root only).
pub fn router<A: Adapter>(app: App, socket_layer: SocketIoLayer<A>, base_path: String) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers(Any);
    let inner = Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/api/socket/emit", post(crate::api::emit))
        .fallback(not_found)
        .with_state(app)
        .layer(socket_layer)
        // Between axum's routing and socketioxide: see `socket_head`.
        .layer(MapRequestLayer::new(socket_head))
        .layer(cors);
    let base_path = normalize_base(&base_path);
    Router::new().fallback_service(inner.map_request(move |req| strip_base(req, &base_path)))
}

/// `/audiobookshelf/` and `audiobookshelf` both mean `/audiobookshelf`; `/` means none.
fn normalize_base(base: &str) -> String {
    let trimmed = base.trim().trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

/// Maps `{base}/x` and `//socket.io/x` onto `/x` and `/socket.io/x`.
fn strip_base(mut req: Request, base: &str) -> Request {
    let path = req.uri().path();
    let rest = if !base.is_empty() && path.starts_with(base) && path[base.len()..].starts_with('/')
    {
        Some(&path[base.len()..])
    } else {
        None
    };
    let rest = rest.unwrap_or(path);
    let rest = if rest.starts_with("//socket.io") {
        &rest[1..]
    } else {
        rest
    };
    if rest.len() != path.len() {
        let pq = match req.uri().query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_owned(),
        };
        let mut parts = req.uri().clone().into_parts();
        if let Ok(pq) = pq.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    req
}

/// Leaves a Socket.IO request only the extensions a socket needs: hyper's upgrade handle and the
/// client's address (`limits::client_ip`). engineioxide keeps a websocket's request head for the
/// socket's whole life, and axum's routing adds extensions of its own on the way (its URL
/// parameters among them): 0.37 KB per idle socket in a heap profile (BENCHMARKS.md). The other
/// routes keep theirs.
fn socket_head(mut req: Request) -> Request {
    if req.uri().path().starts_with(SOCKET_PATH) {
        let upgrade = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
        let remote = req
            .extensions_mut()
            .remove::<axum::extract::ConnectInfo<SocketAddr>>();
        // A fresh map: clearing the old one would keep its grown allocation.
        let mut kept = axum::http::Extensions::new();
        if let Some(upgrade) = upgrade {
            kept.insert(upgrade);
        }
        if let Some(remote) = remote {
            kept.insert(remote);
        }
        *req.extensions_mut() = kept;
    }
    req
}

async fn index() -> Html<&'static str> {
    Html(INDEX)
}

async fn healthz(State(app): State<App>) -> impl IntoResponse {
    match app.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({
                "status": "ok",
                "database": "ok",
                "sockets": app.presence.socket_count(),
                "revocation": app.revocation_stats.view(&app.revocation),
                "cluster": app.cluster.health(),
                "bridge": app.bridge.health(),
            })),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "degraded", "database": e.to_string() })),
        ),
    }
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, Json(json!({ "error": "Not found" })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Routing(&'static str);

    fn head(path: &str) -> Request {
        let mut req = Request::builder()
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let remote: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(remote));
        req.extensions_mut().insert(Routing("added by routing"));
        socket_head(req)
    }

    #[test]
    fn socket_requests_keep_only_what_a_socket_needs() {
        let req = head("/socket.io/?EIO=4&transport=websocket");
        let remote = req
            .extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|c| c.0.to_string());
        assert_eq!(remote.as_deref(), Some("10.0.0.7:5000"));
        assert_eq!(req.extensions().get::<Routing>(), None);
        assert_eq!(req.extensions().len(), 1);

        let req = head("/api/socket/emit");
        assert_eq!(
            req.extensions().get::<Routing>(),
            Some(&Routing("added by routing"))
        );
        assert_eq!(req.extensions().len(), 2);
    }

    fn map(path: &str, base: &str) -> String {
        let req = Request::builder()
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap();
        strip_base(req, base).uri().to_string()
    }

    #[test]
    fn socket_paths_map_onto_the_root() {
        let b = "/audiobookshelf";
        assert_eq!(
            map("/audiobookshelf/socket.io/?EIO=4&transport=websocket", b),
            "/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(map("/socket.io/?EIO=4", b), "/socket.io/?EIO=4");
        assert_eq!(map("//socket.io/?EIO=4", b), "/socket.io/?EIO=4");
        assert_eq!(
            map("/audiobookshelf//socket.io/?EIO=4", b),
            "/socket.io/?EIO=4"
        );
        assert_eq!(
            map("/audiobookshelfx/socket.io/", b),
            "/audiobookshelfx/socket.io/"
        );
        assert_eq!(
            map("/audiobookshelf/socket.io/", ""),
            "/audiobookshelf/socket.io/"
        );
        assert_eq!(map("/audiobookshelf/healthz", b), "/healthz");
    }

    #[test]
    fn base_paths() {
        assert_eq!(normalize_base("/audiobookshelf/"), "/audiobookshelf");
        assert_eq!(normalize_base("audiobookshelf"), "/audiobookshelf");
        assert_eq!(normalize_base(""), "");
        assert_eq!(normalize_base("/"), "");
    }
}

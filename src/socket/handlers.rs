//! What each client event does (`CONTRACT.md` sections 2 to 4).

use super::handle::Sock;
use super::session::{Identity, Session};
use crate::auth::{AuthError, Authenticated};
use crate::bridge::Close;
use crate::fanout::Target;
use crate::presence::PublicUser;
use crate::rooms;
use crate::state::App;
use entity::AbsDate;
use serde_json::{Value, json};
use socketioxide::ParserError;
use std::sync::Arc;
use std::time::Instant;

/// The token of an `auth` payload: the string itself, or `{ token: "<string>" }`.
fn token_of(data: &Result<Value, ParserError>) -> Option<&str> {
    match data.as_ref().ok()? {
        Value::String(t) => Some(t),
        Value::Object(o) => o.get("token")?.as_str(),
        _ => None,
    }
}

/// A token found in the handshake: the CONNECT auth payload `{ token }`, an
/// `Authorization: Bearer` header, or a `token` query parameter, in that order. `Some(None)` is a
/// handshake that tried to give a token but gave something else.
pub fn handshake_token(
    parts: &axum::http::request::Parts,
    connect_auth: Result<Value, ParserError>,
) -> Option<Option<String>> {
    if let Ok(Value::Object(auth)) = &connect_auth
        && let Some(token) = auth.get("token")
    {
        return Some(token.as_str().map(str::to_owned));
    }
    if let Some(bearer) = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
    {
        return Some(Some(bearer.trim().to_owned()));
    }
    let query = parts.uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| Some(v.into_owned()))
}

pub async fn auth(
    app: App,
    s: Sock,
    session: Arc<Session>,
    data: Result<Value, ParserError>,
    at: Instant,
) {
    let token = token_of(&data).map(str::to_owned);
    auth_token(app, s, session, token, at).await
}

/// Authenticates with `token` (`None`: the client sent something that is not a token).
pub async fn auth_token(
    app: App,
    s: Sock,
    session: Arc<Session>,
    token: Option<String>,
    at: Instant,
) {
    if !session.allow_attempt(at) {
        tracing::info!(sid = %s.id(), "auth refused: too many attempts");
        s.emit("auth_failed", &json!({ "message": "Too many attempts" }));
        return;
    }
    let result = match token {
        Some(token) => app.auth.authenticate(&token).await,
        None => Err(AuthError::InvalidToken("payload is not a token")),
    };
    match result {
        Ok(authenticated) => accept(&app, &s, session, authenticated).await,
        Err(e) => {
            match &e {
                AuthError::Unavailable(_) => {
                    tracing::warn!(sid = %s.id(), error = %e, "auth failed")
                }
                _ => tracing::info!(sid = %s.id(), reason = %e, "auth failed"),
            }
            s.emit("auth_failed", &json!({ "message": e.message() }));
        }
    }
}

/// Joins the socket to its rooms and sends what audiobookshelf sends on success.
async fn accept(app: &App, s: &Sock, session: Arc<Session>, a: Authenticated) {
    let user = PublicUser::from_model(&a.user);
    let is_admin = a.user.is_admin();
    let identity = Identity {
        user_id: a.user.id.clone(),
        username: a.user.username.clone(),
        is_admin,
        credential: a.credential,
    };
    let previous = session.set_identity(Some(identity));
    if let Some(prev) = previous.as_ref().filter(|p| p.user_id != a.user.id) {
        s.leave(&rooms::user(&prev.user_id));
        app.bridge.detach(&prev.user_id, s.id(), Close::AfterGrace);
    }
    s.join(vec![
        rooms::AUTHENTICATED.to_owned(),
        rooms::user(&a.user.id),
    ]);
    if is_admin {
        s.join(vec![rooms::ADMINS.to_owned()]);
    } else {
        s.leave(rooms::ADMINS);
        stop_listening(app, s, &session);
    }
    app.registry.insert(s.clone(), session);
    app.bridge
        .attach(app, &a.user.id, a.user.username.as_deref(), s.id());
    tracing::info!(sid = %s.id(), user = ?a.user.username, "socket authenticated");

    if let Some(switched_from) = app.presence.join(s.id(), user.clone()) {
        to_admins(app, "user_offline", &switched_from).await;
    }
    // Before `lastSeen` moves: admins see the previous value, as in audiobookshelf.
    to_admins(app, "user_online", &user).await;

    let now = AbsDate::now();
    app.writer.seen(&a.user.id, now);
    app.presence.set_last_seen(&a.user.id, now.millis());

    let mut init = json!({ "userId": a.user.id, "username": a.user.username });
    if is_admin {
        init["usersOnline"] = json!(app.users_online().await);
    }
    s.emit("init", &init);
}

pub async fn to_admins(app: &App, event: &str, user: &PublicUser) {
    // The admins target needs no database, so this cannot fail.
    let _ = app.fanout().emit(&Target::Admins, event, Some(user)).await;
}

/// JavaScript's truthiness of an optional value (`undefined` is `None`).
fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(_) => true,
    }
}

/// JavaScript's `payload.message || ''`.
fn message_or_empty(data: &Result<Value, ParserError>) -> Value {
    match data.as_ref().ok().and_then(|d| d.get("message")) {
        Some(v) if truthy(Some(v)) => v.clone(),
        _ => json!(""),
    }
}

pub async fn message_all_users(
    app: App,
    _s: Sock,
    session: Arc<Session>,
    data: Result<Value, ParserError>,
) {
    if !session.is_admin() {
        return;
    }
    let message = message_or_empty(&data);
    if let Err(e) = app
        .fanout()
        .emit(&Target::All, "admin_message", Some(&message))
        .await
    {
        tracing::warn!(error = %e, "admin_message not sent");
    }
}

pub async fn search_covers(
    app: App,
    s: Sock,
    session: Arc<Session>,
    data: Result<Value, ParserError>,
) {
    let payload = data.ok();
    let field = |name: &str| payload.as_ref().and_then(|p| p.get(name)).cloned();
    let request_id = field("requestId").unwrap_or(Value::Null);
    if !session.is_authenticated() {
        s.emit(
            "cover_search_error",
            &json!({ "requestId": request_id, "error": "Unauthorized" }),
        );
        return;
    }
    let error = if !truthy(field("requestId").as_ref()) || !truthy(field("title").as_ref()) {
        "Invalid request parameters"
    } else if !app.bridge.is_on() {
        "Cover search is not available on this server"
    } else if let Some(me) = session.identity()
        && app.bridge.forward(
            &me.user_id,
            s.id(),
            "search_covers",
            vec![payload.clone().unwrap_or_default()],
        )
    {
        // audiobookshelf answers on the user's upstream connection; the bridge routes the
        // replies back to this socket by requestId.
        return;
    } else {
        crate::bridge::UNAVAILABLE
    };
    s.emit(
        "cover_search_error",
        &json!({ "requestId": request_id, "error": error }),
    );
}

pub async fn set_log_listener(
    app: App,
    s: Sock,
    session: Arc<Session>,
    data: Result<Value, ParserError>,
) {
    if !session.is_admin() {
        return;
    }
    let Some(level) = data
        .ok()
        .and_then(|v| v.as_u64())
        .filter(|l| *l <= u64::from(crate::logging::MAX_LEVEL))
    else {
        return;
    };
    stop_listening(&app, &s, &session);
    let level = level as u8;
    s.join(vec![crate::logging::room(level)]);
    *session.log_level.lock().unwrap() = Some(level);
    app.log_listeners.add(level);
}

pub async fn remove_log_listener(
    app: App,
    s: Sock,
    session: Arc<Session>,
    _data: Result<Value, ParserError>,
) {
    stop_listening(&app, &s, &session);
}

/// Ends a socket's `log` events, if it had any.
pub fn stop_listening(app: &App, s: &Sock, session: &Session) {
    if let Some(level) = session.log_level.lock().unwrap().take() {
        s.leave(&crate::logging::room(level));
        app.log_listeners.remove(level);
    }
}

pub async fn cancel_scan(
    app: App,
    s: Sock,
    session: Arc<Session>,
    data: Result<Value, ParserError>,
) {
    let Some(me) = session.identity().filter(|i| i.is_admin) else {
        return;
    };
    let library = data.ok().unwrap_or_default();
    if !app
        .bridge
        .forward(&me.user_id, s.id(), "cancel_scan", vec![library.clone()])
    {
        tracing::info!(
            ?library,
            "cancel_scan received; no library server is reachable"
        );
    }
}

pub async fn cancel_cover_search(
    app: App,
    s: Sock,
    session: Arc<Session>,
    data: Result<Value, ParserError>,
) {
    // Without a bridge no cover search ever runs here, so there is nothing to cancel.
    if let Some(me) = session.identity() {
        let request_id = data.ok().unwrap_or_default();
        app.bridge
            .forward(&me.user_id, s.id(), "cancel_cover_search", vec![request_id]);
    }
}

pub async fn disconnect(app: App, s: Sock, session: Arc<Session>) {
    if let Some(user) = end_authentication(&app, &s, &session, Close::AfterGrace) {
        tracing::info!(sid = %s.id(), user = ?user.username, "authenticated socket disconnected");
        to_admins(&app, "user_offline", &user).await;
    }
}

/// Forgets a socket's authentication (identity, log listening, registry, presence, its share
/// of the user's upstream link); returns its user when it was online, for the `user_offline`
/// the caller sends.
pub fn end_authentication(
    app: &App,
    s: &Sock,
    session: &Session,
    close: Close,
) -> Option<PublicUser> {
    if let Some(previous) = session.set_identity(None) {
        app.bridge.detach(&previous.user_id, s.id(), close);
    }
    stop_listening(app, s, session);
    app.registry.remove(s.id());
    app.presence.leave(s.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_strings_or_token_objects_only() {
        assert_eq!(token_of(&Ok(json!("abc"))), Some("abc"));
        assert_eq!(token_of(&Ok(json!({"token": "abc"}))), Some("abc"));
        for bad in [
            json!(42),
            json!({}),
            json!(null),
            json!(["abc"]),
            json!({"token": 1}),
        ] {
            assert_eq!(token_of(&Ok(bad)), None);
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,20}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("token".to_owned()),
                        Just("message".to_owned()),
                        Just("requestId".to_owned()),
                        Just("title".to_owned()),
                        ".{0,6}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Every payload of every event is handled without a panic, and only a string (bare or
        /// as `token`) is ever taken for a token.
        #[test]
        fn payload_handling(v in json_value()) {
            let data: Result<Value, ParserError> = Ok(v.clone());
            let token = token_of(&data);
            match &v {
                Value::String(s) => proptest::prop_assert_eq!(token, Some(s.as_str())),
                Value::Object(o) => proptest::prop_assert_eq!(token, o.get("token").and_then(Value::as_str)),
                _ => proptest::prop_assert_eq!(token, None),
            }
            let message = message_or_empty(&data);
            if !v.is_object() {
                proptest::prop_assert_eq!(message, json!(""));
            }
        }
    }

    #[test]
    fn message_follows_javascript_truthiness() {
        assert_eq!(message_or_empty(&Ok(json!({"message": "hi"}))), json!("hi"));
        assert_eq!(message_or_empty(&Ok(json!({"message": 5}))), json!(5));
        assert_eq!(message_or_empty(&Ok(json!({"message": {}}))), json!({}));
        for empty in [
            json!("hi"),
            json!(null),
            json!({}),
            json!({"message": ""}),
            json!({"message": 0}),
            json!({"message": false}),
        ] {
            assert_eq!(message_or_empty(&Ok(empty)), json!(""));
        }
    }
}

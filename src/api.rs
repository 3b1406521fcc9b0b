//! The publishing API: `POST {base}/api/socket/emit` (`CONTRACT.md` section 6).
//!
//! The library server and scripts send `{ event, data, to }`; the event goes out through
//! [`crate::fanout`] with audiobookshelf's delivery rules. Admins only (a root or admin user's
//! access token, legacy token or API key). The caller is authenticated before the body is read,
//! and the body is read only up to the limit, so an oversized one costs nothing. Every malformed
//! body is a `400` naming the problem; axum's own rejections (415, 422) never answer here.

use crate::access::ItemAccess;
use crate::auth::AuthError;
use crate::fanout::Target;
use crate::state::App;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Map, Value, json};

/// Event names the client library reserves for itself; emitting them would confuse every client.
pub const RESERVED: [&str; 8] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "init",
    "auth_failed",
    "newListener",
    "removeListener",
];

/// An error answer: status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(msg: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// The largest body accepted, in bytes (`--max-emit-bytes`).
#[derive(Debug, Clone, Copy)]
pub struct MaxEmitBytes(pub usize);

pub async fn emit(State(app): State<App>, req: Request) -> Result<Json<Value>, ApiError> {
    authorize(&app, req.headers().get(header::AUTHORIZATION).cloned()).await?;
    let limit = app.max_emit_bytes.0;
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let body = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| too_large())?;
    let request = parse(&body)?;
    let to = resolve(&app, request.to).await?;
    let sockets = match &to {
        To::One(target) => {
            app.fanout()
                .emit_counted(target, &request.event, request.data.as_ref())
                .await
        }
        To::Items(items) => {
            let data = match &request.data {
                Some(Value::Array(a)) => a.as_slice(),
                _ => unreachable!("checked by parse"),
            };
            app.fanout().emit_items(items, &request.event, data).await
        }
    }
    .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(json!({ "sockets": sockets })))
}

async fn authorize(app: &App, authorization: Option<HeaderValue>) -> Result<(), ApiError> {
    let unauthorized = |m: &str| ApiError(StatusCode::UNAUTHORIZED, m.to_owned());
    let header =
        authorization.ok_or_else(|| unauthorized("missing Authorization: Bearer <token>"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("Authorization must be Bearer <token>"))?;
    match app.auth.authenticate(token).await {
        Ok(a) if a.user.is_admin() => Ok(()),
        Ok(_) => Err(ApiError(StatusCode::FORBIDDEN, "admins only".into())),
        Err(e @ AuthError::Unavailable(_)) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            e.message().into(),
        )),
        Err(e) => Err(unauthorized(e.message())),
    }
}

/// A target with its item descriptors looked up.
#[derive(Debug)]
enum To {
    One(Target),
    Items(Vec<ItemAccess>),
}

/// A target as the body gives it; descriptors by id still need the database.
#[derive(Debug)]
enum RawTo {
    One(Target),
    Item(Descriptor),
    Items(Vec<Descriptor>),
}

#[derive(Debug)]
struct EmitRequest {
    event: String,
    data: Option<Value>,
    to: RawTo,
}

async fn resolve(app: &App, to: RawTo) -> Result<To, ApiError> {
    Ok(match to {
        RawTo::One(target) => To::One(target),
        RawTo::Item(d) => To::One(Target::Item(lookup(app, d).await?)),
        RawTo::Items(ds) => {
            let mut items = Vec::with_capacity(ds.len());
            for d in ds {
                items.push(lookup(app, d).await?);
            }
            To::Items(items)
        }
    })
}

async fn lookup(app: &App, d: Descriptor) -> Result<ItemAccess, ApiError> {
    match d {
        Descriptor::Item(item) => Ok(item),
        Descriptor::Id(id) => app
            .store
            .item_access(&id)
            .await
            .map_err(|e| {
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("database unavailable: {e}"),
                )
            })?
            .ok_or_else(|| ApiError::bad(format!("unknown library item id {id:?}"))),
    }
}

/// An item descriptor, before ids are looked up.
#[derive(Debug)]
enum Descriptor {
    Id(String),
    Item(ItemAccess),
}

fn parse(body: &[u8]) -> Result<EmitRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("body is not JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(ApiError::bad("body must be a JSON object"));
    };
    let event = match obj.remove("event") {
        Some(Value::String(e)) if !e.is_empty() => e,
        Some(_) => return Err(ApiError::bad("\"event\" must be a non-empty string")),
        None => return Err(ApiError::bad("missing \"event\"")),
    };
    if RESERVED.contains(&event.as_str()) {
        return Err(ApiError::bad(format!("event name {event:?} is reserved")));
    }
    let data = obj.remove("data");
    let to = match obj.remove("to") {
        Some(Value::Object(to)) => to,
        Some(_) => return Err(ApiError::bad("\"to\" must be an object")),
        None => return Err(ApiError::bad("missing \"to\"")),
    };
    if let Some(extra) = obj.keys().next() {
        return Err(ApiError::bad(format!("unknown field {extra:?}")));
    }
    let to = parse_target(to)?;
    if let RawTo::Items(items) = &to {
        match &data {
            Some(Value::Array(a)) if a.len() == items.len() => {}
            _ => {
                return Err(ApiError::bad(
                    "with \"items\", \"data\" must be an array of the same length",
                ));
            }
        }
    }
    Ok(EmitRequest { event, data, to })
}

fn parse_target(to: Map<String, Value>) -> Result<RawTo, ApiError> {
    let mut keys = to.keys();
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(ApiError::bad(
            "\"to\" must name exactly one target: all, library, users, admins, libraryItem or items",
        ));
    };
    let value = &to[key];
    Ok(match key.as_str() {
        "all" if value == &Value::Bool(true) => RawTo::One(Target::All),
        "admins" if value == &Value::Bool(true) => RawTo::One(Target::Admins),
        "all" | "admins" => return Err(ApiError::bad(format!("\"to.{key}\" must be true"))),
        "library" => match value {
            Value::String(l) if !l.is_empty() => RawTo::One(Target::Library(l.clone())),
            _ => return Err(ApiError::bad("\"to.library\" must be a library id")),
        },
        "users" => {
            let ids = value
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| ApiError::bad("\"to.users\" must be an array of user ids"))?;
            RawTo::One(Target::Users(ids))
        }
        "libraryItem" => RawTo::Item(descriptor(value, "to.libraryItem")?),
        "items" => {
            let list = value.as_array().ok_or_else(|| {
                ApiError::bad("\"to.items\" must be an array of item descriptors")
            })?;
            RawTo::Items(
                list.iter()
                    .enumerate()
                    .map(|(i, d)| descriptor(d, &format!("to.items[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        }
        other => return Err(ApiError::bad(format!("unknown target {other:?}"))),
    })
}

fn descriptor(value: &Value, at: &str) -> Result<Descriptor, ApiError> {
    let bad = || {
        ApiError::bad(format!(
            "\"{at}\" must be {{\"id\": \"...\"}} or {{\"libraryId\": \"...\", \"tags\": [...], \"explicit\": bool}}"
        ))
    };
    let obj = value.as_object().ok_or_else(bad)?;
    if let Some(id) = obj.get("id") {
        return match (id, obj.len()) {
            (Value::String(id), 1) if !id.is_empty() => Ok(Descriptor::Id(id.clone())),
            _ => Err(bad()),
        };
    }
    if obj
        .keys()
        .any(|k| !matches!(k.as_str(), "libraryId" | "tags" | "explicit"))
    {
        return Err(bad());
    }
    let item: ItemAccess = serde_json::from_value(value.clone()).map_err(|_| bad())?;
    if item.library_id.is_empty() {
        return Err(bad());
    }
    Ok(Descriptor::Item(item))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        match parse(body.as_bytes()) {
            Ok(r) => panic!("accepted {body}: {r:?}"),
            Err(ApiError(status, msg)) => {
                assert_eq!(status, StatusCode::BAD_REQUEST);
                msg
            }
        }
    }

    #[test]
    fn every_target_parses() {
        for to in [
            r#"{"all":true}"#,
            r#"{"admins":true}"#,
            r#"{"library":"lib"}"#,
            r#"{"users":["a","b"]}"#,
            r#"{"users":[]}"#,
            r#"{"libraryItem":{"libraryId":"lib","tags":["x"],"explicit":true}}"#,
            r#"{"libraryItem":{"libraryId":"lib"}}"#,
            r#"{"libraryItem":{"id":"item"}}"#,
        ] {
            let body = format!(r#"{{"event":"e","data":1,"to":{to}}}"#);
            assert!(parse(body.as_bytes()).is_ok(), "{body}");
        }
        let r =
            parse(br#"{"event":"e","data":[1,2],"to":{"items":[{"id":"a"},{"libraryId":"l"}]}}"#)
                .unwrap();
        assert!(matches!(r.to, RawTo::Items(ref v) if v.len() == 2));
        let r = parse(br#"{"event":"e","to":{"all":true}}"#).unwrap();
        assert_eq!(r.data, None, "data is optional");
    }

    #[test]
    fn malformed_bodies_name_the_problem() {
        assert!(err("not json").contains("not JSON"));
        assert!(err("[]").contains("object"));
        assert!(err(r#"{"to":{"all":true}}"#).contains("missing \"event\""));
        assert!(err(r#"{"event":5,"to":{"all":true}}"#).contains("\"event\""));
        assert!(err(r#"{"event":"e"}"#).contains("missing \"to\""));
        assert!(err(r#"{"event":"e","to":"all"}"#).contains("\"to\" must be an object"));
        assert!(err(r#"{"event":"e","to":{}}"#).contains("exactly one"));
        assert!(err(r#"{"event":"e","to":{"all":true,"admins":true}}"#).contains("exactly one"));
        assert!(err(r#"{"event":"e","to":{"everyone":true}}"#).contains("unknown target"));
        assert!(err(r#"{"event":"e","to":{"all":false}}"#).contains("must be true"));
        assert!(err(r#"{"event":"e","to":{"library":7}}"#).contains("to.library"));
        assert!(err(r#"{"event":"e","to":{"users":"u1"}}"#).contains("to.users"));
        assert!(err(r#"{"event":"e","to":{"users":[1]}}"#).contains("to.users"));
        assert!(
            err(r#"{"event":"e","to":{"libraryItem":{"tags":[]}}}"#).contains("to.libraryItem")
        );
        assert!(
            err(r#"{"event":"e","to":{"libraryItem":{"libraryId":"l","tags":"x"}}}"#)
                .contains("to.libraryItem")
        );
        assert!(
            err(r#"{"event":"e","to":{"libraryItem":{"id":"a","libraryId":"l"}}}"#)
                .contains("to.libraryItem")
        );
        assert!(
            err(r#"{"event":"e","data":[1],"to":{"items":[{"id":"a"},{"id":"b"}]}}"#)
                .contains("same length")
        );
        assert!(err(r#"{"event":"e","data":{},"to":{"items":[]}}"#).contains("same length"));
        assert!(err(r#"{"event":"e","to":{"items":[{"x":1}]}}"#).contains("to.items[0]"));
        assert!(err(r#"{"event":"e","to":{"all":true},"extra":1}"#).contains("unknown field"));
        for name in RESERVED {
            let body = format!(r#"{{"event":"{name}","to":{{"all":true}}}}"#);
            assert!(err(&body).contains("reserved"), "{name}");
        }
    }
}

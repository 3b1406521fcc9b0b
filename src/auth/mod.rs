//! Where a token is checked: from the string a client sent to the user it authenticates.
//!
//! [`token`] verifies the JWT itself; this module adds what needs the database, in the contract's
//! order (`CONTRACT.md` section 2): the user of a user token, or the row, expiry and owner of an API
//! key. Every call reads the database as it is at that moment.

pub mod secret;
pub mod token;

use crate::loader::UserLoader;
use crate::store::Store;
use crate::writer::Writer;
use entity::{AbsDate, users};
use std::time::Duration;
pub use token::{EmptySecret, Secret, TokenError, Verified};

/// How a socket proved who it is; kept for the life of its authentication.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    /// An access or legacy token; `exp` in seconds when it has one.
    UserToken { exp: Option<f64> },
    /// An API key, by its `apiKeys.id`; `exp` is the JWT's, in seconds, when it has one.
    ApiKey { key_id: String, exp: Option<f64> },
}

/// A successful authentication.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user: users::Model,
    pub credential: Credential,
}

/// Why authentication failed; [`AuthError::message`] is what the client is told.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    #[error("user is inactive")]
    InvalidUser,
    #[error("invalid API key: {0}")]
    InvalidApiKey(&'static str),
    #[error("API key expired")]
    ApiKeyExpired,
    #[error("database unavailable: {0}")]
    Unavailable(#[from] sea_orm::DbErr),
}

impl AuthError {
    /// The `auth_failed` message, exactly as audiobookshelf words it.
    pub fn message(&self) -> &'static str {
        match self {
            AuthError::InvalidToken(_) => "Invalid token",
            AuthError::InvalidUser => "Invalid user",
            AuthError::InvalidApiKey(_) => "Invalid API key",
            AuthError::ApiKeyExpired => "API key expired",
            AuthError::Unavailable(_) => "Server busy, try again",
        }
    }
}

impl From<TokenError> for AuthError {
    fn from(e: TokenError) -> Self {
        AuthError::InvalidToken(match e {
            TokenError::Signature => "bad signature or malformed",
            TokenError::NotAnObject => "claims not an object",
            TokenError::BadTimeClaim => "bad time claim",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not yet valid",
            TokenError::Refresh => "refresh token",
            TokenError::NoKeyId => "API key without keyId",
            TokenError::NoUserId => "no userId",
        })
    }
}

/// Checks tokens against the secret and the database.
#[derive(Clone, Debug)]
pub struct Authenticator {
    secret: Secret,
    store: Store,
    users: UserLoader,
    writer: Writer,
}

/// Now, in seconds since the epoch, with millisecond precision (JWT times are in seconds).
pub fn now_secs() -> f64 {
    chrono::Utc::now().timestamp_millis() as f64 / 1000.0
}

impl Authenticator {
    /// `db_wait` bounds each user lookup (the database's busy timeout).
    pub fn new(secret: Secret, store: Store, writer: Writer, db_wait: Duration) -> Self {
        Self {
            secret,
            users: UserLoader::spawn(store.clone(), db_wait),
            store,
            writer,
        }
    }

    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// Authenticates `token` as audiobookshelf would, API keys included.
    pub async fn authenticate(&self, token: &str) -> Result<Authenticated, AuthError> {
        let now = now_secs();
        match self.secret.verify(token, now)? {
            Verified::User { user_id, exp } => {
                let user = self
                    .users
                    .load(&user_id)
                    .await?
                    .ok_or(AuthError::InvalidToken("unknown user"))?;
                if !user.active() {
                    return Err(AuthError::InvalidUser);
                }
                Ok(Authenticated {
                    user,
                    credential: Credential::UserToken { exp },
                })
            }
            Verified::ApiKey { key_id, exp } => {
                let key = self.store.api_key(&key_id).await?;
                let row_expired = key
                    .as_ref()
                    .and_then(|k| k.expires_at)
                    .is_some_and(|at| at.reached(now));
                if token::expired(exp, now) || row_expired {
                    if key.as_ref().is_some_and(|k| k.is_active) {
                        self.writer.deactivate_key(&key_id, AbsDate::now());
                    }
                    return Err(AuthError::ApiKeyExpired);
                }
                let key = key
                    .filter(|k| k.is_active)
                    .ok_or(AuthError::InvalidApiKey("unknown or inactive"))?;
                let owner = match key.user_id.as_deref() {
                    Some(id) => self.users.load(id).await?,
                    None => None,
                };
                let user = owner.ok_or(AuthError::InvalidApiKey("no owner"))?;
                if !user.active() {
                    return Err(AuthError::InvalidUser);
                }
                Ok(Authenticated {
                    user,
                    credential: Credential::ApiKey { key_id, exp },
                })
            }
        }
    }
}

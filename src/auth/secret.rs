//! Where the JWT secret comes from: `JWT_SECRET_KEY`, else `settings['server-settings'].tokenSecret`.
//!
//! On a database abs-socket has just created, a secret is generated and stored the way
//! audiobookshelf does it (256 random bytes, base64: a 344-character string), so that tokens minted
//! by the CLI stay valid across restarts. On an existing audiobookshelf database nothing is written.

use crate::store::Store;
use base64::Engine;
use rand::RngCore;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "the database has no JWT secret (settings 'server-settings' has no tokenSecret); set JWT_SECRET_KEY"
    )]
    Missing,
    #[error("reading the JWT secret: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// Finds the secret; on a fresh database (`may_create`) generates and stores one.
pub async fn load(
    store: &Store,
    from_env: Option<&str>,
    may_create: bool,
) -> Result<String, SecretError> {
    if let Some(s) = from_env.filter(|s| !s.is_empty()) {
        return Ok(s.to_owned());
    }
    if let Some(s) = store.token_secret().await? {
        return Ok(s);
    }
    if !may_create {
        return Err(SecretError::Missing);
    }
    let mut bytes = [0u8; 256];
    rand::rng().fill_bytes(&mut bytes);
    let secret = base64::engine::general_purpose::STANDARD.encode(bytes);
    store.store_token_secret(&secret).await?;
    tracing::info!("generated a new JWT secret and stored it in the database");
    Ok(secret)
}

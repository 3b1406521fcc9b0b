//! The management commands: users, tokens and API keys, written in audiobookshelf's own formats,
//! so that someone without an audiobookshelf server can try abs-socket (and so that a real
//! audiobookshelf reads what they write).

use crate::auth::Secret;
use crate::cli::{ApiKeyCommand, UserAdd, UserCommand};
use crate::store::Store;
use anyhow::{Context, bail};
use entity::{AbsDate, ExtraData, Permissions, api_keys, users};
use serde_json::json;

pub async fn user(store: &Store, secret: &Secret, cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add(add) => add_user(store, secret, add).await,
        UserCommand::List => {
            let users = store.all_users().await?;
            for u in users {
                println!(
                    "{}\t{}\t{}\t{}",
                    u.id,
                    u.username.as_deref().unwrap_or(""),
                    u.kind.as_deref().unwrap_or(""),
                    if u.active() { "active" } else { "inactive" }
                );
            }
            Ok(())
        }
        UserCommand::Token {
            username,
            legacy,
            expires_in,
        } => {
            let user = find_user(store, &username).await?;
            if legacy {
                let token = user
                    .token
                    .filter(|t| !t.is_empty())
                    .with_context(|| format!("user {username:?} has no legacy token"))?;
                println!("{token}");
            } else {
                let iat = chrono::Utc::now().timestamp();
                let exp = iat
                    .checked_add(i64::try_from(expires_in).context("--expires-in is too large")?)
                    .context("--expires-in is too large")?;
                println!(
                    "{}",
                    secret.sign(&json!({
                        "userId": user.id,
                        "username": user.username,
                        "jti": uuid::Uuid::new_v4().to_string(),
                        "type": "access",
                        "iat": iat,
                        "exp": exp,
                    }))
                );
            }
            Ok(())
        }
    }
}

async fn find_user(store: &Store, username: &str) -> anyhow::Result<users::Model> {
    store
        .user_by_name(username)
        .await?
        .with_context(|| format!("no user named {username:?}"))
}

async fn add_user(store: &Store, secret: &Secret, add: UserAdd) -> anyhow::Result<()> {
    if add.username.trim().is_empty() {
        bail!("the username must not be empty");
    }
    if store.user_by_name(&add.username).await?.is_some() {
        bail!("a user named {:?} already exists", add.username);
    }
    let kind = add.kind.as_str();
    let mut permissions = Permissions::defaults_for(kind);
    if !add.libraries.is_empty() {
        permissions.access_all_libraries = false;
        permissions.libraries_accessible = add.libraries;
    }
    if !add.tags.is_empty() {
        permissions.access_all_tags = false;
        permissions.item_tags_selected = add.tags;
        permissions.selected_tags_not_accessible = add.deny_tags;
    }
    if add.no_explicit {
        permissions.access_explicit_content = false;
    }
    let id = uuid::Uuid::new_v4().to_string();
    let now = AbsDate::now();
    let token = secret.sign(&json!({
        "userId": id,
        "username": add.username,
        "iat": now.millis() / 1000,
    }));
    let pash = match add.password {
        Some(p) => Some(bcrypt::hash(p, 8).context("hashing the password")?),
        None => None,
    };
    let user = users::Model {
        id: id.clone(),
        username: Some(add.username.clone()),
        email: None,
        pash,
        kind: Some(kind.to_owned()),
        token: Some(token),
        is_active: Some(!add.inactive),
        is_locked: Some(false),
        last_seen: None,
        permissions: Some(permissions),
        bookmarks: Some(json!([])),
        extra_data: Some(ExtraData {
            old_user_id: None,
            other: serde_json::from_value(json!({ "seriesHideFromContinueListening": [] }))?,
        }),
        created_at: now,
        updated_at: now,
    };
    store.insert_user(user).await?;
    println!("{id}\t{}\t{kind}", add.username);
    Ok(())
}

pub async fn api_key(store: &Store, secret: &Secret, cmd: ApiKeyCommand) -> anyhow::Result<()> {
    match cmd {
        ApiKeyCommand::Create {
            username,
            name,
            expires_in,
        } => {
            if name.trim().is_empty() {
                bail!("the key name must not be empty");
            }
            let user = find_user(store, &username).await?;
            let id = uuid::Uuid::new_v4().to_string();
            let now = AbsDate::now();
            let iat = now.millis() / 1000;
            let mut claims = json!({ "keyId": id, "name": name, "type": "api", "iat": iat });
            let mut expires_at = None;
            if let Some(secs) = expires_in {
                let secs = i64::try_from(secs).context("--expires-in is too large")?;
                let exp = iat.checked_add(secs).context("--expires-in is too large")?;
                claims["exp"] = json!(exp);
                expires_at = Some(
                    AbsDate::from_millis(now.millis().saturating_add(secs.saturating_mul(1000)))
                        .context("--expires-in is too large")?,
                );
            }
            store
                .insert_api_key(api_keys::Model {
                    id: id.clone(),
                    name,
                    description: None,
                    expires_at,
                    last_used_at: None,
                    is_active: true,
                    permissions: None,
                    created_at: now,
                    updated_at: now,
                    user_id: Some(user.id),
                    created_by_user_id: None,
                })
                .await?;
            eprintln!("API key {id} created; it is shown once:");
            println!("{}", secret.sign(&claims));
            Ok(())
        }
        ApiKeyCommand::Deactivate { key } => {
            let row = match store.api_key(&key).await? {
                Some(k) => k,
                None => store
                    .api_key_by_name(&key)
                    .await?
                    .with_context(|| format!("no API key with id or name {key:?}"))?,
            };
            let changed = store.deactivate_api_key(&row.id, AbsDate::now()).await?;
            let state = if changed {
                "deactivated"
            } else {
                "already inactive"
            };
            println!("{}\t{state}", row.id);
            Ok(())
        }
    }
}

/// `abs-socket import FROM`: copies users, API keys and settings from an audiobookshelf database
/// into the database of `global`, which must not itself be an audiobookshelf one.
pub async fn import(global: &crate::cli::Global, from: &std::path::Path) -> anyhow::Result<()> {
    use crate::db::{self, Location};
    let opts = db::Options {
        read_only: true,
        ..db::Options::default()
    };
    let source = db::open(&Location::Explicit(from.display().to_string()), &opts)
        .await
        .context("cannot read the audiobookshelf database")?;
    if let migration::Schema::Existing { missing, .. } = &source.schema
        && missing.iter().any(|t| ["users", "settings"].contains(t))
    {
        bail!("{} holds no audiobookshelf users", from.display());
    }
    let target = Location::resolve(global.database.as_deref(), global.config_path.as_deref());
    let opened = db::open(&target, &db::Options::default()).await?;
    if let migration::Schema::Existing {
        abs_version: Some(v),
        ..
    } = &opened.schema
    {
        bail!(
            "{} is an audiobookshelf {v} database; import only into abs-socket's own store",
            target.display()
        );
    }
    let copied = opened.store.copy_accounts(&source.store).await?;
    println!(
        "imported {} users, {} API keys and {} settings into {}",
        copied.users,
        copied.api_keys,
        copied.settings,
        target.display()
    );
    Ok(())
}

//! Every query abs-socket makes, over the audiobookshelf tables.
//!
//! One place for SQL, so that the socket code never builds a query and a newcomer finds what the
//! server reads and writes without searching. Each read goes to the database as it is now: no
//! caching here, because audiobookshelf keeps writing the same file and a user deactivated a moment
//! ago must not authenticate.

use crate::access::{ItemAccess, UserAccess};
use entity::prelude::*;
use entity::{AbsDate, api_keys, settings, users};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    IntoActiveModel, Iterable, QueryFilter, QuerySelect, Set, TransactionTrait,
};
use serde_json::Value;
use std::collections::HashMap;

/// A user as the revocation sweep sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserState {
    pub active: bool,
    pub kind: Option<String>,
}

impl UserState {
    pub fn is_admin(&self) -> bool {
        users::is_admin_type(self.kind.as_deref())
    }
}

/// An API key as the revocation sweep sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyState {
    pub active: bool,
    pub expires_at: Option<AbsDate>,
    pub user_id: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// A cheap read that fails when the database cannot be read (for `/healthz`).
    pub async fn ping(&self) -> Result<(), DbErr> {
        Users::find().one(&self.db).await.map(|_| ())
    }

    /// Several users at once, by `id` or (for ids not found) `extraData.oldUserId`: one query,
    /// two when some id is an old one.
    pub async fn users_by_ids_or_old_ids(&self, ids: &[&str]) -> Result<Vec<users::Model>, DbErr> {
        let mut found = Users::find()
            .filter(users::Column::Id.is_in(ids.iter().copied()))
            .all(&self.db)
            .await?;
        let present: std::collections::HashSet<&str> =
            found.iter().map(|u| u.id.as_str()).collect();
        let missing: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !present.contains(id))
            .collect();
        if !missing.is_empty() {
            let old_user_id = match self.db.get_database_backend() {
                sea_orm::DbBackend::Postgres => "(\"extraData\"->>'oldUserId')",
                _ => "json_extract(\"extraData\", '$.oldUserId')",
            };
            let old = Users::find()
                .filter(Expr::cust(old_user_id).is_in(missing))
                .all(&self.db)
                .await?;
            drop(present);
            found.extend(old);
        }
        Ok(found)
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<users::Model>, DbErr> {
        Users::find()
            .filter(users::Column::Username.eq(username))
            .one(&self.db)
            .await
    }

    pub async fn all_users(&self) -> Result<Vec<users::Model>, DbErr> {
        Users::find().all(&self.db).await
    }

    /// Every user's id, activity and permissions: what the access rules need.
    pub async fn all_user_access(&self) -> Result<Vec<UserAccess>, DbErr> {
        Ok(Users::find()
            .all(&self.db)
            .await?
            .into_iter()
            .map(|u| UserAccess {
                active: u.active(),
                permissions: u.permissions(),
                id: u.id,
            })
            .collect())
    }

    /// A library item's library, tags and explicit flag, from `libraryItems` and its `books` or
    /// `podcasts` row. `None` when there is no such item.
    pub async fn item_access(&self, id: &str) -> Result<Option<ItemAccess>, DbErr> {
        let Some(item) = LibraryItems::find_by_id(id).one(&self.db).await? else {
            return Ok(None);
        };
        let media_id = item.media_id.unwrap_or_default();
        let (tags, explicit) = match item.media_type.as_deref() {
            Some("podcast") => Podcasts::find_by_id(media_id)
                .one(&self.db)
                .await?
                .map(|m| (m.tags, m.explicit))
                .unwrap_or_default(),
            _ => Books::find_by_id(media_id)
                .one(&self.db)
                .await?
                .map(|m| (m.tags, m.explicit))
                .unwrap_or_default(),
        };
        let tags = tags
            .and_then(|t| serde_json::from_value::<Vec<Value>>(t).ok())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect();
        Ok(Some(ItemAccess {
            library_id: item.library_id.unwrap_or_default(),
            tags,
            explicit: explicit.unwrap_or(false),
        }))
    }

    /// Every user's activity and type, keyed by id: one query, for the revocation sweep.
    pub async fn user_states(&self) -> Result<HashMap<String, UserState>, DbErr> {
        let rows: Vec<(String, Option<bool>, Option<String>)> = Users::find()
            .select_only()
            .columns([
                users::Column::Id,
                users::Column::IsActive,
                users::Column::Kind,
            ])
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, active, kind)| {
                let state = UserState {
                    active: active.unwrap_or(false),
                    kind,
                };
                (id, state)
            })
            .collect())
    }

    /// Every API key's state, keyed by id: one query, for the revocation sweep.
    pub async fn api_key_states(&self) -> Result<HashMap<String, ApiKeyState>, DbErr> {
        let rows: Vec<(String, bool, Option<AbsDate>, Option<String>)> = ApiKeys::find()
            .select_only()
            .columns([
                api_keys::Column::Id,
                api_keys::Column::IsActive,
                api_keys::Column::ExpiresAt,
                api_keys::Column::UserId,
            ])
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, active, expires_at, user_id)| {
                let state = ApiKeyState {
                    active,
                    expires_at,
                    user_id,
                };
                (id, state)
            })
            .collect())
    }

    pub async fn user_count(&self) -> Result<u64, DbErr> {
        use sea_orm::PaginatorTrait;
        Users::find().count(&self.db).await
    }

    pub async fn api_key(&self, id: &str) -> Result<Option<api_keys::Model>, DbErr> {
        ApiKeys::find_by_id(id).one(&self.db).await
    }

    pub async fn api_key_by_name(&self, name: &str) -> Result<Option<api_keys::Model>, DbErr> {
        ApiKeys::find()
            .filter(api_keys::Column::Name.eq(name))
            .one(&self.db)
            .await
    }

    /// Sets `isActive = 0` (and `updatedAt`) on an active key; returns whether a row changed.
    pub async fn deactivate_api_key(&self, id: &str, at: AbsDate) -> Result<bool, DbErr> {
        deactivate_key(&self.db, id, at).await
    }

    /// Writes `lastSeen` and `updatedAt` for several users, and deactivates expired API keys, in
    /// one transaction: all or none.
    pub async fn save_batch(
        &self,
        seen: &[(String, AbsDate)],
        expired_keys: &[(String, AbsDate)],
    ) -> Result<(), DbErr> {
        let txn = self.db.begin().await?;
        for (key_id, at) in expired_keys {
            deactivate_key(&txn, key_id, *at).await?;
        }
        for (user_id, at) in seen {
            Users::update_many()
                .col_expr(users::Column::LastSeen, Expr::value(*at))
                .col_expr(users::Column::UpdatedAt, Expr::value(*at))
                .filter(users::Column::Id.eq(user_id.as_str()))
                .exec(&txn)
                .await?;
        }
        txn.commit().await
    }

    /// `settings['server-settings'].tokenSecret`, when there is one.
    pub async fn token_secret(&self) -> Result<Option<String>, DbErr> {
        let row = Settings::find_by_id(settings::SERVER_SETTINGS)
            .one(&self.db)
            .await?;
        Ok(row
            .and_then(|r| r.value)
            .and_then(|v| {
                v.get("tokenSecret")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .filter(|s| !s.is_empty()))
    }

    /// Stores a generated secret in `server-settings`, keeping whatever else the row holds.
    pub async fn store_token_secret(&self, secret: &str) -> Result<(), DbErr> {
        let now = AbsDate::now();
        let txn = self.db.begin().await?;
        let existing = Settings::find_by_id(settings::SERVER_SETTINGS)
            .one(&txn)
            .await?;
        match existing {
            Some(row) => {
                let mut value = row
                    .value
                    .clone()
                    .unwrap_or_else(|| Value::Object(Default::default()));
                if let Some(obj) = value.as_object_mut() {
                    obj.insert("tokenSecret".into(), Value::String(secret.to_owned()));
                }
                let mut am: settings::ActiveModel = row.into();
                am.value = Set(Some(value));
                am.updated_at = Set(now);
                am.update(&txn).await?;
            }
            None => {
                settings::ActiveModel {
                    key: Set(settings::SERVER_SETTINGS.to_owned()),
                    value: Set(Some(serde_json::json!({ "tokenSecret": secret }))),
                    created_at: Set(now),
                    updated_at: Set(now),
                }
                .insert(&txn)
                .await?;
            }
        }
        txn.commit().await
    }

    pub async fn insert_user(&self, user: users::Model) -> Result<(), DbErr> {
        // Every column is written, as Sequelize does on create.
        let am = user.into_active_model().reset_all();
        Users::insert(am).exec_without_returning(&self.db).await?;
        Ok(())
    }

    pub async fn insert_api_key(&self, key: api_keys::Model) -> Result<(), DbErr> {
        let am = key.into_active_model().reset_all();
        ApiKeys::insert(am).exec_without_returning(&self.db).await?;
        Ok(())
    }
}

/// What [`Store::copy_accounts`] copied.
#[derive(Debug, Default, Clone, Copy)]
pub struct Copied {
    pub users: usize,
    pub api_keys: usize,
    pub settings: usize,
}

impl Store {
    /// Copies every user, API key and setting of `source` here, in one transaction; a row whose
    /// id is already here is overwritten.
    pub async fn copy_accounts(&self, source: &Store) -> Result<Copied, DbErr> {
        let users = Users::find().all(&source.db).await?;
        let keys = ApiKeys::find().all(&source.db).await?;
        let settings = Settings::find().all(&source.db).await?;
        let copied = Copied {
            users: users.len(),
            api_keys: keys.len(),
            settings: settings.len(),
        };
        let txn = self.db.begin().await?;
        upsert_all::<Users>(&txn, users).await?;
        upsert_all::<ApiKeys>(&txn, keys).await?;
        upsert_all::<Settings>(&txn, settings).await?;
        txn.commit().await?;
        Ok(copied)
    }
}

/// Inserts every row of `models`, overwriting the row with the same primary key if there is one.
async fn upsert_all<E>(db: &impl ConnectionTrait, models: Vec<E::Model>) -> Result<(), DbErr>
where
    E: EntityTrait,
    E::Model: IntoActiveModel<E::ActiveModel>,
{
    use sea_orm::sea_query::OnConflict;
    use sea_orm::{IdenStatic, PrimaryKeyToColumn};
    let keys: Vec<E::Column> = E::PrimaryKey::iter().map(|k| k.into_column()).collect();
    let key_names: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
    for model in models {
        E::insert(model.into_active_model().reset_all())
            .on_conflict(
                OnConflict::columns(keys.iter().copied())
                    .update_columns(E::Column::iter().filter(|c| !key_names.contains(&c.as_str())))
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

/// The one `isActive = 0` update, on a connection or inside a transaction.
async fn deactivate_key(db: &impl ConnectionTrait, id: &str, at: AbsDate) -> Result<bool, DbErr> {
    let res = ApiKeys::update_many()
        .col_expr(api_keys::Column::IsActive, Expr::value(false))
        .col_expr(api_keys::Column::UpdatedAt, Expr::value(at))
        .filter(api_keys::Column::Id.eq(id))
        .filter(api_keys::Column::IsActive.eq(true))
        .exec(db)
        .await?;
    Ok(res.rows_affected > 0)
}

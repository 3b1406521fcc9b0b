//! `users`: one row per audiobookshelf account.

use crate::{AbsDate, ExtraData, Permissions};
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "users", rename_all = "camelCase")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub username: Option<String>,
    pub email: Option<String>,
    pub pash: Option<String>,
    /// `root`, `admin`, `user` or `guest`.
    #[sea_orm(column_name = "type")]
    pub kind: Option<String>,
    /// The legacy (non-expiring) JWT of the user.
    pub token: Option<String>,
    pub is_active: Option<bool>,
    pub is_locked: Option<bool>,
    pub last_seen: Option<AbsDate>,
    #[sea_orm(column_type = "Json")]
    pub permissions: Option<Permissions>,
    #[sea_orm(column_type = "Json")]
    pub bookmarks: Option<Json>,
    #[sea_orm(column_type = "Json")]
    pub extra_data: Option<ExtraData>,
    pub created_at: AbsDate,
    pub updated_at: AbsDate,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::api_keys::Entity")]
    ApiKeys,
    #[sea_orm(has_many = "super::sessions::Entity")]
    Sessions,
}

impl Related<super::api_keys::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ApiKeys.def()
    }
}

impl Related<super::sessions::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Sessions.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}

/// Whether a `users.type` value has admin rights: `root` and `admin`.
pub fn is_admin_type(kind: Option<&str>) -> bool {
    matches!(kind, Some("root" | "admin"))
}

impl Model {
    /// NULL is false, as audiobookshelf's `DEFAULT 0` means.
    pub fn active(&self) -> bool {
        self.is_active.unwrap_or(false)
    }

    /// `root` and `admin` have admin rights (audiobookshelf's `isAdminOrUp`).
    pub fn is_admin(&self) -> bool {
        is_admin_type(self.kind.as_deref())
    }

    pub fn permissions(&self) -> Permissions {
        self.permissions.clone().unwrap_or_default()
    }
}

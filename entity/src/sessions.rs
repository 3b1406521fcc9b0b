//! `sessions`: refresh-token sessions of audiobookshelf 2.26+. Read-only here; refresh tokens never
//! authenticate a socket.

use crate::AbsDate;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "sessions", rename_all = "camelCase")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub refresh_token: String,
    pub expires_at: AbsDate,
    pub last_refresh_token: Option<String>,
    pub last_refresh_token_expires_at: Option<AbsDate>,
    pub created_at: AbsDate,
    pub updated_at: AbsDate,
    pub user_id: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::users::Entity",
        from = "Column::UserId",
        to = "super::users::Column::Id",
        on_delete = "Cascade"
    )]
    User,
}

impl Related<super::users::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::User.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}

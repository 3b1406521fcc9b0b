//! `apiKeys`: the API keys of audiobookshelf 2.26+. The JWT itself is never stored, only its `keyId`.

use crate::AbsDate;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "apiKeys", rename_all = "camelCase")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub expires_at: Option<AbsDate>,
    pub last_used_at: Option<AbsDate>,
    pub is_active: bool,
    #[sea_orm(column_type = "Json")]
    pub permissions: Option<Json>,
    pub created_at: AbsDate,
    pub updated_at: AbsDate,
    pub user_id: Option<String>,
    pub created_by_user_id: Option<String>,
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

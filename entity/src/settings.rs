//! `settings`: key/value rows; `server-settings` holds the JWT secret in `value.tokenSecret`.

use crate::AbsDate;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "settings", rename_all = "camelCase")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    #[sea_orm(column_type = "Json")]
    pub value: Option<Json>,
    pub created_at: AbsDate,
    pub updated_at: AbsDate,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// The key of the row that holds the server settings, `tokenSecret` among them.
pub const SERVER_SETTINGS: &str = "server-settings";

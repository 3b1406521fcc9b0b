//! `libraryItems` (read-only): which library an item is in and which media row describes it.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "libraryItems", rename_all = "camelCase")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub library_id: Option<String>,
    pub media_id: Option<String>,
    /// `book` or `podcast`: which of `books` and `podcasts` holds `mediaId`.
    pub media_type: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

//! SeaORM entities of the audiobookshelf tables that abs-socket reads and writes.
//!
//! The tables belong to audiobookshelf: column names, types and storage formats follow what its
//! Sequelize models write (see `CONTRACT.md` section 5), so that a row abs-socket writes reads back
//! unchanged in audiobookshelf. Two value types carry the storage rules: [`AbsDate`] for
//! `DATETIME` columns and the typed JSON columns in [`json`].

pub mod api_keys;
pub mod books;
pub mod date;
pub mod json;
pub mod library_items;
pub mod podcasts;
pub mod sessions;
pub mod settings;
pub mod users;

pub use date::AbsDate;
pub use json::{ExtraData, Permissions};

pub mod prelude {
    pub use super::api_keys::Entity as ApiKeys;
    pub use super::books::Entity as Books;
    pub use super::library_items::Entity as LibraryItems;
    pub use super::podcasts::Entity as Podcasts;
    pub use super::sessions::Entity as Sessions;
    pub use super::settings::Entity as Settings;
    pub use super::users::Entity as Users;
}

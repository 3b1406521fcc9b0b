//! Creates the audiobookshelf tables on a fresh database, and never alters an existing one.
//!
//! audiobookshelf owns its database: it runs its own migrations and would be confused by anything
//! else in the file. So this crate does not use `sea-orm-migration`'s `Migrator`, whose bookkeeping
//! table (`seaql_migrations`) would be a write to a database that is not ours. The rule is simpler:
//! a database holding none of the tables gets Sequelize's own DDL for them, in one transaction; a
//! database that already has `users` is left exactly as it is, and only inspected.
//!
//! On PostgreSQL (abs-socket's own standalone store; audiobookshelf never writes one) the tables
//! are created from the SeaORM entities themselves, with native `timestamptz`, `boolean` and
//! `json` columns, under the same rule: only when `users` is absent.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait};

/// The tables abs-socket reads; `users` and `settings` mark an audiobookshelf database.
pub const TABLES: [&str; 9] = [
    "users",
    "settings",
    "sessions",
    "apiKeys",
    "libraries",
    "libraryFolders",
    "books",
    "podcasts",
    "libraryItems",
];

/// The audiobookshelf versions whose schema this server was checked against.
pub const KNOWN_ABS_VERSIONS: std::ops::RangeInclusive<(u32, u32)> = (2, 26)..=(2, 36);

const SQLITE_DDL: &str = include_str!("sqlite.sql");

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    #[error("backend {0:?} is not supported")]
    Backend(DbBackend),
}

/// What [`ensure_schema`] found, and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schema {
    /// The tables did not exist and were created.
    Created,
    /// An existing database; nothing was written.
    Existing {
        /// `migrationsMeta.version`, when the database has one (every audiobookshelf 2.x does).
        abs_version: Option<String>,
        /// Tables abs-socket uses that this database lacks (an audiobookshelf older than 2.26
        /// has no `apiKeys`, for example).
        missing: Vec<&'static str>,
    },
}

impl Schema {
    /// Whether the audiobookshelf version is one this server knows, when there is one.
    pub fn version_known(&self) -> Option<bool> {
        match self {
            Schema::Existing {
                abs_version: Some(v),
                ..
            } => Some(parse_major_minor(v).is_some_and(|mm| KNOWN_ABS_VERSIONS.contains(&mm))),
            _ => None,
        }
    }
}

fn parse_major_minor(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Creates the tables when the database has none of them; otherwise only reports what is there.
pub async fn ensure_schema(db: &DatabaseConnection) -> Result<Schema, MigrationError> {
    match db.get_database_backend() {
        DbBackend::Sqlite => ensure_sqlite(db).await,
        DbBackend::Postgres => ensure_postgres(db).await,
        other => Err(MigrationError::Backend(other)),
    }
}

/// The tables of a PostgreSQL store, in creation order (foreign keys point backwards).
pub const POSTGRES_TABLES: [&str; 7] = [
    "users",
    "settings",
    "sessions",
    "apiKeys",
    "libraryItems",
    "books",
    "podcasts",
];

async fn ensure_postgres(db: &DatabaseConnection) -> Result<Schema, MigrationError> {
    use entity::prelude::*;
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT table_name::text AS name FROM information_schema.tables WHERE table_schema = current_schema()",
        ))
        .await?;
    let present: Vec<String> = rows
        .iter()
        .filter_map(|r| r.try_get::<String>("", "name").ok())
        .collect();
    if !present.iter().any(|t| t == "users") {
        let schema = sea_orm::Schema::new(DbBackend::Postgres);
        let txn = db.begin().await?;
        for table in [
            schema.create_table_from_entity(Users),
            schema.create_table_from_entity(Settings),
            schema.create_table_from_entity(Sessions),
            schema.create_table_from_entity(ApiKeys),
            schema.create_table_from_entity(LibraryItems),
            schema.create_table_from_entity(Books),
            schema.create_table_from_entity(Podcasts),
        ] {
            txn.execute(&table).await?;
        }
        txn.commit().await?;
        return Ok(Schema::Created);
    }
    let missing = POSTGRES_TABLES
        .iter()
        .copied()
        .filter(|t| !present.iter().any(|p| p == t))
        .collect();
    Ok(Schema::Existing {
        abs_version: None,
        missing,
    })
}

async fn ensure_sqlite(db: &DatabaseConnection) -> Result<Schema, MigrationError> {
    let backend = DbBackend::Sqlite;
    let present = sqlite_tables(db).await?;
    if !present.iter().any(|t| t == "users") {
        let txn = db.begin().await?;
        for stmt in SQLITE_DDL.split(";\n").map(str::trim) {
            let stmt = strip_comments(stmt);
            if !stmt.is_empty() {
                txn.execute_unprepared(&stmt).await?;
            }
        }
        txn.commit().await?;
        return Ok(Schema::Created);
    }
    let missing = TABLES
        .iter()
        .copied()
        .filter(|t| !present.iter().any(|p| p == t))
        .collect();
    let abs_version = if present.iter().any(|t| t == "migrationsMeta") {
        db.query_one_raw(Statement::from_string(
            backend,
            "SELECT `value` FROM `migrationsMeta` WHERE `key` = 'version'",
        ))
        .await?
        .and_then(|row| row.try_get::<String>("", "value").ok())
    } else {
        None
    };
    Ok(Schema::Existing {
        abs_version,
        missing,
    })
}

async fn sqlite_tables(db: &DatabaseConnection) -> Result<Vec<String>, DbErr> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT name FROM sqlite_master WHERE type = 'table'",
        ))
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.try_get::<String>("", "name").ok())
        .collect())
}

fn strip_comments(stmt: &str) -> String {
    stmt.lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .trim_end_matches(';')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let s = |v: &str| Schema::Existing {
            abs_version: Some(v.into()),
            missing: vec![],
        };
        assert_eq!(s("2.36.0").version_known(), Some(true));
        assert_eq!(s("2.26.1").version_known(), Some(true));
        assert_eq!(s("2.37.0").version_known(), Some(false));
        assert_eq!(s("1.9.0").version_known(), Some(false));
        assert_eq!(s("garbage").version_known(), Some(false));
        assert_eq!(Schema::Created.version_known(), None);
    }

    #[test]
    fn the_ddl_holds_every_table() {
        for t in TABLES {
            assert!(
                SQLITE_DDL.contains(&format!("CREATE TABLE `{t}` (")),
                "no DDL for {t}"
            );
        }
    }
}

//! Opening the database: where it is, how it is opened, and what is on it.
//!
//! The file usually belongs to a running audiobookshelf, so it is opened with the least intrusion
//! SQLite allows: the journal mode is never touched (changing it needs an exclusive lock and would
//! leave `-wal`/`-shm` files beside audiobookshelf's database), locks are waited for up to a busy
//! timeout, and nothing is created unless the file is abs-socket's own default one.
//!
//! A `postgres://` URL opens abs-socket's own standalone store instead (for nodes that have no
//! audiobookshelf database beside them): the same entities, with native timestamps.

use crate::store::Store;
use migration::Schema;
use sea_orm::SqlxSqliteConnector;
use sea_orm::sqlx::ConnectOptions;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The file name audiobookshelf gives its database.
pub const DEFAULT_FILE: &str = "absdatabase.sqlite";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "database file {0} does not exist (a file named with --database or DATABASE_URL is never created)"
    )]
    NotFound(PathBuf),
    #[error(
        "{0:?} is not a database URL this build supports (use a path, sqlite://... or postgres://...)"
    )]
    Unsupported(String),
    #[error("cannot create the folder {0}: {1}")]
    Folder(PathBuf, std::io::Error),
    #[error("cannot open {0}: {1}")]
    Open(String, String),
    #[error("{0} is not a readable SQLite database: {1}")]
    NotSqlite(String, String),
}

/// Where the database is, and whether abs-socket may create it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// Named with `--database`/`DATABASE_URL`: must exist.
    Explicit(String),
    /// The default, `absdatabase.sqlite` in `CONFIG_PATH` or the current folder: created if missing.
    Default(PathBuf),
}

impl Location {
    pub fn resolve(database: Option<&str>, config_path: Option<&Path>) -> Self {
        match database.filter(|d| !d.is_empty()) {
            Some(d) => Location::Explicit(d.to_owned()),
            None => Location::Default(
                config_path
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .join(DEFAULT_FILE),
            ),
        }
    }

    /// A name for logs and errors: a path, or a URL without its password.
    pub fn display(&self) -> String {
        match self {
            Location::Explicit(s) if is_postgres(s) => match url::Url::parse(s) {
                Ok(mut u) => {
                    if u.password().is_some() {
                        let _ = u.set_password(Some("***"));
                    }
                    u.to_string()
                }
                Err(_) => "(unparsable PostgreSQL URL)".to_owned(),
            },
            Location::Explicit(s) => s.clone(),
            Location::Default(p) => p.display().to_string(),
        }
    }
}

fn is_postgres(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// How to open the database.
#[derive(Debug, Clone)]
pub struct Options {
    pub busy_timeout: Duration,
    pub max_connections: u32,
    /// Open a SQLite file read-only (the source of `abs-socket import`).
    pub read_only: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(10),
            max_connections: 8,
            read_only: false,
        }
    }
}

/// An open database and what [`migration::ensure_schema`] found on it.
pub struct Opened {
    pub store: Store,
    pub schema: Schema,
}

pub async fn open(location: &Location, opts: &Options) -> Result<Opened, DbError> {
    if let Location::Explicit(url) = location
        && is_postgres(url)
    {
        return open_postgres(location, url, opts).await;
    }
    entity::date::store_natively(false);
    let connect = sqlite_options(location)?
        .read_only(opts.read_only)
        .busy_timeout(opts.busy_timeout)
        // Queries are traced by our own code where useful; sqlx's statement log is noise.
        .disable_statement_logging();
    let pool = SqlitePoolOptions::new()
        .max_connections(opts.max_connections)
        .min_connections(1)
        .acquire_timeout(opts.busy_timeout + Duration::from_secs(5))
        .connect_with(connect)
        .await
        .map_err(|e| DbError::Open(location.display(), e.to_string()))?;
    let db = SqlxSqliteConnector::from_sqlx_sqlite_pool(pool);
    let schema = migration::ensure_schema(&db)
        .await
        .map_err(|e| DbError::NotSqlite(location.display(), e.to_string()))?;
    Ok(Opened {
        store: Store::new(db),
        schema,
    })
}

async fn open_postgres(location: &Location, url: &str, opts: &Options) -> Result<Opened, DbError> {
    let mut connect = sea_orm::ConnectOptions::new(url.to_owned());
    connect
        .max_connections(opts.max_connections)
        .min_connections(1)
        .acquire_timeout(opts.busy_timeout + Duration::from_secs(5))
        .sqlx_logging(false);
    let db = sea_orm::Database::connect(connect)
        .await
        .map_err(|e| DbError::Open(location.display(), e.to_string()))?;
    entity::date::store_natively(true);
    let schema = migration::ensure_schema(&db)
        .await
        .map_err(|e| DbError::Open(location.display(), e.to_string()))?;
    Ok(Opened {
        store: Store::new(db),
        schema,
    })
}

fn sqlite_options(location: &Location) -> Result<SqliteConnectOptions, DbError> {
    match location {
        Location::Default(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| DbError::Folder(dir.to_owned(), e))?;
            }
            Ok(SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true))
        }
        Location::Explicit(s) if s.starts_with("sqlite:") => {
            let opts = SqliteConnectOptions::from_str(s)
                .map_err(|e| DbError::Open(s.clone(), e.to_string()))?;
            let path = opts.get_filename().to_owned();
            if !s.contains("mode=rwc") && !s.contains(":memory:") && !path.exists() {
                return Err(DbError::NotFound(path));
            }
            Ok(opts)
        }
        Location::Explicit(s) if s.contains("://") => Err(DbError::Unsupported(s.clone())),
        Location::Explicit(s) => {
            let path = PathBuf::from(s);
            if !path.exists() {
                return Err(DbError::NotFound(path));
            }
            Ok(SqliteConnectOptions::new().filename(path))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution() {
        assert_eq!(
            Location::resolve(None, None),
            Location::Default(PathBuf::from("./absdatabase.sqlite"))
        );
        assert_eq!(
            Location::resolve(None, Some(Path::new("/config"))),
            Location::Default(PathBuf::from("/config/absdatabase.sqlite"))
        );
        assert_eq!(
            Location::resolve(Some("x.db"), Some(Path::new("/config"))),
            Location::Explicit("x.db".into())
        );
    }

    #[test]
    fn an_explicit_missing_file_is_an_error() {
        let e = sqlite_options(&Location::Explicit("/nonexistent/abs.sqlite".into())).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = sqlite_options(&Location::Explicit(
            "sqlite:///nonexistent/abs.sqlite".into(),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = sqlite_options(&Location::Explicit("mysql://x".into())).unwrap_err();
        assert!(matches!(e, DbError::Unsupported(_)));
    }

    #[test]
    fn a_postgres_password_never_shows() {
        let l = Location::Explicit("postgres://abs:s3cret@db.example:5432/abs".into());
        assert_eq!(l.display(), "postgres://abs:***@db.example:5432/abs");
        assert!(!l.display().contains("s3cret"));
    }
}

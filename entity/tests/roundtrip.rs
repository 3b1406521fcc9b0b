//! Round trips through a real SQLite database with audiobookshelf's DDL: values written in
//! Sequelize's formats read back typed, and typed values write back in exactly those formats.

use entity::prelude::*;
use entity::{AbsDate, users};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, Database, DatabaseConnection, EntityTrait, QueryFilter, Statement,
};

async fn db() -> DatabaseConnection {
    let db = Database::connect("sqlite::memory:").await.unwrap();
    assert_eq!(
        migration::ensure_schema(&db).await.unwrap(),
        migration::Schema::Created
    );
    db
}

async fn raw(db: &DatabaseConnection, sql: &str) -> Vec<sea_orm::QueryResult> {
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
}

#[tokio::test]
async fn users_read_and_write_in_sequelize_formats() {
    let db = db().await;
    db.execute_unprepared(
        r#"INSERT INTO users (id, username, email, pash, type, token, isActive, isLocked, lastSeen, permissions, bookmarks, extraData, createdAt, updatedAt) VALUES
        ('u1', 'tom', NULL, '$2a$08$x', 'user', 'tok', 1, 0, '2026-12-04 13:41:15.866 +00:00', '{"download":true,"accessAllLibraries":false,"librariesAccessible":["lib"],"itemTagsSelected":["family"]}', '[]', '{"seriesHideFromContinueListening":[]}', '2026-12-04 13:05:09 +00:00', '2026-12-04 13:41:15.866 +00:00'),
        ('u2', 'olaf', '', NULL, 'guest', NULL, 0, 0, NULL, NULL, NULL, NULL, '2026-12-04 13:41:05.001 +00:00', '2026-12-04 13:41:05.001 +00:00')"#,
    )
    .await
    .unwrap();

    let tom = Users::find_by_id("u1").one(&db).await.unwrap().unwrap();
    assert_eq!(tom.last_seen.unwrap().millis(), 1_796_391_675_866);
    assert_eq!(
        tom.created_at.to_sequelize(),
        "2026-12-04 13:05:09.000 +00:00",
        "a date without milliseconds"
    );
    assert!(tom.active() && !tom.is_admin());
    let p = tom.permissions();
    assert!(p.download && !p.access_all_libraries);
    assert_eq!(p.libraries_accessible, ["lib"]);

    let olaf = Users::find_by_id("u2").one(&db).await.unwrap().unwrap();
    assert_eq!(olaf.last_seen, None, "NULL reads as None");
    assert_eq!(
        olaf.permissions(),
        Default::default(),
        "NULL JSON is no rights"
    );
    assert!(!olaf.active());

    // Writes: a date, then NULL, in the exact text form.
    let at: AbsDate = "2026-12-04 14:00:00.5 +00:00".parse().unwrap();
    Users::update_many()
        .col_expr(users::Column::LastSeen, Expr::value(at))
        .filter(users::Column::Id.eq("u2"))
        .exec(&db)
        .await
        .unwrap();
    let row = &raw(
        &db,
        "SELECT lastSeen, typeof(lastSeen) AS t FROM users WHERE id = 'u2'",
    )
    .await[0];
    assert_eq!(
        row.try_get::<String>("", "lastSeen").unwrap(),
        "2026-12-04 14:00:00.500 +00:00"
    );
    assert_eq!(row.try_get::<String>("", "t").unwrap(), "text");
    Users::update_many()
        .col_expr(
            users::Column::LastSeen,
            Expr::value(Option::<AbsDate>::None),
        )
        .filter(users::Column::Id.eq("u2"))
        .exec(&db)
        .await
        .unwrap();
    let row = &raw(
        &db,
        "SELECT typeof(lastSeen) AS t FROM users WHERE id = 'u2'",
    )
    .await[0];
    assert_eq!(row.try_get::<String>("", "t").unwrap(), "null");
    let olaf = Users::find_by_id("u2").one(&db).await.unwrap().unwrap();
    assert_eq!(olaf.last_seen, None);
}

#[tokio::test]
async fn booleans_are_integers_and_json_is_compact_text() {
    let db = db().await;
    db.execute_unprepared(
        "INSERT INTO users (id, username, type, isActive, createdAt, updatedAt) VALUES ('u1', 'a', 'root', 1, '2026-12-04 13:41:05.001 +00:00', '2026-12-04 13:41:05.001 +00:00')",
    )
    .await
    .unwrap();
    let mut user = Users::find_by_id("u1").one(&db).await.unwrap().unwrap();
    user.id = "u3".into();
    user.is_active = Some(false);
    user.permissions = Some(entity::Permissions::defaults_for("root"));
    use sea_orm::{ActiveModelTrait, IntoActiveModel};
    Users::insert(user.into_active_model().reset_all())
        .exec_without_returning(&db)
        .await
        .unwrap();
    let row = &raw(
        &db,
        "SELECT isActive, typeof(isActive) AS t, permissions, createdAt FROM users WHERE id = 'u3'",
    )
    .await[0];
    assert_eq!(row.try_get::<i64>("", "isActive").unwrap(), 0);
    assert_eq!(row.try_get::<String>("", "t").unwrap(), "integer");
    let perms: String = row.try_get("", "permissions").unwrap();
    assert!(
        perms.starts_with(r#"{"download":true,"update":true,"delete":true"#),
        "{perms}"
    );
    assert!(!perms.contains(' '), "compact JSON: {perms}");
    assert_eq!(
        row.try_get::<String>("", "createdAt").unwrap(),
        "2026-12-04 13:41:05.001 +00:00"
    );
}

#[tokio::test]
async fn an_existing_database_is_not_touched() {
    let db = db().await;
    let before = raw(&db, "SELECT count(*) AS n FROM sqlite_master").await[0]
        .try_get::<i64>("", "n")
        .unwrap();
    let again = migration::ensure_schema(&db).await.unwrap();
    assert!(
        matches!(again, migration::Schema::Existing { abs_version: None, ref missing } if missing.is_empty())
    );
    let after = raw(&db, "SELECT count(*) AS n FROM sqlite_master").await[0]
        .try_get::<i64>("", "n")
        .unwrap();
    assert_eq!(before, after);
}

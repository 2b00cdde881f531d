//! Migrations as operators apply them: each release's migrations in a session of its own,
//! as the owning role (not a superuser), on top of the previous release's database.

use std::path::Path;

use crate::common::*;
use sqlx::migrate::Migrator;
use sqlx::Connection;

#[tokio::test]
async fn every_migration_applies_in_a_fresh_session_as_the_owner() {
    let template = fresh_database().await; // makes sure the roles exist
    let name = format!("molar_t_{}", uuid::Uuid::new_v4().simple());
    let mut admin = admin_connection("postgres").await;
    sqlx::raw_sql(&format!("CREATE DATABASE {name} OWNER {OWNER_ROLE}"))
        .execute(&mut admin)
        .await
        .expect("create database");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = std::fs::read_dir(&source)
        .expect("migrations directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    assert_eq!(files.len(), molar::db::MIGRATOR.iter().count());
    let release = std::env::temp_dir().join(format!(
        "molar-migrations-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&release).expect("temp dir");
    for file in &files {
        // One more migration each time, applied in a session of its own.
        std::fs::copy(file, release.join(file.file_name().expect("name"))).expect("copy");
        let migrator = Migrator::new(release.as_path())
            .await
            .expect("read migrations");
        let mut conn = sqlx::PgConnection::connect(&owner_url(&name))
            .await
            .expect("connect as owner");
        migrator
            .run(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{} in a fresh session: {e}", file.display()));
        conn.close().await.expect("close");
    }
    let _ = std::fs::remove_dir_all(&release);
    // The result matches a database migrated in one go.
    let columns = |db: String| async move {
        let mut c = admin_connection(&db).await;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = 'public' ORDER BY 1, 2",
        )
        .fetch_all(&mut c)
        .await
        .expect("columns");
        rows
    };
    assert_eq!(columns(name).await, columns(template).await);
}

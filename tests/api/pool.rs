//! The requests' connections: a finished transaction leaves its connection for the next
//! one as it is; an unfinished one is rolled back at once (its locks go with it) and its
//! connection reused; one refused by the session check keeps its connection.

use std::time::Duration;

use molar::config::Config;
use molar::db::Db;
use uuid::Uuid;

use crate::common::*;

/// A pool of one connection on the app's database, so that every transaction gets the same
/// connection unless it was closed.
fn one_connection(app: &TestApp) -> Db {
    let mut vars = app.vars.clone();
    vars.insert("DB_POOL_SIZE".into(), "1".into());
    let config = Config::from_map(vars).expect("config");
    Db::connect_lazy(&config, &server_url(&app.db_name), None).expect("pool")
}

async fn backend(db: &Db, clinic: Uuid) -> i32 {
    let mut tx = db.clinic_tx(clinic).await.expect("begin");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .expect("pid");
    tx.commit().await.expect("commit");
    pid
}

#[tokio::test]
async fn an_unfinished_transaction_releases_its_locks_at_once_and_its_connection_is_reused() {
    let app = spawn().await;
    let owner = app.register_clinic("Locks").await;
    let clinic: Uuid = owner.clinic_id.parse().expect("uuid");
    let db = one_connection(&app);
    let first = backend(&db, clinic).await;
    assert_eq!(
        backend(&db, clinic).await,
        first,
        "committed: the same connection"
    );

    let mut tx = db.clinic_tx(clinic).await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock(7262099)")
        .execute(&mut *tx)
        .await
        .expect("lock");
    drop(tx);
    // Nothing else uses the pool: the lock must go without waiting for the next request.
    let mut admin = app.admin_db().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(7262099)")
            .fetch_one(&mut admin)
            .await
            .expect("try lock");
        if got {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped transaction still holds its lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(backend(&db, clinic).await, first, "rolled back: reused");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_statement_abandoned_midway_leaves_a_clean_connection() {
    let app = spawn().await;
    let owner = app.register_clinic("Midway").await;
    let clinic: Uuid = owner.clinic_id.parse().expect("uuid");
    let db = one_connection(&app);
    let first = backend(&db, clinic).await;

    let mut tx = db.clinic_tx(clinic).await.expect("begin");
    sqlx::query("INSERT INTO operatories (clinic_id, id, name) VALUES ($1, $2, 'Abandoned')")
        .bind(clinic)
        .bind(Uuid::now_v7())
        .execute(&mut *tx)
        .await
        .expect("insert");
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        sqlx::query("SELECT pg_sleep(0.5)").execute(&mut *tx),
    )
    .await;
    assert!(gave_up.is_err(), "the statement was abandoned");
    drop(tx);

    let mut tx = db.clinic_tx(clinic).await.expect("begin");
    let (pid, lag_ms, kept): (i32, f64, i64) = sqlx::query_as(
        "SELECT pg_backend_pid(), \
         (extract(epoch FROM clock_timestamp() - now()) * 1000)::float8, \
         (SELECT count(*) FROM operatories WHERE name = 'Abandoned')",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("after");
    tx.commit().await.expect("commit");
    assert_eq!(
        kept, 0,
        "the abandoned transaction's insert was rolled back"
    );
    assert!(
        lag_ms < 200.0,
        "a fresh transaction, not the old one ({lag_ms:.0} ms)"
    );
    assert_eq!(pid, first, "the connection was drained and reused");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_session_refused_before_begin_keeps_its_connection() {
    let app = spawn().await;
    let owner = app.register_clinic("Refused").await;
    let clinic: Uuid = owner.clinic_id.parse().expect("uuid");
    let user: Uuid = owner.user_id.parse().expect("uuid");
    let db = one_connection(&app);
    let first = backend(&db, clinic).await;
    let refused = db
        .session_tx(clinic, user, 999, "owner", None)
        .await
        .err()
        .expect("a stale credential version is refused");
    assert!(molar::db::is_session_invalid(&refused), "{refused}");
    assert_eq!(backend(&db, clinic).await, first);
    app.stop().await.expect("stop");
}

//! The tenancy invariant, proved from the catalogue and from behaviour: forced row-level
//! security on every tenant table, fail-closed without the clinic setting, and no leak
//! between clinics even on one shared connection.

use crate::common::*;
use molar::config::Config;
use molar::db::Db;
use sqlx::Row;
use uuid::Uuid;

/// Tables that hold no clinic's data (global by design) and so carry no clinic policy.
const GLOBAL_TABLES: &[&str] = &[
    "_sqlx_migrations",
    "security_events",
    "audit_retention",
    // Name words linked to no clinic or patient; only the search function reads it.
    "name_lexicon",
];

async fn db_with_pool(size: u32) -> (Db, String) {
    let name = fresh_database().await;
    let mut vars = base_vars(&name);
    vars.insert("DB_POOL_SIZE".into(), size.to_string());
    let config = Config::from_map(vars).expect("config");
    let db = Db::connect_lazy(&config, &server_url(&name), None).expect("pool");
    (db, name)
}

async fn insert_clinic(db: &Db, name: &str) -> Uuid {
    let id = Uuid::now_v7();
    let mut tx = db.clinic_tx(id).await.expect("begin");
    sqlx::query("INSERT INTO clinics (id, name, timezone, currency) VALUES ($1, $2, 'Europe/Berlin', 'EUR')")
        .bind(id)
        .bind(name)
        .execute(&mut *tx)
        .await
        .expect("insert own clinic");
    tx.commit().await.expect("commit");
    id
}

#[tokio::test]
async fn every_tenant_table_has_forced_row_level_security_and_a_policy() {
    let name = fresh_database().await;
    let mut admin = admin_connection(&name).await;
    let rows = sqlx::query(
        r#"
        SELECT c.relname::text AS name, c.relrowsecurity, c.relforcerowsecurity,
               EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                       AND a.attname = 'clinic_id' AND NOT a.attisdropped) AS has_clinic,
               (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies,
               has_table_privilege('molar_app', c.oid, 'SELECT') AS app_reads,
               EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid
                       AND (0::oid = ANY (p.polroles) OR 'molar_app'::regrole::oid = ANY (p.polroles)))
                   AS app_policy
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
          AND NOT c.relispartition
        "#,
    )
    .fetch_all(&mut admin)
    .await
    .expect("catalogue");
    assert!(!rows.is_empty());
    let mut tenant_tables = 0;
    for row in rows {
        let table: String = row.get("name");
        let has_clinic: bool = row.get("has_clinic");
        if GLOBAL_TABLES.contains(&table.as_str()) {
            assert!(!has_clinic, "{table} is global yet has clinic_id");
            continue;
        }
        tenant_tables += 1;
        assert!(
            has_clinic || table == "clinics",
            "{table} has no clinic_id column"
        );
        assert!(
            row.get::<bool, _>("relrowsecurity"),
            "{table}: RLS not enabled"
        );
        assert!(
            row.get::<bool, _>("relforcerowsecurity"),
            "{table}: RLS not forced"
        );
        assert!(row.get::<i64, _>("policies") > 0, "{table}: no policy");
        // A table the server's role can read needs a policy that applies to it; one only
        // a definer role reads (the search's words) may have its policy for that role.
        assert!(
            !row.get::<bool, _>("app_reads") || row.get::<bool, _>("app_policy"),
            "{table}: molar_app reads it, yet no policy applies to molar_app"
        );
    }
    assert!(tenant_tables >= 1);
    // Partitions inherit the parent's policies only when queried through it; forbid direct grants.
    let partitions_granted: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relispartition
             AND has_table_privilege('molar_app', c.oid, 'SELECT')"#,
    )
    .fetch_one(&mut admin)
    .await
    .expect("partition grants");
    assert_eq!(
        partitions_granted, 0,
        "partitions are reachable only through their parent"
    );
}

#[tokio::test]
async fn the_server_role_owns_nothing_and_bypasses_nothing() {
    let name = fresh_database().await;
    let config = Config::from_map(base_vars(&name)).expect("config");
    let db = Db::connect_lazy(&config, &server_url(&name), None).expect("pool");
    let check = molar::db::role_check(db.pool()).await.expect("role check");
    assert!(check.failures().is_empty(), "{:?}", check.failures());
    assert!(!check.superuser && !check.bypass_rls && !check.owns_tables);
    assert!(check.member_of_app_role);
}

#[tokio::test]
async fn without_the_clinic_setting_nothing_is_visible_or_insertable() {
    let (db, _) = db_with_pool(2).await;
    insert_clinic(&db, "Alpha Dental").await;
    let mut tx = db.unscoped_tx().await.expect("begin");
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM clinics")
        .fetch_one(&mut *tx)
        .await
        .expect("count");
    assert_eq!(visible, 0);
    let insert = sqlx::query(
        "INSERT INTO clinics (id, name, timezone, currency) VALUES ($1, 'Rogue', 'UTC', 'EUR')",
    )
    .bind(Uuid::now_v7())
    .execute(&mut *tx)
    .await;
    let err = insert.expect_err("insert without a clinic must fail");
    let code = err
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.to_string());
    assert_eq!(
        code.as_deref(),
        Some("42501"),
        "row-level security violation"
    );
}

#[tokio::test]
async fn a_hand_written_select_star_sees_only_the_scoped_clinic() {
    let (db, _) = db_with_pool(2).await;
    let a = insert_clinic(&db, "Alpha Dental").await;
    let b = insert_clinic(&db, "Beta Dental").await;
    let mut tx = db.clinic_tx(a).await.expect("begin");
    let ids: Vec<Uuid> = sqlx::query("SELECT * FROM clinics")
        .fetch_all(&mut *tx)
        .await
        .expect("select")
        .iter()
        .map(|r| r.get("id"))
        .collect();
    assert_eq!(ids, vec![a]);
    let other: Option<Uuid> = sqlx::query_scalar("SELECT id FROM clinics WHERE id = $1")
        .bind(b)
        .fetch_optional(&mut *tx)
        .await
        .expect("select other");
    assert!(other.is_none());
    let updated = sqlx::query("UPDATE clinics SET name = 'Hijacked' WHERE id = $1")
        .bind(b)
        .execute(&mut *tx)
        .await
        .expect("update");
    assert_eq!(updated.rows_affected(), 0);
    // Changing the setting inside the transaction is not a way out either: the role
    // cannot write a row for another clinic without that clinic being the setting.
    let moved = sqlx::query("UPDATE clinics SET id = $1 WHERE id = $2")
        .bind(b)
        .bind(a)
        .execute(&mut *tx)
        .await;
    assert!(
        moved.is_err(),
        "re-keying a row to another clinic is refused"
    );
}

#[tokio::test]
async fn alternating_clinics_on_one_connection_never_see_each_other() {
    let (db, _) = db_with_pool(1).await;
    let a = insert_clinic(&db, "Alpha Dental").await;
    let b = insert_clinic(&db, "Beta Dental").await;
    for round in 0..10 {
        let (me, other) = if round % 2 == 0 { (a, b) } else { (b, a) };
        let mut tx = db.clinic_tx(me).await.expect("begin");
        let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM clinics")
            .fetch_all(&mut *tx)
            .await
            .expect("select");
        assert_eq!(ids, vec![me], "round {round}");
        assert!(!ids.contains(&other));
        if round % 3 == 0 {
            tx.rollback().await.expect("rollback");
        } else {
            tx.commit().await.expect("commit");
        }
        // After the transaction, the same connection has no clinic at all.
        let mut bare = db.unscoped_tx().await.expect("begin");
        let after: i64 = sqlx::query_scalar("SELECT count(*) FROM clinics")
            .fetch_one(&mut *bare)
            .await
            .expect("count");
        assert_eq!(
            after, 0,
            "the setting leaked past its transaction in round {round}"
        );
        bare.commit().await.expect("commit");
    }
    assert_eq!(db.stats().size, 1);
}

#[tokio::test]
async fn a_begin_abandoned_midway_leaves_no_transaction_open_for_the_next_request() {
    // A request that goes away while its `BEGIN` is on the wire (the client hung up, the
    // request timed out) must not leave the server's transaction open on the pooled
    // connection: the next request given that connection would join it, and take its
    // `now()` — every timestamp it writes — from the abandoned one's start. The begin is
    // held on the server by a lock on `users` (the session check reads it) while the
    // caller gives up; one connection, so the next transaction gets the same one.
    let app = spawn().await;
    let owner = app.register_clinic("Abandoned").await;
    let mut vars = app.vars.clone();
    vars.insert("DB_POOL_SIZE".into(), "1".into());
    let config = Config::from_map(vars).expect("config");
    let db = Db::connect_lazy(&config, &server_url(&app.db_name), None).expect("pool");
    let clinic: Uuid = owner.clinic_id.parse().expect("uuid");
    let user: Uuid = owner.user_id.parse().expect("uuid");
    let mut admin = app.admin_db().await;
    let version: i32 = sqlx::query_scalar("SELECT auth_version FROM users WHERE id = $1")
        .bind(user)
        .fetch_one(&mut admin)
        .await
        .expect("version");
    sqlx::query("BEGIN")
        .execute(&mut admin)
        .await
        .expect("begin");
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut admin)
        .await
        .expect("lock");
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        db.session_tx(clinic, user, version, "owner", None),
    )
    .await;
    assert!(gave_up.is_err(), "the begin waited for the lock");
    sqlx::query("COMMIT")
        .execute(&mut admin)
        .await
        .expect("unlock");
    // The abandoned begin has finished on the server by now.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut tx = db
        .session_tx(clinic, user, version, "owner", None)
        .await
        .expect("begin");
    let lag_ms: f64 =
        sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp() - now()) * 1000)::float8")
            .fetch_one(&mut *tx)
            .await
            .expect("clock");
    tx.rollback().await.expect("rollback");
    assert!(
        lag_ms < 200.0,
        "the transaction began {lag_ms:.0} ms before it was asked for: it joined the abandoned one"
    );
}

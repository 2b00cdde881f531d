//! Sealing the audit trail in bounded transactions: a backlog larger than one transaction
//! takes several, each within its bounds, the chain stays whole, and two instances sealing
//! at once seal every event exactly once. A list's event is sealed with the ids it returned.

use molar::audit::{seal, seal_chunk, verify, warm_up, SEAL_CHUNK_EVENTS};
use molar::config::Config;
use molar::db::Db;
use std::time::Duration;

use crate::common::*;

/// `n` events of `clinic`, written `age` seconds ago (under a minute: too new for the
/// server's own sealing round, which waits a minute, and settled for a seal that does not
/// wait).
async fn backlog(admin: &mut sqlx::PgConnection, clinic: &str, n: i32, age: i32) {
    sqlx::query(
        "INSERT INTO audit_events (clinic_id, id, at, action, resource_type, outcome, details) \
         SELECT $1::uuid, gen_random_uuid(), now() - make_interval(secs => $3) + g * interval '1 microsecond', \
                'patient.read', 'patient', 'success', jsonb_build_object('n', g) \
         FROM generate_series(1, $2) g",
    )
    .bind(clinic)
    .bind(n)
    .bind(age)
    .execute(admin)
    .await
    .expect("backlog");
}

async fn unsealed(admin: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM audit_events e WHERE NOT EXISTS (SELECT 1 FROM audit_seals s \
         WHERE s.clinic_id = e.clinic_id AND (e.at, e.id) <= (s.to_at, s.to_id))",
    )
    .fetch_one(admin)
    .await
    .expect("count")
}

/// How many seals `clinic`'s chain has.
async fn seals_of(admin: &mut sqlx::PgConnection, clinic: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_seals WHERE clinic_id = $1::uuid")
        .bind(clinic)
        .fetch_one(admin)
        .await
        .expect("seals")
}

/// The one value `sql` selects.
async fn one<T>(conn: &mut sqlx::PgConnection, sql: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sql)
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn db_of(app: &TestApp) -> Db {
    let config = Config::from_map(app.vars.clone()).expect("config");
    Db::connect_lazy(&config, &server_url(&app.db_name), None).expect("db")
}

#[tokio::test]
async fn a_backlog_is_sealed_in_bounded_transactions_and_the_chain_holds() {
    let app = spawn().await;
    let big = app.register_clinic("Backlog").await;
    let small = app.register_clinic("Quiet").await;
    let mut admin = app.admin_db().await;
    let many = SEAL_CHUNK_EVENTS * 2 + SEAL_CHUNK_EVENTS / 2;
    backlog(&mut admin, &big.clinic_id, many, 30).await;
    backlog(&mut admin, &small.clinic_id, 7, 30).await;
    let waiting = unsealed(&mut admin).await;
    assert!(waiting >= i64::from(many) + 7);

    let db = db_of(&app);
    let round = seal(&db, Duration::ZERO).await.expect("seal");
    assert_eq!(round.events, waiting, "every settled event, once");
    assert!(round.transactions >= 3, "{round:?}");
    assert_eq!(unsealed(&mut admin).await, 0);
    let largest: i32 = sqlx::query_scalar("SELECT max(event_count) FROM audit_seals")
        .fetch_one(&mut admin)
        .await
        .expect("largest seal");
    assert!(largest <= SEAL_CHUNK_EVENTS, "a seal of {largest} events");
    let seals_of_big = seals_of(&mut admin, &big.clinic_id).await;
    assert!(
        seals_of_big >= 3,
        "the backlog is chained over several seals"
    );
    assert!(verify(&db).await.expect("verify").is_empty());

    // Nothing new, nothing sealed; new events extend the chain.
    assert_eq!(seal(&db, Duration::ZERO).await.expect("seal").events, 0);
    backlog(&mut admin, &small.clinic_id, 3, 0).await;
    assert_eq!(seal(&db, Duration::ZERO).await.expect("seal").events, 3);
    assert!(verify(&db).await.expect("verify").is_empty());
    app.stop().await.expect("stop");
}

/// The call that opens a round seals nothing, whatever has settled; the round after it
/// seals everything.
#[tokio::test]
async fn the_call_that_opens_a_round_seals_nothing() {
    let app = spawn().await;
    let clinic = app.register_clinic("Warm").await;
    let mut admin = app.admin_db().await;
    backlog(&mut admin, &clinic.clinic_id, 5, 30).await;
    let waiting = unsealed(&mut admin).await;
    let seals = seals_of(&mut admin, &clinic.clinic_id).await;
    let db = db_of(&app);

    let mut tx = db.unscoped_tx().await.expect("begin");
    let chunk = warm_up(&mut tx, Duration::ZERO).await.expect("warm-up");
    tx.commit().await.expect("commit");
    assert_eq!(
        (chunk.seals, chunk.events, chunk.busy),
        (0, 0, false),
        "{chunk:?}"
    );
    assert_eq!(unsealed(&mut admin).await, waiting);
    assert_eq!(seals_of(&mut admin, &clinic.clinic_id).await, seals);

    let round = seal(&db, Duration::ZERO).await.expect("seal");
    assert_eq!(round.events, waiting, "{round:?}");
    assert!(
        round.warm_up > Duration::ZERO && round.transactions >= 1,
        "{round:?}"
    );
    assert_eq!(unsealed(&mut admin).await, 0);
    app.stop().await.expect("stop");
}

/// `molar audit seal --each` prints the warm-up and each transaction of the round, with as
/// many events as the round sealed.
#[tokio::test]
async fn the_cli_prints_each_transaction_of_a_round() {
    let app = spawn().await;
    let clinic = app.register_clinic("Each").await;
    let mut admin = app.admin_db().await;
    let many = SEAL_CHUNK_EVENTS + 10;
    backlog(&mut admin, &clinic.clinic_id, many, 300).await;
    let waiting = unsealed(&mut admin).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_molar"))
        .args(["audit", "seal", "--each"])
        .env_clear()
        .envs(app.vars.iter())
        .output()
        .await
        .expect("run molar audit seal --each");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    // The log (warnings about the test's configuration) may come first.
    let warm_up = lines.iter().position(|l| l.starts_with("warm-up: "));
    let first = lines.iter().position(|l| l.starts_with("transaction 1: "));
    assert!(warm_up.is_some() && warm_up < first, "{stdout}");
    assert!(
        warm_up.is_some_and(|i| lines[i].contains(" 0 event(s) in 0 seal(s)")),
        "the warm-up seals nothing: {stdout}"
    );
    let printed: i64 = lines
        .iter()
        .filter(|l| l.starts_with("transaction "))
        .map(|l| {
            let events = l.split(", ").nth(1).and_then(|e| e.split(' ').next());
            events
                .and_then(|e| e.parse::<i64>().ok())
                .unwrap_or_else(|| panic!("{l}"))
        })
        .sum();
    // The backlog only: the sign-up's own events are younger than the CLI's settle time.
    assert_eq!(printed, i64::from(many), "{stdout}");
    assert!(
        lines
            .iter()
            .filter(|l| l.starts_with("transaction "))
            .count()
            >= 2,
        "more than one transaction's worth: {stdout}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with(&format!("sealed {many} event(s)"))),
        "{stdout}"
    );
    assert_eq!(unsealed(&mut admin).await, waiting - i64::from(many));
    app.stop().await.expect("stop");
}

/// A sealing transaction commits without waiting for the disk, and only it: the setting is
/// the transaction's own, so the pooled connection's next transaction waits again.
#[tokio::test]
async fn only_a_sealing_transaction_commits_without_waiting_for_the_disk() {
    let app = spawn().await;
    let clinic = app.register_clinic("Async").await;
    let mut admin = app.admin_db().await;
    backlog(&mut admin, &clinic.clinic_id, 5, 30).await;
    let db = db_of(&app);
    let setting = "SELECT current_setting('synchronous_commit')";

    let mut tx = db.unscoped_tx().await.expect("begin");
    let before: String = one(&mut tx, setting).await;
    assert_eq!(before, "on");
    let chunk = seal_chunk(&mut tx, Duration::ZERO, None)
        .await
        .expect("chunk");
    assert!(chunk.events >= 5 && !chunk.busy, "{chunk:?}");
    let during: String = one(&mut tx, setting).await;
    assert_eq!(during, "off");
    tx.commit().await.expect("commit");
    let seals = seals_of(&mut admin, &clinic.clinic_id).await;
    assert!(seals >= 1, "the chunk's seal committed");

    let mut tx = db.unscoped_tx().await.expect("begin");
    let after: String = one(&mut tx, setting).await;
    assert_eq!(after, "on");
    let pid = "SELECT pg_backend_pid()";
    let used: i32 = one(&mut tx, pid).await;
    tx.commit().await.expect("commit");

    // A round seals each chunk in a transaction of its own, outside any the caller began,
    // on the pool's connections (the most recently used first), and leaves the one it used
    // in step, waiting again.
    backlog(&mut admin, &clinic.clinic_id, 3, 0).await;
    assert_eq!(seal(&db, Duration::ZERO).await.expect("seal").events, 3);
    let mut tx = db.unscoped_tx().await.expect("begin");
    let again: i32 = one(&mut tx, pid).await;
    assert_eq!(again, used, "the connection the round used");
    let after: String = one(&mut tx, setting).await;
    assert_eq!(after, "on");
    tx.rollback().await.expect("rollback");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn two_instances_sealing_at_once_seal_each_event_once() {
    let app = spawn().await;
    let mut clinics = vec![];
    for name in ["One", "Two", "Three"] {
        clinics.push(app.register_clinic(name).await);
    }
    let mut admin = app.admin_db().await;
    for c in &clinics {
        backlog(&mut admin, &c.clinic_id, SEAL_CHUNK_EVENTS, 30).await;
    }
    let waiting = unsealed(&mut admin).await;
    let (a, b) = (db_of(&app), db_of(&app));
    let (first, second) = tokio::join!(seal(&a, Duration::ZERO), seal(&b, Duration::ZERO));
    let (first, second) = (first.expect("seal"), second.expect("seal"));
    assert_eq!(
        first.events + second.events,
        waiting,
        "{first:?} {second:?}"
    );
    assert_eq!(unsealed(&mut admin).await, 0);
    let duplicates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_seals a JOIN audit_seals b ON a.clinic_id = b.clinic_id \
         AND a.seq < b.seq AND (a.to_at, a.to_id) >= (b.from_at, b.from_id)",
    )
    .fetch_one(&mut admin)
    .await
    .expect("overlaps");
    assert_eq!(duplicates, 0, "no event in two seals");
    assert!(verify(&a).await.expect("verify").is_empty());
    app.stop().await.expect("stop");
}

/// A list's audit event keeps the ids it returned in a column of their own: the audit API
/// shows them under `details.ids`, in the order returned, the seal covers them, and an edit
/// of them, even by the owning role, breaks the chain.
#[tokio::test]
async fn the_ids_a_list_returned_are_shown_sealed_and_guarded() {
    let app = spawn().await;
    let owner = app.register_clinic("Listed").await;
    for (first, last) in [("Ada", "Lovelace"), ("Ben", "Okri"), ("Cleo", "Laine")] {
        app.patient(&owner.access, first, last).await;
    }
    let page: serde_json::Value = app
        .get("/api/v2/patients?limit=2", Some(&owner.access))
        .await
        .json()
        .await
        .expect("page");
    let shown: Vec<serde_json::Value> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| p["id"].clone())
        .collect();
    assert_eq!(shown.len(), 2);
    let events: serde_json::Value = app
        .get(
            "/api/v2/audit-events?action=patient.list",
            Some(&owner.access),
        )
        .await
        .json()
        .await
        .expect("events");
    assert_eq!(
        events["items"][0]["details"],
        serde_json::json!({ "ids": shown }),
        "{events}"
    );

    let db = db_of(&app);
    seal(&db, Duration::ZERO).await.expect("seal");
    assert!(verify(&db).await.expect("verify").is_empty());
    // Someone with the owning role's credentials drops an id from the record.
    let mut owner_db = app.owner_db_in(&owner.clinic_id).await;
    let changed =
        sqlx::query("UPDATE audit_events SET ids = ids[1:1] WHERE action = 'patient.list'")
            .execute(&mut owner_db)
            .await
            .expect("owner edits the ids");
    assert_eq!(changed.rows_affected(), 1);
    let broken = verify(&db).await.expect("verify");
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert_eq!(broken[0].clinic_id.to_string(), owner.clinic_id);
    app.stop().await.expect("stop");
}

//! The audit trail: one event for every sign-in, staff change and access to patient data.
//! Successful actions are written in the same transaction as the work; denied or failed
//! ones in a transaction of their own. Events are sealed into a per-clinic hash chain by a
//! background step, and `molar audit verify` reports the first broken link.

pub mod routes;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::db::{Db, Tx};

#[derive(Debug, Clone)]
pub struct AuditContext {
    pub clinic_id: Uuid,
    pub user_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub ip: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }
}

/// One audited action: `<resource>.<verb>` on a resource, perhaps about a patient.
#[derive(Debug, Clone)]
pub struct Event {
    pub action: &'static str,
    pub resource_type: &'static str,
    pub resource_id: Option<Uuid>,
    pub patient_id: Option<Uuid>,
    pub details: Option<Value>,
    /// The records a list or search returned, in the order returned (the `ids` column).
    pub ids: Option<Vec<Uuid>>,
}

impl Event {
    pub fn new(action: &'static str, resource_type: &'static str) -> Event {
        Event {
            action,
            resource_type,
            resource_id: None,
            patient_id: None,
            details: None,
            ids: None,
        }
    }

    pub fn resource(mut self, id: Uuid) -> Event {
        self.resource_id = Some(id);
        self
    }

    pub fn patient(mut self, id: Uuid) -> Event {
        self.patient_id = Some(id);
        self
    }

    pub fn details(mut self, details: Value) -> Event {
        self.details = Some(details);
        self
    }

    /// The ids a list or search returned.
    pub fn ids(mut self, ids: Vec<Uuid>) -> Event {
        self.ids = Some(ids);
        self
    }
}

/// A data-modifying CTE named `audit` that records one successful event per row of `FROM
/// {from}`, for reads whose audit event travels in the same statement as the read itself.
/// `action`, `resource_type` and the three expressions are SQL written in this crate, never
/// input (`ids` a `uuid[]`, the records the read returned); the caller's context is bound
/// at `$first`..`$first+4` by [`bind_context`].
pub fn cte(
    first: usize,
    action: &str,
    resource_type: &str,
    resource_id: &str,
    patient_id: &str,
    ids: &str,
    from: &str,
) -> String {
    let n = |i: usize| first + i;
    // Not a macro: a fragment composed into each audited read's own statement, with the
    // action, expressions and parameter numbers of that read; the reads are run-time too.
    format!(
        "audit AS (INSERT INTO audit_events \
         (clinic_id, id, user_id, action, resource_type, resource_id, patient_id, request_id, ip, outcome, ids) \
         SELECT ${}, ${}, ${}, '{action}', '{resource_type}', {resource_id}, {patient_id}, ${}, ${}, 'success', {ids} \
         FROM {from})",
        n(0),
        n(1),
        n(2),
        n(3),
        n(4)
    )
}

/// Binds the caller's context to the parameters of a [`cte`], in its order.
// Not a macro: binds onto the run-time statements that embed a `cte`.
pub fn bind_context<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ctx: &'q AuditContext,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(ctx.clinic_id)
        .bind(Uuid::now_v7())
        .bind(ctx.user_id)
        .bind(ctx.request_id.as_deref())
        .bind(ctx.ip.map(ipnet_of))
}

/// Records a successful action inside the transaction that performs it.
pub async fn record(tx: &mut Tx, ctx: &AuditContext, event: Event) -> Result<(), sqlx::Error> {
    insert(tx, ctx, event, Outcome::Success).await
}

/// Records a refused action inside a transaction that commits other work with it (a
/// refused sign-in that sends a verification link, say).
pub async fn record_refusal(
    tx: &mut Tx,
    ctx: &AuditContext,
    event: Event,
) -> Result<(), sqlx::Error> {
    insert(tx, ctx, event, Outcome::Failure).await
}

async fn insert(
    tx: &mut Tx,
    ctx: &AuditContext,
    event: Event,
    outcome: Outcome,
) -> Result<(), sqlx::Error> {
    if let (Outcome::Success, Some(event_type)) =
        (outcome, crate::webhooks::event_type(event.action))
    {
        return insert_with_webhooks(tx, ctx, event, event_type).await;
    }
    sqlx::query!(
        "INSERT INTO audit_events \
         (clinic_id, id, user_id, action, resource_type, resource_id, patient_id, request_id, ip, outcome, details, ids) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        ctx.clinic_id,
        Uuid::now_v7(),
        ctx.user_id,
        event.action,
        event.resource_type,
        event.resource_id,
        event.patient_id,
        ctx.request_id.as_deref(),
        ctx.ip.map(ipnet_of),
        outcome.as_str(),
        event.details,
        event.ids.as_deref()
    )
    .execute(&mut **tx)
    .await
    .map(|_| ())
}

/// A successful action that is a webhook event: its audit row, and an outbox row for each
/// active subscription of the clinic that names the event or its family, in one statement.
async fn insert_with_webhooks(
    tx: &mut Tx,
    ctx: &AuditContext,
    event: Event,
    event_type: &'static str,
) -> Result<(), sqlx::Error> {
    let body = crate::webhooks::event_body(
        event_type,
        event.resource_type,
        event.resource_id,
        event.patient_id,
    );
    sqlx::query!(
        "WITH audit AS (INSERT INTO audit_events \
           (clinic_id, id, user_id, action, resource_type, resource_id, patient_id, request_id, ip, outcome, details, ids) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'success', $10, $14)) \
         INSERT INTO outbox (clinic_id, id, topic, payload, give_up_at) \
         SELECT s.clinic_id, gen_random_uuid(), 'webhook', \
                jsonb_build_object('subscription_id', s.id, 'event', $11::jsonb), \
                now() + interval '1 day' \
         FROM webhook_subscriptions s \
         WHERE s.active AND ($12 = ANY (s.events) OR $13 = ANY (s.events))",
        ctx.clinic_id,
        Uuid::now_v7(),
        ctx.user_id,
        event.action,
        event.resource_type,
        event.resource_id,
        event.patient_id,
        ctx.request_id.as_deref(),
        ctx.ip.map(ipnet_of),
        event.details,
        body,
        event_type,
        crate::webhooks::family_pattern(event_type),
        event.ids.as_deref()
    )
    .execute(&mut **tx)
    .await
    .map(|_| ())
}

fn ipnet_of(ip: IpAddr) -> ipnet::IpNet {
    ipnet::IpNet::from(ip)
}

/// Records a denied or failed action in a transaction of its own (the work's transaction
/// has been rolled back). A failure to audit is logged, never hidden.
pub async fn record_failure(db: &Db, ctx: &AuditContext, event: Event) {
    let action = event.action;
    let result = async {
        let mut tx = db.clinic_tx(ctx.clinic_id).await?;
        insert(&mut tx, ctx, event, Outcome::Failure).await?;
        tx.commit().await
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %crate::error::loggable(&e), action, "could not record a failed action in the audit trail");
    }
}

/// A failed sign-in for an email that belongs to no clinic: the global security log and
/// the JSON log. The email is stored only as a hash.
pub async fn record_security_event(
    db: &Db,
    action: &str,
    email: &str,
    ip: Option<IpAddr>,
    request_id: Option<&str>,
) {
    let email_hash = hex::encode(Sha256::digest(email.trim().to_lowercase().as_bytes()));
    tracing::warn!(action, email_hash = %email_hash, ip = ?ip, "security event");
    let result = async {
        let mut tx = db.unscoped_tx().await?;
        sqlx::query!(
            "INSERT INTO security_events (id, action, email_hash, ip, request_id) VALUES ($1, $2, $3, $4, $5)",
            Uuid::now_v7(),
            action,
            email_hash,
            ip.map(ipnet_of),
            request_id
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %crate::error::loggable(&e), "could not record a security event");
    }
}

/// The most events one sealing transaction hashes.
pub const SEAL_CHUNK_EVENTS: i32 = 1000;
/// The most clinics one sealing transaction visits.
pub const SEAL_CHUNK_CLINICS: i32 = 200;
/// About how long one sealing transaction hashes, in milliseconds: on a busy machine each
/// transaction gets less done rather than taking longer.
pub const SEAL_CHUNK_MILLIS: i32 = 1;

/// One sealing round: how many seals and events, in how many transactions, the longest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sealed {
    /// Seals appended (a clinic with new events gets one per transaction that reaches it).
    pub seals: i64,
    pub events: i64,
    pub transactions: u32,
    /// The longest transaction that sealed (the warm-up apart): its one statement, from
    /// sending it to its result (the commit included).
    pub longest: Duration,
    /// The round's first sealing transaction, alone.
    pub first: Duration,
    /// The call that opens the round ([`warm_up`]): it seals nothing, and on a connection
    /// that has not sealed before it is the one that compiles the sealing function, loads
    /// the catalog entries of the audit partitions and plans the statements.
    pub warm_up: Duration,
}

/// The longest sealing transaction since the process started, in microseconds.
static LONGEST_SEAL_MICROS: AtomicU64 = AtomicU64::new(0);

/// One sealing transaction's work, as `audit_seal_chunk` reports it.
#[derive(Debug, Clone, Copy)]
pub struct Chunk {
    /// The clinic the next chunk starts at; `None` when the round is done.
    pub next_clinic: Option<Uuid>,
    pub seals: i32,
    pub events: i32,
    /// Another instance holds the sealing lock (it is sealing; this round ends).
    pub busy: bool,
}

/// Seals one bounded chunk on `conn`, starting at clinic `from` (`None` for the first): a
/// single statement, which [`seal`] sends outside an explicit transaction, so that the
/// transaction is one round trip.
///
/// Its transaction commits without waiting for its WAL to reach the disk
/// (`synchronous_commit = off`, for that transaction only), so that under a write load its
/// commit is not queued behind everyone's flush. A seal is derived from events that are
/// already durable: a crash that loses the last few seals loses nothing the next round
/// cannot seal again, and PostgreSQL never keeps a later seal without the earlier ones.
pub async fn seal_chunk(
    conn: &mut sqlx::PgConnection,
    settle: Duration,
    from: Option<Uuid>,
) -> Result<Chunk, sqlx::Error> {
    chunk(conn, settle, from, SEAL_CHUNK_EVENTS).await
}

/// The sealing function called on `conn` to hash no event: it takes the sealing lock (and
/// reports `busy` when another instance holds it), reads the first clinic's last seal and
/// plans its events query with a limit of none. On a connection that has not sealed
/// before, that is the costly part of the first call: compiling the function, loading the
/// catalog entries of `audit_events`' partitions, planning. [`seal`] makes this call first,
/// so that no transaction that hashes events also pays for it.
pub async fn warm_up(
    conn: &mut sqlx::PgConnection,
    settle: Duration,
) -> Result<Chunk, sqlx::Error> {
    chunk(conn, settle, None, 0).await
}

async fn chunk(
    conn: &mut sqlx::PgConnection,
    settle: Duration,
    from: Option<Uuid>,
    max_events: i32,
) -> Result<Chunk, sqlx::Error> {
    sqlx::query_as!(
        Chunk,
        r#"SELECT next_clinic, seals AS "seals!", events AS "events!", busy AS "busy!"
           FROM set_config('synchronous_commit', 'off', true),
                audit_seal_chunk(make_interval(secs => $1), $2, $3, $4, $5)"#,
        settle.as_secs_f64(),
        from,
        max_events,
        SEAL_CHUNK_CLINICS,
        SEAL_CHUNK_MILLIS
    )
    .fetch_one(conn)
    .await
}

/// Seals events older than `settle` into each clinic's hash chain, in transactions of at
/// most [`SEAL_CHUNK_EVENTS`] events, [`SEAL_CHUNK_CLINICS`] clinics and about
/// [`SEAL_CHUNK_MILLIS`] of work each ([`seal_chunk`], one statement each), so that no
/// transaction holds a minute of events. The round's transactions run one after another on
/// one connection, opened by a [`warm_up`] call that seals nothing, so that none of the
/// transactions that hash events finds the sealing function not yet compiled and planned
/// there. Safe to run on every instance: each transaction takes a transaction-level
/// advisory lock, and a round ends when another instance holds it (that one is sealing).
pub async fn seal(db: &Db, settle: Duration) -> Result<Sealed, sqlx::Error> {
    sealing_round(db, settle, None).await
}

/// One transaction of a sealing round, as [`seal_observed`] reports it.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// The call that opens the round ([`warm_up`]), which seals nothing.
    pub warm_up: bool,
    pub chunk: Chunk,
    /// From sending its statement to its result, the commit included.
    pub took: Duration,
    /// The PostgreSQL backend that ran it (the same for the whole round).
    pub backend_pid: i32,
}

/// [`seal`], calling `observe` after each of the round's transactions, the warm-up
/// included; for `molar audit seal --each`, which shows where each transaction's time went.
pub async fn seal_observed(
    db: &Db,
    settle: Duration,
    observe: &mut (dyn FnMut(Step) + Send),
) -> Result<Sealed, sqlx::Error> {
    sealing_round(db, settle, Some(observe)).await
}

async fn sealing_round(
    db: &Db,
    settle: Duration,
    mut observe: Option<&mut (dyn FnMut(Step) + Send)>,
) -> Result<Sealed, sqlx::Error> {
    let mut from: Option<Uuid> = None;
    let mut round = Sealed::default();
    let mut conn = db.autocommit().await?;
    let backend_pid = match observe {
        Some(_) => {
            sqlx::query_scalar!(r#"SELECT pg_backend_pid() AS "pid!""#)
                .fetch_one(&mut *conn)
                .await?
        }
        None => 0,
    };
    let mut report = |warm_up: bool, chunk: Chunk, took: Duration| {
        if let Some(observe) = observe.as_mut() {
            observe(Step {
                warm_up,
                chunk,
                took,
                backend_pid,
            });
        }
    };
    let (warm, took) = timed(warm_up(&mut conn, settle)).await?;
    round.warm_up = took;
    report(true, warm, took);
    if warm.busy {
        conn.done();
        return Ok(round);
    }
    loop {
        let (chunk, took) = timed(seal_chunk(&mut conn, settle, from)).await?;
        report(false, chunk, took);
        if round.transactions == 0 {
            round.first = took;
        }
        round.transactions += 1;
        round.longest = round.longest.max(took);
        round.seals += i64::from(chunk.seals);
        round.events += i64::from(chunk.events);
        match chunk.next_clinic {
            Some(next) if !chunk.busy => from = Some(next),
            _ => {
                conn.done();
                return Ok(round);
            }
        }
    }
}

/// Runs one sealing transaction, `call`, and records its duration (the statement, from
/// sending it to its result, the commit included) in the sealing metrics.
async fn timed(
    call: impl std::future::Future<Output = Result<Chunk, sqlx::Error>>,
) -> Result<(Chunk, Duration), sqlx::Error> {
    let started = Instant::now();
    let chunk = call.await?;
    let took = started.elapsed();
    metrics::histogram!("audit_seal_transaction_seconds").record(took.as_secs_f64());
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    let longest = LONGEST_SEAL_MICROS
        .fetch_max(micros, Ordering::Relaxed)
        .max(micros);
    metrics::gauge!("audit_seal_transaction_longest_seconds").set(longest as f64 / 1e6);
    Ok((chunk, took))
}

/// Keeps monthly partitions three months ahead.
pub async fn ensure_partitions(db: &Db) -> Result<i32, sqlx::Error> {
    let mut tx = db.unscoped_tx().await?;
    let created = sqlx::query_scalar!(r#"SELECT audit_ensure_partitions(3) AS "created!""#)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(created)
}

/// Drops the audit events before `before` (whole monthly partitions) and records the
/// cut-off so that verification continues past it. Runs as the owning role.
pub async fn prune(
    owner_url: &secrecy::SecretString,
    before: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<i32> {
    use secrecy::ExposeSecret;
    use sqlx::Connection;
    let mut conn =
        sqlx::PgConnection::connect_with(&crate::db::connect_options(owner_url.expose_secret())?)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect as the owning role: {e}"))?;
    let dropped = sqlx::query_scalar!(r#"SELECT audit_prune($1) AS "dropped!""#, before)
        .fetch_one(&mut conn)
        .await
        .map_err(|e| anyhow::anyhow!("pruning failed: {e}"))?;
    conn.close().await?;
    Ok(dropped)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BrokenLink {
    pub clinic_id: Uuid,
    pub seq: i64,
    pub problem: String,
}

/// Recomputes every seal; the first broken link of each clinic that has one.
pub async fn verify(db: &Db) -> Result<Vec<BrokenLink>, sqlx::Error> {
    let mut tx = db.unscoped_tx().await?;
    let broken = sqlx::query_as!(
        BrokenLink,
        r#"SELECT clinic_id AS "clinic_id!", seq AS "seq!", problem AS "problem!" FROM audit_verify()"#
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(broken)
}

/// Background maintenance: partitions daily; seals, and closes long-idle database
/// connections, every `every`.
pub fn spawn_maintenance(db: Db, settle: Duration, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks: u64 = 0;
        let per_day = (86_400 / every.as_secs().max(1)).max(1);
        loop {
            if ticks % per_day == 0 {
                if let Err(e) = ensure_partitions(&db).await {
                    tracing::warn!(error = %crate::error::loggable(&e), "could not create audit partitions");
                }
            }
            match seal(&db, settle).await {
                Ok(round) if round.events > 0 => tracing::debug!(
                    events = round.events,
                    transactions = round.transactions,
                    longest_ms = round.longest.as_secs_f64() * 1e3,
                    "audit events sealed"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %crate::error::loggable(&e), "could not seal audit events")
                }
            }
            db.reap_idle();
            ticks += 1;
            tokio::time::sleep(every).await;
        }
    })
}

//! PostgreSQL: the pools, the embedded migrations, the tenant-scoped transaction and the
//! checks that the server's role really is held by row-level security.

pub mod embedded;
pub mod pool;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use secrecy::ExposeSecret;
use serde::Serialize;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Config;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The NOLOGIN group role that the server's login role is a member of.
pub const APP_ROLE: &str = "molar_app";
/// The NOLOGIN role that owns the narrow cross-clinic lookup functions.
pub const AUTH_ROLE: &str = "molar_auth";

pub use pool::Tx;

/// The SQLSTATE `auth_check_session` raises for a session that is no longer valid.
pub const SESSION_INVALID: &str = "ML401";

/// Whether `e` is [`Db::session_tx`] refusing the session.
pub fn is_session_invalid(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(SESSION_INVALID))
}

/// The server's database handles. Tenant data is reached only through [`Db::clinic_tx`].
#[derive(Clone)]
pub struct Db {
    /// Requests' transactions (`DB_POOL_SIZE` connections).
    requests: pool::Pool,
    read: pool::Pool,
    /// The outbox worker's own connections ([`WORKER_CONNECTIONS`]).
    worker: pool::Pool,
    /// Health checks and maintenance lookups ([`PROBE_CONNECTIONS`]), so that a probe
    /// neither waits behind a storm of requests nor takes a request's connection.
    probes: PgPool,
    waiting: Arc<AtomicI64>,
}

/// The connections the outbox worker has to itself, beside `DB_POOL_SIZE`: under a storm of
/// requests it would otherwise wait behind them for each of its short transactions, and
/// deliver a few dozen events a second while they are written by the hundred.
pub const WORKER_CONNECTIONS: u32 = 4;

/// The connections for health checks and maintenance lookups, beside `DB_POOL_SIZE`.
pub const PROBE_CONNECTIONS: u32 = 2;

impl Db {
    pub fn connect_lazy(config: &Config, url: &str, read_url: Option<&str>) -> anyhow::Result<Db> {
        let requests = pool::build(connect_options(url)?, settings(config, config.db_pool_size))?;
        let read = match read_url {
            Some(u) => pool::build(connect_options(u)?, settings(config, config.db_pool_size))?,
            None => requests.clone(),
        };
        let worker = pool::build(connect_options(url)?, settings(config, WORKER_CONNECTIONS))?;
        let probes = PgPoolOptions::new()
            .max_connections(PROBE_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(config.db_pool_timeout)
            .max_lifetime(Some(config.db_pool_recycle))
            .idle_timeout(Some(std::time::Duration::from_secs(60)))
            .connect_lazy_with(connect_options(url)?);
        Ok(Db {
            requests,
            read,
            worker,
            probes,
            waiting: Arc::new(AtomicI64::new(0)),
        })
    }

    /// Begins a transaction in which row-level security admits exactly one clinic.
    /// The setting is transaction-local and travels with `BEGIN` in one round trip.
    pub async fn clinic_tx(&self, clinic_id: Uuid) -> Result<Tx, sqlx::Error> {
        self.begin_scoped(&self.requests, Some(clinic_id)).await
    }

    /// [`Db::clinic_tx`] for a signed-in caller, with the session check in the same round
    /// trip: after `BEGIN`, one `SELECT` sets the clinic and the user and runs
    /// `auth_check_session`, which raises [`SESSION_INVALID`] when the account is inactive,
    /// its role or credentials changed, or the sign-in (refresh-token family) `session` was
    /// revoked (see [`is_session_invalid`]); the refused transaction is rolled back and the
    /// connection kept. Two statements, not three: each is parsed and planned on every
    /// request, as a simple query is.
    pub async fn session_tx(
        &self,
        clinic_id: Uuid,
        user_id: Uuid,
        auth_version: i32,
        role: &'static str,
        session: Option<Uuid>,
    ) -> Result<Tx, sqlx::Error> {
        // Uuids, an integer and a role name from a fixed list: nothing here needs quoting.
        debug_assert!(role.bytes().all(|b| b.is_ascii_lowercase()));
        let session = match session {
            Some(id) => format!("'{id}'"),
            // A token from before tokens named their sign-in: no family to check.
            None => "NULL".to_owned(),
        };
        // Not a macro: two statements in one simple query (one round trip), which the
        // macros, being prepared statements, cannot express. `app.user_id` rides with
        // `app.clinic_id`: row-level security hides restricted patients' clinical records
        // from users outside their care team (see `app_hidden_patients()`).
        let sql = format!(
            "BEGIN; SELECT set_config('app.clinic_id', '{clinic_id}', true), \
             set_config('app.user_id', '{user_id}', true), \
             auth_check_session('{clinic_id}', '{user_id}', {auth_version}, '{role}', {session}::uuid)"
        );
        self.begin_counted(&self.requests, sql).await
    }

    /// [`Db::clinic_tx`] for maintenance that handles stored content rather than people
    /// (document purging and key re-wrapping): no user, and `app.maintenance` on, so that
    /// restricted patients' documents stay within reach. Any other transaction without a
    /// user sees no restricted patient's clinical record (see `app_hidden_patients()`).
    pub async fn maintenance_tx(&self, clinic_id: Uuid) -> Result<Tx, sqlx::Error> {
        // A Uuid is safe inside the literal; one round trip as in `begin_scoped`.
        let sql = format!(
            "BEGIN; SELECT set_config('app.clinic_id', '{clinic_id}', true), \
             set_config('app.maintenance', 'on', true)"
        );
        self.begin_counted(&self.requests, sql).await
    }

    /// For the outbox worker, on its own connections: a transaction in `clinic` (or, with
    /// `None`, in no clinic, as [`Db::unscoped_tx`]).
    pub async fn worker_tx(&self, clinic: Option<Uuid>) -> Result<Tx, sqlx::Error> {
        self.begin_scoped(&self.worker, clinic).await
    }

    /// The same on the read replica (or the primary when none is configured).
    pub async fn clinic_read_tx(&self, clinic_id: Uuid) -> Result<Tx, sqlx::Error> {
        self.begin_scoped(&self.read, Some(clinic_id)).await
    }

    /// A connection for one statement in a transaction of its own (see
    /// [`pool::Autocommit`]), with no clinic: row-level security shows nothing.
    pub async fn autocommit(&self) -> Result<pool::Autocommit, sqlx::Error> {
        pool::Autocommit::acquire(&self.requests).await
    }

    /// A transaction with no clinic: row-level security shows nothing. Used for the
    /// `SECURITY DEFINER` lookups that cross clinics by design (login, refresh).
    pub async fn unscoped_tx(&self) -> Result<Tx, sqlx::Error> {
        self.begin_scoped(&self.requests, None).await
    }

    async fn begin_scoped(
        &self,
        pool: &pool::Pool,
        clinic: Option<Uuid>,
    ) -> Result<Tx, sqlx::Error> {
        // A Uuid formats as 36 hex digits and dashes only, so it is safe inside the literal.
        // Not a macro: `BEGIN` and `set_config` in one simple query (one round trip), which
        // the macros, being prepared statements, cannot express.
        let sql = match clinic {
            Some(id) => format!("BEGIN; SELECT set_config('app.clinic_id', '{id}', true)"),
            None => "BEGIN".to_owned(),
        };
        self.begin_counted(pool, sql).await
    }

    /// Begins with `sql`, counted in [`Db::waiting`] while a connection is awaited. A
    /// request that goes away while its `BEGIN` is on the wire leaves a connection that
    /// is not reused (see [`pool`]), so no later request can join its transaction.
    async fn begin_counted(&self, pool: &pool::Pool, sql: String) -> Result<Tx, sqlx::Error> {
        let _waiting = Waiting::count(&self.waiting);
        Tx::begin(pool, sql, is_session_invalid).await
    }

    /// For health checks, start-up checks and maintenance lookups only; never for tenant
    /// data.
    pub fn pool(&self) -> &PgPool {
        &self.probes
    }

    /// The requests' pool: its connections, and how many of them are idle.
    pub fn stats(&self) -> deadpool::Status {
        self.requests.status()
    }

    pub fn waiting(&self) -> i64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Closes the connections idle for longer than the idle time (ten minutes).
    pub fn reap_idle(&self) {
        pool::reap_idle(&self.requests);
        pool::reap_idle(&self.read);
        pool::reap_idle(&self.worker);
    }

    pub async fn close(&self) {
        self.requests.close();
        self.read.close();
        self.worker.close();
        self.probes.close().await;
    }
}

/// Counts a caller waiting for a connection for as long as it lives, so that a request that
/// goes away while waiting is not counted for ever.
struct Waiting<'a>(&'a AtomicI64);

impl<'a> Waiting<'a> {
    fn count(counter: &'a AtomicI64) -> Waiting<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn settings(config: &Config, max_size: u32) -> pool::Settings {
    pool::Settings {
        max_size: max_size as usize,
        acquire_timeout: config.db_pool_timeout,
        lifetime: config.db_pool_recycle,
        idle: std::time::Duration::from_secs(600),
    }
}

pub fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    PgConnectOptions::from_str(url)
        .map(|o| o.application_name("molar"))
        .map_err(|_| anyhow::anyhow!("the database URL is not a valid PostgreSQL URL"))
}

/// What [`migrate`] did.
#[derive(Debug, Clone, Copy)]
pub struct Migrated {
    /// How many migrations this run applied.
    pub applied: i64,
    /// The latest applied version afterwards (possibly one from a newer release).
    pub version: Option<i64>,
}

/// Applies the embedded migrations as the owning role.
pub async fn migrate(url: &secrecy::SecretString) -> anyhow::Result<Migrated> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(30))
        .connect_with(connect_options(url.expose_secret())?)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the migration database: {e}"))?;
    // An older release must be able to run against a database a newer one migrated
    // (rolling deploys and rollbacks): unknown applied versions are not an error.
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    let (before, _) = applied_migrations(&pool).await?;
    migrator
        .run(&pool)
        .await
        .map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
    let (after, version) = applied_migrations(&pool).await?;
    pool.close().await;
    Ok(Migrated {
        applied: after - before,
        version,
    })
}

/// How many migrations were applied successfully, and the latest; none before the first run.
async fn applied_migrations(pool: &PgPool) -> anyhow::Result<(i64, Option<i64>)> {
    let unreadable = |e: sqlx::Error| anyhow::anyhow!("cannot read the applied migrations: {e}");
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(unreadable)?;
    if !exists {
        return Ok((0, None));
    }
    sqlx::query_as("SELECT count(*), max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .map_err(unreadable)
}

#[derive(Debug, Serialize, Clone)]
pub struct MigrationStatus {
    pub embedded: usize,
    pub applied: usize,
    pub pending: Vec<i64>,
    pub modified: Vec<i64>,
    /// Applied versions this binary does not know (a newer release migrated first).
    pub ahead: Vec<i64>,
}

impl MigrationStatus {
    pub fn ok(&self) -> bool {
        self.pending.is_empty() && self.modified.is_empty()
    }
}

/// Compares the applied migrations with those embedded in this binary.
pub async fn migration_status(pool: &PgPool) -> Result<MigrationStatus, sqlx::Error> {
    let rows = sqlx::query!("SELECT version, checksum FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await?;
    let applied: BTreeMap<i64, Vec<u8>> =
        rows.into_iter().map(|r| (r.version, r.checksum)).collect();
    let mut status = MigrationStatus {
        embedded: 0,
        applied: applied.len(),
        pending: vec![],
        modified: vec![],
        ahead: vec![],
    };
    for m in MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
    {
        status.embedded += 1;
        match applied.get(&m.version) {
            None => status.pending.push(m.version),
            Some(sum) if sum.as_slice() != &*m.checksum => status.modified.push(m.version),
            Some(_) => {}
        }
    }
    status.ahead = applied
        .keys()
        .filter(|v| !MIGRATOR.iter().any(|m| m.version == **v))
        .copied()
        .collect();
    Ok(status)
}

#[derive(Debug, Serialize, Clone)]
pub struct RoleCheck {
    pub role: String,
    pub superuser: bool,
    pub bypass_rls: bool,
    pub member_of_app_role: bool,
    pub owns_tables: bool,
    pub member_of_auth_role: bool,
    pub create_role: bool,
    pub create_in_schema: bool,
}

impl RoleCheck {
    /// The reasons this role must not serve requests; empty when it is safe.
    pub fn failures(&self) -> Vec<&'static str> {
        let mut f = vec![];
        if self.superuser {
            f.push("the server's database role is a superuser");
        }
        if self.bypass_rls {
            f.push("the server's database role has BYPASSRLS");
        }
        if self.owns_tables {
            f.push("the server's database role owns tables (or is a member of their owner)");
        }
        if self.member_of_auth_role {
            f.push("the server's database role is a member of molar_auth");
        }
        if self.create_role {
            f.push("the server's database role has CREATEROLE");
        }
        if self.create_in_schema {
            f.push("the server's database role may create objects in schema public");
        }
        if !self.member_of_app_role {
            f.push("the server's database role is not a member of molar_app");
        }
        f
    }
}

/// Inspects the catalogue for the role the server is connected as.
pub async fn role_check(pool: &PgPool) -> Result<RoleCheck, sqlx::Error> {
    sqlx::query_as!(
        RoleCheck,
        r#"
        SELECT r.rolname::text AS "role!",
               r.rolsuper AS "superuser!",
               r.rolbypassrls AS "bypass_rls!",
               CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'molar_app')
                    THEN pg_has_role(current_user, 'molar_app', 'MEMBER') ELSE false END
                    AS "member_of_app_role!",
               EXISTS (
                   SELECT 1 FROM pg_class c
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
                     AND n.nspname NOT LIKE 'pg\_toast%'
                     AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
                     AND pg_has_role(current_user, c.relowner, 'MEMBER')
               ) AS "owns_tables!",
               CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'molar_auth')
                    THEN pg_has_role(current_user, 'molar_auth', 'MEMBER') ELSE false END
                    AS "member_of_auth_role!",
               r.rolcreaterole AS "create_role!",
               has_schema_privilege(current_user, 'public', 'CREATE') AS "create_in_schema!"
        FROM pg_roles r WHERE r.rolname = current_user
        "#
    )
    .fetch_one(pool)
    .await
}

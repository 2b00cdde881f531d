//! The connections that requests' transactions run on, and the transaction itself.
//!
//! sqlx's own pool sends a ping (a `Sync` and its `ReadyForQuery`) every time a connection
//! goes back, from a task it spawns for the purpose: one more round trip for the server and
//! PostgreSQL per request, after the request is done (see "PostgreSQL through the server
//! and through pgbench" in BENCHMARKS.md). Here the connections are kept by a `deadpool`
//! pool of sqlx connections instead, and each knows whether it is sound: a transaction
//! that committed or rolled back leaves its connection idle and in step, so it goes back
//! as it is, with no round trip. One abandoned midway (its request went away during a
//! statement, or a begin or commit failed) is rolled back on a task of its own at once, so
//! its locks go with it; one that cannot be, or was abandoned during its begin or commit,
//! is closed instead of reused.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection};

/// A pooled connection and whether it is known to be idle and in step with the server.
pub struct Conn {
    raw: PgConnection,
    sound: bool,
}

pub struct Manager {
    options: PgConnectOptions,
    lifetime: Duration,
    idle: Duration,
}

impl managed::Manager for Manager {
    type Type = Conn;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<Conn, sqlx::Error> {
        let raw = PgConnection::connect_with(&self.options).await?;
        Ok(Conn { raw, sound: true })
    }

    async fn recycle(&self, conn: &mut Conn, metrics: &Metrics) -> RecycleResult<sqlx::Error> {
        if !conn.sound {
            return Err(RecycleError::message("left mid-transaction"));
        }
        if metrics.age() > self.lifetime || metrics.last_used() > self.idle {
            return Err(RecycleError::message("past its lifetime or idle time"));
        }
        Ok(())
    }
}

pub type Pool = managed::Pool<Manager>;

/// What a pool is built from: the connection, how many, and for how long.
pub struct Settings {
    pub max_size: usize,
    pub acquire_timeout: Duration,
    pub lifetime: Duration,
    pub idle: Duration,
}

pub fn build(options: PgConnectOptions, settings: Settings) -> anyhow::Result<Pool> {
    managed::Pool::builder(Manager {
        options,
        lifetime: settings.lifetime,
        idle: settings.idle,
    })
    .max_size(settings.max_size)
    .wait_timeout(Some(settings.acquire_timeout))
    .create_timeout(Some(settings.acquire_timeout))
    // The most recently used first: the busiest connections stay warm, and the others
    // reach the idle time and are closed (see `reap_idle`).
    .queue_mode(managed::QueueMode::Lifo)
    .runtime(deadpool::Runtime::Tokio1)
    .build()
    .map_err(|e| anyhow::anyhow!("cannot build the database pool: {e}"))
}

/// Closes the idle connections that have not been used for the pool's idle time.
pub fn reap_idle(pool: &Pool) {
    let idle = pool.manager().idle;
    pool.retain(|_, metrics| metrics.last_used() < idle);
}

/// The pool's errors as sqlx's, so that callers map them as they map sqlx's own pool's.
fn pool_error(e: PoolError<sqlx::Error>) -> sqlx::Error {
    match e {
        PoolError::Backend(e) => e,
        PoolError::Timeout(_) => sqlx::Error::PoolTimedOut,
        PoolError::Closed => sqlx::Error::PoolClosed,
        PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => {
            sqlx::Error::Configuration("the database pool is misconfigured".into())
        }
    }
}

async fn connection(pool: &Pool) -> Result<Object<Manager>, sqlx::Error> {
    pool.get().await.map_err(pool_error)
}

/// A statement's future, boxed: sqlx's own are generic over the executor's lifetime, and
/// the compiler cannot show them `Send` inside the futures that await them.
type Run<'c> = Pin<Box<dyn Future<Output = Result<(), sqlx::Error>> + Send + 'c>>;

/// Sends `sql` (a `BEGIN` and what travels with it) as one simple query: a `&str` without
/// arguments is one.
fn simple<'c>(conn: &'c mut PgConnection, sql: &'c str) -> Run<'c> {
    Box::pin(async move { conn.execute(sql).await.map(|_| ()) })
}

/// Ends the transaction open on `conn`: `COMMIT` or `ROLLBACK` as prepared statements
/// (parsed once per connection), not as simple queries parsed on every request.
fn end(conn: &mut PgConnection, commit: bool) -> Run<'_> {
    let sql = if commit { "COMMIT" } else { "ROLLBACK" };
    Box::pin(async move { sqlx::query(sql).execute(conn).await.map(|_| ()) })
}

/// An open transaction on a pooled connection. Derefs to the connection, so that queries
/// run on `&mut *tx`; [`Tx::commit`] or [`Tx::rollback`] ends it, and dropping it rolls
/// it back.
pub struct Tx {
    /// `None` only while the transaction is being dropped.
    conn: Option<Object<Manager>>,
}

impl Tx {
    /// Begins with `sql` (a `BEGIN` and what travels with it, as one simple query). A
    /// begin that fails with `refused` true of its error (the server refused the caller
    /// inside the new transaction) is rolled back, and the connection kept.
    pub async fn begin(
        pool: &Pool,
        sql: String,
        refused: fn(&sqlx::Error) -> bool,
    ) -> Result<Tx, sqlx::Error> {
        let mut conn = connection(pool).await?;
        // Unsound until the begin has come back: abandoned midway, it is closed.
        conn.sound = false;
        match simple(&mut conn.raw, &sql).await {
            Ok(()) => {
                conn.sound = true;
                Ok(Tx { conn: Some(conn) })
            }
            Err(e) => {
                if refused(&e) {
                    conn.sound = end(&mut conn.raw, false).await.is_ok();
                }
                Err(e)
            }
        }
    }

    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        self.end(true).await
    }

    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        self.end(false).await
    }

    async fn end(&mut self, commit: bool) -> Result<(), sqlx::Error> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        conn.sound = false;
        end(&mut conn.raw, commit).await?;
        conn.sound = true;
        Ok(())
    }

    fn conn(&self) -> &Conn {
        self.conn
            .as_ref()
            .expect("a transaction holds its connection until it is dropped")
    }

    fn conn_mut(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a transaction holds its connection until it is dropped")
    }
}

impl Deref for Tx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn().raw
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn_mut().raw
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // Still open: roll it back now, so that its locks do not wait for the connection's
        // next use. Without a runtime (shutting down) the connection is closed instead.
        conn.sound = false;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if end(&mut conn.raw, false).await.is_ok() {
                    conn.sound = true;
                }
            });
        }
    }
}

/// A pooled connection lent for one statement outside an explicit transaction: PostgreSQL
/// runs it in a transaction of its own, committed before its result comes back, so the
/// whole transaction is one round trip. [`Autocommit::done`] gives the connection back in
/// step; dropped without it (the statement failed or was abandoned midway), it is closed
/// instead of reused.
pub struct Autocommit {
    conn: Object<Manager>,
}

impl Autocommit {
    pub async fn acquire(pool: &Pool) -> Result<Autocommit, sqlx::Error> {
        let mut conn = connection(pool).await?;
        conn.sound = false;
        Ok(Autocommit { conn })
    }

    /// The statement has come back: the connection is idle and in step again.
    pub fn done(mut self) {
        self.conn.sound = true;
    }
}

impl Deref for Autocommit {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn.raw
    }
}

impl DerefMut for Autocommit {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn.raw
    }
}

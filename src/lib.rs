//! Molar: a multi-tenant dental clinic management backend.
//!
//! [`Server::prepare`] turns a [`config::Config`] into a ready server (connecting, or in
//! development starting, its database); [`Server::run`] serves it on a listener until a
//! shutdown signal, then drains. `main.rs` and the tests both go through these.

pub mod app;
pub mod audit;
pub mod auth;
pub mod billing;
pub mod cache;
pub mod chart;
pub mod clinic;
pub mod config;
pub mod db;
pub mod documents;
pub mod error;
pub mod fhir;
pub mod health;
pub mod http;
pub mod ledger;
pub mod mail;
pub mod notes;
pub mod openapi;
pub mod outbox;
pub mod patients;
pub mod ratelimit;
pub mod redis_store;
pub mod reports;
pub mod scheduling;
pub mod state;
pub mod telemetry;
pub mod treatment;
pub mod users;
pub mod validate;
pub mod webhooks;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;

use crate::config::{Config, Environment};
use crate::db::embedded::EmbeddedPostgres;
use crate::db::Db;
use crate::redis_store::Redis;
use crate::state::AppState;

/// Hands the heap's free pages back to the system. Building the router and its OpenAPI
/// document allocates and frees a few megabytes at start-up. The `molar` executable
/// allocates with mimalloc, which returns them once they are collected; anything linked
/// with glibc's malloc as the allocator (the tests, and C libraries) keeps freed memory
/// inside its heap resident until it is trimmed.
fn release_freed_memory() {
    // SAFETY: mi_collect frees nothing in use, and mimalloc is linked either way.
    unsafe { libmimalloc_sys::mi_collect(true) };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub struct Server {
    state: AppState,
    embedded: Option<EmbeddedPostgres>,
}

impl Server {
    /// Connects to (or in development starts) the database and Redis and checks the
    /// database role. In production a role that row-level security would not hold stops it.
    pub async fn prepare(mut config: Config) -> anyhow::Result<Server> {
        let mut embedded = None;
        let database_url = match &config.database_url {
            Some(url) => url.clone(),
            None if config.environment == Environment::Development => {
                let (pg, urls) = EmbeddedPostgres::start(Path::new(".molar"))
                    .await
                    .context("could not start the development database")?;
                embedded = Some(pg);
                config.migration_database_url = Some(urls.owner);
                config.database_url = Some(urls.server.clone());
                urls.server
            }
            None => bail!("DATABASE_URL is required outside development"),
        };
        if config.secret_key.is_none() && !config.is_production() {
            tracing::warn!(
                "SECRET_KEY is not set: using a random key, so tokens end with this process"
            );
            config.secret_key = Some(SecretString::from(random_hex(32)));
        }
        let read_url = config
            .database_read_url
            .as_ref()
            .map(|u| u.expose_secret().to_owned());
        let db = Db::connect_lazy(&config, database_url.expose_secret(), read_url.as_deref())?;

        let redis = match &config.redis_url {
            Some(url) => Some(Redis::new(
                url,
                &config.redis_key_prefix,
                config.redis_timeout,
            )?),
            None => {
                tracing::warn!(
                    "REDIS_URL is not set: cache and rate limits are in-process, \
                     correct for a single instance only"
                );
                None
            }
        };

        check_role(&config, &db).await?;
        let state = AppState::new(config, db, redis, telemetry::metrics_handle())?;
        documents::maintenance::check_keys(&state).await?;
        Ok(Server { state, embedded })
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves; then readiness turns 503 while requests are still
    /// accepted for `SHUTDOWN_DRAIN_SECONDS`, then in-flight requests finish and pools close.
    pub async fn run<F>(self, listener: TcpListener, shutdown: F) -> anyhow::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let state = self.state.clone();
        let config = &state.config;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

        let metrics_task = match config.metrics_port {
            Some(port) => {
                let l = TcpListener::bind((config.host.as_str(), port))
                    .await
                    .with_context(|| format!("cannot listen on METRICS_PORT {port}"))?;
                let mut rx = stop_rx.clone();
                let app = http::metrics_app(state.clone());
                Some(tokio::spawn(async move {
                    let _ = axum::serve(l, app)
                        .with_graceful_shutdown(async move {
                            let _ = rx.wait_for(|stopped| *stopped).await;
                        })
                        .await;
                }))
            }
            None => None,
        };

        let settle = (config.request_timeout * 2).max(Duration::from_secs(60));
        let maintenance =
            audit::spawn_maintenance(state.db.clone(), settle, Duration::from_secs(60));
        let sweeper = documents::maintenance::spawn_sweeper(state.clone());
        let outbox = outbox::spawn_worker(
            state.clone(),
            webhooks::deliver::Deliverer::new(config.webhook_allow_private)?,
        );
        let drain = config.shutdown_drain;
        let draining_state = state.clone();
        let app = app::app(state.clone());
        release_freed_memory();
        tracing::info!(
            address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            environment = config.environment.as_str(),
            version = health::VERSION,
            "molar is serving"
        );
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            draining_state.start_draining();
            tracing::info!(seconds = drain.as_secs(), "shutdown requested: draining");
            tokio::time::sleep(drain).await;
            tracing::info!("no longer accepting connections; finishing in-flight requests");
        })
        .await
        .context("the HTTP server failed")?;

        maintenance.abort();
        outbox.abort();
        if let Some(s) = sweeper {
            s.abort();
        }
        let _ = stop_tx.send(true);
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
        if tokio::time::timeout(Duration::from_secs(10), state.db.close())
            .await
            .is_err()
        {
            tracing::warn!("database connections did not close within 10 s");
        }
        if let Some(pg) = &self.embedded {
            pg.stop().await;
        }
        tracing::info!("molar stopped");
        Ok(())
    }
}

/// Refuses, in production, a database role that row-level security would not hold;
/// elsewhere it warns. Waits a while for the database to come up.
async fn check_role(config: &Config, db: &Db) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match db::role_check(db.pool()).await {
            Ok(check) => {
                let failures = check.failures();
                if failures.is_empty() {
                    return Ok(());
                }
                if config.is_production() {
                    bail!(
                        "unsafe database role `{}`: {}",
                        check.role,
                        failures.join("; ")
                    );
                }
                tracing::error!(role = %check.role, problems = %failures.join("; "),
                    "the database role would not be held by row-level security");
                return Ok(());
            }
            Err(e) if config.is_production() && tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "waiting for the database");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(_) if config.is_production() => {
                bail!("the database did not answer within 30 seconds")
            }
            Err(e) => {
                tracing::warn!(error = %e, "the database is not reachable yet; readiness will say so");
                return Ok(());
            }
        }
    }
}

/// Random bytes as hex, for development keys.
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Resolves when the process receives SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

//! Probes for Kubernetes and operators: liveness (touches nothing), readiness (database,
//! Redis when required, not draining), the deep start-up check, and Prometheus metrics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::ExposeSecret;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::db;
use crate::error::AppError;
use crate::state::AppState;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(startup_check))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the process answers.
    status: &'static str,
    version: &'static str,
}

/// Liveness: answers whenever the process does; touches no dependency.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: VERSION,
    })
}

/// One round trip to the database.
async fn ping(pool: &sqlx::PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT 1 AS "one!""#)
        .fetch_one(pool)
        .await
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, or `unavailable` while draining or when a required dependency is down.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// Readiness: the database answers, Redis too when required, and the server is not draining.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready for traffic", body = Readiness),
        (status = 503, description = "Draining or a required dependency is down", body = Readiness)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let unavailable = |reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                status: "unavailable",
                reason: Some(reason.to_owned()),
            }),
        )
            .into_response()
    };
    if state.is_draining() {
        return unavailable("shutting down");
    }
    let probe_timeout = state.config.db_pool_timeout.min(Duration::from_secs(2));
    let db_ok = tokio::time::timeout(probe_timeout, ping(state.db.pool()))
        .await
        .is_ok_and(|r| r.is_ok());
    if !db_ok {
        return unavailable("database unavailable");
    }
    if state.config.require_redis {
        let redis_ok = match &state.redis {
            Some(r) => r.ping().await.is_ok(),
            None => false,
        };
        if !redis_ok {
            return unavailable("redis unavailable");
        }
    }
    Json(Readiness {
        status: "ready",
        reason: None,
    })
    .into_response()
}

#[derive(Serialize, ToSchema, Clone)]
pub struct Check {
    /// `ok`, `fail`, or `skipped` (not configured).
    status: &'static str,
    /// Whether a failure of this check makes the server unfit to serve.
    required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    details: Option<serde_json::Value>,
}

impl Check {
    fn ok(required: bool, started: Instant) -> Check {
        Check {
            status: "ok",
            required,
            latency_ms: Some(elapsed_ms(started)),
            reason: None,
            details: None,
        }
    }

    fn fail(required: bool, started: Option<Instant>, reason: impl Into<String>) -> Check {
        Check {
            status: "fail",
            required,
            latency_ms: started.map(elapsed_ms),
            reason: Some(reason.into()),
            details: None,
        }
    }

    fn skipped(reason: &str) -> Check {
        Check {
            status: "skipped",
            required: false,
            latency_ms: None,
            reason: Some(reason.to_owned()),
            details: None,
        }
    }

    fn with_details(mut self, details: serde_json::Value) -> Check {
        self.details = Some(details);
        self
    }
}

fn elapsed_ms(started: Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

#[derive(Serialize, ToSchema)]
pub struct StartupCheck {
    /// `ok`, `degraded` (an optional dependency is down) or `fail` (a required one is).
    status: &'static str,
    version: &'static str,
    checks: BTreeMap<&'static str, Check>,
}

/// Deep check of everything the server depends on; 503 only when a required check fails.
#[utoipa::path(get, path = "/startup-check", tag = "operations",
    responses(
        (status = 200, description = "All required checks pass (status ok or degraded)", body = StartupCheck),
        (status = 503, description = "A required check failed", body = StartupCheck)))]
pub async fn startup_check(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let mut report = run_startup_checks(&state).await;
    // In production the details (role name, migration versions) are for operators only:
    // probes get the statuses and reasons, the metrics token holder everything.
    if state.config.is_production() && !metrics_authorized(&state, &headers) {
        for check in report.checks.values_mut() {
            check.details = None;
        }
    }
    let code = if report.status == "fail" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(report)).into_response()
}

pub async fn run_startup_checks(state: &AppState) -> StartupCheck {
    let mut checks = BTreeMap::new();
    let pool = state.db.pool();
    let limit = state.config.db_pool_timeout.min(Duration::from_secs(3));

    let started = Instant::now();
    let db_up = matches!(tokio::time::timeout(limit, ping(pool)).await, Ok(Ok(_)));
    checks.insert(
        "database",
        if db_up {
            Check::ok(true, started)
        } else {
            Check::fail(true, Some(started), "the database did not answer")
        },
    );

    let started = Instant::now();
    checks.insert(
        "migrations",
        if !db_up {
            Check::fail(true, None, "the database did not answer")
        } else {
            match db::migration_status(pool).await {
                Ok(s) if s.ok() => Check::ok(true, started).with_details(serde_json::json!(s)),
                Ok(s) => Check::fail(
                    true,
                    Some(started),
                    "migrations are pending or were modified; run `molar migrate`",
                )
                .with_details(serde_json::json!(s)),
                Err(_) => Check::fail(true, Some(started), "the migration table cannot be read"),
            }
        },
    );

    let started = Instant::now();
    checks.insert(
        "database_role",
        if !db_up {
            Check::fail(true, None, "the database did not answer")
        } else {
            match db::role_check(pool).await {
                Ok(r) if r.failures().is_empty() => {
                    Check::ok(true, started).with_details(serde_json::json!({ "role": r.role }))
                }
                Ok(r) => Check::fail(true, Some(started), r.failures().join("; ")),
                Err(_) => Check::fail(true, Some(started), "the role could not be inspected"),
            }
        },
    );

    let started = Instant::now();
    let required = state.config.require_redis;
    checks.insert(
        "redis",
        match &state.redis {
            None if required => Check::fail(true, None, "REDIS_URL is not configured"),
            None => Check::skipped("REDIS_URL is not configured; in-process cache and limits"),
            Some(r) => match r.ping().await {
                Ok(()) => Check::ok(required, started),
                Err(e) => Check::fail(required, Some(started), e.to_string()),
            },
        },
    );

    let started = Instant::now();
    checks.insert("storage", storage_check(state, db_up, started).await);

    checks.insert("config", Check::ok(true, Instant::now()).with_details(serde_json::json!({
        "environment": state.config.environment.as_str(),
        "secret_key": if state.config.secret_key.as_ref().is_some_and(|s| !s.expose_secret().is_empty()) { "set" } else { "development key" },
    })));

    let failed_required = checks.values().any(|c| c.status == "fail" && c.required);
    let failed_optional = checks.values().any(|c| c.status == "fail" && !c.required);
    StartupCheck {
        status: if failed_required {
            "fail"
        } else if failed_optional {
            "degraded"
        } else {
            "ok"
        },
        version: VERSION,
        checks,
    }
}

/// Documents: the store takes, returns and removes a sealed probe, and every key that
/// wraps a stored document is configured. Optional: the rest of the API works without it.
async fn storage_check(state: &AppState, db_up: bool, started: Instant) -> Check {
    use crate::documents::maintenance;
    let Some(docs) = &state.documents else {
        return Check::skipped("documents are off: FILE_ENCRYPTION_KEY is not set");
    };
    let details = serde_json::json!({ "store": docs.store.kind, "key_id": docs.keys.current_id() });
    let limit = Duration::from_secs(5);
    match tokio::time::timeout(limit, maintenance::probe(docs)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "the document store failed its probe");
            return Check::fail(
                false,
                Some(started),
                "the document store failed a write-read-delete round trip",
            )
            .with_details(details);
        }
        Err(_) => {
            return Check::fail(
                false,
                Some(started),
                "the document store did not answer in time",
            )
            .with_details(details)
        }
    }
    if db_up {
        if let Ok(usage) = maintenance::keys_in_use(&state.db).await {
            let unknown = maintenance::unknown_keys(docs, &usage);
            if !unknown.is_empty() {
                return Check::fail(
                    false,
                    Some(started),
                    format!(
                        "documents are wrapped under keys this server does not have: {}",
                        unknown.join(", ")
                    ),
                )
                .with_details(details);
            }
        }
    }
    Check::ok(false, started).with_details(details)
}

/// Prometheus text exposition. Open in development; in production it needs
/// `Authorization: Bearer <METRICS_TOKEN>` (or is served only on `METRICS_PORT`).
/// Whether the request carries the metrics bearer token.
fn metrics_authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match (&state.config.metrics_token, presented) {
        (Some(expected), Some(given)) => {
            use subtle::ConstantTimeEq;
            bool::from(expected.expose_secret().as_bytes().ct_eq(given.as_bytes()))
        }
        _ => false,
    }
}

pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.config.metrics_open() && !metrics_authorized(&state, &headers) {
        return AppError::Unauthorized("metrics need the metrics bearer token".into())
            .into_response();
    }
    render_metrics(&state).into_response()
}

pub fn render_metrics(state: &AppState) -> impl IntoResponse {
    let pool = state.db.stats();
    metrics::gauge!("db_pool_connections").set(pool.size as f64);
    metrics::gauge!("db_pool_idle").set(pool.available as f64);
    metrics::gauge!("db_pool_waiting").set(state.db.waiting() as f64);
    metrics::gauge!("db_pool_max").set(state.config.db_pool_size as f64);
    let body = state.metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
}

//! One error type for the whole API, rendered as RFC 9457 `application/problem+json`.
//! Internal detail (SQL, driver messages, causes) is logged, never returned.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";

tokio::task_local! {
    /// The request id of the request being served, for error bodies built deep in handlers.
    pub static REQUEST_ID: String;
}

pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}

/// One invalid field of a request.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct FieldError {
    /// The field, as a dotted path into the body or the name of a query parameter.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    /// Extra members of specific problems (e.g. `conflicts`).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("forbidden")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {detail}")]
    Conflict {
        detail: String,
        extra: Option<serde_json::Map<String, serde_json::Value>>,
    },
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType(String),
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Stored content that failed its integrity check (never served).
    #[error("integrity: {0}")]
    Integrity(String),
    #[error("range not satisfiable")]
    RangeNotSatisfiable,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        AppError::Validation(vec![FieldError::new(field, message)])
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        AppError::Conflict {
            detail: detail.into(),
            extra: None,
        }
    }

    pub fn not_found(what: &str) -> Self {
        AppError::NotFound(format!("{what} not found"))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict { .. } => StatusCode::CONFLICT,
            AppError::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            AppError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Integrity(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AppError::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            AppError::Database(e) if db_unavailable(e) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Database(e) if concurrent_update(e) => StatusCode::CONFLICT,
            AppError::Database(_) | AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn to_problem(&self) -> Problem {
        let status = self.status();
        let (slug, detail, errors, extra) = match self {
            AppError::BadRequest(d) => ("bad-request", d.clone(), None, None),
            AppError::Unauthorized(d) => ("unauthorized", d.clone(), None, None),
            AppError::Forbidden(d) => ("forbidden", d.clone(), None, None),
            AppError::NotFound(d) => ("not-found", d.clone(), None, None),
            AppError::Conflict { detail, extra } => {
                ("conflict", detail.clone(), None, extra.clone())
            }
            AppError::PreconditionFailed => (
                "precondition-failed",
                "If-Match does not match the current version of the resource".into(),
                None,
                None,
            ),
            AppError::PayloadTooLarge => (
                "payload-too-large",
                "the request body is larger than this server accepts".into(),
                None,
                None,
            ),
            AppError::UnsupportedMediaType(d) => ("unsupported-media-type", d.clone(), None, None),
            AppError::Validation(errs) => (
                "validation-error",
                "the request has invalid fields".into(),
                Some(errs.clone()),
                None,
            ),
            AppError::RateLimited { .. } => (
                "rate-limited",
                "too many requests; retry after the time in Retry-After".into(),
                None,
                None,
            ),
            AppError::Unavailable(d) => ("service-unavailable", d.clone(), None, None),
            AppError::Integrity(d) => ("integrity-failure", d.clone(), None, None),
            AppError::RangeNotSatisfiable => (
                "range-not-satisfiable",
                "the requested range is outside the content; see Content-Range for its length"
                    .into(),
                None,
                None,
            ),
            AppError::Database(e) if db_unavailable(e) => (
                "service-unavailable",
                "the database is unavailable; retry shortly".into(),
                None,
                None,
            ),
            AppError::Database(e) if concurrent_update(e) => (
                "conflict",
                "a concurrent change got in the way; retry the request".into(),
                None,
                None,
            ),
            AppError::Database(_) | AppError::Internal(_) => (
                "internal-error",
                "an internal error occurred; quote the request id when reporting it".into(),
                None,
                None,
            ),
        };
        Problem {
            type_: problem_type(slug),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            request_id: current_request_id(),
            errors,
            extra,
        }
    }
}

/// Problem types are URNs under Molar's namespace; each is described in docs/errors.md.
pub fn problem_type(slug: &str) -> String {
    format!("urn:molar:problem:{slug}")
}

/// Errors that mean "the database is not answering", as opposed to a bug.
pub fn db_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections,
            // read-only after failover
            matches!(
                db.code().as_deref(),
                Some("57P01" | "57P02" | "57P03" | "53300" | "25006")
            )
        }
        _ => false,
    }
}

/// A deadlock or serialization failure: the request lost a race and may simply be retried.
pub fn concurrent_update(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// Whether `e` violated one of the named constraints.
fn violates(e: &sqlx::Error, names: &[&str]) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.constraint().is_some_and(|c| names.contains(&c)))
}

impl AppError {
    /// Whether this is a database error that violated one of the named constraints.
    pub fn violates(&self, names: &[&str]) -> bool {
        matches!(self, AppError::Database(e) if violates(e, names))
    }
}

/// Turns a named constraint's violation into the answer a client should see (a 409, a
/// 422…); any other error passes through unchanged.
pub trait OnConstraint<T> {
    fn on_constraint(self, name: &str, answer: impl FnOnce() -> AppError) -> AppResult<T>;
}

impl<T, E: Into<AppError>> OnConstraint<T> for Result<T, E> {
    fn on_constraint(self, name: &str, answer: impl FnOnce() -> AppError) -> AppResult<T> {
        self.map_err(|e| match e.into() {
            e if e.violates(&[name]) => answer(),
            e => e,
        })
    }
}

pub fn problem_response(status: StatusCode, problem: &Problem) -> Response {
    let body = serde_json::to_vec(problem).unwrap_or_else(|_| b"{}".to_vec());
    let mut res = (status, body).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    res
}

/// A database error as it may be logged: what identifies the failure (the SQLSTATE, the
/// constraint, table, column and type it names, and PostgreSQL's routine) and never what
/// may quote the data involved. PostgreSQL's message, DETAIL and CONTEXT can hold the
/// values of a statement's parameters or rows (`Key (email)=(…) already exists`,
/// `invalid input syntax for type uuid: "…"`, `JSON data, line 1: …`), which are patient
/// data; so can a decoding error's source. Use it wherever a `sqlx::Error` is logged.
pub fn loggable(e: &sqlx::Error) -> Loggable<'_> {
    Loggable(e)
}

/// See [`loggable`].
pub struct Loggable<'a>(&'a sqlx::Error);

impl std::fmt::Display for Loggable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            sqlx::Error::Database(db) => {
                write!(
                    f,
                    "database error SQLSTATE {}",
                    db.code().as_deref().unwrap_or("unknown")
                )?;
                let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
                let named = [
                    ("constraint", db.constraint()),
                    ("table", db.table()),
                    ("column", pg.and_then(|p| p.column())),
                    ("type", pg.and_then(|p| p.data_type())),
                    ("routine", pg.and_then(|p| p.routine())),
                ];
                for (what, name) in named {
                    if let Some(name) = name {
                        write!(f, " {what}={name}")?;
                    }
                }
                Ok(())
            }
            sqlx::Error::ColumnDecode { index, .. } => {
                write!(f, "could not decode column {index}")
            }
            sqlx::Error::Decode(_) => f.write_str("could not decode a value"),
            sqlx::Error::Encode(_) => f.write_str("could not encode a value"),
            // The other kinds describe the connection, the pool or the query's shape.
            other => write!(f, "{other}"),
        }
    }
}

impl AppError {
    /// The error as it may be logged: a database error through [`loggable`].
    pub fn loggable(&self) -> String {
        match self {
            AppError::Database(e) => loggable(e).to_string(),
            // Each cause on its own, a database error among them through `loggable`.
            AppError::Internal(e) => e
                .chain()
                .map(|cause| match cause.downcast_ref::<sqlx::Error>() {
                    Some(db) => loggable(db).to_string(),
                    None => cause.to_string(),
                })
                .collect::<Vec<_>>()
                .join(": "),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            match &self {
                AppError::Database(e) if db_unavailable(e) => {
                    tracing::warn!(error = %loggable(e), "database unavailable")
                }
                AppError::Unavailable(d) => tracing::warn!(detail = %d, "dependency unavailable"),
                other => tracing::error!(error = %other.loggable(), "internal error"),
            }
        }
        let problem = self.to_problem();
        let mut res = problem_response(status, &problem);
        if let AppError::RateLimited { retry_after_secs } = self {
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs.max(1)),
            );
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_cause() {
        let e = AppError::Internal(anyhow::anyhow!("password=hunter2 in SELECT * FROM users"));
        let p = e.to_problem();
        assert_eq!(p.status, 500);
        assert!(!p.detail.contains("hunter2"));
        assert!(!p.detail.contains("SELECT"));
    }

    #[test]
    fn pool_timeout_is_503() {
        assert_eq!(
            AppError::Database(sqlx::Error::PoolTimedOut).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn validation_lists_fields() {
        let p = AppError::validation("clinic.timezone", "unknown time zone").to_problem();
        assert_eq!(p.status, 422);
        let errs = p.errors.expect("errors present");
        assert_eq!(errs[0].field, "clinic.timezone");
    }
}

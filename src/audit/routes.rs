//! `GET /audit-events`: the clinic's audit trail, newest first, for owners and admins.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::Event;
use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult, Problem};
use crate::http::extract::ApiQuery;
use crate::http::pagination::{self, Page};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit_events))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEvent {
    id: Uuid,
    at: DateTime<Utc>,
    user_id: Option<Uuid>,
    /// `<resource>.<verb>`, e.g. `patient.read`, `auth.login`.
    action: String,
    resource_type: String,
    resource_id: Option<Uuid>,
    patient_id: Option<Uuid>,
    request_id: Option<String>,
    ip: Option<String>,
    /// `success` or `failure`.
    outcome: String,
    #[schema(value_type = Option<Object>)]
    details: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    patient_id: Option<Uuid>,
    user_id: Option<Uuid>,
    /// Only events of this action, e.g. `auth.login`.
    action: Option<String>,
    /// Events at or after this instant.
    from: Option<DateTime<Utc>>,
    /// Events before this instant.
    to: Option<DateTime<Utc>>,
    /// Page size (default 50, max 200).
    limit: Option<u32>,
    cursor: Option<String>,
}

type Row = (
    Uuid,
    DateTime<Utc>,
    Option<Uuid>,
    String,
    String,
    Option<Uuid>,
    Option<Uuid>,
    Option<String>,
    Option<ipnet::IpNet>,
    String,
    Option<serde_json::Value>,
);

/// The audit trail (owner and admin only), newest first.
#[utoipa::path(get, path = "/audit-events", tag = "audit", security(("bearer" = [])),
    params(AuditParams),
    responses(
        (status = 200, description = "A page of events", body = Page<AuditEvent>),
        (status = 400, description = "Malformed parameters or cursor", body = Problem),
        (status = 403, description = "Only owners and admins read the audit trail", body = Problem)))]
pub async fn list_audit_events(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> AppResult<Json<Page<AuditEvent>>> {
    caller
        .authorize(&state, Permission::AuditRead, || {
            Event::new("audit.list", "audit_event")
        })
        .await?;
    let limit = pagination::limit(p.limit)?;
    if let (Some(from), Some(to)) = (p.from, p.to) {
        if from > to {
            return Err(AppError::validation("from", "must not be after `to`"));
        }
    }
    let before: Option<(DateTime<Utc>, Uuid)> = p
        .cursor
        .as_deref()
        .map(|c| state.cursors.decode(c))
        .transpose()?;
    let mut tx = caller.begin(&state).await?;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, at, user_id, action, resource_type, resource_id, patient_id, request_id, ip, outcome, details \
         FROM audit_events \
         WHERE ($1::uuid IS NULL OR patient_id = $1) AND ($2::uuid IS NULL OR user_id = $2) \
           AND ($3::text IS NULL OR action = $3) \
           AND ($4::timestamptz IS NULL OR at >= $4) AND ($5::timestamptz IS NULL OR at < $5) \
           AND ($6::timestamptz IS NULL OR (at, id) < ($6, $7)) \
         ORDER BY at DESC, id DESC LIMIT $8",
    )
    .bind(p.patient_id)
    .bind(p.user_id)
    .bind(p.action.as_deref())
    .bind(p.from)
    .bind(p.to)
    .bind(before.map(|b| b.0))
    .bind(before.map(|b| b.1))
    .bind(limit as i64 + 1)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let items: Vec<AuditEvent> = rows
        .into_iter()
        .map(|r| AuditEvent {
            id: r.0,
            at: r.1,
            user_id: r.2,
            action: r.3,
            resource_type: r.4,
            resource_id: r.5,
            patient_id: r.6,
            request_id: r.7,
            ip: r.8.map(|n| n.addr().to_string()),
            outcome: r.9,
            details: r.10,
        })
        .collect();
    Ok(Json(Page::from_overfetch(items, limit, |e| {
        state.cursors.encode(&(e.at, e.id))
    })))
}

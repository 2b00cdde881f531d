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
use crate::http::pagination::{self, Limit, Page};
use crate::http::query::ActionName;
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
    /// What else the event records; a list's or search's event names the records it
    /// returned under `ids`, in the order returned.
    #[schema(value_type = Option<Object>)]
    details: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only events about this patient.
    patient_id: Option<Uuid>,
    /// Only events of this user.
    user_id: Option<Uuid>,
    /// Only events of this action, e.g. `auth.login`.
    #[param(value_type = Option<String>, pattern = r"^[a-z_]{1,50}\.[a-z_]{1,50}$")]
    action: Option<ActionName>,
    /// Events at or after this instant.
    from: Option<DateTime<Utc>>,
    /// Events before this instant; not before `from` (422).
    to: Option<DateTime<Utc>>,
    /// Page size (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200, default = 50)]
    limit: Option<Limit>,
    /// The `next_cursor` of the previous page (opaque; a cursor this server did not issue
    /// is a 400).
    #[param(min_length = 1, pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

/// The audit trail (owner and admin only), newest first.
#[utoipa::path(get, path = "/audit-events", tag = "audit", security(("bearer" = [])),
    params(AuditParams),
    responses(
        (status = 200, description = "A page of events", body = Page<AuditEvent>),
        (status = 400, description = "Malformed parameters or cursor", body = Problem),
        (status = 403, description = "Only owners and admins read the audit trail", body = Problem),
        (status = 422, description = "`from` is after `to`", body = Problem)))]
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
    crate::validate::storable_param("from", p.from)?;
    crate::validate::storable_param("to", p.to)?;
    if let (Some(from), Some(to)) = (p.from, p.to) {
        if from > to {
            return Err(AppError::validation("from", "must not be after `to`"));
        }
    }
    let before: Option<(DateTime<Utc>, Uuid)> = state.cursors.decode_opt(p.cursor.as_deref())?;
    let (before_at, before_id) = before.unzip();
    let mut tx = caller.begin(&state).await?;
    let events = sqlx::query_as!(
        AuditEvent,
        "SELECT id, at, user_id, action, resource_type, resource_id, patient_id, request_id, \
                host(ip) AS ip, outcome, \
                CASE WHEN ids IS NULL THEN details \
                     ELSE coalesce(details, '{}'::jsonb) || jsonb_build_object('ids', to_jsonb(ids)) END AS details \
         FROM audit_events \
         WHERE ($1::uuid IS NULL OR patient_id = $1) AND ($2::uuid IS NULL OR user_id = $2) \
           AND ($3::text IS NULL OR action = $3) \
           AND ($4::timestamptz IS NULL OR at >= $4) AND ($5::timestamptz IS NULL OR at < $5) \
           AND ($6::timestamptz IS NULL OR (at, id) < ($6, $7)) \
         ORDER BY at DESC, id DESC LIMIT $8",
        p.patient_id,
        p.user_id,
        p.action.as_ref().map(|a| a.0.as_str()),
        p.from,
        p.to,
        before_at,
        before_id,
        pagination::overfetch(limit)
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(
        state
            .cursors
            .page(events, limit, |e: &AuditEvent| (e.at, e.id)),
    ))
}

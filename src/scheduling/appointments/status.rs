//! The status machine of an appointment and its history of changes.

use super::*;
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult, Problem};
use crate::http::extract::{ApiJson, ApiPath};
use crate::scheduling::AppointmentStatus;
use crate::state::AppState;
use crate::validate::Errors;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"status": "confirmed"}))]
pub struct StatusChange {
    /// The new status: `scheduled → confirmed → arrived → in_chair → completed`, also
    /// `scheduled → arrived`; `scheduled`/`confirmed` → `cancelled` or `no_show`; any other
    /// transition is a 409.
    #[schema(value_type = AppointmentStatus)]
    pub(super) status: String,
    #[schema(schema_with = crate::validate::schema::text_500_or_null)]
    pub(super) reason: Option<String>,
}

/// Moves an appointment through its status machine; anything else is 409.
#[utoipa::path(post, path = "/appointments/{id}/status", tag = "scheduling", security(("bearer" = [])),
    params(AppointmentPath),
    request_body = StatusChange,
    responses((status = 200, description = "The appointment in its new status", body = Appointment),
              (status = 404, description = "No such appointment in your clinic", body = Problem),
              (status = 409, description = "Not a permitted transition", body = Problem),
              (status = 422, description = "Unknown status", body = Problem)))]
pub async fn change_status(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(AppointmentPath { id }): ApiPath<AppointmentPath>,
    ApiJson(body): ApiJson<StatusChange>,
) -> AppResult<Response> {
    caller
        .authorize(&state, Permission::AppointmentsWrite, || {
            Event::new("appointment.status", "appointment").resource(id)
        })
        .await?;
    let mut errors = Errors::default();
    let next = AppointmentStatus::parse(&body.status);
    if next.is_none() {
        errors.add(
            "status",
            "must be scheduled, confirmed, arrived, in_chair, completed, cancelled or no_show",
        );
    }
    let reason = body
        .reason
        .as_deref()
        .map(|r| errors.text("reason", r, 500));
    errors.finish()?;
    let next = next.ok_or_else(|| AppError::validation("status", "is unknown"))?;
    let mut tx = caller.begin(&state).await?;
    let current = load_for_update(&mut tx, id).await?;
    if !current.status.can_become(next) {
        return Err(AppError::conflict(format!(
            "an appointment cannot go from {} to {}",
            current.status.as_str(),
            next.as_str()
        )));
    }
    // Back from cancelled is not allowed, so a status change never re-occupies a slot.
    let row = sqlx::query_as!(
        Row,
        "UPDATE appointments SET status = $2, version = version + 1, updated_at = now() WHERE id = $1 \
         RETURNING id, patient_id, provider_id, operatory_id, start_at, end_at, status, reason, notes, \
         outside_hours, version, created_by, created_at, updated_at",
        id,
        next.as_str()
    )
    .fetch_one(&mut *tx)
    .await?;
    record_history(
        &mut tx,
        &caller,
        id,
        Change {
            kind: "status",
            from_status: Some(current.status.as_str()),
            to_status: Some(next.as_str()),
            from: None,
            to: None,
            reason: reason.as_deref(),
        },
    )
    .await?;
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new("appointment.status", "appointment")
            .resource(id)
            .patient(current.patient_id)
            .details(serde_json::json!({"from": current.status, "to": next})),
    )
    .await?;
    tx.commit().await?;
    Ok(respond(StatusCode::OK, &row.into()))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEntry {
    pub(super) id: Uuid,
    /// `created`, `status`, `rescheduled` or `updated`.
    pub(super) kind: String,
    pub(super) from_status: Option<String>,
    pub(super) to_status: Option<String>,
    pub(super) from_start_at: Option<DateTime<Utc>>,
    pub(super) from_end_at: Option<DateTime<Utc>>,
    pub(super) to_start_at: Option<DateTime<Utc>>,
    pub(super) to_end_at: Option<DateTime<Utc>>,
    pub(super) reason: Option<String>,
    pub(super) changed_by: Uuid,
    pub(super) changed_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct History {
    pub(super) items: Vec<HistoryEntry>,
}

/// Every change of an appointment: who, when and why.
#[utoipa::path(get, path = "/appointments/{id}/history", tag = "scheduling", security(("bearer" = [])),
    params(AppointmentPath),
    responses((status = 200, description = "The history, oldest first", body = History),
              (status = 404, description = "No such appointment in your clinic", body = Problem)))]
pub async fn appointment_history(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(AppointmentPath { id }): ApiPath<AppointmentPath>,
) -> AppResult<Json<History>> {
    caller
        .authorize(&state, Permission::AppointmentsRead, || {
            Event::new("appointment.read", "appointment").resource(id)
        })
        .await?;
    let mut tx = caller.begin(&state).await?;
    let a = load(&mut tx, id).await?;
    let items = sqlx::query_as!(
        HistoryEntry,
        "SELECT id, kind, from_status, to_status, from_start_at, from_end_at, to_start_at, to_end_at, \
         reason, changed_by, changed_at FROM appointment_history WHERE appointment_id = $1 \
         ORDER BY changed_at, id",
        id
    )
    .fetch_all(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new("appointment.read", "appointment")
            .resource(id)
            .patient(a.patient_id),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(History { items }))
}

//! Reading the book: one appointment, the calendar over a window, and free starts.

use super::*;
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult, Problem};
use crate::http::extract::{ApiPath, ApiQuery};
use crate::http::pagination::{self, Limit, Page};
use crate::scheduling::{free_slots, hours, providers, working_intervals, AppointmentStatus};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CalendarParams {
    /// Window start (default: now).
    pub(super) from: Option<DateTime<Utc>>,
    /// Window end (default: 7 days after `from`): after `from` and at most
    /// `CALENDAR_MAX_DAYS` (62 by default) after it, else 422.
    pub(super) to: Option<DateTime<Utc>>,
    /// Only this provider's appointments.
    pub(super) provider_id: Option<Uuid>,
    /// Only this operatory's appointments.
    pub(super) operatory_id: Option<Uuid>,
    /// Only this patient's appointments.
    pub(super) patient_id: Option<Uuid>,
    /// Only appointments in this status.
    pub(super) status: Option<AppointmentStatus>,
    /// Page size (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200, default = 50)]
    pub(super) limit: Option<Limit>,
    /// The `next_cursor` of the previous page (opaque; a cursor this server did not issue
    /// is a 400).
    #[param(min_length = 1, pattern = "^[A-Za-z0-9_-]+$")]
    pub(super) cursor: Option<String>,
}

/// The calendar: appointments overlapping a time window, by start time.
#[utoipa::path(get, path = "/appointments", tag = "scheduling", security(("bearer" = [])),
    params(CalendarParams),
    responses((status = 200, description = "A page of appointments", body = Page<Appointment>),
              (status = 400, description = "Malformed parameters or cursor", body = Problem),
              (status = 422, description = "A window longer than allowed", body = Problem)))]
pub async fn list_appointments(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<CalendarParams>,
) -> AppResult<Json<Page<Appointment>>> {
    caller
        .authorize(&state, Permission::AppointmentsRead, || {
            Event::new("appointment.list", "appointment")
        })
        .await?;
    let limit = pagination::limit(p.limit)?;
    crate::validate::storable_param("from", p.from)?;
    crate::validate::storable_param("to", p.to)?;
    let from = p.from.unwrap_or_else(Utc::now);
    let to = p.to.unwrap_or(from + Duration::days(7));
    let max = state.config.calendar_max_days as i64;
    if to <= from {
        return Err(AppError::validation("to", "must be after from"));
    }
    if to - from > Duration::days(max) {
        return Err(AppError::validation(
            "to",
            format!("the window may span at most {max} days"),
        ));
    }
    let after: Option<(DateTime<Utc>, Uuid)> = p
        .cursor
        .as_deref()
        .map(|c| state.cursors.decode(c))
        .transpose()?;
    let mut tx = caller.begin(&state).await?;
    let rows = sqlx::query_as!(
        Row,
        "SELECT id, patient_id, provider_id, operatory_id, start_at, end_at, status, reason, notes, \
         outside_hours, version, created_by, created_at, updated_at FROM appointments \
         WHERE start_at < $2 AND end_at > $1 \
         AND ($3::uuid IS NULL OR provider_id = $3) AND ($4::uuid IS NULL OR operatory_id = $4) \
         AND ($5::uuid IS NULL OR patient_id = $5) AND ($6::text IS NULL OR status = $6) \
         AND ($7::timestamptz IS NULL OR (start_at, id) > ($7, $8)) \
         ORDER BY start_at, id LIMIT $9",
        from,
        to,
        p.provider_id,
        p.operatory_id,
        p.patient_id,
        p.status.map(|s| s.as_str()),
        after.map(|a| a.0),
        after.map(|a| a.1),
        limit as i64 + 1
    )
    .fetch_all(&mut *tx)
    .await?;
    let page = Page::from_overfetch(
        rows.into_iter().map(Appointment::from).collect(),
        limit,
        |a| state.cursors.encode(&(a.start_at, a.id)),
    );
    let ids: Vec<Uuid> = page.items.iter().map(|a| a.id).collect();
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new("appointment.list", "appointment").ids(ids),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(page))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityParams {
    /// An active provider of the caller's clinic (else 422).
    pub(super) provider_id: Uuid,
    /// The local date in the clinic's time zone.
    pub(super) date: NaiveDate,
    /// The appointment's length: 5 to `APPOINTMENT_MAX_MINUTES` (480 by default).
    #[param(minimum = 5, maximum = 1440)]
    pub(super) duration_minutes: u32,
    /// Also require this operatory (an active one of the caller's clinic, else 422) to be free.
    pub(super) operatory_id: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FreeSlot {
    pub(super) start_at: DateTime<Utc>,
    pub(super) end_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Availability {
    pub(super) items: Vec<FreeSlot>,
}

/// Free starts on the grid where `duration_minutes` fits inside the provider's working
/// hours without touching a booking (nor the operatory's, when given); future starts only.
#[utoipa::path(get, path = "/availability", tag = "scheduling", security(("bearer" = [])),
    params(AvailabilityParams),
    responses((status = 200, description = "Free slots", body = Availability),
              (status = 400, description = "Malformed parameters", body = Problem),
              (status = 422, description = "The provider or the operatory is not an active one of your clinic", body = Problem)))]
pub async fn availability(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<AvailabilityParams>,
) -> AppResult<Json<Availability>> {
    caller
        .authorize(&state, Permission::AppointmentsRead, || {
            Event::new("availability.read", "user")
        })
        .await?;
    if !hours::plain_date(p.date) {
        return Err(AppError::validation("date", "must be a date YYYY-MM-DD"));
    }
    if p.duration_minutes < 5 || p.duration_minutes > state.config.appointment_max_minutes {
        return Err(AppError::BadRequest(format!(
            "the query parameter `duration_minutes` must be 5 to {}",
            state.config.appointment_max_minutes
        )));
    }
    let mut tx = caller.begin(&state).await?;
    if !providers::is_active(&mut tx, p.provider_id).await? {
        return Err(AppError::validation(
            "provider_id",
            "is not a provider of your clinic",
        ));
    }
    if let Some(op) = p.operatory_id {
        if operatory_active(&mut tx, op).await? != Some(true) {
            return Err(AppError::validation(
                "operatory_id",
                "is not an active operatory of your clinic",
            ));
        }
    }
    let tz = clinic_tz(&state, &mut tx, caller.clinic_id).await?;
    let (weekly, exceptions) = hours::load(&mut tx, p.provider_id, p.date, p.date).await?;
    let intervals = working_intervals(tz, p.date, &weekly, &exceptions);
    let (day_start, day_end) = match (intervals.first(), intervals.iter().map(|i| i.1).max()) {
        (Some(first), Some(last)) => (first.0, last),
        _ => {
            tx.commit().await?;
            return Ok(Json(Availability { items: vec![] }));
        }
    };
    let busy: Vec<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query!(
        "SELECT start_at, end_at FROM appointments \
         WHERE (provider_id = $1 OR ($2::uuid IS NOT NULL AND operatory_id = $2)) \
           AND status NOT IN ('cancelled', 'no_show') AND start_at < $4 AND end_at > $3",
        p.provider_id,
        p.operatory_id,
        day_start,
        day_end
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.start_at, r.end_at))
    .collect();
    tx.commit().await?;
    let slots = free_slots(
        &intervals,
        &busy,
        Duration::minutes(p.duration_minutes as i64),
        Duration::minutes(state.config.availability_grid_minutes as i64),
        Utc::now(),
    );
    Ok(Json(Availability {
        items: slots
            .into_iter()
            .map(|(start_at, end_at)| FreeSlot { start_at, end_at })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AppointmentPath {
    /// The appointment's id.
    pub(super) id: Uuid,
}

/// One appointment.
#[utoipa::path(get, path = "/appointments/{id}", tag = "scheduling", security(("bearer" = [])),
    params(AppointmentPath),
    responses((status = 200, description = "The appointment", body = Appointment),
              (status = 404, description = "No such appointment in your clinic", body = Problem)))]
pub async fn get_appointment(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(AppointmentPath { id }): ApiPath<AppointmentPath>,
) -> AppResult<Response> {
    caller
        .authorize(&state, Permission::AppointmentsRead, || {
            Event::new("appointment.read", "appointment").resource(id)
        })
        .await?;
    let mut tx = caller.begin(&state).await?;
    let a = load(&mut tx, id).await?;
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new("appointment.read", "appointment")
            .resource(id)
            .patient(a.patient_id),
    )
    .await?;
    tx.commit().await?;
    Ok(respond(StatusCode::OK, &a))
}

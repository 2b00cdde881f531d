//! Appointments: booking and rescheduling under the database's exclusion constraints (a
//! double booking is a 409 listing what it clashes with), the status machine with its
//! history, the calendar, and availability computed on the server.

use std::sync::LazyLock;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{free_slots, hours, working_intervals, AppointmentStatus};
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::db::Tx;
use crate::error::{violated_constraint, AppError, AppResult, Problem};
use crate::http::etag;
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use crate::http::idempotency::{self, Created, HashedJson};
use crate::http::pagination::{self, Page};
use crate::patients::routes::require;
use crate::state::AppState;
use crate::validate::{patch_field, Errors};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_appointments, book_appointment))
        .routes(routes!(get_appointment, reschedule_appointment))
        .routes(routes!(change_status))
        .routes(routes!(appointment_history))
        .routes(routes!(availability))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Appointment {
    id: Uuid,
    patient_id: Uuid,
    provider_id: Uuid,
    operatory_id: Uuid,
    start_at: DateTime<Utc>,
    end_at: DateTime<Utc>,
    status: AppointmentStatus,
    reason: Option<String>,
    notes: Option<String>,
    /// Booked outside the provider's working hours with `override`.
    outside_hours: bool,
    version: i32,
    created_by: Uuid,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    patient_id: Uuid,
    provider_id: Uuid,
    operatory_id: Uuid,
    start_at: DateTime<Utc>,
    end_at: DateTime<Utc>,
    status: String,
    reason: Option<String>,
    notes: Option<String>,
    outside_hours: bool,
    version: i32,
    created_by: Uuid,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, patient_id, provider_id, operatory_id, start_at, end_at, status, reason, notes, \
                       outside_hours, version, created_by, created_at, updated_at";

impl From<Row> for Appointment {
    fn from(r: Row) -> Appointment {
        Appointment {
            id: r.id,
            patient_id: r.patient_id,
            provider_id: r.provider_id,
            operatory_id: r.operatory_id,
            start_at: r.start_at,
            end_at: r.end_at,
            status: AppointmentStatus::parse(&r.status).unwrap_or(AppointmentStatus::Scheduled),
            reason: r.reason,
            notes: r.notes,
            outside_hours: r.outside_hours,
            version: r.version,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

async fn load(tx: &mut Tx, id: Uuid, lock: bool) -> AppResult<Appointment> {
    sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM appointments WHERE id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?
    .map(Appointment::from)
    .ok_or_else(|| AppError::not_found("appointment"))
}

fn respond(status: StatusCode, a: &Appointment) -> Response {
    let mut res = (status, [(header::ETAG, etag::etag(a.version))], Json(a)).into_response();
    if status == StatusCode::CREATED {
        if let Ok(v) = HeaderValue::from_str(&format!("/api/v2/appointments/{}", a.id)) {
            res.headers_mut().insert(header::LOCATION, v);
        }
    }
    res
}

async fn clinic_tz(state: &AppState, tx: &mut Tx, clinic: Uuid) -> AppResult<Tz> {
    let clinic = crate::clinic::cached(state, tx, clinic).await?;
    clinic
        .timezone
        .parse::<Tz>()
        .map_err(|_| AppError::Internal(anyhow::anyhow!("clinic has an unknown time zone")))
}

/// Whether [start, end) lies inside one of the provider's working intervals.
async fn within_hours(
    tx: &mut Tx,
    tz: Tz,
    provider: Uuid,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> AppResult<bool> {
    let date = start.with_timezone(&tz).date_naive();
    let from = date.pred_opt().unwrap_or(date);
    let (weekly, exceptions) = hours::load(tx, provider, from, date).await?;
    Ok([from, date].into_iter().any(|d| {
        working_intervals(tz, d, &weekly, &exceptions)
            .iter()
            .any(|(s, e)| *s <= start && end <= *e)
    }))
}

/// The booking's references must exist in the caller's clinic (422 naming the field).
async fn check_references(
    tx: &mut Tx,
    patient: Option<Uuid>,
    provider: Uuid,
    operatory: Uuid,
) -> AppResult<()> {
    let mut errors = Errors::default();
    if let Some(p) = patient {
        let found: Option<Option<DateTime<Utc>>> =
            sqlx::query_scalar("SELECT archived_at FROM patients WHERE id = $1")
                .bind(p)
                .fetch_optional(&mut **tx)
                .await?;
        match found {
            None => errors.add("patient_id", "does not exist in your clinic"),
            Some(Some(_)) => errors.add("patient_id", "is archived"),
            Some(None) => {}
        }
    }
    let prov: Option<(bool, bool)> =
        sqlx::query_as("SELECT is_provider, active FROM users WHERE id = $1")
            .bind(provider)
            .fetch_optional(&mut **tx)
            .await?;
    match prov {
        None => errors.add("provider_id", "does not exist in your clinic"),
        Some((true, true)) => {}
        Some(_) => errors.add("provider_id", "is not an active provider"),
    }
    let op: Option<bool> = sqlx::query_scalar("SELECT active FROM operatories WHERE id = $1")
        .bind(operatory)
        .fetch_optional(&mut **tx)
        .await?;
    match op {
        None => errors.add("operatory_id", "does not exist in your clinic"),
        Some(false) => errors.add("operatory_id", "is not active"),
        Some(true) => {}
    }
    errors.finish()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Conflict {
    appointment_id: Uuid,
    /// `provider`, `operatory` or `patient`.
    resource: String,
    start_at: DateTime<Utc>,
    end_at: DateTime<Utc>,
}

const OVERLAP_CONSTRAINTS: [&str; 3] = [
    "appointments_provider_overlap",
    "appointments_operatory_overlap",
    "appointments_patient_overlap",
];

/// The appointments that a booking of [start, end) would clash with, as the transaction
/// sees them. With `longest`, only appointments starting within that long before `start`
/// are considered: a bound on `start_at` that the calendar index answers (under row-level
/// security the range operator `&&` is not leakproof, so it can filter but never narrow an
/// index scan). The exclusion constraints stay the authority either way.
async fn conflicts_in(
    tx: &mut Tx,
    slot: &Slot,
    patient: Uuid,
    exclude: Option<Uuid>,
    longest: Option<Duration>,
) -> AppResult<Vec<Conflict>> {
    const SELECT: &str = "SELECT id, r.resource, start_at, end_at FROM appointments a \
         CROSS JOIN LATERAL (VALUES ('provider', a.provider_id = $1), ('operatory', a.operatory_id = $2), \
                                    ('patient', a.patient_id = $3)) AS r(resource, hit) \
         WHERE r.hit AND a.status NOT IN ('cancelled', 'no_show') \
           AND a.during && tstzrange($4, $5, '[)') AND ($6::uuid IS NULL OR a.id <> $6)";
    static ANY_START: LazyLock<String> =
        LazyLock::new(|| format!("{SELECT} ORDER BY start_at, id"));
    static RECENT_START: LazyLock<String> = LazyLock::new(|| {
        format!("{SELECT} AND a.start_at > $7 AND a.start_at < $5 ORDER BY start_at, id")
    });
    let query = sqlx::query_as::<_, (Uuid, String, DateTime<Utc>, DateTime<Utc>)>(match longest {
        None => &ANY_START,
        Some(_) => &RECENT_START,
    })
    .bind(slot.provider)
    .bind(slot.operatory)
    .bind(patient)
    .bind(slot.start)
    .bind(slot.end)
    .bind(exclude);
    let query = match longest {
        Some(d) => query.bind(slot.start - d),
        None => query,
    };
    let rows = query.fetch_all(&mut **tx).await?;
    Ok(rows
        .into_iter()
        .map(|(appointment_id, resource, start_at, end_at)| Conflict {
            appointment_id,
            resource,
            start_at,
            end_at,
        })
        .collect())
}

/// The 409 for a double booking, listing the clashes.
fn double_booking(conflicts: Vec<Conflict>) -> AppError {
    let mut extra = serde_json::Map::new();
    extra.insert(
        "conflicts".into(),
        serde_json::to_value(&conflicts).unwrap_or_default(),
    );
    AppError::Conflict {
        detail: "the provider, the operatory or the patient is already booked then".into(),
        extra: Some(extra),
    }
}

/// The clashes of a booking that failed on an exclusion constraint (read after the failed
/// insert rolled back: an exclusion violation does not name the other row).
async fn find_conflicts(
    state: &AppState,
    caller: &Caller,
    slot: &Slot,
    patient: Uuid,
    exclude: Option<Uuid>,
) -> AppResult<AppError> {
    let mut tx = caller.begin(state).await?;
    let conflicts = conflicts_in(&mut tx, slot, patient, exclude, None).await?;
    tx.commit().await?;
    Ok(double_booking(conflicts))
}

/// Serialises bookings that share a provider, an operatory or a patient: transaction-level
/// advisory locks taken in one global order, so that conflicting requests queue instead of
/// deadlocking inside the exclusion constraints (the constraints still decide).
async fn lock_resources(tx: &mut Tx, slot: &Slot, patient: Uuid) -> AppResult<()> {
    let key = |salt: u64, id: Uuid| {
        let (hi, lo) = id.as_u64_pair();
        (hi ^ lo ^ salt) as i64
    };
    let mut keys = [
        key(0x7072_6f76, slot.provider),
        key(0x6f70_6572, slot.operatory),
        key(0x7061_7469, patient),
    ];
    keys.sort_unstable();
    sqlx::query(
        "SELECT pg_advisory_xact_lock($1), pg_advisory_xact_lock($2), pg_advisory_xact_lock($3)",
    )
    .bind(keys[0])
    .bind(keys[1])
    .bind(keys[2])
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Where and when an appointment takes place.
struct Slot {
    provider: Uuid,
    operatory: Uuid,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

fn validate_times(state: &AppState, start: DateTime<Utc>, end: DateTime<Utc>, errors: &mut Errors) {
    if end <= start {
        errors.add("end_at", "must be after start_at");
    } else if end - start > Duration::minutes(state.config.appointment_max_minutes as i64) {
        errors.add(
            "end_at",
            format!(
                "an appointment lasts at most {} minutes",
                state.config.appointment_max_minutes
            ),
        );
    }
}

fn is_retryable(e: &AppError) -> bool {
    matches!(e, AppError::Database(sqlx::Error::Database(db))
        if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAppointment {
    patient_id: Uuid,
    provider_id: Uuid,
    operatory_id: Uuid,
    start_at: DateTime<Utc>,
    /// After `start_at`; the interval is half-open, so back-to-back bookings do not clash.
    end_at: DateTime<Utc>,
    reason: Option<String>,
    notes: Option<String>,
    /// Book outside the provider's working hours (audited).
    #[serde(default)]
    r#override: bool,
}

/// Books an appointment. A clash with another booking of the provider, the operatory or
/// the patient is a 409 listing the conflicts; two concurrent requests for one slot: one wins.
#[utoipa::path(post, path = "/appointments", tag = "scheduling", security(("bearer" = [])),
    request_body = NewAppointment,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried booking safe")),
    responses(
        (status = 201, description = "Booked", body = Appointment, headers(("Location" = String))),
        (status = 403, description = "Role lacks appointments.write", body = Problem),
        (status = 409, description = "Double booking: `conflicts` lists the clashes", body = Problem),
        (status = 422, description = "Invalid fields, unknown ids, or outside working hours without override", body = Problem)))]
pub async fn book_appointment(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: HashedJson<NewAppointment>,
) -> AppResult<Response> {
    let (hash, body) = (body.hash, body.value);
    require(&state, &caller, Permission::AppointmentsWrite, || {
        Event::new("appointment.create", "appointment").patient(body.patient_id)
    })
    .await?;
    let mut errors = Errors::default();
    validate_times(&state, body.start_at, body.end_at, &mut errors);
    let reason = body
        .reason
        .as_deref()
        .map(|r| errors.text("reason", r, 500));
    let notes = body.notes.as_deref().map(|n| errors.text("notes", n, 2000));
    errors.finish()?;
    let slot = Slot {
        provider: body.provider_id,
        operatory: body.operatory_id,
        start: body.start_at,
        end: body.end_at,
    };
    idempotency::run(&state, &caller, &headers, &hash, || async {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = book_once(
                &state,
                &caller,
                &body,
                &slot,
                reason.as_deref(),
                notes.as_deref(),
            )
            .await;
            let refused = match result {
                Err(e) if attempt < 3 && is_retryable(&e) => continue,
                Err(AppError::Database(e))
                    if violated_constraint(&e)
                        .is_some_and(|c| OVERLAP_CONSTRAINTS.contains(&c)) =>
                {
                    find_conflicts(&state, &caller, &slot, body.patient_id, None).await?
                }
                Err(e) if is_retryable(&e) => {
                    return Err(
                        find_conflicts(&state, &caller, &slot, body.patient_id, None).await?,
                    )
                }
                Err(e @ AppError::Conflict { .. }) => e,
                other => return other,
            };
            audit::record_failure(
                &state.db,
                &caller.audit(),
                Event::new("appointment.create", "appointment").patient(body.patient_id),
            )
            .await;
            return Err(refused);
        }
    })
    .await
}

async fn book_once(
    state: &AppState,
    caller: &Caller,
    body: &NewAppointment,
    slot: &Slot,
    reason: Option<&str>,
    notes: Option<&str>,
) -> AppResult<(Tx, Created<Appointment>)> {
    let mut tx = caller.begin(state).await?;
    check_references(
        &mut tx,
        Some(body.patient_id),
        slot.provider,
        slot.operatory,
    )
    .await?;
    let tz = clinic_tz(state, &mut tx, caller.clinic_id).await?;
    let inside = within_hours(&mut tx, tz, slot.provider, slot.start, slot.end).await?;
    if !inside && !body.r#override {
        return Err(AppError::validation(
            "start_at",
            "is outside the provider's working hours; set override to book anyway",
        ));
    }
    // A clash that is already committed is refused at once, without queueing for the
    // locks behind every other request for the same slot; the constraints still decide
    // between bookings that are in flight together.
    let longest = Duration::minutes(state.config.appointment_max_minutes as i64);
    let visible = conflicts_in(&mut tx, slot, body.patient_id, None, Some(longest)).await?;
    if !visible.is_empty() {
        return Err(double_booking(visible));
    }
    lock_resources(&mut tx, slot, body.patient_id).await?;
    let id = Uuid::now_v7();
    let inserted = sqlx::query_as::<_, Row>(&format!(
        "INSERT INTO appointments (clinic_id, id, patient_id, provider_id, operatory_id, start_at, end_at, \
         reason, notes, outside_hours, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         RETURNING {COLUMNS}"
    ))
    .bind(caller.clinic_id)
    .bind(id)
    .bind(body.patient_id)
    .bind(slot.provider)
    .bind(slot.operatory)
    .bind(slot.start)
    .bind(slot.end)
    .bind(reason)
    .bind(notes)
    .bind(!inside)
    .bind(caller.user_id)
    .fetch_one(&mut *tx)
    .await;
    let row = match inserted {
        Ok(r) => r,
        Err(e) => {
            // End the transaction cleanly so the connection goes back to the pool as is.
            let _ = tx.rollback().await;
            return Err(e.into());
        }
    };
    sqlx::query(
        "INSERT INTO appointment_history (clinic_id, id, appointment_id, kind, to_status, to_start_at, to_end_at, changed_by) \
         VALUES ($1, $2, $3, 'created', 'scheduled', $4, $5, $6)",
    )
    .bind(caller.clinic_id)
    .bind(Uuid::now_v7())
    .bind(id)
    .bind(slot.start)
    .bind(slot.end)
    .bind(caller.user_id)
    .execute(&mut *tx)
    .await?;
    let mut event = Event::new("appointment.create", "appointment")
        .resource(id)
        .patient(body.patient_id);
    if !inside {
        event = event.details(serde_json::json!({"override": "outside_working_hours"}));
    }
    audit::record(&mut tx, &caller.audit(), event).await?;
    let appointment = Appointment::from(row);
    let created = Created {
        location: format!("/api/v2/appointments/{id}"),
        version: Some(appointment.version),
        value: appointment,
    };
    Ok((tx, created))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AppointmentPath {
    /// The appointment's id.
    id: Uuid,
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
    require(&state, &caller, Permission::AppointmentsRead, || {
        Event::new("appointment.read", "appointment").resource(id)
    })
    .await?;
    let mut tx = caller.begin(&state).await?;
    let a = load(&mut tx, id, false).await?;
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppointmentPatch {
    start_at: Option<DateTime<Utc>>,
    end_at: Option<DateTime<Utc>>,
    provider_id: Option<Uuid>,
    operatory_id: Option<Uuid>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Option<String>)]
    reason: Option<Option<String>>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Option<String>)]
    notes: Option<Option<String>>,
    #[serde(default)]
    r#override: bool,
}

/// Reschedules or edits an appointment under the same rules as booking (`If-Match` honoured).
#[utoipa::path(patch, path = "/appointments/{id}", tag = "scheduling", security(("bearer" = [])),
    params(AppointmentPath),
    request_body = AppointmentPatch,
    responses((status = 200, description = "Updated", body = Appointment),
              (status = 404, description = "No such appointment in your clinic", body = Problem),
              (status = 409, description = "Double booking, or the appointment can no longer move", body = Problem),
              (status = 412, description = "If-Match does not match", body = Problem),
              (status = 422, description = "Invalid fields", body = Problem)))]
pub async fn reschedule_appointment(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(AppointmentPath { id }): ApiPath<AppointmentPath>,
    ApiJson(patch): ApiJson<AppointmentPatch>,
) -> AppResult<Response> {
    require(&state, &caller, Permission::AppointmentsWrite, || {
        Event::new("appointment.update", "appointment").resource(id)
    })
    .await?;
    let mut errors = Errors::default();
    let reason = patch
        .reason
        .as_ref()
        .map(|r| r.as_deref().map(|r| errors.text("reason", r, 500)));
    let notes = patch
        .notes
        .as_ref()
        .map(|n| n.as_deref().map(|n| errors.text("notes", n, 2000)));
    errors.finish()?;
    let mut tx = caller.begin(&state).await?;
    let current = load(&mut tx, id, true).await?;
    etag::check(&headers, current.version)?;
    let slot = Slot {
        provider: patch.provider_id.unwrap_or(current.provider_id),
        operatory: patch.operatory_id.unwrap_or(current.operatory_id),
        start: patch.start_at.unwrap_or(current.start_at),
        end: patch.end_at.unwrap_or(current.end_at),
    };
    let moved = slot.provider != current.provider_id
        || slot.operatory != current.operatory_id
        || slot.start != current.start_at
        || slot.end != current.end_at;
    let mut outside = current.outside_hours;
    if moved {
        if !current.status.can_reschedule() {
            return Err(AppError::conflict(format!(
                "a {} appointment cannot be moved",
                current.status.as_str()
            )));
        }
        let mut errors = Errors::default();
        validate_times(&state, slot.start, slot.end, &mut errors);
        errors.finish()?;
        check_references(&mut tx, None, slot.provider, slot.operatory).await?;
        let tz = clinic_tz(&state, &mut tx, caller.clinic_id).await?;
        let inside = within_hours(&mut tx, tz, slot.provider, slot.start, slot.end).await?;
        if !inside && !patch.r#override {
            return Err(AppError::validation(
                "start_at",
                "is outside the provider's working hours; set override to book anyway",
            ));
        }
        outside = !inside;
    }
    if moved {
        lock_resources(&mut tx, &slot, current.patient_id).await?;
    }
    let updated = sqlx::query_as::<_, Row>(&format!(
        "UPDATE appointments SET provider_id = $2, operatory_id = $3, start_at = $4, end_at = $5, \
         reason = $6, notes = $7, outside_hours = $8, version = version + 1, updated_at = now() \
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(slot.provider)
    .bind(slot.operatory)
    .bind(slot.start)
    .bind(slot.end)
    .bind(match reason {
        None => current.reason.clone(),
        Some(r) => r,
    })
    .bind(match notes {
        None => current.notes.clone(),
        Some(n) => n,
    })
    .bind(outside)
    .fetch_one(&mut *tx)
    .await;
    let row = match updated {
        Ok(r) => r,
        Err(e) if violated_constraint(&e).is_some_and(|c| OVERLAP_CONSTRAINTS.contains(&c)) => {
            let _ = tx.rollback().await;
            return Err(
                find_conflicts(&state, &caller, &slot, current.patient_id, Some(id)).await?,
            );
        }
        Err(e) => return Err(e.into()),
    };
    sqlx::query(
        "INSERT INTO appointment_history (clinic_id, id, appointment_id, kind, from_start_at, from_end_at, \
         to_start_at, to_end_at, changed_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(caller.clinic_id)
    .bind(Uuid::now_v7())
    .bind(id)
    .bind(if moved { "rescheduled" } else { "updated" })
    .bind(current.start_at)
    .bind(current.end_at)
    .bind(slot.start)
    .bind(slot.end)
    .bind(caller.user_id)
    .execute(&mut *tx)
    .await?;
    let mut event = Event::new("appointment.update", "appointment")
        .resource(id)
        .patient(current.patient_id);
    if moved && outside {
        event = event.details(serde_json::json!({"override": "outside_working_hours"}));
    }
    audit::record(&mut tx, &caller.audit(), event).await?;
    tx.commit().await?;
    Ok(respond(StatusCode::OK, &row.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    /// The new status.
    status: String,
    reason: Option<String>,
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
    require(&state, &caller, Permission::AppointmentsWrite, || {
        Event::new("appointment.status", "appointment").resource(id)
    })
    .await?;
    let mut errors = Errors::default();
    let next = AppointmentStatus::parse(body.status.trim());
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
    let current = load(&mut tx, id, true).await?;
    if !current.status.can_become(next) {
        return Err(AppError::conflict(format!(
            "an appointment cannot go from {} to {}",
            current.status.as_str(),
            next.as_str()
        )));
    }
    // Back from cancelled is not allowed, so a status change never re-occupies a slot.
    let row = sqlx::query_as::<_, Row>(&format!(
        "UPDATE appointments SET status = $2, version = version + 1, updated_at = now() WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(next.as_str())
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO appointment_history (clinic_id, id, appointment_id, kind, from_status, to_status, reason, changed_by) \
         VALUES ($1, $2, $3, 'status', $4, $5, $6, $7)",
    )
    .bind(caller.clinic_id)
    .bind(Uuid::now_v7())
    .bind(id)
    .bind(current.status.as_str())
    .bind(next.as_str())
    .bind(&reason)
    .bind(caller.user_id)
    .execute(&mut *tx)
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

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct HistoryEntry {
    id: Uuid,
    /// `created`, `status`, `rescheduled` or `updated`.
    kind: String,
    from_status: Option<String>,
    to_status: Option<String>,
    from_start_at: Option<DateTime<Utc>>,
    from_end_at: Option<DateTime<Utc>>,
    to_start_at: Option<DateTime<Utc>>,
    to_end_at: Option<DateTime<Utc>>,
    reason: Option<String>,
    changed_by: Uuid,
    changed_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct History {
    items: Vec<HistoryEntry>,
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
    require(&state, &caller, Permission::AppointmentsRead, || {
        Event::new("appointment.read", "appointment").resource(id)
    })
    .await?;
    let mut tx = caller.begin(&state).await?;
    let a = load(&mut tx, id, false).await?;
    let items = sqlx::query_as::<_, HistoryEntry>(
        "SELECT id, kind, from_status, to_status, from_start_at, from_end_at, to_start_at, to_end_at, \
         reason, changed_by, changed_at FROM appointment_history WHERE appointment_id = $1 \
         ORDER BY changed_at, id",
    )
    .bind(id)
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

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CalendarParams {
    /// Window start (default: now).
    from: Option<DateTime<Utc>>,
    /// Window end (default: 7 days after `from`); at most CALENDAR_MAX_DAYS after it.
    to: Option<DateTime<Utc>>,
    provider_id: Option<Uuid>,
    operatory_id: Option<Uuid>,
    patient_id: Option<Uuid>,
    status: Option<AppointmentStatus>,
    /// Page size (default 50, max 200).
    limit: Option<u32>,
    cursor: Option<String>,
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
    require(&state, &caller, Permission::AppointmentsRead, || {
        Event::new("appointment.list", "appointment")
    })
    .await?;
    let limit = pagination::limit(p.limit)?;
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
    let rows = sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM appointments WHERE start_at < $2 AND end_at > $1 \
         AND ($3::uuid IS NULL OR provider_id = $3) AND ($4::uuid IS NULL OR operatory_id = $4) \
         AND ($5::uuid IS NULL OR patient_id = $5) AND ($6::text IS NULL OR status = $6) \
         AND ($7::timestamptz IS NULL OR (start_at, id) > ($7, $8)) \
         ORDER BY start_at, id LIMIT $9"
    ))
    .bind(from)
    .bind(to)
    .bind(p.provider_id)
    .bind(p.operatory_id)
    .bind(p.patient_id)
    .bind(p.status.map(|s| s.as_str()))
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit as i64 + 1)
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
        Event::new("appointment.list", "appointment").details(serde_json::json!({ "ids": ids })),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(page))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityParams {
    provider_id: Uuid,
    /// The local date in the clinic's time zone.
    date: NaiveDate,
    duration_minutes: u32,
    /// Also require the operatory to be free.
    operatory_id: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FreeSlot {
    start_at: DateTime<Utc>,
    end_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Availability {
    items: Vec<FreeSlot>,
}

/// Free starts on the grid where `duration_minutes` fits inside the provider's working
/// hours without touching a booking (nor the operatory's, when given); future starts only.
#[utoipa::path(get, path = "/availability", tag = "scheduling", security(("bearer" = [])),
    params(AvailabilityParams),
    responses((status = 200, description = "Free slots", body = Availability),
              (status = 400, description = "Malformed parameters", body = Problem),
              (status = 422, description = "Unknown provider or operatory, or a bad duration", body = Problem)))]
pub async fn availability(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<AvailabilityParams>,
) -> AppResult<Json<Availability>> {
    caller.require(Permission::AppointmentsRead)?;
    if p.duration_minutes < 5 || p.duration_minutes > state.config.appointment_max_minutes {
        return Err(AppError::validation(
            "duration_minutes",
            format!("must be 5 to {}", state.config.appointment_max_minutes),
        ));
    }
    let mut tx = caller.begin(&state).await?;
    let is_provider: Option<bool> =
        sqlx::query_scalar("SELECT is_provider AND active FROM users WHERE id = $1")
            .bind(p.provider_id)
            .fetch_optional(&mut *tx)
            .await?;
    if is_provider != Some(true) {
        return Err(AppError::validation(
            "provider_id",
            "is not a provider of your clinic",
        ));
    }
    if let Some(op) = p.operatory_id {
        let found: Option<bool> =
            sqlx::query_scalar("SELECT active FROM operatories WHERE id = $1")
                .bind(op)
                .fetch_optional(&mut *tx)
                .await?;
        if found != Some(true) {
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
    let busy: Vec<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT start_at, end_at FROM appointments \
         WHERE (provider_id = $1 OR ($2::uuid IS NOT NULL AND operatory_id = $2)) \
           AND status NOT IN ('cancelled', 'no_show') AND start_at < $4 AND end_at > $3",
    )
    .bind(p.provider_id)
    .bind(p.operatory_id)
    .bind(day_start)
    .bind(day_end)
    .fetch_all(&mut *tx)
    .await?;
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

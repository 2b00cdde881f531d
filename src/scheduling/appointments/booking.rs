//! Booking and rescheduling: validation, working hours, references, the locks that queue
//! clashing requests, and the exclusion constraints that decide.

use super::*;
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::db::Tx;
use crate::error::{AppError, AppResult, Problem};
use crate::http::etag::{self, IfMatch};
use crate::http::extract::{ApiJson, ApiPath};
use crate::http::idempotency::{self, Created, HashedJson, IdempotencyKey};
use crate::scheduling::AppointmentStatus;
use crate::state::AppState;
use crate::validate::{patch_field, Errors};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
/// A merge patch of an appointment: absent fields stay; only `reason` and `notes` can be
/// cleared (`null` elsewhere is a 422). Moving it follows the booking rules: `end_at` after
/// `start_at` and at most `APPOINTMENT_MAX_MINUTES` later, active provider and operatory of
/// your clinic, inside the provider's working hours unless `override` (all 422); a clash
/// is a 409, as is moving an appointment that has started or ended.
pub struct AppointmentPatch {
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = DateTime<Utc>)]
    pub(super) start_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = DateTime<Utc>)]
    pub(super) end_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Uuid)]
    pub(super) provider_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Uuid)]
    pub(super) operatory_id: Option<Option<Uuid>>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(schema_with = crate::validate::schema::text_500_or_null)]
    pub(super) reason: Option<Option<String>>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(schema_with = crate::validate::schema::text_2000_or_null)]
    pub(super) notes: Option<Option<String>>,
    /// Move it outside the provider's working hours (audited).
    #[serde(default)]
    r#override: bool,
}

/// Reschedules or edits an appointment under the same rules as booking (`If-Match` honoured).
#[utoipa::path(patch, path = "/appointments/{id}", tag = "scheduling", security(("bearer" = [])),
    params(AppointmentPath, IfMatch),
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
    caller
        .authorize(&state, Permission::AppointmentsWrite, || {
            Event::new("appointment.update", "appointment").resource(id)
        })
        .await?;
    let mut errors = Errors::default();
    errors.uncleared(&[
        ("start_at", matches!(patch.start_at, Some(None))),
        ("end_at", matches!(patch.end_at, Some(None))),
        ("provider_id", matches!(patch.provider_id, Some(None))),
        ("operatory_id", matches!(patch.operatory_id, Some(None))),
    ]);
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
    let current = load_for_update(&mut tx, id).await?;
    etag::check(&headers, current.version)?;
    let slot = Slot {
        provider: patch.provider_id.flatten().unwrap_or(current.provider_id),
        operatory: patch.operatory_id.flatten().unwrap_or(current.operatory_id),
        start: patch.start_at.flatten().unwrap_or(current.start_at),
        end: patch.end_at.flatten().unwrap_or(current.end_at),
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
    let reason = match reason {
        None => current.reason.clone(),
        Some(r) => r,
    };
    let notes = match notes {
        None => current.notes.clone(),
        Some(n) => n,
    };
    let updated = sqlx::query_as!(
        Row,
        "UPDATE appointments SET provider_id = $2, operatory_id = $3, start_at = $4, end_at = $5, \
         reason = $6, notes = $7, outside_hours = $8, version = version + 1, updated_at = now() \
         WHERE id = $1 RETURNING id, patient_id, provider_id, operatory_id, start_at, end_at, status, \
         reason, notes, outside_hours, version, created_by, created_at, updated_at",
        id,
        slot.provider,
        slot.operatory,
        slot.start,
        slot.end,
        reason,
        notes,
        outside
    )
    .fetch_one(&mut *tx)
    .await;
    let row = match updated.map_err(AppError::from) {
        Ok(r) => r,
        Err(e) if e.violates(&OVERLAP_CONSTRAINTS) => {
            let _ = tx.rollback().await;
            return Err(
                find_conflicts(&state, &caller, &slot, current.patient_id, Some(id)).await?,
            );
        }
        Err(e) => return Err(e),
    };
    record_history(
        &mut tx,
        &caller,
        id,
        Change {
            kind: if moved { "rescheduled" } else { "updated" },
            from_status: None,
            to_status: None,
            from: Some((current.start_at, current.end_at)),
            to: Some((slot.start, slot.end)),
            reason: None,
        },
    )
    .await?;
    let event = booking_event(
        "appointment.update",
        id,
        current.patient_id,
        moved && outside,
    );
    audit::record(&mut tx, &caller.audit(), event).await?;
    tx.commit().await?;
    Ok(respond(StatusCode::OK, &row.into()))
}

pub(super) fn validate_times(
    state: &AppState,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    errors: &mut Errors,
) {
    if !crate::validate::storable(start) {
        errors.add("start_at", crate::validate::UNSTORABLE_INSTANT);
    } else if !crate::validate::storable(end) {
        errors.add("end_at", crate::validate::UNSTORABLE_INSTANT);
    } else if end <= start {
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

pub(super) fn is_retryable(e: &AppError) -> bool {
    matches!(e, AppError::Database(sqlx::Error::Database(db))
        if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAppointment {
    /// A patient of your clinic (else 422).
    pub(super) patient_id: Uuid,
    /// An active provider of your clinic (else 422).
    pub(super) provider_id: Uuid,
    /// An active operatory of your clinic (else 422).
    pub(super) operatory_id: Uuid,
    /// Inside the provider's working hours unless `override` (else 422).
    pub(super) start_at: DateTime<Utc>,
    /// After `start_at`, and at most `APPOINTMENT_MAX_MINUTES` (480 by default) later (else
    /// 422); the interval is half-open, so back-to-back bookings do not clash.
    pub(super) end_at: DateTime<Utc>,
    #[schema(schema_with = crate::validate::schema::text_500_or_null)]
    pub(super) reason: Option<String>,
    #[schema(schema_with = crate::validate::schema::text_2000_or_null)]
    pub(super) notes: Option<String>,
    /// Book outside the provider's working hours (audited).
    #[serde(default)]
    r#override: bool,
}

/// Books an appointment. A clash with another booking of the provider, the operatory or
/// the patient is a 409 listing the conflicts; two concurrent requests for one slot: one wins.
#[utoipa::path(post, path = "/appointments", tag = "scheduling", security(("bearer" = [])),
    request_body = NewAppointment,
    params(IdempotencyKey),
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
    caller
        .authorize(&state, Permission::AppointmentsWrite, || {
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
                Err(e) if e.violates(&OVERLAP_CONSTRAINTS) => {
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

pub(super) async fn book_once(
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
    let inserted = sqlx::query_as!(
        Row,
        "INSERT INTO appointments (clinic_id, id, patient_id, provider_id, operatory_id, start_at, end_at, \
         reason, notes, outside_hours, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         RETURNING id, patient_id, provider_id, operatory_id, start_at, end_at, status, reason, notes, \
         outside_hours, version, created_by, created_at, updated_at",
        caller.clinic_id,
        id,
        body.patient_id,
        slot.provider,
        slot.operatory,
        slot.start,
        slot.end,
        reason,
        notes,
        !inside,
        caller.user_id
    )
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
    record_history(
        &mut tx,
        caller,
        id,
        Change {
            kind: "created",
            from_status: None,
            to_status: Some(AppointmentStatus::Scheduled.as_str()),
            from: None,
            to: Some((slot.start, slot.end)),
            reason: None,
        },
    )
    .await?;
    let event = booking_event("appointment.create", id, body.patient_id, !inside);
    audit::record(&mut tx, &caller.audit(), event).await?;
    let appointment = Appointment::from(row);
    let created = Created {
        location: format!("/api/v2/appointments/{id}"),
        version: Some(appointment.version),
        value: appointment,
    };
    Ok((tx, created))
}

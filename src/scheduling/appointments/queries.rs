//! The statements booking and rescheduling share: the clinic's time zone, working hours,
//! references, clashes and the resource locks.

use super::*;
use crate::audit::Event;
use crate::auth::Caller;
use crate::db::Tx;
use crate::error::{AppError, AppResult};
use crate::http::etag;
use crate::scheduling::{hours, providers, working_intervals};
use crate::state::AppState;
use crate::validate::Errors;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use uuid::Uuid;

pub(super) async fn clinic_tz(state: &AppState, tx: &mut Tx, clinic: Uuid) -> AppResult<Tz> {
    crate::clinic::timezone(state, tx, clinic).await
}

/// Whether [start, end) lies inside one of the provider's working intervals.
pub(super) async fn within_hours(
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
pub(super) async fn check_references(
    tx: &mut Tx,
    patient: Option<Uuid>,
    provider: Uuid,
    operatory: Uuid,
) -> AppResult<()> {
    let mut errors = Errors::default();
    if let Some(p) = patient {
        let found = sqlx::query_scalar!("SELECT archived_at FROM patients WHERE id = $1", p)
            .fetch_optional(&mut **tx)
            .await?;
        match found {
            None => errors.add("patient_id", "does not exist in your clinic"),
            Some(Some(_)) => errors.add("patient_id", "is archived"),
            Some(None) => {}
        }
    }
    // Collected with the other fields so that one 422 names them all.
    match providers::ensure_active(tx, provider, "provider_id").await {
        Ok(()) => {}
        Err(AppError::Validation(fields)) => fields.into_iter().for_each(|f| errors.push(f)),
        Err(e) => return Err(e),
    }
    let op = operatory_active(tx, operatory).await?;
    match op {
        None => errors.add("operatory_id", "does not exist in your clinic"),
        Some(false) => errors.add("operatory_id", "is not active"),
        Some(true) => {}
    }
    errors.finish()
}

/// Whether the operatory is active; `None` when it does not exist in the caller's clinic.
pub(super) async fn operatory_active(tx: &mut Tx, operatory: Uuid) -> AppResult<Option<bool>> {
    Ok(
        sqlx::query_scalar!("SELECT active FROM operatories WHERE id = $1", operatory)
            .fetch_optional(&mut **tx)
            .await?,
    )
}

pub(super) const OVERLAP_CONSTRAINTS: [&str; 3] = [
    "appointments_provider_overlap",
    "appointments_operatory_overlap",
    "appointments_patient_overlap",
];

/// The appointments that a booking of [start, end) would clash with, as the transaction
/// sees them. With `longest`, only appointments starting within that long before `start`
/// are considered: a bound on `start_at` that the calendar index answers (under row-level
/// security the range operator `&&` is not leakproof, so it can filter but never narrow an
/// index scan). The exclusion constraints stay the authority either way.
pub(super) async fn conflicts_in(
    tx: &mut Tx,
    slot: &Slot,
    patient: Uuid,
    exclude: Option<Uuid>,
    longest: Option<Duration>,
) -> AppResult<Vec<Conflict>> {
    // The two statements differ only in the bound on `start_at`; both stay literals.
    macro_rules! clashes {
        ($bound:literal $(, $since:expr)?) => {
            sqlx::query_as!(
                Conflict,
                r#"SELECT id AS appointment_id, r.resource AS "resource!", start_at, end_at FROM appointments a
                   CROSS JOIN LATERAL (VALUES ('provider', a.provider_id = $1), ('operatory', a.operatory_id = $2),
                                              ('patient', a.patient_id = $3)) AS r(resource, hit)
                   WHERE r.hit AND a.status NOT IN ('cancelled', 'no_show')
                     AND a.during && tstzrange($4, $5, '[)') AND ($6::uuid IS NULL OR a.id <> $6)"#
                    + $bound
                    + " ORDER BY start_at, id",
                slot.provider,
                slot.operatory,
                patient,
                slot.start,
                slot.end,
                exclude
                $(, $since)?
            )
            .fetch_all(&mut **tx)
            .await?
        };
    }
    let rows = match longest {
        None => clashes!(""),
        Some(d) => clashes!(" AND a.start_at > $7 AND a.start_at < $5", slot.start - d),
    };
    Ok(rows)
}

/// The 409 for a double booking, listing the clashes.
pub(super) fn double_booking(conflicts: Vec<Conflict>) -> AppError {
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
pub(super) async fn find_conflicts(
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
pub(super) async fn lock_resources(tx: &mut Tx, slot: &Slot, patient: Uuid) -> AppResult<()> {
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
    sqlx::query!(
        "SELECT pg_advisory_xact_lock($1) AS first, pg_advisory_xact_lock($2) AS second, \
         pg_advisory_xact_lock($3) AS third",
        keys[0],
        keys[1],
        keys[2]
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(())
}

/// Where and when an appointment takes place.
pub(super) struct Slot {
    pub(super) provider: Uuid,
    pub(super) operatory: Uuid,
    pub(super) start: DateTime<Utc>,
    pub(super) end: DateTime<Utc>,
}

/// The one SELECT of an appointment, with `$lock` either `""` or `" FOR UPDATE"`: the
/// statement stays a literal that sqlx checks at build time.
macro_rules! select_appointment {
    ($tx:expr, $id:expr, $lock:literal) => {
        sqlx::query_as!(
            Row,
            "SELECT id, patient_id, provider_id, operatory_id, start_at, end_at, status, reason, \
             notes, outside_hours, version, created_by, created_at, updated_at \
             FROM appointments WHERE id = $1"
                + $lock,
            $id
        )
        .fetch_optional(&mut **$tx)
        .await?
        .map(Appointment::from)
        .ok_or_else(|| AppError::not_found("appointment"))
    };
}

pub(super) async fn load(tx: &mut Tx, id: Uuid) -> AppResult<Appointment> {
    select_appointment!(tx, id, "")
}

/// [`load`], holding the row until the transaction ends.
pub(super) async fn load_for_update(tx: &mut Tx, id: Uuid) -> AppResult<Appointment> {
    select_appointment!(tx, id, " FOR UPDATE")
}

/// One line of an appointment's history; what a kind of change does not concern is `None`.
pub(super) struct Change<'a> {
    /// `created`, `status`, `rescheduled` or `updated`.
    pub(super) kind: &'static str,
    pub(super) from_status: Option<&'static str>,
    pub(super) to_status: Option<&'static str>,
    pub(super) from: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub(super) to: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub(super) reason: Option<&'a str>,
}

/// Appends a change to the appointment's history, as the caller.
pub(super) async fn record_history(
    tx: &mut Tx,
    caller: &Caller,
    appointment: Uuid,
    change: Change<'_>,
) -> AppResult<()> {
    sqlx::query!(
        "INSERT INTO appointment_history (clinic_id, id, appointment_id, kind, from_status, to_status, \
         from_start_at, from_end_at, to_start_at, to_end_at, reason, changed_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        caller.clinic_id,
        Uuid::now_v7(),
        appointment,
        change.kind,
        change.from_status,
        change.to_status,
        change.from.map(|f| f.0),
        change.from.map(|f| f.1),
        change.to.map(|t| t.0),
        change.to.map(|t| t.1),
        change.reason,
        caller.user_id
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) fn respond(status: StatusCode, a: &Appointment) -> Response {
    let mut res = (status, [(header::ETAG, etag::etag(a.version))], Json(a)).into_response();
    if status == StatusCode::CREATED {
        if let Ok(v) = HeaderValue::from_str(&format!("/api/v2/appointments/{}", a.id)) {
            res.headers_mut().insert(header::LOCATION, v);
        }
    }
    res
}

/// The audit event of a booking or a change of one; a booking outside the provider's
/// working hours (allowed by `override`) says so.
pub(super) fn booking_event(
    action: &'static str,
    id: Uuid,
    patient: Uuid,
    outside_hours: bool,
) -> Event {
    let event = Event::new(action, "appointment")
        .resource(id)
        .patient(patient);
    if outside_hours {
        event.details(serde_json::json!({"override": "outside_working_hours"}))
    } else {
        event
    }
}

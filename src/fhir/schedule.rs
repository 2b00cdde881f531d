//! `Appointment`: read, and search by date (the start, in the clinic's days), patient and
//! practitioner.

use axum::extract::{RawQuery, State};
use chrono::{DateTime, Utc};
use fhir_r4::coded::Coded;
use fhir_r4::codes::{Appointmentstatus, Participantrequired, Participationstatus};
use fhir_r4::resources::appointment::AppointmentParticipant;
use fhir_r4::resources::{Appointment, Resource};
use fhir_r4::types;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::people::{Paging, ResourceId};
use super::search::{self, AtId, Query};
use super::{
    built, identifier, instant, meta, reference, searchset, string, Fhir, FhirBundle,
    FhirOperationOutcome, FhirResource,
};
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult};
use crate::http::extract::ApiPath;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(search_appointments))
        .routes(routes!(read_appointment))
}

struct Row {
    id: Uuid,
    patient_id: Uuid,
    provider_id: Uuid,
    operatory: String,
    start_at: DateTime<Utc>,
    end_at: DateTime<Utc>,
    status: String,
    reason: Option<String>,
    version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// The native status as FHIR's: scheduled and confirmed are both `booked`, in the chair is
/// `checked-in`, completed is `fulfilled`.
fn status(s: &str) -> Appointmentstatus {
    match s {
        "arrived" => Appointmentstatus::Arrived,
        "in_chair" => Appointmentstatus::CheckedIn,
        "completed" => Appointmentstatus::Fulfilled,
        "cancelled" => Appointmentstatus::Cancelled,
        "no_show" => Appointmentstatus::Noshow,
        _ => Appointmentstatus::Booked,
    }
}

fn participant(actor: types::Reference) -> AppointmentParticipant {
    AppointmentParticipant {
        actor: Some(actor),
        required: Some(Coded::Known(Participantrequired::Required)),
        status: Coded::Known(Participationstatus::Accepted),
        ..Default::default()
    }
}

fn appointment(r: Row) -> AppResult<Resource> {
    let operatory = types::Reference {
        display: Some(string(r.operatory)),
        ..Default::default()
    };
    let participants = vec1::vec1![
        participant(reference("Patient", r.patient_id)),
        participant(reference("Practitioner", r.provider_id)),
        participant(operatory),
    ];
    let minutes = (r.end_at - r.start_at).num_minutes().max(1);
    let mut a = built(
        Appointment::builder()
            .status(Coded::Known(status(&r.status)))
            .participant(participants)
            .build(),
    )?;
    a.id = Some(string(r.id.to_string()));
    a.meta = Some(meta(r.version, r.updated_at));
    a.identifier = vec![identifier(r.id)];
    a.description = r.reason.map(string);
    a.start = Some(instant(r.start_at));
    a.end = Some(instant(r.end_at));
    a.minutes_duration = u32::try_from(minutes).ok().map(types::PositiveInt);
    a.created = Some(types::DateTime(
        r.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    ));
    Ok(Resource::Appointment(Box::new(a)))
}

/// An appointment.
#[utoipa::path(get, path = "/fhir/Appointment/{id}", tag = "fhir", security(("bearer" = [])),
    params(ResourceId),
    responses(
        (status = 200, description = "The Appointment", content_type = "application/fhir+json", body = FhirResource),
        (status = 403, description = "Role lacks appointments.read", body = FhirOperationOutcome),
        (status = 404, description = "No such appointment in your clinic", body = FhirOperationOutcome)))]
pub async fn read_appointment(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ResourceId { id }): ApiPath<ResourceId>,
) -> AppResult<Fhir> {
    let event = || Event::new("appointment.read", "appointment").resource(id);
    caller
        .authorize(&state, Permission::AppointmentsRead, event)
        .await?;
    let mut tx = caller.begin(&state).await?;
    let found = sqlx::query_as!(
        Row,
        "SELECT a.id, a.patient_id, a.provider_id, o.name AS operatory, a.start_at, a.end_at, \
         a.status, a.reason, a.version, a.created_at, a.updated_at \
         FROM appointments a JOIN operatories o ON o.id = a.operatory_id WHERE a.id = $1",
        id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = found else {
        drop(tx);
        audit::record_failure(&state.db, &caller.audit(), event()).await;
        return Err(AppError::not_found("appointment"));
    };
    audit::record(&mut tx, &caller.audit(), event().patient(row.patient_id)).await?;
    tx.commit().await?;
    Ok(Fhir(appointment(row)?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AppointmentSearch {
    /// The start: a day of the clinic (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`) or an instant with
    /// its offset, prefixed by `eq` (default), `ge`, `gt`, `le`, `lt`, `sa` or `eb`;
    /// repeated, each must hold (`date=ge2026-12-01&date=lt2026-12-08`).
    #[param(
        pattern = "^(eq|ge|gt|le|lt|sa|eb)?[0-9]{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01])(T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))?)?)?$"
    )]
    date: Option<Vec<String>>,
    /// `Patient/<id>` or the id.
    #[param(max_length = 100, pattern = "^(Patient/)?[^/]+$")]
    patient: Option<String>,
    /// `Practitioner/<id>` or the id.
    #[param(max_length = 100, pattern = "^(Practitioner/)?[^/]+$")]
    practitioner: Option<String>,
}

/// Appointments by start, audited as `appointment.list` with the ids shown.
#[utoipa::path(get, path = "/fhir/Appointment", tag = "fhir", security(("bearer" = [])),
    params(AppointmentSearch, Paging),
    responses(
        (status = 200, description = "A searchset Bundle of Appointments", content_type = "application/fhir+json", body = FhirBundle),
        (status = 400, description = "A malformed parameter or cursor", body = FhirOperationOutcome),
        (status = 403, description = "Role lacks appointments.read", body = FhirOperationOutcome)))]
pub async fn search_appointments(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> AppResult<Fhir> {
    let event = || Event::new("appointment.list", "appointment");
    caller
        .authorize(&state, Permission::AppointmentsRead, event)
        .await?;
    let q = Query::parse(raw.as_deref(), &["date", "patient", "practitioner"])?;
    let count = q.count()?;
    let patient = search::reference(&q, "patient", "Patient")?;
    let practitioner = search::reference(&q, "practitioner", "Practitioner")?;
    let after: Option<AtId> = q.position(&state)?;
    let mut tx = caller.begin(&state).await?;
    let zone = crate::clinic::timezone(&state, &mut tx, caller.clinic_id).await?;
    let when = search::instant_range(&q, "date", zone)?;
    let rows = sqlx::query_as!(
        Row,
        "SELECT a.id, a.patient_id, a.provider_id, o.name AS operatory, a.start_at, a.end_at, \
         a.status, a.reason, a.version, a.created_at, a.updated_at \
         FROM appointments a JOIN operatories o ON o.id = a.operatory_id \
         WHERE ($1::timestamptz IS NULL OR a.start_at >= $1) \
           AND ($2::timestamptz IS NULL OR a.start_at < $2) \
           AND (NOT $3::bool OR a.patient_id = $4) \
           AND (NOT $5::bool OR a.provider_id = $6) \
           AND ($7::timestamptz IS NULL OR (a.start_at, a.id) > ($7, $8)) \
         ORDER BY a.start_at, a.id LIMIT $9",
        when.from,
        when.to,
        patient.is_some(),
        patient.flatten(),
        practitioner.is_some(),
        practitioner.flatten(),
        after.as_ref().map(|a| a.0),
        after.as_ref().map(|a| a.1),
        i64::from(count) + 1
    )
    .fetch_all(&mut *tx)
    .await?;
    let (rows, more) = search::page(rows, count);
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    audit::record(
        &mut tx,
        &caller.audit(),
        event()
            .ids(ids)
            .details(serde_json::json!({ "via": "fhir" })),
    )
    .await?;
    tx.commit().await?;
    let last = rows.last().filter(|_| more).map(|r| AtId(r.start_at, r.id));
    let (self_link, next) = q.links(&state, "Appointment", last);
    let entries = rows
        .into_iter()
        .map(|r| Ok((format!("Appointment/{}", r.id), appointment(r)?)))
        .collect::<AppResult<Vec<_>>>()?;
    searchset(&super::base(&state), self_link, next, entries)
}

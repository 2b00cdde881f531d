//! `Procedure` (performed treatment: completed and existing procedures) and `Condition`
//! (chart entries), searched by patient, with teeth as ISO 3950 codes in `bodySite`. Both
//! open the clinical record as the native routes do: a restricted patient's record is a
//! 404 outside the care team and break-glass grants, and the read is audited.

use axum::extract::{RawQuery, State};
use chrono::{DateTime, NaiveDate, Utc};
use fhir_r4::choice::Primitive;
use fhir_r4::coded::Coded;
use fhir_r4::codes::EventStatus;
use fhir_r4::resources::procedure::{ProcedurePerformed, ProcedurePerformer};
use fhir_r4::resources::{Condition, Procedure, Resource};
use fhir_r4::types;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::people::Paging;
use super::search::{self, AtId, Query};
use super::{
    concept, identifier, meta, reference, searchset, string, tooth_site, Fhir, FhirBundle,
    FhirOperationOutcome,
};
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult};
use crate::patients;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(search_procedures))
        .routes(routes!(search_conditions))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ByPatient {
    /// Required: `Patient/<id>` or the id (a patient of another clinic, or one whose
    /// record is restricted away from you, is a 404).
    #[param(max_length = 100, pattern = "^(Patient/)?[^/]+$")]
    patient: String,
}

/// The patient a clinical search is about: required, and a well-formed id (else 404, as an
/// unknown patient is).
fn patient_of(q: &Query) -> AppResult<Uuid> {
    match search::reference(q, "patient", "Patient")? {
        None => Err(AppError::BadRequest(
            "`patient` is required: this server searches one patient's record at a time".into(),
        )),
        Some(None) => Err(AppError::not_found("patient")),
        Some(Some(id)) => Ok(id),
    }
}

/// A catalogue's code system as a URI: the ones FHIR names, else one of Molar's.
fn code_system(system: &str) -> String {
    match system.to_ascii_lowercase().as_str() {
        "cdt" => "http://www.ada.org/cdt".into(),
        "snomed" | "snomed-ct" | "sct" => "http://snomed.info/sct".into(),
        other => format!("urn:molar:code-system:{other}"),
    }
}

struct ProcedureRow {
    id: Uuid,
    patient_id: Uuid,
    tooth: Option<i16>,
    surfaces: Vec<String>,
    provider_id: Option<Uuid>,
    completed_on: Option<NaiveDate>,
    reversed_at: Option<DateTime<Utc>>,
    version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    code: String,
    system: String,
    description: String,
}

fn procedure(r: ProcedureRow) -> Resource {
    let status = if r.reversed_at.is_some() {
        EventStatus::EnteredInError
    } else {
        EventStatus::Completed
    };
    Resource::Procedure(Box::new(Procedure {
        id: Some(string(r.id.to_string())),
        meta: Some(meta(r.version, r.updated_at)),
        identifier: vec![identifier(r.id)],
        status: Coded::Known(status),
        code: Some(concept(
            &code_system(&r.system),
            &r.code,
            Some(&r.description),
        )),
        subject: reference("Patient", r.patient_id),
        performed: r
            .completed_on
            .map(|d| ProcedurePerformed::DateTime(Primitive::new(types::DateTime(d.to_string())))),
        performer: r
            .provider_id
            .map(|p| ProcedurePerformer {
                actor: reference("Practitioner", p),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        body_site: r
            .tooth
            .map(|t| tooth_site(t, &r.surfaces))
            .into_iter()
            .collect(),
        ..Default::default()
    }))
}

/// A patient's performed procedures (completed here, or existing from before), oldest
/// first; a reversed one is `entered-in-error`. Planned and referred work is not a
/// Procedure. Audited as `procedure.list` with the ids shown.
#[utoipa::path(get, path = "/fhir/Procedure", tag = "fhir", security(("bearer" = [])),
    params(ByPatient, Paging),
    responses(
        (status = 200, description = "A searchset Bundle of Procedures", content_type = "application/fhir+json", body = FhirBundle),
        (status = 400, description = "No patient, or a malformed parameter or cursor", body = FhirOperationOutcome),
        (status = 403, description = "Role lacks treatment.read", body = FhirOperationOutcome),
        (status = 404, description = "No such patient in your clinic, or a record restricted away from you", body = FhirOperationOutcome)))]
pub async fn search_procedures(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> AppResult<Fhir> {
    caller
        .authorize(&state, Permission::TreatmentRead, || {
            Event::new("procedure.list", "procedure")
        })
        .await?;
    let q = Query::parse(raw.as_deref(), &["patient"])?;
    let count = q.count()?;
    let id = patient_of(&q)?;
    let after: Option<AtId> = q.position(&state)?;
    let event = || Event::new("procedure.list", "procedure").patient(id);
    let mut tx =
        patients::open_record(&state, &caller, id, Permission::TreatmentRead, event).await?;
    let rows = sqlx::query_as!(
        ProcedureRow,
        "SELECT p.id, p.patient_id, p.tooth, p.surfaces, p.provider_id, p.completed_on, \
         p.reversed_at, p.version, p.created_at, p.updated_at, c.code, c.system, c.description \
         FROM procedures p JOIN procedure_codes c ON c.id = p.procedure_code_id \
         WHERE p.patient_id = $1 AND p.status IN ('completed', 'existing') \
           AND ($2::timestamptz IS NULL OR (p.created_at, p.id) > ($2, $3)) \
         ORDER BY p.created_at, p.id LIMIT $4",
        id,
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
    let last = rows
        .last()
        .filter(|_| more)
        .map(|r| AtId(r.created_at, r.id));
    let (self_link, next) = q.links(&state, "Procedure", last);
    let entries = rows
        .into_iter()
        .map(|r| (format!("Procedure/{}", r.id), procedure(r)))
        .collect();
    searchset(&super::base(&state), self_link, next, entries)
}

struct EntryRow {
    id: Uuid,
    patient_id: Uuid,
    tooth: i16,
    surfaces: Vec<String>,
    condition: String,
    note: Option<String>,
    recorded_at: DateTime<Utc>,
    voided_at: Option<DateTime<Utc>>,
}

const CONDITION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/condition-category";
const CLINICAL_STATUS: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
const VERIFICATION_STATUS: &str = "http://terminology.hl7.org/CodeSystem/condition-ver-status";
/// The chart's own conditions (caries, crown, missing, …).
const CHART_CONDITION: &str = "urn:molar:chart-condition";

fn condition(r: EntryRow) -> Resource {
    let voided = r.voided_at.is_some();
    let mut code = concept(CHART_CONDITION, &r.condition, None);
    code.text = Some(string(r.condition.replace('_', " ")));
    Resource::Condition(Box::new(Condition {
        id: Some(string(r.id.to_string())),
        identifier: vec![identifier(r.id)],
        // An entry in error has no clinical status (FHIR's con-5).
        clinical_status: (!voided).then(|| concept(CLINICAL_STATUS, "active", Some("Active"))),
        verification_status: Some(if voided {
            concept(
                VERIFICATION_STATUS,
                "entered-in-error",
                Some("Entered in Error"),
            )
        } else {
            concept(VERIFICATION_STATUS, "confirmed", Some("Confirmed"))
        }),
        category: vec![concept(
            CONDITION_CATEGORY,
            "problem-list-item",
            Some("Problem List Item"),
        )],
        code: Some(code),
        body_site: vec![tooth_site(r.tooth, &r.surfaces)],
        subject: reference("Patient", r.patient_id),
        recorded_date: Some(types::DateTime(
            r.recorded_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )),
        note: r
            .note
            .map(|text| types::Annotation {
                text: types::Markdown(text),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }))
}

/// A patient's chart entries, oldest first; a voided one is `entered-in-error`. Audited as
/// `chart.read`, as the native chart is.
#[utoipa::path(get, path = "/fhir/Condition", tag = "fhir", security(("bearer" = [])),
    params(ByPatient, Paging),
    responses(
        (status = 200, description = "A searchset Bundle of Conditions", content_type = "application/fhir+json", body = FhirBundle),
        (status = 400, description = "No patient, or a malformed parameter or cursor", body = FhirOperationOutcome),
        (status = 403, description = "Role lacks clinical.read", body = FhirOperationOutcome),
        (status = 404, description = "No such patient in your clinic, or a record restricted away from you", body = FhirOperationOutcome)))]
pub async fn search_conditions(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> AppResult<Fhir> {
    caller
        .authorize(&state, Permission::ClinicalRead, || {
            Event::new("chart.read", "chart")
        })
        .await?;
    let q = Query::parse(raw.as_deref(), &["patient"])?;
    let count = q.count()?;
    let id = patient_of(&q)?;
    let after: Option<AtId> = q.position(&state)?;
    let event = || Event::new("chart.read", "chart").patient(id);
    let mut tx =
        patients::open_record(&state, &caller, id, Permission::ClinicalRead, event).await?;
    let rows = sqlx::query_as!(
        EntryRow,
        "SELECT id, patient_id, tooth, surfaces, condition, note, recorded_at, voided_at \
         FROM chart_entries WHERE patient_id = $1 \
           AND ($2::timestamptz IS NULL OR (recorded_at, id) > ($2, $3)) \
         ORDER BY recorded_at, id LIMIT $4",
        id,
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
    let last = rows
        .last()
        .filter(|_| more)
        .map(|r| AtId(r.recorded_at, r.id));
    let (self_link, next) = q.links(&state, "Condition", last);
    let entries = rows
        .into_iter()
        .map(|r| (format!("Condition/{}", r.id), condition(r)))
        .collect();
    searchset(&super::base(&state), self_link, next, entries)
}

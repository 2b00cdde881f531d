//! `Patient` (read; search by name, birth date, identifier) and `Practitioner` (the
//! clinic's providers: read; search by name, identifier).

use axum::extract::{RawQuery, State};
use chrono::{DateTime, NaiveDate, Utc};
use fhir_r4::coded::Coded;
use fhir_r4::codes::{AdministrativeGender, ContactPointSystem, NameUse};
use fhir_r4::resources::practitioner::PractitionerQualification;
use fhir_r4::resources::{Patient, Practitioner, Resource};
use fhir_r4::types;
use serde::{Deserialize, Serialize};
use sqlx::types::Json as SqlJson;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::search::{self, Query};
use super::{
    concept, identifier, meta, searchset, string, Fhir, FhirBundle, FhirOperationOutcome,
    FhirResource,
};
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::clinic::Address;
use crate::error::{AppError, AppResult};
use crate::http::extract::ApiPath;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(search_patients))
        .routes(routes!(read_patient))
        .routes(routes!(search_practitioners))
        .routes(routes!(read_practitioner))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ResourceId {
    /// The resource's id (a UUID, as in the native API).
    pub id: Uuid,
}

/// The page parameters every search takes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct Paging {
    /// Page size (default 50).
    #[serde(rename = "_count")]
    #[param(minimum = 1, maximum = 200)]
    count: Option<u32>,
    /// Set by the server in a bundle's `next` link; bound to its search (else 400).
    #[serde(rename = "_cursor")]
    #[param(min_length = 1, pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PatientSearch {
    /// The start of the family name, the given name or the whole name, ignoring case;
    /// repeated, each must match.
    #[param(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    name: Option<Vec<String>>,
    /// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`, prefixed by `eq` (default), `ge`, `gt`, `le`,
    /// `lt`, `sa` or `eb`; repeated, each must hold.
    #[param(
        pattern = "^(eq|ge|gt|le|lt|sa|eb)?[0-9]{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?)?$"
    )]
    birthdate: Option<Vec<String>>,
    /// `urn:ietf:rfc:3986|urn:uuid:<id>` (or without the system).
    identifier: Option<String>,
}

/// The columns the FHIR view shows of a patient.
struct PatientRow {
    id: Uuid,
    first_name: String,
    last_name: String,
    date_of_birth: NaiveDate,
    sex: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    address: Option<SqlJson<Address>>,
    restricted: bool,
    version: i32,
    updated_at: DateTime<Utc>,
}

fn gender(sex: Option<&str>) -> Option<Coded<AdministrativeGender>> {
    Some(Coded::Known(match sex? {
        "female" => AdministrativeGender::Female,
        "male" => AdministrativeGender::Male,
        "other" => AdministrativeGender::Other,
        _ => AdministrativeGender::Unknown,
    }))
}

fn contact(system: ContactPointSystem, value: Option<String>) -> Option<types::ContactPoint> {
    Some(types::ContactPoint {
        system: Some(Coded::Known(system)),
        value: Some(string(value?)),
        ..Default::default()
    })
}

fn address(a: Address) -> types::Address {
    types::Address {
        line: [a.line1, a.line2]
            .into_iter()
            .flatten()
            .map(string)
            .collect(),
        city: a.city.map(string),
        state: a.region.map(string),
        postal_code: a.postal_code.map(string),
        country: a.country.map(string),
        ..Default::default()
    }
}

fn patient(r: PatientRow) -> Resource {
    let mut m = meta(r.version, r.updated_at);
    if r.restricted {
        // HL7 confidentiality "restricted": the clinical record is the care team's.
        m.security = vec![types::Coding {
            system: Some(types::Uri(
                "http://terminology.hl7.org/CodeSystem/v3-Confidentiality".into(),
            )),
            code: Some(types::Code("R".into())),
            display: Some(string("restricted")),
            ..Default::default()
        }];
    }
    Resource::Patient(Box::new(Patient {
        id: Some(string(r.id.to_string())),
        meta: Some(m),
        identifier: vec![identifier(r.id)],
        active: Some(types::Boolean(true)),
        name: vec![types::HumanName {
            r#use: Some(Coded::Known(NameUse::Official)),
            family: Some(string(r.last_name)),
            given: vec![string(r.first_name)].into(),
            ..Default::default()
        }],
        telecom: [
            contact(ContactPointSystem::Phone, r.phone),
            contact(ContactPointSystem::Email, r.email),
        ]
        .into_iter()
        .flatten()
        .collect(),
        gender: gender(r.sex.as_deref()),
        birth_date: Some(types::Date(r.date_of_birth.to_string())),
        address: r.address.map(|a| address(a.0)).into_iter().collect(),
        ..Default::default()
    }))
}

/// A patient, as the native read shows them (an archived one is gone: 404).
#[utoipa::path(get, path = "/fhir/Patient/{id}", tag = "fhir", security(("bearer" = [])),
    params(ResourceId),
    responses(
        (status = 200, description = "The Patient", content_type = "application/fhir+json", body = FhirResource),
        (status = 403, description = "Role lacks patients.read", body = FhirOperationOutcome),
        (status = 404, description = "No such patient in your clinic", body = FhirOperationOutcome)))]
pub async fn read_patient(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ResourceId { id }): ApiPath<ResourceId>,
) -> AppResult<Fhir> {
    let event = || Event::new("patient.read", "patient").resource(id);
    caller
        .authorize(&state, Permission::PatientsRead, event)
        .await?;
    let mut tx = caller.begin(&state).await?;
    let found = sqlx::query_as!(
        PatientRow,
        r#"SELECT id, first_name, last_name, date_of_birth, sex, email, phone,
             address AS "address: SqlJson<Address>", restricted, version, updated_at
           FROM patients WHERE id = $1 AND archived_at IS NULL"#,
        id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = found else {
        drop(tx);
        audit::record_failure(&state.db, &caller.audit(), event()).await;
        return Err(AppError::not_found("patient"));
    };
    audit::record(&mut tx, &caller.audit(), event().patient(id)).await?;
    tx.commit().await?;
    Ok(Fhir(patient(row)))
}

#[derive(Serialize, Deserialize)]
struct NamePosition(String, String, Uuid);

/// Patients by family and given name (archived ones are not served), audited as
/// `patient.search` with the ids shown.
#[utoipa::path(get, path = "/fhir/Patient", tag = "fhir", security(("bearer" = [])),
    params(PatientSearch, Paging),
    responses(
        (status = 200, description = "A searchset Bundle of Patients", content_type = "application/fhir+json", body = FhirBundle),
        (status = 400, description = "A malformed parameter or cursor", body = FhirOperationOutcome),
        (status = 403, description = "Role lacks patients.read", body = FhirOperationOutcome)))]
pub async fn search_patients(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> AppResult<Fhir> {
    let event = || Event::new("patient.search", "patient");
    caller
        .authorize(&state, Permission::PatientsRead, event)
        .await?;
    let q = Query::parse(raw.as_deref(), &["name", "birthdate", "identifier"])?;
    let count = q.count()?;
    let names = search::string_prefixes(&q, "name")?;
    let born = search::date_range(&q, "birthdate")?;
    let by_id = search::identifier(&q)?;
    let after: Option<NamePosition> = q.position(&state)?;
    let mut tx = caller.begin(&state).await?;
    let rows = sqlx::query_as!(
        PatientRow,
        r#"SELECT id, first_name, last_name, date_of_birth, sex, email, phone,
             address AS "address: SqlJson<Address>", restricted, version, updated_at
           FROM patients
           WHERE archived_at IS NULL
             AND NOT EXISTS (SELECT 1 FROM unnest($1::text[]) AS w(p)
                 WHERE NOT (lower(first_name) LIKE w.p OR lower(last_name) LIKE w.p
                            OR search_name LIKE w.p))
             AND ($2::date IS NULL OR date_of_birth >= $2)
             AND ($3::date IS NULL OR date_of_birth < $3)
             AND (NOT $4::bool OR id = $5)
             AND ($6::text IS NULL OR (lower(last_name), lower(first_name), id) > ($6, $7, $8))
           ORDER BY lower(last_name), lower(first_name), id
           LIMIT $9"#,
        &names,
        born.from,
        born.to,
        by_id.is_some(),
        by_id.flatten(),
        after.as_ref().map(|a| a.0.as_str()),
        after.as_ref().map(|a| a.1.as_str()),
        after.as_ref().map(|a| a.2),
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
    let last = rows.last().filter(|_| more).map(|r| {
        NamePosition(
            r.last_name.to_lowercase(),
            r.first_name.to_lowercase(),
            r.id,
        )
    });
    let (self_link, next) = q.links(&state, "Patient", last);
    let entries = rows
        .into_iter()
        .map(|r| (format!("Patient/{}", r.id), patient(r)))
        .collect();
    searchset(&super::base(&state), self_link, next, entries)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PractitionerSearch {
    /// The start of any word of the name, ignoring case; repeated, each must match.
    #[param(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    name: Option<Vec<String>>,
    /// `urn:ietf:rfc:3986|urn:uuid:<id>` (or without the system).
    identifier: Option<String>,
}

struct PractitionerRow {
    id: Uuid,
    full_name: String,
    role: String,
    active: bool,
    version: i32,
    updated_at: DateTime<Utc>,
}

fn practitioner(r: PractitionerRow) -> Resource {
    let role = match r.role.as_str() {
        "dentist" => "Dentist",
        "hygienist" => "Dental hygienist",
        "assistant" => "Dental assistant",
        "owner" => "Practice owner",
        "admin" => "Practice administrator",
        other => other,
    };
    let mut qualification_code = concept("urn:molar:role", &r.role, Some(role));
    qualification_code.text = Some(string(role));
    Resource::Practitioner(Box::new(Practitioner {
        id: Some(string(r.id.to_string())),
        meta: Some(meta(r.version, r.updated_at)),
        identifier: vec![identifier(r.id)],
        active: Some(types::Boolean(r.active)),
        name: vec![types::HumanName {
            text: Some(string(r.full_name)),
            ..Default::default()
        }],
        qualification: vec![PractitionerQualification {
            code: qualification_code,
            ..Default::default()
        }],
        ..Default::default()
    }))
}

/// One of the clinic's providers (users who treat patients); other staff are not
/// practitioners here (404).
#[utoipa::path(get, path = "/fhir/Practitioner/{id}", tag = "fhir", security(("bearer" = [])),
    params(ResourceId),
    responses(
        (status = 200, description = "The Practitioner", content_type = "application/fhir+json", body = FhirResource),
        (status = 403, description = "Role lacks appointments.read", body = FhirOperationOutcome),
        (status = 404, description = "No such provider in your clinic", body = FhirOperationOutcome)))]
pub async fn read_practitioner(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ResourceId { id }): ApiPath<ResourceId>,
) -> AppResult<Fhir> {
    caller
        .authorize(&state, Permission::AppointmentsRead, || {
            Event::new("provider.read", "user").resource(id)
        })
        .await?;
    let mut tx = caller.begin(&state).await?;
    let row = sqlx::query_as!(
        PractitionerRow,
        "SELECT id, full_name, role, active, version, updated_at FROM users \
         WHERE id = $1 AND is_provider",
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AppError::not_found("practitioner"))?;
    tx.commit().await?;
    Ok(Fhir(practitioner(row)))
}

#[derive(Serialize, Deserialize)]
struct FullNamePosition(String, Uuid);

/// The clinic's providers by name, active and not.
#[utoipa::path(get, path = "/fhir/Practitioner", tag = "fhir", security(("bearer" = [])),
    params(PractitionerSearch, Paging),
    responses(
        (status = 200, description = "A searchset Bundle of Practitioners", content_type = "application/fhir+json", body = FhirBundle),
        (status = 400, description = "A malformed parameter or cursor", body = FhirOperationOutcome),
        (status = 403, description = "Role lacks appointments.read", body = FhirOperationOutcome)))]
pub async fn search_practitioners(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> AppResult<Fhir> {
    caller
        .authorize(&state, Permission::AppointmentsRead, || {
            Event::new("provider.list", "user")
        })
        .await?;
    let q = Query::parse(raw.as_deref(), &["name", "identifier"])?;
    let count = q.count()?;
    let names = search::string_prefixes(&q, "name")?;
    let by_id = search::identifier(&q)?;
    let after: Option<FullNamePosition> = q.position(&state)?;
    let mut tx = caller.begin(&state).await?;
    let rows = sqlx::query_as!(
        PractitionerRow,
        r#"SELECT id, full_name, role, active, version, updated_at FROM users
           WHERE is_provider
             AND NOT EXISTS (SELECT 1 FROM unnest($1::text[]) AS w(p)
                 WHERE NOT (lower(full_name) LIKE w.p OR lower(full_name) LIKE '% ' || w.p))
             AND (NOT $2::bool OR id = $3)
             AND ($4::text IS NULL OR (lower(full_name), id) > ($4, $5))
           ORDER BY lower(full_name), id
           LIMIT $6"#,
        &names,
        by_id.is_some(),
        by_id.flatten(),
        after.as_ref().map(|a| a.0.as_str()),
        after.as_ref().map(|a| a.1),
        i64::from(count) + 1
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let (rows, more) = search::page(rows, count);
    let last = rows
        .last()
        .filter(|_| more)
        .map(|r| FullNamePosition(r.full_name.to_lowercase(), r.id));
    let (self_link, next) = q.links(&state, "Practitioner", last);
    let entries = rows
        .into_iter()
        .map(|r| (format!("Practitioner/{}", r.id), practitioner(r)))
        .collect();
    searchset(&super::base(&state), self_link, next, entries)
}

//! `/patients`: create (idempotent), read, merge-patch, archive; the list and the search
//! are in `search.rs`.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::NaiveDate;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::search::*;
use super::*;
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult, Problem};
use crate::http::etag::{self, IfMatch};
use crate::http::extract::{ApiJson, ApiPath};
use crate::http::idempotency::{self, Created, HashedJson, IdempotencyKey};
use crate::state::AppState;
use crate::validate::{merge_nested, patch_field, Errors};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_patients, create_patient))
        .routes(routes!(get_patient, update_patient, archive_patient))
        .merge(super::break_glass::router())
}

fn patient_response(status: StatusCode, patient: &Patient) -> Response {
    (
        status,
        [(header::ETAG, etag::etag(patient.version))],
        Json(patient),
    )
        .into_response()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "first_name": "Max", "last_name": "Mustermann", "date_of_birth": "1985-04-12",
    "sex": "male", "phone": "+49 30 1234567", "email": "max@example.org",
    "medical_alerts": [{"kind": "allergy", "description": "Penicillin", "severity": "high"}]
}))]
pub struct NewPatient {
    #[schema(schema_with = crate::validate::schema::text_100)]
    first_name: String,
    #[schema(schema_with = crate::validate::schema::text_100)]
    last_name: String,
    /// Not in the future, not before 1880-01-01 (else 422).
    date_of_birth: NaiveDate,
    sex: Option<Sex>,
    #[schema(schema_with = crate::validate::schema::email_or_null)]
    email: Option<String>,
    #[schema(schema_with = crate::validate::schema::phone_or_null)]
    phone: Option<String>,
    address: Option<Address>,
    /// An active provider of your clinic (else 422).
    preferred_provider_id: Option<Uuid>,
    /// Writing them needs `medical_alerts.write`.
    #[serde(default)]
    #[schema(max_items = 100)]
    medical_alerts: Vec<MedicalAlert>,
    emergency_contact: Option<Contact>,
    /// For minors.
    guardian: Option<Contact>,
    /// Another patient of your clinic who pays (else 422).
    responsible_party_id: Option<Uuid>,
}

/// Registers a patient. Accepts `Idempotency-Key`.
#[utoipa::path(post, path = "/patients", tag = "patients", security(("bearer" = [])),
    request_body = NewPatient,
    params(IdempotencyKey),
    responses(
        (status = 201, description = "Created", body = Patient, headers(("Location" = String), ("ETag" = String))),
        (status = 403, description = "Role lacks patients.write", body = Problem),
        (status = 409, description = "The same Idempotency-Key is still in progress", body = Problem),
        (status = 422, description = "Invalid fields, or ids not in your clinic", body = Problem)))]
pub async fn create_patient(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: HashedJson<NewPatient>,
) -> AppResult<Response> {
    caller
        .authorize(&state, Permission::PatientsWrite, || {
            Event::new("patient.create", "patient")
        })
        .await?;
    let b = &body.value;
    if !b.medical_alerts.is_empty() {
        caller
            .authorize(&state, Permission::MedicalAlertsWrite, || {
                Event::new("patient.create", "patient")
            })
            .await?;
    }
    let mut errors = Errors::default();
    let first_name = errors.text("first_name", &b.first_name, 100);
    let last_name = errors.text("last_name", &b.last_name, 100);
    validate_dob(b.date_of_birth, &mut errors);
    let email = b.email.as_deref().map(|e| errors.email("email", e));
    let phone = b.phone.as_deref().map(|p| errors.phone("phone", p));
    if let Some(a) = &b.address {
        a.validate("address", &mut errors);
    }
    validate_alerts(&b.medical_alerts, &mut errors);
    if let Some(c) = &b.emergency_contact {
        validate_contact(c, "emergency_contact", &mut errors);
    }
    if let Some(c) = &b.guardian {
        validate_contact(c, "guardian", &mut errors);
    }
    errors.finish()?;

    idempotency::run(&state, &caller, &headers, &body.hash, || async {
        let mut tx = caller.begin(&state).await?;
        if let Some(id) = b.preferred_provider_id {
            check_provider(&mut tx, id, "preferred_provider_id").await?;
        }
        if let Some(id) = b.responsible_party_id {
            check_patient_ref(&mut tx, id, "responsible_party_id").await?;
        }
        let id = Uuid::now_v7();
        sqlx::query!(
            "INSERT INTO patients (clinic_id, id, first_name, last_name, date_of_birth, sex, email, phone, \
             address, preferred_provider_id, medical_alerts, emergency_contact, guardian, responsible_party_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            caller.clinic_id,
            id,
            &first_name,
            &last_name,
            b.date_of_birth,
            b.sex.map(Sex::as_str),
            email.as_deref(),
            phone.as_deref(),
            b.address.clone().map(SqlJson) as _,
            b.preferred_provider_id,
            SqlJson(&b.medical_alerts) as _,
            b.emergency_contact.clone().map(SqlJson) as _,
            b.guardian.clone().map(SqlJson) as _,
            b.responsible_party_id,
        )
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            &caller.audit(),
            Event::new("patient.create", "patient").resource(id).patient(id),
        )
        .await?;
        let patient = load(&mut tx, id, false).await?;
        let created = Created {
            location: format!("/api/v2/patients/{id}"),
            version: Some(patient.version),
            value: patient,
        };
        Ok((tx, created))
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PatientPath {
    /// The patient's id.
    pub id: Uuid,
}

/// One patient; an archived one is gone (404): list it with `include_archived=true`.
#[utoipa::path(get, path = "/patients/{id}", tag = "patients", security(("bearer" = [])),
    params(PatientPath),
    responses(
        (status = 200, description = "The patient, with its ETag", body = Patient),
        (status = 403, description = "Role lacks patients.read", body = Problem),
        (status = 404, description = "No such patient in your clinic, or an archived one", body = Problem)))]
pub async fn get_patient(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(PatientPath { id }): ApiPath<PatientPath>,
) -> AppResult<Response> {
    caller
        .authorize(&state, Permission::PatientsRead, || {
            Event::new("patient.read", "patient").resource(id)
        })
        .await?;
    let mut tx = caller.begin(&state).await?;
    // The read and its audit event in one statement: the event is written exactly when
    // the patient is found.
    // `audit::cte(2, ...)` written out: the context at $2..$6.
    let ctx = caller.audit();
    let found = sqlx::query_as!(
        PatientRow,
        r#"WITH p AS (SELECT id, first_name, last_name, date_of_birth, sex, email, phone, address,
            preferred_provider_id, medical_alerts, emergency_contact, guardian, responsible_party_id,
            restricted, care_team, archived_at, version, created_at, updated_at FROM patients
            WHERE id = $1 AND archived_at IS NULL),
         audit AS (INSERT INTO audit_events
            (clinic_id, id, user_id, action, resource_type, resource_id, patient_id, request_id, ip, outcome, details)
            SELECT $2, $3, $4, 'patient.read', 'patient', p.id, p.id, $5, $6, 'success', NULL FROM p)
         SELECT id, first_name, last_name, date_of_birth, sex, email, phone,
            address AS "address: SqlJson<Address>", preferred_provider_id,
            medical_alerts AS "medical_alerts: SqlJson<Vec<MedicalAlert>>",
            emergency_contact AS "emergency_contact: SqlJson<Contact>",
            guardian AS "guardian: SqlJson<Contact>",
            responsible_party_id, restricted, care_team, archived_at, version, created_at, updated_at
           FROM p"#,
        id,
        ctx.clinic_id,
        Uuid::now_v7(),
        ctx.user_id,
        ctx.request_id.as_deref(),
        ctx.ip.map(ipnet::IpNet::from),
    )
    .fetch_optional(&mut *tx)
    .await?;
    let patient = match found {
        Some(row) => Patient::from(row).for_role(caller.role),
        None => {
            drop(tx);
            // A probe for a patient that is not there is a failed read of patient data.
            audit::record_failure(
                &state.db,
                &caller.audit(),
                Event::new("patient.read", "patient").resource(id),
            )
            .await;
            return Err(AppError::not_found("patient"));
        }
    };
    tx.commit().await?;
    Ok(patient_response(StatusCode::OK, &patient))
}

/// A merge patch of a patient: absent fields stay, `null` clears an optional one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatientPatch {
    /// Cannot be cleared.
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(schema_with = crate::validate::schema::text_100)]
    first_name: Option<Option<String>>,
    /// Cannot be cleared.
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(schema_with = crate::validate::schema::text_100)]
    last_name: Option<Option<String>>,
    /// Cannot be cleared; not in the future, not before 1880-01-01 (else 422).
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = NaiveDate)]
    date_of_birth: Option<Option<NaiveDate>>,
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Option<Sex>)]
    sex: Option<Option<Sex>>,
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(schema_with = crate::validate::schema::email_or_null)]
    email: Option<Option<String>>,
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(schema_with = crate::validate::schema::phone_or_null)]
    phone: Option<Option<String>>,
    /// Merged into the current value (RFC 7396); `null` clears it.
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Option<Address>)]
    address: Option<Option<serde_json::Value>>,
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Option<Uuid>)]
    preferred_provider_id: Option<Option<Uuid>>,
    /// Replaces the whole list (`null` or `[]` clears it); needs `medical_alerts.write`.
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Option<Vec<MedicalAlert>>, max_items = 100)]
    medical_alerts: Option<Option<Vec<MedicalAlert>>>,
    /// Merged into the current value (RFC 7396); `null` clears it.
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Option<ContactPatch>)]
    emergency_contact: Option<Option<serde_json::Value>>,
    /// Merged into the current value (RFC 7396); `null` clears it.
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Option<ContactPatch>)]
    guardian: Option<Option<serde_json::Value>>,
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Option<Uuid>)]
    responsible_party_id: Option<Option<Uuid>>,
    /// Keeps the clinical record to the `care_team` and break-glass grants; cannot be
    /// cleared. Changing it or the care team needs `clinical.write` or `users.manage`;
    /// for a patient who is restricted already, also a place on the care team, unless
    /// `users.manage` (else 403).
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = bool)]
    restricted: Option<Option<bool>>,
    /// Replaces the care team (`null` or `[]` empties it): at most 50 active users of
    /// your clinic (else 422). Needs what `restricted` needs.
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Option<Vec<Uuid>>, max_items = 50)]
    care_team: Option<Option<Vec<Uuid>>>,
}

impl PatientPatch {
    fn touches_demographics(&self) -> bool {
        self.first_name.is_some()
            || self.last_name.is_some()
            || self.date_of_birth.is_some()
            || self.sex.is_some()
            || self.email.is_some()
            || self.phone.is_some()
            || self.address.is_some()
            || self.preferred_provider_id.is_some()
            || self.emergency_contact.is_some()
            || self.guardian.is_some()
            || self.responsible_party_id.is_some()
    }

    /// Whether the patch changes who may open the clinical record.
    fn touches_access(&self) -> bool {
        self.restricted.is_some() || self.care_team.is_some()
    }
}

/// The most users a care team holds (the schema checks it too).
pub const MAX_CARE_TEAM: usize = 50;

/// Who may change a patient's restriction or care team: the clinical roles and the
/// managers, never the front desk or billing alone.
fn may_set_access(caller: &Caller) -> bool {
    caller.can(Permission::ClinicalWrite) || caller.can(Permission::UsersManage)
}

/// The care team without repeats, in the order given.
fn distinct(ids: &[Uuid]) -> Vec<Uuid> {
    let mut out: Vec<Uuid> = Vec::with_capacity(ids.len());
    for id in ids {
        if !out.contains(id) {
            out.push(*id);
        }
    }
    out
}

/// The audit details of a change of access: the restriction before and after, and who
/// joined or left the care team; `None` when neither changed.
fn access_change(before: (bool, &[Uuid]), after: (bool, &[Uuid])) -> Option<serde_json::Value> {
    let added: Vec<Uuid> = after
        .1
        .iter()
        .filter(|u| !before.1.contains(u))
        .copied()
        .collect();
    let removed: Vec<Uuid> = before
        .1
        .iter()
        .filter(|u| !after.1.contains(u))
        .copied()
        .collect();
    if before.0 == after.0 && added.is_empty() && removed.is_empty() {
        return None;
    }
    let mut details = serde_json::Map::new();
    if before.0 != after.0 {
        details.insert(
            "restricted".into(),
            serde_json::json!({ "from": before.0, "to": after.0 }),
        );
    }
    if !added.is_empty() || !removed.is_empty() {
        details.insert(
            "care_team".into(),
            serde_json::json!({ "added": added, "removed": removed }),
        );
    }
    Some(serde_json::Value::Object(details))
}

/// Updates a patient (`If-Match` honoured).
#[utoipa::path(patch, path = "/patients/{id}", tag = "patients", security(("bearer" = [])),
    params(PatientPath, IfMatch),
    request_body = PatientPatch,
    responses(
        (status = 200, description = "The updated patient", body = Patient),
        (status = 403, description = "Role may not change these fields, or only the care team, an owner or an admin changes this restricted patient's access", body = Problem),
        (status = 404, description = "No such patient in your clinic, or an archived one", body = Problem),
        (status = 412, description = "If-Match does not match", body = Problem),
        (status = 422, description = "Invalid fields, or care team members who are not active users of your clinic", body = Problem)))]
pub async fn update_patient(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(PatientPath { id }): ApiPath<PatientPath>,
    ApiJson(patch): ApiJson<PatientPatch>,
) -> AppResult<Response> {
    let event = || {
        Event::new("patient.update", "patient")
            .resource(id)
            .patient(id)
    };
    // Any change, even an empty one, needs a write permission.
    if patch.touches_demographics() || patch.medical_alerts.is_none() {
        caller
            .authorize(&state, Permission::PatientsWrite, event)
            .await?;
    }
    if patch.medical_alerts.is_some() {
        caller
            .authorize(&state, Permission::MedicalAlertsWrite, event)
            .await?;
    }
    if patch.touches_access() && !may_set_access(&caller) {
        return Err(caller
            .deny(
                &state,
                event(),
                "changing a patient's restriction or care team needs a clinical or managing role",
            )
            .await);
    }
    let mut errors = Errors::default();
    for (field, v) in [
        ("first_name", &patch.first_name),
        ("last_name", &patch.last_name),
    ] {
        if let Some(None) = v {
            errors.add(field, "is required and cannot be cleared");
        }
    }
    if let Some(None) = patch.date_of_birth {
        errors.add("date_of_birth", "is required and cannot be cleared");
    }
    let first_name = patch
        .first_name
        .clone()
        .flatten()
        .map(|n| errors.text("first_name", &n, 100));
    let last_name = patch
        .last_name
        .clone()
        .flatten()
        .map(|n| errors.text("last_name", &n, 100));
    if let Some(Some(d)) = patch.date_of_birth {
        validate_dob(d, &mut errors);
    }
    let email = patch
        .email
        .clone()
        .map(|e| e.map(|e| errors.email("email", &e)));
    let phone = patch
        .phone
        .clone()
        .map(|p| p.map(|p| errors.phone("phone", &p)));
    if let Some(Some(alerts)) = &patch.medical_alerts {
        validate_alerts(alerts, &mut errors);
    }
    if patch.responsible_party_id == Some(Some(id)) {
        errors.add("responsible_party_id", "must be another patient");
    }
    if let Some(None) = patch.restricted {
        errors.add("restricted", "is required and cannot be cleared");
    }
    if let Some(Some(team)) = &patch.care_team {
        if team.len() > MAX_CARE_TEAM {
            errors.add("care_team", "at most 50 users");
        }
    }
    let care_team = patch
        .care_team
        .as_ref()
        .map(|t| distinct(t.as_deref().unwrap_or_default()));
    errors.finish()?;

    let mut tx = caller.begin(&state).await?;
    let current = load(&mut tx, id, true).await?;
    etag::check(&headers, current.version)?;
    // A restricted patient's access is theirs to change who treat them, or a manager's:
    // anyone else would otherwise lift the restriction instead of breaking the glass.
    if patch.touches_access()
        && current.restricted
        && !caller.can(Permission::UsersManage)
        && !current.care_team.contains(&caller.user_id)
    {
        drop(tx);
        return Err(caller
            .deny(
                &state,
                event(),
                "only the care team, an owner or an admin changes a restricted patient's \
                 restriction or care team",
            )
            .await);
    }
    if let Some(team) = care_team.as_ref().filter(|t| !t.is_empty()) {
        let active = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM users WHERE id = ANY ($1) AND active"#,
            team
        )
        .fetch_one(&mut *tx)
        .await?;
        if usize::try_from(active).ok() != Some(team.len()) {
            return Err(AppError::validation(
                "care_team",
                "must list active users of your clinic",
            ));
        }
    }
    let restricted = patch.restricted.flatten().unwrap_or(current.restricted);
    let care_team = care_team.unwrap_or_else(|| current.care_team.clone());
    let access = access_change(
        (current.restricted, &current.care_team),
        (restricted, &care_team),
    );
    // Nested objects merge into what is stored; the result must still be valid.
    let nested = |v: &Option<Option<serde_json::Value>>| {
        v.clone().map(|x| x.unwrap_or(serde_json::Value::Null))
    };
    let mut errors = Errors::default();
    let address = merge_nested(
        current.address.as_ref(),
        &nested(&patch.address),
        "address",
        &mut errors,
    );
    let emergency = merge_nested(
        current.emergency_contact.as_ref(),
        &nested(&patch.emergency_contact),
        "emergency_contact",
        &mut errors,
    );
    let guardian = merge_nested(
        current.guardian.as_ref(),
        &nested(&patch.guardian),
        "guardian",
        &mut errors,
    );
    if let Some(Some(a)) = &address {
        a.validate("address", &mut errors);
    }
    if let Some(Some(c)) = &emergency {
        validate_contact(c, "emergency_contact", &mut errors);
    }
    if let Some(Some(c)) = &guardian {
        validate_contact(c, "guardian", &mut errors);
    }
    errors.finish()?;
    if let Some(Some(pid)) = patch.preferred_provider_id {
        check_provider(&mut tx, pid, "preferred_provider_id").await?;
    }
    if let Some(Some(rid)) = patch.responsible_party_id {
        check_patient_ref(&mut tx, rid, "responsible_party_id").await?;
    }
    fn pick<T: Clone>(patch: &Option<Option<T>>, current: Option<T>) -> Option<T> {
        match patch {
            None => current,
            Some(v) => v.clone(),
        }
    }
    sqlx::query!(
        "UPDATE patients SET first_name = $2, last_name = $3, date_of_birth = $4, sex = $5, email = $6, \
         phone = $7, address = $8, preferred_provider_id = $9, medical_alerts = $10, \
         emergency_contact = $11, guardian = $12, responsible_party_id = $13, \
         restricted = $14, care_team = $15, \
         version = version + 1, updated_at = now() WHERE id = $1",
        id,
        first_name.unwrap_or(current.first_name.clone()),
        last_name.unwrap_or(current.last_name.clone()),
        patch.date_of_birth.flatten().unwrap_or(current.date_of_birth),
        pick(&patch.sex, current.sex).map(Sex::as_str),
        match email {
            None => current.email.clone(),
            Some(e) => e,
        },
        match phone {
            None => current.phone.clone(),
            Some(p) => p,
        },
        pick(&address, current.address.clone()).map(SqlJson) as _,
        pick(&patch.preferred_provider_id, current.preferred_provider_id),
        SqlJson(pick(&patch.medical_alerts, current.medical_alerts.clone()).unwrap_or_default())
            as _,
        pick(&emergency, current.emergency_contact.clone()).map(SqlJson) as _,
        pick(&guardian, current.guardian.clone()).map(SqlJson) as _,
        pick(&patch.responsible_party_id, current.responsible_party_id),
        restricted,
        &care_team,
    )
    .execute(&mut *tx)
    .await?;
    let event = match access {
        Some(details) => event().details(details),
        None => event(),
    };
    audit::record(&mut tx, &caller.audit(), event).await?;
    let updated = load(&mut tx, id, false).await?.for_role(caller.role);
    tx.commit().await?;
    Ok(patient_response(StatusCode::OK, &updated))
}

/// Archives a patient: kept, and listed with `include_archived=true`, but gone from
/// `/patients/{id}` and everything under it (404), like any deleted resource.
#[utoipa::path(delete, path = "/patients/{id}", tag = "patients", security(("bearer" = [])),
    params(PatientPath, IfMatch),
    responses(
        (status = 204, description = "Archived"),
        (status = 403, description = "Role lacks patients.write", body = Problem),
        (status = 404, description = "No such patient in your clinic, or an archived one", body = Problem),
        (status = 412, description = "If-Match does not match", body = Problem)))]
pub async fn archive_patient(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(PatientPath { id }): ApiPath<PatientPath>,
) -> AppResult<StatusCode> {
    let event = || {
        Event::new("patient.archive", "patient")
            .resource(id)
            .patient(id)
    };
    caller
        .authorize(&state, Permission::PatientsWrite, event)
        .await?;
    let mut tx = caller.begin(&state).await?;
    let current = load(&mut tx, id, true).await?;
    etag::check(&headers, current.version)?;
    sqlx::query!(
        "UPDATE patients SET archived_at = now(), version = version + 1, updated_at = now() WHERE id = $1",
        id
    )
    .execute(&mut *tx)
    .await?;
    audit::record(&mut tx, &caller.audit(), event()).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_care_team_keeps_each_user_once_in_the_order_given() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(distinct(&[a, b, a, b]), vec![a, b]);
        assert!(distinct(&[]).is_empty());
    }

    #[test]
    fn access_changes_name_the_restriction_and_who_joined_or_left() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(access_change((true, &[a, b]), (true, &[b, a])), None);
        assert_eq!(
            access_change((false, &[]), (true, &[a])),
            Some(serde_json::json!({
                "restricted": {"from": false, "to": true},
                "care_team": {"added": [a], "removed": []}
            }))
        );
        assert_eq!(
            access_change((true, &[a, b]), (true, &[b, c])),
            Some(serde_json::json!({"care_team": {"added": [c], "removed": [a]}}))
        );
    }
}

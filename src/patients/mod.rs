//! Patients: demographics, medical alerts, contacts and family accounts; search by name
//! (typo tolerant), phone digits, email or date of birth; archive instead of delete: an
//! archived patient is kept, and listed with `include_archived=true`, but is gone from
//! `/patients/{id}` and everything under it (404), as after any DELETE.
//! Every read, list and change is audited in the same transaction.
//!
//! A restricted patient's clinical record is open only to their care team and to
//! break-glass grants (`break_glass.rs`); [`begin_on`] and [`guard_record`] answer 404
//! to everyone else, and row-level security hides the rows beneath.

pub mod break_glass;
pub mod routes;
pub mod search;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json as SqlJson;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::Event;
use crate::auth::{Caller, Permission};
use crate::clinic::Address;
use crate::db::Tx;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::validate::Errors;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Sex {
    Female,
    Male,
    Other,
    Unknown,
}

impl Sex {
    pub fn as_str(self) -> &'static str {
        match self {
            Sex::Female => "female",
            Sex::Male => "male",
            Sex::Other => "other",
            Sex::Unknown => "unknown",
        }
    }

    fn parse(s: &str) -> Option<Sex> {
        [Sex::Female, Sex::Male, Sex::Other, Sex::Unknown]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    Allergy,
    Medication,
    Condition,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Moderate,
    High,
}

/// Something every clinician must see before treating: an allergy, a medication, a condition.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MedicalAlert {
    pub kind: AlertKind,
    #[schema(schema_with = crate::validate::schema::text_500)]
    pub description: String,
    pub severity: Severity,
}

/// An emergency contact or a guardian.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    #[schema(schema_with = crate::validate::schema::text_200)]
    pub name: String,
    #[schema(schema_with = crate::validate::schema::text_100_or_null)]
    pub relationship: Option<String>,
    #[schema(schema_with = crate::validate::schema::phone_or_null)]
    pub phone: Option<String>,
}

/// A merge patch of an emergency contact or a guardian (RFC 7396): absent fields stay,
/// `null` clears `relationship` or `phone`; the result must be a valid [`Contact`] (a new
/// contact needs a `name`), else 422.
#[derive(Debug, Clone, ToSchema)]
#[allow(dead_code)]
pub struct ContactPatch {
    #[schema(schema_with = crate::validate::schema::text_200)]
    name: Option<String>,
    #[schema(schema_with = crate::validate::schema::text_100_or_null)]
    relationship: Option<Option<String>>,
    #[schema(schema_with = crate::validate::schema::phone_or_null)]
    phone: Option<Option<String>>,
}

impl Contact {
    fn validate(&self, field: &str, errors: &mut Errors) {
        errors.text(&format!("{field}.name"), &self.name, 200);
        if let Some(r) = &self.relationship {
            errors.text(&format!("{field}.relationship"), r, 100);
        }
        if let Some(p) = &self.phone {
            errors.phone(&format!("{field}.phone"), p);
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Patient {
    pub id: Uuid,
    pub first_name: String,
    pub last_name: String,
    #[serde(serialize_with = "crate::http::json::date")]
    pub date_of_birth: NaiveDate,
    pub sex: Option<Sex>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub address: Option<Address>,
    pub preferred_provider_id: Option<Uuid>,
    /// `null` when the caller's role may not see medical information (billing).
    pub medical_alerts: Option<Vec<MedicalAlert>>,
    pub emergency_contact: Option<Contact>,
    pub guardian: Option<Contact>,
    /// Another patient who pays (a family account).
    pub responsible_party_id: Option<Uuid>,
    /// The clinical record (notes, chart, perio, documents, procedures and plans) is open
    /// only to the `care_team` and to break-glass grants; demographics stay visible.
    pub restricted: bool,
    /// Users of the clinic who may open a restricted patient's clinical record.
    pub care_team: Vec<Uuid>,
    pub archived: bool,
    #[serde(serialize_with = "crate::http::json::instant_or_null")]
    pub archived_at: Option<DateTime<Utc>>,
    pub version: i32,
    #[serde(serialize_with = "crate::http::json::instant")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::http::json::instant")]
    pub updated_at: DateTime<Utc>,
}

pub struct PatientRow {
    id: Uuid,
    first_name: String,
    last_name: String,
    date_of_birth: NaiveDate,
    sex: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    address: Option<SqlJson<Address>>,
    preferred_provider_id: Option<Uuid>,
    medical_alerts: SqlJson<Vec<MedicalAlert>>,
    emergency_contact: Option<SqlJson<Contact>>,
    guardian: Option<SqlJson<Contact>>,
    responsible_party_id: Option<Uuid>,
    restricted: bool,
    care_team: Vec<Uuid>,
    archived_at: Option<DateTime<Utc>>,
    version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A [`PatientRow`]'s columns, for the patient list, whose statement is composed at run
/// time; the macros' statements spell them out.
const PATIENT_COLUMNS: &str = "id, first_name, last_name, date_of_birth, sex, email, phone, \
    address, preferred_provider_id, medical_alerts, emergency_contact, guardian, \
    responsible_party_id, restricted, care_team, archived_at, version, created_at, updated_at";

/// A page's rows are read by position, in [`PATIENT_COLUMNS`]' order, and in release builds
/// without checking each value's type against its column's again, as the macros' rows are
/// read: the columns are those of the `select_patient!` statement, whose types sqlx checks
/// at build time, and debug builds (the tests) check them at run time too. Looking each of
/// 19 columns up by name and checking its type, 50 rows a page, was about a tenth of the
/// handler's CPU for a page.
impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for PatientRow {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        fn column<'r, T>(row: &'r sqlx::postgres::PgRow, index: usize) -> Result<T, sqlx::Error>
        where
            T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
        {
            use sqlx::Row;
            if cfg!(debug_assertions) {
                row.try_get(index)
            } else {
                row.try_get_unchecked(index)
            }
        }
        Ok(PatientRow {
            id: column(row, 0)?,
            first_name: column(row, 1)?,
            last_name: column(row, 2)?,
            date_of_birth: column(row, 3)?,
            sex: column(row, 4)?,
            email: column(row, 5)?,
            phone: column(row, 6)?,
            address: column(row, 7)?,
            preferred_provider_id: column(row, 8)?,
            medical_alerts: column(row, 9)?,
            emergency_contact: column(row, 10)?,
            guardian: column(row, 11)?,
            responsible_party_id: column(row, 12)?,
            restricted: column(row, 13)?,
            care_team: column(row, 14)?,
            archived_at: column(row, 15)?,
            version: column(row, 16)?,
            created_at: column(row, 17)?,
            updated_at: column(row, 18)?,
        })
    }
}

impl From<PatientRow> for Patient {
    fn from(r: PatientRow) -> Patient {
        Patient {
            id: r.id,
            first_name: r.first_name,
            last_name: r.last_name,
            date_of_birth: r.date_of_birth,
            sex: r.sex.as_deref().and_then(Sex::parse),
            email: r.email,
            phone: r.phone,
            address: r.address.map(|a| a.0),
            preferred_provider_id: r.preferred_provider_id,
            medical_alerts: Some(r.medical_alerts.0),
            emergency_contact: r.emergency_contact.map(|c| c.0),
            guardian: r.guardian.map(|c| c.0),
            responsible_party_id: r.responsible_party_id,
            restricted: r.restricted,
            care_team: r.care_team,
            archived: r.archived_at.is_some(),
            archived_at: r.archived_at,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

impl Patient {
    /// Leaves out what the role may not see: medical alerts are for clinical roles,
    /// the front desk and managers, not for billing.
    pub fn for_role(mut self, role: crate::auth::Role) -> Patient {
        use crate::auth::Permission;
        if !role.can(Permission::MedicalAlertsWrite) && !role.can(Permission::ClinicalRead) {
            self.medical_alerts = None;
        }
        self
    }
}

/// The one SELECT of a patient, with `$lock` either `""` or `" FOR UPDATE"`: the
/// statement stays a literal that sqlx checks at build time.
macro_rules! select_patient {
    ($tx:expr, $id:expr, $lock:literal) => {
        sqlx::query_as!(
            PatientRow,
            r#"SELECT id, first_name, last_name, date_of_birth, sex, email, phone,
                address AS "address: SqlJson<Address>", preferred_provider_id,
                medical_alerts AS "medical_alerts: SqlJson<Vec<MedicalAlert>>",
                emergency_contact AS "emergency_contact: SqlJson<Contact>",
                guardian AS "guardian: SqlJson<Contact>",
                responsible_party_id, restricted, care_team, archived_at, version,
                created_at, updated_at
               FROM patients WHERE id = $1 AND archived_at IS NULL"#
                + $lock,
            $id
        )
        .fetch_optional(&mut **$tx)
        .await?
    };
}

/// One patient of the transaction's clinic that is not archived; an archived patient, like
/// another clinic's, is 404. `lock` takes the row for update.
pub async fn load(tx: &mut Tx, id: Uuid, lock: bool) -> AppResult<Patient> {
    let row = if lock {
        select_patient!(tx, id, " FOR UPDATE")
    } else {
        select_patient!(tx, id, "")
    };
    row.map(Patient::from)
        .ok_or_else(|| AppError::not_found("patient"))
}

/// Opens a patient's record for `p`: authorizes the caller (a denial is audited as
/// `event`), begins the caller's transaction and confirms the patient is there and, when
/// `p` reaches the clinical record, open to the caller (404 otherwise, see [`begin_on`]).
pub async fn open_record(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    p: Permission,
    event: impl FnOnce() -> Event,
) -> AppResult<Tx> {
    caller.authorize(state, p, event).await?;
    begin_on(state, caller, id, p).await
}

/// The caller's transaction, once the patient is confirmed in their clinic (404) and,
/// when `p` reaches the clinical record ([`opens_clinical_record`]), not restricted away
/// from the caller: a restricted patient's record is 404 outside the care team and
/// break-glass grants, like a patient that is not there, and the attempt is audited as
/// `patient.record_denied`.
pub async fn begin_on(state: &AppState, caller: &Caller, id: Uuid, p: Permission) -> AppResult<Tx> {
    let mut tx = caller.begin(state).await?;
    if !opens_clinical_record(caller, p) {
        ensure_exists(&mut tx, id).await?;
        return Ok(tx);
    }
    let hidden = sqlx::query_scalar!(
        r#"SELECT id = ANY (app_hidden_patients()) AS "hidden!"
           FROM patients WHERE id = $1 AND archived_at IS NULL"#,
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AppError::not_found("patient"))?;
    if hidden {
        return Err(deny_record(state, caller, tx, id, p, "patient").await);
    }
    Ok(tx)
}

/// For a route that reaches a patient's record through another resource (a procedure, a
/// treatment plan): 404 `what` when `p` reaches the clinical record and the patient's is
/// restricted away from the caller, as [`begin_on`] does; else the transaction back.
pub async fn guard_record(
    state: &AppState,
    caller: &Caller,
    mut tx: Tx,
    patient: Uuid,
    p: Permission,
    what: &'static str,
) -> AppResult<Tx> {
    if !opens_clinical_record(caller, p) {
        return Ok(tx);
    }
    let hidden = sqlx::query_scalar!(
        r#"SELECT $1::uuid = ANY (app_hidden_patients()) AS "hidden!""#,
        patient
    )
    .fetch_one(&mut *tx)
    .await?;
    if hidden {
        return Err(deny_record(state, caller, tx, patient, p, what).await);
    }
    Ok(tx)
}

/// Whether exercising `p` on a patient reads or changes their clinical record, which a
/// restricted patient keeps to their care team. Notes, chart, perio and documents always
/// do. Procedures and treatment plans do for callers who see clinical detail
/// (`clinical.read`); the front desk and billing, who see them without clinical notes
/// for consent and invoices, keep them. Demographics, scheduling and the ledger never do.
pub fn opens_clinical_record(caller: &Caller, p: Permission) -> bool {
    use Permission::*;
    match p {
        ClinicalRead | ClinicalWrite | NotesWrite | NotesSign | DocumentsRead | DocumentsWrite
        | DocumentsForms => true,
        TreatmentRead | TreatmentWrite | TreatmentConsent => caller.can(ClinicalRead),
        _ => false,
    }
}

/// The 404 for a restricted record, after auditing the attempt in a transaction of its
/// own (the work's is rolled back first).
async fn deny_record(
    state: &AppState,
    caller: &Caller,
    tx: Tx,
    patient: Uuid,
    p: Permission,
    what: &'static str,
) -> AppError {
    drop(tx);
    crate::audit::record_failure(
        &state.db,
        &caller.audit(),
        Event::new("patient.record_denied", "patient")
            .resource(patient)
            .patient(patient)
            .details(serde_json::json!({ "permission": p.as_str(), "restricted": true })),
    )
    .await;
    AppError::not_found(what)
}

/// 404 unless the patient exists in the transaction's clinic and is not archived.
pub async fn ensure_exists(tx: &mut Tx, id: Uuid) -> AppResult<()> {
    sqlx::query_scalar!(
        "SELECT 1 FROM patients WHERE id = $1 AND archived_at IS NULL",
        id
    )
    .fetch_optional(&mut **tx)
    .await?
    .map(|_| ())
    .ok_or_else(|| AppError::not_found("patient"))
}

pub fn validate_dob(dob: NaiveDate, errors: &mut Errors) {
    let today = Utc::now().date_naive();
    if dob > today {
        errors.add("date_of_birth", "must not be in the future");
    } else if dob < NaiveDate::from_ymd_opt(1880, 1, 1).unwrap_or(NaiveDate::MIN) {
        errors.add("date_of_birth", "must be after 1880-01-01");
    }
}

pub const MAX_ALERTS: usize = 100;

pub fn validate_alerts(alerts: &[MedicalAlert], errors: &mut Errors) {
    if alerts.len() > MAX_ALERTS {
        errors.add("medical_alerts", "at most 100 alerts");
    }
    for (i, a) in alerts.iter().enumerate() {
        errors.text(
            &format!("medical_alerts[{i}].description"),
            &a.description,
            500,
        );
    }
}

pub fn validate_contact(c: &Contact, field: &str, errors: &mut Errors) {
    c.validate(field, errors)
}

/// The provider must be an active bookable user of this clinic.
pub async fn check_provider(tx: &mut Tx, id: Uuid, field: &str) -> AppResult<()> {
    crate::scheduling::providers::ensure_active(tx, id, field).await
}

/// The responsible party must be another patient of this clinic.
pub async fn check_patient_ref(tx: &mut Tx, id: Uuid, field: &str) -> AppResult<()> {
    sqlx::query_scalar!("SELECT 1 FROM patients WHERE id = $1", id)
        .fetch_optional(&mut **tx)
        .await?
        .map(|_| ())
        .ok_or_else(|| AppError::validation(field, "does not exist in your clinic"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn caller(role: Role, provider: bool) -> Caller {
        Caller {
            user_id: Uuid::nil(),
            clinic_id: Uuid::nil(),
            role,
            auth_version: 1,
            session_id: None,
            provider,
            ip: None,
            request_id: None,
        }
    }

    #[test]
    fn notes_chart_perio_and_documents_are_the_clinical_record_for_every_role() {
        for role in Role::ALL {
            for p in [
                Permission::ClinicalRead,
                Permission::NotesWrite,
                Permission::DocumentsRead,
                Permission::DocumentsForms,
            ] {
                assert!(
                    opens_clinical_record(&caller(role, false), p),
                    "{role:?} {p:?}"
                );
            }
        }
    }

    #[test]
    fn procedures_and_plans_are_clinical_only_for_those_who_see_clinical_detail() {
        let read = Permission::TreatmentRead;
        assert!(opens_clinical_record(&caller(Role::Dentist, false), read));
        assert!(opens_clinical_record(&caller(Role::Owner, false), read));
        assert!(!opens_clinical_record(&caller(Role::Billing, false), read));
        assert!(!opens_clinical_record(
            &caller(Role::Receptionist, false),
            Permission::TreatmentConsent
        ));
    }

    #[test]
    fn demographics_scheduling_and_the_ledger_never_are() {
        for p in [
            Permission::PatientsRead,
            Permission::AppointmentsWrite,
            Permission::LedgerRead,
        ] {
            assert!(!opens_clinical_record(&caller(Role::Dentist, false), p));
        }
    }
}

//! Charted procedures: `/patients/{id}/procedures` and `/procedures/{id}`. A procedure is
//! planned (its fee copied from the catalogue), completed (locked, and its fee charged to
//! the patient's ledger in the same transaction) and, when that was a mistake, reversed
//! by a new ledger entry. Nothing is deleted.
//!
//! Here: charting, reading and editing; [`rules`]: what a procedure must satisfy;
//! [`completion`]: completing and reversing.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{ProcedureStatus, MAX_FEE_CENTS};
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::chart::{Numbering, Tooth};
use crate::db::Tx;
use crate::error::{AppError, AppResult, OnConstraint, Problem};
use crate::http::etag::{self, IfMatch};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use crate::http::idempotency::{self, Created, HashedJson, IdempotencyKey};
use crate::http::pagination::{self, Limit, Page};
use crate::patients::routes::PatientPath;
use crate::state::AppState;
use crate::validate::Errors;
use crate::{ledger, patients};

mod completion;
mod rules;
use completion::{completing_provider, completion_date};
use rules::{check_appointment, check_fee, check_shape, code_rules};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_procedures, create_procedure))
        .routes(routes!(get_procedure, update_procedure))
        .merge(completion::router())
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Procedure {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub procedure_code_id: Uuid,
    /// The catalogue's code and description, for display.
    pub code: String,
    pub description: String,
    /// In the requested numbering; null for a procedure of the whole mouth.
    pub tooth: Option<String>,
    pub tooth_fdi: Option<String>,
    pub surfaces: Vec<String>,
    pub provider_id: Option<Uuid>,
    pub status: ProcedureStatus,
    /// Copied when charted: a later change of the catalogue's fee does not alter it.
    pub fee_cents: i64,
    pub appointment_id: Option<Uuid>,
    pub completed_on: Option<NaiveDate>,
    /// Clinical text: left out (null) for roles that do not read the clinical record.
    pub note: Option<String>,
    /// A completed procedure found to be a mistake: its charge is reversed.
    pub reversed: bool,
    pub reversed_at: Option<DateTime<Utc>>,
    pub reversed_by: Option<Uuid>,
    pub reversal_reason: Option<String>,
    pub version: i32,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub struct ProcedureRow {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub procedure_code_id: Uuid,
    pub code: String,
    pub description: String,
    pub tooth: Option<i16>,
    pub surfaces: Vec<String>,
    pub provider_id: Option<Uuid>,
    pub status: String,
    pub fee_cents: i64,
    pub appointment_id: Option<Uuid>,
    pub completed_on: Option<NaiveDate>,
    pub note: Option<String>,
    pub reversed_at: Option<DateTime<Utc>>,
    pub reversed_by: Option<Uuid>,
    pub reversal_reason: Option<String>,
    pub version: i32,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ProcedureRow {
    pub fn render(self, numbering: Numbering, caller: &Caller) -> Procedure {
        let tooth = self
            .tooth
            .and_then(|t| u8::try_from(t).ok())
            .and_then(Tooth::from_fdi_number);
        Procedure {
            id: self.id,
            patient_id: self.patient_id,
            procedure_code_id: self.procedure_code_id,
            code: self.code,
            description: self.description,
            tooth: tooth.map(|t| t.render(numbering)),
            tooth_fdi: tooth.map(|t| t.fdi().to_string()),
            surfaces: self.surfaces,
            provider_id: self.provider_id,
            status: ProcedureStatus::parse(&self.status).unwrap_or(ProcedureStatus::Planned),
            fee_cents: self.fee_cents,
            appointment_id: self.appointment_id,
            completed_on: self.completed_on,
            note: self.note.filter(|_| caller.can(Permission::ClinicalRead)),
            reversed: self.reversed_at.is_some(),
            reversed_at: self.reversed_at,
            reversed_by: self.reversed_by,
            reversal_reason: self.reversal_reason,
            version: self.version,
            created_by: self.created_by,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// One procedure with its code, optionally locked; shared by every query here.
macro_rules! select_procedure {
    ($tx:expr, $where:literal, $($arg:expr),*) => {
        sqlx::query_as!(
            ProcedureRow,
            "SELECT p.id, p.patient_id, p.procedure_code_id, c.code, c.description, p.tooth, \
             p.surfaces, p.provider_id, p.status, p.fee_cents, p.appointment_id, p.completed_on, \
             p.note, p.reversed_at, p.reversed_by, p.reversal_reason, p.version, p.created_by, \
             p.created_at, p.updated_at \
             FROM procedures p JOIN procedure_codes c ON c.clinic_id = p.clinic_id AND c.id = p.procedure_code_id " + $where,
            $($arg),*
        )
    };
}

pub async fn load(tx: &mut Tx, id: Uuid) -> AppResult<ProcedureRow> {
    select_procedure!(tx, "WHERE p.id = $1", id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| AppError::not_found("procedure"))
}

/// [`load`], and 404 when the procedure's patient is restricted away from the caller (see
/// [`patients::guard_record`]).
async fn load_open(
    state: &AppState,
    caller: &Caller,
    mut tx: Tx,
    id: Uuid,
    p: Permission,
) -> AppResult<(Tx, ProcedureRow)> {
    let row = load(&mut tx, id).await?;
    let tx = patients::guard_record(state, caller, tx, row.patient_id, p, "procedure").await?;
    Ok((tx, row))
}

async fn load_for_update(tx: &mut Tx, id: Uuid) -> AppResult<ProcedureRow> {
    select_procedure!(tx, "WHERE p.id = $1 FOR UPDATE OF p", id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| AppError::not_found("procedure"))
}

/// A patient's procedures for the chart: current ones (not reversed), oldest first.
pub async fn for_chart(tx: &mut Tx, patient: Uuid) -> AppResult<Vec<ProcedureRow>> {
    Ok(select_procedure!(
        tx,
        "WHERE p.patient_id = $1 AND p.reversed_at IS NULL ORDER BY p.created_at, p.id",
        patient
    )
    .fetch_all(&mut **tx)
    .await?)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProcedureParams {
    /// Only procedures of this status.
    status: Option<ProcedureStatus>,
    /// How teeth are written in the answer (default `fdi`).
    #[serde(default)]
    numbering: Numbering,
    /// Page size (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200, default = 50)]
    limit: Option<Limit>,
    /// The `next_cursor` of the previous page.
    #[param(min_length = 1, pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

/// A patient's charted procedures, oldest first (reversed ones included).
#[utoipa::path(get, path = "/patients/{id}/procedures", tag = "treatment", security(("bearer" = [])),
    params(PatientPath, ProcedureParams),
    responses(
        (status = 200, description = "A page of procedures", body = Page<Procedure>),
        (status = 400, description = "Malformed parameters or cursor", body = Problem),
        (status = 403, description = "Role lacks treatment.read", body = Problem),
        (status = 404, description = "No such patient in your clinic, or an archived one", body = Problem)))]
pub async fn list_procedures(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(PatientPath { id }): ApiPath<PatientPath>,
    ApiQuery(p): ApiQuery<ProcedureParams>,
) -> AppResult<Json<Page<Procedure>>> {
    let event = || Event::new("procedure.list", "procedure").patient(id);
    let limit = pagination::limit(p.limit)?;
    let after: Option<(DateTime<Utc>, Uuid)> = state.cursors.decode_opt(p.cursor.as_deref())?;
    let (after_at, after_id) = after.unzip();
    let mut tx =
        patients::open_record(&state, &caller, id, Permission::TreatmentRead, event).await?;
    let rows = select_procedure!(
        tx,
        "WHERE p.patient_id = $1 AND ($2::text IS NULL OR p.status = $2) \
         AND ($3::timestamptz IS NULL OR (p.created_at, p.id) > ($3, $4)) \
         ORDER BY p.created_at, p.id LIMIT $5",
        id,
        p.status.map(ProcedureStatus::as_str),
        after_at,
        after_id,
        pagination::overfetch(limit)
    )
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    audit::record(&mut tx, &caller.audit(), event().ids(ids)).await?;
    tx.commit().await?;
    let items: Vec<Procedure> = rows
        .into_iter()
        .map(|r| r.render(p.numbering, &caller))
        .collect();
    Ok(Json(
        state
            .cursors
            .page(items, limit, |r: &Procedure| (r.created_at, r.id)),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"procedure_code_id": "0193f5a0-0000-7000-8000-000000000001",
    "tooth": "36", "surfaces": ["M", "O"], "status": "planned"}))]
pub struct NewProcedure {
    /// A code of your clinic's catalogue (422 when it is not, or is inactive).
    procedure_code_id: Uuid,
    /// Required or refused as the code says; FDI by default, Universal with `numbering`.
    #[schema(pattern = "^[0-9A-Za-z]{1,2}$")]
    tooth: Option<String>,
    #[serde(default)]
    numbering: Numbering,
    /// Required or refused as the code says; valid for the tooth as on the chart.
    #[serde(default)]
    #[schema(schema_with = crate::validate::schema::surfaces)]
    surfaces: Vec<String>,
    /// An active provider of your clinic (422 otherwise). Needed to complete; defaults to
    /// the caller when the caller is a provider.
    provider_id: Option<Uuid>,
    /// Default `planned`. `completed` charts and completes in one step (and charges).
    status: Option<ProcedureStatus>,
    /// Default: the code's fee now.
    #[schema(minimum = 0, maximum = 100_000_000_000_i64)]
    fee_cents: Option<i64>,
    /// One of this patient's appointments.
    appointment_id: Option<Uuid>,
    /// Only with `status: completed`; default today in the clinic's time zone, never later.
    completed_on: Option<NaiveDate>,
    #[schema(schema_with = crate::validate::schema::text_2000_or_null)]
    note: Option<String>,
}

/// Charts a procedure (clinical roles, and an owner or admin who is a provider).
#[utoipa::path(post, path = "/patients/{id}/procedures", tag = "treatment", security(("bearer" = [])),
    params(PatientPath, IdempotencyKey),
    request_body = NewProcedure,
    responses(
        (status = 201, description = "Charted", body = Procedure, headers(("Location" = String))),
        (status = 403, description = "Role lacks treatment.write", body = Problem),
        (status = 404, description = "No such patient in your clinic, or an archived one", body = Problem),
        (status = 422, description = "Unknown code or provider, or tooth and surfaces against the code's rules", body = Problem)))]
pub async fn create_procedure(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(PatientPath { id }): ApiPath<PatientPath>,
    body: HashedJson<NewProcedure>,
) -> AppResult<Response> {
    let (hash, body) = (body.hash, body.value);
    let event = || Event::new("procedure.create", "procedure").patient(id);
    caller
        .authorize(&state, Permission::TreatmentWrite, event)
        .await?;
    let status = body.status.unwrap_or(ProcedureStatus::Planned);
    let mut errors = Errors::default();
    let note = body.note.as_deref().map(|n| errors.text("note", n, 2000));
    if let Some(fee) = body.fee_cents {
        check_fee(fee, &mut errors);
    }
    if body.completed_on.is_some() && status != ProcedureStatus::Completed {
        errors.add(
            "completed_on",
            "only a completed procedure has a date of completion",
        );
    }
    errors.finish()?;
    idempotency::run(&state, &caller, &headers, &hash, || async {
        let mut tx = patients::begin_on(&state, &caller, id, Permission::TreatmentWrite).await?;
        let rules = code_rules(&mut tx, body.procedure_code_id)
            .await?
            .ok_or_else(|| {
                AppError::validation("procedure_code_id", "does not exist in your clinic")
            })?;
        if !rules.active {
            return Err(AppError::validation(
                "procedure_code_id",
                "is inactive: it cannot be charted anew",
            ));
        }
        let mut errors = Errors::default();
        let (tooth, surfaces) = check_shape(
            &rules,
            body.tooth.as_deref(),
            body.numbering,
            &body.surfaces,
            &mut errors,
        );
        errors.finish()?;
        let mut provider = body.provider_id;
        if let Some(p) = provider {
            crate::scheduling::providers::ensure_active(&mut tx, p, "provider_id").await?;
        } else if crate::scheduling::providers::is_active(&mut tx, caller.user_id).await? {
            // As documented: the caller by default, when the caller treats patients.
            provider = Some(caller.user_id);
        }
        if let Some(a) = body.appointment_id {
            check_appointment(&mut tx, a, id).await?;
        }
        let mut completed_on = None;
        if status == ProcedureStatus::Completed {
            provider = Some(completing_provider(&mut tx, &caller, provider).await?);
            completed_on = Some(completion_date(&state, &mut tx, &caller, body.completed_on).await?);
        }
        let fee = body.fee_cents.unwrap_or(rules.fee_cents);
        let proc_id = Uuid::now_v7();
        sqlx::query!(
            "INSERT INTO procedures (clinic_id, id, patient_id, procedure_code_id, tooth, surfaces, \
             provider_id, status, fee_cents, appointment_id, completed_on, note, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            caller.clinic_id,
            proc_id,
            id,
            body.procedure_code_id,
            tooth,
            &surfaces,
            provider,
            status.as_str(),
            fee,
            body.appointment_id,
            completed_on,
            note.as_deref(),
            caller.user_id,
        )
        .execute(&mut *tx)
        .await?;
        let mut action = event().resource(proc_id);
        if status == ProcedureStatus::Completed {
            let charge =
                ledger::post_charge(&mut tx, &caller, id, proc_id, fee, "procedure completed")
                    .await?;
            action = action.details(serde_json::json!({ "charge_id": charge }));
        }
        audit::record(&mut tx, &caller.audit(), action).await?;
        let row = load(&mut tx, proc_id).await?;
        Ok((
            tx,
            Created {
                location: format!("/api/v2/procedures/{proc_id}"),
                version: Some(row.version),
                value: row.render(body.numbering, &caller),
            },
        ))
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ProcedurePath {
    /// The procedure's id.
    id: Uuid,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NumberingParams {
    /// How the tooth is written in the answer (default `fdi`).
    #[serde(default)]
    numbering: Numbering,
}

/// One procedure.
#[utoipa::path(get, path = "/procedures/{id}", tag = "treatment", security(("bearer" = [])),
    params(ProcedurePath, NumberingParams),
    responses(
        (status = 200, description = "The procedure", body = Procedure),
        (status = 403, description = "Role lacks treatment.read", body = Problem),
        (status = 404, description = "No such procedure in your clinic", body = Problem)))]
pub async fn get_procedure(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ProcedurePath { id }): ApiPath<ProcedurePath>,
    ApiQuery(p): ApiQuery<NumberingParams>,
) -> AppResult<Response> {
    let event = || Event::new("procedure.read", "procedure").resource(id);
    caller
        .authorize(&state, Permission::TreatmentRead, event)
        .await?;
    let tx = caller.begin(&state).await?;
    let (tx, row) = load_open(&state, &caller, tx, id, Permission::TreatmentRead).await?;
    respond(
        tx,
        &caller,
        event().patient(row.patient_id),
        row,
        p.numbering,
    )
    .await
}

/// How a read or change of one procedure ends: its audit event, the commit, the
/// procedure with its ETag.
async fn respond(
    mut tx: Tx,
    caller: &Caller,
    event: Event,
    row: ProcedureRow,
    numbering: Numbering,
) -> AppResult<Response> {
    audit::record(&mut tx, &caller.audit(), event).await?;
    tx.commit().await?;
    let p = row.render(numbering, caller);
    Ok(etag::tagged(p.version, &p))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcedurePatch {
    /// Another code of the catalogue; tooth and surfaces must then fit it. The fee stays.
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(value_type = Option<Uuid>)]
    procedure_code_id: Option<Option<Uuid>>,
    /// null clears it (for a code of the whole mouth).
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(value_type = Option<String>, pattern = "^[0-9A-Za-z]{1,2}$", nullable = true)]
    tooth: Option<Option<String>>,
    /// How `tooth` is written (and how the answer renders it).
    #[serde(default)]
    numbering: Numbering,
    /// null clears them.
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(schema_with = crate::validate::schema::surfaces)]
    surfaces: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(value_type = Option<Uuid>, nullable = true)]
    provider_id: Option<Option<Uuid>>,
    /// `planned`, `existing`, `referred` or `condition`; completing is
    /// `POST /procedures/{id}/complete`.
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(value_type = Option<ProcedureStatus>)]
    status: Option<Option<ProcedureStatus>>,
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 100_000_000_000_i64)]
    fee_cents: Option<Option<i64>>,
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(value_type = Option<Uuid>, nullable = true)]
    appointment_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(schema_with = crate::validate::schema::text_2000_or_null)]
    note: Option<Option<String>>,
}

/// Changes a procedure that is not completed (409 once it is).
#[utoipa::path(patch, path = "/procedures/{id}", tag = "treatment", security(("bearer" = [])),
    params(ProcedurePath, IfMatch),
    request_body = ProcedurePatch,
    responses(
        (status = 200, description = "Updated", body = Procedure),
        (status = 403, description = "Role lacks treatment.write", body = Problem),
        (status = 404, description = "No such procedure in your clinic", body = Problem),
        (status = 409, description = "The procedure is completed", body = Problem),
        (status = 412, description = "If-Match does not match", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem)))]
pub async fn update_procedure(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(ProcedurePath { id }): ApiPath<ProcedurePath>,
    ApiJson(patch): ApiJson<ProcedurePatch>,
) -> AppResult<Response> {
    let event = || Event::new("procedure.update", "procedure").resource(id);
    caller
        .authorize(&state, Permission::TreatmentWrite, event)
        .await?;
    let mut errors = Errors::default();
    errors.uncleared(&[
        (
            "procedure_code_id",
            matches!(patch.procedure_code_id, Some(None)),
        ),
        ("status", matches!(patch.status, Some(None))),
        ("fee_cents", matches!(patch.fee_cents, Some(None))),
    ]);
    if let Some(Some(ProcedureStatus::Completed)) = patch.status {
        errors.add(
            "status",
            "complete a procedure with POST /procedures/{id}/complete",
        );
    }
    if let Some(Some(fee)) = patch.fee_cents {
        check_fee(fee, &mut errors);
    }
    let note = match &patch.note {
        Some(Some(n)) => Some(Some(errors.text("note", n, 2000))),
        other => other.clone(),
    };
    errors.finish()?;
    let mut tx = caller.begin(&state).await?;
    let current = load_for_update(&mut tx, id).await?;
    let mut tx = patients::guard_record(
        &state,
        &caller,
        tx,
        current.patient_id,
        Permission::TreatmentWrite,
        "procedure",
    )
    .await?;
    let event = || event().patient(current.patient_id);
    if current.status == ProcedureStatus::Completed.as_str() {
        return Err(AppError::conflict(
            "a completed procedure is locked; reverse it and chart it anew",
        ));
    }
    etag::check(&headers, current.version)?;
    let code_id = patch
        .procedure_code_id
        .flatten()
        .unwrap_or(current.procedure_code_id);
    let rules = code_rules(&mut tx, code_id).await?.ok_or_else(|| {
        AppError::validation("procedure_code_id", "does not exist in your clinic")
    })?;
    if code_id != current.procedure_code_id && !rules.active {
        return Err(AppError::validation(
            "procedure_code_id",
            "is inactive: it cannot be charted anew",
        ));
    }
    // Tooth and surfaces are checked as they will be, in the numbering of the request.
    let current_tooth = current
        .tooth
        .and_then(|t| u8::try_from(t).ok())
        .and_then(Tooth::from_fdi_number)
        .map(|t| t.render(patch.numbering));
    let tooth = match &patch.tooth {
        Some(t) => t.clone(),
        None => current_tooth,
    };
    let surfaces = match &patch.surfaces {
        Some(s) => s.clone().unwrap_or_default(),
        None => current.surfaces.clone(),
    };
    let mut errors = Errors::default();
    let (tooth, surfaces) = check_shape(
        &rules,
        tooth.as_deref(),
        patch.numbering,
        &surfaces,
        &mut errors,
    );
    errors.finish()?;
    let provider = match patch.provider_id {
        Some(Some(p)) => {
            crate::scheduling::providers::ensure_active(&mut tx, p, "provider_id").await?;
            Some(p)
        }
        Some(None) => None,
        None => current.provider_id,
    };
    let appointment = match patch.appointment_id {
        Some(Some(a)) => {
            check_appointment(&mut tx, a, current.patient_id).await?;
            Some(a)
        }
        Some(None) => None,
        None => current.appointment_id,
    };
    let status = patch
        .status
        .flatten()
        .map_or(current.status.clone(), |s| s.as_str().to_owned());
    sqlx::query!(
        "UPDATE procedures SET procedure_code_id = $2, tooth = $3, surfaces = $4, provider_id = $5, \
         status = $6, fee_cents = $7, appointment_id = $8, note = $9, version = version + 1, \
         updated_at = now() WHERE id = $1",
        id,
        code_id,
        tooth,
        &surfaces,
        provider,
        status,
        patch.fee_cents.flatten().unwrap_or(current.fee_cents),
        appointment,
        note.unwrap_or(current.note.clone()),
    )
    .execute(&mut *tx)
    .await
    .on_constraint("procedures_completed_locked", || {
        AppError::conflict("a completed procedure is locked; reverse it and chart it anew")
    })?;
    let row = load(&mut tx, id).await?;
    respond(tx, &caller, event(), row, patch.numbering).await
}

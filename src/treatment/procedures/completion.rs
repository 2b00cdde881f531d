//! Completing a charted procedure (locked, its fee charged to the patient's ledger in the
//! same transaction) and reversing a completion (a new ledger entry; nothing deleted).

use axum::extract::State;
use axum::response::Response;
use chrono::NaiveDate;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{load, load_for_update, respond, Procedure, ProcedurePath};
use crate::audit::Event;
use crate::auth::{Caller, Permission};
use crate::chart::Numbering;
use crate::db::Tx;
use crate::error::{AppError, AppResult, OnConstraint, Problem};
use crate::http::extract::{ApiJson, ApiPath};
use crate::state::AppState;
use crate::treatment::ProcedureStatus;
use crate::validate::Errors;
use crate::{ledger, patients};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(complete_procedure))
        .routes(routes!(reverse_procedure))
}

/// The provider a completion records: the one named, else the procedure's, else the
/// caller when the caller treats patients; 422 when there is none.
pub(super) async fn completing_provider(
    tx: &mut Tx,
    caller: &Caller,
    named: Option<Uuid>,
) -> AppResult<Uuid> {
    match named {
        Some(p) => {
            crate::scheduling::providers::ensure_active(tx, p, "provider_id").await?;
            Ok(p)
        }
        None if crate::scheduling::providers::is_active(tx, caller.user_id).await? => {
            Ok(caller.user_id)
        }
        None => Err(AppError::validation(
            "provider_id",
            "name the provider who performed the procedure",
        )),
    }
}

/// The date a completion records: the one given (not after today in the clinic's time
/// zone), else today there.
pub(super) async fn completion_date(
    state: &AppState,
    tx: &mut Tx,
    caller: &Caller,
    given: Option<NaiveDate>,
) -> AppResult<NaiveDate> {
    let tz = crate::clinic::timezone(state, tx, caller.clinic_id).await?;
    let today = crate::clinic::today(tz);
    match given {
        Some(d) if d > today => Err(AppError::validation(
            "completed_on",
            "must not be after today in the clinic's time zone",
        )),
        Some(d) if d < NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or(NaiveDate::MIN) => Err(
            AppError::validation("completed_on", "must not be before 1900"),
        ),
        Some(d) => Ok(d),
        None => Ok(today),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Completion {
    /// Who performed it: default the procedure's provider, else the caller when the
    /// caller is a provider (422 when there is none).
    provider_id: Option<Uuid>,
    /// Default today in the clinic's time zone; never later.
    completed_on: Option<NaiveDate>,
}

/// Completes a planned procedure: it is locked and its fee charged to the patient's
/// ledger in the same transaction. A second completion is a 409, however many race.
#[utoipa::path(post, path = "/procedures/{id}/complete", tag = "treatment", security(("bearer" = [])),
    params(ProcedurePath),
    request_body = Completion,
    responses(
        (status = 200, description = "Completed and charged", body = Procedure),
        (status = 403, description = "Role lacks treatment.write", body = Problem),
        (status = 404, description = "No such procedure in your clinic", body = Problem),
        (status = 409, description = "Completed already, or not planned", body = Problem),
        (status = 422, description = "No provider, or a date after today", body = Problem)))]
pub async fn complete_procedure(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ProcedurePath { id }): ApiPath<ProcedurePath>,
    ApiJson(body): ApiJson<Completion>,
) -> AppResult<Response> {
    let event = || Event::new("procedure.complete", "procedure").resource(id);
    caller
        .authorize(&state, Permission::TreatmentWrite, event)
        .await?;
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
    match ProcedureStatus::parse(&current.status) {
        Some(ProcedureStatus::Planned) => {}
        Some(ProcedureStatus::Completed) => {
            return Err(AppError::conflict("the procedure is completed already"))
        }
        _ => {
            return Err(AppError::conflict(
                "only a planned procedure is completed; chart what was done as a new procedure",
            ))
        }
    }
    let provider =
        completing_provider(&mut tx, &caller, body.provider_id.or(current.provider_id)).await?;
    let on = completion_date(&state, &mut tx, &caller, body.completed_on).await?;
    sqlx::query!(
        "UPDATE procedures SET status = 'completed', provider_id = $2, completed_on = $3, \
         version = version + 1, updated_at = now() WHERE id = $1",
        id,
        provider,
        on,
    )
    .execute(&mut *tx)
    .await?;
    let charge = ledger::post_charge(
        &mut tx,
        &caller,
        current.patient_id,
        id,
        current.fee_cents,
        "procedure completed",
    )
    .await?;
    let row = load(&mut tx, id).await?;
    let event = event()
        .patient(current.patient_id)
        .details(serde_json::json!({ "charge_id": charge, "fee_cents": current.fee_cents }));
    respond(tx, &caller, event, row, Numbering::Fdi).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "Charted on the wrong patient"}))]
pub struct Reversal {
    /// Why; kept with the procedure and on the reversing ledger entry.
    #[schema(schema_with = crate::validate::schema::text_500)]
    reason: String,
}

/// Reverses a completed procedure: it is marked reversed and its charge reversed by a new
/// ledger entry. Nothing is deleted.
#[utoipa::path(post, path = "/procedures/{id}/reverse", tag = "treatment", security(("bearer" = [])),
    params(ProcedurePath),
    request_body = Reversal,
    responses(
        (status = 200, description = "Reversed", body = Procedure),
        (status = 403, description = "Role lacks treatment.write", body = Problem),
        (status = 404, description = "No such procedure in your clinic", body = Problem),
        (status = 409, description = "Not completed, reversed already, or on a live invoice", body = Problem),
        (status = 422, description = "Missing reason", body = Problem)))]
pub async fn reverse_procedure(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(ProcedurePath { id }): ApiPath<ProcedurePath>,
    ApiJson(body): ApiJson<Reversal>,
) -> AppResult<Response> {
    let event = || Event::new("procedure.reverse", "procedure").resource(id);
    caller
        .authorize(&state, Permission::TreatmentWrite, event)
        .await?;
    let mut errors = Errors::default();
    let reason = errors.text("reason", &body.reason, 500);
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
    if current.status != ProcedureStatus::Completed.as_str() {
        return Err(AppError::conflict(
            "only a completed procedure is reversed; edit a planned one instead",
        ));
    }
    if current.reversed_at.is_some() {
        return Err(AppError::conflict("the procedure is reversed already"));
    }
    // Read after the lock: an invoice issued meanwhile holds the procedure until it commits.
    let invoiced = sqlx::query_scalar!(
        r#"SELECT i.number AS "number!" FROM invoice_lines l
           JOIN invoices i ON i.clinic_id = l.clinic_id AND i.id = l.invoice_id
           WHERE l.procedure_id = $1 AND l.live"#,
        id
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(number) = invoiced {
        return Err(AppError::conflict(format!(
            "the procedure is billed on invoice {number}; void the invoice first"
        )));
    }
    sqlx::query!(
        "UPDATE procedures SET reversed_at = now(), reversed_by = $2, reversal_reason = $3, \
         version = version + 1, updated_at = now() WHERE id = $1",
        id,
        caller.user_id,
        &reason,
    )
    .execute(&mut *tx)
    .await
    .on_constraint("procedures_reversed_once", || {
        AppError::conflict("the procedure is reversed already")
    })?;
    let reversal = ledger::reverse_charge(&mut tx, &caller, id, &reason).await?;
    let row = load(&mut tx, id).await?;
    let event = event()
        .patient(current.patient_id)
        .details(serde_json::json!({ "reversal_id": reversal }));
    respond(tx, &caller, event, row, Numbering::Fdi).await
}

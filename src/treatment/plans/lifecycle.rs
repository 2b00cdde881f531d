//! A plan's life after its draft: presented (version n frozen as shown), accepted in whole
//! or in part with the patient's signature, or declined; revised into version n+1. The
//! frozen versions and the decisions are read back as they were.

use std::collections::HashSet;

use axum::extract::State;
use axum::response::Response;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{load, plan_row, respond, PlanPath, PlanRow, PlanStatus, TreatmentPlan};
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::db::Tx;
use crate::error::{AppError, AppResult, Problem};
use crate::http::etag;
use crate::http::extract::{ApiJson, ApiPath};
use crate::patients;
use crate::state::AppState;
use crate::validate::Errors;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(present_plan))
        .routes(routes!(accept_plan))
        .routes(routes!(decline_plan))
        .routes(routes!(revise_plan))
        .routes(routes!(get_version))
}

/// Whether a plan may move on: checks the status it must be in (409 otherwise) on the row
/// read with `plan_row(.., true)`, whose lock serialises every transition of one plan.
fn transition(row: &PlanRow, from: &[PlanStatus], what: &str) -> AppResult<()> {
    let status = PlanStatus::parse(&row.status);
    if !from.contains(&status) {
        return Err(AppError::conflict(format!(
            "a {} plan cannot be {what}",
            status.as_str().replace('_', " ")
        )));
    }
    Ok(())
}

async fn set_status(tx: &mut Tx, id: Uuid, status: PlanStatus, version: i32) -> AppResult<()> {
    sqlx::query!(
        "UPDATE treatment_plans SET status = $2, version = $3, revision = revision + 1, \
         updated_at = now() WHERE id = $1",
        id,
        status.as_str(),
        version,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Presents a draft: freezes version n (items, fees, total) as shown to the patient.
#[utoipa::path(post, path = "/treatment-plans/{id}/present", tag = "treatment", security(("bearer" = [])),
    params(PlanPath),
    responses(
        (status = 200, description = "Presented", body = TreatmentPlan),
        (status = 403, description = "Role lacks treatment.write", body = Problem),
        (status = 404, description = "No such plan in your clinic", body = Problem),
        (status = 409, description = "Not a draft", body = Problem),
        (status = 422, description = "The plan has no items, or one is no longer planned", body = Problem)))]
pub async fn present_plan(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(PlanPath { id }): ApiPath<PlanPath>,
) -> AppResult<Response> {
    let event = || Event::new("treatment_plan.present", "treatment_plan").resource(id);
    caller
        .authorize(&state, Permission::TreatmentWrite, event)
        .await?;
    let mut tx = caller.begin(&state).await?;
    let row = plan_row(&mut tx, id, true).await?;
    let mut tx = patients::guard_record(
        &state,
        &caller,
        tx,
        row.patient_id,
        Permission::TreatmentWrite,
        "treatment plan",
    )
    .await?;
    transition(&row, &[PlanStatus::Draft], "presented")?;
    let plan = load(&mut tx, id).await?;
    if plan.items.is_empty() {
        return Err(AppError::validation(
            "items",
            "a plan without items cannot be presented",
        ));
    }
    let mut errors = Errors::default();
    for (n, item) in plan.items.iter().enumerate() {
        if item.procedure_status != "planned" {
            errors.add(
                format!("items[{n}].procedure_id"),
                format!(
                    "is {}, no longer planned: edit the plan",
                    item.procedure_status
                ),
            );
        }
    }
    errors.finish()?;
    sqlx::query!(
        "INSERT INTO treatment_plan_versions (clinic_id, plan_id, version, title, presented_by, total_cents) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        caller.clinic_id,
        id,
        row.version,
        &plan.title,
        caller.user_id,
        plan.total_cents,
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO treatment_plan_version_items (clinic_id, plan_id, version, item_id, position, \
         procedure_id, procedure_code, description, tooth, surfaces, phase, note, fee_cents) \
         SELECT i.clinic_id, i.plan_id, $2, i.id, i.position, i.procedure_id, c.code, c.description, \
                p.tooth, p.surfaces, i.phase, i.note, coalesce(i.fee_cents, p.fee_cents) \
         FROM treatment_plan_items i \
         JOIN procedures p ON p.clinic_id = i.clinic_id AND p.id = i.procedure_id \
         JOIN procedure_codes c ON c.clinic_id = p.clinic_id AND c.id = p.procedure_code_id \
         WHERE i.plan_id = $1",
        id,
        row.version,
    )
    .execute(&mut *tx)
    .await?;
    set_status(&mut tx, id, PlanStatus::Presented, row.version).await?;
    let plan = load(&mut tx, id).await?;
    let event = event()
        .patient(row.patient_id)
        .details(serde_json::json!({ "version": row.version, "total_cents": plan.total_cents }));
    respond(tx, &caller, event, plan).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"signed_by": "Jane Patient"}))]
pub struct Acceptance {
    /// Items of the presented version the patient accepts; all of them when absent.
    item_ids: Option<Vec<Uuid>>,
    /// The name of who signed (the patient or their guardian).
    #[schema(schema_with = crate::validate::schema::text_200)]
    signed_by: String,
    /// The signature as a base64 PNG image, at most 256 KiB.
    #[schema(max_length = 349528)]
    signature_png: Option<String>,
}

/// Records the patient's acceptance of the presented version, in whole or in part: who
/// signed, when, and exactly which items and fees. It never changes afterwards.
#[utoipa::path(post, path = "/treatment-plans/{id}/accept", tag = "treatment", security(("bearer" = [])),
    params(PlanPath),
    request_body = Acceptance,
    responses(
        (status = 200, description = "Accepted", body = TreatmentPlan),
        (status = 403, description = "Role lacks treatment.consent", body = Problem),
        (status = 404, description = "No such plan in your clinic", body = Problem),
        (status = 409, description = "Not presented (a concurrent revise or decision won)", body = Problem),
        (status = 422, description = "Items not in the presented version, or a bad signature", body = Problem)))]
pub async fn accept_plan(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(PlanPath { id }): ApiPath<PlanPath>,
    ApiJson(body): ApiJson<Acceptance>,
) -> AppResult<Response> {
    let event = || Event::new("treatment_plan.accept", "treatment_plan").resource(id);
    caller
        .authorize(&state, Permission::TreatmentConsent, event)
        .await?;
    let mut errors = Errors::default();
    let signed_by = errors.text("signed_by", &body.signed_by, 200);
    let signature = match &body.signature_png {
        None => None,
        Some(b64) => match STANDARD.decode(b64) {
            Ok(bytes) if bytes.len() > 262_144 => {
                errors.add("signature_png", "must be at most 256 KiB");
                None
            }
            Ok(bytes) if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") => {
                errors.add("signature_png", "must be a PNG image");
                None
            }
            Ok(bytes) => Some(bytes),
            Err(_) => {
                errors.add("signature_png", "must be base64");
                None
            }
        },
    };
    if body.item_ids.as_ref().is_some_and(Vec::is_empty) {
        errors.add("item_ids", "accept at least one item, or decline the plan");
    }
    errors.finish()?;
    let mut tx = caller.begin(&state).await?;
    let row = plan_row(&mut tx, id, true).await?;
    let mut tx = patients::guard_record(
        &state,
        &caller,
        tx,
        row.patient_id,
        Permission::TreatmentConsent,
        "treatment plan",
    )
    .await?;
    transition(&row, &[PlanStatus::Presented], "accepted")?;
    let frozen = sqlx::query!(
        "SELECT item_id, fee_cents FROM treatment_plan_version_items WHERE plan_id = $1 AND version = $2",
        id,
        row.version
    )
    .fetch_all(&mut *tx)
    .await?;
    let accepted: Vec<Uuid> = match &body.item_ids {
        None => frozen.iter().map(|f| f.item_id).collect(),
        Some(ids) => {
            let mut errors = Errors::default();
            let mut seen = HashSet::new();
            for (n, item) in ids.iter().enumerate() {
                if !frozen.iter().any(|f| f.item_id == *item) {
                    errors.add(
                        format!("item_ids[{n}]"),
                        "is not an item of the presented version",
                    );
                } else if !seen.insert(*item) {
                    errors.add(format!("item_ids[{n}]"), "is listed twice");
                }
            }
            errors.finish()?;
            ids.clone()
        }
    };
    let accepted_cents: i64 = frozen
        .iter()
        .filter(|f| accepted.contains(&f.item_id))
        .map(|f| f.fee_cents)
        .sum();
    let status = if accepted.len() == frozen.len() {
        PlanStatus::Accepted
    } else {
        PlanStatus::PartiallyAccepted
    };
    sqlx::query!(
        "INSERT INTO treatment_plan_decisions (clinic_id, plan_id, version, decision, accepted_item_ids, \
         accepted_cents, signed_by, signature_png, recorded_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        caller.clinic_id,
        id,
        row.version,
        status.as_str(),
        &accepted,
        accepted_cents,
        &signed_by,
        signature,
        caller.user_id,
    )
    .execute(&mut *tx)
    .await?;
    set_status(&mut tx, id, status, row.version).await?;
    let plan = load(&mut tx, id).await?;
    let event = event().patient(row.patient_id).details(serde_json::json!({
        "version": row.version, "item_ids": accepted, "accepted_cents": accepted_cents
    }));
    respond(tx, &caller, event, plan).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "Wants a second opinion"}))]
pub struct Reason {
    #[schema(schema_with = crate::validate::schema::text_500)]
    reason: String,
}

/// Records that the patient declined the presented version.
#[utoipa::path(post, path = "/treatment-plans/{id}/decline", tag = "treatment", security(("bearer" = [])),
    params(PlanPath),
    request_body = Reason,
    responses(
        (status = 200, description = "Declined", body = TreatmentPlan),
        (status = 403, description = "Role lacks treatment.consent", body = Problem),
        (status = 404, description = "No such plan in your clinic", body = Problem),
        (status = 409, description = "Not presented", body = Problem),
        (status = 422, description = "Missing reason", body = Problem)))]
pub async fn decline_plan(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(PlanPath { id }): ApiPath<PlanPath>,
    ApiJson(body): ApiJson<Reason>,
) -> AppResult<Response> {
    let event = || Event::new("treatment_plan.decline", "treatment_plan").resource(id);
    caller
        .authorize(&state, Permission::TreatmentConsent, event)
        .await?;
    let mut errors = Errors::default();
    let reason = errors.text("reason", &body.reason, 500);
    errors.finish()?;
    let mut tx = caller.begin(&state).await?;
    let row = plan_row(&mut tx, id, true).await?;
    let mut tx = patients::guard_record(
        &state,
        &caller,
        tx,
        row.patient_id,
        Permission::TreatmentConsent,
        "treatment plan",
    )
    .await?;
    transition(&row, &[PlanStatus::Presented], "declined")?;
    sqlx::query!(
        "INSERT INTO treatment_plan_decisions (clinic_id, plan_id, version, decision, reason, recorded_by) \
         VALUES ($1, $2, $3, 'declined', $4, $5)",
        caller.clinic_id,
        id,
        row.version,
        &reason,
        caller.user_id,
    )
    .execute(&mut *tx)
    .await?;
    set_status(&mut tx, id, PlanStatus::Declined, row.version).await?;
    let plan = load(&mut tx, id).await?;
    let event = event()
        .patient(row.patient_id)
        .details(serde_json::json!({ "version": row.version }));
    respond(tx, &caller, event, plan).await
}

/// Starts version n+1 as a draft from a presented or declined plan; version n stays
/// frozen as it was.
#[utoipa::path(post, path = "/treatment-plans/{id}/revise", tag = "treatment", security(("bearer" = [])),
    params(PlanPath),
    request_body = Reason,
    responses(
        (status = 200, description = "A new draft version", body = TreatmentPlan),
        (status = 403, description = "Role lacks treatment.write", body = Problem),
        (status = 404, description = "No such plan in your clinic", body = Problem),
        (status = 409, description = "Not presented or declined (a concurrent acceptance won)", body = Problem),
        (status = 422, description = "Missing reason", body = Problem)))]
pub async fn revise_plan(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(PlanPath { id }): ApiPath<PlanPath>,
    ApiJson(body): ApiJson<Reason>,
) -> AppResult<Response> {
    let event = || Event::new("treatment_plan.revise", "treatment_plan").resource(id);
    caller
        .authorize(&state, Permission::TreatmentWrite, event)
        .await?;
    let mut errors = Errors::default();
    let reason = errors.text("reason", &body.reason, 500);
    errors.finish()?;
    let mut tx = caller.begin(&state).await?;
    let row = plan_row(&mut tx, id, true).await?;
    let mut tx = patients::guard_record(
        &state,
        &caller,
        tx,
        row.patient_id,
        Permission::TreatmentWrite,
        "treatment plan",
    )
    .await?;
    transition(
        &row,
        &[PlanStatus::Presented, PlanStatus::Declined],
        "revised",
    )?;
    set_status(&mut tx, id, PlanStatus::Draft, row.version + 1).await?;
    let plan = load(&mut tx, id).await?;
    let event = event().patient(row.patient_id).details(serde_json::json!({
        "from_version": row.version, "version": row.version + 1, "reason": reason
    }));
    respond(tx, &caller, event, plan).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionItem {
    /// The plan item's id (what `accept` takes in `item_ids`).
    id: Uuid,
    procedure_id: Uuid,
    code: String,
    description: String,
    /// FDI.
    tooth: Option<String>,
    surfaces: Vec<String>,
    phase: i32,
    note: Option<String>,
    fee_cents: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Decision {
    /// `accepted`, `partially_accepted` or `declined`.
    decision: PlanStatus,
    accepted_item_ids: Vec<Uuid>,
    /// Σ of the accepted items' fees.
    accepted_cents: i64,
    signed_by: Option<String>,
    /// Base64 PNG, when one was given.
    signature_png: Option<String>,
    reason: Option<String>,
    decided_at: DateTime<Utc>,
    recorded_by: Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PlanVersion {
    plan_id: Uuid,
    version: i32,
    title: String,
    presented_at: DateTime<Utc>,
    presented_by: Uuid,
    items: Vec<VersionItem>,
    total_cents: i64,
    /// The patient's decision on this version; null while it awaits one (or was revised
    /// without one).
    decision: Option<Decision>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct VersionPath {
    /// The treatment plan's id.
    id: Uuid,
    /// The version number.
    #[param(minimum = 1)]
    n: i32,
}

/// A frozen version exactly as presented, and as signed or declined.
#[utoipa::path(get, path = "/treatment-plans/{id}/versions/{n}", tag = "treatment", security(("bearer" = [])),
    params(VersionPath),
    responses(
        (status = 200, description = "The frozen version", body = PlanVersion),
        (status = 403, description = "Role lacks treatment.read", body = Problem),
        (status = 404, description = "No such plan in your clinic, or the version was never presented", body = Problem)))]
pub async fn get_version(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(VersionPath { id, n }): ApiPath<VersionPath>,
) -> AppResult<Response> {
    let event = || Event::new("treatment_plan.version_read", "treatment_plan").resource(id);
    caller
        .authorize(&state, Permission::TreatmentRead, event)
        .await?;
    let mut tx = caller.begin(&state).await?;
    let plan = plan_row(&mut tx, id, false).await?;
    let mut tx = patients::guard_record(
        &state,
        &caller,
        tx,
        plan.patient_id,
        Permission::TreatmentRead,
        "treatment plan",
    )
    .await?;
    let head = sqlx::query!(
        "SELECT title, presented_at, presented_by, total_cents FROM treatment_plan_versions \
         WHERE plan_id = $1 AND version = $2",
        id,
        n
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AppError::not_found("treatment plan version"))?;
    let items = sqlx::query_as!(
        VersionItem,
        "SELECT item_id AS id, procedure_id, procedure_code AS code, description, tooth::text AS tooth, \
         surfaces, phase, note, fee_cents FROM treatment_plan_version_items \
         WHERE plan_id = $1 AND version = $2 ORDER BY phase, position",
        id,
        n
    )
    .fetch_all(&mut *tx)
    .await?;
    let decision = sqlx::query!(
        "SELECT decision, accepted_item_ids, accepted_cents, signed_by, signature_png, reason, \
         decided_at, recorded_by FROM treatment_plan_decisions WHERE plan_id = $1 AND version = $2",
        id,
        n
    )
    .fetch_optional(&mut *tx)
    .await?
    .map(|d| Decision {
        decision: PlanStatus::parse(&d.decision),
        accepted_item_ids: d.accepted_item_ids,
        accepted_cents: d.accepted_cents,
        signed_by: d.signed_by,
        signature_png: d.signature_png.map(|b| STANDARD.encode(b)),
        reason: d.reason,
        decided_at: d.decided_at,
        recorded_by: d.recorded_by,
    });
    audit::record(
        &mut tx,
        &caller.audit(),
        event()
            .patient(plan.patient_id)
            .details(serde_json::json!({ "version": n })),
    )
    .await?;
    tx.commit().await?;
    // Frozen: its ETag never changes.
    Ok(etag::tagged(
        n,
        &PlanVersion {
            plan_id: id,
            version: n,
            title: head.title,
            presented_at: head.presented_at,
            presented_by: head.presented_by,
            items,
            total_cents: head.total_cents,
            decision,
        },
    ))
}

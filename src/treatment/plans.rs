//! Treatment plans: a draft of planned procedures is presented (version n is frozen as
//! shown to the patient), then accepted in whole or in part with the patient's signature,
//! or declined; `revise` starts version n+1. Frozen versions and decisions live in
//! INSERT-only tables, so nothing the patient saw or signed can change afterwards.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::MAX_FEE_CENTS;
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::db::Tx;
use crate::error::{AppError, AppResult, Problem};
use crate::http::etag::{self, IfMatch};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use crate::http::idempotency::{self, Created, HashedJson, IdempotencyKey};
use crate::http::pagination::{self, Limit, Page};
use crate::patients;
use crate::patients::routes::PatientPath;
use crate::state::AppState;
use crate::validate::Errors;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_plans, create_plan))
        .routes(routes!(get_plan, update_plan))
        .routes(routes!(present_plan))
        .routes(routes!(accept_plan))
        .routes(routes!(decline_plan))
        .routes(routes!(revise_plan))
        .routes(routes!(get_version))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlanStatus {
    Draft,
    Presented,
    Accepted,
    PartiallyAccepted,
    Declined,
}

impl PlanStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanStatus::Draft => "draft",
            PlanStatus::Presented => "presented",
            PlanStatus::Accepted => "accepted",
            PlanStatus::PartiallyAccepted => "partially_accepted",
            PlanStatus::Declined => "declined",
        }
    }

    pub fn parse(s: &str) -> PlanStatus {
        match s {
            "presented" => PlanStatus::Presented,
            "accepted" => PlanStatus::Accepted,
            "partially_accepted" => PlanStatus::PartiallyAccepted,
            "declined" => PlanStatus::Declined,
            _ => PlanStatus::Draft,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PlanItem {
    id: Uuid,
    procedure_id: Uuid,
    phase: i32,
    note: Option<String>,
    /// The item's own fee when one was set, else the procedure's.
    fee_cents: i64,
    code: String,
    description: String,
    /// FDI.
    tooth: Option<String>,
    surfaces: Vec<String>,
    /// The procedure's status now (a planned item may since have been completed).
    procedure_status: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TreatmentPlan {
    id: Uuid,
    patient_id: Uuid,
    title: String,
    status: PlanStatus,
    /// The plan's version number n: 1 at first, n+1 after each `revise`. Version n is
    /// frozen when presented (`GET /treatment-plans/{id}/versions/{n}`).
    version: i32,
    /// Bumped by every change; the ETag is derived from it.
    revision: i32,
    items: Vec<PlanItem>,
    /// Σ of the items' fees.
    total_cents: i64,
    created_by: Uuid,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

struct PlanRow {
    id: Uuid,
    patient_id: Uuid,
    title: String,
    status: String,
    version: i32,
    revision: i32,
    created_by: Uuid,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

async fn plan_row(tx: &mut Tx, id: Uuid, lock: bool) -> AppResult<PlanRow> {
    let row = if lock {
        sqlx::query_as!(
            PlanRow,
            "SELECT id, patient_id, title, status, version, revision, created_by, created_at, \
             updated_at FROM treatment_plans WHERE id = $1 FOR UPDATE",
            id
        )
        .fetch_optional(&mut **tx)
        .await?
    } else {
        sqlx::query_as!(
            PlanRow,
            "SELECT id, patient_id, title, status, version, revision, created_by, created_at, \
             updated_at FROM treatment_plans WHERE id = $1",
            id
        )
        .fetch_optional(&mut **tx)
        .await?
    };
    row.ok_or_else(|| AppError::not_found("treatment plan"))
}

async fn items(tx: &mut Tx, plan: Uuid) -> AppResult<Vec<PlanItem>> {
    Ok(sqlx::query_as!(
        PlanItem,
        r#"SELECT i.id, i.procedure_id, i.phase, i.note,
                  coalesce(i.fee_cents, p.fee_cents) AS "fee_cents!", c.code, c.description,
                  p.tooth::text AS tooth, p.surfaces, p.status AS procedure_status
           FROM treatment_plan_items i
           JOIN procedures p ON p.clinic_id = i.clinic_id AND p.id = i.procedure_id
           JOIN procedure_codes c ON c.clinic_id = p.clinic_id AND c.id = p.procedure_code_id
           WHERE i.plan_id = $1 ORDER BY i.phase, i.position"#,
        plan
    )
    .fetch_all(&mut **tx)
    .await?)
}

async fn assemble(tx: &mut Tx, row: PlanRow) -> AppResult<TreatmentPlan> {
    let items = items(tx, row.id).await?;
    Ok(TreatmentPlan {
        total_cents: items.iter().map(|i| i.fee_cents).sum(),
        items,
        id: row.id,
        patient_id: row.patient_id,
        title: row.title,
        status: PlanStatus::parse(&row.status),
        version: row.version,
        revision: row.revision,
        created_by: row.created_by,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

async fn load(tx: &mut Tx, id: Uuid) -> AppResult<TreatmentPlan> {
    let row = plan_row(tx, id, false).await?;
    assemble(tx, row).await
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemInput {
    /// An existing item of this plan to keep (PATCH only); absent for a new item.
    id: Option<Uuid>,
    /// A planned procedure of the same patient.
    procedure_id: Uuid,
    /// Treatment phase, 1 (default) to 20.
    #[schema(minimum = 1, maximum = 20)]
    phase: Option<i32>,
    #[schema(schema_with = crate::validate::schema::text_500_or_null)]
    note: Option<String>,
    /// A fee for this plan only; default the procedure's fee.
    #[schema(minimum = 0, maximum = 100_000_000_000_i64)]
    fee_cents: Option<i64>,
}

/// Checks a plan's items against the patient's procedures and writes them in place of
/// the plan's current ones (item ids named in `items` are kept).
async fn replace_items(
    tx: &mut Tx,
    caller: &Caller,
    plan: Uuid,
    patient: Uuid,
    items: &[ItemInput],
    existing: &HashSet<Uuid>,
) -> AppResult<()> {
    let mut errors = Errors::default();
    if items.len() > 200 {
        errors.add("items", "a plan holds at most 200 items");
    }
    let ids: Vec<Uuid> = items.iter().map(|i| i.procedure_id).collect();
    let procedures = sqlx::query!(
        "SELECT id, patient_id, status FROM procedures WHERE id = ANY($1)",
        &ids
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut seen = HashSet::new();
    let mut seen_items = HashSet::new();
    for (n, item) in items.iter().enumerate() {
        let field = |f: &str| format!("items[{n}].{f}");
        match procedures.iter().find(|p| p.id == item.procedure_id) {
            None => errors.add(field("procedure_id"), "does not exist in your clinic"),
            Some(p) if p.patient_id != patient => {
                errors.add(field("procedure_id"), "is another patient's procedure")
            }
            Some(p) if p.status != "planned" => errors.add(
                field("procedure_id"),
                format!("is {}, not planned", p.status),
            ),
            Some(_) => {}
        }
        if !seen.insert(item.procedure_id) {
            errors.add(field("procedure_id"), "is in the plan already");
        }
        if let Some(id) = item.id {
            if !existing.contains(&id) || !seen_items.insert(id) {
                errors.add(field("id"), "is not an item of this plan");
            }
        }
        if let Some(phase) = item.phase {
            if !(1..=20).contains(&phase) {
                errors.add(field("phase"), "must be between 1 and 20");
            }
        }
        if let Some(fee) = item.fee_cents {
            if !(0..=MAX_FEE_CENTS).contains(&fee) {
                errors.add(
                    field("fee_cents"),
                    format!("must be between 0 and {MAX_FEE_CENTS}"),
                );
            }
        }
        if let Some(note) = &item.note {
            errors.text(&field("note"), note, 500);
        }
    }
    errors.finish()?;
    sqlx::query!("DELETE FROM treatment_plan_items WHERE plan_id = $1", plan)
        .execute(&mut **tx)
        .await?;
    let n = items.len();
    let (mut ids, mut procs, mut pos, mut phases, mut notes, mut fees) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (i, item) in items.iter().enumerate() {
        ids.push(item.id.unwrap_or_else(Uuid::now_v7));
        procs.push(item.procedure_id);
        pos.push(i32::try_from(i).unwrap_or(i32::MAX));
        phases.push(item.phase.unwrap_or(1));
        notes.push(item.note.as_deref().map(|n| n.trim().to_owned()));
        fees.push(item.fee_cents);
    }
    sqlx::query!(
        "INSERT INTO treatment_plan_items (clinic_id, plan_id, id, procedure_id, position, phase, note, fee_cents) \
         SELECT $1, $2, * FROM UNNEST($3::uuid[], $4::uuid[], $5::int4[], $6::int4[], $7::text[], $8::bigint[])",
        caller.clinic_id,
        plan,
        &ids,
        &procs,
        &pos,
        &phases,
        &notes as &[Option<String>],
        &fees as &[Option<i64>],
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PlanParams {
    /// Page size (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200, default = 50)]
    limit: Option<Limit>,
    /// The `next_cursor` of the previous page.
    #[param(min_length = 1, pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

/// A patient's treatment plans, newest first.
#[utoipa::path(get, path = "/patients/{id}/treatment-plans", tag = "treatment", security(("bearer" = [])),
    params(PatientPath, PlanParams),
    responses(
        (status = 200, description = "A page of plans", body = Page<TreatmentPlan>),
        (status = 400, description = "Malformed parameters or cursor", body = Problem),
        (status = 403, description = "Role lacks treatment.read", body = Problem),
        (status = 404, description = "No such patient in your clinic, or an archived one", body = Problem)))]
pub async fn list_plans(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(PatientPath { id }): ApiPath<PatientPath>,
    ApiQuery(p): ApiQuery<PlanParams>,
) -> AppResult<Json<Page<TreatmentPlan>>> {
    let event = || Event::new("treatment_plan.list", "treatment_plan").patient(id);
    let limit = pagination::limit(p.limit)?;
    let before: Option<(DateTime<Utc>, Uuid)> = state.cursors.decode_opt(p.cursor.as_deref())?;
    let (before_at, before_id) = before.unzip();
    let mut tx =
        patients::open_record(&state, &caller, id, Permission::TreatmentRead, event).await?;
    let rows = sqlx::query_as!(
        PlanRow,
        "SELECT id, patient_id, title, status, version, revision, created_by, created_at, updated_at \
         FROM treatment_plans WHERE patient_id = $1 \
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3)) \
         ORDER BY created_at DESC, id DESC LIMIT $4",
        id,
        before_at,
        before_id,
        pagination::overfetch(limit)
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut plans = Vec::with_capacity(rows.len());
    for row in rows {
        plans.push(assemble(&mut tx, row).await?);
    }
    let ids: Vec<Uuid> = plans.iter().map(|p| p.id).collect();
    audit::record(
        &mut tx,
        &caller.audit(),
        event().details(serde_json::json!({ "ids": ids })),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(state.cursors.page(
        plans,
        limit,
        |p: &TreatmentPlan| (p.created_at, p.id),
    )))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"title": "Restorations, lower left",
    "items": [{"procedure_id": "0193f5a0-0000-7000-8000-000000000002", "phase": 1}]}))]
pub struct NewPlan {
    #[schema(schema_with = crate::validate::schema::text_200)]
    title: String,
    /// Planned procedures of this patient, without `id`.
    #[serde(default)]
    items: Vec<ItemInput>,
}

/// Starts a plan as a draft (clinical roles, and an owner or admin who is a provider).
#[utoipa::path(post, path = "/patients/{id}/treatment-plans", tag = "treatment", security(("bearer" = [])),
    params(PatientPath, IdempotencyKey),
    request_body = NewPlan,
    responses(
        (status = 201, description = "Created", body = TreatmentPlan, headers(("Location" = String))),
        (status = 403, description = "Role lacks treatment.write", body = Problem),
        (status = 404, description = "No such patient in your clinic, or an archived one", body = Problem),
        (status = 422, description = "Invalid fields, or an item that is not a planned procedure of this patient", body = Problem)))]
pub async fn create_plan(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(PatientPath { id }): ApiPath<PatientPath>,
    body: HashedJson<NewPlan>,
) -> AppResult<Response> {
    let (hash, body) = (body.hash, body.value);
    let event = || Event::new("treatment_plan.create", "treatment_plan").patient(id);
    caller
        .authorize(&state, Permission::TreatmentWrite, event)
        .await?;
    let mut errors = Errors::default();
    let title = errors.text("title", &body.title, 200);
    for (n, item) in body.items.iter().enumerate() {
        if item.id.is_some() {
            errors.add(format!("items[{n}].id"), "a new plan's items have no id");
        }
    }
    errors.finish()?;
    idempotency::run(&state, &caller, &headers, &hash, || async {
        let mut tx = patients::begin_on(&state, &caller, id, Permission::TreatmentWrite).await?;
        let plan_id = Uuid::now_v7();
        sqlx::query!(
            "INSERT INTO treatment_plans (clinic_id, id, patient_id, title, created_by) \
             VALUES ($1, $2, $3, $4, $5)",
            caller.clinic_id,
            plan_id,
            id,
            &title,
            caller.user_id,
        )
        .execute(&mut *tx)
        .await?;
        replace_items(&mut tx, &caller, plan_id, id, &body.items, &HashSet::new()).await?;
        audit::record(&mut tx, &caller.audit(), event().resource(plan_id)).await?;
        let plan = load(&mut tx, plan_id).await?;
        Ok((
            tx,
            Created {
                location: format!("/api/v2/treatment-plans/{plan_id}"),
                version: Some(plan.revision),
                value: plan,
            },
        ))
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PlanPath {
    /// The treatment plan's id.
    id: Uuid,
}

/// One plan with its items and total.
#[utoipa::path(get, path = "/treatment-plans/{id}", tag = "treatment", security(("bearer" = [])),
    params(PlanPath),
    responses(
        (status = 200, description = "The plan", body = TreatmentPlan),
        (status = 403, description = "Role lacks treatment.read", body = Problem),
        (status = 404, description = "No such plan in your clinic", body = Problem)))]
pub async fn get_plan(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(PlanPath { id }): ApiPath<PlanPath>,
) -> AppResult<Response> {
    let event = || Event::new("treatment_plan.read", "treatment_plan").resource(id);
    caller
        .authorize(&state, Permission::TreatmentRead, event)
        .await?;
    let mut tx = caller.begin(&state).await?;
    let plan = load(&mut tx, id).await?;
    let tx = patients::guard_record(
        &state,
        &caller,
        tx,
        plan.patient_id,
        Permission::TreatmentRead,
        "treatment plan",
    )
    .await?;
    respond(tx, &caller, event().patient(plan.patient_id), plan).await
}

async fn respond(
    mut tx: Tx,
    caller: &Caller,
    event: Event,
    plan: TreatmentPlan,
) -> AppResult<Response> {
    audit::record(&mut tx, &caller.audit(), event).await?;
    tx.commit().await?;
    Ok(etag::tagged(plan.revision, &plan))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanPatch {
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(schema_with = crate::validate::schema::text_200)]
    title: Option<Option<String>>,
    /// The whole list (merge patch replaces arrays): items named by `id` are kept, those
    /// without are added, the rest removed.
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(value_type = Option<Vec<ItemInput>>)]
    items: Option<Option<Vec<ItemInput>>>,
}

/// Edits a draft plan (409 once presented).
#[utoipa::path(patch, path = "/treatment-plans/{id}", tag = "treatment", security(("bearer" = [])),
    params(PlanPath, IfMatch),
    request_body = PlanPatch,
    responses(
        (status = 200, description = "Updated", body = TreatmentPlan),
        (status = 403, description = "Role lacks treatment.write", body = Problem),
        (status = 404, description = "No such plan in your clinic", body = Problem),
        (status = 409, description = "The plan is not a draft", body = Problem),
        (status = 412, description = "If-Match does not match", body = Problem),
        (status = 422, description = "Invalid fields or items", body = Problem)))]
pub async fn update_plan(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(PlanPath { id }): ApiPath<PlanPath>,
    ApiJson(patch): ApiJson<PlanPatch>,
) -> AppResult<Response> {
    let event = || Event::new("treatment_plan.update", "treatment_plan").resource(id);
    caller
        .authorize(&state, Permission::TreatmentWrite, event)
        .await?;
    let mut errors = Errors::default();
    errors.uncleared(&[
        ("title", matches!(patch.title, Some(None))),
        ("items", matches!(patch.items, Some(None))),
    ]);
    let title = patch
        .title
        .clone()
        .flatten()
        .map(|t| errors.text("title", &t, 200));
    errors.finish()?;
    let mut tx = caller.begin(&state).await?;
    let current = plan_row(&mut tx, id, true).await?;
    let mut tx = patients::guard_record(
        &state,
        &caller,
        tx,
        current.patient_id,
        Permission::TreatmentWrite,
        "treatment plan",
    )
    .await?;
    if PlanStatus::parse(&current.status) != PlanStatus::Draft {
        return Err(AppError::conflict(
            "only a draft plan is edited; revise a presented or declined plan first",
        ));
    }
    etag::check(&headers, current.revision)?;
    if let Some(Some(items)) = &patch.items {
        let existing: HashSet<Uuid> =
            sqlx::query_scalar!("SELECT id FROM treatment_plan_items WHERE plan_id = $1", id)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
        replace_items(&mut tx, &caller, id, current.patient_id, items, &existing).await?;
    }
    sqlx::query!(
        "UPDATE treatment_plans SET title = $2, revision = revision + 1, updated_at = now() WHERE id = $1",
        id,
        title.unwrap_or(current.title.clone()),
    )
    .execute(&mut *tx)
    .await?;
    let plan = load(&mut tx, id).await?;
    respond(tx, &caller, event().patient(current.patient_id), plan).await
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

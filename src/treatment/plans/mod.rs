//! Treatment plans: a draft of planned procedures is presented (version n is frozen as
//! shown to the patient), then accepted in whole or in part with the patient's signature,
//! or declined; `revise` starts version n+1. Frozen versions and decisions live in
//! INSERT-only tables, so nothing the patient saw or signed can change afterwards.
//!
//! Here: the plan and its draft (list, create, read, edit); [`lifecycle`]: presenting,
//! the patient's decision, revising, and the frozen versions.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
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

mod lifecycle;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_plans, create_plan))
        .routes(routes!(get_plan, update_plan))
        .merge(lifecycle::router())
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
    audit::record(&mut tx, &caller.audit(), event().ids(ids)).await?;
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

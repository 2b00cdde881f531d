//! Recalls: recall types (a check-up interval and the procedures that satisfy it) and the
//! list of patients due, computed from each patient's last completed trigger procedure.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::db::Tx;
use crate::error::{AppError, AppResult, OnConstraint, Problem};
use crate::http::etag::{self, IfMatch};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use crate::http::idempotency::{self, Created, HashedJson, IdempotencyKey};
use crate::http::pagination::{self, Limit, Page};
use crate::state::AppState;
use crate::validate::Errors;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_recall_types, create_recall_type))
        .routes(routes!(update_recall_type))
        .routes(routes!(list_recalls))
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecallType {
    id: Uuid,
    name: String,
    interval_months: i32,
    /// Completing a procedure of one of these codes restarts the interval.
    trigger_procedure_code_ids: Vec<Uuid>,
    active: bool,
    version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Recall types with their trigger codes; `$where` narrows them.
macro_rules! select_types {
    ($where:literal $(, $arg:expr)*) => {
        sqlx::query_as!(
            RecallType,
            "SELECT t.id, t.name, t.interval_months, t.active, t.version, t.created_at, t.updated_at, \
             coalesce(array_agg(tr.procedure_code_id ORDER BY tr.procedure_code_id) \
                 FILTER (WHERE tr.procedure_code_id IS NOT NULL), '{}') AS \"trigger_procedure_code_ids!\" \
             FROM recall_types t LEFT JOIN recall_type_triggers tr \
                 ON tr.clinic_id = t.clinic_id AND tr.recall_type_id = t.id " + $where
                + " GROUP BY t.clinic_id, t.id ORDER BY t.name"
            $(, $arg)*
        )
    };
}

async fn load(tx: &mut Tx, id: Uuid) -> AppResult<RecallType> {
    select_types!("WHERE t.id = $1", id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| AppError::not_found("recall type"))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecallTypeList {
    items: Vec<RecallType>,
}

/// The clinic's recall types, by name.
#[utoipa::path(get, path = "/recall-types", tag = "treatment", security(("bearer" = [])),
    responses(
        (status = 200, description = "Recall types", body = RecallTypeList),
        (status = 403, description = "Role lacks treatment.read", body = Problem)))]
pub async fn list_recall_types(
    State(state): State<AppState>,
    caller: Caller,
) -> AppResult<Json<RecallTypeList>> {
    caller
        .authorize(&state, Permission::TreatmentRead, || {
            Event::new("recall_type.list", "recall_type")
        })
        .await?;
    let mut tx = caller.begin(&state).await?;
    let items = select_types!("WHERE true").fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(Json(RecallTypeList { items }))
}

/// 422 unless every id is a procedure code of the clinic.
async fn check_triggers(tx: &mut Tx, ids: &[Uuid]) -> AppResult<()> {
    let known: Vec<Uuid> =
        sqlx::query_scalar!("SELECT id FROM procedure_codes WHERE id = ANY($1)", ids)
            .fetch_all(&mut **tx)
            .await?;
    let mut errors = Errors::default();
    for (n, id) in ids.iter().enumerate() {
        if !known.contains(id) {
            errors.add(
                format!("trigger_procedure_code_ids[{n}]"),
                "does not exist in your clinic",
            );
        }
    }
    errors.finish()
}

async fn write_triggers(tx: &mut Tx, caller: &Caller, id: Uuid, ids: &[Uuid]) -> AppResult<()> {
    sqlx::query!(
        "DELETE FROM recall_type_triggers WHERE recall_type_id = $1",
        id
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query!(
        "INSERT INTO recall_type_triggers (clinic_id, recall_type_id, procedure_code_id) \
         SELECT $1, $2, c FROM UNNEST($3::uuid[]) AS c ON CONFLICT DO NOTHING",
        caller.clinic_id,
        id,
        ids
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn duplicate_name() -> AppError {
    AppError::conflict("the clinic already has a recall type with this name")
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Check-up", "interval_months": 6,
    "trigger_procedure_code_ids": ["0193f5a0-0000-7000-8000-000000000001"]}))]
pub struct NewRecallType {
    #[schema(schema_with = crate::validate::schema::text_100)]
    name: String,
    #[schema(minimum = 1, maximum = 120)]
    interval_months: i32,
    /// Codes of your clinic's catalogue.
    #[serde(default)]
    #[schema(max_items = 100)]
    trigger_procedure_code_ids: Vec<Uuid>,
    /// Default true.
    active: Option<bool>,
}

fn check_interval(months: i32, errors: &mut Errors) {
    if !(1..=120).contains(&months) {
        errors.add("interval_months", "must be between 1 and 120");
    }
}

/// Adds a recall type (owner and admin).
#[utoipa::path(post, path = "/recall-types", tag = "treatment", security(("bearer" = [])),
    params(IdempotencyKey),
    request_body = NewRecallType,
    responses(
        (status = 201, description = "Added", body = RecallType, headers(("Location" = String))),
        (status = 403, description = "Role lacks catalogue.manage", body = Problem),
        (status = 409, description = "The name is taken", body = Problem),
        (status = 422, description = "Invalid fields or unknown codes", body = Problem)))]
pub async fn create_recall_type(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: HashedJson<NewRecallType>,
) -> AppResult<Response> {
    let (hash, body) = (body.hash, body.value);
    let event = || Event::new("recall_type.create", "recall_type");
    caller
        .authorize(&state, Permission::CatalogueManage, event)
        .await?;
    let mut errors = Errors::default();
    let name = errors.text("name", &body.name, 100);
    check_interval(body.interval_months, &mut errors);
    if body.trigger_procedure_code_ids.len() > 100 {
        errors.add("trigger_procedure_code_ids", "at most 100 codes");
    }
    errors.finish()?;
    idempotency::run(&state, &caller, &headers, &hash, || async {
        let mut tx = caller.begin(&state).await?;
        check_triggers(&mut tx, &body.trigger_procedure_code_ids).await?;
        let id = Uuid::now_v7();
        sqlx::query!(
            "INSERT INTO recall_types (clinic_id, id, name, interval_months, active) VALUES ($1, $2, $3, $4, $5)",
            caller.clinic_id,
            id,
            &name,
            body.interval_months,
            body.active.unwrap_or(true),
        )
        .execute(&mut *tx)
        .await
        .on_constraint("recall_types_name_key", duplicate_name)?;
        write_triggers(&mut tx, &caller, id, &body.trigger_procedure_code_ids).await?;
        audit::record(&mut tx, &caller.audit(), event().resource(id)).await?;
        let value = load(&mut tx, id).await?;
        Ok((
            tx,
            Created {
                location: format!("/api/v2/recall-types/{id}"),
                version: Some(value.version),
                value,
            },
        ))
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RecallTypePath {
    /// The recall type's id.
    id: Uuid,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecallTypePatch {
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(schema_with = crate::validate::schema::text_100)]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 120)]
    interval_months: Option<Option<i32>>,
    /// The whole list; null or `[]` leaves the type without triggers.
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(value_type = Option<Vec<Uuid>>, max_items = 100, nullable = true)]
    trigger_procedure_code_ids: Option<Option<Vec<Uuid>>>,
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(value_type = Option<bool>)]
    active: Option<Option<bool>>,
}

/// Changes a recall type (owner and admin).
#[utoipa::path(patch, path = "/recall-types/{id}", tag = "treatment", security(("bearer" = [])),
    params(RecallTypePath, IfMatch),
    request_body = RecallTypePatch,
    responses(
        (status = 200, description = "Updated", body = RecallType),
        (status = 403, description = "Role lacks catalogue.manage", body = Problem),
        (status = 404, description = "No such recall type in your clinic", body = Problem),
        (status = 409, description = "The name is taken", body = Problem),
        (status = 412, description = "If-Match does not match", body = Problem),
        (status = 422, description = "Invalid fields or unknown codes", body = Problem)))]
pub async fn update_recall_type(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(RecallTypePath { id }): ApiPath<RecallTypePath>,
    ApiJson(patch): ApiJson<RecallTypePatch>,
) -> AppResult<Response> {
    let event = || Event::new("recall_type.update", "recall_type").resource(id);
    caller
        .authorize(&state, Permission::CatalogueManage, event)
        .await?;
    let mut errors = Errors::default();
    errors.uncleared(&[
        ("name", matches!(patch.name, Some(None))),
        (
            "interval_months",
            matches!(patch.interval_months, Some(None)),
        ),
        ("active", matches!(patch.active, Some(None))),
    ]);
    let name = patch
        .name
        .clone()
        .flatten()
        .map(|n| errors.text("name", &n, 100));
    if let Some(Some(m)) = patch.interval_months {
        check_interval(m, &mut errors);
    }
    if let Some(Some(ids)) = &patch.trigger_procedure_code_ids {
        if ids.len() > 100 {
            errors.add("trigger_procedure_code_ids", "at most 100 codes");
        }
    }
    errors.finish()?;
    let mut tx = caller.begin(&state).await?;
    let current = sqlx::query!(
        "SELECT name, interval_months, active, version FROM recall_types WHERE id = $1 FOR UPDATE",
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AppError::not_found("recall type"))?;
    etag::check(&headers, current.version)?;
    if let Some(ids) = &patch.trigger_procedure_code_ids {
        let ids = ids.clone().unwrap_or_default();
        check_triggers(&mut tx, &ids).await?;
        write_triggers(&mut tx, &caller, id, &ids).await?;
    }
    sqlx::query!(
        "UPDATE recall_types SET name = $2, interval_months = $3, active = $4, version = version + 1, \
         updated_at = now() WHERE id = $1",
        id,
        name.unwrap_or(current.name),
        patch.interval_months.flatten().unwrap_or(current.interval_months),
        patch.active.flatten().unwrap_or(current.active),
    )
    .execute(&mut *tx)
    .await
    .on_constraint("recall_types_name_key", duplicate_name)?;
    let value = load(&mut tx, id).await?;
    audit::record(&mut tx, &caller.audit(), event()).await?;
    tx.commit().await?;
    Ok(etag::tagged(value.version, &value))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Recall {
    patient_id: Uuid,
    recall_type_id: Uuid,
    /// The last completed (and not reversed) trigger procedure; null when there is none.
    last_done_on: Option<NaiveDate>,
    /// `last_done_on` + the interval; for a patient with none, the date of their first
    /// visit (first attended appointment or completed procedure).
    due_on: NaiveDate,
    /// The patient's next booked appointment, if any: it satisfies the recall.
    next_appointment_id: Option<Uuid>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RecallParams {
    /// Recalls due before this date; default tomorrow in the clinic's time zone (everyone
    /// due by today).
    due_before: Option<NaiveDate>,
    /// Only this recall type.
    recall_type_id: Option<Uuid>,
    /// Only patients without a booked appointment (default false: booked ones are listed
    /// with their `next_appointment_id`).
    #[serde(default)]
    unscheduled_only: bool,
    /// Page size (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200, default = 50)]
    limit: Option<Limit>,
    /// The `next_cursor` of the previous page.
    #[param(min_length = 1, pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

/// Patients due for a recall, earliest due first (front desk and clinical roles). A
/// restricted patient's recalls are listed for the front desk and billing, and for
/// clinical roles only within the care team (or with a live break-glass grant).
#[utoipa::path(get, path = "/recalls", tag = "treatment", security(("bearer" = [])),
    params(RecallParams),
    responses(
        (status = 200, description = "A page of due recalls", body = Page<Recall>),
        (status = 400, description = "Malformed parameters or cursor", body = Problem),
        (status = 403, description = "Role lacks appointments.read", body = Problem)))]
pub async fn list_recalls(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<RecallParams>,
) -> AppResult<Json<Page<Recall>>> {
    let event = || Event::new("recall.list", "recall");
    caller
        .authorize(&state, Permission::AppointmentsRead, event)
        .await?;
    let limit = pagination::limit(p.limit)?;
    let after: Option<(NaiveDate, Uuid, Uuid)> = state.cursors.decode_opt(p.cursor.as_deref())?;
    let (after_on, after_patient, after_type) = match after {
        Some((d, p, t)) => (Some(d), Some(p), Some(t)),
        None => (None, None, None),
    };
    if p.due_before
        .is_some_and(|d| !crate::validate::storable_date(d))
    {
        return Err(AppError::BadRequest(
            "invalid query parameters: `due_before` must be a date in the years 1 to 9999".into(),
        ));
    }
    // A recall's dates come from the patient's procedures, which a restricted patient keeps
    // to their care team for callers who see clinical detail (as the procedure routes do):
    // those callers outside the team do not see the restricted patient's recalls.
    let hide_restricted =
        crate::patients::opens_clinical_record(&caller, Permission::TreatmentRead);
    let mut tx = caller.begin(&state).await?;
    let tz = crate::clinic::timezone(&state, &mut tx, caller.clinic_id).await?;
    let today = crate::clinic::today(tz);
    let due_before = p
        .due_before
        .unwrap_or_else(|| today.checked_add_days(Days::new(1)).unwrap_or(today));
    let rows = sqlx::query_as!(
        Recall,
        r#"WITH types AS (
               SELECT id, interval_months FROM recall_types
               WHERE active AND ($1::uuid IS NULL OR id = $1)),
           last_done AS (
               SELECT tr.recall_type_id, pr.patient_id, max(pr.completed_on) AS last_done_on
               FROM types t
               JOIN recall_type_triggers tr ON tr.recall_type_id = t.id
               JOIN procedures pr ON pr.procedure_code_id = tr.procedure_code_id
                    AND pr.status = 'completed' AND pr.reversed_at IS NULL
               GROUP BY 1, 2),
           first_visit AS (
               SELECT patient_id, min(day) AS first_on FROM (
                   SELECT patient_id, (start_at AT TIME ZONE $2)::date AS day FROM appointments
                   WHERE status IN ('arrived', 'in_chair', 'completed')
                   UNION ALL
                   SELECT patient_id, completed_on FROM procedures
                   WHERE status = 'completed' AND reversed_at IS NULL) v
               GROUP BY patient_id),
           due AS (
               SELECT pt.id AS patient_id, t.id AS recall_type_id, ld.last_done_on,
                      coalesce((ld.last_done_on + make_interval(months => t.interval_months))::date,
                               fv.first_on) AS due_on
               FROM patients pt CROSS JOIN types t
               LEFT JOIN last_done ld ON ld.patient_id = pt.id AND ld.recall_type_id = t.id
               LEFT JOIN first_visit fv ON fv.patient_id = pt.id
               WHERE pt.archived_at IS NULL
                 AND (NOT $9 OR pt.id <> ALL (app_hidden_patients())))
           SELECT d.patient_id AS "patient_id!", d.recall_type_id AS "recall_type_id!",
                  d.last_done_on, d.due_on AS "due_on!", n.id AS "next_appointment_id?"
           FROM due d
           LEFT JOIN LATERAL (
               SELECT a.id FROM appointments a
               WHERE a.patient_id = d.patient_id AND a.start_at > now()
                 AND a.status IN ('scheduled', 'confirmed')
               ORDER BY a.start_at LIMIT 1) n ON true
           WHERE d.due_on IS NOT NULL AND d.due_on < $3
             AND (NOT $4 OR n.id IS NULL)
             AND ($5::date IS NULL OR (d.due_on, d.patient_id, d.recall_type_id) > ($5, $6, $7))
           ORDER BY d.due_on, d.patient_id, d.recall_type_id
           LIMIT $8"#,
        p.recall_type_id,
        tz.name(),
        due_before,
        p.unscheduled_only,
        after_on,
        after_patient,
        after_type,
        pagination::overfetch(limit),
        hide_restricted
    )
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.patient_id).collect();
    audit::record(
        &mut tx,
        &caller.audit(),
        event().details(serde_json::json!({ "patient_ids": ids })),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(state.cursors.page(rows, limit, |r: &Recall| {
        (r.due_on, r.patient_id, r.recall_type_id)
    })))
}

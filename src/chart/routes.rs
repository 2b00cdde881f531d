//! The odontogram: current state per tooth, the full history, new entries, and voiding.

use std::collections::BTreeMap;

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

use super::{parse_surfaces, Condition, Numbering, SurfacesRule, Tooth};
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::db::Tx;
use crate::error::{AppError, AppResult, OnConstraint, Problem};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use crate::http::idempotency::{self, Created, HashedJson, IdempotencyKey};
use crate::patients;
use crate::state::AppState;
use crate::treatment::procedures::{self, Procedure};
use crate::validate::Errors;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_chart))
        .routes(routes!(list_chart_entries, add_chart_entry))
        .routes(routes!(void_chart_entry))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChartEntry {
    id: Uuid,
    patient_id: Uuid,
    /// In the requested numbering.
    tooth: String,
    tooth_fdi: String,
    surfaces: Vec<String>,
    condition: Condition,
    note: Option<String>,
    recorded_by: Uuid,
    recorded_at: DateTime<Utc>,
    voided: bool,
    voided_at: Option<DateTime<Utc>>,
    voided_by: Option<Uuid>,
    void_reason: Option<String>,
}

struct EntryRow {
    id: Uuid,
    patient_id: Uuid,
    tooth: i16,
    surfaces: Vec<String>,
    condition: String,
    note: Option<String>,
    recorded_by: Uuid,
    recorded_at: DateTime<Utc>,
    voided_at: Option<DateTime<Utc>>,
    voided_by: Option<Uuid>,
    void_reason: Option<String>,
}

fn entry(r: EntryRow, numbering: Numbering) -> ChartEntry {
    let tooth = u8::try_from(r.tooth).ok().and_then(Tooth::from_fdi_number);
    ChartEntry {
        id: r.id,
        patient_id: r.patient_id,
        tooth: tooth.map(|t| t.render(numbering)).unwrap_or_default(),
        tooth_fdi: r.tooth.to_string(),
        surfaces: r.surfaces,
        condition: Condition::parse(&r.condition).unwrap_or(Condition::Watch),
        note: r.note,
        recorded_by: r.recorded_by,
        recorded_at: r.recorded_at,
        voided: r.voided_at.is_some(),
        voided_at: r.voided_at,
        voided_by: r.voided_by,
        void_reason: r.void_reason,
    }
}

async fn entries(tx: &mut Tx, patient: Uuid, include_voided: bool) -> AppResult<Vec<EntryRow>> {
    Ok(sqlx::query_as!(
        EntryRow,
        "SELECT id, patient_id, tooth, surfaces, condition, note, recorded_by, recorded_at, \
         voided_at, voided_by, void_reason FROM chart_entries \
         WHERE patient_id = $1 AND ($2 OR voided_at IS NULL) ORDER BY recorded_at, id",
        patient,
        include_voided
    )
    .fetch_all(&mut **tx)
    .await?)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PatientPath {
    /// The patient's id.
    id: Uuid,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ChartParams {
    /// `fdi` (default) or `universal`.
    #[serde(default)]
    numbering: Numbering,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToothState {
    tooth: String,
    tooth_fdi: String,
    /// Current (not voided) entries, oldest first.
    entries: Vec<ChartEntry>,
    /// Charted procedures on this tooth (not reversed), oldest first.
    procedures: Vec<Procedure>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Chart {
    patient_id: Uuid,
    numbering: Numbering,
    /// Only teeth with entries or procedures, in FDI order.
    teeth: Vec<ToothState>,
    /// Procedures of the whole mouth (no tooth), oldest first.
    procedures: Vec<Procedure>,
}

/// The current odontogram: each charted tooth with its conditions by surface.
#[utoipa::path(get, path = "/patients/{id}/chart", tag = "chart", security(("bearer" = [])),
    params(PatientPath, ChartParams),
    responses(
        (status = 200, description = "The chart", body = Chart),
        (status = 403, description = "Role lacks clinical.read", body = Problem),
        (status = 404, description = "No such patient in your clinic, or an archived one", body = Problem)))]
pub async fn get_chart(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(PatientPath { id }): ApiPath<PatientPath>,
    ApiQuery(p): ApiQuery<ChartParams>,
) -> AppResult<Json<Chart>> {
    let event = || Event::new("chart.read", "chart").patient(id);
    let mut tx =
        patients::open_record(&state, &caller, id, Permission::ClinicalRead, event).await?;
    let rows = entries(&mut tx, id, false).await?;
    let charted = procedures::for_chart(&mut tx, id).await?;
    audit::record(&mut tx, &caller.audit(), event()).await?;
    tx.commit().await?;
    let mut by_tooth: BTreeMap<i16, (Vec<ChartEntry>, Vec<Procedure>)> = BTreeMap::new();
    for r in rows {
        by_tooth
            .entry(r.tooth)
            .or_default()
            .0
            .push(entry(r, p.numbering));
    }
    let mut whole_mouth = vec![];
    for r in charted {
        match r.tooth {
            Some(t) => by_tooth
                .entry(t)
                .or_default()
                .1
                .push(r.render(p.numbering, &caller)),
            None => whole_mouth.push(r.render(p.numbering, &caller)),
        }
    }
    let teeth = by_tooth
        .into_iter()
        .map(|(fdi, (entries, procedures))| ToothState {
            tooth: u8::try_from(fdi)
                .ok()
                .and_then(Tooth::from_fdi_number)
                .map(|t| t.render(p.numbering))
                .unwrap_or_default(),
            tooth_fdi: fdi.to_string(),
            entries,
            procedures,
        })
        .collect();
    Ok(Json(Chart {
        patient_id: id,
        numbering: p.numbering,
        teeth,
        procedures: whole_mouth,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    #[serde(default)]
    numbering: Numbering,
    /// Include voided entries (default true: the history keeps everything).
    include_voided: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChartHistory {
    items: Vec<ChartEntry>,
}

/// Every chart entry of a patient, voided ones included, oldest first.
#[utoipa::path(get, path = "/patients/{id}/chart/entries", tag = "chart", security(("bearer" = [])),
    params(PatientPath, HistoryParams),
    responses(
        (status = 200, description = "The history", body = ChartHistory),
        (status = 403, description = "Role lacks clinical.read", body = Problem),
        (status = 404, description = "No such patient in your clinic, or an archived one", body = Problem)))]
pub async fn list_chart_entries(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(PatientPath { id }): ApiPath<PatientPath>,
    ApiQuery(p): ApiQuery<HistoryParams>,
) -> AppResult<Json<ChartHistory>> {
    let event = || Event::new("chart.read", "chart").patient(id);
    let mut tx =
        patients::open_record(&state, &caller, id, Permission::ClinicalRead, event).await?;
    let rows = entries(&mut tx, id, p.include_voided.unwrap_or(true)).await?;
    audit::record(&mut tx, &caller.audit(), event()).await?;
    tx.commit().await?;
    Ok(Json(ChartHistory {
        items: rows.into_iter().map(|r| entry(r, p.numbering)).collect(),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"tooth": "36", "surfaces": ["M", "O"], "condition": "caries", "note": "Distal margin stained"}))]
pub struct NewChartEntry {
    /// `"36"` in FDI (default: 11–48, 51–85) or `"19"` / `"K"` in Universal (1–32, A–T);
    /// a tooth the numbering does not have is a 422.
    #[schema(pattern = "^[0-9A-Za-z]{1,2}$")]
    tooth: String,
    /// M, O, I, D, B (or F), L (or P), either case; which ones fit depends on the tooth
    /// (incisal only on anterior teeth, occlusal only on posterior ones) and the
    /// condition (some need surfaces, some take none): a 422 otherwise.
    #[serde(default)]
    #[schema(schema_with = crate::validate::schema::surfaces)]
    surfaces: Vec<String>,
    condition: Condition,
    #[schema(schema_with = crate::validate::schema::text_2000_or_null)]
    note: Option<String>,
    /// How `tooth` is written (and how the response renders it).
    #[serde(default)]
    numbering: Numbering,
}

/// Records a condition or treatment on a tooth (clinical roles).
#[utoipa::path(post, path = "/patients/{id}/chart/entries", tag = "chart", security(("bearer" = [])),
    params(PatientPath, IdempotencyKey),
    request_body = NewChartEntry,
    responses(
        (status = 201, description = "Recorded", body = ChartEntry, headers(("Location" = String))),
        (status = 403, description = "Role lacks clinical.write", body = Problem),
        (status = 404, description = "No such patient in your clinic, or an archived one", body = Problem),
        (status = 422, description = "Invalid tooth, surface or condition", body = Problem)))]
pub async fn add_chart_entry(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(PatientPath { id }): ApiPath<PatientPath>,
    body: HashedJson<NewChartEntry>,
) -> AppResult<Response> {
    let (hash, body) = (body.hash, body.value);
    let event = || Event::new("chart.create", "chart_entry").patient(id);
    caller
        .authorize(&state, Permission::ClinicalWrite, event)
        .await?;
    let mut errors = Errors::default();
    let tooth = Tooth::parse(&body.tooth, body.numbering);
    let mut surfaces = vec![];
    match tooth {
        None => errors.add(
            "tooth",
            match body.numbering {
                Numbering::Fdi => "must be an FDI tooth number (11–48, 51–85)",
                Numbering::Universal => "must be a Universal tooth (1–32 or A–T)",
            },
        ),
        Some(t) => match parse_surfaces(t, &body.surfaces) {
            Err(msg) => errors.add("surfaces", msg),
            Ok(s) => surfaces = s,
        },
    }
    match body.condition.surfaces_rule() {
        SurfacesRule::Required if body.surfaces.is_empty() => errors.add(
            "surfaces",
            format!("{} needs at least one surface", body.condition.as_str()),
        ),
        SurfacesRule::None if !body.surfaces.is_empty() => errors.add(
            "surfaces",
            format!(
                "{} applies to the whole tooth: no surfaces",
                body.condition.as_str()
            ),
        ),
        _ => {}
    }
    let note = body.note.as_deref().map(|n| errors.text("note", n, 2000));
    errors.finish()?;
    let tooth = tooth.ok_or_else(|| AppError::validation("tooth", "is invalid"))?;
    idempotency::run(&state, &caller, &headers, &hash, || async {
    let mut tx = patients::begin_on(&state, &caller, id, Permission::ClinicalWrite).await?;
    let entry_id = Uuid::now_v7();
    let row = sqlx::query_as!(
        EntryRow,
        "INSERT INTO chart_entries (clinic_id, id, patient_id, tooth, surfaces, condition, note, recorded_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id, patient_id, tooth, surfaces, condition, \
         note, recorded_by, recorded_at, voided_at, voided_by, void_reason",
        caller.clinic_id,
        entry_id,
        id,
        i16::from(tooth.fdi()),
        &surfaces.iter().map(|s| s.as_str().to_owned()).collect::<Vec<_>>(),
        body.condition.as_str(),
        note.as_deref(),
        caller.user_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    audit::record(&mut tx, &caller.audit(), event().resource(entry_id)).await?;
    let created = Created {
        location: format!("/api/v2/chart-entries/{entry_id}"),
        version: None,
        value: entry(row, body.numbering),
    };
    Ok((tx, created))
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EntryPath {
    /// The chart entry's id.
    id: Uuid,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "Charted on the wrong tooth"}))]
pub struct VoidEntry {
    /// Why the entry was wrong; kept in the history.
    #[schema(schema_with = crate::validate::schema::text_500)]
    reason: String,
}

/// Voids a mistaken entry: it leaves the chart and stays in the history with the reason.
#[utoipa::path(post, path = "/chart-entries/{id}/void", tag = "chart", security(("bearer" = [])),
    params(EntryPath),
    request_body = VoidEntry,
    responses(
        (status = 200, description = "Voided", body = ChartEntry),
        (status = 403, description = "Role lacks clinical.write", body = Problem),
        (status = 404, description = "No such entry in your clinic", body = Problem),
        (status = 409, description = "Already voided", body = Problem),
        (status = 422, description = "Missing reason", body = Problem)))]
pub async fn void_chart_entry(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(EntryPath { id }): ApiPath<EntryPath>,
    ApiJson(body): ApiJson<VoidEntry>,
) -> AppResult<Json<ChartEntry>> {
    caller
        .authorize(&state, Permission::ClinicalWrite, || {
            Event::new("chart.void", "chart_entry").resource(id)
        })
        .await?;
    let mut errors = Errors::default();
    let reason = errors.text("reason", &body.reason, 500);
    errors.finish()?;
    let mut tx = caller.begin(&state).await?;
    let updated = sqlx::query_as!(
        EntryRow,
        "UPDATE chart_entries SET voided_at = now(), voided_by = $2, void_reason = $3 WHERE id = $1 \
         RETURNING id, patient_id, tooth, surfaces, condition, note, recorded_by, recorded_at, \
         voided_at, voided_by, void_reason",
        id,
        caller.user_id,
        &reason,
    )
    .fetch_optional(&mut *tx)
    .await;
    let row = updated
        .on_constraint("chart_entries_void_once", || {
            AppError::conflict("the chart entry is already voided")
        })?
        .ok_or_else(|| AppError::not_found("chart entry"))?;
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new("chart.void", "chart_entry")
            .resource(id)
            .patient(row.patient_id),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(entry(row, Numbering::Fdi)))
}

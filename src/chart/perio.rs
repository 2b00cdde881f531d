//! Periodontal charts: six sites per tooth with probing depth, recession, bleeding and
//! suppuration; mobility and furcation per tooth. Clinical attachment loss is computed
//! (probing depth + recession), never stored.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json as SqlJson;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::chart::{Numbering, Tooth};
use crate::error::{AppResult, Problem};
use crate::http::extract::{ApiPath, ApiQuery};
use crate::http::idempotency::{self, Created, HashedJson, IdempotencyKey};
use crate::patients;
use crate::state::AppState;
use crate::validate::Errors;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_perio_exams, create_perio_exam))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Site {
    MB,
    B,
    DB,
    ML,
    L,
    DL,
}

pub const MAX_PROBING_DEPTH: i16 = 19;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteInput {
    site: Site,
    /// Millimetres, 0–19.
    #[schema(minimum = 0, maximum = 19)]
    probing_depth: i16,
    /// Millimetres, -10 to 20: positive when the margin is apical to the CEJ, negative when
    /// coronal.
    #[serde(default)]
    #[schema(minimum = -10, maximum = 20)]
    recession: i16,
    #[serde(default)]
    bleeding: bool,
    #[serde(default)]
    suppuration: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToothInput {
    /// In the exam's `numbering` (a tooth it does not have is a 422); each tooth once.
    #[schema(pattern = "^[0-9A-Za-z]{1,2}$")]
    tooth: String,
    /// 0–3.
    #[schema(minimum = 0, maximum = 3)]
    mobility: Option<i16>,
    /// 0–3.
    #[schema(minimum = 0, maximum = 3)]
    furcation: Option<i16>,
    /// 1 to 6 sites, each site once (422).
    #[schema(min_items = 1, max_items = 6)]
    sites: Vec<SiteInput>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPerioExam {
    /// When the exam took place (default: now); not in the future (422).
    examined_at: Option<DateTime<Utc>>,
    #[schema(schema_with = crate::validate::schema::text_2000_or_null)]
    note: Option<String>,
    /// How the teeth are written.
    #[serde(default)]
    numbering: Numbering,
    /// 1 to 52 teeth.
    #[schema(min_items = 1, max_items = 52)]
    teeth: Vec<ToothInput>,
}

/// What is stored: teeth in FDI, sites as measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredTooth {
    fdi: u8,
    mobility: Option<i16>,
    furcation: Option<i16>,
    sites: Vec<SiteInput>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SiteMeasurement {
    site: Site,
    probing_depth: i16,
    recession: i16,
    /// Probing depth + recession.
    clinical_attachment_loss: i16,
    bleeding: bool,
    suppuration: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToothMeasurement {
    tooth: String,
    tooth_fdi: String,
    mobility: Option<i16>,
    furcation: Option<i16>,
    sites: Vec<SiteMeasurement>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PerioExam {
    id: Uuid,
    patient_id: Uuid,
    examiner_id: Uuid,
    examined_at: DateTime<Utc>,
    note: Option<String>,
    teeth: Vec<ToothMeasurement>,
    created_at: DateTime<Utc>,
}

struct ExamRow {
    id: Uuid,
    patient_id: Uuid,
    examiner_id: Uuid,
    examined_at: DateTime<Utc>,
    note: Option<String>,
    teeth: SqlJson<Vec<StoredTooth>>,
    created_at: DateTime<Utc>,
}

pub fn clinical_attachment_loss(probing_depth: i16, recession: i16) -> i16 {
    probing_depth + recession
}

fn render(row: ExamRow, numbering: Numbering) -> PerioExam {
    PerioExam {
        id: row.id,
        patient_id: row.patient_id,
        examiner_id: row.examiner_id,
        examined_at: row.examined_at,
        note: row.note,
        created_at: row.created_at,
        teeth: row
            .teeth
            .0
            .into_iter()
            .map(|t| ToothMeasurement {
                tooth: Tooth::from_fdi_number(t.fdi)
                    .map(|x| x.render(numbering))
                    .unwrap_or_default(),
                tooth_fdi: t.fdi.to_string(),
                mobility: t.mobility,
                furcation: t.furcation,
                sites: t
                    .sites
                    .into_iter()
                    .map(|s| SiteMeasurement {
                        site: s.site,
                        probing_depth: s.probing_depth,
                        recession: s.recession,
                        clinical_attachment_loss: clinical_attachment_loss(
                            s.probing_depth,
                            s.recession,
                        ),
                        bleeding: s.bleeding,
                        suppuration: s.suppuration,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn validate(exam: &NewPerioExam, errors: &mut Errors) -> Vec<StoredTooth> {
    let mut stored: Vec<StoredTooth> = Vec::new();
    if exam
        .examined_at
        .is_some_and(|t| !crate::validate::storable(t))
    {
        errors.add("examined_at", crate::validate::UNSTORABLE_INSTANT);
    }
    if exam.teeth.is_empty() || exam.teeth.len() > 52 {
        errors.add("teeth", "must list 1 to 52 teeth");
    }
    for (i, t) in exam.teeth.iter().enumerate() {
        let field = format!("teeth[{i}]");
        let Some(tooth) = Tooth::parse(&t.tooth, exam.numbering) else {
            errors.add(
                format!("{field}.tooth"),
                "is not a tooth in the given numbering",
            );
            continue;
        };
        if stored.iter().any(|s| s.fdi == tooth.fdi()) {
            errors.add(format!("{field}.tooth"), "appears twice");
        }
        for (name, v) in [("mobility", t.mobility), ("furcation", t.furcation)] {
            if v.is_some_and(|v| !(0..=3).contains(&v)) {
                errors.add(format!("{field}.{name}"), "must be 0 to 3");
            }
        }
        if t.sites.is_empty() || t.sites.len() > 6 {
            errors.add(format!("{field}.sites"), "must list 1 to 6 sites");
        }
        for (j, s) in t.sites.iter().enumerate() {
            let sf = format!("{field}.sites[{j}]");
            if t.sites[..j].iter().any(|o| o.site == s.site) {
                errors.add(format!("{sf}.site"), "appears twice");
            }
            if !(0..=MAX_PROBING_DEPTH).contains(&s.probing_depth) {
                errors.add(format!("{sf}.probing_depth"), "must be 0 to 19 mm");
            }
            if !(-10..=20).contains(&s.recession) {
                errors.add(format!("{sf}.recession"), "must be -10 to 20 mm");
            }
        }
        stored.push(StoredTooth {
            fdi: tooth.fdi(),
            mobility: t.mobility,
            furcation: t.furcation,
            sites: t.sites.clone(),
        });
    }
    if let Some(n) = &exam.note {
        errors.text("note", n, 2000);
    }
    if exam
        .examined_at
        .is_some_and(|at| at > Utc::now() + chrono::Duration::minutes(5))
    {
        errors.add("examined_at", "must not be in the future");
    }
    stored.sort_by_key(|t| t.fdi);
    stored
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
pub struct PerioParams {
    #[serde(default)]
    numbering: Numbering,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PerioList {
    items: Vec<PerioExam>,
}

/// A patient's periodontal exams, newest first.
#[utoipa::path(get, path = "/patients/{id}/perio-exams", tag = "perio", security(("bearer" = [])),
    params(PatientPath, PerioParams),
    responses(
        (status = 200, description = "The exams", body = PerioList),
        (status = 403, description = "Role lacks clinical.read", body = Problem),
        (status = 404, description = "No such patient in your clinic, or an archived one", body = Problem)))]
pub async fn list_perio_exams(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(PatientPath { id }): ApiPath<PatientPath>,
    ApiQuery(p): ApiQuery<PerioParams>,
) -> AppResult<Json<PerioList>> {
    let event = || Event::new("perio.list", "perio_exam").patient(id);
    let mut tx =
        patients::open_record(&state, &caller, id, Permission::ClinicalRead, event).await?;
    let rows = sqlx::query_as!(
        ExamRow,
        r#"SELECT id, patient_id, examiner_id, examined_at, note,
            teeth AS "teeth: SqlJson<Vec<StoredTooth>>", created_at
           FROM perio_exams WHERE patient_id = $1 ORDER BY examined_at DESC, id DESC"#,
        id
    )
    .fetch_all(&mut *tx)
    .await?;
    audit::record(&mut tx, &caller.audit(), event()).await?;
    tx.commit().await?;
    Ok(Json(PerioList {
        items: rows.into_iter().map(|r| render(r, p.numbering)).collect(),
    }))
}

/// Records a periodontal exam (clinical roles).
#[utoipa::path(post, path = "/patients/{id}/perio-exams", tag = "perio", security(("bearer" = [])),
    params(PatientPath, IdempotencyKey),
    request_body = NewPerioExam,
    responses(
        (status = 201, description = "Recorded", body = PerioExam),
        (status = 403, description = "Role lacks clinical.write", body = Problem),
        (status = 404, description = "No such patient in your clinic, or an archived one", body = Problem),
        (status = 422, description = "Invalid measurements", body = Problem)))]
pub async fn create_perio_exam(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(PatientPath { id }): ApiPath<PatientPath>,
    body: HashedJson<NewPerioExam>,
) -> AppResult<Response> {
    let (hash, body) = (body.hash, body.value);
    let event = || Event::new("perio.create", "perio_exam").patient(id);
    caller
        .authorize(&state, Permission::ClinicalWrite, event)
        .await?;
    let mut errors = Errors::default();
    let stored = validate(&body, &mut errors);
    errors.finish()?;
    idempotency::run(&state, &caller, &headers, &hash, || async {
    let mut tx = patients::begin_on(&state, &caller, id, Permission::ClinicalWrite).await?;
    let exam_id = Uuid::now_v7();
    let row = sqlx::query_as!(
        ExamRow,
        r#"INSERT INTO perio_exams (clinic_id, id, patient_id, examiner_id, examined_at, note, teeth)
           VALUES ($1, $2, $3, $4, coalesce($5, now()), $6, $7)
           RETURNING id, patient_id, examiner_id, examined_at, note,
            teeth AS "teeth: SqlJson<Vec<StoredTooth>>", created_at"#,
        caller.clinic_id,
        exam_id,
        id,
        caller.user_id,
        body.examined_at,
        body.note.as_deref().map(str::trim),
        SqlJson(&stored) as _,
    )
    .fetch_one(&mut *tx)
    .await?;
    audit::record(&mut tx, &caller.audit(), event().resource(exam_id)).await?;
    let created = Created {
        location: format!("/api/v2/patients/{id}/perio-exams"),
        version: None,
        value: render(row, body.numbering),
    };
    Ok((tx, created))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_loss_adds_recession_with_its_sign() {
        assert_eq!(clinical_attachment_loss(5, 2), 7);
        assert_eq!(clinical_attachment_loss(4, -1), 3);
        assert_eq!(clinical_attachment_loss(0, 0), 0);
    }
}

//! Break-glass access to a restricted patient's clinical record: `POST
//! /patients/{id}/break-glass` with a reason opens it to the caller for
//! `BREAK_GLASS_MINUTES`. Each grant is audited as `patient.break_glass`, emailed to the
//! clinic's owners and admins in the same transaction (through the outbox), and listed for
//! review at `GET /break-glass`. Grants are append-only: one that expires stops counting.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::routes::PatientPath;
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult, Problem};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use crate::http::pagination::{self, Limit, Page};
use crate::state::AppState;
use crate::validate::Errors;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(break_glass))
        .routes(routes!(list_grants))
}

/// The longest reason kept (the schema checks it too).
pub const MAX_REASON: usize = 500;

/// How long the owners' and admins' notice is worth sending.
const NOTICE_GIVE_UP_HOURS: i64 = 72;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "Patient in the chair with acute swelling; care team away"}))]
pub struct BreakGlassRequest {
    /// Why the record must be opened now; kept, shown to reviewers and emailed to the
    /// clinic's owners and admins.
    #[schema(schema_with = crate::validate::schema::text_500)]
    reason: String,
}

/// Time-boxed access to one restricted patient's clinical record for one user.
#[derive(Debug, Serialize, ToSchema)]
pub struct BreakGlassGrant {
    id: Uuid,
    patient_id: Uuid,
    /// Who broke the glass.
    user_id: Uuid,
    reason: String,
    created_at: DateTime<Utc>,
    /// The record closes again at this instant.
    expires_at: DateTime<Utc>,
    /// Whether the grant still opens the record.
    live: bool,
}

/// Breaks the glass: opens a restricted patient's clinical record to the caller for
/// `BREAK_GLASS_MINUTES` (default 60), for a stated reason. For callers with
/// `clinical.read` who are not on the care team; audited as `patient.break_glass`, emailed
/// to the clinic's owners and admins, listed at `GET /break-glass`. Breaking it again
/// while a grant lives adds another grant.
#[utoipa::path(post, path = "/patients/{id}/break-glass", tag = "patients", security(("bearer" = [])),
    params(PatientPath),
    request_body = BreakGlassRequest,
    responses(
        (status = 201, description = "The grant: the record is open to the caller until `expires_at`. \
            `Location` is the review list for this patient and caller, the grant first", body = BreakGlassGrant,
            headers(("Location" = String))),
        (status = 403, description = "Role lacks clinical.read", body = Problem),
        (status = 404, description = "No such patient in your clinic, or an archived one", body = Problem),
        (status = 409, description = "The patient is not restricted, or the caller is on the care team: the record is open without breaking the glass", body = Problem),
        (status = 422, description = "The reason is empty or longer than 500 characters", body = Problem)))]
pub async fn break_glass(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(PatientPath { id }): ApiPath<PatientPath>,
    ApiJson(body): ApiJson<BreakGlassRequest>,
) -> AppResult<Response> {
    let event = || {
        Event::new("patient.break_glass", "patient")
            .resource(id)
            .patient(id)
    };
    caller
        .authorize(&state, Permission::ClinicalRead, event)
        .await?;
    let mut errors = Errors::default();
    let reason = errors.text("reason", &body.reason, MAX_REASON);
    errors.finish()?;

    let mut tx = caller.begin(&state).await?;
    let patient = sqlx::query!(
        "SELECT first_name, last_name, restricted, care_team FROM patients \
         WHERE id = $1 AND archived_at IS NULL",
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AppError::not_found("patient"))?;
    let refused = if !patient.restricted {
        Some("the patient's record is not restricted: open it without breaking the glass")
    } else if patient.care_team.contains(&caller.user_id) {
        Some("you are on the patient's care team: the record is open to you")
    } else {
        None
    };
    if let Some(why) = refused {
        drop(tx);
        audit::record_failure(
            &state.db,
            &caller.audit(),
            event().details(serde_json::json!({ "refused": why })),
        )
        .await;
        return Err(AppError::conflict(why));
    }

    let grant_id = Uuid::now_v7();
    // The setting is at most a day (1440), which an i32 holds.
    let minutes = i32::try_from(state.config.break_glass_minutes).unwrap_or(24 * 60);
    let grant = sqlx::query!(
        "INSERT INTO break_glass_grants (clinic_id, id, patient_id, user_id, reason, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, now(), now() + make_interval(mins => $6)) \
         RETURNING created_at, expires_at",
        caller.clinic_id,
        grant_id,
        id,
        caller.user_id,
        &reason,
        minutes,
    )
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &caller.audit(),
        event().details(serde_json::json!({
            "grant_id": grant_id,
            "reason": reason,
            "expires_at": grant.expires_at,
        })),
    )
    .await?;

    // Every active owner and admin hears of it, in the same transaction: no grant without
    // its notice.
    let who = sqlx::query!(
        "SELECT full_name, role FROM users WHERE id = $1",
        caller.user_id
    )
    .fetch_one(&mut *tx)
    .await?;
    let reviewers = sqlx::query!(
        "SELECT email FROM users WHERE active AND role IN ('owner', 'admin') ORDER BY email"
    )
    .fetch_all(&mut *tx)
    .await?;
    let notice = crate::mail::BreakGlassNotice {
        user_name: &who.full_name,
        user_role: &who.role,
        patient_name: &format!("{} {}", patient.first_name, patient.last_name),
        patient_id: id,
        reason: &reason,
        at: grant.created_at,
        until: grant.expires_at,
    };
    for reviewer in reviewers {
        let message = crate::mail::break_glass_notice(&reviewer.email, &notice);
        crate::outbox::enqueue_email(
            &mut tx,
            caller.clinic_id,
            &message,
            chrono::Duration::hours(NOTICE_GIVE_UP_HOURS),
        )
        .await?;
    }
    tx.commit().await?;
    let body = BreakGlassGrant {
        id: grant_id,
        patient_id: id,
        user_id: caller.user_id,
        reason,
        created_at: grant.created_at,
        expires_at: grant.expires_at,
        live: true,
    };
    // A grant has no address of its own: it is reviewed in the list, where this filter
    // shows it first (newest first).
    let location = format!(
        "/api/v2/break-glass?patient_id={id}&user_id={}",
        caller.user_id
    );
    let mut res = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GrantParams {
    /// Only grants for this patient.
    patient_id: Option<Uuid>,
    /// Only grants to this user.
    user_id: Option<Uuid>,
    /// Grants made at or after this instant.
    from: Option<DateTime<Utc>>,
    /// Grants made before this instant; not before `from` (422).
    to: Option<DateTime<Utc>>,
    /// Page size (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200, default = 50)]
    limit: Option<Limit>,
    /// The `next_cursor` of the previous page (opaque; a cursor this server did not issue
    /// is a 400).
    #[param(min_length = 1, pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

/// Break-glass grants for review (owners and admins: `audit.read`), newest first, live
/// or expired. Reading the list is audited as `break_glass.list`.
#[utoipa::path(get, path = "/break-glass", tag = "audit", security(("bearer" = [])),
    params(GrantParams),
    responses(
        (status = 200, description = "A page of grants", body = Page<BreakGlassGrant>),
        (status = 400, description = "Malformed parameters or cursor", body = Problem),
        (status = 403, description = "Only owners and admins review break-glass grants", body = Problem),
        (status = 422, description = "`from` is after `to`", body = Problem)))]
pub async fn list_grants(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<GrantParams>,
) -> AppResult<Json<Page<BreakGlassGrant>>> {
    let event = || Event::new("break_glass.list", "break_glass_grant");
    caller
        .authorize(&state, Permission::AuditRead, event)
        .await?;
    let limit = pagination::limit(p.limit)?;
    crate::validate::storable_param("from", p.from)?;
    crate::validate::storable_param("to", p.to)?;
    if let (Some(from), Some(to)) = (p.from, p.to) {
        if from > to {
            return Err(AppError::validation("from", "must not be after `to`"));
        }
    }
    let before: Option<(DateTime<Utc>, Uuid)> = state.cursors.decode_opt(p.cursor.as_deref())?;
    let (before_at, before_id) = before.unzip();
    let mut tx = caller.begin(&state).await?;
    let grants = sqlx::query_as!(
        BreakGlassGrant,
        r#"SELECT id, patient_id, user_id, reason, created_at, expires_at,
                  expires_at > now() AS "live!"
           FROM break_glass_grants
           WHERE ($1::uuid IS NULL OR patient_id = $1) AND ($2::uuid IS NULL OR user_id = $2)
             AND ($3::timestamptz IS NULL OR created_at >= $3)
             AND ($4::timestamptz IS NULL OR created_at < $4)
             AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6))
           ORDER BY created_at DESC, id DESC LIMIT $7"#,
        p.patient_id,
        p.user_id,
        p.from,
        p.to,
        before_at,
        before_id,
        pagination::overfetch(limit)
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut event = event();
    if let Some(patient) = p.patient_id {
        event = event.patient(patient);
    }
    audit::record(&mut tx, &caller.audit(), event).await?;
    tx.commit().await?;
    Ok(Json(state.cursors.page(
        grants,
        limit,
        |g: &BreakGlassGrant| (g.created_at, g.id),
    )))
}

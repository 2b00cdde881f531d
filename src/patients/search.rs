//! `GET /patients`: the list by name, or the best matches for `q` first (names typo
//! tolerant, phone, email, date of birth), audited as one event with the ids shown.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;
use uuid::Uuid;

use super::*;
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult, Problem};
use crate::http::extract::ApiQuery;
use crate::http::pagination::{self, Limit, Page};
use crate::http::query::SearchText;
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PatientListParams {
    /// Name (typo tolerant), phone digits, email, or date of birth (`YYYY-MM-DD`); empty
    /// or absent lists by name.
    #[param(value_type = Option<String>, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    q: Option<SearchText>,
    /// Include archived patients.
    #[serde(default)]
    #[param(default = false)]
    include_archived: bool,
    /// Page size (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200, default = 50)]
    limit: Option<Limit>,
    /// The `next_cursor` of the previous page (opaque; a cursor this server did not issue
    /// for this query is a 400).
    #[param(min_length = 1, pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

#[derive(Serialize, Deserialize)]
enum Position {
    /// Alphabetical: lower(last), lower(first), id.
    Name(String, String, Uuid),
    /// Search: the query, score and id.
    Search(String, f32, Uuid),
}

/// Patients by last and first name, or the best matches for `q` first.
#[utoipa::path(get, path = "/patients", tag = "patients", security(("bearer" = [])),
    params(PatientListParams),
    responses(
        (status = 200, description = "A page of patients", body = Page<Patient>),
        (status = 400, description = "Malformed parameters or cursor", body = Problem),
        (status = 403, description = "Role lacks patients.read", body = Problem)))]
pub async fn list_patients(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<PatientListParams>,
) -> AppResult<Json<Page<Patient>>> {
    let q = p.q.as_ref().map(|q| q.0.trim()).filter(|q| !q.is_empty());
    let action = if q.is_some() {
        "patient.search"
    } else {
        "patient.list"
    };
    caller
        .authorize(&state, Permission::PatientsRead, || {
            Event::new(action, "patient")
        })
        .await?;
    let limit = pagination::limit(p.limit)?;
    let position: Option<Position> = p
        .cursor
        .as_deref()
        .map(|c| state.cursors.decode(c))
        .transpose()?;
    let mut tx = caller.begin(&state).await?;
    let ctx = caller.audit();
    // Each page and its audit event in one statement.
    let (rows, scores): (Vec<PatientRow>, Vec<f32>) = match q {
        None => {
            let after = match position {
                None => None,
                Some(Position::Name(l, f, id)) => Some((l, f, id)),
                Some(Position::Search(..)) => {
                    return Err(AppError::BadRequest(
                        "the cursor belongs to another query".into(),
                    ))
                }
            };
            // One statement per shape (archived or not, first page or later), so that the
            // planner sees which filters apply: a later page starts in the name index at
            // the cursor instead of filtering every row before it. The page size is written
            // into the statement (an integer of ours): with `LIMIT $1` PostgreSQL plans
            // every execution afresh, since a generic plan cannot know the limit. The page
            // is a materialized CTE, read back in the order its rows went in, for the rows
            // sent and for the ids in the audit event alike: no numbering window and no
            // second sort, each of which cost PostgreSQL another copy of every row. The
            // event names the rows shown, not the one more fetched only to learn whether
            // another page follows.
            let fetch = limit as i64 + 1;
            let sql = format!(
                "WITH page AS MATERIALIZED (SELECT {PATIENT_COLUMNS} FROM patients \
                 WHERE {} {} ORDER BY lower(last_name), lower(first_name), id LIMIT {fetch}), {} \
                 SELECT * FROM page",
                if p.include_archived {
                    "true"
                } else {
                    "archived_at IS NULL"
                },
                if after.is_some() {
                    "AND (lower(last_name), lower(first_name), id) > ($6, $7, $8)"
                } else {
                    ""
                },
                audit::cte(
                    1,
                    "patient.list",
                    "patient",
                    "NULL",
                    "NULL",
                    &format!("ARRAY(SELECT id FROM page LIMIT {limit})"),
                    "(SELECT 1) AS one"
                ),
            );
            // Not a macro: the page size is part of the text (see above), the cursor filter is optional, and the audit CTE comes from `audit::cte`.
            let mut query = audit::bind_context(sqlx::query_as::<_, PatientRow>(&sql), &ctx);
            if let Some((last, first, id)) = after {
                query = query.bind(last).bind(first).bind(id);
            }
            let rows = query.fetch_all(&mut *tx).await?;
            (rows, vec![])
        }
        Some(q) => {
            let after = match position {
                None => None,
                Some(Position::Search(cq, score, id)) if cq == q => Some((score, id)),
                Some(_) => {
                    return Err(AppError::BadRequest(
                        "the cursor belongs to another query".into(),
                    ))
                }
            };
            // The tuned text, unchanged: no column aliases, so the score (a function's
            // result, of unknown nullability) and the JSON documents are decoded below, as
            // the run-time query decoded them. The audit CTE is `audit::cte(6, ...)` written
            // out, the caller's context at $6..$10.
            let rows: Vec<(f32, PatientRow)> = sqlx::query!(
                "WITH page AS (SELECT row_number() OVER (ORDER BY s.score DESC, s.id DESC) AS n, \
                 s.score, p.id, p.first_name, p.last_name, p.date_of_birth, p.sex, p.email, p.phone, \
                 p.address, p.preferred_provider_id, p.medical_alerts, p.emergency_contact, p.guardian, \
                 p.responsible_party_id, p.restricted, p.care_team, p.archived_at, p.version, \
                 p.created_at, p.updated_at \
                 FROM patient_search($1, $2, $3, $4, $5) s \
                 JOIN patients p ON p.id = s.id), \
                 audit AS (INSERT INTO audit_events \
                 (clinic_id, id, user_id, action, resource_type, resource_id, patient_id, request_id, ip, outcome, ids) \
                 SELECT $6, $7, $8, 'patient.search', 'patient', NULL, NULL, $9, $10, 'success', \
                 ARRAY(SELECT id FROM page WHERE n < $5 ORDER BY n) \
                 FROM (SELECT 1) AS one) \
                 SELECT * FROM page ORDER BY n",
                q,
                p.include_archived,
                after.map(|a| a.0),
                after.map(|a| a.1),
                limit as i32 + 1,
                ctx.clinic_id,
                Uuid::now_v7(),
                ctx.user_id,
                ctx.request_id.as_deref(),
                ctx.ip.map(ipnet::IpNet::from),
            )
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| {
                Ok((
                    not_null("score", r.score)?,
                    PatientRow {
                        id: r.id,
                        first_name: r.first_name,
                        last_name: r.last_name,
                        date_of_birth: r.date_of_birth,
                        sex: r.sex,
                        email: r.email,
                        phone: r.phone,
                        address: r.address.map(|v| json_column("address", v)).transpose()?,
                        preferred_provider_id: r.preferred_provider_id,
                        medical_alerts: json_column("medical_alerts", r.medical_alerts)?,
                        emergency_contact: r
                            .emergency_contact
                            .map(|v| json_column("emergency_contact", v))
                            .transpose()?,
                        guardian: r.guardian.map(|v| json_column("guardian", v)).transpose()?,
                        responsible_party_id: r.responsible_party_id,
                        restricted: r.restricted,
                        care_team: r.care_team,
                        archived_at: r.archived_at,
                        version: r.version,
                        created_at: r.created_at,
                        updated_at: r.updated_at,
                    },
                ))
            })
            .collect::<Result<_, sqlx::Error>>()?;
            let scores = rows.iter().map(|r| r.0).collect();
            (rows.into_iter().map(|r| r.1).collect(), scores)
        }
    };
    let items: Vec<Patient> = rows
        .into_iter()
        .map(|r| Patient::from(r).for_role(caller.role))
        .collect();
    // The score of the last row kept, for a search's cursor.
    let last_score = scores.get(limit as usize - 1).copied().unwrap_or(0.0);
    let page = Page::from_overfetch(items, limit, |last| match q {
        None => state.cursors.encode(&Position::Name(
            last.last_name.to_lowercase(),
            last.first_name.to_lowercase(),
            last.id,
        )),
        Some(q) => state
            .cursors
            .encode(&Position::Search(q.to_owned(), last_score, last.id)),
    });
    tx.commit().await?;
    Ok(Json(page))
}

/// A JSON column of the search, decoded as `Json<T>` decodes it, failing with the same
/// column-decode error.
fn json_column<T: serde::de::DeserializeOwned>(
    column: &str,
    value: serde_json::Value,
) -> Result<SqlJson<T>, sqlx::Error> {
    serde_json::from_value(value)
        .map(SqlJson)
        .map_err(|e| sqlx::Error::ColumnDecode {
            index: format!("{column:?}"),
            source: Box::new(e),
        })
}

/// A column the search always fills but whose nullability sqlx cannot see (a function's
/// result): NULL fails as decoding into a non-optional type does.
fn not_null<T>(column: &str, value: Option<T>) -> Result<T, sqlx::Error> {
    value.ok_or_else(|| sqlx::Error::ColumnDecode {
        index: format!("{column:?}"),
        source: Box::new(sqlx::error::UnexpectedNullError),
    })
}

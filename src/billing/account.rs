//! A patient's account: `GET /patients/{id}/ledger` (entries newest first, each with the
//! running balance after it) and `GET /patients/{id}/balance`.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::error::{AppResult, Problem};
use crate::http::extract::{ApiPath, ApiQuery};
use crate::http::pagination::{self, Limit, Page};
use crate::patients;
use crate::patients::routes::PatientPath;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ledger))
        .routes(routes!(balance))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerEntry {
    /// The journal transaction.
    id: Uuid,
    /// `charge`, `payment`, `adjustment`, `refund`, `reversal` or `credit_applied`.
    kind: String,
    /// Its effect on this patient's account: positive raises what the patient owes.
    amount_cents: i64,
    posted_at: DateTime<Utc>,
    procedure_id: Option<Uuid>,
    payment_id: Option<Uuid>,
    invoice_id: Option<Uuid>,
    reverses_id: Option<Uuid>,
    memo: Option<String>,
    created_by: Option<Uuid>,
    /// The account's balance after this entry.
    balance_cents: i64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LedgerParams {
    /// Page size (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200, default = 50)]
    limit: Option<Limit>,
    /// The `next_cursor` of the previous page.
    #[param(min_length = 1, pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

/// The patient's account entries, newest first, each with the running balance.
#[utoipa::path(get, path = "/patients/{id}/ledger", tag = "billing", security(("bearer" = [])),
    params(PatientPath, LedgerParams),
    responses(
        (status = 200, description = "A page of entries", body = Page<LedgerEntry>),
        (status = 400, description = "Malformed parameters or cursor", body = Problem),
        (status = 403, description = "Role lacks ledger.read", body = Problem),
        (status = 404, description = "No such patient in your clinic, or an archived one", body = Problem)))]
pub async fn ledger(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(PatientPath { id }): ApiPath<PatientPath>,
    ApiQuery(p): ApiQuery<LedgerParams>,
) -> AppResult<Json<Page<LedgerEntry>>> {
    let event = || Event::new("ledger.read", "ledger").patient(id);
    let limit = pagination::limit(p.limit)?;
    let before: Option<(DateTime<Utc>, Uuid)> = state.cursors.decode_opt(p.cursor.as_deref())?;
    let (before_at, before_id) = before.unzip();
    let mut tx = patients::open_record(&state, &caller, id, Permission::LedgerRead, event).await?;
    let rows = sqlx::query_as!(
        LedgerEntry,
        r#"WITH e AS (
               SELECT t.id, t.kind, t.posted_at, t.procedure_id, t.payment_id, t.invoice_id,
                      t.reverses_id, t.memo, t.created_by, sum(l.amount_cents)::bigint AS amount_cents
               FROM ledger_lines l
               JOIN ledger_transactions t ON t.clinic_id = l.clinic_id AND t.id = l.transaction_id
               WHERE l.patient_id = $1 AND l.account IN ('receivable', 'patient_credit')
               GROUP BY t.clinic_id, t.id),
           r AS (
               SELECT e.*, sum(e.amount_cents) OVER (ORDER BY e.posted_at, e.id)::bigint AS balance_cents
               FROM e)
           SELECT id AS "id!", kind AS "kind!", amount_cents AS "amount_cents!", posted_at AS "posted_at!",
                  procedure_id, payment_id, invoice_id, reverses_id, memo, created_by,
                  balance_cents AS "balance_cents!"
           FROM r WHERE ($2::timestamptz IS NULL OR (posted_at, id) < ($2, $3))
           ORDER BY posted_at DESC, id DESC LIMIT $4"#,
        id,
        before_at,
        before_id,
        pagination::overfetch(limit)
    )
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    audit::record(&mut tx, &caller.audit(), event().ids(ids)).await?;
    tx.commit().await?;
    Ok(Json(
        state
            .cursors
            .page(rows, limit, |e: &LedgerEntry| (e.posted_at, e.id)),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Balance {
    /// What the patient owes net of their credit (the sum of their ledger entries);
    /// negative when their credit exceeds what they owe.
    balance_cents: i64,
    /// Their money not yet applied to an invoice.
    credit_cents: i64,
    /// The balance of the patient and of everyone whose `responsible_party_id` is them.
    family_balance_cents: i64,
}

/// The patient's balance, credit and family balance.
#[utoipa::path(get, path = "/patients/{id}/balance", tag = "billing", security(("bearer" = [])),
    params(PatientPath),
    responses(
        (status = 200, description = "The balance", body = Balance),
        (status = 403, description = "Role lacks ledger.read", body = Problem),
        (status = 404, description = "No such patient in your clinic, or an archived one", body = Problem)))]
pub async fn balance(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(PatientPath { id }): ApiPath<PatientPath>,
) -> AppResult<Json<Balance>> {
    let event = || Event::new("balance.read", "ledger").patient(id);
    let mut tx = patients::open_record(&state, &caller, id, Permission::LedgerRead, event).await?;
    let b = sqlx::query_as!(
        Balance,
        r#"SELECT
             coalesce(sum(l.amount_cents) FILTER (WHERE l.patient_id = $1), 0)::bigint AS "balance_cents!",
             coalesce(-sum(l.amount_cents) FILTER (WHERE l.patient_id = $1 AND l.account = 'patient_credit'), 0)::bigint
                 AS "credit_cents!",
             coalesce(sum(l.amount_cents), 0)::bigint AS "family_balance_cents!"
           FROM ledger_lines l
           WHERE l.account IN ('receivable', 'patient_credit')
             AND l.patient_id IN (SELECT p.id FROM patients p WHERE p.id = $1 OR p.responsible_party_id = $1)"#,
        id
    )
    .fetch_one(&mut *tx)
    .await?;
    audit::record(&mut tx, &caller.audit(), event()).await?;
    tx.commit().await?;
    Ok(Json(b))
}

//! `POST /adjustments`: discounts, write-offs and corrections of a patient's account,
//! posted against the clinic's adjustments account (owner, admin and billing).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::MAX_AMOUNT_CENTS;
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult, Problem};
use crate::http::idempotency::{self, Created, HashedJson, IdempotencyKey};
use crate::ledger::{self, Account, Entry};
use crate::state::AppState;
use crate::validate::Errors;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_adjustment))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"patient_id": "0193f5a0-0000-7000-8000-000000000003",
    "amount_cents": -1500, "reason": "Senior discount"}))]
pub struct NewAdjustment {
    /// A patient of your clinic (422 otherwise).
    patient_id: Uuid,
    /// Signed, not zero: negative lowers what the patient owes (a discount, a write-off),
    /// positive raises it.
    #[schema(minimum = -1_000_000_000_000_i64, maximum = 1_000_000_000_000_i64)]
    amount_cents: i64,
    #[schema(schema_with = crate::validate::schema::text_500)]
    reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Adjustment {
    /// The journal transaction (an entry of the patient's ledger).
    id: Uuid,
    patient_id: Uuid,
    amount_cents: i64,
    reason: String,
    posted_at: DateTime<Utc>,
    created_by: Uuid,
}

/// Adjusts a patient's account (owner, admin and billing).
#[utoipa::path(post, path = "/adjustments", tag = "billing", security(("bearer" = [])),
    params(IdempotencyKey),
    request_body = NewAdjustment,
    responses(
        (status = 201, description = "Posted", body = Adjustment, headers(("Location" = String))),
        (status = 403, description = "Role lacks adjustments.write", body = Problem),
        (status = 422, description = "A zero or too large amount, or an unknown patient", body = Problem)))]
pub async fn create_adjustment(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: HashedJson<NewAdjustment>,
) -> AppResult<Response> {
    let (hash, body) = (body.hash, body.value);
    let event = || Event::new("adjustment.create", "ledger").patient(body.patient_id);
    caller
        .authorize(&state, Permission::AdjustmentsWrite, event)
        .await?;
    let mut errors = Errors::default();
    if body.amount_cents == 0 || body.amount_cents.unsigned_abs() > MAX_AMOUNT_CENTS as u64 {
        errors.add(
            "amount_cents",
            format!("must not be zero, and at most {MAX_AMOUNT_CENTS} minor units either way"),
        );
    }
    let reason = errors.text("reason", &body.reason, 500);
    errors.finish()?;
    idempotency::run(&state, &caller, &headers, &hash, || async {
        let mut tx = caller.begin(&state).await?;
        crate::patients::ensure_exists(&mut tx, body.patient_id)
            .await
            .map_err(|_| AppError::validation("patient_id", "does not exist in your clinic"))?;
        let id = ledger::post(
            &mut tx,
            &caller,
            Entry {
                kind: "adjustment",
                patient_id: body.patient_id,
                payment_id: None,
                invoice_id: None,
                memo: Some(&reason),
                lines: vec![
                    (Account::Receivable(body.patient_id), body.amount_cents),
                    (Account::Adjustments, -body.amount_cents),
                ],
            },
        )
        .await?;
        let posted_at: DateTime<Utc> = sqlx::query_scalar!(
            "SELECT posted_at FROM ledger_transactions WHERE id = $1",
            id
        )
        .fetch_one(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            &caller.audit(),
            event()
                .resource(id)
                .details(serde_json::json!({ "amount_cents": body.amount_cents })),
        )
        .await?;
        Ok((
            tx,
            Created {
                location: format!("/api/v2/patients/{}/ledger", body.patient_id),
                version: None,
                value: Adjustment {
                    id,
                    patient_id: body.patient_id,
                    amount_cents: body.amount_cents,
                    reason: reason.clone(),
                    posted_at,
                    created_by: caller.user_id,
                },
            },
        ))
    })
    .await
}

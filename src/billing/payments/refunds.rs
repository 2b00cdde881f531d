//! Refunds of a payment, through the API and (from Stripe's events) `post_refund`: never
//! more than is left of the payment, from the payer's credit first, then from what the
//! payment paid on invoices, latest first.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{insert_allocations, load, require_key, Allocation, PaymentPath, Refund};
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::billing::{check_positive, lock_patient};
use crate::db::Tx;
use crate::error::{AppError, AppResult, Problem};
use crate::http::extract::ApiPath;
use crate::http::idempotency::{self, Created, HashedJson, RequiredIdempotencyKey};
use crate::ledger::{self, Account, Entry};
use crate::state::AppState;
use crate::validate::Errors;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(refund_payment))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"amount_cents": 2500, "reason": "Charged twice for the exam"}))]
pub struct NewRefund {
    /// At most what is left of the payment.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    amount_cents: i64,
    #[schema(schema_with = crate::validate::schema::text_500)]
    reason: String,
}

/// Refunds part or all of a payment (`Idempotency-Key` required): from the payer's credit
/// first, then from what the payment paid on invoices, latest first.
#[utoipa::path(post, path = "/payments/{id}/refund", tag = "billing", security(("bearer" = [])),
    params(PaymentPath, RequiredIdempotencyKey),
    request_body = NewRefund,
    responses(
        (status = 201, description = "Refunded", body = Refund, headers(("Location" = String))),
        (status = 400, description = "No Idempotency-Key", body = Problem),
        (status = 403, description = "Role lacks ledger.write", body = Problem),
        (status = 404, description = "No such payment in your clinic", body = Problem),
        (status = 409, description = "The same key is still being processed", body = Problem),
        (status = 422, description = "More than is left of the payment, or a reused key with another body", body = Problem)))]
pub async fn refund_payment(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(PaymentPath { id }): ApiPath<PaymentPath>,
    body: HashedJson<NewRefund>,
) -> AppResult<Response> {
    let (hash, body) = (body.hash, body.value);
    let event = || Event::new("refund.create", "payment").resource(id);
    caller
        .authorize(&state, Permission::LedgerWrite, event)
        .await?;
    require_key(&headers)?;
    let mut errors = Errors::default();
    check_positive("amount_cents", body.amount_cents, &mut errors);
    let reason = errors.text("reason", &body.reason, 500);
    errors.finish()?;
    idempotency::run(&state, &caller, &headers, &hash, || async {
        let mut tx = caller.begin(&state).await?;
        // Payments are insert-only, so the server's role cannot lock their rows: the
        // payer's row is the lock under which refunds (and whatever else spends the
        // payer's credit) run one at a time; the payment is read after it.
        let payer = sqlx::query_scalar!("SELECT patient_id FROM payments WHERE id = $1", id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| AppError::not_found("payment"))?;
        lock_patient(&mut tx, payer, "patient_id").await?;
        let payment = load(&mut tx, id).await?;
        if body.amount_cents > payment.refundable_cents {
            return Err(AppError::validation(
                "amount_cents",
                format!(
                    "exceeds what is left of the payment ({})",
                    payment.refundable_cents
                ),
            ));
        }
        // A card payment is refunded at Stripe first; the refund's id makes the
        // `charge.refunded` event that follows find it recorded.
        let stripe_refund = match crate::billing::stripe::intent_of_payment(&mut tx, id).await? {
            Some(intent) => {
                let clinic = crate::clinic::load(&mut tx, caller.clinic_id).await?;
                let account = crate::billing::stripe::connected_account(&clinic.settings);
                Some(
                    crate::billing::stripe::refund_at_stripe(
                        &state,
                        &caller,
                        &headers,
                        &intent,
                        body.amount_cents,
                        account.as_deref(),
                    )
                    .await?,
                )
            }
            None => None,
        };
        // A retry after a lost answer gets the same refund from Stripe (same key): when it
        // is recorded already (by the first try's event), that is the answer.
        if let Some(existing) = recorded_stripe_refund(&mut tx, stripe_refund.as_deref()).await? {
            return Ok((
                tx,
                Created {
                    location: format!("/api/v2/payments/{id}"),
                    version: None,
                    value: existing,
                },
            ));
        }
        let refund = post_refund(
            &mut tx,
            &caller,
            id,
            payment.patient_id,
            body.amount_cents,
            &reason,
            stripe_refund.as_deref(),
        )
        .await?;
        let refund_id = refund.id;
        audit::record(
            &mut tx,
            &caller.audit(),
            event().patient(payment.patient_id).details(
                serde_json::json!({ "refund_id": refund_id, "amount_cents": body.amount_cents }),
            ),
        )
        .await?;
        Ok((
            tx,
            Created {
                location: format!("/api/v2/payments/{id}"),
                version: None,
                value: refund,
            },
        ))
    })
    .await
}

/// The refund recorded with this Stripe refund id, if any.
async fn recorded_stripe_refund(tx: &mut Tx, stripe_id: Option<&str>) -> AppResult<Option<Refund>> {
    let Some(stripe_id) = stripe_id else {
        return Ok(None);
    };
    Ok(sqlx::query_as!(
        Refund,
        "SELECT id, payment_id, amount_cents, reason, created_by, created_at FROM refunds \
         WHERE stripe_refund_id = $1",
        stripe_id
    )
    .fetch_optional(&mut **tx)
    .await?)
}

/// Posts a refund of `amount` of a payment (what is left of it checked by the caller):
/// from the payer's credit first; the rest comes back from the payment's allocations, one
/// invoice after another, and those invoices are open again. The payer's row must be
/// locked.
pub async fn post_refund(
    tx: &mut Tx,
    caller: &Caller,
    id: Uuid,
    payer: Uuid,
    amount: i64,
    reason: &str,
    stripe_refund_id: Option<&str>,
) -> AppResult<Refund> {
    let payment = load(tx, id).await?;
    let credit = crate::billing::credit_of(tx, payer).await?;
    let from_credit = credit.clamp(0, amount);
    let mut rest = amount - from_credit;
    // A card payment made through Stripe is refunded from Stripe's clearing account,
    // where it went in (its method reads `card`), whether or not Stripe named the refund.
    let paid_into = match crate::billing::stripe::intent_of_payment(tx, id).await? {
        Some(_) => Account::StripeClearing,
        None => Account::for_method(payment.method.as_str()),
    };
    let mut lines = vec![
        (paid_into, -amount),
        (Account::PatientCredit(payer), from_credit),
    ];
    let mut taken_back = vec![];
    for a in payment.allocations.iter().rev() {
        if rest == 0 {
            break;
        }
        let take = a.amount_cents.min(rest);
        let invoice_patient: Uuid = sqlx::query_scalar!(
            "SELECT patient_id FROM invoices WHERE id = $1 FOR UPDATE",
            a.invoice_id
        )
        .fetch_one(&mut **tx)
        .await?;
        lines.push((Account::Receivable(invoice_patient), take));
        taken_back.push(Allocation {
            invoice_id: a.invoice_id,
            amount_cents: -take,
        });
        rest -= take;
    }
    // Credit the payer spent on other invoices since: they owe that again.
    lines.push((Account::Receivable(payer), rest));
    let transaction = ledger::post(
        tx,
        caller,
        Entry {
            kind: "refund",
            patient_id: payer,
            payment_id: Some(id),
            invoice_id: None,
            memo: Some(reason),
            lines,
        },
    )
    .await?;
    if !taken_back.is_empty() {
        insert_allocations(tx, caller, Some(id), transaction, &taken_back).await?;
    }
    Ok(sqlx::query_as!(
        Refund,
        "INSERT INTO refunds (clinic_id, id, payment_id, amount_cents, reason, transaction_id, created_by, stripe_refund_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         RETURNING id, payment_id, amount_cents, reason, created_by, created_at",
        caller.clinic_id,
        Uuid::now_v7(),
        id,
        amount,
        reason,
        transaction,
        caller.user_id,
        stripe_refund_id,
    )
    .fetch_one(&mut **tx)
    .await?)
}

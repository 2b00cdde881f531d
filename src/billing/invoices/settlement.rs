//! What becomes of an issued invoice besides payments: voided while nothing is paid on
//! it (its procedures can be billed again), or paid from the patient's credit.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{load, Invoice, InvoicePath, InvoiceRow, InvoiceStatus};
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::billing::payments::{
    check_allocations, insert_allocations, lock_invoice_row, Allocation,
};
use crate::billing::{check_positive, lock_patient};
use crate::error::{AppError, AppResult, OnConstraint, Problem};
use crate::http::extract::{ApiJson, ApiPath};
use crate::ledger::{self, Account, Entry};
use crate::state::AppState;
use crate::validate::Errors;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(void_invoice))
        .routes(routes!(apply_credit))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "Issued to the wrong patient"}))]
pub struct VoidInvoice {
    #[schema(schema_with = crate::validate::schema::text_500)]
    reason: String,
}

/// Voids an invoice on which nothing is paid; its procedures can be billed again.
#[utoipa::path(post, path = "/invoices/{id}/void", tag = "billing", security(("bearer" = [])),
    params(InvoicePath),
    request_body = VoidInvoice,
    responses(
        (status = 200, description = "Voided", body = Invoice),
        (status = 403, description = "Role lacks ledger.write", body = Problem),
        (status = 404, description = "No such invoice in your clinic", body = Problem),
        (status = 409, description = "Void already, or payments are allocated to it", body = Problem),
        (status = 422, description = "Missing reason", body = Problem)))]
pub async fn void_invoice(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(InvoicePath { id }): ApiPath<InvoicePath>,
    ApiJson(body): ApiJson<VoidInvoice>,
) -> AppResult<Json<Invoice>> {
    let event = || Event::new("invoice.void", "invoice").resource(id);
    caller
        .authorize(&state, Permission::LedgerWrite, event)
        .await?;
    let mut errors = Errors::default();
    let reason = errors.text("reason", &body.reason, 500);
    errors.finish()?;
    let mut tx = caller.begin(&state).await?;
    // Lock, then read what is paid: a payment that held the lock has committed its
    // allocations by then.
    if !lock_invoice_row(&mut tx, id).await? {
        return Err(AppError::not_found("invoice"));
    }
    let current = select_invoices!("WHERE i.id = $1", id)
        .fetch_one(&mut *tx)
        .await?;
    if current.voided_at.is_some() {
        return Err(AppError::conflict("the invoice is void already"));
    }
    if current.paid_cents != 0 {
        return Err(AppError::conflict(
            "payments are allocated to the invoice; refund them first",
        ));
    }
    sqlx::query!(
        "UPDATE invoices SET voided_at = now(), voided_by = $2, void_reason = $3 WHERE id = $1",
        id,
        caller.user_id,
        &reason
    )
    .execute(&mut *tx)
    .await
    .on_constraint("invoices_void_once", || {
        AppError::conflict("the invoice is void already")
    })?;
    sqlx::query!(
        "UPDATE invoice_lines SET live = false WHERE invoice_id = $1 AND live",
        id
    )
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &caller.audit(),
        event().patient(current.patient_id),
    )
    .await?;
    let invoice = load(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(invoice))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyCredit {
    /// Default: as much as the patient's credit and the invoice's open amount allow.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    amount_cents: Option<i64>,
}

/// Applies the invoice's patient's credit (an earlier overpayment) to it.
#[utoipa::path(post, path = "/invoices/{id}/apply-credit", tag = "billing", security(("bearer" = [])),
    params(InvoicePath),
    request_body = ApplyCredit,
    responses(
        (status = 200, description = "Applied", body = Invoice),
        (status = 403, description = "Role lacks ledger.write", body = Problem),
        (status = 404, description = "No such invoice in your clinic", body = Problem),
        (status = 409, description = "The invoice is void or paid", body = Problem),
        (status = 422, description = "More than the credit or the open amount, or no credit", body = Problem)))]
pub async fn apply_credit(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(InvoicePath { id }): ApiPath<InvoicePath>,
    ApiJson(body): ApiJson<ApplyCredit>,
) -> AppResult<Json<Invoice>> {
    let event = || Event::new("invoice.apply_credit", "invoice").resource(id);
    caller
        .authorize(&state, Permission::LedgerWrite, event)
        .await?;
    if let Some(a) = body.amount_cents {
        let mut errors = Errors::default();
        check_positive("amount_cents", a, &mut errors);
        errors.finish()?;
    }
    let mut tx = caller.begin(&state).await?;
    let patient: Uuid = sqlx::query_scalar!("SELECT patient_id FROM invoices WHERE id = $1", id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| AppError::not_found("invoice"))?;
    // The patient first, then the invoice: the order payments and refunds lock in too.
    lock_patient(&mut tx, patient, "patient_id").await?;
    let current = load(&mut tx, id).await?;
    if current.status != InvoiceStatus::Open {
        return Err(AppError::conflict("only an open invoice takes credit"));
    }
    let credit = crate::billing::credit_of(&mut tx, patient).await?;
    let amount = body
        .amount_cents
        .unwrap_or_else(|| credit.min(current.open_cents));
    if amount <= 0 {
        return Err(AppError::validation(
            "amount_cents",
            "the patient has no credit",
        ));
    }
    if amount > credit {
        return Err(AppError::validation(
            "amount_cents",
            format!("exceeds the patient's credit ({credit})"),
        ));
    }
    let allocation = Allocation {
        invoice_id: id,
        amount_cents: amount,
    };
    check_allocations(
        &mut tx,
        patient,
        std::slice::from_ref(&allocation),
        "amount_cents",
    )
    .await
    .map_err(|e| match e {
        AppError::Validation(_) => AppError::validation(
            "amount_cents",
            format!(
                "exceeds what is open on the invoice ({})",
                current.open_cents
            ),
        ),
        other => other,
    })?;
    let transaction = ledger::post(
        &mut tx,
        &caller,
        Entry {
            kind: "credit_applied",
            patient_id: patient,
            payment_id: None,
            invoice_id: Some(id),
            memo: None,
            lines: vec![
                (Account::PatientCredit(patient), amount),
                (Account::Receivable(patient), -amount),
            ],
        },
    )
    .await?;
    insert_allocations(&mut tx, &caller, None, transaction, &[allocation]).await?;
    audit::record(
        &mut tx,
        &caller.audit(),
        event()
            .patient(patient)
            .details(serde_json::json!({ "amount_cents": amount })),
    )
    .await?;
    let invoice = load(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(invoice))
}

//! Payments (`/payments`) and their refunds. A payment's money goes to the invoices it is
//! allocated to; what is left over is the payer's credit. A refund gives money back, never
//! more than is left of the payment, taking it first from the payer's credit and then
//! back from the payment's allocations (so the invoices it paid are open again).
//!
//! Here: payments and their allocations; [`refunds`]: refunds, by the API and by Stripe.

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

use super::{check_positive, Method};
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::db::Tx;
use crate::error::{AppError, AppResult, Problem};
use crate::http::extract::{ApiPath, ApiQuery};
use crate::http::idempotency::{self, Created, HashedJson, RequiredIdempotencyKey};
use crate::http::pagination::{self, Limit, Page};
use crate::ledger::{self, Account, Entry};
use crate::state::AppState;
use crate::validate::Errors;

mod refunds;
pub use refunds::post_refund;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_payments, create_payment))
        .routes(routes!(get_payment))
        .merge(refunds::router())
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Allocation {
    /// An open invoice of the payer or of a patient they are the responsible party of.
    pub invoice_id: Uuid,
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    pub amount_cents: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Refund {
    id: Uuid,
    payment_id: Uuid,
    amount_cents: i64,
    reason: String,
    created_by: Uuid,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Payment {
    id: Uuid,
    patient_id: Uuid,
    amount_cents: i64,
    method: Method,
    received_at: DateTime<Utc>,
    reference: Option<String>,
    /// Net of what refunds took back.
    allocations: Vec<Allocation>,
    refunds: Vec<Refund>,
    /// What is left of the payment to refund.
    refundable_cents: i64,
    created_by: Uuid,
    created_at: DateTime<Utc>,
}

struct PaymentRow {
    id: Uuid,
    patient_id: Uuid,
    amount_cents: i64,
    method: String,
    received_at: DateTime<Utc>,
    reference: Option<String>,
    created_by: Uuid,
    created_at: DateTime<Utc>,
}

async fn assemble(tx: &mut Tx, rows: Vec<PaymentRow>) -> AppResult<Vec<Payment>> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let allocations = sqlx::query!(
        r#"SELECT payment_id AS "payment_id!", invoice_id, sum(amount_cents)::bigint AS "amount_cents!"
           FROM allocations WHERE payment_id = ANY($1)
           GROUP BY payment_id, invoice_id HAVING sum(amount_cents) <> 0 ORDER BY invoice_id"#,
        &ids
    )
    .fetch_all(&mut **tx)
    .await?;
    let refunds = sqlx::query_as!(
        Refund,
        "SELECT id, payment_id, amount_cents, reason, created_by, created_at FROM refunds \
         WHERE payment_id = ANY($1) ORDER BY created_at, id",
        &ids
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut refunds_by: std::collections::HashMap<Uuid, Vec<Refund>> = Default::default();
    for r in refunds {
        refunds_by.entry(r.payment_id).or_default().push(r);
    }
    Ok(rows
        .into_iter()
        .map(|r| {
            let refunds = refunds_by.remove(&r.id).unwrap_or_default();
            let refunded: i64 = refunds.iter().map(|f| f.amount_cents).sum();
            Payment {
                allocations: allocations
                    .iter()
                    .filter(|a| a.payment_id == r.id)
                    .map(|a| Allocation {
                        invoice_id: a.invoice_id,
                        amount_cents: a.amount_cents,
                    })
                    .collect(),
                refundable_cents: r.amount_cents - refunded,
                refunds,
                id: r.id,
                patient_id: r.patient_id,
                amount_cents: r.amount_cents,
                method: Method::parse(&r.method),
                received_at: r.received_at,
                reference: r.reference,
                created_by: r.created_by,
                created_at: r.created_at,
            }
        })
        .collect())
}

async fn load(tx: &mut Tx, id: Uuid) -> AppResult<Payment> {
    let row = sqlx::query_as!(
        PaymentRow,
        "SELECT id, patient_id, amount_cents, method, received_at, reference, created_by, created_at \
         FROM payments WHERE id = $1",
        id
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| AppError::not_found("payment"))?;
    assemble(tx, vec![row])
        .await?
        .pop()
        .ok_or_else(|| AppError::not_found("payment"))
}

/// Financial writes need a key: a retried payment must never be taken twice.
fn require_key(headers: &HeaderMap) -> AppResult<()> {
    if headers.contains_key("idempotency-key") {
        Ok(())
    } else {
        Err(AppError::BadRequest(
            "an Idempotency-Key header is required: a retried payment or refund must not count twice"
                .into(),
        ))
    }
}

/// An invoice's patient and what is still open on it, locked for the transaction.
struct OpenInvoice {
    patient_id: Uuid,
    void: bool,
    open_cents: i64,
}

async fn lock_invoice(tx: &mut Tx, id: Uuid) -> AppResult<Option<OpenInvoice>> {
    if !lock_invoice_row(tx, id).await? {
        return Ok(None);
    }
    // Read after the lock, in a statement of its own: a statement that waits for the lock
    // still sees the allocations as of its start, and would miss those of the payment
    // that held it.
    Ok(sqlx::query_as!(
        OpenInvoice,
        r#"SELECT i.patient_id, i.voided_at IS NOT NULL AS "void!",
                  ((SELECT coalesce(sum(fee_cents), 0) FROM invoice_lines l
                    WHERE l.clinic_id = i.clinic_id AND l.invoice_id = i.id)
                 - (SELECT coalesce(sum(amount_cents), 0) FROM allocations a
                    WHERE a.clinic_id = i.clinic_id AND a.invoice_id = i.id))::bigint AS "open_cents!"
           FROM invoices i WHERE i.id = $1"#,
        id
    )
    .fetch_optional(&mut **tx)
    .await?)
}

/// Locks an invoice's row for the transaction; false when there is no such invoice. What
/// decides on its paid amount reads it afterwards, in a statement of its own.
pub async fn lock_invoice_row(tx: &mut Tx, id: Uuid) -> AppResult<bool> {
    Ok(
        sqlx::query_scalar!("SELECT id FROM invoices WHERE id = $1 FOR UPDATE", id)
            .fetch_optional(&mut **tx)
            .await?
            .is_some(),
    )
}

/// Checks allocations against their invoices (locked, in id order so that concurrent
/// payments cannot deadlock) and returns each invoice's patient.
pub async fn check_allocations(
    tx: &mut Tx,
    payer: Uuid,
    allocations: &[Allocation],
    field: &str,
) -> AppResult<Vec<Uuid>> {
    let mut order: Vec<usize> = (0..allocations.len()).collect();
    order.sort_by_key(|i| allocations[*i].invoice_id);
    let family: Vec<Uuid> = sqlx::query_scalar!(
        "SELECT id FROM patients WHERE id = $1 OR responsible_party_id = $1",
        payer
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut patients = vec![Uuid::nil(); allocations.len()];
    let mut errors = Errors::default();
    for n in order {
        let a = &allocations[n];
        match lock_invoice(tx, a.invoice_id).await? {
            None => errors.add(
                format!("{field}[{n}].invoice_id"),
                "does not exist in your clinic",
            ),
            Some(i) if i.void => errors.add(format!("{field}[{n}].invoice_id"), "is void"),
            Some(i) if !family.contains(&i.patient_id) => errors.add(
                format!("{field}[{n}].invoice_id"),
                "is not the payer's nor of a patient they are responsible for",
            ),
            Some(i) if a.amount_cents > i.open_cents => errors.add(
                format!("{field}[{n}].amount_cents"),
                format!("exceeds what is open on the invoice ({})", i.open_cents),
            ),
            Some(i) => patients[n] = i.patient_id,
        }
    }
    errors.finish()?;
    Ok(patients)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"patient_id": "0193f5a0-0000-7000-8000-000000000003",
    "amount_cents": 12500, "method": "card"}))]
pub struct NewPayment {
    /// Who pays (a patient of your clinic: 422 otherwise).
    patient_id: Uuid,
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    amount_cents: i64,
    method: Method,
    /// Default now.
    received_at: Option<DateTime<Utc>>,
    #[schema(schema_with = crate::validate::schema::text_200_or_null)]
    reference: Option<String>,
    /// Open invoices of the payer (or of patients they are responsible for) and how much
    /// of the payment goes to each: together at most the payment, each at most what is
    /// open on its invoice. The rest is the payer's credit.
    #[serde(default)]
    #[schema(max_items = 100)]
    allocations: Vec<Allocation>,
}

/// Records a payment (`Idempotency-Key` required).
#[utoipa::path(post, path = "/payments", tag = "billing", security(("bearer" = [])),
    params(RequiredIdempotencyKey),
    request_body = NewPayment,
    responses(
        (status = 201, description = "Recorded", body = Payment, headers(("Location" = String))),
        (status = 400, description = "No Idempotency-Key", body = Problem),
        (status = 403, description = "Role lacks ledger.write", body = Problem),
        (status = 409, description = "The same key is still being processed", body = Problem),
        (status = 422, description = "Invalid amounts or allocations, an unknown patient or invoice, or a reused key with another body", body = Problem)))]
pub async fn create_payment(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: HashedJson<NewPayment>,
) -> AppResult<Response> {
    let (hash, body) = (body.hash, body.value);
    let event = || Event::new("payment.create", "payment").patient(body.patient_id);
    caller
        .authorize(&state, Permission::LedgerWrite, event)
        .await?;
    require_key(&headers)?;
    let mut errors = Errors::default();
    check_positive("amount_cents", body.amount_cents, &mut errors);
    let reference = body
        .reference
        .as_deref()
        .map(|r| errors.text("reference", r, 200));
    if body
        .received_at
        .is_some_and(|t| !crate::validate::storable(t))
    {
        errors.add("received_at", crate::validate::UNSTORABLE_INSTANT);
    }
    if body.allocations.len() > 100 {
        errors.add("allocations", "at most 100 allocations");
    }
    let mut seen = std::collections::HashSet::new();
    for (n, a) in body.allocations.iter().enumerate() {
        check_positive(
            &format!("allocations[{n}].amount_cents"),
            a.amount_cents,
            &mut errors,
        );
        if !seen.insert(a.invoice_id) {
            errors.add(format!("allocations[{n}].invoice_id"), "is listed twice");
        }
    }
    let allocated: i64 = body
        .allocations
        .iter()
        .map(|a| a.amount_cents.clamp(0, super::MAX_AMOUNT_CENTS))
        .sum();
    if allocated > body.amount_cents {
        errors.add("allocations", "together exceed the payment");
    }
    errors.finish()?;
    idempotency::run(&state, &caller, &headers, &hash, || async {
        let mut tx = caller.begin(&state).await?;
        crate::patients::ensure_exists(&mut tx, body.patient_id)
            .await
            .map_err(|_| AppError::validation("patient_id", "does not exist in your clinic"))?;
        let invoice_patients =
            check_allocations(&mut tx, body.patient_id, &body.allocations, "allocations").await?;
        let payment_id = Uuid::now_v7();
        let mut lines = vec![(Account::for_method(body.method.as_str()), body.amount_cents)];
        for (a, p) in body.allocations.iter().zip(&invoice_patients) {
            lines.push((Account::Receivable(*p), -a.amount_cents));
        }
        lines.push((
            Account::PatientCredit(body.patient_id),
            -(body.amount_cents - allocated),
        ));
        let transaction = ledger::post(
            &mut tx,
            &caller,
            Entry {
                kind: "payment",
                patient_id: body.patient_id,
                payment_id: Some(payment_id),
                invoice_id: None,
                memo: reference.as_deref(),
                lines,
            },
        )
        .await?;
        sqlx::query!(
            "INSERT INTO payments (clinic_id, id, patient_id, amount_cents, method, received_at, reference, \
             transaction_id, created_by) VALUES ($1, $2, $3, $4, $5, coalesce($6, now()), $7, $8, $9)",
            caller.clinic_id,
            payment_id,
            body.patient_id,
            body.amount_cents,
            body.method.as_str(),
            body.received_at,
            reference.as_deref(),
            transaction,
            caller.user_id,
        )
        .execute(&mut *tx)
        .await?;
        insert_allocations(&mut tx, &caller, Some(payment_id), transaction, &body.allocations)
            .await?;
        audit::record(
            &mut tx,
            &caller.audit(),
            event().resource(payment_id).details(serde_json::json!({
                "amount_cents": body.amount_cents, "allocated_cents": allocated
            })),
        )
        .await?;
        let value = load(&mut tx, payment_id).await?;
        Ok((
            tx,
            Created {
                location: format!("/api/v2/payments/{payment_id}"),
                version: None,
                value,
            },
        ))
    })
    .await
}

pub async fn insert_allocations(
    tx: &mut Tx,
    caller: &Caller,
    payment: Option<Uuid>,
    transaction: Uuid,
    allocations: &[Allocation],
) -> AppResult<()> {
    let ids: Vec<Uuid> = allocations.iter().map(|_| Uuid::now_v7()).collect();
    let invoices: Vec<Uuid> = allocations.iter().map(|a| a.invoice_id).collect();
    let amounts: Vec<i64> = allocations.iter().map(|a| a.amount_cents).collect();
    sqlx::query!(
        "INSERT INTO allocations (clinic_id, id, invoice_id, amount_cents, payment_id, transaction_id) \
         SELECT $1, *, $5, $6 FROM UNNEST($2::uuid[], $3::uuid[], $4::bigint[])",
        caller.clinic_id,
        &ids,
        &invoices,
        &amounts,
        payment,
        transaction,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PaymentParams {
    /// Only this patient's payments.
    patient_id: Option<Uuid>,
    /// Received at or after this instant.
    from: Option<DateTime<Utc>>,
    /// Received before this instant.
    to: Option<DateTime<Utc>>,
    /// Page size (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200, default = 50)]
    limit: Option<Limit>,
    /// The `next_cursor` of the previous page.
    #[param(min_length = 1, pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

/// Payments, newest first.
#[utoipa::path(get, path = "/payments", tag = "billing", security(("bearer" = [])),
    params(PaymentParams),
    responses(
        (status = 200, description = "A page of payments", body = Page<Payment>),
        (status = 400, description = "Malformed parameters or cursor", body = Problem),
        (status = 403, description = "Role lacks ledger.read", body = Problem)))]
pub async fn list_payments(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<PaymentParams>,
) -> AppResult<Json<Page<Payment>>> {
    let event = || Event::new("payment.list", "payment");
    caller
        .authorize(&state, Permission::LedgerRead, event)
        .await?;
    let limit = pagination::limit(p.limit)?;
    crate::validate::storable_param("from", p.from)?;
    crate::validate::storable_param("to", p.to)?;
    let before: Option<(DateTime<Utc>, Uuid)> = state.cursors.decode_opt(p.cursor.as_deref())?;
    let (before_at, before_id) = before.unzip();
    let mut tx = caller.begin(&state).await?;
    let rows = sqlx::query_as!(
        PaymentRow,
        "SELECT id, patient_id, amount_cents, method, received_at, reference, created_by, created_at \
         FROM payments WHERE ($1::uuid IS NULL OR patient_id = $1) \
           AND ($2::timestamptz IS NULL OR received_at >= $2) AND ($3::timestamptz IS NULL OR received_at < $3) \
           AND ($4::timestamptz IS NULL OR (received_at, id) < ($4, $5)) \
         ORDER BY received_at DESC, id DESC LIMIT $6",
        p.patient_id,
        p.from,
        p.to,
        before_at,
        before_id,
        pagination::overfetch(limit)
    )
    .fetch_all(&mut *tx)
    .await?;
    let payments = assemble(&mut tx, rows).await?;
    let ids: Vec<Uuid> = payments.iter().map(|p| p.id).collect();
    let mut e = event().ids(ids);
    if let Some(patient) = p.patient_id {
        e = e.patient(patient);
    }
    audit::record(&mut tx, &caller.audit(), e).await?;
    tx.commit().await?;
    Ok(Json(state.cursors.page(payments, limit, |p: &Payment| {
        (p.received_at, p.id)
    })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PaymentPath {
    /// The payment's id.
    id: Uuid,
}

/// One payment with its allocations and refunds.
#[utoipa::path(get, path = "/payments/{id}", tag = "billing", security(("bearer" = [])),
    params(PaymentPath),
    responses(
        (status = 200, description = "The payment", body = Payment),
        (status = 403, description = "Role lacks ledger.read", body = Problem),
        (status = 404, description = "No such payment in your clinic", body = Problem)))]
pub async fn get_payment(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(PaymentPath { id }): ApiPath<PaymentPath>,
) -> AppResult<Json<Payment>> {
    let event = || Event::new("payment.read", "payment").resource(id);
    caller
        .authorize(&state, Permission::LedgerRead, event)
        .await?;
    let mut tx = caller.begin(&state).await?;
    let payment = load(&mut tx, id).await?;
    audit::record(
        &mut tx,
        &caller.audit(),
        event().patient(payment.patient_id),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(payment))
}

/// An open invoice's patient and open amount, locked; `None` when it does not exist or
/// is void.
pub async fn open_amount(tx: &mut Tx, id: Uuid) -> AppResult<Option<(Uuid, i64)>> {
    Ok(lock_invoice(tx, id)
        .await?
        .filter(|i| !i.void)
        .map(|i| (i.patient_id, i.open_cents)))
}

//! Invoices (`/invoices`): lines copied from completed procedures, a number gap-free per
//! clinic and year (`2027-000042`), paid and open amounts from the allocations, voiding
//! while nothing is paid on it, and applying a patient's credit to it.
//!
//! Here: issuing and reading; [`settlement`]: voiding and applying credit.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::db::Tx;
use crate::error::{AppError, AppResult, OnConstraint, Problem};
use crate::http::extract::{ApiPath, ApiQuery};
use crate::http::idempotency::{self, Created, HashedJson, IdempotencyKey};
use crate::http::pagination::{self, Limit, Page};
use crate::state::AppState;
use crate::validate::Errors;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_invoices, create_invoice))
        .routes(routes!(get_invoice))
        .merge(settlement::router())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    Open,
    Paid,
    Void,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvoiceLine {
    line_no: i32,
    procedure_id: Uuid,
    code: String,
    description: String,
    /// FDI.
    tooth: Option<String>,
    surfaces: Vec<String>,
    fee_cents: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Invoice {
    id: Uuid,
    /// Gap-free per clinic and year: `2027-000042`.
    number: String,
    patient_id: Uuid,
    issued_at: DateTime<Utc>,
    lines: Vec<InvoiceLine>,
    /// Σ of the lines.
    total_cents: i64,
    /// Σ of what payments and credit applied to it (net of refunds).
    paid_cents: i64,
    open_cents: i64,
    status: InvoiceStatus,
    voided_at: Option<DateTime<Utc>>,
    void_reason: Option<String>,
    created_by: Uuid,
}

struct InvoiceRow {
    id: Uuid,
    number: String,
    patient_id: Uuid,
    issued_at: DateTime<Utc>,
    voided_at: Option<DateTime<Utc>>,
    void_reason: Option<String>,
    created_by: Uuid,
    paid_cents: i64,
}

macro_rules! select_invoices {
    ($where:literal $(, $arg:expr)*) => {
        sqlx::query_as!(
            InvoiceRow,
            r#"SELECT i.id, i.number AS "number!", i.patient_id, i.issued_at, i.voided_at, i.void_reason,
                      i.created_by,
                      (SELECT coalesce(sum(a.amount_cents), 0) FROM allocations a
                       WHERE a.clinic_id = i.clinic_id AND a.invoice_id = i.id)::bigint AS "paid_cents!"
               FROM invoices i "# + $where
            $(, $arg)*
        )
    };
}

async fn assemble(tx: &mut Tx, rows: Vec<InvoiceRow>) -> AppResult<Vec<Invoice>> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let lines = sqlx::query!(
        "SELECT invoice_id, line_no, procedure_id, code, description, tooth::text AS tooth, surfaces, \
         fee_cents FROM invoice_lines WHERE invoice_id = ANY($1) ORDER BY invoice_id, line_no",
        &ids
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let lines: Vec<InvoiceLine> = lines
                .iter()
                .filter(|l| l.invoice_id == r.id)
                .map(|l| InvoiceLine {
                    line_no: l.line_no,
                    procedure_id: l.procedure_id,
                    code: l.code.clone(),
                    description: l.description.clone(),
                    tooth: l.tooth.clone(),
                    surfaces: l.surfaces.clone(),
                    fee_cents: l.fee_cents,
                })
                .collect();
            let total: i64 = lines.iter().map(|l| l.fee_cents).sum();
            let status = if r.voided_at.is_some() {
                InvoiceStatus::Void
            } else if r.paid_cents >= total {
                InvoiceStatus::Paid
            } else {
                InvoiceStatus::Open
            };
            Invoice {
                id: r.id,
                number: r.number,
                patient_id: r.patient_id,
                issued_at: r.issued_at,
                total_cents: total,
                paid_cents: r.paid_cents,
                open_cents: if r.voided_at.is_some() {
                    0
                } else {
                    total - r.paid_cents
                },
                lines,
                status,
                voided_at: r.voided_at,
                void_reason: r.void_reason,
                created_by: r.created_by,
            }
        })
        .collect())
}

async fn load(tx: &mut Tx, id: Uuid) -> AppResult<Invoice> {
    let row = select_invoices!("WHERE i.id = $1", id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| AppError::not_found("invoice"))?;
    assemble(tx, vec![row])
        .await?
        .pop()
        .ok_or_else(|| AppError::not_found("invoice"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InvoiceParams {
    /// Only this patient's invoices.
    patient_id: Option<Uuid>,
    /// Page size (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200, default = 50)]
    limit: Option<Limit>,
    /// The `next_cursor` of the previous page.
    #[param(min_length = 1, pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

/// Invoices, newest first.
#[utoipa::path(get, path = "/invoices", tag = "billing", security(("bearer" = [])),
    params(InvoiceParams),
    responses(
        (status = 200, description = "A page of invoices", body = Page<Invoice>),
        (status = 400, description = "Malformed parameters or cursor", body = Problem),
        (status = 403, description = "Role lacks ledger.read", body = Problem)))]
pub async fn list_invoices(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<InvoiceParams>,
) -> AppResult<Json<Page<Invoice>>> {
    let event = || Event::new("invoice.list", "invoice");
    caller
        .authorize(&state, Permission::LedgerRead, event)
        .await?;
    let limit = pagination::limit(p.limit)?;
    let before: Option<(DateTime<Utc>, Uuid)> = state.cursors.decode_opt(p.cursor.as_deref())?;
    let (before_at, before_id) = before.unzip();
    let mut tx = caller.begin(&state).await?;
    let rows = select_invoices!(
        "WHERE ($1::uuid IS NULL OR i.patient_id = $1) \
         AND ($2::timestamptz IS NULL OR (i.issued_at, i.id) < ($2, $3)) \
         ORDER BY i.issued_at DESC, i.id DESC LIMIT $4",
        p.patient_id,
        before_at,
        before_id,
        pagination::overfetch(limit)
    )
    .fetch_all(&mut *tx)
    .await?;
    let invoices = assemble(&mut tx, rows).await?;
    let ids: Vec<Uuid> = invoices.iter().map(|i| i.id).collect();
    let mut e = event().ids(ids);
    if let Some(patient) = p.patient_id {
        e = e.patient(patient);
    }
    audit::record(&mut tx, &caller.audit(), e).await?;
    tx.commit().await?;
    Ok(Json(
        state
            .cursors
            .page(invoices, limit, |i: &Invoice| (i.issued_at, i.id)),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"patient_id": "0193f5a0-0000-7000-8000-000000000003"}))]
pub struct NewInvoice {
    /// A patient of your clinic (422 otherwise).
    patient_id: Uuid,
    /// The patient's completed procedures to bill (not reversed, not on a live invoice);
    /// default all of them.
    #[schema(max_items = 500)]
    procedure_ids: Option<Vec<Uuid>>,
}

/// Issues an invoice for completed procedures.
#[utoipa::path(post, path = "/invoices", tag = "billing", security(("bearer" = [])),
    params(IdempotencyKey),
    request_body = NewInvoice,
    responses(
        (status = 201, description = "Issued", body = Invoice, headers(("Location" = String))),
        (status = 403, description = "Role lacks ledger.write", body = Problem),
        (status = 409, description = "A procedure went on another invoice meanwhile", body = Problem),
        (status = 422, description = "An unknown patient, nothing to bill, or a procedure that cannot be billed", body = Problem)))]
pub async fn create_invoice(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: HashedJson<NewInvoice>,
) -> AppResult<Response> {
    let (hash, body) = (body.hash, body.value);
    let event = || Event::new("invoice.create", "invoice").patient(body.patient_id);
    caller
        .authorize(&state, Permission::LedgerWrite, event)
        .await?;
    if body.procedure_ids.as_ref().is_some_and(|p| p.len() > 500) {
        return Err(AppError::validation(
            "procedure_ids",
            "at most 500 procedures",
        ));
    }
    idempotency::run(&state, &caller, &headers, &hash, || async {
        let mut tx = caller.begin(&state).await?;
        crate::patients::ensure_exists(&mut tx, body.patient_id)
            .await
            .map_err(|_| AppError::validation("patient_id", "does not exist in your clinic"))?;
        // What can be billed: the patient's completed, not reversed procedures that are on
        // no live invoice.
        let billable = sqlx::query!(
            "SELECT p.id FROM procedures p WHERE p.patient_id = $1 AND p.status = 'completed' \
             AND p.reversed_at IS NULL AND NOT EXISTS (SELECT 1 FROM invoice_lines l \
                 WHERE l.clinic_id = p.clinic_id AND l.procedure_id = p.id AND l.live) \
             ORDER BY p.completed_on, p.id FOR SHARE OF p",
            body.patient_id
        )
        .fetch_all(&mut *tx)
        .await?;
        let billable: Vec<Uuid> = billable.into_iter().map(|r| r.id).collect();
        let chosen = match &body.procedure_ids {
            None => billable.clone(),
            Some(ids) => {
                let mut errors = Errors::default();
                for (n, id) in ids.iter().enumerate() {
                    if !billable.contains(id) || ids[..n].contains(id) {
                        errors.add(
                            format!("procedure_ids[{n}]"),
                            "is not a completed procedure of this patient that is still to be billed",
                        );
                    }
                }
                errors.finish()?;
                ids.clone()
            }
        };
        if chosen.is_empty() {
            return Err(AppError::validation(
                "procedure_ids",
                "the patient has no completed procedure to bill",
            ));
        }
        let tz = crate::clinic::timezone(&state, &mut tx, caller.clinic_id).await?;
        let year = Utc::now().with_timezone(&tz).year();
        // The counter row stays locked until commit: numbers are gap-free.
        let seq: i32 = sqlx::query_scalar!(
            "INSERT INTO invoice_counters (clinic_id, year, last) VALUES ($1, $2, 1) \
             ON CONFLICT (clinic_id, year) DO UPDATE SET last = invoice_counters.last + 1 RETURNING last",
            caller.clinic_id,
            year
        )
        .fetch_one(&mut *tx)
        .await?;
        let invoice_id = Uuid::now_v7();
        sqlx::query!(
            "INSERT INTO invoices (clinic_id, id, year, seq, patient_id, created_by) VALUES ($1, $2, $3, $4, $5, $6)",
            caller.clinic_id,
            invoice_id,
            year,
            seq,
            body.patient_id,
            caller.user_id,
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "INSERT INTO invoice_lines (clinic_id, invoice_id, line_no, procedure_id, code, description, \
             tooth, surfaces, fee_cents) \
             SELECT p.clinic_id, $1, c.n::int, p.id, k.code, k.description, p.tooth, p.surfaces, p.fee_cents \
             FROM UNNEST($2::uuid[]) WITH ORDINALITY AS c(id, n) \
             JOIN procedures p ON p.id = c.id \
             JOIN procedure_codes k ON k.clinic_id = p.clinic_id AND k.id = p.procedure_code_id",
            invoice_id,
            &chosen,
        )
        .execute(&mut *tx)
        .await
        .on_constraint("invoice_lines_one_live", || {
            AppError::conflict("a procedure went on another invoice meanwhile; try again")
        })?;
        audit::record(&mut tx, &caller.audit(), event().resource(invoice_id)).await?;
        let value = load(&mut tx, invoice_id).await?;
        Ok((
            tx,
            Created {
                location: format!("/api/v2/invoices/{invoice_id}"),
                version: None,
                value,
            },
        ))
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct InvoicePath {
    /// The invoice's id.
    id: Uuid,
}

/// A printable invoice (in the document, binary content of type `application/pdf`).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct InvoicePdf(Vec<u8>);

/// One invoice; with `Accept: application/pdf`, a printable PDF of it.
#[utoipa::path(get, path = "/invoices/{id}", tag = "billing", security(("bearer" = [])),
    params(InvoicePath),
    responses(
        (status = 200, description = "The invoice, as JSON or (with `Accept: application/pdf`) a printable PDF",
            content((Invoice = "application/json"), (InvoicePdf = "application/pdf"))),
        (status = 403, description = "Role lacks ledger.read", body = Problem),
        (status = 404, description = "No such invoice in your clinic", body = Problem)))]
pub async fn get_invoice(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(InvoicePath { id }): ApiPath<InvoicePath>,
) -> AppResult<Response> {
    let event = || Event::new("invoice.read", "invoice").resource(id);
    caller
        .authorize(&state, Permission::LedgerRead, event)
        .await?;
    let wants_pdf = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.to_ascii_lowercase().contains("application/pdf"));
    let mut tx = caller.begin(&state).await?;
    let invoice = load(&mut tx, id).await?;
    let printed = if wants_pdf {
        let clinic = crate::clinic::load(&mut tx, caller.clinic_id).await?;
        let patient = crate::patients::load(&mut tx, invoice.patient_id, false).await?;
        Some(printable(&clinic, &patient, &invoice))
    } else {
        None
    };
    audit::record(
        &mut tx,
        &caller.audit(),
        event()
            .patient(invoice.patient_id)
            .details(serde_json::json!({ "pdf": wants_pdf })),
    )
    .await?;
    tx.commit().await?;
    Ok(match printed {
        Some(bytes) => (
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "application/pdf".to_owned(),
                ),
                (
                    axum::http::header::CONTENT_DISPOSITION,
                    format!("inline; filename=\"invoice-{}.pdf\"", invoice.number),
                ),
            ],
            bytes,
        )
            .into_response(),
        None => Json(invoice).into_response(),
    })
}

fn printable(
    clinic: &crate::clinic::Clinic,
    patient: &crate::patients::Patient,
    invoice: &Invoice,
) -> Vec<u8> {
    let tz: chrono_tz::Tz = clinic.timezone.parse().unwrap_or(chrono_tz::UTC);
    let exponent = iso_currency::Currency::from_code(&clinic.currency)
        .and_then(|c| c.exponent())
        .unwrap_or(2) as u32;
    let mut clinic_lines = vec![];
    if let Some(a) = &clinic.address {
        clinic_lines.extend(a.line1.clone());
        clinic_lines.extend(a.line2.clone());
        let city = [a.postal_code.clone(), a.city.clone()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        if !city.is_empty() {
            clinic_lines.push(city);
        }
    }
    clinic_lines.extend(clinic.phone.clone());
    let patient_name = format!("{} {}", patient.first_name, patient.last_name);
    super::pdf::render(&super::pdf::PrintedInvoice {
        clinic_name: &clinic.name,
        clinic_lines,
        patient_name: &patient_name,
        number: &invoice.number,
        issued_on: invoice
            .issued_at
            .with_timezone(&tz)
            .format("%Y-%m-%d")
            .to_string(),
        currency: &clinic.currency,
        exponent,
        lines: invoice
            .lines
            .iter()
            .map(|l| {
                let tooth = match (&l.tooth, l.surfaces.is_empty()) {
                    (Some(t), true) => t.clone(),
                    (Some(t), false) => format!("{t} {}", l.surfaces.join("")),
                    (None, _) => String::new(),
                };
                (l.code.clone(), l.description.clone(), tooth, l.fee_cents)
            })
            .collect(),
        total_cents: invoice.total_cents,
        paid_cents: invoice.paid_cents,
        void: invoice.status == InvoiceStatus::Void,
    })
}

// After `select_invoices!`, which it uses.
mod settlement;

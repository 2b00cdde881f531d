//! Billing: a patient's account (ledger and balance), payments with allocations to
//! invoices, refunds, adjustments, and invoices with gap-free numbers. Every write posts a
//! balanced journal transaction ([`crate::ledger`]); nothing is edited or deleted.
//!
//! A patient's account is two journal accounts: `receivable` (what they owe on charges)
//! and `patient_credit` (their money not yet applied to an invoice). The balance is the
//! sum of both — what the patient owes net of their credit — and always equals the sum
//! of their ledger entries.

pub mod account;
pub mod adjustments;
pub mod invoices;
pub mod payments;
pub mod pdf;
pub mod stripe;
pub mod stripe_events;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::Tx;
use crate::error::{AppError, AppResult};
use crate::validate::Errors;

/// The largest amount of one payment, refund, adjustment or allocation, in minor units.
pub const MAX_AMOUNT_CENTS: i64 = 1_000_000_000_000;

/// 422 on `field` unless 1 ≤ `amount` ≤ [`MAX_AMOUNT_CENTS`].
pub fn check_positive(field: &str, amount: i64, errors: &mut Errors) {
    if !(1..=MAX_AMOUNT_CENTS).contains(&amount) {
        errors.add(
            field,
            format!("must be between 1 and {MAX_AMOUNT_CENTS} minor units"),
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Cash,
    Card,
    BankTransfer,
    Check,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Cash => "cash",
            Method::Card => "card",
            Method::BankTransfer => "bank_transfer",
            Method::Check => "check",
        }
    }

    pub fn parse(s: &str) -> Method {
        match s {
            "cash" => Method::Cash,
            "bank_transfer" => Method::BankTransfer,
            "check" => Method::Check,
            _ => Method::Card,
        }
    }
}

/// Locks the patient's row for the rest of the transaction: what reads the patient's
/// credit and then spends it (applying credit, refunds) runs one at a time per patient.
/// 422 on `field` when the patient is not in the clinic.
pub async fn lock_patient(tx: &mut Tx, id: Uuid, field: &str) -> AppResult<()> {
    sqlx::query_scalar!("SELECT id FROM patients WHERE id = $1 FOR UPDATE", id)
        .fetch_optional(&mut **tx)
        .await?
        .map(|_| ())
        .ok_or_else(|| AppError::validation(field, "does not exist in your clinic"))
}

/// The patient's unapplied credit (≥ 0 in practice), in minor units.
pub async fn credit_of(tx: &mut Tx, patient: Uuid) -> AppResult<i64> {
    Ok(sqlx::query_scalar!(
        r#"SELECT coalesce(-sum(amount_cents), 0)::bigint AS "credit!" FROM ledger_lines
           WHERE patient_id = $1 AND account = 'patient_credit'"#,
        patient
    )
    .fetch_one(&mut **tx)
    .await?)
}

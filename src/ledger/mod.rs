//! The patient ledger's journal: double-entry transactions whose lines on accounts sum to
//! zero (debits positive, credits negative). A patient's ledger is their `receivable`
//! lines. The database makes it append-only and checks the balance at commit
//! (migration 0014); mistakes are corrected by a reversal, never by an UPDATE.

use uuid::Uuid;

use crate::auth::Caller;
use crate::db::Tx;
use crate::error::{AppError, AppResult, OnConstraint};

/// Charges a completed procedure's fee: the patient's receivable is debited and revenue
/// credited. A zero fee posts nothing (a journal line is never zero). `None` when nothing
/// was posted.
pub async fn post_charge(
    tx: &mut Tx,
    caller: &Caller,
    patient_id: Uuid,
    procedure_id: Uuid,
    fee_cents: i64,
    memo: &str,
) -> AppResult<Option<Uuid>> {
    if fee_cents == 0 {
        return Ok(None);
    }
    let id = Uuid::now_v7();
    sqlx::query!(
        "INSERT INTO ledger_transactions (clinic_id, id, kind, patient_id, procedure_id, memo, created_by) \
         VALUES ($1, $2, 'charge', $3, $4, $5, $6)",
        caller.clinic_id,
        id,
        patient_id,
        procedure_id,
        memo,
        caller.user_id,
    )
    .execute(&mut **tx)
    .await
    .on_constraint("ledger_charge_once", || {
        AppError::conflict("the procedure is charged already")
    })?;
    sqlx::query!(
        "INSERT INTO ledger_lines (clinic_id, transaction_id, line_no, account, patient_id, amount_cents) \
         VALUES ($1, $2, 1, 'receivable', $3, $4), ($1, $2, 2, 'revenue', NULL, -$4::bigint)",
        caller.clinic_id,
        id,
        patient_id,
        fee_cents,
    )
    .execute(&mut **tx)
    .await?;
    Ok(Some(id))
}

/// Reverses a procedure's charge with a new transaction whose lines mirror the charge's.
/// `None` when the procedure was never charged (a zero fee).
pub async fn reverse_charge(
    tx: &mut Tx,
    caller: &Caller,
    procedure_id: Uuid,
    memo: &str,
) -> AppResult<Option<Uuid>> {
    let charge = sqlx::query!(
        "SELECT id, patient_id FROM ledger_transactions WHERE procedure_id = $1 AND kind = 'charge'",
        procedure_id
    )
    .fetch_optional(&mut **tx)
    .await?;
    let Some(charge) = charge else {
        return Ok(None);
    };
    let id = Uuid::now_v7();
    sqlx::query!(
        "INSERT INTO ledger_transactions (clinic_id, id, kind, patient_id, procedure_id, reverses_id, memo, created_by) \
         VALUES ($1, $2, 'reversal', $3, $4, $5, $6, $7)",
        caller.clinic_id,
        id,
        charge.patient_id,
        procedure_id,
        charge.id,
        memo,
        caller.user_id,
    )
    .execute(&mut **tx)
    .await
    .on_constraint("ledger_reversed_once", || {
        AppError::conflict("the charge is reversed already")
    })?;
    sqlx::query!(
        "INSERT INTO ledger_lines (clinic_id, transaction_id, line_no, account, patient_id, amount_cents) \
         SELECT clinic_id, $2, line_no, account, patient_id, -amount_cents FROM ledger_lines \
         WHERE transaction_id = $1",
        charge.id,
        id,
    )
    .execute(&mut **tx)
    .await?;
    Ok(Some(id))
}

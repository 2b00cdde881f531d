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

/// An account of the journal. A patient's own accounts name the patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    /// What the patient owes on charges.
    Receivable(Uuid),
    /// The patient's money not yet applied to an invoice (a credit balance: negative).
    PatientCredit(Uuid),
    Revenue,
    Adjustments,
    /// Where a payment's money went, by method.
    Cash,
    Card,
    BankTransfer,
    Check,
    /// Card payments through Stripe, until Stripe pays them out.
    StripeClearing,
}

impl Account {
    fn name(self) -> &'static str {
        match self {
            Account::Receivable(_) => "receivable",
            Account::PatientCredit(_) => "patient_credit",
            Account::Revenue => "revenue",
            Account::Adjustments => "adjustments",
            Account::Cash => "cash",
            Account::Card => "card",
            Account::BankTransfer => "bank_transfer",
            Account::Check => "check",
            Account::StripeClearing => "stripe_clearing",
        }
    }

    fn patient(self) -> Option<Uuid> {
        match self {
            Account::Receivable(p) | Account::PatientCredit(p) => Some(p),
            _ => None,
        }
    }

    /// The account a payment method's money goes to.
    pub fn for_method(method: &str) -> Account {
        match method {
            "cash" => Account::Cash,
            "bank_transfer" => Account::BankTransfer,
            "check" => Account::Check,
            "stripe" => Account::StripeClearing,
            _ => Account::Card,
        }
    }
}

/// A journal transaction to post: what it is, what it refers to, and its lines (debits
/// positive, credits negative; zero lines are left out).
pub struct Entry<'a> {
    pub kind: &'static str,
    pub patient_id: Uuid,
    pub payment_id: Option<Uuid>,
    pub invoice_id: Option<Uuid>,
    pub memo: Option<&'a str>,
    pub lines: Vec<(Account, i64)>,
}

/// Posts a transaction; the database checks at commit that its lines sum to zero.
pub async fn post(tx: &mut Tx, caller: &Caller, entry: Entry<'_>) -> AppResult<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query!(
        "INSERT INTO ledger_transactions (clinic_id, id, kind, patient_id, payment_id, invoice_id, memo, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        caller.clinic_id,
        id,
        entry.kind,
        entry.patient_id,
        entry.payment_id,
        entry.invoice_id,
        entry.memo,
        caller.user_id,
    )
    .execute(&mut **tx)
    .await?;
    let lines: Vec<&(Account, i64)> = entry.lines.iter().filter(|(_, a)| *a != 0).collect();
    let numbers: Vec<i16> = (1..=lines.len() as i16).collect();
    let accounts: Vec<&str> = lines.iter().map(|(a, _)| a.name()).collect();
    let patients: Vec<Option<Uuid>> = lines.iter().map(|(a, _)| a.patient()).collect();
    let amounts: Vec<i64> = lines.iter().map(|(_, a)| *a).collect();
    sqlx::query!(
        "INSERT INTO ledger_lines (clinic_id, transaction_id, line_no, account, patient_id, amount_cents) \
         SELECT $1, $2, * FROM UNNEST($3::int2[], $4::text[], $5::uuid[], $6::bigint[])",
        caller.clinic_id,
        id,
        &numbers,
        &accounts as &[&str],
        &patients as &[Option<Uuid>],
        &amounts,
    )
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

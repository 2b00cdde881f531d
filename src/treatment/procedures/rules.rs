//! What a charted procedure must satisfy, on charting and on editing alike: the tooth and
//! surfaces its code demands, a fee within bounds, and an appointment of the same patient.

use uuid::Uuid;

use super::MAX_FEE_CENTS;
use crate::chart::{parse_surfaces, Numbering, Tooth};
use crate::db::Tx;
use crate::error::{AppError, AppResult};
use crate::validate::Errors;

/// What a code demands of a procedure's tooth and surfaces.
pub(super) struct CodeRules {
    pub(super) requires_tooth: bool,
    pub(super) requires_surfaces: bool,
    pub(super) fee_cents: i64,
    pub(super) active: bool,
}

pub(super) async fn code_rules(tx: &mut Tx, id: Uuid) -> AppResult<Option<CodeRules>> {
    Ok(sqlx::query_as!(
        CodeRules,
        "SELECT requires_tooth, requires_surfaces, fee_cents, active FROM procedure_codes WHERE id = $1",
        id
    )
    .fetch_optional(&mut **tx)
    .await?)
}

/// Tooth and surfaces as the code says: required or refused, and valid for each other
/// (the chart's rules, FDI or Universal). Returns the tooth in FDI and surfaces in order.
pub(super) fn check_shape(
    rules: &CodeRules,
    tooth: Option<&str>,
    numbering: Numbering,
    surfaces: &[String],
    errors: &mut Errors,
) -> (Option<i16>, Vec<String>) {
    let parsed = match tooth {
        None if rules.requires_tooth => {
            errors.add("tooth", "this procedure code needs a tooth");
            None
        }
        Some(_) if !rules.requires_tooth => {
            errors.add(
                "tooth",
                "this procedure code applies to the whole mouth: no tooth",
            );
            None
        }
        None => None,
        Some(t) => {
            let parsed = Tooth::parse(t, numbering);
            if parsed.is_none() {
                errors.add(
                    "tooth",
                    match numbering {
                        Numbering::Fdi => "must be an FDI tooth number (11–48, 51–85)",
                        Numbering::Universal => "must be a Universal tooth (1–32 or A–T)",
                    },
                );
            }
            parsed
        }
    };
    if rules.requires_surfaces && surfaces.is_empty() {
        errors.add("surfaces", "this procedure code needs at least one surface");
    } else if !rules.requires_surfaces && !surfaces.is_empty() {
        errors.add("surfaces", "this procedure code takes no surfaces");
    }
    let mut out = vec![];
    if let Some(t) = parsed {
        match parse_surfaces(t, surfaces) {
            Ok(s) => out = s.iter().map(|s| s.as_str().to_owned()).collect(),
            Err(msg) => errors.add("surfaces", msg),
        }
    }
    (parsed.map(|t| i16::from(t.fdi())), out)
}

/// 422 unless the appointment exists in the clinic and is this patient's.
pub(super) async fn check_appointment(tx: &mut Tx, id: Uuid, patient: Uuid) -> AppResult<()> {
    let owner: Option<Uuid> =
        sqlx::query_scalar!("SELECT patient_id FROM appointments WHERE id = $1", id)
            .fetch_optional(&mut **tx)
            .await?;
    match owner {
        None => Err(AppError::validation(
            "appointment_id",
            "does not exist in your clinic",
        )),
        Some(p) if p != patient => Err(AppError::validation(
            "appointment_id",
            "is another patient's appointment",
        )),
        Some(_) => Ok(()),
    }
}

pub(super) fn check_fee(fee: i64, errors: &mut Errors) {
    if !(0..=MAX_FEE_CENTS).contains(&fee) {
        errors.add(
            "fee_cents",
            format!("must be between 0 and {MAX_FEE_CENTS}"),
        );
    }
}

//! Treatment: the clinic's procedure catalogue, charted procedures (planned, completed and
//! charged, reversed), treatment plans with frozen versions, and recalls.

pub mod codes;
pub mod import;
pub mod plans;
pub mod procedures;
pub mod recalls;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a charted procedure stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProcedureStatus {
    /// To be done; fees are copied from the catalogue when planned.
    Planned,
    /// Done here: locked, and its fee charged to the patient's ledger.
    Completed,
    /// Done before the patient came to this clinic (no charge).
    Existing,
    /// Sent to another practitioner (no charge).
    Referred,
    /// A finding recorded with a code (no charge).
    Condition,
}

impl ProcedureStatus {
    pub const ALL: [ProcedureStatus; 5] = [
        ProcedureStatus::Planned,
        ProcedureStatus::Completed,
        ProcedureStatus::Existing,
        ProcedureStatus::Referred,
        ProcedureStatus::Condition,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProcedureStatus::Planned => "planned",
            ProcedureStatus::Completed => "completed",
            ProcedureStatus::Existing => "existing",
            ProcedureStatus::Referred => "referred",
            ProcedureStatus::Condition => "condition",
        }
    }

    pub fn parse(s: &str) -> Option<ProcedureStatus> {
        ProcedureStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// The upper bound of a fee in minor units (a billion in a two-decimal currency): beyond
/// any dental fee, and far from overflowing a sum of many.
pub const MAX_FEE_CENTS: i64 = 100_000_000_000;

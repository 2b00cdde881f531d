//! What an appointment is, as stored and as answered.

use crate::scheduling::AppointmentStatus;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Serialize, ToSchema)]
pub struct Conflict {
    pub(super) appointment_id: Uuid,
    /// `provider`, `operatory` or `patient`.
    pub(super) resource: String,
    pub(super) start_at: DateTime<Utc>,
    pub(super) end_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Appointment {
    pub(super) id: Uuid,
    pub(super) patient_id: Uuid,
    pub(super) provider_id: Uuid,
    pub(super) operatory_id: Uuid,
    pub(super) start_at: DateTime<Utc>,
    pub(super) end_at: DateTime<Utc>,
    pub(super) status: AppointmentStatus,
    pub(super) reason: Option<String>,
    pub(super) notes: Option<String>,
    /// Booked outside the provider's working hours with `override`.
    pub(super) outside_hours: bool,
    pub(super) version: i32,
    pub(super) created_by: Uuid,
    pub(super) created_at: DateTime<Utc>,
    pub(super) updated_at: DateTime<Utc>,
}

/// An appointment as stored; the statements that read one select exactly these columns,
/// in this order.
pub(super) struct Row {
    pub(super) id: Uuid,
    pub(super) patient_id: Uuid,
    pub(super) provider_id: Uuid,
    pub(super) operatory_id: Uuid,
    pub(super) start_at: DateTime<Utc>,
    pub(super) end_at: DateTime<Utc>,
    pub(super) status: String,
    pub(super) reason: Option<String>,
    pub(super) notes: Option<String>,
    pub(super) outside_hours: bool,
    pub(super) version: i32,
    pub(super) created_by: Uuid,
    pub(super) created_at: DateTime<Utc>,
    pub(super) updated_at: DateTime<Utc>,
}

impl From<Row> for Appointment {
    fn from(r: Row) -> Appointment {
        Appointment {
            id: r.id,
            patient_id: r.patient_id,
            provider_id: r.provider_id,
            operatory_id: r.operatory_id,
            start_at: r.start_at,
            end_at: r.end_at,
            status: AppointmentStatus::parse(&r.status).unwrap_or(AppointmentStatus::Scheduled),
            reason: r.reason,
            notes: r.notes,
            outside_hours: r.outside_hours,
            version: r.version,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

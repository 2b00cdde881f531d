//! The caller's clinic: name, time zone, currency, contact details and settings.
//! Instants are stored in UTC, so a new time zone changes only how local times are read.

pub mod create;
pub mod routes;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::Tx;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::validate::Errors;

/// A postal address.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub line1: Option<String>,
    pub line2: Option<String>,
    pub city: Option<String>,
    pub postal_code: Option<String>,
    pub region: Option<String>,
    /// ISO 3166-1 alpha-2 country code.
    pub country: Option<String>,
}

impl Address {
    pub fn validate(&self, field: &str, errors: &mut Errors) {
        for (name, value) in [
            ("line1", &self.line1),
            ("line2", &self.line2),
            ("city", &self.city),
            ("postal_code", &self.postal_code),
            ("region", &self.region),
        ] {
            if let Some(v) = value {
                if v.chars().count() > 200 {
                    errors.add(format!("{field}.{name}"), "must be at most 200 characters");
                }
            }
        }
        if let Some(c) = &self.country {
            if c.len() != 2 || !c.chars().all(|ch| ch.is_ascii_alphabetic()) {
                errors.add(
                    format!("{field}.country"),
                    "must be an ISO 3166-1 alpha-2 code such as DE",
                );
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Clinic {
    pub id: Uuid,
    pub name: String,
    /// IANA time zone in which the clinic's local times are read.
    pub timezone: String,
    /// ISO 4217 code; all money is in its minor units.
    pub currency: String,
    pub phone: Option<String>,
    pub address: Option<Address>,
    /// Appointment defaults and the like.
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

type ClinicRow = (
    Uuid,
    String,
    String,
    String,
    Option<String>,
    Option<serde_json::Value>,
    serde_json::Value,
    i32,
    DateTime<Utc>,
    DateTime<Utc>,
);

const SELECT_CLINIC: &str = "SELECT id, name, timezone, currency, phone, address, settings, version, created_at, updated_at FROM clinics WHERE id = $1";

fn from_row(r: ClinicRow) -> Clinic {
    Clinic {
        id: r.0,
        name: r.1,
        timezone: r.2,
        currency: r.3,
        phone: r.4,
        address: r.5.and_then(|a| serde_json::from_value(a).ok()),
        settings: r.6,
        version: r.7,
        created_at: r.8,
        updated_at: r.9,
    }
}

/// The clinic, from the cache when it holds it (the caller's transaction is still the
/// one that proves the caller's session is valid).
pub async fn cached(state: &AppState, tx: &mut Tx, id: Uuid) -> AppResult<Clinic> {
    let (hit, generation) = state
        .cache
        .get::<Clinic>(state.redis.as_ref(), id, "clinic")
        .await;
    if let Some(c) = hit {
        return Ok(c);
    }
    let clinic = load(tx, id, false).await?;
    state
        .cache
        .put(state.redis.as_ref(), id, generation, "clinic", &clinic)
        .await;
    Ok(clinic)
}

pub async fn load(tx: &mut Tx, id: Uuid, lock: bool) -> AppResult<Clinic> {
    let sql = if lock {
        format!("{SELECT_CLINIC} FOR UPDATE")
    } else {
        SELECT_CLINIC.to_owned()
    };
    let row: Option<ClinicRow> = sqlx::query_as(&sql)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(from_row)
        .ok_or_else(|| AppError::not_found("clinic"))
}

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
    #[schema(schema_with = crate::validate::schema::line_or_null)]
    pub line1: Option<String>,
    #[schema(schema_with = crate::validate::schema::line_or_null)]
    pub line2: Option<String>,
    #[schema(schema_with = crate::validate::schema::line_or_null)]
    pub city: Option<String>,
    #[schema(schema_with = crate::validate::schema::line_or_null)]
    pub postal_code: Option<String>,
    #[schema(schema_with = crate::validate::schema::line_or_null)]
    pub region: Option<String>,
    /// ISO 3166-1 alpha-2 country code.
    #[schema(schema_with = crate::validate::schema::country_or_null)]
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
                errors.line(&format!("{field}.{name}"), v, 200);
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

/// A `clinics` row as selected: the address is the stored JSON.
struct ClinicRow {
    id: Uuid,
    name: String,
    timezone: String,
    currency: String,
    phone: Option<String>,
    address: Option<serde_json::Value>,
    settings: serde_json::Value,
    version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<ClinicRow> for Clinic {
    fn from(r: ClinicRow) -> Clinic {
        Clinic {
            id: r.id,
            name: r.name,
            timezone: r.timezone,
            currency: r.currency,
            phone: r.phone,
            address: r.address.and_then(|a| serde_json::from_value(a).ok()),
            settings: r.settings,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

fn found(row: Option<ClinicRow>) -> AppResult<Clinic> {
    row.map(Clinic::from)
        .ok_or_else(|| AppError::not_found("clinic"))
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
    let clinic = load(tx, id).await?;
    state
        .cache
        .put(state.redis.as_ref(), id, generation, "clinic", &clinic)
        .await;
    Ok(clinic)
}

/// The one SELECT of a clinic, with `$lock` either `""` or `" FOR UPDATE"`: the statement
/// stays a literal that sqlx checks at build time.
macro_rules! select_clinic {
    ($tx:expr, $id:expr, $lock:literal) => {
        sqlx::query_as!(
            ClinicRow,
            "SELECT id, name, timezone, currency, phone, address, settings, version, created_at, \
             updated_at FROM clinics WHERE id = $1"
                + $lock,
            $id
        )
        .fetch_optional(&mut **$tx)
        .await?
    };
}

/// The transaction's clinic; another clinic's id is simply not found.
/// The clinic's time zone, in which its local days and times are read.
pub async fn timezone(state: &AppState, tx: &mut Tx, id: Uuid) -> AppResult<chrono_tz::Tz> {
    cached(state, tx, id)
        .await?
        .timezone
        .parse()
        .map_err(|_| AppError::Internal(anyhow::anyhow!("clinic has an unknown time zone")))
}

/// The date it is now in the clinic's time zone.
pub fn today(tz: chrono_tz::Tz) -> chrono::NaiveDate {
    chrono::Utc::now().with_timezone(&tz).date_naive()
}

pub async fn load(tx: &mut Tx, id: Uuid) -> AppResult<Clinic> {
    found(select_clinic!(tx, id, ""))
}

/// [`load`], locking the row until the transaction ends.
pub async fn load_for_update(tx: &mut Tx, id: Uuid) -> AppResult<Clinic> {
    found(select_clinic!(tx, id, " FOR UPDATE"))
}

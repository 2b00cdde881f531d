//! The caller's clinic: name, time zone, currency, contact details and settings.
//! Instants are stored in UTC, so a new time zone changes only how local times are read.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::db::Tx;
use crate::error::{AppError, AppResult, Problem};
use crate::http::etag;
use crate::http::extract::ApiJson;
use crate::state::AppState;
use crate::validate::{merge_nested, merge_patch, patch_field, Errors};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_clinic, update_clinic))
}

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

fn with_etag(clinic: Clinic) -> Response {
    let tag = etag::etag(clinic.version);
    ([(header::ETAG, tag)], Json(clinic)).into_response()
}

/// The caller's clinic.
#[utoipa::path(get, path = "/clinic", tag = "clinic", security(("bearer" = [])),
    responses(
        (status = 200, description = "The clinic, with its ETag", body = Clinic),
        (status = 401, description = "Not signed in", body = Problem)))]
pub async fn get_clinic(State(state): State<AppState>, caller: Caller) -> AppResult<Response> {
    caller.require(Permission::ClinicRead)?;
    let mut tx = caller.begin(&state).await?;
    let clinic = cached(&state, &mut tx, caller.clinic_id).await?;
    tx.commit().await?;
    Ok(with_etag(clinic))
}

/// A merge patch of the clinic; `null` clears an optional field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClinicPatch {
    name: Option<String>,
    timezone: Option<String>,
    currency: Option<String>,
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Option<String>)]
    phone: Option<Option<String>>,
    /// Merged into the current address (RFC 7396); `null` clears it.
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Option<Address>)]
    address: Option<Option<serde_json::Value>>,
    /// Merged into the current settings (RFC 7396).
    #[schema(value_type = Option<Object>)]
    settings: Option<serde_json::Value>,
}

/// Updates the caller's clinic (owner and admin).
#[utoipa::path(patch, path = "/clinic", tag = "clinic", security(("bearer" = [])),
    request_body = ClinicPatch,
    responses(
        (status = 200, description = "The updated clinic", body = Clinic),
        (status = 403, description = "Role lacks clinic.manage", body = Problem),
        (status = 412, description = "If-Match does not match", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem)))]
pub async fn update_clinic(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(patch): ApiJson<ClinicPatch>,
) -> AppResult<Response> {
    if let Err(e) = caller.require(Permission::ClinicManage) {
        audit::record_failure(
            &state.db,
            &caller.audit(),
            Event::new("clinic.update", "clinic").resource(caller.clinic_id),
        )
        .await;
        return Err(e);
    }
    let mut errors = Errors::default();
    let name = patch.name.as_deref().map(|n| errors.text("name", n, 200));
    let timezone = patch
        .timezone
        .as_deref()
        .map(|t| errors.timezone("timezone", t));
    let currency = patch
        .currency
        .as_deref()
        .map(|c| errors.currency("currency", c));
    let phone = patch
        .phone
        .as_ref()
        .map(|p| p.as_deref().map(|p| errors.phone("phone", p)));
    if let Some(s) = &patch.settings {
        if !s.is_object() {
            errors.add("settings", "must be an object");
        } else if s.to_string().len() > 16 * 1024 {
            errors.add("settings", "must be at most 16 KiB");
        }
    }
    errors.finish()?;

    let mut tx = caller.begin(&state).await?;
    let current = load(&mut tx, caller.clinic_id, true).await?;
    etag::check(&headers, current.version)?;
    let mut settings = current.settings.clone();
    if let Some(s) = &patch.settings {
        merge_patch(&mut settings, s);
    }
    let mut errors = Errors::default();
    let merged = merge_nested(
        current.address.as_ref(),
        &patch
            .address
            .clone()
            .map(|a| a.unwrap_or(serde_json::Value::Null)),
        "address",
        &mut errors,
    );
    if let Some(Some(a)) = &merged {
        a.validate("address", &mut errors);
    }
    errors.finish()?;
    let address = match merged {
        None => current.address.clone(),
        Some(a) => a,
    };
    let address_json = address
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| AppError::Internal(e.into()))?;
    sqlx::query(
        "UPDATE clinics SET name = $2, timezone = $3, currency = $4, phone = $5, address = $6, \
         settings = $7, version = version + 1, updated_at = now() WHERE id = $1",
    )
    .bind(caller.clinic_id)
    .bind(name.unwrap_or(current.name))
    .bind(timezone.unwrap_or(current.timezone))
    .bind(currency.unwrap_or(current.currency))
    .bind(match phone {
        None => current.phone,
        Some(p) => p,
    })
    .bind(address_json)
    .bind(settings)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new("clinic.update", "clinic").resource(caller.clinic_id),
    )
    .await?;
    let updated = load(&mut tx, caller.clinic_id, false).await?;
    tx.commit().await?;
    state
        .cache
        .invalidate(state.redis.as_ref(), caller.clinic_id)
        .await;
    Ok(with_etag(updated))
}

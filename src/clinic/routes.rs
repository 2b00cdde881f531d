//! `/clinic`: read the caller's clinic (cached) and change it with a merge patch.

use super::*;
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult, OnConstraint, Problem};
use crate::http::etag::{self, IfMatch};
use crate::http::extract::ApiJson;
use crate::state::AppState;
use crate::validate::{merge_nested, merge_patch, patch_field, Errors};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    caller
        .authorize(&state, Permission::ClinicRead, || {
            Event::new("clinic.read", "clinic").resource(caller.clinic_id)
        })
        .await?;
    let mut tx = caller.begin(&state).await?;
    let clinic = cached(&state, &mut tx, caller.clinic_id).await?;
    tx.commit().await?;
    Ok(with_etag(clinic))
}

/// A merge patch of the clinic; `null` clears an optional field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClinicPatch {
    /// Cannot be cleared (`null` is a 422).
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(schema_with = crate::validate::schema::text_200)]
    name: Option<Option<String>>,
    /// An IANA time zone; changing it changes only how local times are read.
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(schema_with = crate::validate::schema::timezone)]
    timezone: Option<Option<String>>,
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(schema_with = crate::validate::schema::currency)]
    currency: Option<Option<String>>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(schema_with = crate::validate::schema::phone_or_null)]
    phone: Option<Option<String>>,
    /// Merged into the current address (RFC 7396); `null` clears it.
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Option<Address>)]
    address: Option<Option<serde_json::Value>>,
    /// Merged into the current settings (RFC 7396): an object of at most 16 KiB of JSON;
    /// its strings and keys cannot hold U+0000 (422, as anywhere in a body).
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Object)]
    settings: Option<Option<serde_json::Value>>,
}

/// Updates the caller's clinic (owner and admin).
#[utoipa::path(patch, path = "/clinic", tag = "clinic", security(("bearer" = [])),
    params(IfMatch),
    request_body = ClinicPatch,
    responses(
        (status = 200, description = "The updated clinic", body = Clinic),
        (status = 403, description = "Role lacks clinic.manage", body = Problem),
        (status = 409, description = "The currency cannot change once the clinic has financial records", body = Problem),
        (status = 412, description = "If-Match does not match", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem)))]
pub async fn update_clinic(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(patch): ApiJson<ClinicPatch>,
) -> AppResult<Response> {
    caller
        .authorize(&state, Permission::ClinicManage, || {
            Event::new("clinic.update", "clinic").resource(caller.clinic_id)
        })
        .await?;
    let mut errors = Errors::default();
    errors.uncleared(&[
        ("name", matches!(patch.name, Some(None))),
        ("timezone", matches!(patch.timezone, Some(None))),
        ("currency", matches!(patch.currency, Some(None))),
        ("settings", matches!(patch.settings, Some(None))),
    ]);
    let name = patch
        .name
        .clone()
        .flatten()
        .map(|n| errors.text("name", &n, 200));
    let timezone = patch
        .timezone
        .clone()
        .flatten()
        .map(|t| errors.timezone("timezone", &t));
    let currency = patch
        .currency
        .clone()
        .flatten()
        .map(|c| errors.currency("currency", &c));
    let phone = patch
        .phone
        .as_ref()
        .map(|p| p.as_deref().map(|p| errors.phone("phone", p)));
    if let Some(Some(s)) = &patch.settings {
        if !s.is_object() {
            errors.add("settings", "must be an object");
        } else if s.to_string().len() > 16 * 1024 {
            errors.add("settings", "must be at most 16 KiB");
        }
    }
    errors.finish()?;

    let mut tx = caller.begin(&state).await?;
    let current = load_for_update(&mut tx, caller.clinic_id).await?;
    etag::check(&headers, current.version)?;
    let mut settings = current.settings.clone();
    if let Some(Some(s)) = &patch.settings {
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
    sqlx::query!(
        "UPDATE clinics SET name = $2, timezone = $3, currency = $4, phone = $5, address = $6, \
         settings = $7, version = version + 1, updated_at = now() WHERE id = $1",
        caller.clinic_id,
        name.unwrap_or(current.name),
        timezone.unwrap_or(current.timezone),
        currency.unwrap_or(current.currency),
        match phone {
            None => current.phone,
            Some(p) => p,
        },
        address_json,
        settings
    )
    .execute(&mut *tx)
    .await
    .on_constraint("clinics_currency_fixed", || {
        AppError::conflict("the currency cannot change once the clinic has financial records")
    })?;
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new("clinic.update", "clinic").resource(caller.clinic_id),
    )
    .await?;
    let updated = load(&mut tx, caller.clinic_id).await?;
    tx.commit().await?;
    state
        .cache
        .invalidate(state.redis.as_ref(), caller.clinic_id)
        .await;
    Ok(with_etag(updated))
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_clinic, update_clinic))
}

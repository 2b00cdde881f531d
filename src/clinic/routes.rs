//! `/clinic`: read the caller's clinic (cached) and change it with a merge patch.

use super::*;
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult, Problem};
use crate::http::etag;
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
    caller
        .authorize(&state, Permission::ClinicManage, || {
            Event::new("clinic.update", "clinic").resource(caller.clinic_id)
        })
        .await?;
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
    let current = load_for_update(&mut tx, caller.clinic_id).await?;
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
    .await?;
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

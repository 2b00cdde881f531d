//! Operatories (chairs and rooms); the providers who can be booked are served alongside
//! (see `providers`).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult, OnConstraint, Problem};
use crate::http::etag::{self, IfMatch};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use crate::http::idempotency::{self, Created, HashedJson, IdempotencyKey};
use crate::state::AppState;
use crate::validate::Errors;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_operatories, create_operatory))
        .routes(routes!(get_operatory, update_operatory))
        .merge(super::providers::router())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Operatory {
    id: Uuid,
    name: String,
    active: bool,
    version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OperatoryList {
    items: Vec<Operatory>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OperatoryParams {
    /// Include inactive operatories.
    #[serde(default)]
    include_inactive: bool,
}

/// The clinic's operatories, by name.
#[utoipa::path(get, path = "/operatories", tag = "scheduling", security(("bearer" = [])),
    params(OperatoryParams),
    responses((status = 200, description = "Operatories", body = OperatoryList),
              (status = 403, description = "Role lacks appointments.read", body = Problem)))]
pub async fn list_operatories(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<OperatoryParams>,
) -> AppResult<Json<OperatoryList>> {
    caller
        .authorize(&state, Permission::AppointmentsRead, || {
            Event::new("operatory.list", "operatory")
        })
        .await?;
    let mut tx = caller.begin(&state).await?;
    let items = sqlx::query_as!(
        Operatory,
        "SELECT id, name, active, version, created_at, updated_at FROM operatories \
         WHERE $1 OR active ORDER BY lower(name), id",
        p.include_inactive
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(OperatoryList { items }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Chair 2"}))]
pub struct NewOperatory {
    /// Unique in the clinic (409), case-insensitive.
    #[schema(schema_with = crate::validate::schema::text_100)]
    name: String,
    /// Default true.
    active: Option<bool>,
}

fn name_taken() -> AppError {
    AppError::conflict("an operatory with this name already exists")
}

fn operatory_response(status: StatusCode, o: Operatory) -> Response {
    (status, [(header::ETAG, etag::etag(o.version))], Json(&o)).into_response()
}

/// Adds an operatory (owner and admin).
#[utoipa::path(post, path = "/operatories", tag = "scheduling", security(("bearer" = [])),
    params(IdempotencyKey),
    request_body = NewOperatory,
    responses((status = 201, description = "Created", body = Operatory),
              (status = 403, description = "Role lacks schedule.manage", body = Problem),
              (status = 409, description = "Name in use", body = Problem),
              (status = 422, description = "Invalid fields", body = Problem)))]
pub async fn create_operatory(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: HashedJson<NewOperatory>,
) -> AppResult<Response> {
    let (hash, body) = (body.hash, body.value);
    caller
        .authorize(&state, Permission::ScheduleManage, || {
            Event::new("operatory.create", "operatory")
        })
        .await?;
    let mut errors = Errors::default();
    let name = errors.text("name", &body.name, 100);
    errors.finish()?;
    idempotency::run(&state, &caller, &headers, &hash, || async {
        let mut tx = caller.begin(&state).await?;
        let id = Uuid::now_v7();
        let o = sqlx::query_as!(
            Operatory,
            "INSERT INTO operatories (clinic_id, id, name, active) VALUES ($1, $2, $3, $4) \
         RETURNING id, name, active, version, created_at, updated_at",
            caller.clinic_id,
            id,
            &name,
            body.active.unwrap_or(true)
        )
        .fetch_one(&mut *tx)
        .await
        .on_constraint("operatories_name", name_taken)?;
        audit::record(
            &mut tx,
            &caller.audit(),
            Event::new("operatory.create", "operatory").resource(id),
        )
        .await?;
        let created = Created {
            location: format!("/api/v2/operatories/{id}"),
            version: Some(o.version),
            value: o,
        };
        Ok((tx, created))
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OperatoryPath {
    /// The operatory's id.
    id: Uuid,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
/// No field can be cleared: `null` is a 422.
pub struct OperatoryPatch {
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(schema_with = crate::validate::schema::text_100)]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(value_type = bool)]
    active: Option<Option<bool>>,
}

/// One operatory.
#[utoipa::path(get, path = "/operatories/{id}", tag = "scheduling", security(("bearer" = [])),
    params(OperatoryPath),
    responses((status = 200, description = "The operatory", body = Operatory),
              (status = 404, description = "No such operatory in your clinic", body = Problem)))]
pub async fn get_operatory(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(OperatoryPath { id }): ApiPath<OperatoryPath>,
) -> AppResult<Response> {
    caller
        .authorize(&state, Permission::AppointmentsRead, || {
            Event::new("operatory.read", "operatory").resource(id)
        })
        .await?;
    let mut tx = caller.begin(&state).await?;
    let o = sqlx::query_as!(
        Operatory,
        "SELECT id, name, active, version, created_at, updated_at FROM operatories WHERE id = $1",
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AppError::not_found("operatory"))?;
    tx.commit().await?;
    Ok(operatory_response(StatusCode::OK, o))
}

/// Renames or (de)activates an operatory (owner and admin).
#[utoipa::path(patch, path = "/operatories/{id}", tag = "scheduling", security(("bearer" = [])),
    params(OperatoryPath, IfMatch),
    request_body = OperatoryPatch,
    responses((status = 200, description = "Updated", body = Operatory),
              (status = 404, description = "No such operatory in your clinic", body = Problem),
              (status = 409, description = "Name in use", body = Problem),
              (status = 412, description = "If-Match does not match", body = Problem)))]
pub async fn update_operatory(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(OperatoryPath { id }): ApiPath<OperatoryPath>,
    ApiJson(patch): ApiJson<OperatoryPatch>,
) -> AppResult<Response> {
    caller
        .authorize(&state, Permission::ScheduleManage, || {
            Event::new("operatory.update", "operatory").resource(id)
        })
        .await?;
    let mut errors = Errors::default();
    errors.uncleared(&[
        ("name", matches!(patch.name, Some(None))),
        ("active", matches!(patch.active, Some(None))),
    ]);
    let name = patch
        .name
        .clone()
        .flatten()
        .map(|n| errors.text("name", &n, 100));
    errors.finish()?;
    let mut tx = caller.begin(&state).await?;
    let current = sqlx::query_as!(
        Operatory,
        "SELECT id, name, active, version, created_at, updated_at FROM operatories \
         WHERE id = $1 FOR UPDATE",
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AppError::not_found("operatory"))?;
    etag::check(&headers, current.version)?;
    let o = sqlx::query_as!(
        Operatory,
        "UPDATE operatories SET name = $2, active = $3, version = version + 1, updated_at = now() \
         WHERE id = $1 RETURNING id, name, active, version, created_at, updated_at",
        id,
        name.unwrap_or(current.name),
        patch.active.flatten().unwrap_or(current.active)
    )
    .fetch_one(&mut *tx)
    .await
    .on_constraint("operatories_name", name_taken)?;
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new("operatory.update", "operatory").resource(id),
    )
    .await?;
    tx.commit().await?;
    Ok(operatory_response(StatusCode::OK, o))
}

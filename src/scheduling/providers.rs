//! Providers: the users who treat patients and can be booked, and the one lookup that
//! every check of a provider reference goes through.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit::Event;
use crate::auth::{Caller, Permission, Role};
use crate::db::Tx;
use crate::error::{AppError, AppResult, Problem};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_providers))
}

/// A user of the caller's clinic as seen when booking: whether they treat patients and
/// whether they may still be booked.
struct Standing {
    is_provider: bool,
    active: bool,
}

/// `None` when the user does not exist in the caller's clinic (row-level security hides
/// the other clinics' users).
async fn standing(tx: &mut Tx, id: Uuid) -> AppResult<Option<Standing>> {
    Ok(sqlx::query_as!(
        Standing,
        "SELECT is_provider, active FROM users WHERE id = $1",
        id
    )
    .fetch_optional(&mut **tx)
    .await?)
}

/// 422 on `field` unless `id` is an active provider of the caller's clinic.
pub async fn ensure_active(tx: &mut Tx, id: Uuid, field: &str) -> AppResult<()> {
    match standing(tx, id).await? {
        Some(Standing {
            is_provider: true,
            active: true,
        }) => Ok(()),
        Some(_) => Err(AppError::validation(field, "is not an active provider")),
        None => Err(AppError::validation(field, "does not exist in your clinic")),
    }
}

/// Whether `id` is an active provider of the caller's clinic.
pub async fn is_active(tx: &mut Tx, id: Uuid) -> AppResult<bool> {
    Ok(matches!(
        standing(tx, id).await?,
        Some(Standing {
            is_provider: true,
            active: true,
        })
    ))
}

/// 404 unless `id` is a provider of the caller's clinic. A deactivated provider still
/// counts: their working hours stay readable and editable.
pub async fn ensure_exists(tx: &mut Tx, id: Uuid) -> AppResult<()> {
    match standing(tx, id).await? {
        Some(Standing {
            is_provider: true, ..
        }) => Ok(()),
        _ => Err(AppError::not_found("provider")),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Provider {
    id: Uuid,
    full_name: String,
    role: Role,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProviderList {
    items: Vec<Provider>,
}

/// Active users who treat patients and can be booked.
#[utoipa::path(get, path = "/providers", tag = "scheduling", security(("bearer" = [])),
    responses((status = 200, description = "Providers", body = ProviderList),
              (status = 403, description = "Role lacks appointments.read", body = Problem)))]
pub async fn list_providers(
    State(state): State<AppState>,
    caller: Caller,
) -> AppResult<Json<ProviderList>> {
    caller
        .authorize(&state, Permission::AppointmentsRead, || {
            Event::new("provider.list", "user")
        })
        .await?;
    let mut tx = caller.begin(&state).await?;
    let (hit, generation) = state
        .cache
        .get::<ProviderList>(state.redis.as_ref(), caller.clinic_id, "providers")
        .await;
    if let Some(list) = hit {
        tx.commit().await?;
        return Ok(Json(list));
    }
    let rows = sqlx::query!(
        "SELECT id, full_name, role FROM users WHERE is_provider AND active ORDER BY full_name, id"
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let list = ProviderList {
        items: rows
            .into_iter()
            .filter_map(|r| {
                Role::parse(&r.role).map(|role| Provider {
                    id: r.id,
                    full_name: r.full_name,
                    role,
                })
            })
            .collect(),
    };
    state
        .cache
        .put(
            state.redis.as_ref(),
            caller.clinic_id,
            generation,
            "providers",
            &list,
        )
        .await;
    Ok(Json(list))
}

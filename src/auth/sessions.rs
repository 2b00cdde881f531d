//! Signed-in devices. A session is a refresh-token family: it starts at sign-in, each
//! refresh adds a token to it (recording the address and user agent), and ending it
//! revokes the family, which the per-request session check notices at once on every
//! instance (access tokens carry their family as `sid`).

use std::net::IpAddr;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{Caller, Role};
use crate::audit::{self, Event};
use crate::error::{AppError, AppResult, Problem};
use crate::http::client_ip::client_ip;
use crate::http::extract::ApiPath;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_sessions))
        .routes(routes!(end_session))
        .routes(routes!(list_user_sessions))
}

/// Where a sign-in or refresh comes from: the client's address and its `User-Agent`
/// (at most 512 characters, control characters dropped).
#[derive(Debug, Clone, Default)]
pub struct Device {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

impl FromRequestParts<AppState> for Device {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> AppResult<Device> {
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .map(|ua| {
                ua.chars()
                    .filter(|c| !c.is_control())
                    .take(512)
                    .collect::<String>()
            })
            .filter(|ua| !ua.trim().is_empty());
        Ok(Device {
            ip: client_ip(parts, &state.config.trusted_proxies),
            user_agent,
        })
    }
}

/// One signed-in device.
#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    /// The session's id (end it with `DELETE /auth/sessions/{id}`).
    id: Uuid,
    /// When it signed in.
    created_at: DateTime<Utc>,
    /// When it last signed in or refreshed its tokens.
    last_used_at: DateTime<Utc>,
    /// The address it last came from.
    #[schema(value_type = Option<String>)]
    ip: Option<String>,
    user_agent: Option<String>,
    /// The session of the token this request carries.
    current: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Sessions {
    /// Most recently used first.
    items: Vec<Session>,
}

/// A user's live sessions: families whose current token is neither rotated, revoked nor
/// expired.
async fn live(state: &AppState, caller: &Caller, user: Uuid) -> AppResult<Vec<Session>> {
    let mut tx = caller.begin(state).await?;
    let rows = sqlx::query!(
        r#"SELECT rt.family_id, rt.created_at AS last_used_at, rt.ip, rt.user_agent,
                  (SELECT min(f.created_at) FROM refresh_tokens f
                   WHERE f.clinic_id = rt.clinic_id AND f.family_id = rt.family_id) AS "created_at!"
           FROM refresh_tokens rt
           WHERE rt.user_id = $1 AND rt.revoked_at IS NULL AND rt.rotated_at IS NULL
             AND rt.family_expires_at > now() AND rt.idle_expires_at > now()
           ORDER BY rt.created_at DESC"#,
        user
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|r| Session {
            id: r.family_id,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            ip: r.ip.map(|n| n.addr().to_string()),
            user_agent: r.user_agent,
            current: caller.session_id == Some(r.family_id),
        })
        .collect())
}

/// Your signed-in devices.
#[utoipa::path(get, path = "/auth/sessions", tag = "auth", security(("bearer" = [])),
    responses((status = 200, description = "Your live sessions", body = Sessions)))]
pub async fn list_sessions(
    State(state): State<AppState>,
    caller: Caller,
) -> AppResult<Json<Sessions>> {
    let items = live(&state, &caller, caller.user_id).await?;
    Ok(Json(Sessions { items }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SessionPath {
    /// The session's id.
    id: Uuid,
}

/// A user's signed-in devices (owners only; your own are at `/auth/sessions`).
#[utoipa::path(get, path = "/users/{id}/sessions", tag = "users", security(("bearer" = [])),
    params(SessionPath),
    responses(
        (status = 200, description = "The user's live sessions", body = Sessions),
        (status = 403, description = "Only owners see other users' sessions", body = Problem),
        (status = 404, description = "No such user in your clinic", body = Problem)))]
pub async fn list_user_sessions(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(SessionPath { id }): ApiPath<SessionPath>,
) -> AppResult<Json<Sessions>> {
    if id != caller.user_id && caller.role != Role::Owner {
        let event = Event::new("session.list", "user").resource(id);
        return Err(caller
            .deny(&state, event, "only owners see other users' sessions")
            .await);
    }
    let mut tx = caller.begin(&state).await?;
    let exists = sqlx::query_scalar!("SELECT 1 FROM users WHERE id = $1", id)
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    if exists.is_none() {
        return Err(AppError::not_found("user"));
    }
    let items = live(&state, &caller, id).await?;
    Ok(Json(Sessions { items }))
}

/// Ends a session: its refresh token stops working and its access tokens are refused from
/// the next request, on every instance. Your own sessions, or (for an owner) any session of
/// your clinic's users.
#[utoipa::path(delete, path = "/auth/sessions/{id}", tag = "auth", security(("bearer" = [])),
    params(SessionPath),
    responses(
        (status = 204, description = "Ended"),
        (status = 404, description = "No such live session of yours (or, for an owner, of your clinic)", body = Problem)))]
pub async fn end_session(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(SessionPath { id }): ApiPath<SessionPath>,
) -> AppResult<StatusCode> {
    let mut tx = caller.begin(&state).await?;
    // Another user's session is "not found" for anyone but an owner, so that ids tell
    // nothing.
    let any_user = caller.role == Role::Owner;
    let owner = sqlx::query_scalar!(
        "SELECT user_id FROM refresh_tokens \
         WHERE family_id = $1 AND revoked_at IS NULL AND ($2 OR user_id = $3) LIMIT 1",
        id,
        any_user,
        caller.user_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AppError::not_found("session"))?;
    sqlx::query!(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
        id
    )
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new("session.end", "user")
            .resource(owner)
            .details(serde_json::json!({ "session_id": id })),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

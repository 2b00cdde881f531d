//! `DELETE /users/{id}/mfa`: an owner turns off the two-factor sign-in of a user who lost
//! their device and their recovery codes. The user's sessions end, they are told by email,
//! and where the clinic requires a second factor for their role, their next sign-in leads
//! straight to setting it up again.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::routes::UserPath;
use crate::audit::{self, Event};
use crate::auth::routes::revoke_refresh_tokens;
use crate::auth::{Caller, Role};
use crate::error::{AppError, AppResult, Problem};
use crate::http::extract::ApiPath;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(reset_mfa))
}

/// Turns off another user's two-factor sign-in (owners only; your own goes through
/// `DELETE /auth/mfa/totp` with your password and a code). Their recovery codes go and
/// their sessions end.
#[utoipa::path(delete, path = "/users/{id}/mfa", tag = "users", security(("bearer" = [])),
    params(UserPath),
    responses(
        (status = 204, description = "Off; the user's sessions have ended and they have been told"),
        (status = 403, description = "Not an owner, or your own account", body = Problem),
        (status = 404, description = "No such user in your clinic", body = Problem),
        (status = 409, description = "The user has no two-factor sign-in", body = Problem)))]
pub async fn reset_mfa(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(UserPath { id }): ApiPath<UserPath>,
) -> AppResult<StatusCode> {
    let event = || Event::new("user.mfa_reset", "user").resource(id);
    if caller.role != Role::Owner {
        return Err(caller
            .deny(
                &state,
                event(),
                "only owners reset another user's two-factor sign-in",
            )
            .await);
    }
    if id == caller.user_id {
        return Err(caller
            .deny(
                &state,
                event(),
                "turn your own two-factor sign-in off with DELETE /auth/mfa/totp",
            )
            .await);
    }
    let mut tx = caller.begin(&state).await?;
    let user = sqlx::query!(
        r#"SELECT email, full_name, totp_enabled_at IS NOT NULL AS "on!",
                  (SELECT full_name FROM users WHERE id = $2) AS "by!"
           FROM users WHERE id = $1 FOR UPDATE"#,
        id,
        caller.user_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AppError::not_found("user"))?;
    if !user.on {
        return Err(AppError::conflict("the user has no two-factor sign-in"));
    }
    crate::auth::totp::turn_off(&mut tx, id).await?;
    // Whoever holds the lost device may hold a session too.
    sqlx::query!(
        "UPDATE users SET auth_version = auth_version + 1 WHERE id = $1",
        id
    )
    .execute(&mut *tx)
    .await?;
    revoke_refresh_tokens(&mut tx, id).await?;
    let notice = crate::mail::mfa_reset(&user.email, &user.full_name, &user.by);
    crate::outbox::enqueue_email(
        &mut tx,
        caller.clinic_id,
        &notice,
        chrono::Duration::days(1),
    )
    .await?;
    audit::record(&mut tx, &caller.audit(), event()).await?;
    tx.commit().await?;
    state
        .cache
        .invalidate(state.redis.as_ref(), caller.clinic_id)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

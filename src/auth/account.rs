//! The caller's own account: `GET /auth/me` and `POST /auth/change-password` (hashing
//! with no connection held, then an optimistic update).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::password::check_policy;
use super::routes::*;
use super::{Caller, Permission, Role};
use crate::audit::{self, Event};
use crate::clinic::{self, Clinic};
use crate::error::{AppError, AppResult, Problem};
use crate::http::extract::ApiJson;
use crate::ratelimit::Quota;
use crate::state::AppState;
use crate::users::{self, User};
use crate::validate::Errors;

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    user: User,
    clinic: Clinic,
    role: Role,
    permissions: Vec<Permission>,
}

/// The caller, their clinic, role and permissions.
#[utoipa::path(get, path = "/auth/me", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "The signed-in user", body = Me),
        (status = 401, description = "Not signed in", body = Problem)))]
pub async fn me(State(state): State<AppState>, caller: Caller) -> AppResult<Json<Me>> {
    let mut tx = caller.begin(&state).await?;
    let user = users::load(&mut tx, caller.user_id).await?;
    let clinic = clinic::load(&mut tx, caller.clinic_id).await?;
    tx.commit().await?;
    Ok(Json(Me {
        role: user.role,
        permissions: crate::auth::grants(user.role, user.is_provider),
        user,
        clinic,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    #[schema(pattern = r"^[^\u0000]*$")]
    current_password: String,
    /// 12 to 128 characters, not a common password.
    #[schema(schema_with = crate::validate::schema::password)]
    new_password: String,
}

/// Changes the caller's password; every session of the user ends (sign in again).
#[utoipa::path(post, path = "/auth/change-password", tag = "auth", security(("bearer" = [])),
    request_body = ChangePassword,
    responses(
        (status = 204, description = "Changed; all refresh tokens revoked"),
        (status = 401, description = "Not signed in", body = Problem),
        (status = 409, description = "The password changed meanwhile", body = Problem),
        (status = 422, description = "Wrong current password or a weak new one", body = Problem),
        (status = 429, description = "Too many attempts", body = Problem)))]
pub async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ChangePassword>,
) -> AppResult<Response> {
    if let Err(res) = limit(
        &state,
        &[(
            Quota::per_minute("password-change", state.config.login_rate_limit_per_minute),
            caller.user_id.to_string(),
        )],
    )
    .await
    {
        return Ok(res);
    }
    // Argon2 is slow on purpose, so no connection (let alone a row lock) is held while
    // hashing: the current hash is read in a short transaction, both hashes are computed
    // with nothing held, and a second short transaction writes the new hash only if the
    // credentials are still the ones that were checked (optimistically, without a lock).
    let account = {
        let mut tx = caller.begin(&state).await?;
        let account = sqlx::query!(
            "SELECT password_hash, email, full_name FROM users WHERE id = $1",
            caller.user_id
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        account
    };
    let mut errors = Errors::default();
    if let Err(e) = check_policy(
        "new_password",
        &body.new_password,
        &[&account.email, &account.full_name],
    ) {
        errors.push(e);
    }
    if !state
        .passwords
        .verify(&body.current_password, Some(&account.password_hash))
        .await?
    {
        audit::record_failure(
            &state.db,
            &caller.audit(),
            Event::new("user.password_change", "user").resource(caller.user_id),
        )
        .await;
        errors.add("current_password", "is not your current password");
        return Err(errors
            .finish()
            .err()
            .unwrap_or(AppError::PreconditionFailed));
    }
    errors.finish()?;
    let new_hash = state.passwords.hash(&body.new_password).await?;
    // The session check runs again: a change that ended this session meanwhile is a 401.
    let mut tx = caller.begin(&state).await?;
    let changed = sqlx::query!(
        "UPDATE users SET password_hash = $2, auth_version = auth_version + 1, \
         version = version + 1, updated_at = now() \
         WHERE id = $1 AND password_hash = $3 AND auth_version = $4",
        caller.user_id,
        new_hash,
        account.password_hash,
        caller.auth_version
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed == 0 {
        // The credentials changed between the check and now.
        tx.rollback().await?;
        audit::record_failure(
            &state.db,
            &caller.audit(),
            Event::new("user.password_change", "user")
                .resource(caller.user_id)
                .details(serde_json::json!({"reason": "changed_meanwhile"})),
        )
        .await;
        return Err(AppError::conflict(
            "the password was changed by another request meanwhile; sign in again",
        ));
    }
    revoke_refresh_tokens(&mut tx, caller.user_id).await?;
    super::reset::revoke_reset_tokens(&mut tx, caller.user_id).await?;
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new("user.password_change", "user").resource(caller.user_id),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

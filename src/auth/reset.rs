//! Password reset by email: a one-use token valid 30 minutes, stored only as its SHA-256,
//! sent as a link to the front-end through the outbox. Asking answers 202 whatever the
//! address (the work happens after the answer, so known and unknown addresses take the
//! same time); using the token sets the password and ends every session of the user.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::Utc;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::password::check_policy;
use super::routes::{find_login, limit, revoke_refresh_tokens};
use super::sessions::Device;
use crate::audit::{self, AuditContext, Event};
use crate::error::{AppError, AppResult, Problem};
use crate::http::extract::ApiJson;
use crate::ratelimit::Quota;
use crate::state::AppState;

/// How long a reset link works.
pub const TOKEN_MINUTES: i64 = 30;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(request_reset))
        .routes(routes!(confirm_reset))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    #[schema(pattern = r"^[^\u0000]*$", max_length = 254)]
    email: String,
}

/// The same answer for every address.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    detail: &'static str,
}

const ACCEPTED: &str =
    "if an account uses this address, a message with a link to reset its password is on its way";

fn hash(token: &[u8]) -> Vec<u8> {
    Sha256::digest(token).to_vec()
}

/// Asks for a reset link by email. Always 202 with the same body (an unknown address is
/// not revealed); limited per address and per client address.
#[utoipa::path(post, path = "/auth/password-reset", tag = "auth",
    request_body = ResetRequest,
    responses(
        (status = 202, description = "Accepted, whether or not an account uses the address", body = Accepted),
        (status = 422, description = "Not an address (empty, or longer than 254 characters)", body = Problem),
        (status = 429, description = "Too many requests for this address or from this client", body = Problem)))]
pub async fn request_reset(
    State(state): State<AppState>,
    device: Device,
    ApiJson(body): ApiJson<ResetRequest>,
) -> AppResult<Response> {
    let email = body.email.trim().to_owned();
    if email.is_empty() || email.len() > 254 {
        return Err(AppError::validation(
            "email",
            "must be an email address of at most 254 characters",
        ));
    }
    // Keyed on the address as the account lookup compares it (PostgreSQL's lower()), so
    // that no spelling of one address gets a quota of its own (see find_login).
    let lowered: String = {
        let mut tx = state.db.unscoped_tx().await?;
        let l = sqlx::query_scalar!(r#"SELECT lower($1::text) AS "l!""#, email)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        l
    };
    let address_key = hex::encode(&Sha256::digest(lowered.as_bytes())[..16]);
    let ip_key = device
        .ip
        .map(crate::http::client_ip::rate_key)
        .unwrap_or_default();
    let hourly = state.config.password_reset_rate_limit_per_hour;
    let decisions = match limit(
        &state,
        &[
            (
                Quota::per_hour("reset-ip", hourly.saturating_mul(10)),
                ip_key,
            ),
            (Quota::per_hour("reset-address", hourly), address_key),
        ],
    )
    .await
    {
        Ok(d) => d,
        Err(res) => return Ok(res),
    };
    // The answer does not wait for the lookup, so its timing tells nothing.
    let request_id = crate::error::current_request_id();
    let worker = state.clone();
    tokio::spawn(async move {
        if let Err(e) = issue(&worker, &email, device.ip, request_id).await {
            tracing::error!(error = %e, "could not issue a password reset");
        }
    });
    let mut res = (StatusCode::ACCEPTED, Json(Accepted { detail: ACCEPTED })).into_response();
    crate::ratelimit::Decision::apply_headers(&decisions, res.headers_mut());
    Ok(res)
}

/// Writes the token and queues the message, for an active account with this address.
async fn issue(
    state: &AppState,
    email: &str,
    ip: Option<std::net::IpAddr>,
    request_id: Option<String>,
) -> AppResult<()> {
    let lookup = find_login(state, email).await?;
    let Some(account) = lookup.account.filter(|a| a.active) else {
        audit::record_security_event(
            &state.db,
            "auth.password_reset_unknown",
            &lookup.account_key,
            ip,
            request_id.as_deref(),
        )
        .await;
        return Ok(());
    };
    let mut token = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut token);
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
    let link = format!(
        "{}/reset-password?token={encoded}",
        state.config.public_app_url
    );
    let mut tx = state.db.clinic_tx(account.clinic_id).await?;
    let user = sqlx::query!(
        "SELECT email, full_name FROM users WHERE id = $1",
        account.user_id
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO auth_tokens (token_hash, purpose, clinic_id, user_id, expires_at) \
         VALUES ($1, 'password_reset', $2, $3, $4)",
        hash(&token),
        account.clinic_id,
        account.user_id,
        Utc::now() + chrono::Duration::minutes(TOKEN_MINUTES)
    )
    .execute(&mut *tx)
    .await?;
    let message = crate::mail::password_reset(&user.email, &user.full_name, &link);
    // Not worth sending once the link has expired.
    let give_up = chrono::Duration::minutes(TOKEN_MINUTES);
    crate::outbox::enqueue_email(&mut tx, account.clinic_id, &message, give_up).await?;
    audit::record(
        &mut tx,
        &AuditContext {
            clinic_id: account.clinic_id,
            user_id: Some(account.user_id),
            request_id,
            ip,
        },
        Event::new("auth.password_reset_request", "user").resource(account.user_id),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Ends every other reset link of a user (after a reset or a password change), in the
/// transaction's clinic.
pub async fn revoke_reset_tokens(
    tx: &mut crate::db::Tx,
    user_id: uuid::Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE auth_tokens SET used_at = now() WHERE user_id = $1 AND used_at IS NULL",
        user_id
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetConfirm {
    /// The `token` of the link.
    #[schema(pattern = r"^[^\u0000]*$", max_length = 100)]
    token: String,
    #[schema(pattern = r"^[^\u0000]*$", min_length = 12, max_length = 128)]
    new_password: String,
}

fn bad_token() -> AppError {
    AppError::validation(
        "token",
        "is invalid, already used or expired; ask for a new link",
    )
}

/// Sets a new password with a reset token: the token is used up, and every session of the
/// user ends.
#[utoipa::path(post, path = "/auth/password-reset/confirm", tag = "auth",
    request_body = ResetConfirm,
    responses(
        (status = 204, description = "The password is set; every session of the user has ended"),
        (status = 422, description = "An invalid, used or expired token, or a weak password", body = Problem)))]
pub async fn confirm_reset(
    State(state): State<AppState>,
    device: Device,
    ApiJson(body): ApiJson<ResetConfirm>,
) -> AppResult<StatusCode> {
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body.token.trim())
        .ok()
        .filter(|t| t.len() == 32)
        .ok_or_else(bad_token)?;
    let token_hash = hash(&token);
    // Whose token, without using it: a weak password leaves the link working.
    let mut tx = state.db.unscoped_tx().await?;
    let found = sqlx::query!(
        r#"SELECT clinic_id AS "clinic_id!", user_id AS "user_id!" FROM auth_token_peek('password_reset', $1)"#,
        token_hash
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let found = found.ok_or_else(bad_token)?;
    let (clinic_id, user_id) = (found.clinic_id, found.user_id);
    let mut tx = state.db.clinic_tx(clinic_id).await?;
    let user = sqlx::query!(
        "SELECT email, full_name FROM users WHERE id = $1 AND active",
        user_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let user = user.ok_or_else(bad_token)?;
    if let Err(e) = check_policy(
        "new_password",
        &body.new_password,
        &[&user.email, &user.full_name],
    ) {
        return Err(AppError::Validation(vec![e]));
    }
    let new_hash = state.passwords.hash(&body.new_password).await?;

    // Used once: of two requests with one token, one gets it.
    let mut tx = state.db.unscoped_tx().await?;
    let used = sqlx::query!(
        r#"SELECT clinic_id AS "clinic_id!", user_id AS "user_id!" FROM auth_token_use('password_reset', $1)"#,
        token_hash
    )
    .fetch_optional(&mut *tx)
    .await?;
    if !used.is_some_and(|u| u.clinic_id == clinic_id && u.user_id == user_id) {
        return Err(bad_token());
    }
    sqlx::query_scalar!(
        r#"SELECT set_config('app.clinic_id', $1, true) AS "set!""#,
        clinic_id.to_string()
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE users SET password_hash = $2, auth_version = auth_version + 1 WHERE id = $1",
        user_id,
        new_hash
    )
    .execute(&mut *tx)
    .await?;
    revoke_refresh_tokens(&mut tx, user_id).await?;
    revoke_reset_tokens(&mut tx, user_id).await?;
    audit::record(
        &mut tx,
        &AuditContext {
            clinic_id,
            user_id: Some(user_id),
            request_id: crate::error::current_request_id(),
            ip: device.ip,
        },
        Event::new("auth.password_reset", "user").resource(user_id),
    )
    .await?;
    tx.commit().await?;
    state
        .cache
        .invalidate(state.redis.as_ref(), clinic_id)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

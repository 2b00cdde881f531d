//! Verified email addresses. A new account gets a link to confirm its address; a changed
//! address waits in `pending_email` until the link sent to it is used. An account that is
//! still unverified `EMAIL_VERIFICATION_GRACE_HOURS` after it was made no longer signs in
//! (its sign-in sends a fresh link) and no longer holds its address against others (see
//! the migration `email_verification`). Links are one-use tokens stored as SHA-256 hashes,
//! good for the address they were sent to only.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::routes::limit;
use super::sessions::Device;
use super::Caller;
use crate::audit::{self, AuditContext, Event};
use crate::db::Tx;
use crate::error::{AppError, AppResult, OnConstraint, Problem};
use crate::http::extract::ApiJson;
use crate::ratelimit::Quota;
use crate::state::AppState;

/// How long a verification link works.
pub const TOKEN_HOURS: i64 = 48;
/// Links a user may ask for in an hour.
const REQUESTS_PER_HOUR: u32 = 5;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(request_verification))
        .routes(routes!(confirm_verification))
}

/// Until when a new account signs in unverified.
pub fn deadline(state: &AppState) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::hours(i64::from(state.config.email_verification_grace_hours))
}

fn hash(token: &[u8]) -> Vec<u8> {
    Sha256::digest(token).to_vec()
}

/// Writes a verification token for `address` and queues the message with its link, in the
/// caller's transaction (so the message goes out exactly when the change is committed).
pub async fn send_link(
    state: &AppState,
    tx: &mut Tx,
    clinic_id: Uuid,
    user_id: Uuid,
    name: &str,
    address: &str,
) -> AppResult<()> {
    let mut token = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut token);
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
    let link = format!(
        "{}/verify-email?token={encoded}",
        state.config.public_app_url
    );
    sqlx::query!(
        "INSERT INTO auth_tokens (token_hash, purpose, clinic_id, user_id, expires_at, email) \
         VALUES ($1, 'verify_email', $2, $3, $4, $5)",
        hash(&token),
        clinic_id,
        user_id,
        Utc::now() + chrono::Duration::hours(TOKEN_HOURS),
        address
    )
    .execute(&mut **tx)
    .await?;
    let message = crate::mail::verify_email(address, name, &link, TOKEN_HOURS);
    crate::outbox::enqueue_email(
        tx,
        clinic_id,
        &message,
        chrono::Duration::hours(TOKEN_HOURS),
    )
    .await?;
    Ok(())
}

/// A sign-in refused because the grace for verifying ran out: sends a fresh link unless one
/// went out in the last ten minutes, and says so.
pub async fn refuse_unverified(
    state: &AppState,
    ctx: &AuditContext,
    clinic_id: Uuid,
    user_id: Uuid,
) -> AppResult<AppError> {
    let mut tx = state.db.clinic_tx(clinic_id).await?;
    let user = sqlx::query!(
        r#"SELECT email, full_name,
                  EXISTS (SELECT 1 FROM auth_tokens t
                          WHERE t.user_id = u.id AND t.purpose = 'verify_email'
                            AND t.used_at IS NULL
                            AND t.created_at > now() - interval '10 minutes') AS "recent!"
           FROM users u WHERE id = $1"#,
        user_id
    )
    .fetch_one(&mut *tx)
    .await?;
    if !user.recent {
        send_link(
            state,
            &mut tx,
            clinic_id,
            user_id,
            &user.full_name,
            &user.email,
        )
        .await?;
    }
    audit::record_refusal(
        &mut tx,
        ctx,
        Event::new("auth.login", "user")
            .resource(user_id)
            .details(serde_json::json!({ "reason": "email_unverified" })),
    )
    .await?;
    tx.commit().await?;
    Ok(AppError::Forbidden(
        "confirm your email address to sign in: a link has been sent to it".into(),
    ))
}

/// Where the link went.
#[derive(Debug, Serialize, ToSchema)]
pub struct LinkSent {
    /// The address the link was sent to (a pending new address, or the account's own).
    email: String,
    expires_in_hours: i64,
}

/// Sends the caller a link to confirm their address: the pending new address if they
/// changed it, else their unverified sign-in address.
#[utoipa::path(post, path = "/auth/verify-email", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 202, description = "A link is on its way", body = LinkSent),
        (status = 401, description = "Not signed in", body = Problem),
        (status = 409, description = "The address is verified and no change is pending", body = Problem),
        (status = 429, description = "Too many links asked for this hour", body = Problem)))]
pub async fn request_verification(
    State(state): State<AppState>,
    caller: Caller,
) -> AppResult<Response> {
    let decisions = match limit(
        &state,
        &[(
            Quota::per_hour("verify-email", REQUESTS_PER_HOUR),
            caller.user_id.simple().to_string(),
        )],
    )
    .await
    {
        Ok(d) => d,
        Err(res) => return Ok(res),
    };
    let mut tx = caller.begin(&state).await?;
    let user = sqlx::query!(
        r#"SELECT email, full_name, pending_email, email_verified_at IS NOT NULL AS "verified!"
           FROM users WHERE id = $1"#,
        caller.user_id
    )
    .fetch_one(&mut *tx)
    .await?;
    let address = match (user.pending_email, user.verified) {
        (Some(pending), _) => pending,
        (None, false) => user.email,
        (None, true) => {
            return Err(AppError::conflict(
                "your address is verified and no change of address is pending",
            ))
        }
    };
    send_link(
        &state,
        &mut tx,
        caller.clinic_id,
        caller.user_id,
        &user.full_name,
        &address,
    )
    .await?;
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new("auth.verify_email_request", "user").resource(caller.user_id),
    )
    .await?;
    tx.commit().await?;
    let mut res = (
        StatusCode::ACCEPTED,
        Json(LinkSent {
            email: address,
            expires_in_hours: TOKEN_HOURS,
        }),
    )
        .into_response();
    crate::ratelimit::Decision::apply_headers(&decisions, res.headers_mut());
    Ok(res)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfirm {
    /// The `token` of the link.
    #[schema(pattern = r"^[^\u0000]*$", max_length = 100)]
    token: String,
}

/// The account's address, now verified.
#[derive(Debug, Serialize, ToSchema)]
pub struct Verified {
    user_id: Uuid,
    email: String,
    email_verified: bool,
}

fn bad_token() -> AppError {
    AppError::validation(
        "token",
        "is invalid, already used, expired or for an address the account no longer uses; \
         ask for a new link",
    )
}

/// Confirms an address with the token of a link: an unverified sign-in address becomes
/// verified, or a pending new address replaces the old one (which is told of the change).
#[utoipa::path(post, path = "/auth/verify-email/confirm", tag = "auth",
    request_body = VerifyConfirm,
    responses(
        (status = 200, description = "The address is verified", body = Verified),
        (status = 409, description = "The new address was taken by another account meanwhile", body = Problem),
        (status = 422, description = "An invalid, used or expired token", body = Problem)))]
pub async fn confirm_verification(
    State(state): State<AppState>,
    device: Device,
    ApiJson(body): ApiJson<VerifyConfirm>,
) -> AppResult<Json<Verified>> {
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body.token.trim())
        .ok()
        .filter(|t| t.len() == 32)
        .ok_or_else(bad_token)?;
    // Used once: of two requests with one token, one gets it. A failure below rolls the
    // use back with everything else.
    let mut tx = state.db.unscoped_tx().await?;
    let used = sqlx::query!(
        r#"SELECT clinic_id AS "clinic_id!", user_id AS "user_id!", email AS "email!"
           FROM auth_token_use('verify_email', $1)"#,
        hash(&token)
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(bad_token)?;
    let (clinic_id, user_id) = (used.clinic_id, used.user_id);
    sqlx::query_scalar!(
        r#"SELECT set_config('app.clinic_id', $1, true) AS "set!""#,
        clinic_id.to_string()
    )
    .fetch_one(&mut *tx)
    .await?;
    // Addresses compare as the sign-in lookup compares them: PostgreSQL's lower().
    let user = sqlx::query!(
        r#"SELECT email, full_name,
                  coalesce(lower(pending_email) = lower($2), false) AS "is_pending!",
                  lower(email) = lower($2) AS "is_current!",
                  email_verified_at IS NOT NULL AS "verified!"
           FROM users WHERE id = $1 AND active FOR UPDATE"#,
        user_id,
        used.email
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(bad_token)?;
    let ctx = AuditContext {
        clinic_id,
        user_id: Some(user_id),
        request_id: crate::error::current_request_id(),
        ip: device.ip,
    };
    let email = if user.is_pending {
        let changed = sqlx::query_scalar!(
            "UPDATE users SET email = pending_email, pending_email = NULL, \
             email_verified_at = now(), email_verify_by = NULL, version = version + 1, \
             updated_at = now() WHERE id = $1 RETURNING email",
            user_id
        )
        .fetch_one(&mut *tx)
        .await
        .on_constraint("user_logins_pkey", || {
            AppError::conflict("another account took this address meanwhile")
        })?;
        let notice = crate::mail::email_changed(&user.email, &user.full_name, &changed);
        crate::outbox::enqueue_email(&mut tx, clinic_id, &notice, chrono::Duration::days(1))
            .await?;
        // Links to the old address are void now.
        sqlx::query!(
            "UPDATE auth_tokens SET used_at = now() \
             WHERE user_id = $1 AND purpose = 'verify_email' AND used_at IS NULL",
            user_id
        )
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            &ctx,
            Event::new("user.email_change", "user").resource(user_id),
        )
        .await?;
        changed
    } else if user.is_current && !user.verified {
        sqlx::query!(
            "UPDATE users SET email_verified_at = now(), email_verify_by = NULL, \
             version = version + 1, updated_at = now() WHERE id = $1",
            user_id
        )
        .execute(&mut *tx)
        .await
        .on_constraint("user_logins_pkey", || {
            AppError::conflict("another account took this address meanwhile")
        })?;
        audit::record(
            &mut tx,
            &ctx,
            Event::new("user.email_verified", "user").resource(user_id),
        )
        .await?;
        user.email
    } else {
        return Err(bad_token());
    };
    tx.commit().await?;
    state
        .cache
        .invalidate(state.redis.as_ref(), clinic_id)
        .await;
    Ok(Json(Verified {
        user_id,
        email,
        email_verified: true,
    }))
}

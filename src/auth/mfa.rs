//! Two-factor sign-in with TOTP: the routes that set it up, turn it on and off, and the
//! second step of a sign-in; and the clinic setting that requires it for chosen roles. The
//! codes, recovery codes and the sealing of secrets are in [`super::totp`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use totp_rs::Secret;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::routes::{issue_pair, limit, TokenPair};
use super::sessions::Device;
use super::totp::{accepted_step, new_recovery_codes, recovery_hash, totp};
use super::{Caller, Role};
use crate::audit::{self, AuditContext, Event};
use crate::db::Tx;
use crate::error::{AppError, AppResult, Problem};
use crate::http::extract::ApiJson;
use crate::ratelimit::Quota;
use crate::state::AppState;

/// What a setup-only token opens.
pub const SETUP_ONLY_PATHS: [&str; 4] = [
    "/api/v2/auth/mfa/totp",
    "/api/v2/auth/mfa/totp/enable",
    "/api/v2/auth/me",
    "/api/v2/auth/sessions",
];
/// Second-step attempts per user per hour (besides `LOGIN_RATE_LIMIT_PER_MINUTE`).
const MFA_ATTEMPTS_PER_HOUR: u32 = 20;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(setup_totp, disable_totp))
        .routes(routes!(enable_totp))
        .routes(routes!(login_mfa))
}

/// Keeps a secret that was opened with a previous key sealed under the current one.
async fn reseal(tx: &mut Tx, user: Uuid, resealed: Option<Vec<u8>>) -> AppResult<()> {
    if let Some(sealed) = resealed {
        sqlx::query!(
            "UPDATE users SET totp_secret = $2 WHERE id = $1",
            user,
            sealed
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TotpSetup {
    /// The shared secret, base32 (for typing into an authenticator app).
    secret: String,
    /// The same as an `otpauth://` URI (for a QR code).
    otpauth_uri: String,
}

/// Starts setting up TOTP: a new secret, kept pending until a code from it enables it.
#[utoipa::path(post, path = "/auth/mfa/totp", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "The secret, to add to an authenticator app", body = TotpSetup),
        (status = 409, description = "TOTP is already on (disable it first)", body = Problem)))]
pub async fn setup_totp(
    State(state): State<AppState>,
    caller: Caller,
) -> AppResult<Json<TotpSetup>> {
    let mut secret = [0u8; 20];
    rand::thread_rng().fill_bytes(&mut secret);
    let mut tx = caller.begin(&state).await?;
    let user = sqlx::query!(
        r#"SELECT email, totp_enabled_at IS NOT NULL AS "on!" FROM users WHERE id = $1 FOR UPDATE"#,
        caller.user_id
    )
    .fetch_one(&mut *tx)
    .await?;
    if user.on {
        return Err(AppError::conflict(
            "two-factor sign-in is already on; disable it first to set up a new device",
        ));
    }
    let sealed = state
        .secret_seal
        .seal(caller.clinic_id, caller.user_id, &secret)?;
    sqlx::query!(
        "UPDATE users SET totp_pending = $2 WHERE id = $1",
        caller.user_id,
        sealed
    )
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new("auth.mfa_setup", "user").resource(caller.user_id),
    )
    .await?;
    tx.commit().await?;
    let t = totp(&secret, &user.email)?;
    Ok(Json(TotpSetup {
        secret: Secret::new(secret.to_vec().into_boxed_slice()).to_base32(),
        otpauth_uri: t
            .to_url()
            .map_err(|e| AppError::Internal(anyhow::anyhow!("TOTP URL: {e}")))?,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpCode {
    /// The six digits the authenticator app shows now.
    #[schema(pattern = r"^[^\u0000]*$", max_length = 20)]
    code: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryCodes {
    /// Ten one-use codes for signing in without the device; shown this once.
    recovery_codes: Vec<String>,
}

/// Turns TOTP on with a code from the pending secret; answers the ten recovery codes once.
#[utoipa::path(post, path = "/auth/mfa/totp/enable", tag = "auth", security(("bearer" = [])),
    request_body = TotpCode,
    responses(
        (status = 200, description = "On; the recovery codes (shown only now)", body = RecoveryCodes),
        (status = 409, description = "No setup is pending, or TOTP is already on", body = Problem),
        (status = 422, description = "The code does not match", body = Problem)))]
pub async fn enable_totp(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<TotpCode>,
) -> AppResult<Json<RecoveryCodes>> {
    let mut tx = caller.begin(&state).await?;
    let user = sqlx::query!(
        r#"SELECT email, totp_pending, totp_enabled_at IS NOT NULL AS "on!" FROM users WHERE id = $1 FOR UPDATE"#,
        caller.user_id
    )
    .fetch_one(&mut *tx)
    .await?;
    let pending = match (user.on, user.totp_pending) {
        (false, Some(p)) => p,
        _ => {
            return Err(AppError::conflict(
                "no TOTP setup is pending: start one with POST /auth/mfa/totp",
            ))
        }
    };
    let (secret, _) = state
        .secret_seal
        .open(caller.clinic_id, caller.user_id, &pending)?;
    let step = accepted_step(&totp(&secret, &user.email)?, &body.code, None)
        .ok_or_else(|| AppError::validation("code", "does not match; check the device's clock"))?;
    sqlx::query!(
        "UPDATE users SET totp_secret = totp_pending, totp_pending = NULL, totp_enabled_at = now(), \
         totp_last_step = $2 WHERE id = $1",
        caller.user_id,
        step
    )
    .execute(&mut *tx)
    .await?;
    let codes = new_recovery_codes();
    replace_recovery_codes(&mut tx, caller.clinic_id, caller.user_id, &codes).await?;
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new("auth.mfa_enable", "user").resource(caller.user_id),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(RecoveryCodes {
        recovery_codes: codes,
    }))
}

async fn replace_recovery_codes(
    tx: &mut Tx,
    clinic: Uuid,
    user: Uuid,
    codes: &[String],
) -> AppResult<()> {
    sqlx::query!("DELETE FROM mfa_recovery_codes WHERE user_id = $1", user)
        .execute(&mut **tx)
        .await?;
    let hashes: Vec<Vec<u8>> = codes.iter().map(|c| recovery_hash(c)).collect();
    sqlx::query!(
        "INSERT INTO mfa_recovery_codes (clinic_id, user_id, code_hash) \
         SELECT $1, $2, h FROM unnest($3::bytea[]) AS h",
        clinic,
        user,
        &hashes
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisableTotp {
    #[schema(pattern = r"^[^\u0000]*$", max_length = 128)]
    password: String,
    /// A current code from the device.
    #[schema(pattern = r"^[^\u0000]*$", max_length = 20)]
    code: String,
}

/// Turns TOTP off; needs the password and a current code.
#[utoipa::path(delete, path = "/auth/mfa/totp", tag = "auth", security(("bearer" = [])),
    request_body = DisableTotp,
    responses(
        (status = 204, description = "Off; the recovery codes are gone"),
        (status = 409, description = "TOTP is not on, or the clinic requires it for your role", body = Problem),
        (status = 422, description = "The password or the code is wrong (one answer for both)", body = Problem),
        (status = 429, description = "Too many attempts", body = Problem)))]
pub async fn disable_totp(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<DisableTotp>,
) -> AppResult<axum::response::Response> {
    use axum::response::IntoResponse;
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
    let read = {
        let mut tx = caller.begin(&state).await?;
        let row = sqlx::query!(
            r#"SELECT u.password_hash, u.totp_enabled_at IS NOT NULL AS "on!", c.settings
               FROM users u JOIN clinics c ON c.id = u.clinic_id WHERE u.id = $1"#,
            caller.user_id
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        row
    };
    if !read.on {
        return Err(AppError::conflict("two-factor sign-in is not on"));
    }
    if required_for(&read.settings, caller.role) {
        return Err(AppError::conflict(
            "your clinic requires two-factor sign-in for your role; it stays on",
        ));
    }
    // One answer for a wrong password and a wrong code.
    let wrong = || AppError::validation("password", "the password or the code is wrong");
    let event = || Event::new("auth.mfa_disable", "user").resource(caller.user_id);
    let password_ok = state
        .passwords
        .verify(&body.password, Some(&read.password_hash))
        .await?;
    let mut tx = caller.begin(&state).await?;
    let user = sqlx::query!(
        "SELECT email, totp_secret, totp_last_step FROM users WHERE id = $1 FOR UPDATE",
        caller.user_id
    )
    .fetch_one(&mut *tx)
    .await?;
    let Some(sealed) = user.totp_secret else {
        return Err(AppError::conflict("two-factor sign-in is not on"));
    };
    let (secret, _) = state
        .secret_seal
        .open(caller.clinic_id, caller.user_id, &sealed)?;
    let code_ok = accepted_step(
        &totp(&secret, &user.email)?,
        &body.code,
        user.totp_last_step,
    )
    .is_some();
    if !(password_ok && code_ok) {
        tx.rollback().await?;
        audit::record_failure(&state.db, &caller.audit(), event()).await;
        return Err(wrong());
    }
    super::totp::turn_off(&mut tx, caller.user_id).await?;
    audit::record(&mut tx, &caller.audit(), event()).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginMfa {
    /// The `mfa_token` of the first step.
    #[schema(pattern = r"^[^\u0000]*$", max_length = 2048)]
    mfa_token: String,
    /// The device's current code (or give `recovery_code`).
    #[schema(pattern = r"^[^\u0000]*$", max_length = 20)]
    code: Option<String>,
    /// One of the recovery codes, used up by this sign-in.
    #[schema(pattern = r"^[^\u0000]*$", max_length = 40)]
    recovery_code: Option<String>,
}

fn wrong_code() -> AppError {
    AppError::Unauthorized(
        "the code is wrong, was used already, or the sign-in took too long".into(),
    )
}

/// The second step of a sign-in with two-factor authentication: the first step's
/// `mfa_token` and a code (or a recovery code) → tokens.
#[utoipa::path(post, path = "/auth/login/mfa", tag = "auth",
    request_body = LoginMfa,
    responses(
        (status = 200, description = "Signed in", body = TokenPair),
        (status = 401, description = "A wrong or reused code, or an expired mfa_token", body = Problem),
        (status = 422, description = "Neither or both of code and recovery_code", body = Problem),
        (status = 429, description = "Too many attempts", body = Problem)))]
pub async fn login_mfa(
    State(state): State<AppState>,
    device: Device,
    ApiJson(body): ApiJson<LoginMfa>,
) -> AppResult<axum::response::Response> {
    use axum::response::IntoResponse;
    if body.code.is_some() == body.recovery_code.is_some() {
        return Err(AppError::validation(
            "code",
            "give either code or recovery_code",
        ));
    }
    let claims = state
        .tokens
        .verify_mfa(body.mfa_token.trim())
        .map_err(|_| wrong_code())?;
    let (clinic_id, user_id) = (claims.cid, claims.sub);
    let decisions = match limit(
        &state,
        &[
            (
                Quota::per_minute("login-mfa", state.config.login_rate_limit_per_minute),
                user_id.to_string(),
            ),
            // Six digits are a small space: at most this many guesses an hour.
            (
                Quota::per_hour("login-mfa-hour", MFA_ATTEMPTS_PER_HOUR),
                user_id.to_string(),
            ),
        ],
    )
    .await
    {
        Ok(d) => d,
        Err(res) => return Ok(res),
    };
    let ctx = AuditContext {
        clinic_id,
        user_id: Some(user_id),
        request_id: crate::error::current_request_id(),
        ip: device.ip,
    };
    let mut tx = state.db.clinic_tx(clinic_id).await?;
    let user = sqlx::query!(
        "SELECT email, role, is_provider, auth_version, totp_secret, totp_last_step \
         FROM users WHERE id = $1 AND active FOR UPDATE",
        user_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let role = user.as_ref().and_then(|u| Role::parse(&u.role));
    let (Some(user), Some(role)) = (user, role) else {
        return Err(wrong_code());
    };
    // A password change since the first step ends it too.
    let sealed = match (&user.totp_secret, user.auth_version == claims.ver) {
        (Some(s), true) => s.clone(),
        _ => return Err(wrong_code()),
    };
    let how = if let Some(code) = &body.code {
        let (secret, resealed) = state.secret_seal.open(clinic_id, user_id, &sealed)?;
        reseal(&mut tx, user_id, resealed).await?;
        match accepted_step(&totp(&secret, &user.email)?, code, user.totp_last_step) {
            Some(step) => {
                sqlx::query!(
                    "UPDATE users SET totp_last_step = $2 WHERE id = $1",
                    user_id,
                    step
                )
                .execute(&mut *tx)
                .await?;
                Some("totp")
            }
            None => None,
        }
    } else {
        let hash = recovery_hash(body.recovery_code.as_deref().unwrap_or_default());
        let used = sqlx::query_scalar!(
            "UPDATE mfa_recovery_codes SET used_at = now() \
             WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL RETURNING user_id",
            user_id,
            hash
        )
        .fetch_optional(&mut *tx)
        .await?;
        used.map(|_| "recovery_code")
    };
    let Some(how) = how else {
        tx.rollback().await?;
        audit::record_failure(
            &state.db,
            &ctx,
            Event::new("auth.login", "user")
                .resource(user_id)
                .details(serde_json::json!({ "reason": "wrong_second_factor" })),
        )
        .await;
        return Err(wrong_code());
    };
    let pair = issue_pair(
        &state,
        &mut tx,
        clinic_id,
        user_id,
        role,
        user.is_provider,
        user.auth_version,
        &device,
    )
    .await?;
    audit::record(
        &mut tx,
        &ctx,
        Event::new("auth.login", "user")
            .resource(user_id)
            .details(serde_json::json!({ "second_factor": how })),
    )
    .await?;
    tx.commit().await?;
    let mut res = Json(pair).into_response();
    crate::ratelimit::Decision::apply_headers(&decisions, res.headers_mut());
    Ok(res)
}

/// What the first step of a sign-in answers besides a token pair.
#[derive(Debug, Serialize, ToSchema)]
pub struct MfaChallenge {
    /// Always true: send a code with `mfa_token` to `POST /auth/login/mfa`.
    mfa_required: bool,
    mfa_token: String,
    /// Seconds left for the second step.
    expires_in: i64,
}

impl MfaChallenge {
    pub fn new(mfa_token: String) -> MfaChallenge {
        MfaChallenge {
            mfa_required: true,
            mfa_token,
            expires_in: super::tokens::MFA_TOKEN_SECONDS,
        }
    }
}

/// The answer to a sign-in whose role must use two-factor sign-in but has not set it up:
/// a token that opens only the setup routes.
#[derive(Debug, Serialize, ToSchema)]
pub struct MfaSetupRequired {
    /// Always true.
    mfa_setup_required: bool,
    /// Opens only `/auth/mfa/totp`, `/auth/mfa/totp/enable`, `/auth/me` and `/auth/sessions`.
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
}

impl MfaSetupRequired {
    pub fn new(access_token: String, expires_in: i64) -> MfaSetupRequired {
        MfaSetupRequired {
            mfa_setup_required: true,
            access_token,
            token_type: "Bearer",
            expires_in,
        }
    }
}

/// Whether the clinic's settings require two-factor sign-in for the role
/// (`settings.mfa_required_roles`, a list of role names).
pub fn required_for(settings: &serde_json::Value, role: Role) -> bool {
    settings
        .get("mfa_required_roles")
        .and_then(|v| v.as_array())
        .is_some_and(|roles| roles.iter().any(|r| r.as_str() == Some(role.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_that_must_use_a_second_factor_come_from_the_clinic_settings() {
        let s = serde_json::json!({"mfa_required_roles": ["owner", "admin"]});
        assert!(required_for(&s, Role::Owner));
        assert!(!required_for(&s, Role::Dentist));
        assert!(!required_for(&serde_json::json!({}), Role::Owner));
        assert!(!required_for(
            &serde_json::json!({"mfa_required_roles": "owner"}),
            Role::Owner
        ));
    }
}

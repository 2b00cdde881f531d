//! Registration, sign-in, token refresh and logout, the caller's own account, and
//! password changes.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::sessions::Device;
use super::tokens::RefreshToken;
use super::Role;
use crate::audit::{self, AuditContext, Event};
use crate::clinic::create::{register, RegisterClinic, Registered};
use crate::db::Tx;
use crate::error::{AppError, AppResult, Problem};
use crate::http::client_ip::ClientIp;
use crate::http::extract::ApiJson;
use crate::ratelimit::{Decision, Quota, WhenRedisDown};
use crate::state::AppState;

use super::account::*;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_clinic))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(change_password))
}

/// What a sign-in answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum LoginAnswer {
    Tokens(TokenPair),
    Mfa(super::mfa::MfaChallenge),
    Setup(super::mfa::MfaSetupRequired),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    /// A JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Opaque; exchange it at `/auth/refresh`. Single use: each refresh returns a new one.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

fn bad_credentials() -> AppError {
    AppError::Unauthorized("the email or password is incorrect".into())
}

fn bad_refresh() -> AppError {
    AppError::Unauthorized("the refresh token is invalid, expired or revoked".into())
}

/// Starts a new refresh-token family for a user and returns the token pair.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn issue_pair(
    state: &AppState,
    tx: &mut Tx,
    clinic_id: Uuid,
    user_id: Uuid,
    role: Role,
    provider: bool,
    auth_version: i32,
    device: &Device,
) -> AppResult<TokenPair> {
    let now = Utc::now();
    let family_expires = now + ChronoDuration::days(state.config.refresh_token_expire_days);
    let refresh = RefreshToken::generate(clinic_id);
    let family = Uuid::now_v7();
    store_refresh(state, tx, &refresh, family, user_id, family_expires, device).await?;
    Ok(TokenPair {
        access_token: state.tokens.issue_access(
            user_id,
            clinic_id,
            role,
            provider,
            auth_version,
            family,
        )?,
        refresh_token: refresh.encode(),
        token_type: "Bearer",
        expires_in: state.tokens.access_ttl_secs,
    })
}

async fn store_refresh(
    state: &AppState,
    tx: &mut Tx,
    token: &RefreshToken,
    family_id: Uuid,
    user_id: Uuid,
    family_expires: DateTime<Utc>,
    device: &Device,
) -> AppResult<()> {
    let idle = (Utc::now() + ChronoDuration::days(state.config.refresh_token_idle_days))
        .min(family_expires);
    sqlx::query!(
        "INSERT INTO refresh_tokens (clinic_id, id, family_id, user_id, secret_hash, family_expires_at, \
                                     idle_expires_at, ip, user_agent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        token.clinic_id,
        token.id,
        family_id,
        user_id,
        token.secret_hash(),
        family_expires,
        idle,
        device.ip.map(ipnet::IpNet::from),
        device.user_agent.as_deref()
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends a refresh-token family (logout, or an exchanged token presented again).
async fn revoke_family(tx: &mut Tx, family_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
        family_id
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends every refresh-token family of a user (password change, deactivation).
pub(crate) async fn revoke_refresh_tokens(tx: &mut Tx, user_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
        user_id
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Applies the given quotas; 429 (with headers) when any is spent.
pub(super) async fn limit(
    state: &AppState,
    checks: &[(Quota, String)],
) -> Result<Vec<Decision>, Response> {
    let decisions = state
        .limiter
        .check_all(state.redis.as_ref(), checks, WhenRedisDown::LocalLimit)
        .await;
    if let Some(res) = Decision::rejection(&decisions) {
        return Err(res);
    }
    Ok(decisions)
}

/// The per-account sign-in quota's key for an account key from [`find_login`].
fn account_rate_key(account_key: &str) -> String {
    hex::encode(&Sha256::digest(account_key.as_bytes())[..16])
}

/// What [`find_login`] found for an email.
pub(super) struct LoginLookup {
    /// The email as the account lookup compares it: PostgreSQL's `lower()` of it.
    pub(super) account_key: String,
    pub(super) account: Option<LoginAccount>,
}

pub(super) struct LoginAccount {
    pub(super) clinic_id: Uuid,
    pub(super) user_id: Uuid,
    password_hash: String,
    pub(super) active: bool,
    /// Until when the account signs in with an unverified address (None: verified, or from
    /// before verification).
    verify_by: Option<chrono::DateTime<Utc>>,
}

/// Finds the account an email signs in to, and the key that account's sign-in quota is
/// charged under, in one statement.
///
/// Emails are matched as `lower(email)` in the database (`auth_find_login`, and the
/// `user_logins` table its trigger fills). The quota must be keyed on exactly that
/// normalisation: any other one (Rust's `to_lowercase()`, say) disagrees with it on some
/// characters — U+0130 `İ` is `i` to PostgreSQL's `lower()` under a UTF-8 locale, and
/// `i` followed by U+0307 to Rust — so spellings of one address would each get a quota of
/// their own while reaching the same account. The key is therefore computed by the database, from
/// the same argument and in the same statement as the lookup: two spellings reach one
/// account exactly when they have one key, whatever the database's locale or version. It
/// is the same for an email that matches no account, so a shared quota tells nothing
/// about which addresses exist.
pub(super) async fn find_login(state: &AppState, email: &str) -> AppResult<LoginLookup> {
    let mut tx = state.db.unscoped_tx().await?;
    let row = sqlx::query!(
        r#"SELECT lower($1::text) AS "account_key!", f.clinic_id AS "clinic_id?",
                  f.user_id AS "user_id?", f.password_hash AS "password_hash?", f.active AS "active?",
                  f.verify_by
           FROM (VALUES (1)) AS one (x) LEFT JOIN LATERAL auth_find_login($1::text) AS f ON true"#,
        email
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let account = match (row.clinic_id, row.user_id, row.password_hash, row.active) {
        (Some(clinic_id), Some(user_id), Some(password_hash), Some(active)) => Some(LoginAccount {
            clinic_id,
            user_id,
            password_hash,
            active,
            verify_by: row.verify_by,
        }),
        _ => None,
    };
    Ok(LoginLookup {
        account_key: row.account_key,
        account,
    })
}

/// Registers a clinic with its first owner (can be switched off: then 404).
#[utoipa::path(post, path = "/auth/register-clinic", tag = "auth",
    request_body = RegisterClinic,
    responses(
        (status = 201, description = "The clinic, its owner and their tokens", body = Registered),
        (status = 404, description = "Sign-up is switched off", body = Problem),
        (status = 409, description = "The email is already in use", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
        (status = 429, description = "Too many sign-ups from this address", body = Problem)))]
pub async fn register_clinic(
    State(state): State<AppState>,
    device: Device,
    ApiJson(body): ApiJson<RegisterClinic>,
) -> AppResult<Response> {
    let ip = device.ip;
    if !state.config.allow_clinic_signup {
        return Err(AppError::NotFound("no resource at this path".into()));
    }
    let ip_key = ip.map(crate::http::client_ip::rate_key).unwrap_or_default();
    if let Err(res) = limit(
        &state,
        &[(
            Quota::per_hour("signup-ip", state.config.signup_rate_limit_per_hour),
            ip_key,
        )],
    )
    .await
    {
        return Ok(res);
    }
    let registered = register(&state, body, &device).await?;
    let mut res = (StatusCode::CREATED, Json(registered)).into_response();
    res.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/api/v2/clinic"));
    Ok(res)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    #[schema(pattern = r"^[^\u0000]*$")]
    email: String,
    #[schema(pattern = r"^[^\u0000]*$")]
    password: String,
}

/// Signs in. A wrong email and a wrong password give the same 401 in about the same time.
#[utoipa::path(post, path = "/auth/login", tag = "auth",
    request_body = Login,
    responses(
        (status = 200, description = "Signed in (a token pair); or, for a user with two-factor sign-in, \
            `mfa_required` and an `mfa_token` for `POST /auth/login/mfa`; or, when the clinic requires \
            it for the role and it is not set up, `mfa_setup_required` and a token for the setup routes only",
            body = LoginAnswer),
        (status = 401, description = "Wrong email or password", body = Problem),
        (status = 403, description = "The right password, but the account's time to confirm its email \
            address ran out: a new link is sent to it", body = Problem),
        (status = 429, description = "Too many attempts", body = Problem)))]
pub async fn login(
    State(state): State<AppState>,
    device: Device,
    ApiJson(body): ApiJson<Login>,
) -> AppResult<Response> {
    let ip = device.ip;
    let request_id = crate::error::current_request_id();
    // The client address's quota first, before any database work.
    let mut decisions = match limit(
        &state,
        &[(
            Quota::per_minute("login-ip", state.config.login_ip_rate_limit_per_minute),
            ip.map(crate::http::client_ip::rate_key).unwrap_or_default(),
        )],
    )
    .await
    {
        Ok(d) => d,
        Err(res) => return Ok(res),
    };
    let email = body.email.trim();
    if email.len() > 254 {
        // No account has such an email. Still spend the hashing time, so that length
        // does not tell.
        state.passwords.verify(&body.password, None).await?;
        return Err(bad_credentials());
    }
    let lookup = find_login(&state, email).await?;
    match limit(
        &state,
        &[(
            Quota::per_minute("login-account", state.config.login_rate_limit_per_minute),
            account_rate_key(&lookup.account_key),
        )],
    )
    .await
    {
        Ok(d) => decisions.extend(d),
        Err(res) => return Ok(res),
    }
    if body.password.chars().count() > super::password::MAX_LENGTH {
        state.passwords.verify(&body.password, None).await?;
        return Err(bad_credentials());
    }
    let ok = state
        .passwords
        .verify(
            &body.password,
            lookup.account.as_ref().map(|f| f.password_hash.as_str()),
        )
        .await?;
    let Some(found) = lookup.account else {
        audit::record_security_event(
            &state.db,
            "auth.login_unknown_email",
            &lookup.account_key,
            ip,
            request_id.as_deref(),
        )
        .await;
        return Err(bad_credentials());
    };
    let (clinic_id, user_id) = (found.clinic_id, found.user_id);
    let ctx = AuditContext {
        clinic_id,
        user_id: Some(user_id),
        request_id,
        ip,
    };
    if !ok || !found.active {
        let reason = if ok { "inactive" } else { "wrong_password" };
        audit::record_failure(
            &state.db,
            &ctx,
            Event::new("auth.login", "user")
                .resource(user_id)
                .details(serde_json::json!({ "reason": reason })),
        )
        .await;
        return Err(bad_credentials());
    }
    if found.verify_by.is_some_and(|by| by <= Utc::now()) {
        return Err(super::verify::refuse_unverified(&state, &ctx, clinic_id, user_id).await?);
    }
    let mut tx = state.db.clinic_tx(clinic_id).await?;
    let user = sqlx::query!(
        r#"SELECT u.role, u.is_provider, u.auth_version, u.totp_enabled_at IS NOT NULL AS "mfa!",
                  c.settings
           FROM users u JOIN clinics c ON c.id = u.clinic_id WHERE u.id = $1 AND u.active"#,
        user_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(bad_credentials)?;
    let role = Role::parse(&user.role).ok_or_else(bad_credentials)?;
    if user.mfa {
        // The password was right; the second factor decides.
        tx.commit().await?;
        let token = state
            .tokens
            .issue_mfa(user_id, clinic_id, role, user.auth_version)?;
        let mut res = Json(LoginAnswer::Mfa(super::mfa::MfaChallenge::new(token))).into_response();
        Decision::apply_headers(&decisions, res.headers_mut());
        return Ok(res);
    }
    if super::mfa::required_for(&user.settings, role) {
        let token = state.tokens.issue_setup_only(
            user_id,
            clinic_id,
            role,
            user.is_provider,
            user.auth_version,
        )?;
        audit::record(
            &mut tx,
            &ctx,
            Event::new("auth.login", "user")
                .resource(user_id)
                .details(serde_json::json!({ "setup_only": true })),
        )
        .await?;
        tx.commit().await?;
        let answer = super::mfa::MfaSetupRequired::new(token, state.tokens.access_ttl_secs);
        let mut res = Json(LoginAnswer::Setup(answer)).into_response();
        Decision::apply_headers(&decisions, res.headers_mut());
        return Ok(res);
    }
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
        Event::new("auth.login", "user").resource(user_id),
    )
    .await?;
    tx.commit().await?;
    let mut res = Json(LoginAnswer::Tokens(pair)).into_response();
    Decision::apply_headers(&decisions, res.headers_mut());
    Ok(res)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(pattern = r"^[^\u0000]*$")]
    refresh_token: String,
}

/// Exchanges a refresh token for a new pair. The old token stops working; presenting a
/// token that was already exchanged revokes its whole family.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new token pair", body = TokenPair),
        (status = 401, description = "Invalid, expired, revoked or reused token", body = Problem)))]
pub async fn refresh(
    State(state): State<AppState>,
    device: Device,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> AppResult<Response> {
    let ip = device.ip;
    let token = RefreshToken::decode(&body.refresh_token).ok_or_else(bad_refresh)?;
    let mut tx = state.db.clinic_tx(token.clinic_id).await?;
    let row = sqlx::query!(
        r#"SELECT rt.family_id, rt.user_id, rt.secret_hash, rt.family_expires_at, rt.idle_expires_at,
                  rt.rotated_at, rt.revoked_at, u.active, u.role, u.is_provider, u.auth_version,
                  u.totp_enabled_at IS NOT NULL AS "mfa!", u.email_verify_by, c.settings
           FROM refresh_tokens rt JOIN users u ON u.clinic_id = rt.clinic_id AND u.id = rt.user_id
           JOIN clinics c ON c.id = rt.clinic_id
           WHERE rt.id = $1 FOR UPDATE OF rt"#,
        token.id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(bad_refresh());
    };
    if !bool::from(row.secret_hash.as_slice().ct_eq(&token.secret_hash())) {
        return Err(bad_refresh());
    }
    let (family, user_id) = (row.family_id, row.user_id);
    let ctx = AuditContext {
        clinic_id: token.clinic_id,
        user_id: Some(user_id),
        request_id: crate::error::current_request_id(),
        ip,
    };
    if row.revoked_at.is_some() {
        return Err(bad_refresh());
    }
    if row.rotated_at.is_some() {
        // Reuse of an exchanged token: someone else holds this family. End it.
        revoke_family(&mut tx, family).await?;
        // The thief may also hold an access token from this family: end those too.
        sqlx::query!(
            "UPDATE users SET auth_version = auth_version + 1 WHERE id = $1",
            user_id
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        state
            .cache
            .invalidate(state.redis.as_ref(), token.clinic_id)
            .await;
        audit::record_failure(
            &state.db,
            &ctx,
            Event::new("auth.refresh_reuse", "user")
                .resource(user_id)
                .details(serde_json::json!({"family_id": family})),
        )
        .await;
        return Err(bad_refresh());
    }
    let now = Utc::now();
    let role = Role::parse(&row.role);
    if row.family_expires_at <= now || row.idle_expires_at <= now || !row.active || role.is_none() {
        return Err(bad_refresh());
    }
    let role = role.ok_or_else(bad_refresh)?;
    if row.email_verify_by.is_some_and(|by| by <= now) {
        // The grace for confirming the address ran out: signing in again sends a new link.
        return Err(AppError::Unauthorized(
            "confirm your email address to go on: sign in again to get a new link".into(),
        ));
    }
    if !row.mfa && super::mfa::required_for(&row.settings, role) {
        // The clinic came to require a second factor for the role: this session ends, and
        // signing in again leads to setting it up.
        revoke_family(&mut tx, family).await?;
        tx.commit().await?;
        return Err(AppError::Unauthorized(
            "your clinic now requires two-factor sign-in for your role: sign in again to set it up"
                .into(),
        ));
    }
    sqlx::query!(
        "UPDATE refresh_tokens SET rotated_at = now() WHERE id = $1",
        token.id
    )
    .execute(&mut *tx)
    .await?;
    let next = RefreshToken::generate(token.clinic_id);
    store_refresh(
        &state,
        &mut tx,
        &next,
        family,
        user_id,
        row.family_expires_at,
        &device,
    )
    .await?;
    audit::record(
        &mut tx,
        &ctx,
        Event::new("auth.refresh", "user").resource(user_id),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(TokenPair {
        access_token: state.tokens.issue_access(
            user_id,
            token.clinic_id,
            role,
            row.is_provider,
            row.auth_version,
            family,
        )?,
        refresh_token: next.encode(),
        token_type: "Bearer",
        expires_in: state.tokens.access_ttl_secs,
    })
    .into_response())
}

/// Signs out: the refresh token's whole family is revoked, and the access tokens of that
/// sign-in stop working on their next request. Always 204.
#[utoipa::path(post, path = "/auth/logout", tag = "auth",
    request_body = RefreshRequest,
    responses((status = 204, description = "Signed out")))]
pub async fn logout(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> AppResult<StatusCode> {
    let Some(token) = RefreshToken::decode(&body.refresh_token) else {
        return Ok(StatusCode::NO_CONTENT);
    };
    let mut tx = state.db.clinic_tx(token.clinic_id).await?;
    let row = sqlx::query!(
        "SELECT family_id, user_id, secret_hash FROM refresh_tokens WHERE id = $1 FOR UPDATE",
        token.id
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = row {
        if bool::from(row.secret_hash.as_slice().ct_eq(&token.secret_hash())) {
            revoke_family(&mut tx, row.family_id).await?;
            let user_id = row.user_id;
            let ctx = AuditContext {
                clinic_id: token.clinic_id,
                user_id: Some(user_id),
                request_id: crate::error::current_request_id(),
                ip,
            };
            audit::record(
                &mut tx,
                &ctx,
                Event::new("auth.logout", "user").resource(user_id),
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

//! `/users`: list, create, read and change staff accounts, with the rules that keep a
//! clinic governable (rank, the last active owner, sessions ending at once).

use super::*;
use crate::audit::{self, Event};
use crate::auth::password::check_policy;
use crate::auth::routes::revoke_refresh_tokens;
use crate::auth::verify;
use crate::auth::{Caller, Permission, Role};
use crate::error::{AppError, AppResult, Problem};
use crate::http::etag::{self, IfMatch};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use crate::http::pagination::{self, Limit, Page};
use crate::state::AppState;
use crate::validate::{patch_field, Errors};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

fn user_response(status: StatusCode, user: User) -> Response {
    let mut res = (
        status,
        [(header::ETAG, etag::etag(user.version))],
        Json(&user),
    )
        .into_response();
    if status == StatusCode::CREATED {
        if let Ok(v) = HeaderValue::from_str(&format!("/api/v2/users/{}", user.id)) {
            res.headers_mut().insert(header::LOCATION, v);
        }
    }
    res
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UserListParams {
    /// Page size (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200, default = 50)]
    limit: Option<Limit>,
    /// The `next_cursor` of the previous page (opaque; a cursor this server did not issue
    /// is a 400).
    #[param(min_length = 1, pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
    /// Only users with this role.
    role: Option<Role>,
    /// Only active (`true`) or deactivated (`false`) users.
    active: Option<bool>,
}

/// Staff of the caller's clinic, by name.
#[utoipa::path(get, path = "/users", tag = "users", security(("bearer" = [])),
    params(UserListParams),
    responses(
        (status = 200, description = "A page of users", body = Page<User>),
        (status = 400, description = "Malformed parameters or cursor", body = Problem),
        (status = 403, description = "Role lacks users.read", body = Problem)))]
pub async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<UserListParams>,
) -> AppResult<Json<Page<User>>> {
    if !caller.role.can(Permission::UsersRead) {
        return Err(caller
            .deny(
                &state,
                Event::new("user.list", "user"),
                "your role does not permit listing staff",
            )
            .await);
    }
    let limit = pagination::limit(params.limit)?;
    let after: Option<(String, Uuid)> = state.cursors.decode_opt(params.cursor.as_deref())?;
    let (after_name, after_id) = after.unzip();
    let mut tx = caller.begin(&state).await?;
    let rows = sqlx::query_as!(
        UserRow,
        r#"SELECT id, clinic_id, email, full_name, role, is_provider, active,
                  email_verified_at IS NOT NULL AS "email_verified!", pending_email, version,
                  created_at, updated_at
           FROM users
           WHERE ($1::text IS NULL OR (full_name, id) > ($1, $2))
             AND ($3::text IS NULL OR role = $3) AND ($4::boolean IS NULL OR active = $4)
           ORDER BY full_name, id LIMIT $5"#,
        after_name,
        after_id,
        params.role.map(Role::as_str),
        params.active,
        pagination::overfetch(limit)
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let users = rows.into_iter().map(User::from).collect();
    let page = state
        .cursors
        .page(users, limit, |u: &User| (u.full_name.clone(), u.id));
    Ok(Json(page))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "email": "dana@example.org", "password": "molar-demo-dentist-2026",
    "full_name": "Dr. Dana Weber", "role": "dentist"
}))]
pub struct NewUser {
    /// Unique across the system, case-insensitive.
    #[schema(schema_with = crate::validate::schema::email)]
    email: String,
    /// 12 to 128 characters, not a common password.
    #[schema(schema_with = crate::validate::schema::password)]
    password: String,
    #[schema(schema_with = crate::validate::schema::text_200)]
    full_name: String,
    /// Not above the caller's own role (403).
    role: Role,
    /// Defaults to true for dentists and hygienists.
    is_provider: Option<bool>,
}

/// Adds a staff member (owner and admin; nobody grants a role above their own).
#[utoipa::path(post, path = "/users", tag = "users", security(("bearer" = [])),
    request_body = NewUser,
    responses(
        (status = 201, description = "Created", body = User, headers(("Location" = String))),
        (status = 403, description = "Role lacks users.manage", body = Problem),
        (status = 409, description = "Email already in use", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem)))]
pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewUser>,
) -> AppResult<Response> {
    if !caller.role.can(Permission::UsersManage) {
        return Err(caller
            .deny(
                &state,
                Event::new("user.create", "user"),
                "your role does not permit managing staff",
            )
            .await);
    }
    if body.role.rank() > caller.role.rank() {
        return Err(caller
            .deny(
                &state,
                Event::new("user.create", "user"),
                "you cannot grant a role above your own",
            )
            .await);
    }
    let mut errors = Errors::default();
    let email = errors.email("email", &body.email);
    let full_name = errors.text("full_name", &body.full_name, 200);
    if let Err(e) = check_policy("password", &body.password, &[&email, &full_name]) {
        errors.push(e);
    }
    errors.finish()?;
    let hash = state.passwords.hash(&body.password).await?;
    let mut tx = caller.begin(&state).await?;
    let user = insert(
        &mut tx,
        NewUserRow {
            clinic_id: caller.clinic_id,
            email: &email,
            full_name: &full_name,
            role: body.role,
            is_provider: body.is_provider.unwrap_or(body.role.provider_by_default()),
            password_hash: &hash,
            verify_by: verify::deadline(&state),
        },
    )
    .await?;
    verify::send_link(
        &state,
        &mut tx,
        caller.clinic_id,
        user.id,
        &full_name,
        &email,
    )
    .await?;
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new("user.create", "user")
            .resource(user.id)
            .details(serde_json::json!({"role": user.role})),
    )
    .await?;
    tx.commit().await?;
    state
        .cache
        .invalidate(state.redis.as_ref(), caller.clinic_id)
        .await;
    Ok(user_response(StatusCode::CREATED, user))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserPath {
    /// The user's id.
    pub id: Uuid,
}

/// One staff member (anyone may read their own account).
#[utoipa::path(get, path = "/users/{id}", tag = "users", security(("bearer" = [])),
    params(UserPath),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 404, description = "No such user in your clinic", body = Problem)))]
pub async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(UserPath { id }): ApiPath<UserPath>,
) -> AppResult<Response> {
    if id != caller.user_id && !caller.role.can(Permission::UsersRead) {
        return Err(caller
            .deny(
                &state,
                Event::new("user.read", "user").resource(id),
                "your role does not permit reading staff",
            )
            .await);
    }
    let mut tx = caller.begin(&state).await?;
    let user = load(&mut tx, id).await?;
    tx.commit().await?;
    Ok(user_response(StatusCode::OK, user))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
/// No field can be cleared: `null` is a 422.
pub struct UserPatch {
    /// A new sign-in address: it becomes `pending_email`, a link goes to it, and it replaces
    /// `email` when that link is used. The current address cancels a pending change.
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(schema_with = crate::validate::schema::email)]
    email: Option<Option<String>>,
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(schema_with = crate::validate::schema::text_200)]
    full_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Role)]
    role: Option<Option<Role>>,
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = bool)]
    is_provider: Option<Option<bool>>,
    /// `false` deactivates the user and ends their sessions.
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = bool)]
    active: Option<Option<bool>>,
}

impl UserPatch {
    /// None of a user's fields may be cleared: `null` is a 422 naming the field.
    fn nulls(&self) -> Vec<&'static str> {
        [
            ("email", self.email.as_ref().is_some_and(Option::is_none)),
            (
                "full_name",
                self.full_name.as_ref().is_some_and(Option::is_none),
            ),
            ("role", self.role.as_ref().is_some_and(Option::is_none)),
            (
                "is_provider",
                self.is_provider.as_ref().is_some_and(Option::is_none),
            ),
            ("active", self.active.as_ref().is_some_and(Option::is_none)),
        ]
        .into_iter()
        .filter(|(_, null)| *null)
        .map(|(f, _)| f)
        .collect()
    }
}

/// A user patch with its `null`s refused.
struct PlainUserPatch {
    email: Option<String>,
    full_name: Option<String>,
    role: Option<Role>,
    is_provider: Option<bool>,
    active: Option<bool>,
}

/// Changes a staff member. Anyone may change their own name and email; role, provider
/// flag and activation need users.manage.
#[utoipa::path(patch, path = "/users/{id}", tag = "users", security(("bearer" = [])),
    params(UserPath, IfMatch),
    request_body = UserPatch,
    responses(
        (status = 200, description = "The updated user", body = User),
        (status = 403, description = "Not permitted", body = Problem),
        (status = 404, description = "No such user in your clinic", body = Problem),
        (status = 409, description = "Email in use, or the last active owner", body = Problem),
        (status = 412, description = "If-Match does not match", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem)))]
pub async fn update_user(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(UserPath { id }): ApiPath<UserPath>,
    ApiJson(raw): ApiJson<UserPatch>,
) -> AppResult<Response> {
    let mut errors = Errors::default();
    for field in raw.nulls() {
        errors.add(field, "cannot be cleared");
    }
    errors.finish()?;
    let patch = PlainUserPatch {
        email: raw.email.flatten(),
        full_name: raw.full_name.flatten(),
        role: raw.role.flatten(),
        is_provider: raw.is_provider.flatten(),
        active: raw.active.flatten(),
    };
    let event = || Event::new("user.update", "user").resource(id);
    let privileged = patch.role.is_some() || patch.is_provider.is_some() || patch.active.is_some();
    let is_self = id == caller.user_id;
    if (privileged || !is_self) && !caller.role.can(Permission::UsersManage) {
        return Err(caller
            .deny(&state, event(), "your role does not permit managing staff")
            .await);
    }
    let mut errors = Errors::default();
    let email = patch.email.as_deref().map(|e| errors.email("email", e));
    let full_name = patch
        .full_name
        .as_deref()
        .map(|n| errors.text("full_name", n, 200));
    errors.finish()?;

    let mut tx = caller.begin(&state).await?;
    let current = load_for_update(&mut tx, id).await?;
    etag::check(&headers, current.version)?;
    if current.role.rank() > caller.role.rank() && !is_self {
        tx.rollback().await?;
        return Err(caller
            .deny(
                &state,
                event(),
                "you cannot change a user whose role is above your own",
            )
            .await);
    }
    if let Some(role) = patch.role {
        if role.rank() > caller.role.rank() || (is_self && role.rank() > current.role.rank()) {
            tx.rollback().await?;
            return Err(caller
                .deny(
                    &state,
                    event(),
                    "nobody raises their own role or grants above their own",
                )
                .await);
        }
    }
    let new_role = patch.role.unwrap_or(current.role);
    let new_active = patch.active.unwrap_or(current.active);
    let loses_owner =
        current.role == Role::Owner && current.active && (new_role != Role::Owner || !new_active);
    if loses_owner {
        // Lock every active owner so that two owners cannot demote each other at once.
        let owners =
            sqlx::query_scalar!("SELECT id FROM users WHERE role = 'owner' AND active FOR UPDATE")
                .fetch_all(&mut *tx)
                .await?;
        if owners.len() <= 1 {
            tx.rollback().await?;
            return Err(AppError::conflict(
                "the last active owner cannot be deactivated or demoted",
            ));
        }
    }
    // The provider flag rides in access tokens (an owner or admin who treats patients holds
    // clinical permissions), so changing it ends them too; a refresh picks up the new one.
    let new_provider = patch.is_provider.unwrap_or(current.is_provider);
    let cuts_sessions = new_role != current.role
        || new_active != current.active
        || new_provider != current.is_provider;
    // A new address waits for its link: the old one signs in until then. Giving the
    // current address back cancels a pending change.
    let pending = match &email {
        None => current.pending_email.clone(),
        Some(new) => {
            let check = sqlx::query!(
                r#"SELECT lower($1) = lower($2) AS "same!", auth_email_taken($1) AS "taken!""#,
                new,
                current.email
            )
            .fetch_one(&mut *tx)
            .await?;
            if check.same {
                None
            } else if check.taken {
                tx.rollback().await?;
                return Err(super::email_taken());
            } else {
                Some(new.clone())
            }
        }
    };
    sqlx::query!(
        "UPDATE users SET pending_email = $2, full_name = $3, role = $4, is_provider = $5, \
         active = $6, auth_version = auth_version + $7, version = version + 1, updated_at = now() \
         WHERE id = $1",
        id,
        pending,
        full_name.as_deref().unwrap_or(&current.full_name),
        new_role.as_str(),
        new_provider,
        new_active,
        i32::from(cuts_sessions)
    )
    .execute(&mut *tx)
    .await?;
    if let Some(new) = pending.as_deref().filter(|_| email.is_some()) {
        verify::send_link(
            &state,
            &mut tx,
            caller.clinic_id,
            id,
            full_name.as_deref().unwrap_or(&current.full_name),
            new,
        )
        .await?;
    }
    if !new_active {
        revoke_refresh_tokens(&mut tx, id).await?;
    }
    let mut changed = serde_json::Map::new();
    for (name, present) in [
        ("pending_email", patch.email.is_some()),
        ("full_name", patch.full_name.is_some()),
        ("role", patch.role.is_some()),
        ("is_provider", patch.is_provider.is_some()),
        ("active", patch.active.is_some()),
    ] {
        if present {
            changed.insert(name.into(), serde_json::Value::Bool(true));
        }
    }
    let action = if current.active && !new_active {
        "user.deactivate"
    } else {
        "user.update"
    };
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new(action, "user").resource(id).details(
            serde_json::json!({"changed": changed.keys().collect::<Vec<_>>(), "role": new_role}),
        ),
    )
    .await?;
    let updated = load(&mut tx, id).await?;
    tx.commit().await?;
    state
        .cache
        .invalidate(state.redis.as_ref(), caller.clinic_id)
        .await;
    Ok(user_response(StatusCode::OK, updated))
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user))
}

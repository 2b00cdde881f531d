//! Staff accounts: listing, creating, reading and changing them, with the rules that keep
//! a clinic governable (the last active owner stays; nobody raises their own role or
//! grants above themselves; deactivation and role changes end sessions at once).

pub mod mfa;
pub mod routes;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Role;
use crate::db::Tx;
use crate::error::{AppError, AppResult, OnConstraint};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub clinic_id: Uuid,
    pub email: String,
    pub full_name: String,
    pub role: Role,
    /// Bookable: listed by `/providers`.
    pub is_provider: bool,
    pub active: bool,
    /// The address was confirmed by a link sent to it.
    pub email_verified: bool,
    /// A new address waiting for its link to be used: `email` stays the sign-in address
    /// until then.
    pub pending_email: Option<String>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A `users` row as selected: the role is the stored text.
struct UserRow {
    id: Uuid,
    clinic_id: Uuid,
    email: String,
    full_name: String,
    role: String,
    is_provider: bool,
    active: bool,
    email_verified: bool,
    pending_email: Option<String>,
    version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> User {
        User {
            id: r.id,
            clinic_id: r.clinic_id,
            email: r.email,
            full_name: r.full_name,
            role: Role::parse(&r.role).unwrap_or(Role::Billing),
            is_provider: r.is_provider,
            active: r.active,
            email_verified: r.email_verified,
            pending_email: r.pending_email,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

fn found(row: Option<UserRow>) -> AppResult<User> {
    row.map(User::from)
        .ok_or_else(|| AppError::not_found("user"))
}

/// The one SELECT of a user, with `$lock` either `""` or `" FOR UPDATE"`: the statement
/// stays a literal that sqlx checks at build time.
macro_rules! select_user {
    ($tx:expr, $id:expr, $lock:literal) => {
        sqlx::query_as!(
            UserRow,
            r#"SELECT id, clinic_id, email, full_name, role, is_provider, active,
                      email_verified_at IS NOT NULL AS "email_verified!", pending_email, version,
                      created_at, updated_at FROM users WHERE id = $1"#
                + $lock,
            $id
        )
        .fetch_optional(&mut **$tx)
        .await?
    };
}

/// One user of the transaction's clinic; another clinic's id is simply not found.
pub async fn load(tx: &mut Tx, id: Uuid) -> AppResult<User> {
    found(select_user!(tx, id, ""))
}

/// [`load`], locking the row until the transaction ends.
pub async fn load_for_update(tx: &mut Tx, id: Uuid) -> AppResult<User> {
    found(select_user!(tx, id, " FOR UPDATE"))
}

/// The 409 for an email another account of the clinic already signs in with.
pub fn email_taken() -> AppError {
    AppError::conflict("a user with this email already exists")
}

/// What a new user is.
pub struct NewUserRow<'a> {
    pub clinic_id: Uuid,
    pub email: &'a str,
    pub full_name: &'a str,
    pub role: Role,
    pub is_provider: bool,
    pub password_hash: &'a str,
    /// Until when the account signs in (and holds its address) unverified.
    pub verify_by: DateTime<Utc>,
}

/// Inserts a user with an unverified address; a taken email is a 409.
pub async fn insert(tx: &mut Tx, new: NewUserRow<'_>) -> AppResult<User> {
    let row = sqlx::query_as!(
        UserRow,
        r#"INSERT INTO users (clinic_id, id, email, full_name, role, is_provider, password_hash,
                              email_verify_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           RETURNING id, clinic_id, email, full_name, role, is_provider, active,
                     email_verified_at IS NOT NULL AS "email_verified!", pending_email, version,
                     created_at, updated_at"#,
        new.clinic_id,
        Uuid::now_v7(),
        new.email,
        new.full_name,
        new.role.as_str(),
        new.is_provider,
        new.password_hash,
        new.verify_by
    )
    .fetch_one(&mut **tx)
    .await;
    row.map(User::from)
        .on_constraint("user_logins_pkey", email_taken)
}

//! Staff accounts: listing, creating, reading and changing them, with the rules that keep
//! a clinic governable (the last active owner stays; nobody raises their own role or
//! grants above themselves; deactivation and role changes end sessions at once).

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
            "SELECT id, clinic_id, email, full_name, role, is_provider, active, version, \
             created_at, updated_at FROM users WHERE id = $1"
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

/// Inserts a user; a taken email is a 409.
pub async fn insert(
    tx: &mut Tx,
    clinic_id: Uuid,
    email: &str,
    full_name: &str,
    role: Role,
    is_provider: bool,
    password_hash: &str,
) -> AppResult<User> {
    let row = sqlx::query_as!(
        UserRow,
        "INSERT INTO users (clinic_id, id, email, full_name, role, is_provider, password_hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         RETURNING id, clinic_id, email, full_name, role, is_provider, active, version, created_at, updated_at",
        clinic_id,
        Uuid::now_v7(),
        email,
        full_name,
        role.as_str(),
        is_provider,
        password_hash
    )
    .fetch_one(&mut **tx)
    .await;
    row.map(User::from)
        .on_constraint("user_logins_pkey", email_taken)
}

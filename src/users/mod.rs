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

type UserRow = (
    Uuid,
    Uuid,
    String,
    String,
    String,
    bool,
    bool,
    i32,
    DateTime<Utc>,
    DateTime<Utc>,
);

const USER_COLUMNS: &str =
    "id, clinic_id, email, full_name, role, is_provider, active, version, created_at, updated_at";

fn from_row(r: UserRow) -> User {
    User {
        id: r.0,
        clinic_id: r.1,
        email: r.2,
        full_name: r.3,
        role: Role::parse(&r.4).unwrap_or(Role::Billing),
        is_provider: r.5,
        active: r.6,
        version: r.7,
        created_at: r.8,
        updated_at: r.9,
    }
}

/// One user of the transaction's clinic; another clinic's id is simply not found.
pub async fn load(tx: &mut Tx, id: Uuid, lock: bool) -> AppResult<User> {
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row: Option<UserRow> = sqlx::query_as(&sql)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(from_row).ok_or_else(|| AppError::not_found("user"))
}

/// Inserts a user; a taken email is a 409.
/// The 409 for an email another account of the clinic already signs in with.
pub fn email_taken() -> AppError {
    AppError::conflict("a user with this email already exists")
}

pub async fn insert(
    tx: &mut Tx,
    clinic_id: Uuid,
    email: &str,
    full_name: &str,
    role: Role,
    is_provider: bool,
    password_hash: &str,
) -> AppResult<User> {
    let row: Result<UserRow, sqlx::Error> = sqlx::query_as(&format!(
        "INSERT INTO users (clinic_id, id, email, full_name, role, is_provider, password_hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {USER_COLUMNS}"
    ))
    .bind(clinic_id)
    .bind(Uuid::now_v7())
    .bind(email)
    .bind(full_name)
    .bind(role.as_str())
    .bind(is_provider)
    .bind(password_hash)
    .fetch_one(&mut **tx)
    .await;
    row.map(from_row)
        .on_constraint("user_logins_pkey", email_taken)
}

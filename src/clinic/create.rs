//! Creating a clinic with its first owner, in one transaction: `POST /auth/register-clinic`
//! and `molar create-clinic` both come here.

use crate::audit::{self, AuditContext, Event};
use crate::auth::password::check_policy;
use crate::auth::routes::{issue_pair, TokenPair};
use crate::auth::Role;
use crate::clinic::{self, Clinic};
use crate::error::AppResult;
use crate::state::AppState;
use crate::users::{self, User};
use crate::validate::Errors;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Creates a clinic and its first owner in one transaction (the API and `molar create-clinic`).
pub async fn register(
    state: &AppState,
    body: RegisterClinic,
    device: &crate::auth::sessions::Device,
) -> AppResult<Registered> {
    let ip = device.ip;
    let mut errors = Errors::default();
    let name = errors.text("clinic.name", &body.clinic.name, 200);
    let timezone = errors.timezone("clinic.timezone", &body.clinic.timezone);
    let currency = errors.currency("clinic.currency", &body.clinic.currency);
    let phone = body
        .clinic
        .phone
        .as_deref()
        .map(|p| errors.phone("clinic.phone", p));
    let email = errors.email("owner.email", &body.owner.email);
    let full_name = errors.text("owner.full_name", &body.owner.full_name, 200);
    if let Err(e) = check_policy(
        "owner.password",
        &body.owner.password,
        &[&email, &full_name],
    ) {
        errors.push(e);
    }
    errors.finish()?;

    // Most clinics are registered by their first dentist; a practice manager says false.
    let provider = body.owner.is_provider.unwrap_or(true);
    let hash = state.passwords.hash(&body.owner.password).await?;
    let clinic_id = Uuid::now_v7();
    let mut tx = state.db.clinic_tx(clinic_id).await?;
    sqlx::query!(
        "INSERT INTO clinics (id, name, timezone, currency, phone) VALUES ($1, $2, $3, $4, $5)",
        clinic_id,
        name,
        timezone,
        currency,
        phone
    )
    .execute(&mut *tx)
    .await?;
    let user = users::insert(
        &mut tx,
        users::NewUserRow {
            clinic_id,
            email: &email,
            full_name: &full_name,
            role: Role::Owner,
            is_provider: provider,
            password_hash: &hash,
            verify_by: crate::auth::verify::deadline(state),
        },
    )
    .await?;
    crate::auth::verify::send_link(state, &mut tx, clinic_id, user.id, &full_name, &email).await?;
    let ctx = AuditContext {
        clinic_id,
        user_id: Some(user.id),
        request_id: crate::error::current_request_id(),
        ip,
    };
    audit::record(
        &mut tx,
        &ctx,
        Event::new("clinic.create", "clinic").resource(clinic_id),
    )
    .await?;
    audit::record(
        &mut tx,
        &ctx,
        Event::new("user.create", "user").resource(user.id),
    )
    .await?;
    let tokens = issue_pair(
        state,
        &mut tx,
        clinic_id,
        user.id,
        Role::Owner,
        provider,
        1,
        device,
    )
    .await?;
    let clinic = clinic::load(&mut tx, clinic_id).await?;
    tx.commit().await?;
    Ok(Registered {
        clinic,
        user,
        tokens,
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClinic {
    #[schema(schema_with = crate::validate::schema::text_200)]
    pub name: String,
    /// IANA time zone, e.g. `Europe/Berlin`.
    #[schema(schema_with = crate::validate::schema::timezone)]
    pub timezone: String,
    /// ISO 4217 code, e.g. `EUR`.
    #[schema(schema_with = crate::validate::schema::currency)]
    pub currency: String,
    #[schema(schema_with = crate::validate::schema::phone_or_null)]
    pub phone: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOwner {
    /// Unique across the system, case-insensitive.
    #[schema(schema_with = crate::validate::schema::email)]
    pub email: String,
    /// 12 to 128 characters, not a common password.
    #[schema(schema_with = crate::validate::schema::password)]
    pub password: String,
    #[schema(schema_with = crate::validate::schema::text_200)]
    pub full_name: String,
    /// Whether the owner treats patients (default true: most clinics are registered by
    /// their first dentist). A provider owner is bookable and holds a dentist's clinical
    /// permissions; a practice manager sends false.
    #[serde(default)]
    pub is_provider: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "clinic": {"name": "Lindenhof Dental", "timezone": "Europe/Berlin", "currency": "EUR"},
    "owner": {"email": "owner@lindenhof.example", "password": "molar-demo-owner-2026",
              "full_name": "Olga Owner"}
}))]
pub struct RegisterClinic {
    pub clinic: NewClinic,
    pub owner: NewOwner,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    pub clinic: Clinic,
    pub user: User,
    pub tokens: TokenPair,
}

//! Who is calling and what they may do: roles, the permission matrix, and the `Caller`
//! extractor that verifies the access token and opens the caller's clinic transaction.

pub mod account;
pub mod mfa;
pub mod password;
pub mod reset;
pub mod routes;
pub mod sessions;
pub mod tokens;
pub mod totp;
pub mod verify;

use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::Event;
use crate::db::Tx;
use crate::error::{AppError, AppResult};
use crate::http::client_ip::client_ip;
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Dentist,
    Hygienist,
    Assistant,
    Receptionist,
    Billing,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Owner,
        Role::Admin,
        Role::Dentist,
        Role::Hygienist,
        Role::Assistant,
        Role::Receptionist,
        Role::Billing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Dentist => "dentist",
            Role::Hygienist => "hygienist",
            Role::Assistant => "assistant",
            Role::Receptionist => "receptionist",
            Role::Billing => "billing",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Standing for "nobody raises their own role" and "nobody grants above themselves".
    pub fn rank(self) -> u8 {
        match self {
            Role::Owner => 3,
            Role::Admin => 2,
            _ => 1,
        }
    }

    pub fn is_clinical(self) -> bool {
        matches!(self, Role::Dentist | Role::Hygienist | Role::Assistant)
    }

    /// Dentists and hygienists are bookable unless told otherwise.
    pub fn provider_by_default(self) -> bool {
        matches!(self, Role::Dentist | Role::Hygienist)
    }

    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::Owner | Role::Admin => &[
                ClinicRead,
                ClinicManage,
                UsersRead,
                UsersManage,
                AuditRead,
                PatientsRead,
                PatientsWrite,
                MedicalAlertsWrite,
                ClinicalRead,
                AppointmentsRead,
                AppointmentsWrite,
                ScheduleManage,
                LedgerRead,
                LedgerWrite,
                CatalogueManage,
                TreatmentRead,
                TreatmentConsent,
                AdjustmentsWrite,
                DocumentsRead,
                DocumentsWrite,
                DocumentsForms,
                WebhooksManage,
            ],
            Role::Dentist | Role::Hygienist => &[
                ClinicRead,
                PatientsRead,
                PatientsWrite,
                MedicalAlertsWrite,
                ClinicalRead,
                ClinicalWrite,
                NotesWrite,
                NotesSign,
                AppointmentsRead,
                AppointmentsWrite,
                TreatmentRead,
                TreatmentWrite,
                TreatmentConsent,
                DocumentsRead,
                DocumentsWrite,
                DocumentsForms,
            ],
            Role::Assistant => &[
                ClinicRead,
                PatientsRead,
                PatientsWrite,
                MedicalAlertsWrite,
                ClinicalRead,
                ClinicalWrite,
                NotesWrite,
                AppointmentsRead,
                AppointmentsWrite,
                TreatmentRead,
                TreatmentWrite,
                TreatmentConsent,
                DocumentsRead,
                DocumentsWrite,
                DocumentsForms,
            ],
            Role::Receptionist => &[
                ClinicRead,
                PatientsRead,
                PatientsWrite,
                MedicalAlertsWrite,
                AppointmentsRead,
                AppointmentsWrite,
                LedgerRead,
                LedgerWrite,
                TreatmentRead,
                TreatmentConsent,
                DocumentsForms,
            ],
            Role::Billing => &[
                ClinicRead,
                PatientsRead,
                LedgerRead,
                LedgerWrite,
                TreatmentRead,
                AdjustmentsWrite,
            ],
        }
    }

    pub fn can(self, p: Permission) -> bool {
        self.permissions().contains(&p)
    }

    /// The role a user acts in clinically: an owner or admin who is a provider treats
    /// patients as a dentist does (in a small practice the owner is the dentist).
    pub fn clinical(self, provider: bool) -> Role {
        match self {
            Role::Owner | Role::Admin if provider => Role::Dentist,
            other => other,
        }
    }
}

/// What a user may do: their role's permissions, and a dentist's clinical ones for an
/// owner or admin who is a provider. In the order of [`Permission::ALL`].
pub fn grants(role: Role, provider: bool) -> Vec<Permission> {
    Permission::ALL
        .into_iter()
        .filter(|p| role.can(*p) || role.clinical(provider).can(*p))
        .collect()
}

impl Permission {
    /// Every permission, in the order the matrix lists them.
    pub const ALL: [Permission; 26] = [
        Permission::ClinicRead,
        Permission::ClinicManage,
        Permission::UsersRead,
        Permission::UsersManage,
        Permission::AuditRead,
        Permission::PatientsRead,
        Permission::PatientsWrite,
        Permission::MedicalAlertsWrite,
        Permission::ClinicalRead,
        Permission::ClinicalWrite,
        Permission::NotesWrite,
        Permission::NotesSign,
        Permission::AppointmentsRead,
        Permission::AppointmentsWrite,
        Permission::ScheduleManage,
        Permission::LedgerRead,
        Permission::LedgerWrite,
        Permission::CatalogueManage,
        Permission::TreatmentRead,
        Permission::TreatmentWrite,
        Permission::TreatmentConsent,
        Permission::AdjustmentsWrite,
        Permission::DocumentsRead,
        Permission::DocumentsWrite,
        Permission::DocumentsForms,
        Permission::WebhooksManage,
    ];

    /// The name in the API (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ClinicRead => "clinic.read",
            Permission::ClinicManage => "clinic.manage",
            Permission::UsersRead => "users.read",
            Permission::UsersManage => "users.manage",
            Permission::AuditRead => "audit.read",
            Permission::PatientsRead => "patients.read",
            Permission::PatientsWrite => "patients.write",
            Permission::MedicalAlertsWrite => "medical_alerts.write",
            Permission::ClinicalRead => "clinical.read",
            Permission::ClinicalWrite => "clinical.write",
            Permission::NotesWrite => "notes.write",
            Permission::NotesSign => "notes.sign",
            Permission::AppointmentsRead => "appointments.read",
            Permission::AppointmentsWrite => "appointments.write",
            Permission::ScheduleManage => "schedule.manage",
            Permission::LedgerRead => "ledger.read",
            Permission::LedgerWrite => "ledger.write",
            Permission::CatalogueManage => "catalogue.manage",
            Permission::TreatmentRead => "treatment.read",
            Permission::TreatmentWrite => "treatment.write",
            Permission::TreatmentConsent => "treatment.consent",
            Permission::AdjustmentsWrite => "adjustments.write",
            Permission::DocumentsRead => "documents.read",
            Permission::DocumentsWrite => "documents.write",
            Permission::DocumentsForms => "documents.forms",
            Permission::WebhooksManage => "webhooks.manage",
        }
    }
}

/// The permission matrix as a markdown table (permissions × roles), as in
/// docs/roles-and-permissions.md.
pub fn permission_matrix_markdown() -> String {
    let mut out = String::from("| permission |");
    for role in Role::ALL {
        out.push_str(&format!(" {} |", role.as_str()));
    }
    out.push_str(" owner/admin who is a provider |\n|---|");
    out.push_str(&":-:|".repeat(Role::ALL.len() + 1));
    out.push('\n');
    for p in Permission::ALL {
        out.push_str(&format!("| `{}` |", p.as_str()));
        for role in Role::ALL {
            out.push_str(if role.can(p) { " ✓ |" } else { " |" });
        }
        let provider =
            grants(Role::Owner, true).contains(&p) && grants(Role::Admin, true).contains(&p);
        out.push_str(if provider { " ✓ |" } else { " |" });
        out.push('\n');
    }
    out
}

/// Everything a handler may require. The matrix is [`Role::permissions`];
/// [`permission_matrix_markdown`] prints it for docs/roles-and-permissions.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum Permission {
    #[serde(rename = "clinic.read")]
    ClinicRead,
    #[serde(rename = "clinic.manage")]
    ClinicManage,
    #[serde(rename = "users.read")]
    UsersRead,
    #[serde(rename = "users.manage")]
    UsersManage,
    #[serde(rename = "audit.read")]
    AuditRead,
    #[serde(rename = "patients.read")]
    PatientsRead,
    #[serde(rename = "patients.write")]
    PatientsWrite,
    #[serde(rename = "medical_alerts.write")]
    MedicalAlertsWrite,
    #[serde(rename = "clinical.read")]
    ClinicalRead,
    #[serde(rename = "clinical.write")]
    ClinicalWrite,
    #[serde(rename = "notes.write")]
    NotesWrite,
    #[serde(rename = "notes.sign")]
    NotesSign,
    #[serde(rename = "appointments.read")]
    AppointmentsRead,
    #[serde(rename = "appointments.write")]
    AppointmentsWrite,
    #[serde(rename = "schedule.manage")]
    ScheduleManage,
    #[serde(rename = "ledger.read")]
    LedgerRead,
    #[serde(rename = "ledger.write")]
    LedgerWrite,
    /// The procedure catalogue, its fees and recall types.
    #[serde(rename = "catalogue.manage")]
    CatalogueManage,
    /// Charted procedures (without their clinical note for non-clinical roles), treatment
    /// plans and fees.
    #[serde(rename = "treatment.read")]
    TreatmentRead,
    /// Chart, edit, complete and reverse procedures; write and present treatment plans.
    #[serde(rename = "treatment.write")]
    TreatmentWrite,
    /// Record a patient's acceptance or refusal of a presented plan.
    #[serde(rename = "treatment.consent")]
    TreatmentConsent,
    /// Discounts, write-offs and corrections of a patient's account.
    #[serde(rename = "adjustments.write")]
    AdjustmentsWrite,
    /// Read every kind of document: x-rays, photos, lab results, forms.
    #[serde(rename = "documents.read")]
    DocumentsRead,
    /// Upload and delete every kind of document.
    #[serde(rename = "documents.write")]
    DocumentsWrite,
    /// Upload, read and delete consent forms and referral letters only.
    #[serde(rename = "documents.forms")]
    DocumentsForms,
    /// Webhook subscriptions and their delivery logs.
    #[serde(rename = "webhooks.manage")]
    WebhooksManage,
}

/// The answer to a role that lacks a permission.
pub const NOT_PERMITTED: &str = "your role does not permit this action";

/// The authenticated caller, from a verified access token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: Uuid,
    pub clinic_id: Uuid,
    pub role: Role,
    pub auth_version: i32,
    /// The sign-in (refresh-token family) the token belongs to; `None` for a token issued
    /// before tokens carried it.
    pub session_id: Option<Uuid>,
    /// The user is a provider (see [`Role::clinical`]).
    pub provider: bool,
    pub ip: Option<IpAddr>,
    pub request_id: Option<String>,
}

impl Caller {
    /// Who a request without a user (Stripe's webhook) acts as: the staff member who set
    /// up what it completes, with no role beyond reading what they may.
    pub fn system(clinic_id: Uuid, user_id: Uuid) -> Caller {
        Caller {
            user_id,
            clinic_id,
            role: Role::Billing,
            auth_version: 0,
            session_id: None,
            provider: false,
            ip: None,
            request_id: crate::error::current_request_id(),
        }
    }

    /// Whether the caller holds `p`: by role, or clinically as a provider owner or admin.
    pub fn can(&self, p: Permission) -> bool {
        self.role.can(p) || self.clinical_role().can(p)
    }

    /// The role the caller acts in clinically (see [`Role::clinical`]).
    pub fn clinical_role(&self) -> Role {
        self.role.clinical(self.provider)
    }

    /// The one authorization check every handler makes: `Ok` when the caller's role has
    /// `p`; otherwise the denial is audited as `event` (in a transaction of its own, since
    /// the work never started) and answered 403.
    pub async fn authorize(
        &self,
        state: &AppState,
        p: Permission,
        event: impl FnOnce() -> Event,
    ) -> AppResult<()> {
        if self.can(p) {
            Ok(())
        } else {
            Err(self.deny(state, event(), NOT_PERMITTED).await)
        }
    }

    /// A 403 for a rule beyond the permission matrix (rank, own account, signing rules),
    /// audited as `event` like every denial.
    pub async fn deny(&self, state: &AppState, event: Event, why: &str) -> AppError {
        crate::audit::record_failure(&state.db, &self.audit(), event).await;
        AppError::Forbidden(why.to_owned())
    }

    /// Opens the caller's clinic transaction after confirming, in the same round trip, that
    /// the account is still active with the same role and credentials as when the token was
    /// issued, and that the token's sign-in has not ended, so that deactivation, role
    /// changes, password changes and logout cut access off on the next request.
    pub async fn begin(&self, state: &AppState) -> AppResult<Tx> {
        state
            .db
            .session_tx(
                self.clinic_id,
                self.user_id,
                self.auth_version,
                self.role.as_str(),
                self.session_id,
            )
            .await
            .map_err(|e| {
                if crate::db::is_session_invalid(&e) {
                    AppError::Unauthorized("the session is no longer valid; sign in again".into())
                } else {
                    e.into()
                }
            })
    }

    pub fn audit(&self) -> crate::audit::AuditContext {
        crate::audit::AuditContext {
            clinic_id: self.clinic_id,
            user_id: Some(self.user_id),
            request_id: self.request_id.clone(),
            ip: self.ip,
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> AppResult<Caller> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| AppError::Unauthorized("a bearer access token is required".into()))?;
        let token = header
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
            .map(|_| &header[7..])
            .ok_or_else(|| AppError::Unauthorized("a bearer access token is required".into()))?;
        // The rate limiter may already have verified this token.
        let claims = match parts.extensions.get::<tokens::VerifiedClaims>() {
            Some(v) => v.0.clone(),
            None => state.tokens.verify_access(token.trim())?,
        };
        let path = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map_or(parts.uri.path(), |u| u.0.path());
        if claims.stp && !mfa::SETUP_ONLY_PATHS.contains(&path) {
            return Err(AppError::Forbidden(
                "your clinic requires two-factor sign-in for your role: set it up first \
                 (POST /api/v2/auth/mfa/totp, then /auth/mfa/totp/enable), then sign in again"
                    .into(),
            ));
        }
        Ok(Caller {
            user_id: claims.sub,
            clinic_id: claims.cid,
            role: claims.role,
            auth_version: claims.ver,
            session_id: claims.sid,
            provider: claims.prv,
            ip: client_ip(parts, &state.config.trusted_proxies),
            request_id: crate::error::current_request_id(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receptionists_book_and_edit_demographics_but_never_read_the_chart() {
        let r = Role::Receptionist;
        assert!(r.can(Permission::AppointmentsWrite));
        assert!(r.can(Permission::PatientsWrite));
        assert!(r.can(Permission::MedicalAlertsWrite));
        assert!(!r.can(Permission::ClinicalRead));
        assert!(!r.can(Permission::NotesWrite));
    }

    #[test]
    fn billing_reads_demographics_and_the_ledger_only() {
        let b = Role::Billing;
        assert!(b.can(Permission::PatientsRead));
        assert!(b.can(Permission::LedgerRead));
        assert!(!b.can(Permission::PatientsWrite));
        assert!(!b.can(Permission::ClinicalRead));
        assert!(!b.can(Permission::AppointmentsRead));
    }

    #[test]
    fn only_owner_and_admin_manage_users_and_read_the_audit_log() {
        for role in Role::ALL {
            let manager = matches!(role, Role::Owner | Role::Admin);
            assert_eq!(role.can(Permission::UsersManage), manager, "{role:?}");
            assert_eq!(role.can(Permission::AuditRead), manager, "{role:?}");
        }
    }

    #[test]
    fn only_dentists_and_hygienists_sign_notes() {
        for role in Role::ALL {
            assert_eq!(
                role.can(Permission::NotesSign),
                matches!(role, Role::Dentist | Role::Hygienist)
            );
        }
    }

    #[test]
    fn permission_names_are_the_serialised_names_of_every_variant() {
        let schema = serde_json::to_value(<Permission as utoipa::PartialSchema>::schema())
            .expect("schema serialises");
        let variants: Vec<String> =
            serde_json::from_value(schema["enum"].clone()).expect("the schema lists the variants");
        let listed: Vec<String> = Permission::ALL.map(|p| p.as_str().to_owned()).to_vec();
        assert_eq!(listed, variants);
        for p in Permission::ALL {
            assert_eq!(serde_json::to_value(p).expect("serialises"), p.as_str());
        }
    }

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("superuser"), None);
    }
}

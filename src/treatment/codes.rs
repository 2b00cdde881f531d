//! `/procedure-codes`: the clinic's own catalogue and fee schedule. Everyone reads it;
//! owners and admins manage it (one by one here, or in bulk through [`super::import`]).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::MAX_FEE_CENTS;
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::db::Tx;
use crate::error::{AppError, AppResult, OnConstraint, Problem};
use crate::http::etag::{self, IfMatch};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use crate::http::idempotency::{self, Created, HashedJson, IdempotencyKey};
use crate::http::pagination::{self, Limit, Page};
use crate::state::AppState;
use crate::validate::Errors;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_codes, create_code))
        .routes(routes!(get_code, update_code))
        .routes(routes!(super::import::import_codes))
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProcedureCode {
    pub id: Uuid,
    /// Unique in the clinic.
    pub code: String,
    /// `local`, or the code set it comes from (`CDT`, `BEMA`…).
    pub system: String,
    pub description: String,
    pub category: Option<String>,
    /// The fee in minor units of the clinic's currency.
    pub fee_cents: i64,
    pub default_minutes: Option<i32>,
    /// A procedure of this code names a tooth (and otherwise may not).
    pub requires_tooth: bool,
    /// A procedure of this code names surfaces (and otherwise may not).
    pub requires_surfaces: bool,
    pub active: bool,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A code's syntax: a letter or digit, then letters, digits and `.`, `_`, `/`, `-`.
pub const CODE_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,19}$";
/// A code system's name.
pub const SYSTEM_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,19}$";

pub fn valid_code(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=20).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._/-".contains(c))
}

pub fn valid_system(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=20).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_-".contains(c))
}

/// Checks the fields every way of writing a code shares; `field` names them in errors
/// (`"fee_cents"`, or `"line 17: fee_cents"` for an import).
pub struct CodeChecks<'a> {
    pub errors: &'a mut Errors,
    pub prefix: &'a str,
}

impl CodeChecks<'_> {
    fn name(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    pub fn code(&mut self, v: &str) {
        if !valid_code(v) {
            let f = self.name("code");
            self.errors.add(
                f,
                "must be 1 to 20 letters, digits, '.', '_', '/' or '-', starting with a letter or digit",
            );
        }
    }

    pub fn system(&mut self, v: &str) {
        if !valid_system(v) {
            let f = self.name("system");
            self.errors.add(
                f,
                "must be 1 to 20 letters, digits, '_' or '-', starting with a letter or digit",
            );
        }
    }

    pub fn description(&mut self, v: &str) -> String {
        let f = self.name("description");
        self.errors.text(&f, v, 500)
    }

    pub fn category(&mut self, v: &str) -> String {
        let f = self.name("category");
        self.errors.text(&f, v, 100)
    }

    pub fn fee(&mut self, v: i64) {
        if !(0..=MAX_FEE_CENTS).contains(&v) {
            let f = self.name("fee_cents");
            self.errors
                .add(f, format!("must be between 0 and {MAX_FEE_CENTS}"));
        }
    }

    pub fn minutes(&mut self, v: i32) {
        if !(1..=1440).contains(&v) {
            let f = self.name("default_minutes");
            self.errors.add(f, "must be between 1 and 1440");
        }
    }

    pub fn tooth_and_surfaces(&mut self, requires_tooth: bool, requires_surfaces: bool) {
        if requires_surfaces && !requires_tooth {
            let f = self.name("requires_surfaces");
            self.errors.add(
                f,
                "surfaces belong to a tooth: requires_tooth must be true too",
            );
        }
    }
}

macro_rules! select_code {
    ($tx:expr, $id:expr, $lock:literal) => {
        sqlx::query_as!(
            ProcedureCode,
            "SELECT id, code, system, description, category, fee_cents, default_minutes, \
             requires_tooth, requires_surfaces, active, version, created_at, updated_at \
             FROM procedure_codes WHERE id = $1"
                + $lock,
            $id
        )
        .fetch_optional(&mut **$tx)
        .await?
    };
}

pub async fn load(tx: &mut Tx, id: Uuid) -> AppResult<ProcedureCode> {
    select_code!(tx, id, "").ok_or_else(|| AppError::not_found("procedure code"))
}

async fn load_for_update(tx: &mut Tx, id: Uuid) -> AppResult<ProcedureCode> {
    select_code!(tx, id, " FOR UPDATE").ok_or_else(|| AppError::not_found("procedure code"))
}

fn duplicate_code() -> AppError {
    AppError::conflict("the clinic already has a procedure code with this code")
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CodeParams {
    /// Only active (true) or inactive (false) codes; both when absent.
    active: Option<bool>,
    /// Page size (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200, default = 50)]
    limit: Option<Limit>,
    /// The `next_cursor` of the previous page.
    #[param(min_length = 1, pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

/// The catalogue, ordered by code (every role: fees are quoted at the front desk too).
#[utoipa::path(get, path = "/procedure-codes", tag = "treatment", security(("bearer" = [])),
    params(CodeParams),
    responses(
        (status = 200, description = "A page of codes", body = Page<ProcedureCode>),
        (status = 400, description = "Malformed parameters or cursor", body = Problem),
        (status = 403, description = "Role lacks treatment.read", body = Problem)))]
pub async fn list_codes(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<CodeParams>,
) -> AppResult<Json<Page<ProcedureCode>>> {
    caller
        .authorize(&state, Permission::TreatmentRead, || {
            Event::new("procedure_code.list", "procedure_code")
        })
        .await?;
    let limit = pagination::limit(p.limit)?;
    let after: Option<String> = state.cursors.decode_opt(p.cursor.as_deref())?;
    let mut tx = caller.begin(&state).await?;
    let rows = sqlx::query_as!(
        ProcedureCode,
        "SELECT id, code, system, description, category, fee_cents, default_minutes, \
         requires_tooth, requires_surfaces, active, version, created_at, updated_at \
         FROM procedure_codes WHERE ($1::boolean IS NULL OR active = $1) \
           AND ($2::text IS NULL OR code > $2) ORDER BY code LIMIT $3",
        p.active,
        after,
        pagination::overfetch(limit)
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(state.cursors.page(
        rows,
        limit,
        |c: &ProcedureCode| c.code.clone(),
    )))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"code": "X-FILL1", "description": "Composite filling, one surface",
    "category": "Restorative", "fee_cents": 9500, "default_minutes": 30,
    "requires_tooth": true, "requires_surfaces": true}))]
pub struct NewCode {
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,19}$")]
    code: String,
    /// Default `local`.
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,19}$")]
    system: Option<String>,
    #[schema(schema_with = crate::validate::schema::text_500)]
    description: String,
    #[schema(schema_with = crate::validate::schema::text_100_or_null)]
    category: Option<String>,
    #[schema(minimum = 0, maximum = 100_000_000_000_i64)]
    fee_cents: i64,
    #[schema(minimum = 1, maximum = 1440)]
    default_minutes: Option<i32>,
    #[serde(default)]
    requires_tooth: bool,
    /// Needs `requires_tooth` too.
    #[serde(default)]
    requires_surfaces: bool,
    /// Default true.
    active: Option<bool>,
}

/// Adds a code to the catalogue (owner and admin).
#[utoipa::path(post, path = "/procedure-codes", tag = "treatment", security(("bearer" = [])),
    params(IdempotencyKey),
    request_body = NewCode,
    responses(
        (status = 201, description = "Added", body = ProcedureCode, headers(("Location" = String))),
        (status = 403, description = "Role lacks catalogue.manage", body = Problem),
        (status = 409, description = "The code exists already", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem)))]
pub async fn create_code(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: HashedJson<NewCode>,
) -> AppResult<Response> {
    let (hash, body) = (body.hash, body.value);
    let event = || Event::new("procedure_code.create", "procedure_code");
    caller
        .authorize(&state, Permission::CatalogueManage, event)
        .await?;
    let mut errors = Errors::default();
    let mut check = CodeChecks {
        errors: &mut errors,
        prefix: "",
    };
    check.code(&body.code);
    let system = body.system.clone().unwrap_or_else(|| "local".into());
    check.system(&system);
    let description = check.description(&body.description);
    let category = body.category.as_deref().map(|c| check.category(c));
    check.fee(body.fee_cents);
    if let Some(m) = body.default_minutes {
        check.minutes(m);
    }
    check.tooth_and_surfaces(body.requires_tooth, body.requires_surfaces);
    errors.finish()?;
    idempotency::run(&state, &caller, &headers, &hash, || async {
        let mut tx = caller.begin(&state).await?;
        let id = Uuid::now_v7();
        let row = sqlx::query_as!(
            ProcedureCode,
            "INSERT INTO procedure_codes (clinic_id, id, code, system, description, category, \
             fee_cents, default_minutes, requires_tooth, requires_surfaces, active) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             RETURNING id, code, system, description, category, fee_cents, default_minutes, \
             requires_tooth, requires_surfaces, active, version, created_at, updated_at",
            caller.clinic_id,
            id,
            &body.code,
            &system,
            &description,
            category.as_deref(),
            body.fee_cents,
            body.default_minutes,
            body.requires_tooth,
            body.requires_surfaces,
            body.active.unwrap_or(true),
        )
        .fetch_one(&mut *tx)
        .await
        .on_constraint("procedure_codes_code_key", duplicate_code)?;
        audit::record(&mut tx, &caller.audit(), event().resource(id)).await?;
        Ok((
            tx,
            Created {
                location: format!("/api/v2/procedure-codes/{id}"),
                version: Some(row.version),
                value: row,
            },
        ))
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CodePath {
    /// The procedure code's id.
    id: Uuid,
}

/// One code.
#[utoipa::path(get, path = "/procedure-codes/{id}", tag = "treatment", security(("bearer" = [])),
    params(CodePath),
    responses(
        (status = 200, description = "The code", body = ProcedureCode),
        (status = 403, description = "Role lacks treatment.read", body = Problem),
        (status = 404, description = "No such code in your clinic", body = Problem)))]
pub async fn get_code(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(CodePath { id }): ApiPath<CodePath>,
) -> AppResult<Response> {
    caller
        .authorize(&state, Permission::TreatmentRead, || {
            Event::new("procedure_code.read", "procedure_code").resource(id)
        })
        .await?;
    let mut tx = caller.begin(&state).await?;
    let code = load(&mut tx, id).await?;
    tx.commit().await?;
    Ok(etag::tagged(code.version, &code))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodePatch {
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(value_type = Option<String>, pattern = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,19}$")]
    code: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(value_type = Option<String>, pattern = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,19}$")]
    system: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(schema_with = crate::validate::schema::text_500)]
    description: Option<Option<String>>,
    /// null clears it.
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(schema_with = crate::validate::schema::text_100_or_null)]
    category: Option<Option<String>>,
    /// A new fee applies to procedures planned from now on; planned ones keep theirs.
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 100_000_000_000_i64)]
    fee_cents: Option<Option<i64>>,
    /// null clears it.
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 1440, nullable = true)]
    default_minutes: Option<Option<i32>>,
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(value_type = Option<bool>)]
    requires_tooth: Option<Option<bool>>,
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(value_type = Option<bool>)]
    requires_surfaces: Option<Option<bool>>,
    /// An inactive code stays on existing procedures but cannot be charted anew.
    #[serde(default, deserialize_with = "crate::validate::patch_field")]
    #[schema(value_type = Option<bool>)]
    active: Option<Option<bool>>,
}

/// Changes a code (owner and admin); merge-patch semantics.
#[utoipa::path(patch, path = "/procedure-codes/{id}", tag = "treatment", security(("bearer" = [])),
    params(CodePath, IfMatch),
    request_body = CodePatch,
    responses(
        (status = 200, description = "Updated", body = ProcedureCode),
        (status = 403, description = "Role lacks catalogue.manage", body = Problem),
        (status = 404, description = "No such code in your clinic", body = Problem),
        (status = 409, description = "Another code has this code", body = Problem),
        (status = 412, description = "If-Match does not match", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem)))]
pub async fn update_code(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(CodePath { id }): ApiPath<CodePath>,
    ApiJson(patch): ApiJson<CodePatch>,
) -> AppResult<Response> {
    let event = || Event::new("procedure_code.update", "procedure_code").resource(id);
    caller
        .authorize(&state, Permission::CatalogueManage, event)
        .await?;
    let mut errors = Errors::default();
    errors.uncleared(&[
        ("code", matches!(patch.code, Some(None))),
        ("system", matches!(patch.system, Some(None))),
        ("description", matches!(patch.description, Some(None))),
        ("fee_cents", matches!(patch.fee_cents, Some(None))),
        ("requires_tooth", matches!(patch.requires_tooth, Some(None))),
        (
            "requires_surfaces",
            matches!(patch.requires_surfaces, Some(None)),
        ),
        ("active", matches!(patch.active, Some(None))),
    ]);
    errors.finish()?;
    let mut tx = caller.begin(&state).await?;
    let current = load_for_update(&mut tx, id).await?;
    etag::check(&headers, current.version)?;
    let mut errors = Errors::default();
    let mut check = CodeChecks {
        errors: &mut errors,
        prefix: "",
    };
    let code = patch.code.flatten().unwrap_or(current.code);
    check.code(&code);
    let system = patch.system.flatten().unwrap_or(current.system);
    check.system(&system);
    let description = match patch.description.flatten() {
        Some(d) => check.description(&d),
        None => current.description,
    };
    let category = match patch.category {
        Some(Some(c)) => Some(check.category(&c)),
        Some(None) => None,
        None => current.category,
    };
    let fee = patch.fee_cents.flatten().unwrap_or(current.fee_cents);
    check.fee(fee);
    let minutes = match patch.default_minutes {
        Some(m) => m,
        None => current.default_minutes,
    };
    if let Some(m) = minutes {
        check.minutes(m);
    }
    let requires_tooth = patch
        .requires_tooth
        .flatten()
        .unwrap_or(current.requires_tooth);
    let requires_surfaces = patch
        .requires_surfaces
        .flatten()
        .unwrap_or(current.requires_surfaces);
    check.tooth_and_surfaces(requires_tooth, requires_surfaces);
    errors.finish()?;
    let row = sqlx::query_as!(
        ProcedureCode,
        "UPDATE procedure_codes SET code = $2, system = $3, description = $4, category = $5, \
         fee_cents = $6, default_minutes = $7, requires_tooth = $8, requires_surfaces = $9, \
         active = $10, version = version + 1, updated_at = now() WHERE id = $1 \
         RETURNING id, code, system, description, category, fee_cents, default_minutes, \
         requires_tooth, requires_surfaces, active, version, created_at, updated_at",
        id,
        &code,
        &system,
        &description,
        category.as_deref(),
        fee,
        minutes,
        requires_tooth,
        requires_surfaces,
        patch.active.flatten().unwrap_or(current.active),
    )
    .fetch_one(&mut *tx)
    .await
    .on_constraint("procedure_codes_code_key", duplicate_code)?;
    audit::record(&mut tx, &caller.audit(), event()).await?;
    tx.commit().await?;
    Ok(etag::tagged(row.version, &row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_systems_follow_their_patterns() {
        for ok in ["D0120", "01", "X-FILL.1", "a/b_c", "12345678901234567890"] {
            assert!(valid_code(ok), "{ok}");
        }
        for bad in ["", "-X", " D0120", "D 0120", "123456789012345678901", "Ä1"] {
            assert!(!valid_code(bad), "{bad}");
        }
        assert!(valid_system("CDT") && valid_system("local") && valid_system("BEMA-2026"));
        assert!(!valid_system("") && !valid_system("a/b") && !valid_system("_x"));
    }
}

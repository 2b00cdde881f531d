//! `POST /procedure-codes/import`: a fee schedule as CSV, all or nothing. The header row
//! names the columns; each line creates or updates the code it names; any bad line is a
//! 422 naming the line and column, and nothing is written. One statement writes them all.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::codes::CodeChecks;
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult, FieldError, OnConstraint, Problem};
use crate::state::AppState;
use crate::validate::Errors;

/// The columns an import may name; `code`, `description` and `fee_cents` are required.
pub const COLUMNS: [&str; 9] = [
    "code",
    "system",
    "description",
    "category",
    "fee_cents",
    "default_minutes",
    "requires_tooth",
    "requires_surfaces",
    "active",
];
const REQUIRED: [&str; 3] = ["code", "description", "fee_cents"];
/// Errors listed in one answer; a file with more is wrong throughout anyway.
const MAX_ERRORS: usize = 100;

/// A `text/csv` body (415 for another content type, 413 beyond `MAX_BODY_KB`).
pub struct CsvBody(pub String);

impl<S: Send + Sync> FromRequest<S> for CsvBody {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_csv = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/csv"));
        if !is_csv {
            return Err(AppError::UnsupportedMediaType(
                "the fee schedule must be sent as Content-Type: text/csv".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                AppError::PayloadTooLarge
            } else {
                AppError::BadRequest("the request body could not be read".into())
            }
        })?;
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| AppError::validation("line 1", "the file must be UTF-8 text"))?;
        Ok(CsvBody(text))
    }
}

/// A fee schedule as sent: CSV text (in the document, binary content of type `text/csv`,
/// which client generators send as a file or bytes).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct FeeSchedule(String);

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResult {
    /// Codes that did not exist before.
    created: i64,
    /// Existing codes (by `code`) that were overwritten.
    updated: i64,
}

/// One parsed line, before it is written.
#[derive(Debug, Default, PartialEq)]
pub struct CodeLine {
    pub code: String,
    pub system: String,
    pub description: String,
    pub category: Option<String>,
    pub fee_cents: i64,
    pub default_minutes: Option<i32>,
    pub requires_tooth: bool,
    pub requires_surfaces: bool,
    pub active: bool,
}

/// A parsed file: which optional columns it has, and its lines.
#[derive(Debug)]
pub struct Schedule {
    pub has: HashMap<&'static str, bool>,
    pub lines: Vec<CodeLine>,
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "1" => Some(true),
        "false" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// Parses and checks a whole file; every problem is reported with its line.
pub fn parse(text: &str) -> Result<Schedule, Vec<FieldError>> {
    let mut errors = Errors::default();
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => return Err(vec![FieldError::new("line 1", csv_message(&e))]),
    };
    let mut index: HashMap<&'static str, usize> = HashMap::new();
    for (i, name) in header.iter().enumerate() {
        let name = name.trim_start_matches('\u{feff}').to_ascii_lowercase();
        match COLUMNS.iter().find(|c| **c == name) {
            Some(c) if index.contains_key(c) => {
                errors.add(format!("line 1: {c}"), "the column appears twice")
            }
            Some(c) => {
                index.insert(c, i);
            }
            None => errors.add(
                "line 1",
                format!(
                    "{name:?} is not a column; the columns are {}",
                    COLUMNS.join(", ")
                ),
            ),
        }
    }
    for c in REQUIRED {
        if !index.contains_key(c) {
            errors.add(format!("line 1: {c}"), "the header must name this column");
        }
    }
    if !errors.is_empty() {
        return Err(errors.into_vec());
    }
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut lines = Vec::new();
    for record in reader.records() {
        if errors.len() >= MAX_ERRORS {
            break;
        }
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                errors.add(format!("line {line}"), csv_message(&e));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        let prefix = format!("line {line}: ");
        let cell = |c: &str| index.get(c).and_then(|i| record.get(*i)).unwrap_or("");
        let mut out = CodeLine {
            active: true,
            ..CodeLine::default()
        };
        let mut e = Errors::default();
        let mut check = CodeChecks {
            errors: &mut e,
            prefix: &prefix,
        };
        out.code = cell("code").to_owned();
        check.code(&out.code);
        out.system = match cell("system") {
            "" => "local".to_owned(),
            s => s.to_owned(),
        };
        check.system(&out.system);
        out.description = check.description(cell("description"));
        out.category = match cell("category") {
            "" => None,
            c => Some(check.category(c)),
        };
        match cell("fee_cents").parse::<i64>() {
            Ok(f) => {
                check.fee(f);
                out.fee_cents = f;
            }
            Err(_) => check.errors.add(
                format!("{prefix}fee_cents"),
                "must be a whole number of minor units (9500 for 95.00)",
            ),
        }
        match cell("default_minutes") {
            "" => {}
            m => match m.parse::<i32>() {
                Ok(m) => {
                    check.minutes(m);
                    out.default_minutes = Some(m);
                }
                Err(_) => check.errors.add(
                    format!("{prefix}default_minutes"),
                    "must be a whole number of minutes",
                ),
            },
        }
        for (column, slot, default) in [
            ("requires_tooth", &mut out.requires_tooth, false),
            ("requires_surfaces", &mut out.requires_surfaces, false),
            ("active", &mut out.active, true),
        ] {
            match cell(column) {
                "" => *slot = default,
                v => match parse_bool(v) {
                    Some(b) => *slot = b,
                    None => check.errors.add(
                        format!("{prefix}{column}"),
                        "must be true or false (yes/no, 1/0)",
                    ),
                },
            }
        }
        check.tooth_and_surfaces(out.requires_tooth, out.requires_surfaces);
        if let Some(first) = seen.get(&out.code) {
            e.add(
                format!("{prefix}code"),
                format!("appears already on line {first}"),
            );
        } else if !out.code.is_empty() {
            seen.insert(out.code.clone(), line);
        }
        for fe in e.into_vec() {
            errors.push(fe);
        }
        lines.push(out);
    }
    if lines.is_empty() && errors.is_empty() {
        errors.add("line 2", "the file has a header but no codes");
    }
    if !errors.is_empty() {
        let mut all = errors.into_vec();
        all.truncate(MAX_ERRORS);
        return Err(all);
    }
    let has = COLUMNS
        .into_iter()
        .map(|c| (c, index.contains_key(c)))
        .collect();
    Ok(Schedule { has, lines })
}

fn csv_message(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("has {len} fields where the header has {expected_len}"),
        csv::ErrorKind::Utf8 { .. } => "is not UTF-8 text".into(),
        _ => "is not valid CSV".into(),
    }
}

/// Imports a fee schedule (owner and admin): creates or updates codes by `code`, all or
/// nothing. Columns the header leaves out keep their values on existing codes (and take
/// their defaults on new ones).
#[utoipa::path(post, path = "/procedure-codes/import", tag = "treatment", security(("bearer" = [])),
    request_body(content = FeeSchedule, content_type = "text/csv",
        description = "A header row naming columns (code, description and fee_cents required; \
            system, category, default_minutes, requires_tooth, requires_surfaces, active \
            optional), then one code per line.",
        example = "code,description,category,fee_cents,requires_tooth,requires_surfaces\nX-EXAM,Periodic examination,Diagnostic,4500,false,false\nX-FILL1,Composite filling one surface,Restorative,9500,true,true"),
    responses(
        (status = 200, description = "Imported", body = ImportResult),
        (status = 403, description = "Role lacks catalogue.manage", body = Problem),
        (status = 413, description = "Larger than MAX_BODY_KB", body = Problem),
        (status = 415, description = "Not text/csv", body = Problem),
        (status = 422, description = "Bad lines, each named `line N: column`; nothing was written", body = Problem)))]
pub async fn import_codes(
    State(state): State<AppState>,
    caller: Caller,
    CsvBody(text): CsvBody,
) -> AppResult<Json<ImportResult>> {
    let event = || Event::new("procedure_code.import", "procedure_code");
    caller
        .authorize(&state, Permission::CatalogueManage, event)
        .await?;
    let schedule = parse(&text).map_err(AppError::Validation)?;
    let n = schedule.lines.len();
    let mut cols = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for l in schedule.lines {
        cols.0.push(Uuid::now_v7());
        cols.1.push(l.code);
        cols.2.push(l.system);
        cols.3.push(l.description);
        cols.4.push(l.category);
        cols.5.push(l.fee_cents);
        cols.6.push(l.default_minutes);
        cols.7.push(l.requires_tooth);
        cols.8.push(l.requires_surfaces);
        cols.9.push(l.active);
    }
    let has = |c: &str| schedule.has.get(c).copied().unwrap_or(false);
    let mut tx = caller.begin(&state).await?;
    let created: Vec<bool> = sqlx::query_scalar!(
        r#"INSERT INTO procedure_codes (clinic_id, id, code, system, description, category,
               fee_cents, default_minutes, requires_tooth, requires_surfaces, active)
           SELECT $1, * FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
               $7::bigint[], $8::int4[], $9::bool[], $10::bool[], $11::bool[])
           ON CONFLICT (clinic_id, code) DO UPDATE SET
               system = CASE WHEN $12 THEN EXCLUDED.system ELSE procedure_codes.system END,
               description = EXCLUDED.description,
               category = CASE WHEN $13 THEN EXCLUDED.category ELSE procedure_codes.category END,
               fee_cents = EXCLUDED.fee_cents,
               default_minutes = CASE WHEN $14 THEN EXCLUDED.default_minutes
                                 ELSE procedure_codes.default_minutes END,
               requires_tooth = CASE WHEN $15 THEN EXCLUDED.requires_tooth
                                ELSE procedure_codes.requires_tooth END,
               requires_surfaces = CASE WHEN $16 THEN EXCLUDED.requires_surfaces
                                   ELSE procedure_codes.requires_surfaces END,
               active = CASE WHEN $17 THEN EXCLUDED.active ELSE procedure_codes.active END,
               version = procedure_codes.version + 1, updated_at = now()
           RETURNING (xmax = 0) AS "created!""#,
        caller.clinic_id,
        &cols.0,
        &cols.1,
        &cols.2,
        &cols.3,
        &cols.4 as &[Option<String>],
        &cols.5,
        &cols.6 as &[Option<i32>],
        &cols.7,
        &cols.8,
        &cols.9,
        has("system"),
        has("category"),
        has("default_minutes"),
        has("requires_tooth"),
        has("requires_surfaces"),
        has("active"),
    )
    .fetch_all(&mut *tx)
    .await
    .on_constraint("procedure_codes_surfaces_need_tooth", || {
        AppError::validation(
            "requires_surfaces",
            "an existing code would require surfaces without a tooth; add the requires_tooth column",
        )
    })?;
    let new = created.iter().filter(|c| **c).count() as i64;
    let result = ImportResult {
        created: new,
        updated: created.len() as i64 - new,
    };
    audit::record(
        &mut tx,
        &caller.audit(),
        event().details(serde_json::json!({"created": result.created, "updated": result.updated})),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(r: Result<Schedule, Vec<FieldError>>) -> Vec<String> {
        r.err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_good_file_parses_with_defaults_for_empty_cells() {
        let s = parse("code,description,fee_cents,requires_tooth,active\nX1,Exam,4500,,\nX2,\"Filling, one surface\",9500,yes,no\n")
            .expect("parses");
        assert_eq!(s.lines.len(), 2);
        assert_eq!(s.lines[0].system, "local");
        assert!(s.lines[0].active && !s.lines[0].requires_tooth);
        assert_eq!(s.lines[1].description, "Filling, one surface");
        assert!(s.lines[1].requires_tooth && !s.lines[1].active);
        assert_eq!(s.has.get("category"), Some(&false));
        assert_eq!(s.has.get("active"), Some(&true));
    }

    #[test]
    fn bad_lines_are_named_by_line_and_column() {
        let f = fields(parse(
            "code,description,fee_cents\nX1,Exam,4500\nX2,Clean,-1\n,Nothing,5\nX1,Again,7\nX3,Short\n",
        ));
        assert_eq!(
            f,
            vec![
                "line 3: fee_cents",
                "line 4: code",
                "line 5: code",
                "line 6"
            ]
        );
    }

    #[test]
    fn the_header_must_name_known_and_required_columns() {
        let f = fields(parse("code,price\nX1,5\n"));
        assert!(f.contains(&"line 1".to_owned()), "{f:?}");
        assert!(f.contains(&"line 1: description".to_owned()), "{f:?}");
        assert!(f.contains(&"line 1: fee_cents".to_owned()), "{f:?}");
        assert_eq!(
            fields(parse("code,description,fee_cents\n")),
            vec!["line 2"]
        );
    }

    #[test]
    fn surfaces_need_a_tooth_on_the_line() {
        let f = fields(parse(
            "code,description,fee_cents,requires_surfaces\nX1,Exam,1,true\n",
        ));
        assert_eq!(f, vec!["line 2: requires_surfaces"]);
    }
}

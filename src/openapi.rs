//! The OpenAPI 3.1 document, derived from the handlers' annotations, and the docs page
//! whose assets ship inside the binary.

use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use serde_json::{json, Map, Value};

use crate::error::{FieldError, Problem, PROBLEM_JSON};
use crate::scheduling::appointments::Conflict;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Molar API",
        description = "Multi-tenant dental clinic management. Errors are RFC 9457 problem+json \
                       documents with a `request_id`; validation errors add `errors`.",
        license(name = "Proprietary")
    ),
    components(schemas(Problem, FieldError, Conflict)),
    modifiers(&BearerAuth),
    tags(
        (name = "operations", description = "Health, readiness and start-up checks"),
        (name = "auth", description = "Clinic registration, sign-in and tokens"),
        (name = "clinic", description = "The caller's clinic"),
        (name = "users", description = "Staff accounts"),
        (name = "audit", description = "The audit trail of access to health data"),
        (name = "patients", description = "Patients and their demographics"),
        (name = "chart", description = "The odontogram"),
        (name = "notes", description = "Clinical notes"),
        (name = "perio", description = "Periodontal charts"),
        (name = "scheduling", description = "Operatories, working hours, appointments and availability"),
        (name = "treatment", description = "The procedure catalogue, charted procedures, treatment plans and recalls"),
        (name = "reports", description = "The day sheet"),
        (name = "billing", description = "Patient accounts, payments, refunds, adjustments and invoices"),
        (name = "documents", description = "X-rays, photos, consent forms and letters: streamed uploads and downloads, encrypted at rest"),
        (name = "webhooks", description = "Signed event deliveries to the clinic's own systems, from a transactional outbox"),
        (name = "fhir", description = "A read-only FHIR R4 view of the records (`application/fhir+json`; errors are OperationOutcomes)")
    )
)]
pub struct ApiDoc;

/// The document of every route [`crate::app::api`] serves, as [`finish`]ed for `settings`.
pub fn document(settings: DocSettings) -> Value {
    finish(&crate::app::api().1, settings)
}

/// [`document`] as pretty-printed JSON (what `molar openapi` prints).
pub fn document_json(settings: DocSettings) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&document(settings))
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

const SWAGGER_JS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js");
const SWAGGER_CSS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui.css");

const DOCS_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Molar API</title>
<link rel="stylesheet" href="/api/v2/docs/swagger-ui.css">
</head>
<body>
<div id="docs"></div>
<script src="/api/v2/docs/swagger-ui-bundle.js"></script>
<script src="/api/v2/docs/init.js"></script>
</body>
</html>"#;

const DOCS_INIT: &str =
    "window.ui = SwaggerUIBundle({url: '/api/v2/openapi.json', dom_id: '#docs', deepLinking: true});";

/// The page allows only its own scripts and styles.
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                        img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

pub async fn docs_page() -> Response {
    let mut res = Html(DOCS_HTML).into_response();
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CSP),
    );
    res
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            ),
        ],
        body,
    )
        .into_response()
}

pub async fn docs_js() -> Response {
    asset("text/javascript; charset=utf-8", SWAGGER_JS)
}

pub async fn docs_css() -> Response {
    asset("text/css; charset=utf-8", SWAGGER_CSS)
}

pub async fn docs_init() -> Response {
    asset("text/javascript; charset=utf-8", DOCS_INIT.as_bytes())
}

/// Settings of this server that show in its document (limits the configuration sets).
#[derive(Debug, Clone, Copy)]
pub struct DocSettings {
    /// `APPOINTMENT_MAX_MINUTES`: the longest appointment and availability duration.
    pub appointment_max_minutes: u32,
}

impl Default for DocSettings {
    fn default() -> Self {
        DocSettings {
            appointment_max_minutes: 480,
        }
    }
}

impl From<&crate::config::Config> for DocSettings {
    fn from(c: &crate::config::Config) -> Self {
        DocSettings {
            appointment_max_minutes: c.appointment_max_minutes,
        }
    }
}

/// The document as served: the handlers' annotations, plus what every operation shares,
/// added here once rather than on every handler:
///
/// - every error response is `application/problem+json` with the [`Problem`] schema;
/// - every operation names the errors any request can meet: 400 (a malformed or unknown
///   parameter, malformed JSON), 500, 503 (a dependency down, a timeout) and, on the rate
///   limited routes, 429; 401 where it needs a token, and 403 where a role may lack the
///   permission it checks ([`EVERY_ROLE`] aside); 404 where its path names a resource;
///   413, 415 and 422 where it takes a body; 409 where it writes (a concurrent change);
///   409 and 422 where it takes an `Idempotency-Key`; 412 where it takes `If-Match`;
/// - the creating operations' responses carry links to what can be done with what they
///   created ([`LINKS`]);
/// - limits the configuration sets (`settings`).
pub fn finish(doc: &utoipa::openapi::OpenApi, settings: DocSettings) -> Value {
    let mut doc = serde_json::to_value(doc).unwrap_or(Value::Null);
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        // Request bodies refuse unknown fields (`deny_unknown_fields`), and responses hold
        // exactly their fields: every object with named properties is closed.
        for schema in schemas.values_mut() {
            if schema["type"] == "object"
                && schema.get("properties").is_some()
                && schema.get("additionalProperties").is_none()
            {
                schema["additionalProperties"] = Value::Bool(false);
            }
        }
        // A problem document may carry members of its own: it stays open.
        schemas.insert("Problem".into(), problem_schema());
        // FHIR resources are defined by the standard; the document names what every one has.
        for (name, schema) in fhir_schemas() {
            schemas.insert(name.into(), schema);
        }
    }
    // Resources with an integer `version` are answered with their strong ETag.
    let versioned: Vec<String> = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object)
        .map(|schemas| {
            schemas
                .iter()
                .filter(|(_, s)| s.pointer("/properties/version/type") == Some(&json!("integer")))
                .map(|(name, _)| format!("#/components/schemas/{name}"))
                .collect()
        })
        .unwrap_or_default();
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            if let Some(op) = op.as_object_mut() {
                complete_operation(path, method, op);
                if path.starts_with(crate::fhir::PREFIX) {
                    fhir_errors(op);
                }
                add_etags(op, &versioned);
                apply_settings(op, settings);
            }
        }
    }
    add_links(&mut doc);
    doc
}

/// The RFC 9457 problem document every error is.
fn problem_schema() -> Value {
    json!({
        "type": "object",
        "description": "An RFC 9457 problem document (`application/problem+json`). Never holds a stack \
                        trace, SQL text or another clinic's data.",
        "required": ["type", "title", "status", "detail", "request_id"],
        "properties": {
            "type": {
                "type": "string",
                "description": "`urn:molar:problem:<slug>`: bad-request, unauthorized, forbidden, not-found, \
                                method-not-allowed, conflict, precondition-failed, payload-too-large, \
                                unsupported-media-type, validation-error, rate-limited, internal-error, \
                                service-unavailable; `error` for any other status",
                "pattern": "^urn:molar:problem:[a-z-]+$"
            },
            "title": {"type": "string", "description": "The status code's reason phrase"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string", "description": "What went wrong, for a person"},
            "request_id": {
                "type": "string",
                "description": "The request's `X-Request-Id`; quote it when reporting a problem"
            },
            "errors": {
                "type": "array",
                "description": "Validation errors (422): every invalid field at once",
                "items": {"$ref": "#/components/schemas/FieldError"}
            },
            "conflicts": {
                "type": "array",
                "description": "A double booking (409): each clashing appointment and resource",
                "items": {"$ref": "#/components/schemas/Conflict"}
            }
        }
    })
}

/// The FHIR view's schemas: a resource, a search's bundle and the error outcome, each open
/// to the elements FHIR R4 defines.
fn fhir_schemas() -> [(&'static str, Value); 3] {
    [
        (
            "FhirResource",
            json!({
                "type": "object",
                "description": "A FHIR R4 resource (https://hl7.org/fhir/R4/resourcelist.html)",
                "required": ["resourceType"],
                "properties": {
                    "resourceType": {"type": "string", "pattern": "^[A-Z][A-Za-z]+$"},
                    "id": {"type": "string"}
                }
            }),
        ),
        (
            "FhirBundle",
            json!({
                "type": "object",
                "description": "A FHIR R4 `searchset` Bundle; `link` holds `self` and, when more \
                                follows, `next`",
                "required": ["resourceType", "type"],
                "properties": {
                    "resourceType": {"type": "string", "enum": ["Bundle"]},
                    "type": {"type": "string", "enum": ["searchset"]},
                    "link": {"type": "array", "items": {"type": "object"}},
                    "entry": {"type": "array", "items": {"type": "object"}}
                }
            }),
        ),
        (
            "FhirOperationOutcome",
            json!({
                "type": "object",
                "description": "A FHIR R4 OperationOutcome: every error of the FHIR view",
                "required": ["resourceType", "issue"],
                "properties": {
                    "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
                    "issue": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["severity", "code"],
                            "properties": {
                                "severity": {"type": "string"},
                                "code": {"type": "string"},
                                "diagnostics": {"type": "string"}
                            }
                        }
                    }
                }
            }),
        ),
    ]
}

/// A FHIR route's errors, whatever answers them, are OperationOutcomes
/// ([`crate::fhir::outcome`]).
fn fhir_errors(op: &mut Map<String, Value>) {
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    for (status, response) in responses.iter_mut() {
        if status.starts_with('4') || status.starts_with('5') {
            response["content"] = json!({
                crate::fhir::FHIR_JSON: {"schema": {"$ref": "#/components/schemas/FhirOperationOutcome"}}
            });
        }
    }
}

/// An error response: the problem document, with `description`.
fn problem_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

/// The error response every operation of its kind shares, for `status`.
fn common_response(status: &str) -> Value {
    let description = match status {
        "400" => "Malformed request: a query parameter that is unknown or outside its schema, a path id \
                  that is not a UUID, JSON that does not parse, a tampered cursor or a malformed header",
        "401" => "Missing, invalid or expired access token, or a session that has ended",
        "403" => "The caller's role does not permit this",
        "404" => "No such resource in the caller's clinic",
        "409" => "A concurrent change got in the way; retry the request",
        "412" => "`If-Match` does not match the resource's current version",
        "413" => "The body is larger than the server accepts (`MAX_BODY_KB`)",
        "415" => "The body is not JSON (`Content-Type: application/json`)",
        "422" => "Invalid fields: `errors` names every one",
        "429" => "A rate limit is spent; retry after `Retry-After` seconds",
        "500" => "An internal error; quote the `request_id` when reporting it",
        "503" => "A dependency is unavailable or the request ran out of time; retry shortly",
        _ => "Error",
    };
    let mut response = problem_response(description);
    if status == "429" {
        response["headers"] = json!({
            "Retry-After": {
                "description": "Seconds to wait before retrying",
                "required": true,
                "schema": {"type": "integer", "minimum": 1}
            }
        });
    }
    response
}

/// Signed-in operations every role may call (no permission to lack: no 403), also with a
/// setup-only token (see `auth::mfa`).
const EVERY_ROLE: [&str; 1] = ["me"];

/// Routes the API-wide rate limit does not apply to (see `http::limits`).
const NOT_RATE_LIMITED: [&str; 2] = ["/api/v2/health", "/api/v2/ready"];
/// Routes that answer without any dependency, or that describe a failed dependency in a
/// body of their own.
const OWN_UNAVAILABLE: [&str; 3] = ["/api/v2/health", "/api/v2/ready", "/api/v2/startup-check"];

fn has_parameter(op: &Map<String, Value>, location: &str, name: &str) -> bool {
    op.get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|ps| {
            ps.iter().any(|p| {
                p["in"] == location
                    && p["name"]
                        .as_str()
                        .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
        })
}

fn complete_operation(path: &str, method: &str, op: &mut Map<String, Value>) {
    let secured = op
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty());
    let has_body = op.contains_key("requestBody");
    let writes = matches!(method, "post" | "put" | "patch" | "delete");
    let idempotent_create = has_parameter(op, "header", "Idempotency-Key");
    let if_match = has_parameter(op, "header", "If-Match");
    let role_checked = secured
        && !op
            .get("operationId")
            .and_then(Value::as_str)
            .is_some_and(|id| EVERY_ROLE.contains(&id));
    let responses = op
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    let Some(responses) = responses else {
        return;
    };
    // The handlers' own error responses, as problem documents.
    for (status, response) in responses.iter_mut() {
        if !status.starts_with('4') && !status.starts_with('5') {
            continue;
        }
        let Some(content) = response.get_mut("content").and_then(Value::as_object_mut) else {
            continue;
        };
        let is_problem = content
            .get("application/json")
            .is_some_and(|c| c["schema"]["$ref"] == "#/components/schemas/Problem");
        if is_problem {
            if let Some(media) = content.remove("application/json") {
                content.insert(PROBLEM_JSON.into(), media);
            }
        }
    }
    let mut wanted: Vec<&str> = vec!["400", "500"];
    if secured {
        wanted.push("401");
    }
    if role_checked {
        wanted.push("403");
    }
    if path.contains('{') {
        wanted.push("404");
    }
    if has_body {
        wanted.extend(["413", "415", "422"]);
    }
    if writes && secured {
        wanted.push("409");
    }
    if idempotent_create {
        wanted.extend(["409", "422"]);
    }
    if if_match {
        wanted.push("412");
    }
    if !NOT_RATE_LIMITED.contains(&path) {
        wanted.push("429");
    }
    if !OWN_UNAVAILABLE.contains(&path) {
        wanted.push("503");
    }
    for status in wanted {
        responses
            .entry(status)
            .or_insert_with(|| common_response(status));
    }
    // Keep the responses in status order, as a reader expects.
    let sorted: Map<String, Value> = std::mem::take(responses)
        .into_iter()
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    *responses = sorted;
}

/// A source operation, its status, and `(target operation, where the id goes)` pairs.
pub type Links = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// Where a created resource leads: `(source operation, status, [(target operation, where
/// the created id goes)])`. The id goes into the target's `path.id`, or into a field of its
/// body (`body.<field>`, merged into the body a client would send).
pub const LINKS: &[Links] = &[
    (
        "create_patient",
        "201",
        &[
            ("get_patient", "path.id"),
            ("read_patient", "path.id"),
            ("update_patient", "path.id"),
            ("archive_patient", "path.id"),
            ("get_chart", "path.id"),
            ("list_chart_entries", "path.id"),
            ("add_chart_entry", "path.id"),
            ("list_notes", "path.id"),
            ("create_note", "path.id"),
            ("list_perio_exams", "path.id"),
            ("create_perio_exam", "path.id"),
            ("book_appointment", "body.patient_id"),
            ("list_procedures", "path.id"),
            ("create_procedure", "path.id"),
            ("list_plans", "path.id"),
            ("create_plan", "path.id"),
            ("ledger", "path.id"),
            ("balance", "path.id"),
            ("create_payment", "body.patient_id"),
            ("create_invoice", "body.patient_id"),
            ("create_adjustment", "body.patient_id"),
            ("list_documents", "path.id"),
            ("upload_document", "path.id"),
            ("break_glass", "path.id"),
        ],
    ),
    (
        "upload_document",
        "201",
        &[
            ("get_document", "path.id"),
            ("get_content", "path.id"),
            ("delete_document", "path.id"),
        ],
    ),
    ("add_chart_entry", "201", &[("void_chart_entry", "path.id")]),
    (
        "create_note",
        "201",
        &[
            ("get_note", "path.id"),
            ("update_note", "path.id"),
            ("sign_note", "path.id"),
        ],
    ),
    (
        "create_operatory",
        "201",
        &[
            ("get_operatory", "path.id"),
            ("update_operatory", "path.id"),
            ("book_appointment", "body.operatory_id"),
        ],
    ),
    (
        "create_user",
        "201",
        &[
            ("get_user", "path.id"),
            ("update_user", "path.id"),
            ("get_working_hours", "path.id"),
            ("put_working_hours", "path.id"),
        ],
    ),
    (
        "book_appointment",
        "201",
        &[
            ("get_appointment", "path.id"),
            ("read_appointment", "path.id"),
            ("reschedule_appointment", "path.id"),
            ("change_status", "path.id"),
            ("appointment_history", "path.id"),
        ],
    ),
    (
        "create_code",
        "201",
        &[("get_code", "path.id"), ("update_code", "path.id")],
    ),
    (
        "create_procedure",
        "201",
        &[
            ("get_procedure", "path.id"),
            ("update_procedure", "path.id"),
            ("complete_procedure", "path.id"),
            ("reverse_procedure", "path.id"),
        ],
    ),
    (
        "complete_procedure",
        "200",
        &[("reverse_procedure", "path.id")],
    ),
    (
        "create_plan",
        "201",
        &[
            ("get_plan", "path.id"),
            ("update_plan", "path.id"),
            ("present_plan", "path.id"),
        ],
    ),
    (
        "present_plan",
        "200",
        &[
            ("accept_plan", "path.id"),
            ("decline_plan", "path.id"),
            ("revise_plan", "path.id"),
        ],
    ),
    (
        "create_recall_type",
        "201",
        &[("update_recall_type", "path.id")],
    ),
    (
        "create_payment",
        "201",
        &[("get_payment", "path.id"), ("refund_payment", "path.id")],
    ),
    (
        "create_invoice",
        "201",
        &[
            ("get_invoice", "path.id"),
            ("void_invoice", "path.id"),
            ("apply_credit", "path.id"),
        ],
    ),
];

/// OpenAPI links from [`LINKS`], named after their targets.
fn add_links(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for op in item.values_mut() {
            let Some(id) = op["operationId"].as_str().map(str::to_owned) else {
                continue;
            };
            for (source, status, targets) in LINKS {
                if *source != id {
                    continue;
                }
                let Some(response) = op
                    .pointer_mut(&format!("/responses/{status}"))
                    .and_then(Value::as_object_mut)
                else {
                    continue;
                };
                let mut links = Map::new();
                for (target, place) in *targets {
                    let mut link = json!({"operationId": target});
                    match place.split_once('.') {
                        Some(("body", field)) => {
                            link["requestBody"] = json!({ field: "$response.body#/id" });
                        }
                        _ => link["parameters"] = json!({ *place: "$response.body#/id" }),
                    }
                    links.insert(link_name(target), link);
                }
                response.insert("links".into(), Value::Object(links));
            }
        }
    }
}

/// `get_patient` → `GetPatient`.
fn link_name(operation: &str) -> String {
    operation
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The `Location` of every 201, and the `ETag` header of a 200 or 201 whose body is a
/// versioned resource.
fn add_etags(op: &mut Map<String, Value>, versioned: &[String]) {
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(created) = responses.get_mut("201").and_then(Value::as_object_mut) {
        if let Some(Value::Object(headers)) =
            Some(created.entry("headers").or_insert_with(|| json!({})))
        {
            headers.insert(
                "Location".into(),
                json!({
                    "description": "Where the created resource is, as an absolute path",
                    "required": true,
                    "schema": {"type": "string", "pattern": "^/api/v2/"}
                }),
            );
        }
    }
    for status in ["200", "201"] {
        let Some(response) = responses.get_mut(status) else {
            continue;
        };
        let is_versioned = response
            .pointer("/content/application~1json/schema/$ref")
            .and_then(Value::as_str)
            .is_some_and(|r| versioned.iter().any(|v| v == r));
        if !is_versioned {
            continue;
        }
        let headers = response
            .as_object_mut()
            .map(|r| r.entry("headers").or_insert_with(|| json!({})));
        if let Some(Value::Object(headers)) = headers {
            headers.insert(
                "ETag".into(),
                json!({
                    "description": "The resource's version as a strong entity tag, for `If-Match`",
                    "required": true,
                    "schema": {"type": "string", "pattern": "^\"[0-9]+\"$"}
                }),
            );
        }
    }
}

/// The limits the configuration sets.
fn apply_settings(op: &mut Map<String, Value>, settings: DocSettings) {
    if op.get("operationId").and_then(Value::as_str) != Some("availability") {
        return;
    }
    if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
        for p in params {
            if p["name"] == "duration_minutes" {
                p["schema"]["maximum"] = json!(settings.appointment_max_minutes);
            }
        }
    }
}

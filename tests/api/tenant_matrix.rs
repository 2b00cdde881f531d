//! The cross-tenant matrix, generated from the OpenAPI document the server serves.
//!
//! Two clinics, A and B, each with an owner, a dentist and one resource of every kind.
//! For every operation whose path names an id, A calls it with B's id there: the answer
//! must be 404 (never 2xx, never 403). For every id in a request body (a property ending
//! in `_id`/`_ids`, an `id` in a nested object, or any `uuid` property), A sends an
//! otherwise valid body, built from the schema, with B's id in that property alone: the
//! answer must be 422 naming the property. Ids in query parameters may filter (an empty
//! answer) or be refused, but never leak B's data nor answer 403. Afterwards B's data,
//! re-read by B, must be as it was.
//!
//! Ids are matched to their kind by one table ([`ID_NAMES`]): the path segment before a
//! placeholder (`/patients/{id}` → patient) or the property's name without `_id`. An id the
//! table does not know fails the test, so a new route is covered as soon as its kind is
//! named there.

use std::collections::{BTreeMap, HashMap};

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

/// What an id names, by path segment (plural) or property name (without `_id`/`_ids`).
const ID_NAMES: &[(&str, Kind)] = &[
    ("patients", Kind::Patient),
    ("patient", Kind::Patient),
    ("responsible_party", Kind::Patient),
    ("users", Kind::User),
    ("user", Kind::User),
    ("providers", Kind::User),
    ("provider", Kind::User),
    ("preferred_provider", Kind::User),
    ("care_team", Kind::User),
    ("operatories", Kind::Operatory),
    ("operatory", Kind::Operatory),
    ("appointments", Kind::Appointment),
    ("appointment", Kind::Appointment),
    ("notes", Kind::Note),
    ("note", Kind::Note),
    ("addendum_to", Kind::Note),
    ("chart-entries", Kind::ChartEntry),
    ("chart_entry", Kind::ChartEntry),
    ("perio-exams", Kind::PerioExam),
    ("perio_exam", Kind::PerioExam),
    ("procedure-codes", Kind::ProcedureCode),
    ("procedure_code", Kind::ProcedureCode),
    ("trigger_procedure_code", Kind::ProcedureCode),
    ("procedures", Kind::Procedure),
    ("procedure", Kind::Procedure),
    ("treatment-plans", Kind::TreatmentPlan),
    ("treatment_plan", Kind::TreatmentPlan),
    ("items", Kind::PlanItem),
    ("item", Kind::PlanItem),
    ("recall-types", Kind::RecallType),
    ("recall_type", Kind::RecallType),
    ("payments", Kind::Payment),
    ("payment", Kind::Payment),
    ("invoices", Kind::Invoice),
    ("invoice", Kind::Invoice),
    ("documents", Kind::Document),
    ("document", Kind::Document),
    ("sessions", Kind::Session),
    ("subscriptions", Kind::WebhookSubscription),
    // The FHIR view's resource types.
    ("Patient", Kind::Patient),
    ("Practitioner", Kind::User),
    ("Appointment", Kind::Appointment),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Patient,
    User,
    Operatory,
    Appointment,
    Note,
    ChartEntry,
    PerioExam,
    ProcedureCode,
    Procedure,
    TreatmentPlan,
    /// A plan presented to the patient: the one `accept` is called on, so that the ids in
    /// its body are checked (a draft plan is a 409 before that).
    PresentedPlan,
    PlanItem,
    RecallType,
    Payment,
    Invoice,
    Document,
    /// A sign-in of the clinic's owner.
    Session,
    WebhookSubscription,
}

/// The fixture an operation works on for `kind`: the presented plan for acceptance, the
/// draft plan (which is edited and presented) everywhere else.
fn fixture_kind(template: &str, kind: Kind) -> Kind {
    match kind {
        Kind::TreatmentPlan if template.ends_with("/accept") => Kind::PresentedPlan,
        other => other,
    }
}

fn kind_of(name: &str) -> Option<Kind> {
    ID_NAMES.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

/// Values for properties and parameters whose schema alone does not give a valid one,
/// or that must fit the fixtures (a free slot in A's dentist's hours).
fn hint(name: &str) -> Option<Value> {
    Some(match name {
        "tooth" => json!("36"),
        "condition" => json!("missing"),
        "status" => json!("confirmed"),
        "start" => json!("09:00"),
        "end" => json!("17:00"),
        "weekday" => json!(1),
        "start_at" => json!(SLOT.0),
        "end_at" => json!(SLOT.1),
        "date" => json!("2030-01-08"),
        "date_of_birth" => json!("1990-01-01"),
        "duration_minutes" => json!(30),
        "probing_depth" => json!(3),
        "numbering" => json!("fdi"),
        _ => return None,
    })
}

/// A free slot in A's dentist's hours (a Tuesday morning in Berlin).
const SLOT: (&str, &str) = ("2030-01-08T10:00:00Z", "2030-01-08T10:30:00Z");

struct Clinic {
    owner: Registered,
    dentist: Registered,
    ids: HashMap<Kind, String>,
}

async fn created(res: reqwest::Response, what: &str) -> String {
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::CREATED, "create {what}: {body}");
    body["id"].as_str().expect("an id").to_owned()
}

/// A clinic with one resource of every kind.
async fn clinic(app: &TestApp, name: &str) -> Clinic {
    let owner = app.register_clinic(name).await;
    let dentist = app.staff(&owner.access, "dentist").await;
    let (o, d) = (Some(owner.access.as_str()), Some(dentist.access.as_str()));
    let patient = app.patient(&owner.access, "Pat", name).await;
    let operatory = created(
        app.post("/api/v2/operatories", o, json!({"name": "Chair"}))
            .await,
        "operatory",
    )
    .await;
    let weekly: Vec<Value> = (1..=7)
        .map(|d| json!({"weekday": d, "start": "07:00", "end": "20:00"}))
        .collect();
    let res = app
        .call(
            Method::PUT,
            &format!("/api/v2/providers/{}/working-hours", dentist.user_id),
            o,
            Some(json!({"weekly": weekly})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK, "working hours");
    let appointment = created(
        app.post(
            "/api/v2/appointments",
            o,
            json!({"patient_id": patient, "provider_id": dentist.user_id, "operatory_id": operatory,
                   "start_at": "2030-01-07T09:00:00Z", "end_at": "2030-01-07T09:30:00Z"}),
        )
        .await,
        "appointment",
    )
    .await;
    let note = created(
        app.post(
            &format!("/api/v2/patients/{patient}/notes"),
            d,
            json!({"body": format!("{name}: note")}),
        )
        .await,
        "note",
    )
    .await;
    let chart_entry = created(
        app.post(
            &format!("/api/v2/patients/{patient}/chart/entries"),
            d,
            json!({"tooth": "36", "surfaces": ["O"], "condition": "caries"}),
        )
        .await,
        "chart entry",
    )
    .await;
    let perio_exam = created(
        app.post(
            &format!("/api/v2/patients/{patient}/perio-exams"),
            d,
            json!({"teeth": [{"tooth": "16", "sites": [{"site": "MB", "probing_depth": 4, "bleeding": true}]}]}),
        )
        .await,
        "perio exam",
    )
    .await;
    // A code of the whole mouth, so that a body with only the required fields is valid.
    let code = created(
        app.post(
            "/api/v2/procedure-codes",
            o,
            json!({"code": "EXAM", "description": format!("{name}: exam"), "fee_cents": 4500}),
        )
        .await,
        "procedure code",
    )
    .await;
    let procedure = created(
        app.post(
            &format!("/api/v2/patients/{patient}/procedures"),
            d,
            json!({"procedure_code_id": code}),
        )
        .await,
        "procedure",
    )
    .await;
    let plan_body =
        json!({"title": format!("{name}: plan"), "items": [{"procedure_id": procedure}]});
    let res = app
        .post(
            &format!("/api/v2/patients/{patient}/treatment-plans"),
            d,
            plan_body.clone(),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED, "treatment plan");
    let plan: Value = res.json().await.expect("plan");
    let presented = created(
        app.post(
            &format!("/api/v2/patients/{patient}/treatment-plans"),
            d,
            plan_body,
        )
        .await,
        "treatment plan",
    )
    .await;
    let res = app
        .post(
            &format!("/api/v2/treatment-plans/{presented}/present"),
            d,
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK, "present");
    let recall_type = created(
        app.post(
            "/api/v2/recall-types",
            o,
            json!({"name": "Check-up", "interval_months": 6, "trigger_procedure_code_ids": [code]}),
        )
        .await,
        "recall type",
    )
    .await;
    // A completed procedure billed on an invoice, and a payment that pays part of it.
    let billed = created(
        app.post(
            &format!("/api/v2/patients/{patient}/procedures"),
            d,
            json!({"procedure_code_id": code}),
        )
        .await,
        "procedure to bill",
    )
    .await;
    let res = app
        .post(
            &format!("/api/v2/procedures/{billed}/complete"),
            d,
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK, "complete");
    let invoice = created(
        app.post("/api/v2/invoices", o, json!({"patient_id": patient}))
            .await,
        "invoice",
    )
    .await;
    let payment = created(
        app.client
            .post(app.url("/api/v2/payments"))
            .bearer_auth(&owner.access)
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(
                &json!({"patient_id": patient, "amount_cents": 5000, "method": "card",
                          "allocations": [{"invoice_id": invoice, "amount_cents": 1000}]}),
            )
            .send()
            .await
            .expect("payment"),
        "payment",
    )
    .await;
    let document = created(
        app.client
            .post(app.url(&format!("/api/v2/patients/{patient}/documents")))
            .bearer_auth(&owner.access)
            .multipart(
                reqwest::multipart::Form::new()
                    .text("kind", "xray")
                    .text("title", "Panoramic")
                    .part(
                        "file",
                        reqwest::multipart::Part::bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec()),
                    ),
            )
            .send()
            .await
            .expect("document"),
        "document",
    )
    .await;
    let sessions: Value = app
        .get("/api/v2/auth/sessions", o)
        .await
        .json()
        .await
        .expect("sessions");
    let session = sessions["items"][0]["id"]
        .as_str()
        .expect("a session")
        .to_owned();
    // Inactive, at a public address literal (nothing is resolved or sent).
    let subscription = created(
        app.post(
            "/api/v2/webhooks/subscriptions",
            o,
            json!({"url": "https://93.184.215.14/hook", "events": ["patient.*"], "active": false}),
        )
        .await,
        "webhook subscription",
    )
    .await;
    let ids = HashMap::from([
        (Kind::WebhookSubscription, subscription),
        (Kind::Session, session),
        (Kind::Document, document),
        (Kind::Patient, patient),
        (Kind::Invoice, invoice),
        (Kind::Payment, payment),
        (Kind::ProcedureCode, code),
        (Kind::Procedure, procedure),
        (
            Kind::TreatmentPlan,
            plan["id"].as_str().expect("plan id").to_owned(),
        ),
        (Kind::PresentedPlan, presented),
        (
            Kind::PlanItem,
            plan["items"][0]["id"].as_str().expect("item id").to_owned(),
        ),
        (Kind::RecallType, recall_type),
        (Kind::User, dentist.user_id.clone()),
        (Kind::Operatory, operatory),
        (Kind::Appointment, appointment),
        (Kind::Note, note),
        (Kind::ChartEntry, chart_entry),
        (Kind::PerioExam, perio_exam),
    ]);
    Clinic {
        owner,
        dentist,
        ids,
    }
}

/// The OpenAPI document, with `$ref`s followed.
struct Doc(Value);

impl Doc {
    fn resolve<'a>(&'a self, mut s: &'a Value) -> &'a Value {
        for _ in 0..16 {
            match s.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    s = self
                        .0
                        .pointer(r.trim_start_matches('#'))
                        .unwrap_or(&Value::Null)
                }
                None => break,
            }
        }
        s
    }

    /// The schema itself, or its first alternative that is not `null`.
    fn concrete<'a>(&'a self, s: &'a Value) -> &'a Value {
        let s = self.resolve(s);
        for key in ["oneOf", "anyOf", "allOf"] {
            if let Some(alts) = s.get(key).and_then(Value::as_array) {
                if let Some(alt) = alts
                    .iter()
                    .map(|a| self.concrete(a))
                    .find(|a| a.get("type") != Some(&json!("null")))
                {
                    return alt;
                }
            }
        }
        s
    }
}

/// The schema's type other than `null`.
fn type_of(s: &Value) -> &str {
    match s.get("type") {
        Some(Value::String(t)) => t,
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if s.get("properties").is_some() => "object",
        _ if s.get("enum").is_some() => "string",
        _ => "",
    }
}

fn nullable(s: &Value) -> bool {
    matches!(s.get("type"), Some(Value::Array(ts)) if ts.contains(&json!("null")))
        || s.get("oneOf")
            .and_then(Value::as_array)
            .is_some_and(|alts| alts.iter().any(|a| a.get("type") == Some(&json!("null"))))
}

/// One step into a body: a property, or the first item of an array.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Item,
}

fn field_name(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Item => out.push_str("[0]"),
        }
    }
    out
}

/// An id in a request body: where it is, what it names, and whether it is a list.
#[derive(Debug, Clone)]
struct BodyId {
    path: Vec<Step>,
    kind: Kind,
    list: bool,
}

/// Whether a property or parameter holds ids, and the name its kind is looked up by.
fn id_stem<'a>(name: &'a str, parent: &'a str, schema: &Value) -> Option<&'a str> {
    let uuid = |s: &Value| s.get("format") == Some(&json!("uuid"));
    let items_uuid = schema.get("items").is_some_and(uuid);
    if let Some(stem) = name.strip_suffix("_ids") {
        return Some(stem);
    }
    if let Some(stem) = name.strip_suffix("_id") {
        return Some(stem);
    }
    if name == "id" {
        return Some(parent);
    }
    (uuid(schema) || items_uuid).then_some(name)
}

impl Doc {
    /// Every id a body of `schema` can carry; unknown kinds are added to `unmapped`.
    fn body_ids(
        &self,
        schema: &Value,
        path: &mut Vec<Step>,
        parent: &str,
        found: &mut Vec<BodyId>,
        unmapped: &mut Vec<String>,
        depth: usize,
    ) {
        if depth > 8 {
            return;
        }
        let s = self.concrete(schema);
        match type_of(s) {
            "object" => {
                let props = s.get("properties").and_then(Value::as_object);
                for (name, prop) in props.into_iter().flatten() {
                    let p = self.concrete(prop);
                    path.push(Step::Key(name.clone()));
                    if let Some(stem) = id_stem(name, parent, p) {
                        match kind_of(stem) {
                            Some(kind) => found.push(BodyId {
                                path: path.clone(),
                                kind,
                                list: type_of(p) == "array",
                            }),
                            None => unmapped.push(format!("body property {}", field_name(path))),
                        }
                    } else {
                        self.body_ids(p, path, name, found, unmapped, depth + 1);
                    }
                    path.pop();
                }
            }
            "array" => {
                if let Some(items) = s.get("items") {
                    path.push(Step::Item);
                    self.body_ids(items, path, parent, found, unmapped, depth + 1);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    /// A valid value for `schema`: its required properties filled, plus the one on
    /// `force` (set to `leaf` at its end). Ids come from `ids`.
    fn build(
        &self,
        schema: &Value,
        name: &str,
        parent: &str,
        force: &[Step],
        leaf: &Value,
        ids: &HashMap<Kind, String>,
    ) -> Result<Value, String> {
        if force.is_empty() && !leaf.is_null() {
            return Ok(leaf.clone());
        }
        let raw = self.resolve(schema);
        let s = self.concrete(schema);
        if force.is_empty() {
            // The fixtures' own values first (a slot in A's hours), then the examples.
            if let Some(v) = hint(name) {
                return Ok(v);
            }
            let examples = [raw.get("example"), s.get("example")];
            for example in examples.into_iter().flatten() {
                if id_stem(name, parent, s).is_none() {
                    return Ok(example.clone());
                }
            }
            if let Some(first) = s
                .get("enum")
                .and_then(Value::as_array)
                .and_then(|e| e.first())
            {
                return Ok(first.clone());
            }
            if let Some(stem) = id_stem(name, parent, s) {
                let kind = kind_of(stem).ok_or_else(|| format!("no kind for {name}"))?;
                let id = ids
                    .get(&kind)
                    .ok_or_else(|| format!("no {kind:?} fixture"))?;
                return Ok(if type_of(s) == "array" {
                    json!([id])
                } else {
                    json!(id)
                });
            }
        }
        Ok(match type_of(s) {
            "object" => {
                let mut out = Map::new();
                let required: Vec<&str> = s
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let props = s.get("properties").and_then(Value::as_object);
                for (key, prop) in props.into_iter().flatten() {
                    let forced = matches!(force.first(), Some(Step::Key(k)) if k == key);
                    if forced {
                        out.insert(
                            key.clone(),
                            self.build(prop, key, name, &force[1..], leaf, ids)?,
                        );
                    } else if required.contains(&key.as_str()) {
                        out.insert(
                            key.clone(),
                            self.build(prop, key, name, &[], &Value::Null, ids)?,
                        );
                    }
                }
                Value::Object(out)
            }
            "array" => {
                let items = s.get("items").cloned().unwrap_or(json!({}));
                let rest = match force.first() {
                    Some(Step::Item) => &force[1..],
                    _ => &[],
                };
                json!([self.build(&items, name, parent, rest, leaf, ids)?])
            }
            "string" => match s.get("format").and_then(Value::as_str) {
                Some("date") => json!("2030-01-08"),
                Some("date-time") => json!(SLOT.0),
                _ => json!(format!("Matrix {name}")),
            },
            "integer" => json!(s.get("minimum").and_then(Value::as_i64).unwrap_or(1).max(1)),
            "number" => json!(1.0),
            "boolean" => json!(false),
            other => return Err(format!("cannot build {name}: type {other:?}")),
        })
    }
}

/// One operation of the document.
struct Operation {
    method: Method,
    template: String,
    /// Path placeholders: name, and its kind when it is an id (`None`: a number or text).
    placeholders: Vec<(String, Option<Kind>, Value)>,
    /// Query parameters: name, schema, whether required, and its kind when it is an id.
    query: Vec<(String, Value, bool, Option<Kind>)>,
    body: Option<Value>,
    /// Whether the operation requires an `Idempotency-Key` (payments and refunds): a fresh
    /// one is sent, so that the request gets as far as its ids.
    needs_key: bool,
}

impl Operation {
    fn label(&self) -> String {
        format!("{} {}", self.method, self.template)
    }
}

fn operations(doc: &Doc, unmapped: &mut Vec<String>) -> Vec<Operation> {
    let mut out = Vec::new();
    let paths = doc.0["paths"].as_object().cloned().unwrap_or_default();
    for (template, item) in paths {
        for (m, op) in item.as_object().into_iter().flatten() {
            let Ok(method) = m.to_uppercase().parse::<Method>() else {
                continue;
            };
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                continue;
            }
            let segments: Vec<&str> = template.split('/').collect();
            let mut placeholders = Vec::new();
            let mut query = Vec::new();
            let mut needs_key = false;
            let params = op
                .get("parameters")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for p in &params {
                let p = doc.resolve(p);
                let name = p["name"].as_str().unwrap_or_default().to_owned();
                let schema = doc.concrete(&p["schema"]).clone();
                let where_ = p["in"].as_str().unwrap_or_default();
                let at = segments.iter().position(|s| *s == format!("{{{name}}}"));
                match (where_, at) {
                    ("header", _) => {
                        needs_key |= name.eq_ignore_ascii_case("idempotency-key")
                            && p["required"].as_bool().unwrap_or(false);
                    }
                    ("cookie", _) => {}
                    (_, Some(i)) => {
                        // An id, named by the segment before it.
                        let is_id = schema.get("format") == Some(&json!("uuid"))
                            || name == "id"
                            || name.ends_with("_id");
                        let kind = if is_id {
                            let segment = if i > 0 { segments[i - 1] } else { "" };
                            let kind = kind_of(segment)
                                .or_else(|| name.strip_suffix("_id").and_then(kind_of));
                            if kind.is_none() {
                                unmapped.push(format!(
                                    "{} {template}: path {{{name}}} after /{segment}",
                                    method
                                ));
                            }
                            kind
                        } else {
                            None
                        };
                        placeholders.push((name, kind, schema));
                    }
                    _ => {
                        // A query parameter (the document may also list one as in: path).
                        let required = p["required"].as_bool().unwrap_or(false)
                            && !nullable(doc.resolve(&p["schema"]));
                        let kind = id_stem(&name, "", &schema).and_then(|stem| {
                            let kind = kind_of(stem);
                            if kind.is_none() {
                                unmapped.push(format!("{} {template}: query {name}", method));
                            }
                            kind
                        });
                        query.push((name, schema, required, kind));
                    }
                }
            }
            let body = op
                .pointer("/requestBody/content/application~1json/schema")
                .cloned();
            out.push(Operation {
                method,
                template: template.clone(),
                placeholders,
                query,
                body,
                needs_key,
            });
        }
    }
    out
}

struct Outcome {
    status: StatusCode,
    body: Value,
    role: &'static str,
}

/// Calls an operation as A's owner and, when the owner's role is refused (403), as A's
/// dentist; with a fresh `Idempotency-Key` where the operation requires one.
async fn call_as_a(
    app: &TestApp,
    a: &Clinic,
    op: &Operation,
    path: &str,
    body: Option<&Value>,
) -> Outcome {
    let mut last = None;
    for (role, token) in [("owner", &a.owner.access), ("dentist", &a.dentist.access)] {
        let mut req = app.client.request(op.method.clone(), app.url(path));
        req = req.bearer_auth(token);
        if op.needs_key {
            req = req.header("Idempotency-Key", uuid::Uuid::new_v4().to_string());
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.expect("request reaches the server");
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        let outcome = Outcome { status, body, role };
        if status != StatusCode::FORBIDDEN {
            return outcome;
        }
        last = Some(outcome);
    }
    last.expect("two tries")
}

/// The path with placeholders filled: `ids` for ids (B's at `foreign`), else a value.
fn fill_path(
    doc: &Doc,
    op: &Operation,
    a: &HashMap<Kind, String>,
    foreign: Option<(&str, &str)>,
) -> Result<String, String> {
    let mut path = op.template.clone();
    for (name, kind, schema) in &op.placeholders {
        let value = match (foreign, kind) {
            (Some((n, id)), _) if n == name => id.to_owned(),
            (_, Some(kind)) => a
                .get(&fixture_kind(&op.template, *kind))
                .cloned()
                .ok_or_else(|| format!("no {kind:?} fixture"))?,
            (_, None) => match doc.build(schema, name, "", &[], &Value::Null, a)? {
                Value::String(s) => s,
                other => other.to_string(),
            },
        };
        path = path.replace(&format!("{{{name}}}"), &value);
    }
    Ok(path)
}

/// The required query parameters (and `extra`), as a query string.
fn fill_query(
    doc: &Doc,
    op: &Operation,
    a: &HashMap<Kind, String>,
    extra: Option<(&str, &str)>,
) -> Result<String, String> {
    let mut pairs = Vec::new();
    for (name, schema, required, _) in &op.query {
        if let Some((n, v)) = extra.filter(|(n, _)| n == name) {
            pairs.push(format!("{n}={v}"));
        } else if *required {
            let v = match doc.build(schema, name, "", &[], &Value::Null, a)? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            pairs.push(format!("{name}={v}"));
        }
    }
    Ok(if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    })
}

/// What B reads back through every operation that reads one of its resources by id.
async fn snapshot(
    app: &TestApp,
    doc: &Doc,
    ops: &[Operation],
    b: &Clinic,
) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for op in ops.iter().filter(|o| o.method == Method::GET) {
        if op.placeholders.is_empty() || op.placeholders.iter().any(|p| p.1.is_none()) {
            continue;
        }
        let (Ok(path), Ok(query)) = (
            fill_path(doc, op, &b.ids, None),
            fill_query(doc, op, &b.ids, None),
        ) else {
            continue;
        };
        let mut read = Value::Null;
        for token in [&b.owner.access, &b.dentist.access] {
            let res = app.get(&format!("{path}{query}"), Some(token)).await;
            let status = res.status();
            read = json!({"status": status.as_u16(), "body": res.json::<Value>().await.unwrap_or(Value::Null)});
            if status != StatusCode::FORBIDDEN {
                break;
            }
        }
        out.insert(op.label(), read);
    }
    out
}

fn names_field(body: &Value, field: &str) -> bool {
    body["errors"].as_array().is_some_and(|errors| {
        errors.iter().any(|e| {
            let f = e["field"].as_str().unwrap_or_default();
            f == field || f.starts_with(&format!("{field}[")) || f.starts_with(&format!("{field}."))
        })
    })
}

#[tokio::test]
async fn another_clinics_ids_are_404_in_paths_and_422_in_bodies() {
    // Card payments on, so that their routes reach the ids they are sent.
    let stripe = crate::stripe_fake::FakeStripe::start().await;
    let app = spawn_with(|v| {
        stripe.configure(v);
        v.insert("RATE_LIMIT_PER_MINUTE".into(), "100000".into());
        v.insert("RATE_LIMIT_CLINIC_PER_MINUTE".into(), "100000".into());
    })
    .await;
    let a = clinic(&app, "Alpha").await;
    let b = clinic(&app, "Beta").await;
    let doc = Doc(app
        .get("/api/v2/openapi.json", None)
        .await
        .json()
        .await
        .expect("the document"));
    let mut unmapped = Vec::new();
    let ops = operations(&doc, &mut unmapped);
    let before = snapshot(&app, &doc, &ops, &b).await;
    assert!(
        before.values().all(|r| r["status"] == json!(200)),
        "B reads its own resources: {before:#?}"
    );

    let mut failures: Vec<String> = Vec::new();
    let mut coverage: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for op in &ops {
        // Ids in the path: B's id in one placeholder at a time, everything else A's.
        for (name, kind, _) in op.placeholders.iter().filter(|p| p.1.is_some()) {
            let kind = kind.expect("filtered");
            let case = format!("{} with B's {kind:?} in {{{name}}}", op.label());
            let built = (|| -> Result<(String, Option<Value>), String> {
                let path = fill_path(&doc, op, &a.ids, Some((name, &b.ids[&kind])))?;
                let query = fill_query(&doc, op, &a.ids, None)?;
                let body = match &op.body {
                    Some(s) => Some(doc.build(s, "", "", &[], &Value::Null, &a.ids)?),
                    None => None,
                };
                Ok((format!("{path}{query}"), body))
            })();
            let (path, body) = match built {
                Ok(x) => x,
                Err(e) => {
                    failures.push(format!("{case}: cannot build the request: {e}"));
                    continue;
                }
            };
            // A path that no route serves is also a 404: the path must route (another
            // method on it is a 405).
            let probe = app
                .call(Method::TRACE, &path, Some(&a.owner.access), None)
                .await
                .status();
            if probe != StatusCode::METHOD_NOT_ALLOWED {
                failures.push(format!("{case}: {path} does not route ({probe} to TRACE)"));
                continue;
            }
            let out = call_as_a(&app, &a, op, &path, body.as_ref()).await;
            coverage
                .entry(format!("path {kind:?}"))
                .or_default()
                .push(format!("{} ({})", op.label(), out.role));
            if out.status != StatusCode::NOT_FOUND {
                failures.push(format!(
                    "{case}: {} as {} (want 404): {}",
                    out.status, out.role, out.body
                ));
            }
        }

        // Ids in the query: a filter may come back empty, or the id be refused, but B's
        // data never shows and the answer is never 403.
        for (name, _, _, kind) in op.query.iter().filter(|q| q.3.is_some()) {
            let kind = kind.expect("filtered");
            let foreign = &b.ids[&kind];
            let case = format!("{} with B's {kind:?} in ?{name}", op.label());
            let built = fill_path(&doc, op, &a.ids, None).and_then(|p| {
                Ok(format!(
                    "{p}{}",
                    fill_query(&doc, op, &a.ids, Some((name, foreign)))?
                ))
            });
            let path = match built {
                Ok(p) => p,
                Err(e) => {
                    failures.push(format!("{case}: cannot build the request: {e}"));
                    continue;
                }
            };
            let out = call_as_a(&app, &a, op, &path, None).await;
            coverage
                .entry(format!("query {kind:?}"))
                .or_default()
                .push(format!(
                    "{} ?{name} ({}: {})",
                    op.label(),
                    out.role,
                    out.status.as_u16()
                ));
            let text = out.body.to_string();
            let leaked = b.ids.values().find(|id| text.contains(id.as_str()));
            let ok = match out.status {
                s if s.is_success() => leaked.is_none(),
                StatusCode::NOT_FOUND => true,
                StatusCode::UNPROCESSABLE_ENTITY => names_field(&out.body, name),
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "{case}: {} as {}{}: {}",
                    out.status,
                    out.role,
                    leaked
                        .map(|id| format!(", shows B's {id}"))
                        .unwrap_or_default(),
                    out.body
                ));
            }
        }

        // Ids in the body: B's id in one property at a time, the rest of the body valid.
        let Some(schema) = &op.body else { continue };
        let mut found = Vec::new();
        doc.body_ids(schema, &mut Vec::new(), "", &mut found, &mut unmapped, 0);
        for id in found {
            let field = field_name(&id.path);
            let case = format!("{} with B's {:?} in body {field}", op.label(), id.kind);
            let foreign = &b.ids[&id.kind];
            let leaf = if id.list {
                json!([foreign])
            } else {
                json!(foreign)
            };
            let built = (|| -> Result<(String, Value), String> {
                let path = fill_path(&doc, op, &a.ids, None)?;
                let query = fill_query(&doc, op, &a.ids, None)?;
                Ok((
                    format!("{path}{query}"),
                    doc.build(schema, "", "", &id.path, &leaf, &a.ids)?,
                ))
            })();
            let (path, body) = match built {
                Ok(x) => x,
                Err(e) => {
                    failures.push(format!("{case}: cannot build the request: {e}"));
                    continue;
                }
            };
            let out = call_as_a(&app, &a, op, &path, Some(&body)).await;
            coverage
                .entry(format!("body {:?}", id.kind))
                .or_default()
                .push(format!("{} {field} ({})", op.label(), out.role));
            if out.status != StatusCode::UNPROCESSABLE_ENTITY || !names_field(&out.body, &field) {
                failures.push(format!(
                    "{case}: {} as {} (want 422 naming {field}); sent {body}; got {}",
                    out.status, out.role, out.body
                ));
            }
        }
    }

    let after = snapshot(&app, &doc, &ops, &b).await;
    for (label, was) in &before {
        if after.get(label) != Some(was) {
            failures.push(format!(
                "B's data changed: {label} read {was} before and {} after",
                after.get(label).unwrap_or(&Value::Null)
            ));
        }
    }

    for (what, ops) in &coverage {
        eprintln!("{what}: {} operation(s)", ops.len());
        for op in ops {
            eprintln!("    {op}");
        }
    }
    for u in unmapped {
        failures.push(format!(
            "an id the matrix cannot map to a kind (name it in ID_NAMES, with a fixture): {u}"
        ));
    }
    assert!(
        !coverage.is_empty() && coverage.keys().any(|k| k.starts_with("body")),
        "the matrix checked nothing"
    );
    assert!(
        failures.is_empty(),
        "{} cross-tenant failure(s):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

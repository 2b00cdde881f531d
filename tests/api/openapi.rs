//! The OpenAPI document and the router agree: every documented operation is served,
//! no other method on a documented path is, and every endpoint of the contract that the
//! document does not list is not served either.

use std::collections::BTreeSet;

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Every endpoint of the REST contract (API.md), implemented or still to come.
const CONTRACT: &[(&str, &str)] = &[
    ("GET", "/api/v2/health"),
    ("GET", "/api/v2/ready"),
    ("GET", "/api/v2/startup-check"),
    ("POST", "/api/v2/auth/register-clinic"),
    ("POST", "/api/v2/auth/login"),
    ("POST", "/api/v2/auth/refresh"),
    ("POST", "/api/v2/auth/logout"),
    ("GET", "/api/v2/auth/me"),
    ("POST", "/api/v2/auth/change-password"),
    ("GET", "/api/v2/clinic"),
    ("PATCH", "/api/v2/clinic"),
    ("GET", "/api/v2/users"),
    ("POST", "/api/v2/users"),
    ("GET", "/api/v2/users/{id}"),
    ("PATCH", "/api/v2/users/{id}"),
    ("GET", "/api/v2/patients"),
    ("POST", "/api/v2/patients"),
    ("GET", "/api/v2/patients/{id}"),
    ("PATCH", "/api/v2/patients/{id}"),
    ("DELETE", "/api/v2/patients/{id}"),
    ("GET", "/api/v2/patients/{id}/chart"),
    ("POST", "/api/v2/patients/{id}/chart/entries"),
    ("POST", "/api/v2/chart-entries/{id}/void"),
    ("GET", "/api/v2/patients/{id}/notes"),
    ("POST", "/api/v2/patients/{id}/notes"),
    ("PATCH", "/api/v2/notes/{id}"),
    ("POST", "/api/v2/notes/{id}/sign"),
    ("GET", "/api/v2/patients/{id}/perio-exams"),
    ("POST", "/api/v2/patients/{id}/perio-exams"),
    ("GET", "/api/v2/operatories"),
    ("POST", "/api/v2/operatories"),
    ("PATCH", "/api/v2/operatories/{id}"),
    ("GET", "/api/v2/providers"),
    ("GET", "/api/v2/providers/{id}/working-hours"),
    ("PUT", "/api/v2/providers/{id}/working-hours"),
    ("GET", "/api/v2/appointments"),
    ("POST", "/api/v2/appointments"),
    ("GET", "/api/v2/appointments/{id}"),
    ("PATCH", "/api/v2/appointments/{id}"),
    ("POST", "/api/v2/appointments/{id}/status"),
    ("GET", "/api/v2/appointments/{id}/history"),
    ("GET", "/api/v2/availability"),
    ("GET", "/api/v2/audit-events"),
    ("GET", "/api/v2/procedure-codes"),
    ("POST", "/api/v2/procedure-codes"),
    ("PATCH", "/api/v2/procedure-codes/{id}"),
    ("POST", "/api/v2/procedure-codes/import"),
    ("GET", "/api/v2/patients/{id}/procedures"),
    ("POST", "/api/v2/patients/{id}/procedures"),
    ("POST", "/api/v2/procedures/{id}/complete"),
    ("GET", "/api/v2/patients/{id}/treatment-plans"),
    ("POST", "/api/v2/patients/{id}/treatment-plans"),
    ("POST", "/api/v2/treatment-plans/{id}/present"),
    ("POST", "/api/v2/treatment-plans/{id}/accept"),
    ("POST", "/api/v2/treatment-plans/{id}/decline"),
    ("GET", "/api/v2/patients/{id}/ledger"),
    ("GET", "/api/v2/patients/{id}/balance"),
    ("POST", "/api/v2/payments"),
    ("POST", "/api/v2/payments/stripe-intents"),
    ("POST", "/api/v2/webhooks/stripe"),
    ("GET", "/api/v2/invoices"),
    ("POST", "/api/v2/invoices"),
    ("GET", "/api/v2/invoices/{id}"),
    ("GET", "/api/v2/patients/{id}/documents"),
    ("POST", "/api/v2/patients/{id}/documents"),
    ("GET", "/api/v2/documents/{id}/content"),
    ("DELETE", "/api/v2/documents/{id}"),
    ("GET", "/api/v2/recall-types"),
    ("POST", "/api/v2/recall-types"),
    ("GET", "/api/v2/recalls"),
    ("GET", "/api/v2/reports/day-sheet"),
    ("GET", "/api/v2/fhir/Patient/{id}"),
    ("GET", "/api/v2/fhir/Patient"),
    ("GET", "/api/v2/fhir/Appointment"),
    ("GET", "/api/v2/fhir/Practitioner"),
    ("GET", "/api/v2/webhooks/subscriptions"),
    ("POST", "/api/v2/webhooks/subscriptions"),
];

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

fn concrete(path: &str) -> String {
    path.replace("{id}", &uuid::Uuid::now_v7().to_string())
}

/// Whether the router serves `method path` (anything but "no such path" or 405).
async fn served(app: &TestApp, method: &str, path: &str) -> bool {
    let m = Method::from_bytes(method.as_bytes()).expect("method");
    let res = app
        .client
        .request(m, app.url(&concrete(path)))
        .send()
        .await
        .expect("send");
    match res.status() {
        StatusCode::METHOD_NOT_ALLOWED => false,
        StatusCode::NOT_FOUND => {
            let body: Value = res.json().await.unwrap_or_default();
            body["detail"] != "no resource at this path"
        }
        _ => true,
    }
}

#[tokio::test]
async fn the_document_and_the_router_describe_the_same_routes() {
    let app = spawn_with(|v| {
        v.insert("RATE_LIMIT_ANON_PER_MINUTE".into(), "100000".into());
    })
    .await;
    let doc: Value = app
        .get("/api/v2/openapi.json", None)
        .await
        .json()
        .await
        .expect("json");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method.to_lowercase()).is_some() {
                documented.insert((method.to_owned(), path.clone()));
            }
        }
    }
    assert!(documented.len() > 30);
    // Every documented operation is served, and nothing else on its path.
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        for method in METHODS {
            let is_documented = documented.contains(&(method.to_owned(), path.clone()));
            assert_eq!(
                served(&app, method, path).await,
                is_documented,
                "{method} {path}"
            );
        }
    }
    // Every contract endpoint that is not documented is not served either.
    for (method, path) in CONTRACT {
        if !documented.contains(&(method.to_string(), path.to_string())) {
            assert!(
                !served(&app, method, path).await,
                "{method} {path} is served but undocumented"
            );
        }
    }
    // Everything implemented so far is documented.
    for (method, path) in CONTRACT.iter().take(43) {
        assert!(
            documented.contains(&(method.to_string(), path.to_string())),
            "{method} {path} undocumented"
        );
    }
}

#[tokio::test]
async fn documented_operations_name_their_errors_and_security() {
    let app = spawn().await;
    let doc: Value = app
        .get("/api/v2/openapi.json", None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            let public = path.starts_with("/api/v2/auth/")
                && !path.ends_with("/me")
                && !path.ends_with("change-password")
                || [
                    "/api/v2/health",
                    "/api/v2/ready",
                    "/api/v2/startup-check",
                    // Authenticated by Stripe's signature, not a bearer token.
                    "/api/v2/webhooks/stripe",
                    // FHIR's capability statement is public, as FHIR servers' are.
                    "/api/v2/fhir/metadata",
                ]
                .contains(&path.as_str());
            if !public {
                assert!(
                    op["security"].is_array(),
                    "{method} {path} declares its security"
                );
            }
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|k| k.starts_with('2')),
                "{method} {path} has a success response"
            );
        }
    }
}

async fn served_document(app: &TestApp) -> Value {
    app.get("/api/v2/openapi.json", None)
        .await
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn parameters_are_where_the_document_says_and_errors_are_problems() {
    let app = spawn_with(|v| {
        v.insert("APPOINTMENT_MAX_MINUTES".into(), "240".into());
    })
    .await;
    let doc = served_document(&app).await;
    // `molar openapi` prints what the server serves (for the same configuration).
    let settings = molar::openapi::DocSettings {
        appointment_max_minutes: 240,
    };
    assert_eq!(doc, molar::openapi::document(settings));
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let placeholders: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_owned)
            .collect();
        for (method, op) in item.as_object().expect("item") {
            let label = format!("{method} {path}");
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let in_path: BTreeSet<String> = params
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().expect("name").to_owned())
                .collect();
            assert_eq!(in_path, placeholders, "{label}: path parameters");
            for p in &params {
                let name = p["name"].as_str().expect("name");
                assert!(
                    ["path", "query", "header"].contains(&p["in"].as_str().expect("in")),
                    "{label} {name}"
                );
                if p["in"] == "path" {
                    assert_eq!(p["required"], true, "{label} {name}");
                }
                // Absent is how a client leaves a parameter out; none takes null.
                let types = &p["schema"]["type"];
                assert!(
                    !types
                        .as_array()
                        .is_some_and(|t| t.contains(&Value::from("null"))),
                    "{label} {name} is nullable"
                );
            }
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.contains_key("400") && responses.contains_key("500"),
                "{label}: 400 and 500"
            );
            for (status, response) in responses {
                if !status.starts_with('4') && !status.starts_with('5') {
                    continue;
                }
                // The probes describe a failed dependency in their own JSON body.
                if status == "503" && (path.ends_with("/ready") || path.ends_with("/startup-check"))
                {
                    continue;
                }
                let content = response["content"].as_object().expect("content");
                // The FHIR view answers its errors as OperationOutcomes.
                if path.starts_with("/api/v2/fhir/") {
                    assert_eq!(
                        content.keys().collect::<Vec<_>>(),
                        vec!["application/fhir+json"],
                        "{label} {status}"
                    );
                    assert_eq!(
                        content["application/fhir+json"]["schema"]["$ref"],
                        "#/components/schemas/FhirOperationOutcome",
                        "{label} {status}"
                    );
                    continue;
                }
                assert_eq!(
                    content.keys().collect::<Vec<_>>(),
                    vec!["application/problem+json"],
                    "{label} {status}"
                );
                assert_eq!(
                    content["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{label} {status}"
                );
            }
            if op["security"].is_array() {
                assert!(responses.contains_key("401"), "{label}: 401");
                // Every role may call `me`, also with a setup-only token; every other
                // operation checks a permission some role lacks, or is closed to a
                // setup-only token (two-factor sign-in required but not set up).
                let every_role = ["me"].contains(&op["operationId"].as_str().expect("operationId"));
                assert_eq!(responses.contains_key("403"), !every_role, "{label}: 403");
            }
            if let Some(created) = responses.get("201") {
                assert_eq!(
                    created["headers"]["Location"]["required"], true,
                    "{label}: Location"
                );
            }
            if op.get("requestBody").is_some() {
                for status in ["413", "415", "422"] {
                    assert!(responses.contains_key(status), "{label}: {status}");
                }
            }
            if params.iter().any(|p| p["name"] == "If-Match") {
                assert!(responses.contains_key("412"), "{label}: 412");
            }
        }
    }
    // Required parameters are required; limits the configuration sets are shown.
    let availability = doc["paths"]["/api/v2/availability"]["get"]["parameters"]
        .as_array()
        .expect("parameters");
    for p in availability {
        let required = ["provider_id", "date", "duration_minutes"]
            .contains(&p["name"].as_str().expect("name"));
        assert_eq!(p["required"], required, "{}", p["name"]);
        assert_eq!(p["in"], "query");
        if p["name"] == "duration_minutes" {
            assert_eq!(p["schema"]["minimum"], 5);
            assert_eq!(p["schema"]["maximum"], 240);
        }
    }
    // Creating operations link to what can be done with what they created.
    let links = &doc["paths"]["/api/v2/patients"]["post"]["responses"]["201"]["links"];
    assert_eq!(links["GetPatient"]["operationId"], "get_patient");
    assert_eq!(
        links["GetPatient"]["parameters"]["path.id"],
        "$response.body#/id"
    );
}

#[tokio::test]
async fn query_parameters_outside_their_schema_or_unknown_are_400() {
    let app = spawn().await;
    let owner = app.register_clinic("Queries").await;
    let patient = app.patient(&owner.access, "Quinn", "Query").await;
    let bad = [
        "/api/v2/patients?limit=0",
        "/api/v2/patients?limit=201",
        "/api/v2/patients?limit=true",
        "/api/v2/patients?limit=",
        "/api/v2/patients?include_archived=1",
        "/api/v2/patients?limit=5&limit=6",
        "/api/v2/patients?nope=1",
        "/api/v2/users?role=wizard",
        "/api/v2/users?active=yes",
        "/api/v2/operatories?include_inactive=1",
        "/api/v2/appointments?provider_id=not-a-uuid",
        "/api/v2/appointments?from=yesterday",
        "/api/v2/appointments?status=done",
        "/api/v2/audit-events?patient_id=42",
        "/api/v2/audit-events?action=DROP%20TABLE",
        "/api/v2/availability?date=2030-01-07&duration_minutes=30",
        "/api/v2/availability?provider_id=x&date=2030-01-07&duration_minutes=30",
        // Parameters an operation does not declare, on operations with and without any.
        "/api/v2/clinic?verbose=true",
        "/api/v2/providers?limit=5",
    ];
    for path in bad {
        let res = app.get(path, Some(&owner.access)).await;
        let problem = expect_problem(res, StatusCode::BAD_REQUEST).await;
        assert_eq!(problem["type"], "urn:molar:problem:bad-request", "{path}");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("query parameter")),
            "{path}: {problem}"
        );
    }
    let long = "a".repeat(201);
    for path in [
        format!("/api/v2/patients?q={long}"),
        "/api/v2/patients?q=a%01b".to_owned(),
        format!("/api/v2/patients/{patient}/chart?numbering=palmer"),
        format!(
            "/api/v2/availability?provider_id={}&date=2030-01-07&duration_minutes=4",
            owner.user_id
        ),
        format!(
            "/api/v2/availability?provider_id={}&date=2030-01-07&duration_minutes=481",
            owner.user_id
        ),
    ] {
        let res = app.get(&path, Some(&owner.access)).await;
        expect_problem(res, StatusCode::BAD_REQUEST).await;
    }
    // Within the schema: served (422 is left to what a schema cannot say).
    for path in [
        "/api/v2/patients?limit=200&include_archived=false&q=",
        "/api/v2/patients?limit=1",
    ] {
        let res = app.get(path, Some(&owner.access)).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
    let desk = app.staff(&owner.access, "receptionist").await;
    let res = app
        .get(
            &format!(
                "/api/v2/availability?provider_id={}&date=2030-01-07&duration_minutes=30",
                desk.user_id
            ),
            Some(&owner.access),
        )
        .await;
    let problem = expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["errors"][0]["field"], "provider_id");
    let res = app
        .get(
            "/api/v2/appointments?from=2030-01-08T00:00:00Z&to=2030-01-07T00:00:00Z",
            Some(&owner.access),
        )
        .await;
    expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
}

#[tokio::test]
async fn if_match_and_idempotency_keys_are_checked_by_their_grammar() {
    let app = spawn().await;
    let owner = app.register_clinic("Preconditions").await;
    let patient = app.patient(&owner.access, "Ida", "Match").await;
    let path = format!("/api/v2/patients/{patient}");
    let patch = |if_match: &'static str| {
        let app = &app;
        let path = path.clone();
        let token = owner.access.clone();
        async move {
            app.client
                .patch(app.url(&path))
                .bearer_auth(token)
                .header("If-Match", if_match)
                .json(&json!({"first_name": "Ida"}))
                .send()
                .await
                .expect("send")
        }
    };
    // Malformed: 400; well formed but another version (or weak): 412; the current: 200.
    expect_problem(patch("1").await, StatusCode::BAD_REQUEST).await;
    expect_problem(patch("\"1").await, StatusCode::BAD_REQUEST).await;
    expect_problem(patch("\"7\"").await, StatusCode::PRECONDITION_FAILED).await;
    expect_problem(patch("W/\"1\"").await, StatusCode::PRECONDITION_FAILED).await;
    expect_problem(patch("").await, StatusCode::PRECONDITION_FAILED).await;
    assert_eq!(patch("\"9\", \"1\"").await.status(), StatusCode::OK);
    assert_eq!(patch("*").await.status(), StatusCode::OK);
    // An Idempotency-Key that is not 1 to 255 visible ASCII characters: 400.
    for key in [" ", "x".repeat(256).as_str(), "tab\there"] {
        let res = app
            .client
            .post(app.url("/api/v2/patients"))
            .bearer_auth(&owner.access)
            .header("Idempotency-Key", key)
            .json(&patient_body("Kay", "Key"))
            .send()
            .await
            .expect("send");
        expect_problem(res, StatusCode::BAD_REQUEST).await;
    }
}

#[tokio::test]
async fn fields_that_cannot_be_cleared_say_so() {
    let app = spawn().await;
    let owner = app.register_clinic("Settings").await;
    let res = app
        .patch("/api/v2/clinic", Some(&owner.access), json!({"name": null}))
        .await;
    let problem = expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["errors"][0]["field"], "name");
}

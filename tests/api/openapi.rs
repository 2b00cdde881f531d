//! The OpenAPI document and the router agree: every documented operation is served,
//! no other method on a documented path is, and every endpoint of the contract that the
//! document does not list is not served either.

use std::collections::BTreeSet;

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

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
                || ["/api/v2/health", "/api/v2/ready", "/api/v2/startup-check"]
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

//! Who may chart, read and sign treatment: a solo dentist who registered the clinic, an
//! owner or admin who is (or becomes) a provider, the front desk and billing; and the
//! audit trail of treatment.

use std::collections::HashSet;

use crate::common::*;
use crate::treatment::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn register(app: &TestApp, owner_extra: Value) -> Value {
    let mut owner = json!({
        "email": format!("owner-{}@example.test", uuid::Uuid::new_v4().simple()),
        "password": STRONG_PASSWORD,
        "full_name": "Olga Owner",
    });
    if let (Some(o), Some(extra)) = (owner.as_object_mut(), owner_extra.as_object()) {
        o.extend(extra.clone());
    }
    expect_json(
        app.post(
            "/api/v2/auth/register-clinic",
            None,
            json!({"clinic": {"name": "Solo", "timezone": "Europe/Berlin", "currency": "EUR"},
                   "owner": owner}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await
}

fn access(registered: &Value) -> String {
    registered["tokens"]["access_token"]
        .as_str()
        .expect("access")
        .to_owned()
}

#[tokio::test]
async fn a_solo_dentist_who_registered_the_clinic_charts_their_own_patients() {
    let app = spawn().await;
    let registered = register(&app, json!({})).await;
    assert_eq!(
        registered["user"]["is_provider"], true,
        "a provider by default"
    );
    let t = access(&registered);
    let me = registered["user"]["id"].clone();
    let patient = app.patient(&t, "Pat", "Ient").await;
    let exam = exam_code(&app, &t, 4500).await;
    let procedure = chart(&app, &t, &patient, json!({"procedure_code_id": exam})).await;
    assert_eq!(procedure["provider_id"], me, "the owner is the provider");
    let done = expect_json(
        complete(&app, &t, &id(&procedure), json!({})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(done["status"], "completed");
    expect_json(
        app.post(
            &format!("/api/v2/patients/{patient}/chart/entries"),
            Some(&t),
            json!({"tooth": "36", "surfaces": ["O"], "condition": "caries"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    expect_json(
        app.get(&format!("/api/v2/patients/{patient}/chart"), Some(&t))
            .await,
        StatusCode::OK,
    )
    .await;
    let who = expect_json(app.get("/api/v2/auth/me", Some(&t)).await, StatusCode::OK).await;
    let permissions = who["permissions"].to_string();
    for p in [
        "treatment.write",
        "clinical.write",
        "catalogue.manage",
        "users.manage",
    ] {
        assert!(permissions.contains(p), "{p} in {permissions}");
    }
}

#[tokio::test]
async fn an_owner_who_is_not_a_provider_does_not_chart() {
    let app = spawn().await;
    let registered = register(&app, json!({"is_provider": false})).await;
    assert_eq!(registered["user"]["is_provider"], false);
    let t = access(&registered);
    let patient = app.patient(&t, "Pat", "Ient").await;
    let exam = exam_code(&app, &t, 4500).await;
    expect_problem(
        app.post(
            &format!("/api/v2/patients/{patient}/procedures"),
            Some(&t),
            json!({"procedure_code_id": exam}),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    expect_problem(
        app.post(
            &format!("/api/v2/patients/{patient}/chart/entries"),
            Some(&t),
            json!({"tooth": "36", "surfaces": ["O"], "condition": "caries"}),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    // The practice manager still runs the catalogue and reads treatment.
    let list = expect_json(
        app.get(&format!("/api/v2/patients/{patient}/procedures"), Some(&t))
            .await,
        StatusCode::OK,
    )
    .await;
    assert!(list["items"].as_array().expect("items").is_empty());
}

#[tokio::test]
async fn an_admin_made_a_provider_charts_after_refreshing_their_token() {
    let p = practice().await;
    let app = &p.app;
    let admin = app.staff(&p.owner.access, "admin").await;
    let exam = exam_code(app, &p.owner.access, 4500).await;
    let procedures = format!("/api/v2/patients/{}/procedures", p.patient);
    let body = json!({"procedure_code_id": exam});
    expect_problem(
        app.post(&procedures, Some(&admin.access), body.clone())
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    let user = expect_json(
        app.patch(
            &format!("/api/v2/users/{}", admin.user_id),
            Some(&p.owner.access),
            json!({"is_provider": true}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(user["is_provider"], true);
    // The old token no longer works: it says the admin is not a provider.
    expect_problem(
        app.get("/api/v2/procedure-codes", Some(&admin.access))
            .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let tokens = expect_json(
        app.post(
            "/api/v2/auth/refresh",
            None,
            json!({"refresh_token": admin.refresh}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let fresh = tokens["access_token"].as_str().expect("access");
    let procedure = chart(app, fresh, &p.patient, body).await;
    assert_eq!(procedure["provider_id"], json!(admin.user_id));
    // And back: no longer a provider, no longer charting.
    expect_json(
        app.patch(
            &format!("/api/v2/users/{}", admin.user_id),
            Some(&p.owner.access),
            json!({"is_provider": false}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let tokens = expect_json(
        app.post(
            "/api/v2/auth/refresh",
            None,
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    expect_problem(
        app.post(
            &procedures,
            tokens["access_token"].as_str(),
            json!({"procedure_code_id": exam}),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn the_front_desk_reads_plans_and_fees_but_not_clinical_notes_and_does_not_chart() {
    let p = practice().await;
    let app = &p.app;
    let reception = app.staff(&p.owner.access, "receptionist").await;
    let r = Some(reception.access.as_str());
    let exam = exam_code(app, &p.owner.access, 4500).await;
    let procedure = chart(
        app,
        &p.dentist.access,
        &p.patient,
        json!({"procedure_code_id": exam, "note": "patient anxious, bruxism"}),
    )
    .await;
    assert_eq!(procedure["note"], "patient anxious, bruxism");
    let plan = expect_json(
        app.post(
            &format!("/api/v2/patients/{}/treatment-plans", p.patient),
            Some(&p.dentist.access),
            json!({"title": "Check-up", "items": [{"procedure_id": procedure["id"]}]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let plan_path = format!("/api/v2/treatment-plans/{}", id(&plan));
    let read = expect_json(app.get(&plan_path, r).await, StatusCode::OK).await;
    assert_eq!(read["total_cents"], 4500);
    let list = expect_json(
        app.get(&format!("/api/v2/patients/{}/procedures", p.patient), r)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list["items"][0]["fee_cents"], 4500);
    assert_eq!(list["items"][0]["note"], Value::Null, "no clinical note");
    let one = expect_json(
        app.get(&format!("/api/v2/procedures/{}", id(&procedure)), r)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(one["note"], Value::Null);
    let theirs = expect_json(
        app.get(
            &format!("/api/v2/procedures/{}", id(&procedure)),
            Some(&p.dentist.access),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        theirs["note"], "patient anxious, bruxism",
        "the dentist reads it"
    );
    for res in [
        app.post(
            &format!("/api/v2/patients/{}/procedures", p.patient),
            r,
            json!({"procedure_code_id": exam}),
        )
        .await,
        complete(app, &reception.access, &id(&procedure), json!({})).await,
        app.post(&format!("{plan_path}/present"), r, json!({}))
            .await,
        app.get(&format!("/api/v2/patients/{}/chart", p.patient), r)
            .await,
    ] {
        expect_problem(res, StatusCode::FORBIDDEN).await;
    }
    // The front desk records the patient's signature on a presented plan.
    expect_json(
        app.post(
            &format!("{plan_path}/present"),
            Some(&p.dentist.access),
            json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let accepted = expect_json(
        app.post(
            &format!("{plan_path}/accept"),
            r,
            json!({"signed_by": "Pat Ient"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(accepted["status"], "accepted");
}

#[tokio::test]
async fn billing_reads_the_day_sheet_and_a_dentist_does_not() {
    let p = practice().await;
    let billing = p.app.staff(&p.owner.access, "billing").await;
    let path = "/api/v2/reports/day-sheet?date=2026-11-23";
    let sheet = expect_json(p.app.get(path, Some(&billing.access)).await, StatusCode::OK).await;
    assert_eq!(sheet["date"], "2026-11-23");
    expect_problem(
        p.app.get(path, Some(&p.dentist.access)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    // Billing reads fees but neither charts nor signs plans.
    let exam = exam_code(&p.app, &p.owner.access, 4500).await;
    assert_eq!(catalogue(&p.app, &billing.access).await.len(), 1);
    expect_problem(
        p.app
            .post(
                &format!("/api/v2/patients/{}/procedures", p.patient),
                Some(&billing.access),
                json!({"procedure_code_id": exam}),
            )
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn reading_and_changing_procedures_and_plans_is_audited() {
    let p = practice().await;
    let app = &p.app;
    let t = p.dentist.access.as_str();
    let reception = app.staff(&p.owner.access, "receptionist").await;
    let exam = exam_code(app, &p.owner.access, 4500).await;
    let done = id(&chart(app, t, &p.patient, json!({"procedure_code_id": exam})).await);
    let planned = id(&chart(app, t, &p.patient, json!({"procedure_code_id": exam})).await);
    expect_json(
        app.get(&format!("/api/v2/procedures/{done}"), Some(t))
            .await,
        StatusCode::OK,
    )
    .await;
    expect_json(complete(app, t, &done, json!({})).await, StatusCode::OK).await;
    let plan = expect_json(
        app.post(
            &format!("/api/v2/patients/{}/treatment-plans", p.patient),
            Some(t),
            json!({"title": "Check-up", "items": [{"procedure_id": planned}]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let plan_path = format!("/api/v2/treatment-plans/{}", id(&plan));
    expect_json(
        app.post(&format!("{plan_path}/present"), Some(t), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    expect_json(
        app.post(
            &format!("{plan_path}/accept"),
            Some(t),
            json!({"signed_by": "Pat Ient"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    expect_problem(
        app.post(
            &format!("/api/v2/patients/{}/procedures", p.patient),
            Some(&reception.access),
            json!({"procedure_code_id": exam}),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;

    let page = expect_json(
        app.get(
            &format!("/api/v2/audit-events?patient_id={}&limit=200", p.patient),
            Some(&p.owner.access),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let events = page["items"].as_array().expect("items");
    let find = |action: &str, outcome: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["action"] == action && e["outcome"] == outcome)
            .collect()
    };
    let dentist = json!(p.dentist.user_id);
    for (action, resource) in [
        ("procedure.create", &done),
        ("procedure.read", &done),
        ("procedure.complete", &done),
        ("treatment_plan.create", &id(&plan)),
        ("treatment_plan.present", &id(&plan)),
        ("treatment_plan.accept", &id(&plan)),
    ] {
        let found = find(action, "success");
        assert!(
            found
                .iter()
                .any(|e| e["resource_id"] == json!(resource) && e["user_id"] == dentist),
            "{action} on {resource}: {found:?}"
        );
        assert!(found.iter().all(|e| e["patient_id"] == json!(p.patient)));
    }
    let denied = find("procedure.create", "failure");
    assert_eq!(denied.len(), 1, "the refused charting is recorded");
    assert_eq!(denied[0]["user_id"], json!(reception.user_id));
    let actions: HashSet<&str> = events.iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(
        !actions.contains("procedure.reverse"),
        "only what happened: {actions:?}"
    );
}

//! Restricted patients and break-glass access: a restricted patient's clinical record is
//! 404 outside the care team, both in the routes and under row-level security; the front
//! desk keeps the demographics; breaking the glass opens the record for a limited time,
//! audited, emailed to owners and admins and listed for review; grants expire and cannot
//! be changed by the server's role.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgConnection;

use crate::common::*;
use crate::smtp_sink::{decoded, SmtpSink};
use crate::treatment::{chart, exam_code, expect_invalid, expect_json, id};

/// A clinic with a restricted patient whose care team is `carer`, and their record: a
/// note, a chart entry, a perio exam, a procedure, a treatment plan and an x-ray.
struct Vip {
    app: TestApp,
    owner: Registered,
    admin: Registered,
    carer: Registered,
    outsider: Registered,
    reception: Registered,
    billing: Registered,
    patient: String,
    note: String,
    procedure: String,
    plan: String,
    document: String,
}

async fn vip_with(adjust: impl FnOnce(&mut std::collections::HashMap<String, String>)) -> Vip {
    let app = spawn_with(adjust).await;
    let owner = app.register_clinic("Discreet").await;
    let admin = app.staff(&owner.access, "admin").await;
    let carer = app.staff(&owner.access, "dentist").await;
    let outsider = app.staff(&owner.access, "dentist").await;
    let reception = app.staff(&owner.access, "receptionist").await;
    let billing = app.staff(&owner.access, "billing").await;
    let patient = app.patient(&owner.access, "Vera", "Important").await;
    let t = Some(carer.access.as_str());
    let note = id(&expect_json(
        app.post(
            &format!("/api/v2/patients/{patient}/notes"),
            t,
            json!({"body": "Anxious; prefers late appointments"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await);
    expect_json(
        app.post(
            &format!("/api/v2/patients/{patient}/chart/entries"),
            t,
            json!({"tooth": "36", "surfaces": ["O"], "condition": "caries"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    expect_json(
        app.post(
            &format!("/api/v2/patients/{patient}/perio-exams"),
            t,
            json!({"teeth": [{"tooth": "16", "sites": [{"site": "MB", "probing_depth": 3}]}]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let exam = exam_code(&app, &owner.access, 4500).await;
    let procedure = id(&chart(
        &app,
        &carer.access,
        &patient,
        json!({"procedure_code_id": exam}),
    )
    .await);
    let plan = id(&expect_json(
        app.post(
            &format!("/api/v2/patients/{patient}/treatment-plans"),
            t,
            json!({"title": "Check-ups"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await);
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.extend(std::iter::repeat_n(7u8, 400));
    let form = reqwest::multipart::Form::new()
        .text("kind", "xray")
        .text("title", "Bitewing")
        .part(
            "file",
            reqwest::multipart::Part::bytes(png).file_name("bw.png"),
        );
    let res = app
        .client
        .post(app.url(&format!("/api/v2/patients/{patient}/documents")))
        .bearer_auth(&carer.access)
        .multipart(form)
        .send()
        .await
        .expect("upload reaches the server");
    let document = id(&expect_json(res, StatusCode::CREATED).await);
    let restricted = expect_json(
        app.patch(
            &format!("/api/v2/patients/{patient}"),
            t,
            json!({"restricted": true, "care_team": [carer.user_id]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(restricted["restricted"], json!(true));
    assert_eq!(restricted["care_team"], json!([carer.user_id]));
    Vip {
        app,
        owner,
        admin,
        carer,
        outsider,
        reception,
        billing,
        patient,
        note,
        procedure,
        plan,
        document,
    }
}

async fn vip() -> Vip {
    vip_with(|_| {}).await
}

impl Vip {
    /// Every read of the clinical record, by patient and by id.
    fn record_paths(&self) -> Vec<String> {
        let p = &self.patient;
        vec![
            format!("/api/v2/patients/{p}/notes"),
            format!("/api/v2/patients/{p}/chart"),
            format!("/api/v2/patients/{p}/chart/entries"),
            format!("/api/v2/patients/{p}/perio-exams"),
            format!("/api/v2/patients/{p}/procedures"),
            format!("/api/v2/patients/{p}/treatment-plans"),
            format!("/api/v2/patients/{p}/documents"),
            format!("/api/v2/notes/{}", self.note),
            format!("/api/v2/procedures/{}", self.procedure),
            format!("/api/v2/treatment-plans/{}", self.plan),
            format!("/api/v2/documents/{}", self.document),
            format!("/api/v2/documents/{}/content", self.document),
        ]
    }

    async fn break_glass(&self, token: &str, reason: &str) -> reqwest::Response {
        self.app
            .post(
                &format!("/api/v2/patients/{}/break-glass", self.patient),
                Some(token),
                json!({"reason": reason}),
            )
            .await
    }

    async fn notes_status(&self, token: &str) -> StatusCode {
        self.app
            .get(
                &format!("/api/v2/patients/{}/notes", self.patient),
                Some(token),
            )
            .await
            .status()
    }
}

async fn audit_rows(
    db: &mut PgConnection,
    action: &str,
    outcome: &str,
) -> Vec<(Option<String>, Option<Value>)> {
    sqlx::query_as(
        "SELECT user_id::text, details FROM audit_events WHERE action = $1 AND outcome = $2 ORDER BY at",
    )
    .bind(action)
    .bind(outcome)
    .fetch_all(db)
    .await
    .expect("audit rows")
}

#[tokio::test]
async fn a_restricted_record_is_not_found_outside_the_care_team_and_open_within_it() {
    let v = vip().await;
    for path in v.record_paths() {
        let res = v.app.get(&path, Some(&v.outsider.access)).await;
        expect_problem(res, StatusCode::NOT_FOUND).await;
        let res = v.app.get(&path, Some(&v.carer.access)).await;
        assert_eq!(res.status(), StatusCode::OK, "{path} for the care team");
    }
    // The owner (a provider, not on the care team) is outside too.
    assert_eq!(v.notes_status(&v.owner.access).await, StatusCode::NOT_FOUND);
    // Nobody outside adds to the record either.
    let res = v
        .app
        .post(
            &format!("/api/v2/patients/{}/notes", v.patient),
            Some(&v.outsider.access),
            json!({"body": "x"}),
        )
        .await;
    expect_problem(res, StatusCode::NOT_FOUND).await;
    let res = v
        .app
        .post(
            &format!("/api/v2/procedures/{}/complete", v.procedure),
            Some(&v.outsider.access),
            json!({}),
        )
        .await;
    expect_problem(res, StatusCode::NOT_FOUND).await;
    // Each refusal is audited, with the patient.
    let mut db = v.app.admin_db().await;
    let denied = audit_rows(&mut db, "patient.record_denied", "failure").await;
    assert!(denied.len() >= 8, "{denied:?}");
    assert!(denied
        .iter()
        .any(|(user, _)| user.as_deref() == Some(v.outsider.user_id.as_str())));
}

#[tokio::test]
async fn the_front_desk_and_billing_keep_demographics_scheduling_and_procedures() {
    let v = vip().await;
    let app = &v.app;
    for token in [&v.reception.access, &v.outsider.access, &v.billing.access] {
        let p = expect_json(
            app.get(&format!("/api/v2/patients/{}", v.patient), Some(token))
                .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(p["last_name"], "Important");
        assert_eq!(p["restricted"], json!(true));
        for list in ["/api/v2/patients", "/api/v2/patients?q=Important"] {
            let page = expect_json(app.get(list, Some(token)).await, StatusCode::OK).await;
            assert!(
                page["items"]
                    .as_array()
                    .expect("items")
                    .iter()
                    .any(|p| p["id"] == json!(v.patient)),
                "{list}"
            );
        }
    }
    // Billing invoices procedures and the front desk presents plans: theirs stay open.
    for token in [&v.billing.access, &v.reception.access] {
        let res = app
            .get(
                &format!("/api/v2/patients/{}/procedures", v.patient),
                Some(token),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    // The care team completes a procedure; billing invoices it and reads the ledger.
    expect_json(
        app.post(
            &format!("/api/v2/procedures/{}/complete", v.procedure),
            Some(&v.carer.access),
            json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let invoice = expect_json(
        app.post(
            "/api/v2/invoices",
            Some(&v.billing.access),
            json!({"patient_id": v.patient}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(invoice["lines"][0]["procedure_id"], json!(v.procedure));
    let res = app
        .get(
            &format!("/api/v2/patients/{}/ledger", v.patient),
            Some(&v.billing.access),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // Booking an appointment for the patient.
    let op: Value = expect_json(
        app.post(
            "/api/v2/operatories",
            Some(&v.owner.access),
            json!({"name": "Chair"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let weekly: Vec<Value> = (1..=7)
        .map(|d| json!({"weekday": d, "start": "07:00", "end": "20:00"}))
        .collect();
    let res = app
        .call(
            reqwest::Method::PUT,
            &format!("/api/v2/providers/{}/working-hours", v.carer.user_id),
            Some(&v.owner.access),
            Some(json!({"weekly": weekly})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .post(
            "/api/v2/appointments",
            Some(&v.reception.access),
            json!({"patient_id": v.patient, "provider_id": v.carer.user_id, "operatory_id": id(&op),
                   "start_at": "2027-03-01T09:00:00Z", "end_at": "2027-03-01T09:30:00Z"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED, "{:?}", res.text().await);
}

#[tokio::test]
async fn breaking_the_glass_opens_the_record_audits_notifies_and_is_listed_for_review() {
    let sink = SmtpSink::keeping("Break-glass access to a restricted patient record").await;
    let url = sink.url();
    let v = vip_with(move |vars| {
        vars.insert("SMTP_URL".into(), url);
    })
    .await;
    assert_eq!(
        v.notes_status(&v.outsider.access).await,
        StatusCode::NOT_FOUND
    );
    let reason = "Emergency: swelling, care team away";
    let res = v.break_glass(&v.outsider.access, reason).await;
    let location = res
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .expect("a Location on the 201")
        .to_owned();
    let grant = expect_json(res, StatusCode::CREATED).await;
    assert_eq!(grant["patient_id"], json!(v.patient));
    assert_eq!(grant["user_id"], json!(v.outsider.user_id));
    assert_eq!(grant["reason"], json!(reason));
    assert_eq!(grant["live"], json!(true));
    let at: DateTime<Utc> =
        serde_json::from_value(grant["created_at"].clone()).expect("created_at");
    let until: DateTime<Utc> =
        serde_json::from_value(grant["expires_at"].clone()).expect("expires_at");
    assert_eq!(
        until - at,
        chrono::Duration::minutes(60),
        "the default is an hour"
    );

    for path in v.record_paths() {
        let res = v.app.get(&path, Some(&v.outsider.access)).await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "{path} after breaking the glass"
        );
    }
    // Only for the one who broke it.
    let other = v.app.staff(&v.owner.access, "hygienist").await;
    assert_eq!(v.notes_status(&other.access).await, StatusCode::NOT_FOUND);

    let mut db = v.app.admin_db().await;
    let events = audit_rows(&mut db, "patient.break_glass", "success").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0.as_deref(), Some(v.outsider.user_id.as_str()));
    let details = events[0].1.clone().expect("details");
    assert_eq!(details["reason"], json!(reason));
    assert_eq!(details["grant_id"], grant["id"]);

    // The owner and the admin hear of it; nobody else.
    let mail = sink.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(mail.len(), 2);
    let mut to: Vec<String> = mail.iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    let mut expected = vec![
        format!("<{}>", v.owner.email),
        format!("<{}>", v.admin.email),
    ];
    expected.sort();
    assert_eq!(to, expected);
    let text = decoded(&mail[0].data);
    assert!(text.contains("Break-glass access to a restricted patient record"));
    assert!(text.contains("Vera Important"));
    assert!(text.contains(reason));
    assert!(!text.contains("Anxious"), "no clinical detail");

    // Listed for review: owners and admins only.
    let page = expect_json(
        v.app
            .get("/api/v2/break-glass", Some(&v.owner.access))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["items"].as_array().expect("items").len(), 1);
    assert_eq!(page["items"][0]["id"], grant["id"]);
    assert_eq!(page["items"][0]["live"], json!(true));
    // The 201's Location is where the grant is reviewed, first.
    let at_location = expect_json(
        v.app.get(&location, Some(&v.owner.access)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(at_location["items"][0]["id"], grant["id"]);
    let filtered = expect_json(
        v.app
            .get(
                &format!("/api/v2/break-glass?user_id={}", v.carer.user_id),
                Some(&v.admin.access),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(filtered["items"], json!([]));
    expect_problem(
        v.app
            .get("/api/v2/break-glass", Some(&v.outsider.access))
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn a_grant_lasts_break_glass_minutes_and_then_the_record_closes_again() {
    let v = vip_with(|vars| {
        vars.insert("BREAK_GLASS_MINUTES".into(), "5".into());
    })
    .await;
    let grant = expect_json(
        v.break_glass(&v.outsider.access, "Covering the on-call shift")
            .await,
        StatusCode::CREATED,
    )
    .await;
    let at: DateTime<Utc> =
        serde_json::from_value(grant["created_at"].clone()).expect("created_at");
    let until: DateTime<Utc> =
        serde_json::from_value(grant["expires_at"].clone()).expect("expires_at");
    assert_eq!(until - at, chrono::Duration::minutes(5));
    assert_eq!(v.notes_status(&v.outsider.access).await, StatusCode::OK);

    // Time passes: the grant is moved into the past (only a superuser can).
    let mut db = v.app.admin_db().await;
    sqlx::query(
        "UPDATE break_glass_grants SET created_at = created_at - interval '1 hour', \
         expires_at = expires_at - interval '1 hour'",
    )
    .execute(&mut db)
    .await
    .expect("move the grant back");
    assert_eq!(
        v.notes_status(&v.outsider.access).await,
        StatusCode::NOT_FOUND
    );
    let res = v
        .app
        .get(
            &format!("/api/v2/procedures/{}", v.procedure),
            Some(&v.outsider.access),
        )
        .await;
    expect_problem(res, StatusCode::NOT_FOUND).await;
    let page = expect_json(
        v.app
            .get("/api/v2/break-glass", Some(&v.owner.access))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["items"][0]["live"], json!(false), "kept for review");
    // Breaking it again opens it again, with a grant of its own.
    expect_json(
        v.break_glass(&v.outsider.access, "Still on call").await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(v.notes_status(&v.outsider.access).await, StatusCode::OK);
}

#[tokio::test]
async fn only_clinical_roles_break_the_glass_and_only_on_a_closed_record() {
    let v = vip().await;
    for token in [&v.reception.access, &v.billing.access] {
        expect_problem(
            v.break_glass(token, "Need to see it").await,
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    // The care team has it open already.
    expect_problem(
        v.break_glass(&v.carer.access, "Just in case").await,
        StatusCode::CONFLICT,
    )
    .await;
    expect_invalid(v.break_glass(&v.outsider.access, "   ").await, "reason").await;
    expect_invalid(
        v.break_glass(&v.outsider.access, &"x".repeat(501)).await,
        "reason",
    )
    .await;
    // An unrestricted patient needs no glass breaking.
    let open = v.app.patient(&v.owner.access, "Otto", "Open").await;
    let res = v
        .app
        .post(
            &format!("/api/v2/patients/{open}/break-glass"),
            Some(&v.outsider.access),
            json!({"reason": "Checking"}),
        )
        .await;
    expect_problem(res, StatusCode::CONFLICT).await;
    // Another clinic's patient, or none at all, is not found.
    let other = v.app.register_clinic("Elsewhere").await;
    let theirs = v.app.patient(&other.access, "Fremd", "Patient").await;
    for patient in [theirs, uuid::Uuid::now_v7().to_string()] {
        let res = v
            .app
            .post(
                &format!("/api/v2/patients/{patient}/break-glass"),
                Some(&v.outsider.access),
                json!({"reason": "Checking"}),
            )
            .await;
        expect_problem(res, StatusCode::NOT_FOUND).await;
    }
    let mut db = v.app.admin_db().await;
    let refused = audit_rows(&mut db, "patient.break_glass", "failure").await;
    assert!(refused.len() >= 3, "403s and 409s are audited: {refused:?}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM break_glass_grants")
        .fetch_one(&mut db)
        .await
        .expect("count");
    assert_eq!(count, 0);
}

#[tokio::test]
async fn only_the_care_team_or_a_manager_changes_a_restricted_patients_access() {
    let v = vip().await;
    let path = format!("/api/v2/patients/{}", v.patient);
    // The front desk edits demographics but never the restriction.
    expect_problem(
        v.app
            .patch(
                &path,
                Some(&v.reception.access),
                json!({"restricted": false}),
            )
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    let ok = v
        .app
        .patch(
            &path,
            Some(&v.reception.access),
            json!({"phone": "+49 30 555"}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    // A dentist outside the care team breaks the glass instead of joining the team.
    for body in [
        json!({"restricted": false}),
        json!({"care_team": [v.carer.user_id, v.outsider.user_id]}),
    ] {
        expect_problem(
            v.app.patch(&path, Some(&v.outsider.access), body).await,
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    expect_invalid(
        v.app
            .patch(
                &path,
                Some(&v.carer.access),
                json!({"care_team": [uuid::Uuid::now_v7()]}),
            )
            .await,
        "care_team",
    )
    .await;
    expect_invalid(
        v.app
            .patch(&path, Some(&v.carer.access), json!({"restricted": null}))
            .await,
        "restricted",
    )
    .await;
    // An owner may; the change is in the audit details.
    let updated = expect_json(
        v.app
            .patch(
                &path,
                Some(&v.owner.access),
                json!({"care_team": [v.carer.user_id, v.outsider.user_id]}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        updated["care_team"],
        json!([v.carer.user_id, v.outsider.user_id])
    );
    assert_eq!(v.notes_status(&v.outsider.access).await, StatusCode::OK);
    let done = expect_json(
        v.app
            .patch(&path, Some(&v.carer.access), json!({"restricted": false}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(done["restricted"], json!(false));
    assert_eq!(v.notes_status(&v.owner.access).await, StatusCode::OK);
    let mut db = v.app.admin_db().await;
    let updates = audit_rows(&mut db, "patient.update", "success").await;
    let details: Vec<Value> = updates.into_iter().filter_map(|(_, d)| d).collect();
    assert!(details
        .iter()
        .any(|d| d["restricted"] == json!({"from": false, "to": true})));
    assert!(details
        .iter()
        .any(|d| d["restricted"] == json!({"from": true, "to": false})));
    assert!(details
        .iter()
        .any(|d| d["care_team"]["added"] == json!([v.outsider.user_id])));
    let denied = audit_rows(&mut db, "patient.update", "failure").await;
    assert!(denied.len() >= 3, "{denied:?}");
}

/// Row-level security alone, without the routes: the server's role sees the clinic's
/// rows of a restricted patient only as a care-team member, a grant holder, or
/// maintenance.
#[tokio::test]
async fn row_level_security_hides_the_record_from_users_outside_the_care_team() {
    let v = vip().await;
    let app = &v.app;
    let mut db = app.server_db().await;
    let count = |user: Option<String>, maintenance: bool| {
        let clinic = v.owner.clinic_id.clone();
        let patient = v.patient.clone();
        async move {
            let mut conn = app.server_db().await;
            let mut tx = sqlx::Connection::begin(&mut conn).await.expect("begin");
            sqlx::query(
                "SELECT set_config('app.clinic_id', $1, true), set_config('app.user_id', $2, true), \
                 set_config('app.maintenance', $3, true)",
            )
            .bind(&clinic)
            .bind(user.unwrap_or_default())
            .bind(if maintenance { "on" } else { "" })
            .execute(&mut *tx)
            .await
            .expect("scope");
            let mut counts = vec![];
            for table in [
                "clinical_notes",
                "chart_entries",
                "perio_exams",
                "documents",
            ] {
                let n: i64 = sqlx::query_scalar(&format!(
                    "SELECT count(*) FROM {table} WHERE patient_id = $1::uuid"
                ))
                .bind(&patient)
                .fetch_one(&mut *tx)
                .await
                .expect("count");
                counts.push(n);
            }
            counts
        }
    };
    assert_eq!(
        count(Some(v.outsider.user_id.clone()), false).await,
        [0, 0, 0, 0]
    );
    assert_eq!(
        count(Some(v.carer.user_id.clone()), false).await,
        [1, 1, 1, 1]
    );
    // No user: closed, unless the transaction is maintenance.
    assert_eq!(count(None, false).await, [0, 0, 0, 0]);
    assert_eq!(count(None, true).await, [1, 1, 1, 1]);
    expect_json(
        v.break_glass(&v.outsider.access, "On call").await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        count(Some(v.outsider.user_id.clone()), false).await,
        [1, 1, 1, 1]
    );

    // Writes are held too: nobody outside adds a row.
    let mut tx = sqlx::Connection::begin(&mut db).await.expect("begin");
    let hygienist = v.app.staff(&v.owner.access, "hygienist").await;
    sqlx::query(
        "SELECT set_config('app.clinic_id', $1, true), set_config('app.user_id', $2, true)",
    )
    .bind(&v.owner.clinic_id)
    .bind(&hygienist.user_id)
    .execute(&mut *tx)
    .await
    .expect("scope");
    let err = sqlx::query(
        "INSERT INTO clinical_notes (clinic_id, id, patient_id, author_id, body) \
         VALUES ($1::uuid, gen_random_uuid(), $2::uuid, $3::uuid, 'x')",
    )
    .bind(&v.owner.clinic_id)
    .bind(&v.patient)
    .bind(&hygienist.user_id)
    .execute(&mut *tx)
    .await
    .expect_err("row-level security refuses the row");
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("42501")
    );
}

#[tokio::test]
async fn the_server_role_cannot_change_or_remove_a_grant() {
    let v = vip().await;
    expect_json(
        v.break_glass(&v.outsider.access, "On call").await,
        StatusCode::CREATED,
    )
    .await;
    for statement in [
        "UPDATE break_glass_grants SET expires_at = expires_at + interval '1 hour'",
        "DELETE FROM break_glass_grants",
    ] {
        let mut db = v.app.server_db().await;
        let mut tx = sqlx::Connection::begin(&mut db).await.expect("begin");
        sqlx::query(
            "SELECT set_config('app.clinic_id', $1, true), set_config('app.user_id', $2, true)",
        )
        .bind(&v.owner.clinic_id)
        .bind(&v.outsider.user_id)
        .execute(&mut *tx)
        .await
        .expect("scope");
        let err = sqlx::query(statement)
            .execute(&mut *tx)
            .await
            .expect_err("append-only");
        assert_eq!(
            err.as_database_error().and_then(|e| e.code()).as_deref(),
            Some("42501"),
            "{statement}"
        );
    }
}

//! Charted procedures: tooth and surfaces as the code says, fees copied when planned,
//! completion (locked, charged once to a double-entry journal the server cannot rewrite)
//! and reversal; the chart shows them.

use crate::common::*;
use crate::treatment::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

/// The journal entries of a procedure, oldest first: (id, kind, reverses_id).
async fn entries(db: &mut PgConnection, procedure: &str) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT id::text, kind, reverses_id::text FROM ledger_transactions \
         WHERE procedure_id = $1::uuid ORDER BY posted_at, id",
    )
    .bind(procedure)
    .fetch_all(db)
    .await
    .expect("ledger transactions")
}

/// An entry's lines: (account, patient_id, amount_cents) by line number.
async fn lines(db: &mut PgConnection, transaction: &str) -> Vec<(String, Option<String>, i64)> {
    sqlx::query_as(
        "SELECT account, patient_id::text, amount_cents FROM ledger_lines \
         WHERE transaction_id = $1::uuid ORDER BY line_no",
    )
    .bind(transaction)
    .fetch_all(db)
    .await
    .expect("ledger lines")
}

#[tokio::test]
async fn tooth_and_surfaces_are_required_or_refused_as_the_code_says() {
    let p = practice().await;
    let (app, t) = (&p.app, Some(p.dentist.access.as_str()));
    let exam = exam_code(app, &p.owner.access, 4500).await;
    let filling = filling_code(app, &p.owner.access, 9500).await;
    let extraction = id(&code(
        app,
        &p.owner.access,
        json!({"code": "X-EXT", "description": "Extraction", "fee_cents": 11000,
               "requires_tooth": true}),
    )
    .await);
    let procedures = format!("/api/v2/patients/{}/procedures", p.patient);
    for (body, field) in [
        (json!({"procedure_code_id": exam, "tooth": "36"}), "tooth"),
        (
            json!({"procedure_code_id": exam, "surfaces": ["O"]}),
            "surfaces",
        ),
        (
            json!({"procedure_code_id": filling, "surfaces": ["O"]}),
            "tooth",
        ),
        (
            json!({"procedure_code_id": filling, "tooth": "36"}),
            "surfaces",
        ),
        (
            json!({"procedure_code_id": filling, "tooth": "99", "surfaces": ["O"]}),
            "tooth",
        ),
        (
            json!({"procedure_code_id": filling, "tooth": "11", "surfaces": ["O"]}),
            "surfaces",
        ),
        (
            json!({"procedure_code_id": filling, "tooth": "36", "surfaces": ["X"]}),
            "surfaces",
        ),
        (
            json!({"procedure_code_id": filling, "tooth": "36", "surfaces": ["O"], "numbering": "universal"}),
            "tooth",
        ),
        (json!({"procedure_code_id": extraction}), "tooth"),
        (
            json!({"procedure_code_id": extraction, "tooth": "48", "surfaces": ["O"]}),
            "surfaces",
        ),
    ] {
        expect_invalid(app.post(&procedures, t, body.clone()).await, field).await;
    }
    let page = expect_json(app.get(&procedures, t).await, StatusCode::OK).await;
    assert!(page["items"].as_array().expect("items").is_empty());

    let whole_mouth = chart(
        app,
        &p.dentist.access,
        &p.patient,
        json!({"procedure_code_id": exam}),
    )
    .await;
    assert_eq!(whole_mouth["tooth"], Value::Null);
    assert_eq!(whole_mouth["surfaces"], json!([]));
    assert_eq!(whole_mouth["status"], "planned");
    assert_eq!(whole_mouth["code"], "X-EXAM");
    let universal = chart(
        app,
        &p.dentist.access,
        &p.patient,
        json!({"procedure_code_id": filling, "tooth": "19", "surfaces": ["O", "M"], "numbering": "universal"}),
    )
    .await;
    assert_eq!(universal["tooth"], "19");
    assert_eq!(universal["tooth_fdi"], "36");
    assert_eq!(universal["surfaces"], json!(["M", "O"]));
    let incisor = chart(
        app,
        &p.dentist.access,
        &p.patient,
        json!({"procedure_code_id": filling, "tooth": "11", "surfaces": ["I"]}),
    )
    .await;
    assert_eq!(incisor["tooth"], "11");
    let extracted = chart(
        app,
        &p.dentist.access,
        &p.patient,
        json!({"procedure_code_id": extraction, "tooth": "48"}),
    )
    .await;
    assert_eq!(
        extracted["provider_id"],
        json!(p.dentist.user_id),
        "the caller by default"
    );
}

#[tokio::test]
async fn unknown_foreign_or_inactive_codes_and_providers_are_422_naming_the_field() {
    let p = practice().await;
    let app = &p.app;
    let other = app.register_clinic("Other").await;
    let foreign_code = exam_code(app, &other.access, 100).await;
    let foreign_dentist = app.staff(&other.access, "dentist").await;
    let exam = exam_code(app, &p.owner.access, 4500).await;
    let retired = id(&code(
        app,
        &p.owner.access,
        json!({"code": "X-OLD", "description": "Retired", "fee_cents": 1, "active": false}),
    )
    .await);
    let reception = app.staff(&p.owner.access, "receptionist").await;
    let procedures = format!("/api/v2/patients/{}/procedures", p.patient);
    let t = Some(p.dentist.access.as_str());
    for (body, field) in [
        (
            json!({"procedure_code_id": uuid::Uuid::now_v7()}),
            "procedure_code_id",
        ),
        (
            json!({"procedure_code_id": foreign_code}),
            "procedure_code_id",
        ),
        (json!({"procedure_code_id": retired}), "procedure_code_id"),
        (
            json!({"procedure_code_id": exam, "provider_id": foreign_dentist.user_id}),
            "provider_id",
        ),
        (
            json!({"procedure_code_id": exam, "provider_id": reception.user_id}),
            "provider_id",
        ),
        (
            json!({"procedure_code_id": exam, "fee_cents": -1}),
            "fee_cents",
        ),
        (
            json!({"procedure_code_id": exam, "completed_on": "2026-01-01"}),
            "completed_on",
        ),
    ] {
        expect_invalid(app.post(&procedures, t, body.clone()).await, field).await;
    }
    let planned = id(&chart(
        app,
        &p.dentist.access,
        &p.patient,
        json!({"procedure_code_id": exam}),
    )
    .await);
    expect_invalid(
        app.patch(
            &format!("/api/v2/procedures/{planned}"),
            t,
            json!({"procedure_code_id": foreign_code}),
        )
        .await,
        "procedure_code_id",
    )
    .await;
    expect_invalid(
        complete(
            app,
            &p.dentist.access,
            &planned,
            json!({"provider_id": foreign_dentist.user_id}),
        )
        .await,
        "provider_id",
    )
    .await;
    let read = expect_json(
        app.get(&format!("/api/v2/procedures/{planned}"), t).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        read["status"], "planned",
        "the refused completion changed nothing"
    );
}

#[tokio::test]
async fn the_fee_is_copied_when_planned_and_a_later_catalogue_change_leaves_it() {
    let p = practice().await;
    let (app, t) = (&p.app, p.dentist.access.as_str());
    let filling = filling_code(app, &p.owner.access, 9500).await;
    let body = json!({"procedure_code_id": filling, "tooth": "36", "surfaces": ["O"]});
    let first = chart(app, t, &p.patient, body.clone()).await;
    assert_eq!(first["fee_cents"], 9500);
    expect_json(
        app.patch(
            &format!("/api/v2/procedure-codes/{filling}"),
            Some(&p.owner.access),
            json!({"fee_cents": 12000}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let read = expect_json(
        app.get(&format!("/api/v2/procedures/{}", id(&first)), Some(t))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(read["fee_cents"], 9500, "planned at the old fee");
    let second = chart(app, t, &p.patient, body).await;
    assert_eq!(second["fee_cents"], 12000, "planned at the new fee");
    // The copied fee is what completion charges.
    expect_json(
        complete(app, t, &id(&first), json!({})).await,
        StatusCode::OK,
    )
    .await;
    let mut db = app.admin_db().await;
    let charge = entries(&mut db, &id(&first)).await;
    assert_eq!(charge.len(), 1);
    assert_eq!(lines(&mut db, &charge[0].0).await[0].2, 9500);
}

#[tokio::test]
async fn completing_locks_the_procedure() {
    let p = practice().await;
    let (app, t) = (&p.app, p.dentist.access.as_str());
    let filling = filling_code(app, &p.owner.access, 9500).await;
    let procedure = id(&chart(
        app,
        t,
        &p.patient,
        json!({"procedure_code_id": filling, "tooth": "36", "surfaces": ["O"], "note": "deep"}),
    )
    .await);
    let path = format!("/api/v2/procedures/{procedure}");
    // While planned it changes.
    let changed = expect_json(
        app.patch(
            &path,
            Some(t),
            json!({"surfaces": ["M", "O"], "fee_cents": 9000}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(changed["surfaces"], json!(["M", "O"]));
    assert_eq!(changed["fee_cents"], 9000);
    let res = complete(app, t, &procedure, json!({"completed_on": "2026-11-30"})).await;
    assert_eq!(res.headers()["etag"], "\"3\"");
    let done = expect_json(res, StatusCode::OK).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["completed_on"], "2026-11-30");
    assert_eq!(done["provider_id"], json!(p.dentist.user_id));
    assert_eq!(done["reversed"], false);
    for body in [
        json!({"note": "edited afterwards"}),
        json!({"fee_cents": 1}),
        json!({"status": "planned"}),
    ] {
        expect_problem(app.patch(&path, Some(t), body).await, StatusCode::CONFLICT).await;
    }
    let read = expect_json(app.get(&path, Some(t)).await, StatusCode::OK).await;
    assert_eq!(read, done, "nothing changed");
}

#[tokio::test]
async fn completing_a_procedure_twice_is_a_conflict() {
    let p = practice().await;
    let (app, t) = (&p.app, p.dentist.access.as_str());
    let exam = exam_code(app, &p.owner.access, 4500).await;
    let procedure = id(&chart(app, t, &p.patient, json!({"procedure_code_id": exam})).await);
    expect_json(
        complete(app, t, &procedure, json!({})).await,
        StatusCode::OK,
    )
    .await;
    expect_problem(
        complete(app, t, &procedure, json!({})).await,
        StatusCode::CONFLICT,
    )
    .await;
    // A date after today in the clinic is refused; one that is not charted.
    let later = id(&chart(app, t, &p.patient, json!({"procedure_code_id": exam})).await);
    expect_invalid(
        complete(app, t, &later, json!({"completed_on": "2099-01-01"})).await,
        "completed_on",
    )
    .await;
    let mut db = app.admin_db().await;
    assert_eq!(entries(&mut db, &procedure).await.len(), 1);
    assert!(entries(&mut db, &later).await.is_empty());
}

#[tokio::test]
async fn reversing_marks_the_procedure_once_and_only_a_completed_one() {
    let p = practice().await;
    let (app, t) = (&p.app, p.dentist.access.as_str());
    let exam = exam_code(app, &p.owner.access, 4500).await;
    let procedure = id(&chart(app, t, &p.patient, json!({"procedure_code_id": exam})).await);
    let reverse = format!("/api/v2/procedures/{procedure}/reverse");
    expect_problem(
        app.post(&reverse, Some(t), json!({"reason": "not done yet"}))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    expect_json(
        complete(app, t, &procedure, json!({})).await,
        StatusCode::OK,
    )
    .await;
    expect_invalid(
        app.post(&reverse, Some(t), json!({"reason": "  "})).await,
        "reason",
    )
    .await;
    let reversed = expect_json(
        app.post(
            &reverse,
            Some(t),
            json!({"reason": "charted on the wrong patient"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(reversed["reversed"], true);
    assert_eq!(reversed["status"], "completed", "nothing is deleted");
    assert_eq!(reversed["reversal_reason"], "charted on the wrong patient");
    assert_eq!(reversed["reversed_by"], json!(p.dentist.user_id));
    assert!(reversed["reversed_at"].is_string());
    expect_problem(
        app.post(&reverse, Some(t), json!({"reason": "again"}))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    let mut db = app.admin_db().await;
    assert_eq!(entries(&mut db, &procedure).await.len(), 2);
}

#[tokio::test]
async fn procedures_show_on_the_chart_under_their_tooth_or_the_whole_mouth() {
    let p = practice().await;
    let (app, t) = (&p.app, p.dentist.access.as_str());
    let exam = exam_code(app, &p.owner.access, 4500).await;
    let filling = filling_code(app, &p.owner.access, 9500).await;
    let on_tooth = chart(
        app,
        t,
        &p.patient,
        json!({"procedure_code_id": filling, "tooth": "36", "surfaces": ["O"]}),
    )
    .await;
    let whole = chart(app, t, &p.patient, json!({"procedure_code_id": exam})).await;
    let read_chart = |numbering: &'static str| {
        let path = format!("/api/v2/patients/{}/chart?numbering={numbering}", p.patient);
        async move { expect_json(app.get(&path, Some(t)).await, StatusCode::OK).await }
    };
    let fdi = read_chart("fdi").await;
    let teeth = fdi["teeth"].as_array().expect("teeth");
    assert_eq!(teeth.len(), 1);
    assert_eq!(teeth[0]["tooth"], "36");
    assert_eq!(teeth[0]["procedures"][0]["id"], on_tooth["id"]);
    assert_eq!(fdi["procedures"].as_array().expect("procedures").len(), 1);
    assert_eq!(fdi["procedures"][0]["id"], whole["id"]);
    let universal = read_chart("universal").await;
    assert_eq!(universal["teeth"][0]["tooth"], "19");
    assert_eq!(universal["teeth"][0]["procedures"][0]["tooth"], "19");
    // A reversed procedure leaves the chart (and stays in the list).
    expect_json(
        complete(app, t, &id(&whole), json!({})).await,
        StatusCode::OK,
    )
    .await;
    expect_json(
        app.post(
            &format!("/api/v2/procedures/{}/reverse", id(&whole)),
            Some(t),
            json!({"reason": "mistake"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let after = read_chart("fdi").await;
    assert!(after["procedures"]
        .as_array()
        .expect("procedures")
        .is_empty());
    let list = expect_json(
        app.get(
            &format!("/api/v2/patients/{}/procedures", p.patient),
            Some(t),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list["items"].as_array().expect("items").len(), 2);
}

#[tokio::test]
async fn completion_posts_one_balanced_charge_and_reversal_mirrors_it() {
    let p = practice().await;
    let (app, t) = (&p.app, p.dentist.access.as_str());
    let filling = filling_code(app, &p.owner.access, 9500).await;
    let procedure = id(&chart(
        app,
        t,
        &p.patient,
        json!({"procedure_code_id": filling, "tooth": "36", "surfaces": ["O"]}),
    )
    .await);
    let mut db = app.admin_db().await;
    assert!(
        entries(&mut db, &procedure).await.is_empty(),
        "planning charges nothing"
    );
    expect_json(
        complete(app, t, &procedure, json!({})).await,
        StatusCode::OK,
    )
    .await;
    let posted = entries(&mut db, &procedure).await;
    assert_eq!(posted.len(), 1);
    let (charge, kind, reverses) = &posted[0];
    assert_eq!((kind.as_str(), reverses), ("charge", &None));
    let patient = Some(p.patient.clone());
    assert_eq!(
        lines(&mut db, charge).await,
        vec![
            ("receivable".to_owned(), patient.clone(), 9500),
            ("revenue".to_owned(), None, -9500),
        ]
    );
    expect_json(
        app.post(
            &format!("/api/v2/procedures/{procedure}/reverse"),
            Some(t),
            json!({"reason": "wrong tooth"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let posted = entries(&mut db, &procedure).await;
    assert_eq!(posted.len(), 2);
    let (reversal, kind, reverses) = &posted[1];
    assert_eq!(kind, "reversal");
    assert_eq!(reverses.as_ref(), Some(charge));
    assert_eq!(
        lines(&mut db, reversal).await,
        vec![
            ("receivable".to_owned(), patient, -9500),
            ("revenue".to_owned(), None, 9500),
        ]
    );
    let balance: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(amount_cents), 0)::bigint FROM ledger_lines \
         WHERE account = 'receivable' AND patient_id = $1::uuid",
    )
    .bind(&p.patient)
    .fetch_one(&mut db)
    .await
    .expect("balance");
    assert_eq!(balance, 0, "the patient owes nothing after the reversal");
}

/// Runs `sql` as the server's role, scoped to `clinic`, and returns the SQLSTATE.
async fn refused(app: &TestApp, clinic: &str, sql: &str) -> Option<String> {
    let mut db = app.server_db().await;
    let mut tx = db.begin().await.expect("begin");
    sqlx::query("SELECT set_config('app.clinic_id', $1, true)")
        .bind(clinic)
        .execute(&mut *tx)
        .await
        .expect("scope");
    let err = sqlx::query(sql).execute(&mut *tx).await.expect_err(sql);
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

#[tokio::test]
async fn the_server_role_cannot_rewrite_the_journal_or_frozen_plans() {
    let p = practice().await;
    let (app, t) = (&p.app, p.dentist.access.as_str());
    let exam = exam_code(app, &p.owner.access, 4500).await;
    let procedure = id(&chart(app, t, &p.patient, json!({"procedure_code_id": exam})).await);
    let planned = id(&chart(app, t, &p.patient, json!({"procedure_code_id": exam})).await);
    expect_json(
        complete(app, t, &procedure, json!({})).await,
        StatusCode::OK,
    )
    .await;
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
    let clinic = &p.owner.clinic_id;
    for sql in [
        "UPDATE ledger_transactions SET memo = 'rewritten'",
        "DELETE FROM ledger_transactions",
        "UPDATE ledger_lines SET amount_cents = 1",
        "DELETE FROM ledger_lines",
        "UPDATE treatment_plan_versions SET total_cents = 0",
        "DELETE FROM treatment_plan_versions",
        "UPDATE treatment_plan_version_items SET fee_cents = 0",
        "UPDATE treatment_plan_decisions SET signed_by = 'Someone else'",
        "DELETE FROM treatment_plan_decisions",
    ] {
        assert_eq!(
            refused(app, clinic, sql).await.as_deref(),
            Some("42501"),
            "permission denied: {sql}"
        );
    }
    let version = expect_json(
        app.get(&format!("{plan_path}/versions/1"), Some(t)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(version["total_cents"], 4500);
    assert_eq!(version["decision"]["signed_by"], "Pat Ient");
    let mut db = app.admin_db().await;
    assert_eq!(entries(&mut db, &procedure).await.len(), 1);
}

#[tokio::test]
async fn an_unbalanced_journal_entry_is_refused_at_commit() {
    let p = practice().await;
    let clinic = &p.owner.clinic_id;
    let post = |lines: Vec<i64>| {
        let (app, patient) = (&p.app, p.patient.clone());
        async move {
            let mut db = app.server_db().await;
            let mut tx = db.begin().await.expect("begin");
            sqlx::query("SELECT set_config('app.clinic_id', $1, true)")
                .bind(clinic)
                .execute(&mut *tx)
                .await
                .expect("scope");
            let id = uuid::Uuid::now_v7();
            sqlx::query(
                "INSERT INTO ledger_transactions (clinic_id, id, kind, patient_id, memo) \
                 VALUES ($1::uuid, $2, 'adjustment', $3::uuid, 'by hand')",
            )
            .bind(clinic)
            .bind(id)
            .bind(&patient)
            .execute(&mut *tx)
            .await
            .expect("the entry is inserted");
            for (n, amount) in lines.iter().enumerate() {
                let (account, who) = if n == 0 {
                    ("receivable", Some(patient.clone()))
                } else {
                    ("adjustments", None)
                };
                sqlx::query(
                    "INSERT INTO ledger_lines (clinic_id, transaction_id, line_no, account, patient_id, amount_cents) \
                     VALUES ($1::uuid, $2, $3, $4, $5::uuid, $6)",
                )
                .bind(clinic)
                .bind(id)
                .bind(n as i16 + 1)
                .bind(account)
                .bind(who)
                .bind(amount)
                .execute(&mut *tx)
                .await
                .expect("each line is inserted");
            }
            tx.commit().await.map_err(|e| {
                e.as_database_error()
                    .and_then(|d| d.constraint().map(str::to_owned))
                    .unwrap_or_else(|| e.to_string())
            })
        }
    };
    assert_eq!(
        post(vec![500]).await,
        Err("ledger_transaction_balances".to_owned()),
        "one line"
    );
    assert_eq!(
        post(vec![500, -400]).await,
        Err("ledger_transaction_balances".to_owned()),
        "lines that do not sum to zero"
    );
    assert_eq!(
        post(vec![500, -500]).await,
        Ok(()),
        "a balanced entry commits"
    );
    let mut db = p.app.admin_db().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_transactions")
        .fetch_one(&mut db)
        .await
        .expect("count");
    assert_eq!(n, 1, "only the balanced entry is kept");
}

#[tokio::test]
async fn twenty_concurrent_completions_charge_exactly_once() {
    let p = practice().await;
    let exam = exam_code(&p.app, &p.owner.access, 4500).await;
    let procedure = id(&chart(
        &p.app,
        &p.dentist.access,
        &p.patient,
        json!({"procedure_code_id": exam}),
    )
    .await);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = p.app.client.clone();
        let url = p
            .app
            .url(&format!("/api/v2/procedures/{procedure}/complete"));
        let token = p.dentist.access.clone();
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&json!({}))
                .send()
                .await
                .expect("send")
                .status()
        }));
    }
    let (mut ok, mut conflicts) = (0, 0);
    for task in tasks {
        match task.await.expect("task") {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => conflicts += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, conflicts), (1, 19));
    let mut db = p.app.admin_db().await;
    let charges: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ledger_transactions WHERE procedure_id = $1::uuid AND kind = 'charge'",
    )
    .bind(&procedure)
    .fetch_one(&mut db)
    .await
    .expect("count");
    assert_eq!(charges, 1);
}

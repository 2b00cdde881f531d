//! The clinical record: odontogram entries in FDI and Universal numbering, voiding,
//! signed notes and addenda, and periodontal charts.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Clinic {
    app: TestApp,
    owner: Registered,
    dentist: Registered,
    patient: String,
}

async fn clinic() -> Clinic {
    let app = spawn().await;
    let owner = app.register_clinic("Clinical").await;
    let dentist = app.staff(&owner.access, "dentist").await;
    let patient = app.patient(&owner.access, "Pat", "Ient").await;
    Clinic {
        app,
        owner,
        dentist,
        patient,
    }
}

#[tokio::test]
async fn chart_entries_render_in_either_numbering_and_void_with_a_reason() {
    let c = clinic().await;
    let (app, t) = (&c.app, Some(c.dentist.access.as_str()));
    let entries = format!("/api/v2/patients/{}/chart/entries", c.patient);
    let res = app
        .post(
            &entries,
            t,
            json!({"tooth": "36", "surfaces": ["M", "O"], "condition": "caries", "note": "deep"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let caries: Value = res.json().await.expect("json");
    assert_eq!(caries["tooth"], "36");
    assert_eq!(caries["surfaces"], json!(["M", "O"]));
    // Universal 8 is FDI 11; F is an alias of B.
    let res = app
        .post(&entries, t, json!({"tooth": "8", "surfaces": ["F"], "condition": "filling", "numbering": "universal"}))
        .await;
    let filling: Value = res.json().await.expect("json");
    assert_eq!(filling["tooth_fdi"], "11");
    assert_eq!(filling["tooth"], "8");
    assert_eq!(filling["surfaces"], json!(["B"]));
    app.post(
        &entries,
        t,
        json!({"tooth": "K", "condition": "missing", "numbering": "universal"}),
    )
    .await;

    let chart: Value = app
        .get(
            &format!("/api/v2/patients/{}/chart?numbering=universal", c.patient),
            t,
        )
        .await
        .json()
        .await
        .expect("json");
    let teeth: Vec<&str> = chart["teeth"]
        .as_array()
        .expect("teeth")
        .iter()
        .map(|x| x["tooth"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        teeth,
        vec!["8", "19", "K"],
        "FDI order 11, 36, 75 rendered in Universal"
    );

    let void = format!(
        "/api/v2/chart-entries/{}/void",
        caries["id"].as_str().expect("id")
    );
    expect_problem(
        app.post(&void, t, json!({"reason": " "})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let res = app
        .post(&void, t, json!({"reason": "wrong tooth; was 46"}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let voided: Value = res.json().await.expect("json");
    assert_eq!(voided["void_reason"], "wrong tooth; was 46");
    expect_problem(
        app.post(&void, t, json!({"reason": "again"})).await,
        StatusCode::CONFLICT,
    )
    .await;
    let chart: Value = app
        .get(&format!("/api/v2/patients/{}/chart", c.patient), t)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(chart["teeth"].as_array().expect("teeth").len(), 2);
    let history: Value = app.get(&entries, t).await.json().await.expect("json");
    assert_eq!(
        history["items"].as_array().expect("items").len(),
        3,
        "voided entries stay in the history"
    );
    // The server's role cannot delete or rewrite an entry.
    let mut db = app.server_db().await;
    let mut tx = sqlx::Connection::begin(&mut db).await.expect("begin");
    sqlx::query("SELECT set_config('app.clinic_id', $1, true)")
        .bind(&c.owner.clinic_id)
        .execute(&mut *tx)
        .await
        .expect("scope");
    let err = sqlx::query("DELETE FROM chart_entries")
        .execute(&mut *tx)
        .await
        .expect_err("no delete");
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("42501")
    );
}

#[tokio::test]
async fn invalid_teeth_surfaces_and_conditions_are_422_naming_the_field() {
    let c = clinic().await;
    let (app, t) = (&c.app, Some(c.dentist.access.as_str()));
    let entries = format!("/api/v2/patients/{}/chart/entries", c.patient);
    for (body, field) in [
        (json!({"tooth": "19", "condition": "missing"}), "tooth"),
        (json!({"tooth": "86", "condition": "missing"}), "tooth"),
        (
            json!({"tooth": "33", "condition": "missing", "numbering": "universal"}),
            "tooth",
        ),
        (
            json!({"tooth": "U", "condition": "missing", "numbering": "universal"}),
            "tooth",
        ),
        (
            json!({"tooth": "11", "surfaces": ["O"], "condition": "caries"}),
            "surfaces",
        ),
        (
            json!({"tooth": "36", "surfaces": ["I"], "condition": "caries"}),
            "surfaces",
        ),
        (
            json!({"tooth": "36", "surfaces": ["X"], "condition": "caries"}),
            "surfaces",
        ),
        (json!({"tooth": "36", "condition": "caries"}), "surfaces"),
        (
            json!({"tooth": "36", "surfaces": ["O"], "condition": "missing"}),
            "surfaces",
        ),
        (json!({"tooth": "36", "condition": "cavity"}), "condition"),
        (
            json!({"tooth": "36", "condition": "watch", "numbering": "palmer"}),
            "numbering",
        ),
    ] {
        let problem = expect_problem(
            app.post(&entries, t, body.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
    }
    expect_problem(
        app.get(
            &format!("/api/v2/patients/{}/chart?numbering=palmer", c.patient),
            t,
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn notes_are_signed_by_the_right_people_and_then_never_change() {
    let c = clinic().await;
    let app = &c.app;
    let assistant = app.staff(&c.owner.access, "assistant").await;
    let hygienist = app.staff(&c.owner.access, "hygienist").await;
    let reception = app.staff(&c.owner.access, "receptionist").await;
    let notes = format!("/api/v2/patients/{}/notes", c.patient);

    expect_problem(
        app.post(&notes, Some(&reception.access), json!({"body": "x"}))
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    expect_problem(
        app.get(&notes, Some(&reception.access)).await,
        StatusCode::FORBIDDEN,
    )
    .await;

    let note: Value = app
        .post(
            &notes,
            Some(&assistant.access),
            json!({"body": "Pt reports sensitivity 36"}),
        )
        .await
        .json()
        .await
        .expect("json");
    let note_path = format!("/api/v2/notes/{}", note["id"].as_str().expect("id"));
    assert_eq!(note["author_id"], json!(assistant.user_id));
    let read: Value = app
        .get(&note_path, Some(&c.dentist.access))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(read["body"], "Pt reports sensitivity 36");
    expect_problem(
        app.get(&note_path, Some(&reception.access)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    // An assistant cannot sign, a hygienist cannot sign an assistant's note, a dentist can.
    expect_problem(
        app.post(
            &format!("{note_path}/sign"),
            Some(&assistant.access),
            json!({}),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    expect_problem(
        app.post(
            &format!("{note_path}/sign"),
            Some(&hygienist.access),
            json!({}),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    // The author may still edit it while unsigned; others may not.
    expect_problem(
        app.patch(
            &note_path,
            Some(&c.dentist.access),
            json!({"body": "rewritten"}),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    let edited = app
        .patch(
            &note_path,
            Some(&assistant.access),
            json!({"body": "Pt reports cold sensitivity 36"}),
        )
        .await;
    assert_eq!(edited.status(), StatusCode::OK);
    let signed = app
        .post(
            &format!("{note_path}/sign"),
            Some(&c.dentist.access),
            json!({}),
        )
        .await;
    assert_eq!(signed.status(), StatusCode::OK);
    let signed: Value = signed.json().await.expect("json");
    assert_eq!(signed["signed_by"], json!(c.dentist.user_id));
    assert!(signed["signed_at"].is_string());
    expect_problem(
        app.patch(
            &note_path,
            Some(&assistant.access),
            json!({"body": "changed"}),
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    expect_problem(
        app.post(
            &format!("{note_path}/sign"),
            Some(&c.dentist.access),
            json!({}),
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;

    // A correction is an addendum, itself signed.
    let addendum = app
        .post(
            &notes,
            Some(&c.dentist.access),
            json!({"body": "Correction: tooth 46, not 36", "addendum_to": note["id"]}),
        )
        .await;
    assert_eq!(addendum.status(), StatusCode::CREATED);
    let addendum: Value = addendum.json().await.expect("json");
    assert_eq!(addendum["addendum_to"], note["id"]);
    let a_path = format!(
        "/api/v2/notes/{}/sign",
        addendum["id"].as_str().expect("id")
    );
    assert_eq!(
        app.post(&a_path, Some(&c.dentist.access), json!({}))
            .await
            .status(),
        StatusCode::OK
    );
    // Addenda attach only to signed notes of the same patient.
    let draft: Value = app
        .post(&notes, Some(&hygienist.access), json!({"body": "draft"}))
        .await
        .json()
        .await
        .expect("json");
    expect_problem(
        app.post(
            &notes,
            Some(&hygienist.access),
            json!({"body": "fix", "addendum_to": draft["id"]}),
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    let other = app.patient(&c.owner.access, "Other", "Patient").await;
    let problem = expect_problem(
        app.post(
            &format!("/api/v2/patients/{other}/notes"),
            Some(&c.dentist.access),
            json!({"body": "x", "addendum_to": note["id"]}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "addendum_to");
    // A hygienist signs their own note; a dentist cannot sign it for them.
    let draft_sign = format!("/api/v2/notes/{}/sign", draft["id"].as_str().expect("id"));
    expect_problem(
        app.post(&draft_sign, Some(&c.dentist.access), json!({}))
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(
        app.post(&draft_sign, Some(&hygienist.access), json!({}))
            .await
            .status(),
        StatusCode::OK
    );

    // Owners read notes; the database itself refuses to change a signed note.
    let list: Value = app
        .get(&notes, Some(&c.owner.access))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["items"].as_array().expect("items").len(), 3);
    let mut db = app.server_db().await;
    let mut tx = sqlx::Connection::begin(&mut db).await.expect("begin");
    sqlx::query("SELECT set_config('app.clinic_id', $1, true)")
        .bind(&c.owner.clinic_id)
        .execute(&mut *tx)
        .await
        .expect("scope");
    let err =
        sqlx::query("UPDATE clinical_notes SET body = 'tampered' WHERE signed_at IS NOT NULL")
            .execute(&mut *tx)
            .await
            .expect_err("signed notes are immutable");
    assert!(err.to_string().contains("signed"), "{err}");
}

#[tokio::test]
async fn perio_exams_compute_attachment_loss_and_validate_every_site() {
    let c = clinic().await;
    let hygienist = c.app.staff(&c.owner.access, "hygienist").await;
    let path = format!("/api/v2/patients/{}/perio-exams", c.patient);
    let res = c
        .app
        .post(
            &path,
            Some(&hygienist.access),
            json!({
                "note": "annual",
                "teeth": [
                    {"tooth": "16", "mobility": 1, "furcation": 2, "sites": [
                        {"site": "MB", "probing_depth": 5, "recession": 2, "bleeding": true},
                        {"site": "B", "probing_depth": 3, "recession": -1},
                        {"site": "DB", "probing_depth": 4}
                    ]},
                    {"tooth": "11", "sites": [{"site": "L", "probing_depth": 2, "suppuration": true}]}
                ]
            }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let exam: Value = res.json().await.expect("json");
    assert_eq!(exam["teeth"][0]["tooth"], "11", "teeth in FDI order");
    let molar = &exam["teeth"][1];
    assert_eq!(molar["sites"][0]["clinical_attachment_loss"], 7);
    assert_eq!(molar["sites"][1]["clinical_attachment_loss"], 2);
    assert_eq!(molar["sites"][2]["clinical_attachment_loss"], 4);
    assert_eq!(molar["furcation"], 2);

    for (teeth, field) in [
        (
            json!([{"tooth": "16", "sites": [{"site": "MB", "probing_depth": 20}]}]),
            "teeth[0].sites[0].probing_depth",
        ),
        (
            json!([{"tooth": "16", "sites": [{"site": "MB", "probing_depth": -1}]}]),
            "teeth[0].sites[0].probing_depth",
        ),
        (
            json!([{"tooth": "16", "mobility": 4, "sites": [{"site": "MB", "probing_depth": 2}]}]),
            "teeth[0].mobility",
        ),
        (
            json!([{"tooth": "16", "furcation": 9, "sites": [{"site": "MB", "probing_depth": 2}]}]),
            "teeth[0].furcation",
        ),
        (
            json!([{"tooth": "16", "sites": [{"site": "XX", "probing_depth": 2}]}]),
            "teeth[0].sites[0].site",
        ),
        (
            json!([{"tooth": "16", "sites": [{"site": "MB", "probing_depth": 2}, {"site": "MB", "probing_depth": 3}]}]),
            "teeth[0].sites[1].site",
        ),
        (
            json!([{"tooth": "99", "sites": [{"site": "MB", "probing_depth": 2}]}]),
            "teeth[0].tooth",
        ),
        (json!([]), "teeth"),
    ] {
        let problem = expect_problem(
            c.app
                .post(&path, Some(&hygienist.access), json!({"teeth": teeth}))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert!(fields.contains(&field), "{field} not in {fields:?}");
    }
    let list: Value = c
        .app
        .get(&path, Some(&c.dentist.access))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["items"].as_array().expect("items").len(), 1);
    let reception = c.app.staff(&c.owner.access, "receptionist").await;
    expect_problem(
        c.app
            .post(
                &path,
                Some(&reception.access),
                json!({"teeth": [{"tooth": "16", "sites": [{"site": "MB", "probing_depth": 2}]}]}),
            )
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn every_clinical_read_is_audited_with_the_patient() {
    let c = clinic().await;
    let app = &c.app;
    for (path, action) in [
        (
            format!("/api/v2/patients/{}/chart", c.patient),
            "chart.read",
        ),
        (format!("/api/v2/patients/{}/notes", c.patient), "note.list"),
        (
            format!("/api/v2/patients/{}/perio-exams", c.patient),
            "perio.list",
        ),
    ] {
        let rid = format!("rid-{}", uuid::Uuid::new_v4().simple());
        let res = app
            .client
            .get(app.url(&path))
            .bearer_auth(&c.dentist.access)
            .header("x-request-id", &rid)
            .send()
            .await
            .expect("send");
        assert_eq!(res.status(), StatusCode::OK);
        let mut db = app.admin_db().await;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT action, patient_id::text FROM audit_events WHERE request_id = $1",
        )
        .bind(&rid)
        .fetch_all(&mut db)
        .await
        .expect("audit");
        assert_eq!(rows, vec![(action.to_owned(), c.patient.clone())], "{path}");
    }
}

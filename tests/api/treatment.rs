//! Treatment: the clinic's procedure catalogue and fee schedule (one by one and as a CSV
//! import, all or nothing), and another clinic's treatment ids in paths. Procedures, the
//! ledger, plans, recalls and the day sheet have modules of their own; the fixtures they
//! share are here.

use crate::common::*;
use reqwest::header::{CONTENT_TYPE, IF_MATCH};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

pub struct Practice {
    pub app: TestApp,
    pub owner: Registered,
    pub dentist: Registered,
    pub patient: String,
}

/// A clinic (Europe/Berlin) with its owner, a dentist and one patient.
pub async fn practice() -> Practice {
    let app = spawn().await;
    let owner = app.register_clinic("Treatment").await;
    let dentist = app.staff(&owner.access, "dentist").await;
    let patient = app.patient(&owner.access, "Pat", "Ient").await;
    Practice {
        app,
        owner,
        dentist,
        patient,
    }
}

/// Asserts the status (showing the body when it differs) and returns the JSON body.
pub async fn expect_json(res: Response, status: StatusCode) -> Value {
    let got = res.status();
    let text = res.text().await.unwrap_or_default();
    assert_eq!(got, status, "body: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// The fields a 422 names.
pub fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["field"].as_str().map(str::to_owned))
        .collect()
}

/// Asserts a 422 whose errors name `field`.
pub async fn expect_invalid(res: Response, field: &str) -> Value {
    let problem = expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(
        fields(&problem).iter().any(|f| f == field),
        "a 422 naming {field}: {problem}"
    );
    problem
}

pub fn id(v: &Value) -> String {
    v["id"].as_str().expect("an id").to_owned()
}

/// Adds a code to the catalogue (201) and returns it.
pub async fn code(app: &TestApp, token: &str, body: Value) -> Value {
    expect_json(
        app.post("/api/v2/procedure-codes", Some(token), body).await,
        StatusCode::CREATED,
    )
    .await
}

/// A code of the whole mouth (no tooth, no surfaces).
pub async fn exam_code(app: &TestApp, token: &str, fee: i64) -> String {
    id(&code(
        app,
        token,
        json!({"code": "X-EXAM", "description": "Periodic examination", "fee_cents": fee}),
    )
    .await)
}

/// A code that names a tooth and surfaces.
pub async fn filling_code(app: &TestApp, token: &str, fee: i64) -> String {
    id(&code(
        app,
        token,
        json!({"code": "X-FILL", "description": "Composite filling", "fee_cents": fee,
               "requires_tooth": true, "requires_surfaces": true}),
    )
    .await)
}

/// Charts a procedure for `patient` (201) and returns it.
pub async fn chart(app: &TestApp, token: &str, patient: &str, body: Value) -> Value {
    expect_json(
        app.post(
            &format!("/api/v2/patients/{patient}/procedures"),
            Some(token),
            body,
        )
        .await,
        StatusCode::CREATED,
    )
    .await
}

pub async fn complete(app: &TestApp, token: &str, procedure: &str, body: Value) -> Response {
    app.post(
        &format!("/api/v2/procedures/{procedure}/complete"),
        Some(token),
        body,
    )
    .await
}

/// A PATCH with `If-Match`.
pub async fn patch_if_match(
    app: &TestApp,
    path: &str,
    token: &str,
    etag: &str,
    body: Value,
) -> Response {
    app.client
        .patch(app.url(path))
        .bearer_auth(token)
        .header(IF_MATCH, etag)
        .json(&body)
        .send()
        .await
        .expect("request reaches the server")
}

/// Sends a fee schedule to the import.
pub async fn import(app: &TestApp, token: &str, content_type: &str, csv: &str) -> Response {
    app.client
        .post(app.url("/api/v2/procedure-codes/import"))
        .bearer_auth(token)
        .header(CONTENT_TYPE, content_type)
        .body(csv.to_owned())
        .send()
        .await
        .expect("request reaches the server")
}

/// The whole catalogue, by code.
pub async fn catalogue(app: &TestApp, token: &str) -> Vec<Value> {
    let page = expect_json(
        app.get("/api/v2/procedure-codes?limit=200", Some(token))
            .await,
        StatusCode::OK,
    )
    .await;
    page["items"].as_array().expect("items").clone()
}

fn by_code<'a>(codes: &'a [Value], code: &str) -> &'a Value {
    codes
        .iter()
        .find(|c| c["code"] == code)
        .unwrap_or_else(|| panic!("{code} is in the catalogue: {codes:?}"))
}

#[tokio::test]
async fn a_code_is_created_with_location_and_etag() {
    let p = practice().await;
    let res = p
        .app
        .post(
            "/api/v2/procedure-codes",
            Some(&p.owner.access),
            json!({"code": "X-FILL1", "description": "Composite filling, one surface",
                   "category": "Restorative", "fee_cents": 9500, "default_minutes": 30,
                   "requires_tooth": true, "requires_surfaces": true}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let location = res.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert_eq!(res.headers()["etag"], "\"1\"");
    let created: Value = res.json().await.expect("json");
    assert_eq!(
        location,
        format!("/api/v2/procedure-codes/{}", id(&created))
    );
    assert_eq!(created["system"], "local", "local by default");
    assert_eq!(created["active"], true);
    assert_eq!(created["version"], 1);
    assert_eq!(created["fee_cents"], 9500);
    let read = expect_json(
        p.app.get(&location, Some(&p.dentist.access)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(read, created);
}

#[tokio::test]
async fn a_code_that_exists_already_in_the_clinic_is_a_conflict() {
    let p = practice().await;
    exam_code(&p.app, &p.owner.access, 4500).await;
    expect_problem(
        p.app
            .post(
                "/api/v2/procedure-codes",
                Some(&p.owner.access),
                json!({"code": "X-EXAM", "description": "Again", "fee_cents": 1}),
            )
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    // Another clinic may use the same code.
    let other = p.app.register_clinic("Other").await;
    exam_code(&p.app, &other.access, 5000).await;
}

#[tokio::test]
async fn a_code_changes_under_if_match_and_a_stale_tag_is_412() {
    let p = practice().await;
    let (app, t) = (&p.app, p.owner.access.as_str());
    let exam = exam_code(app, t, 4500).await;
    let filling = filling_code(app, t, 9500).await;
    let path = format!("/api/v2/procedure-codes/{exam}");
    let res = patch_if_match(app, &path, t, "\"1\"", json!({"fee_cents": 4800})).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["etag"], "\"2\"");
    let changed: Value = res.json().await.expect("json");
    assert_eq!(changed["fee_cents"], 4800);
    assert_eq!(
        changed["description"], "Periodic examination",
        "absent stays"
    );
    assert_eq!(changed["version"], 2);
    expect_problem(
        patch_if_match(app, &path, t, "\"1\"", json!({"fee_cents": 1})).await,
        StatusCode::PRECONDITION_FAILED,
    )
    .await;
    // Renaming onto another code of the clinic is a conflict too.
    expect_problem(
        app.patch(
            &format!("/api/v2/procedure-codes/{filling}"),
            Some(t),
            json!({"code": "X-EXAM"}),
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    let read = expect_json(app.get(&path, Some(t)).await, StatusCode::OK).await;
    assert_eq!(read["fee_cents"], 4800, "the 412 changed nothing");
}

#[tokio::test]
async fn surfaces_without_a_tooth_are_422() {
    let p = practice().await;
    let (app, t) = (&p.app, p.owner.access.as_str());
    expect_invalid(
        app.post(
            "/api/v2/procedure-codes",
            Some(t),
            json!({"code": "X-ODD", "description": "Surfaces of no tooth", "fee_cents": 100,
                   "requires_surfaces": true}),
        )
        .await,
        "requires_surfaces",
    )
    .await;
    let filling = filling_code(app, t, 9500).await;
    expect_invalid(
        app.patch(
            &format!("/api/v2/procedure-codes/{filling}"),
            Some(t),
            json!({"requires_tooth": false}),
        )
        .await,
        "requires_surfaces",
    )
    .await;
    expect_invalid(
        app.post(
            "/api/v2/procedure-codes",
            Some(t),
            json!({"code": "X-NEG", "description": "Negative", "fee_cents": -1}),
        )
        .await,
        "fee_cents",
    )
    .await;
    assert_eq!(catalogue(app, t).await.len(), 1);
}

#[tokio::test]
async fn only_owners_and_admins_manage_the_catalogue_but_every_role_reads_it() {
    let p = practice().await;
    let app = &p.app;
    let exam = exam_code(app, &p.owner.access, 4500).await;
    let reception = app.staff(&p.owner.access, "receptionist").await;
    let admin = app.staff(&p.owner.access, "admin").await;
    for who in [&p.dentist, &reception] {
        let t = Some(who.access.as_str());
        expect_problem(
            app.post(
                "/api/v2/procedure-codes",
                t,
                json!({"code": "X-MINE", "description": "Mine", "fee_cents": 1}),
            )
            .await,
            StatusCode::FORBIDDEN,
        )
        .await;
        expect_problem(
            app.patch(
                &format!("/api/v2/procedure-codes/{exam}"),
                t,
                json!({"fee_cents": 1}),
            )
            .await,
            StatusCode::FORBIDDEN,
        )
        .await;
        expect_problem(
            import(
                app,
                &who.access,
                "text/csv",
                "code,description,fee_cents\nX-MINE,Mine,1\n",
            )
            .await,
            StatusCode::FORBIDDEN,
        )
        .await;
        let codes = catalogue(app, &who.access).await;
        assert_eq!(codes.len(), 1);
        assert_eq!(codes[0]["fee_cents"], 4500, "fees are quoted at the desk");
    }
    code(
        app,
        &admin.access,
        json!({"code": "X-ADMIN", "description": "By the admin", "fee_cents": 1}),
    )
    .await;
    assert_eq!(catalogue(app, &p.owner.access).await.len(), 2);
}

#[tokio::test]
async fn an_import_creates_and_updates_by_code() {
    let p = practice().await;
    let (app, t) = (&p.app, p.owner.access.as_str());
    code(
        app,
        t,
        json!({"code": "X-EXAM", "description": "Exam", "category": "Diagnostic",
               "fee_cents": 4500, "default_minutes": 20}),
    )
    .await;
    let res = import(
        app,
        t,
        "text/csv; charset=utf-8",
        "code,description,fee_cents,category\nX-EXAM,Periodic examination,5000,Diagnostic\nX-CLEAN,Scale and polish,6500,Preventive\n",
    )
    .await;
    let result = expect_json(res, StatusCode::OK).await;
    assert_eq!(result, json!({"created": 1, "updated": 1}));
    let codes = catalogue(app, t).await;
    assert_eq!(codes.len(), 2);
    let exam = by_code(&codes, "X-EXAM");
    assert_eq!(exam["fee_cents"], 5000);
    assert_eq!(exam["description"], "Periodic examination");
    assert_eq!(exam["version"], 2);
    let clean = by_code(&codes, "X-CLEAN");
    assert_eq!(clean["fee_cents"], 6500);
    assert_eq!(clean["category"], "Preventive");
    assert_eq!(clean["system"], "local");
    assert_eq!(clean["active"], true);
}

#[tokio::test]
async fn columns_an_import_leaves_out_keep_their_values() {
    let p = practice().await;
    let (app, t) = (&p.app, p.owner.access.as_str());
    code(
        app,
        t,
        json!({"code": "X-FILL", "system": "LOCAL2", "description": "Filling",
               "category": "Restorative", "fee_cents": 9500, "default_minutes": 30,
               "requires_tooth": true, "requires_surfaces": true, "active": false}),
    )
    .await;
    let res = import(
        app,
        t,
        "text/csv",
        "code,description,fee_cents\nX-FILL,Composite filling,9900\n",
    )
    .await;
    assert_eq!(
        expect_json(res, StatusCode::OK).await,
        json!({"created": 0, "updated": 1})
    );
    let codes = catalogue(app, t).await;
    let filling = by_code(&codes, "X-FILL");
    assert_eq!(filling["fee_cents"], 9900);
    assert_eq!(filling["description"], "Composite filling");
    assert_eq!(filling["system"], "LOCAL2");
    assert_eq!(filling["category"], "Restorative");
    assert_eq!(filling["default_minutes"], 30);
    assert_eq!(filling["requires_tooth"], true);
    assert_eq!(filling["requires_surfaces"], true);
    assert_eq!(filling["active"], false);
}

#[tokio::test]
async fn a_bad_line_fails_the_whole_import_and_nothing_is_written() {
    let p = practice().await;
    let (app, t) = (&p.app, p.owner.access.as_str());
    exam_code(app, t, 4500).await;
    let before = catalogue(app, t).await;
    let csv = "code,description,fee_cents,requires_tooth,requires_surfaces\n\
               X-EXAM,Exam,5000,,\n\
               X-BAD,Bad fee,abc,,\n\
               X-OK,Fine,100,,\n\
               X-NEG,Negative,-5,,\n\
               X-ODD,Surfaces of no tooth,100,false,true\n";
    let problem = expect_problem(
        import(app, t, "text/csv", csv).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        fields(&problem),
        vec![
            "line 3: fee_cents",
            "line 5: fee_cents",
            "line 6: requires_surfaces"
        ],
        "{problem}"
    );
    assert!(problem["errors"][0]["message"].is_string());
    assert_eq!(catalogue(app, t).await, before, "nothing was written");

    // A line with the wrong number of fields, and a code twice, are refused the same way.
    for (csv, field) in [
        (
            "code,description,fee_cents\nX-OK,Fine,100\nX-SHORT,Short\n",
            "line 3",
        ),
        (
            "code,description,fee_cents\nX-OK,Fine,100\nX-OK,Again,200\n",
            "line 3: code",
        ),
        ("code,price\nX-OK,100\n", "line 1: description"),
    ] {
        expect_invalid(import(app, t, "text/csv", csv).await, field).await;
    }
    assert_eq!(catalogue(app, t).await, before, "nothing was written");
}

#[tokio::test]
async fn an_import_must_be_sent_as_csv() {
    let p = practice().await;
    let (app, t) = (&p.app, p.owner.access.as_str());
    let csv = "code,description,fee_cents\nX-OK,Fine,100\n";
    for content_type in ["application/json", "text/plain", "multipart/form-data"] {
        expect_problem(
            import(app, t, content_type, csv).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        )
        .await;
    }
    assert!(catalogue(app, t).await.is_empty());
}

#[tokio::test]
async fn ten_thousand_lines_import_in_one_request() {
    let p = practice().await;
    let (app, t) = (&p.app, p.owner.access.as_str());
    let mut csv = String::from("code,description,fee_cents\n");
    for i in 0..10_000 {
        csv.push_str(&format!("L{i:05},Item {i},{}\n", 100 + i));
    }
    assert!(csv.len() < 1024 * 1024, "under the body limit");
    let res = import(app, t, "text/csv", &csv).await;
    assert_eq!(
        expect_json(res, StatusCode::OK).await,
        json!({"created": 10_000, "updated": 0})
    );
    let mut db = app.admin_db().await;
    let (n, sum): (i64, i64) = sqlx::query_as(
        "SELECT count(*), sum(fee_cents)::bigint FROM procedure_codes WHERE clinic_id = $1::uuid",
    )
    .bind(&p.owner.clinic_id)
    .fetch_one(&mut db)
    .await
    .expect("count");
    assert_eq!(n, 10_000);
    assert_eq!(sum, (0..10_000).map(|i| 100 + i).sum::<i64>());
    // Importing it again updates every one.
    let res = import(app, t, "text/csv", &csv).await;
    assert_eq!(
        expect_json(res, StatusCode::OK).await,
        json!({"created": 0, "updated": 10_000})
    );
    let page = expect_json(
        app.get("/api/v2/procedure-codes?limit=200", Some(t)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["items"].as_array().expect("items").len(), 200);
    assert_eq!(page["items"][0]["code"], "L00000");
    assert!(page["next_cursor"].is_string());
}

/// The example fee schedule shipped in the documentation: made-up local codes only.
const EXAMPLE: &str = include_str!("../../docs/examples/fee-schedule.csv");

#[tokio::test]
async fn the_example_fee_schedule_imports() {
    let p = practice().await;
    let (app, t) = (&p.app, p.owner.access.as_str());
    let lines = EXAMPLE.lines().filter(|l| !l.trim().is_empty()).count() - 1;
    assert!(lines >= 5, "the example has codes");
    let res = import(app, t, "text/csv", EXAMPLE).await;
    assert_eq!(
        expect_json(res, StatusCode::OK).await,
        json!({"created": lines, "updated": 0})
    );
    let codes = catalogue(app, t).await;
    assert_eq!(codes.len(), lines);
    assert!(
        codes.iter().all(|c| c["system"] == "local"),
        "local codes only"
    );
    let filling = by_code(&codes, "X-FILL1");
    assert_eq!(filling["description"], "Composite filling, one surface");
    assert_eq!(filling["fee_cents"], 9500);
    assert_eq!(filling["requires_tooth"], true);
    assert_eq!(filling["requires_surfaces"], true);
    // The example charts: a filling on a molar's occlusal surface.
    let procedure = chart(
        app,
        t,
        &p.patient,
        json!({"procedure_code_id": filling["id"], "tooth": "36", "surfaces": ["O"]}),
    )
    .await;
    assert_eq!(procedure["fee_cents"], 9500);
    let res = import(app, t, "text/csv", EXAMPLE).await;
    assert_eq!(
        expect_json(res, StatusCode::OK).await,
        json!({"created": 0, "updated": lines})
    );
}

#[tokio::test]
async fn another_clinics_codes_procedures_plans_and_recall_types_are_404() {
    let p = practice().await;
    let app = &p.app;
    // Clinic B's resources.
    let b = app.register_clinic("Beta").await;
    let b_patient = app.patient(&b.access, "Bea", "Beta").await;
    let b_code = exam_code(app, &b.access, 4500).await;
    let b_procedure = id(&chart(
        app,
        &b.access,
        &b_patient,
        json!({"procedure_code_id": b_code}),
    )
    .await);
    let b_plan = expect_json(
        app.post(
            &format!("/api/v2/patients/{b_patient}/treatment-plans"),
            Some(&b.access),
            json!({"title": "B's plan", "items": [{"procedure_id": b_procedure}]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let b_plan = id(&b_plan);
    expect_json(
        app.post(
            &format!("/api/v2/treatment-plans/{b_plan}/present"),
            Some(&b.access),
            json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let b_recall = id(&expect_json(
        app.post(
            "/api/v2/recall-types",
            Some(&b.access),
            json!({"name": "Check-up", "interval_months": 6, "trigger_procedure_code_ids": [b_code]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await);

    // Clinic A (whose owner is a provider) asks for them.
    let t = Some(p.owner.access.as_str());
    for res in [
        app.get(&format!("/api/v2/procedure-codes/{b_code}"), t)
            .await,
        app.patch(
            &format!("/api/v2/procedure-codes/{b_code}"),
            t,
            json!({"fee_cents": 1}),
        )
        .await,
        app.get(&format!("/api/v2/procedures/{b_procedure}"), t)
            .await,
        app.patch(
            &format!("/api/v2/procedures/{b_procedure}"),
            t,
            json!({"fee_cents": 1}),
        )
        .await,
        complete(app, &p.owner.access, &b_procedure, json!({})).await,
        app.post(
            &format!("/api/v2/procedures/{b_procedure}/reverse"),
            t,
            json!({"reason": "x"}),
        )
        .await,
        app.get(&format!("/api/v2/treatment-plans/{b_plan}"), t)
            .await,
        app.get(&format!("/api/v2/treatment-plans/{b_plan}/versions/1"), t)
            .await,
        app.post(
            &format!("/api/v2/treatment-plans/{b_plan}/accept"),
            t,
            json!({"signed_by": "Mallory"}),
        )
        .await,
        app.post(
            &format!("/api/v2/treatment-plans/{b_plan}/revise"),
            t,
            json!({"reason": "x"}),
        )
        .await,
        app.patch(
            &format!("/api/v2/recall-types/{b_recall}"),
            t,
            json!({"interval_months": 1}),
        )
        .await,
    ] {
        let url = res.url().path().to_owned();
        let problem = expect_problem(res, StatusCode::NOT_FOUND).await;
        assert!(
            !problem.to_string().contains("Beta") && !problem.to_string().contains("B's plan"),
            "{url}: {problem}"
        );
    }
    // B's things are as they were.
    let plan = expect_json(
        app.get(
            &format!("/api/v2/treatment-plans/{b_plan}"),
            Some(&b.access),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(plan["status"], "presented");
    let procedure = expect_json(
        app.get(
            &format!("/api/v2/procedures/{b_procedure}"),
            Some(&b.access),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(procedure["status"], "planned");
    assert_eq!(procedure["fee_cents"], 4500);
}

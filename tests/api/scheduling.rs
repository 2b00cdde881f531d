//! Scheduling that cannot double-book: overlap kinds, concurrency, status machine,
//! working hours across daylight-saving changes, availability, and tenancy.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Practice {
    app: TestApp,
    owner: Registered,
    dentist: Registered,
    hygienist: Registered,
    op1: String,
    op2: String,
}

async fn operatory(app: &TestApp, token: &str, name: &str) -> String {
    let res = app
        .post("/api/v2/operatories", Some(token), json!({"name": name}))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

async fn all_week(app: &TestApp, token: &str, provider: &str) {
    let weekly: Vec<Value> = (1..=7)
        .map(|d| json!({"weekday": d, "start": "07:00", "end": "20:00"}))
        .collect();
    let res = app
        .call(
            reqwest::Method::PUT,
            &format!("/api/v2/providers/{provider}/working-hours"),
            Some(token),
            Some(json!({"weekly": weekly})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK, "{:?}", res.text().await);
}

async fn practice() -> Practice {
    let app = spawn().await;
    let owner = app.register_clinic("Schedule").await;
    let dentist = app.staff(&owner.access, "dentist").await;
    let hygienist = app.staff(&owner.access, "hygienist").await;
    let op1 = operatory(&app, &owner.access, "Chair 1").await;
    let op2 = operatory(&app, &owner.access, "Chair 2").await;
    all_week(&app, &owner.access, &dentist.user_id).await;
    all_week(&app, &owner.access, &hygienist.user_id).await;
    Practice {
        app,
        owner,
        dentist,
        hygienist,
        op1,
        op2,
    }
}

fn booking(patient: &str, provider: &str, operatory: &str, start: &str, end: &str) -> Value {
    json!({"patient_id": patient, "provider_id": provider, "operatory_id": operatory, "start_at": start, "end_at": end})
}

#[tokio::test]
async fn each_kind_of_overlap_is_a_conflict_and_back_to_back_is_fine() {
    let p = practice().await;
    let (app, t) = (&p.app, Some(p.owner.access.as_str()));
    let ann = app.patient(&p.owner.access, "Ann", "One").await;
    let bob = app.patient(&p.owner.access, "Bob", "Two").await;
    let res = app
        .post(
            "/api/v2/appointments",
            t,
            booking(
                &ann,
                &p.dentist.user_id,
                &p.op1,
                "2027-02-01T09:00:00Z",
                "2027-02-01T10:00:00Z",
            ),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(res.headers().contains_key("location"));
    let first: Value = res.json().await.expect("json");

    for (body, resource) in [
        (
            booking(
                &bob,
                &p.dentist.user_id,
                &p.op2,
                "2027-02-01T09:30:00Z",
                "2027-02-01T10:30:00Z",
            ),
            "provider",
        ),
        (
            booking(
                &bob,
                &p.hygienist.user_id,
                &p.op1,
                "2027-02-01T08:30:00Z",
                "2027-02-01T09:01:00Z",
            ),
            "operatory",
        ),
        (
            booking(
                &ann,
                &p.hygienist.user_id,
                &p.op2,
                "2027-02-01T09:59:00Z",
                "2027-02-01T10:30:00Z",
            ),
            "patient",
        ),
    ] {
        let problem = expect_problem(
            app.post("/api/v2/appointments", t, body).await,
            StatusCode::CONFLICT,
        )
        .await;
        let conflicts = problem["conflicts"].as_array().expect("conflicts");
        assert_eq!(conflicts.len(), 1, "{problem}");
        assert_eq!(conflicts[0]["resource"], resource);
        assert_eq!(conflicts[0]["appointment_id"], first["id"]);
        assert_eq!(conflicts[0]["start_at"], "2027-02-01T09:00:00Z");
    }
    // Each refused booking is a failed action in the audit trail.
    let mut db = app.admin_db().await;
    let failed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'appointment.create' AND outcome = 'failure'",
    )
    .fetch_one(&mut db)
    .await
    .expect("audit");
    assert_eq!(failed, 3);
    // Half-open intervals: ending at 09:00 or starting at 10:00 touches nothing.
    for (start, end) in [
        ("2027-02-01T08:00:00Z", "2027-02-01T09:00:00Z"),
        ("2027-02-01T10:00:00Z", "2027-02-01T11:00:00Z"),
    ] {
        let res = app
            .post(
                "/api/v2/appointments",
                t,
                booking(&ann, &p.dentist.user_id, &p.op1, start, end),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "{start}");
    }
}

#[tokio::test]
async fn twenty_concurrent_bookings_of_one_slot_have_exactly_one_winner() {
    let p = practice().await;
    let mut patients = Vec::new();
    for i in 0..20 {
        patients.push(
            p.app
                .patient(&p.owner.access, &format!("C{i}"), "Oncurrent")
                .await,
        );
    }
    let mut tasks = Vec::new();
    for patient in patients {
        let client = p.app.client.clone();
        let url = p.app.url("/api/v2/appointments");
        let token = p.owner.access.clone();
        let body = booking(
            &patient,
            &p.dentist.user_id,
            &p.op1,
            "2027-02-02T09:00:00Z",
            "2027-02-02T09:30:00Z",
        );
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("send")
                .status()
        }));
    }
    let mut created = 0;
    let mut conflicts = 0;
    for t in tasks {
        match t.await.expect("task") {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => conflicts += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((created, conflicts), (1, 19));
}

#[tokio::test]
async fn the_status_machine_allows_only_its_transitions_and_keeps_history() {
    let p = practice().await;
    let (app, t) = (&p.app, Some(p.owner.access.as_str()));
    let pat = app.patient(&p.owner.access, "Stat", "Us").await;
    let a: Value = app
        .post(
            "/api/v2/appointments",
            t,
            booking(
                &pat,
                &p.dentist.user_id,
                &p.op1,
                "2027-02-03T09:00:00Z",
                "2027-02-03T09:30:00Z",
            ),
        )
        .await
        .json()
        .await
        .expect("json");
    let status = format!(
        "/api/v2/appointments/{}/status",
        a["id"].as_str().expect("id")
    );
    let set = |s: &str| {
        app.post(
            &status,
            t,
            json!({"status": s, "reason": format!("to {s}")}),
        )
    };
    expect_problem(set("completed").await, StatusCode::CONFLICT).await;
    expect_problem(set("in_chair").await, StatusCode::CONFLICT).await;
    let problem = expect_problem(set("teleported").await, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["errors"][0]["field"], "status");
    for s in ["confirmed", "arrived", "in_chair", "completed"] {
        assert_eq!(set(s).await.status(), StatusCode::OK, "{s}");
    }
    for s in ["cancelled", "no_show", "scheduled", "arrived"] {
        expect_problem(set(s).await, StatusCode::CONFLICT).await;
    }
    // A completed appointment can no longer be moved.
    let path = format!("/api/v2/appointments/{}", a["id"].as_str().expect("id"));
    expect_problem(
        app.patch(
            &path,
            t,
            json!({"start_at": "2027-02-03T11:00:00Z", "end_at": "2027-02-03T11:30:00Z"}),
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    let history: Value = app
        .get(&format!("{path}/history"), t)
        .await
        .json()
        .await
        .expect("json");
    let kinds: Vec<String> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|h| {
            format!(
                "{}:{}",
                h["kind"].as_str().unwrap_or(""),
                h["to_status"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "created:scheduled",
            "status:confirmed",
            "status:arrived",
            "status:in_chair",
            "status:completed"
        ]
    );
    assert_eq!(history["items"][1]["reason"], "to confirmed");
    assert_eq!(history["items"][1]["changed_by"], json!(p.owner.user_id));
}

#[tokio::test]
async fn cancelled_and_no_show_appointments_free_their_slot() {
    let p = practice().await;
    let (app, t) = (&p.app, Some(p.owner.access.as_str()));
    let pat = app.patient(&p.owner.access, "Free", "Slot").await;
    let other = app.patient(&p.owner.access, "Other", "Patient").await;
    for (i, status) in ["cancelled", "no_show"].iter().enumerate() {
        let start = format!("2027-02-04T{:02}:00:00Z", 9 + i);
        let end = format!("2027-02-04T{:02}:30:00Z", 9 + i);
        let a: Value = app
            .post(
                "/api/v2/appointments",
                t,
                booking(&pat, &p.dentist.user_id, &p.op1, &start, &end),
            )
            .await
            .json()
            .await
            .expect("json");
        expect_problem(
            app.post(
                "/api/v2/appointments",
                t,
                booking(&other, &p.dentist.user_id, &p.op1, &start, &end),
            )
            .await,
            StatusCode::CONFLICT,
        )
        .await;
        let res = app
            .post(
                &format!(
                    "/api/v2/appointments/{}/status",
                    a["id"].as_str().expect("id")
                ),
                t,
                json!({"status": status}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let res = app
            .post(
                "/api/v2/appointments",
                t,
                booking(&other, &p.dentist.user_id, &p.op1, &start, &end),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "{status} frees the slot");
    }
}

#[tokio::test]
async fn outside_working_hours_needs_an_audited_override() {
    let p = practice().await;
    let (app, t) = (&p.app, Some(p.owner.access.as_str()));
    let pat = app.patient(&p.owner.access, "Late", "Night").await;
    // 22:00 in Berlin (21:00Z in winter) is after the 07:00–20:00 template.
    let late = booking(
        &pat,
        &p.dentist.user_id,
        &p.op1,
        "2027-02-05T21:00:00Z",
        "2027-02-05T21:30:00Z",
    );
    let problem = expect_problem(
        app.post("/api/v2/appointments", t, late.clone()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "start_at");
    let mut forced = late;
    forced["override"] = json!(true);
    let res = app.post("/api/v2/appointments", t, forced).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let a: Value = res.json().await.expect("json");
    assert_eq!(a["outside_hours"], true);
    let mut db = app.admin_db().await;
    let details: Value = sqlx::query_scalar("SELECT details FROM audit_events WHERE action = 'appointment.create' AND resource_id = $1::uuid")
        .bind(a["id"].as_str().expect("id"))
        .fetch_one(&mut db)
        .await
        .expect("audit");
    assert_eq!(details["override"], "outside_working_hours");
}

#[tokio::test]
async fn invalid_bookings_are_422_naming_the_field() {
    let p = practice().await;
    let (app, t) = (&p.app, Some(p.owner.access.as_str()));
    let pat = app.patient(&p.owner.access, "In", "Valid").await;
    let beta = app.register_clinic("Beta").await;
    let beta_patient = app.patient(&beta.access, "Beta", "Patient").await;
    let beta_dentist = app.staff(&beta.access, "dentist").await;
    let beta_op = operatory(app, &beta.access, "Beta chair").await;
    let desk = app.staff(&p.owner.access, "receptionist").await;
    let cases = [
        (
            booking(
                &pat,
                &p.dentist.user_id,
                &p.op1,
                "2027-02-06T10:00:00Z",
                "2027-02-06T09:00:00Z",
            ),
            "end_at",
        ),
        (
            booking(
                &pat,
                &p.dentist.user_id,
                &p.op1,
                "2027-02-06T08:00:00Z",
                "2027-02-06T19:00:00Z",
            ),
            "end_at",
        ),
        (
            booking(
                &beta_patient,
                &p.dentist.user_id,
                &p.op1,
                "2027-02-06T09:00:00Z",
                "2027-02-06T09:30:00Z",
            ),
            "patient_id",
        ),
        (
            booking(
                &pat,
                &beta_dentist.user_id,
                &p.op1,
                "2027-02-06T09:00:00Z",
                "2027-02-06T09:30:00Z",
            ),
            "provider_id",
        ),
        (
            booking(
                &pat,
                &p.dentist.user_id,
                &beta_op,
                "2027-02-06T09:00:00Z",
                "2027-02-06T09:30:00Z",
            ),
            "operatory_id",
        ),
        (
            booking(
                &pat,
                &desk.user_id,
                &p.op1,
                "2027-02-06T09:00:00Z",
                "2027-02-06T09:30:00Z",
            ),
            "provider_id",
        ),
        (
            json!({"patient_id": pat, "provider_id": p.dentist.user_id, "start_at": "2027-02-06T09:00:00Z", "end_at": "2027-02-06T09:30:00Z"}),
            "operatory_id",
        ),
    ];
    for (body, field) in cases {
        let problem = expect_problem(
            app.post("/api/v2/appointments", t, body.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
    }
    let problem = expect_problem(
        app.get(
            "/api/v2/appointments?from=2027-01-01T00:00:00Z&to=2027-06-01T00:00:00Z",
            t,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "to");
}

#[tokio::test]
async fn rescheduling_follows_the_same_rules_and_honours_if_match() {
    let p = practice().await;
    let (app, t) = (&p.app, Some(p.owner.access.as_str()));
    let a_pat = app.patient(&p.owner.access, "Re", "Schedule").await;
    let b_pat = app.patient(&p.owner.access, "Blo", "Cker").await;
    let a: Value = app
        .post(
            "/api/v2/appointments",
            t,
            booking(
                &a_pat,
                &p.dentist.user_id,
                &p.op1,
                "2027-02-08T09:00:00Z",
                "2027-02-08T09:30:00Z",
            ),
        )
        .await
        .json()
        .await
        .expect("json");
    let b: Value = app
        .post(
            "/api/v2/appointments",
            t,
            booking(
                &b_pat,
                &p.dentist.user_id,
                &p.op2,
                "2027-02-08T10:00:00Z",
                "2027-02-08T10:30:00Z",
            ),
        )
        .await
        .json()
        .await
        .expect("json");
    let path = format!("/api/v2/appointments/{}", a["id"].as_str().expect("id"));
    let problem = expect_problem(
        app.patch(
            &path,
            t,
            json!({"start_at": "2027-02-08T10:15:00Z", "end_at": "2027-02-08T10:45:00Z"}),
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(problem["conflicts"][0]["appointment_id"], b["id"]);
    let stale = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&p.owner.access)
        .header("if-match", "\"9\"")
        .json(&json!({"start_at": "2027-02-08T11:00:00Z", "end_at": "2027-02-08T11:30:00Z"}))
        .send()
        .await
        .expect("send");
    expect_problem(stale, StatusCode::PRECONDITION_FAILED).await;
    let ok = app.client.patch(app.url(&path)).bearer_auth(&p.owner.access).header("if-match", "\"1\"")
        .json(&json!({"start_at": "2027-02-08T11:00:00Z", "end_at": "2027-02-08T11:30:00Z", "operatory_id": p.op2})).send().await.expect("send");
    assert_eq!(ok.status(), StatusCode::OK);
    let moved: Value = ok.json().await.expect("json");
    assert_eq!(moved["start_at"], "2027-02-08T11:00:00Z");
    assert_eq!(moved["version"], 2);
    // `null` clears an optional field.
    let noted = app.patch(&path, t, json!({"notes": "bring x-rays"})).await;
    assert_eq!(
        noted.json::<Value>().await.expect("json")["notes"],
        "bring x-rays"
    );
    let cleared = app.patch(&path, t, json!({"notes": null})).await;
    assert_eq!(
        cleared.json::<Value>().await.expect("json")["notes"],
        Value::Null
    );
    // Moving onto its own old time is not a clash with itself.
    let back = app
        .patch(
            &path,
            t,
            json!({"start_at": "2027-02-08T11:15:00Z", "end_at": "2027-02-08T11:45:00Z"}),
        )
        .await;
    assert_eq!(back.status(), StatusCode::OK);
}

#[tokio::test]
async fn availability_follows_hours_bookings_and_the_operatory() {
    let p = practice().await;
    let (app, t) = (&p.app, Some(p.owner.access.as_str()));
    // Monday 2027-02-08 in Berlin (UTC+1): 09:00–11:00 local is 08:00–10:00Z.
    let res = app
        .call(reqwest::Method::PUT, &format!("/api/v2/providers/{}/working-hours", p.dentist.user_id), t,
              Some(json!({"weekly": [{"weekday": 1, "start": "09:00", "end": "11:00"}],
                          "exceptions": [{"date": "2027-02-15", "reason": "training"},
                                         {"date": "2027-02-22", "start": "10:00", "end": "10:30"}]})))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let slots = |date: &str, extra: &str| {
        let path = format!(
            "/api/v2/availability?provider_id={}&date={date}&duration_minutes=30{extra}",
            p.dentist.user_id
        );
        async move {
            let v: Value = app.get(&path, t).await.json().await.expect("json");
            v["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|s| s["start_at"].as_str().unwrap_or("").to_owned())
                .collect::<Vec<_>>()
        }
    };
    let before = slots("2027-02-08", "").await;
    assert_eq!(before.len(), 7, "{before:?}");
    assert_eq!(before[0], "2027-02-08T08:00:00Z");
    assert_eq!(before[6], "2027-02-08T09:30:00Z");
    let pat = app.patient(&p.owner.access, "Av", "Ail").await;
    let res = app
        .post(
            "/api/v2/appointments",
            t,
            booking(
                &pat,
                &p.dentist.user_id,
                &p.op1,
                "2027-02-08T08:30:00Z",
                "2027-02-08T09:00:00Z",
            ),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let after = slots("2027-02-08", "").await;
    assert_eq!(
        after,
        [
            "2027-02-08T08:00:00Z",
            "2027-02-08T09:00:00Z",
            "2027-02-08T09:15:00Z",
            "2027-02-08T09:30:00Z"
        ]
    );
    // The hygienist's booking in chair 2 matters only when chair 2 is asked for.
    let other = app.patient(&p.owner.access, "Op", "Two").await;
    app.post(
        "/api/v2/appointments",
        t,
        booking(
            &other,
            &p.hygienist.user_id,
            &p.op2,
            "2027-02-08T09:00:00Z",
            "2027-02-08T09:30:00Z",
        ),
    )
    .await;
    let with_op = slots("2027-02-08", &format!("&operatory_id={}", p.op2)).await;
    assert_eq!(with_op, ["2027-02-08T08:00:00Z", "2027-02-08T09:30:00Z"]);
    assert!(slots("2027-02-15", "").await.is_empty(), "a day off");
    assert_eq!(
        slots("2027-02-22", "").await,
        ["2027-02-22T09:00:00Z"],
        "replaced hours"
    );
    assert!(
        slots("2020-01-06", "").await.is_empty(),
        "only future starts"
    );
    expect_problem(
        app.get(
            &format!(
                "/api/v2/availability?provider_id={}&date=2027-02-08&duration_minutes=0",
                p.dentist.user_id
            ),
            t,
        )
        .await,
        // A query parameter outside its schema (5 to APPOINTMENT_MAX_MINUTES).
        StatusCode::BAD_REQUEST,
    )
    .await;
}

async fn clinic_in(app: &TestApp, tz: &str) -> (Registered, Registered) {
    let email = format!("tz-{}@example.test", uuid::Uuid::new_v4().simple());
    let res = app
        .post(
            "/api/v2/auth/register-clinic",
            None,
            json!({
                "clinic": {"name": tz, "timezone": tz, "currency": "USD"},
                "owner": {"email": email, "password": STRONG_PASSWORD, "full_name": "Tz Owner"}
            }),
        )
        .await;
    let body: Value = res.json().await.expect("json");
    let owner = Registered {
        clinic_id: body["clinic"]["id"].as_str().expect("id").to_owned(),
        user_id: body["user"]["id"].as_str().expect("id").to_owned(),
        email,
        access: body["tokens"]["access_token"]
            .as_str()
            .expect("t")
            .to_owned(),
        refresh: body["tokens"]["refresh_token"]
            .as_str()
            .expect("t")
            .to_owned(),
    };
    let dentist = app.staff(&owner.access, "dentist").await;
    let res = app
        .call(
            reqwest::Method::PUT,
            &format!("/api/v2/providers/{}/working-hours", dentist.user_id),
            Some(&owner.access),
            Some(json!({"weekly": [{"weekday": 1, "start": "09:00", "end": "10:00"}]})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    (owner, dentist)
}

#[tokio::test]
async fn working_hours_give_the_right_instants_across_daylight_saving() {
    let app = spawn().await;
    for (tz, before, after) in [
        // Berlin switches on 28 March 2027, New York on 14 March 2027.
        (
            "Europe/Berlin",
            ("2027-03-22", "2027-03-22T08:00:00Z"),
            ("2027-03-29", "2027-03-29T07:00:00Z"),
        ),
        (
            "America/New_York",
            ("2027-03-08", "2027-03-08T14:00:00Z"),
            ("2027-03-15", "2027-03-15T13:00:00Z"),
        ),
    ] {
        let (owner, dentist) = clinic_in(&app, tz).await;
        for (date, first) in [before, after] {
            let v: Value = app
                .get(
                    &format!(
                        "/api/v2/availability?provider_id={}&date={date}&duration_minutes=60",
                        dentist.user_id
                    ),
                    Some(&owner.access),
                )
                .await
                .json()
                .await
                .expect("json");
            assert_eq!(
                v["items"].as_array().expect("items").len(),
                1,
                "{tz} {date}: {v}"
            );
            assert_eq!(v["items"][0]["start_at"], first, "{tz} {date}");
        }
    }
}

#[tokio::test]
async fn another_clinics_scheduling_ids_are_404() {
    let p = practice().await;
    let beta = p.app.register_clinic("Beta").await;
    let beta_dentist = p.app.staff(&beta.access, "dentist").await;
    let beta_op = operatory(&p.app, &beta.access, "Beta chair").await;
    all_week(&p.app, &beta.access, &beta_dentist.user_id).await;
    let beta_pat = p.app.patient(&beta.access, "Beta", "Pat").await;
    let a: Value = p
        .app
        .post(
            "/api/v2/appointments",
            Some(&beta.access),
            booking(
                &beta_pat,
                &beta_dentist.user_id,
                &beta_op,
                "2027-02-09T09:00:00Z",
                "2027-02-09T09:30:00Z",
            ),
        )
        .await
        .json()
        .await
        .expect("json");
    let t = Some(p.owner.access.as_str());
    let path = format!("/api/v2/appointments/{}", a["id"].as_str().expect("id"));
    expect_problem(p.app.get(&path, t).await, StatusCode::NOT_FOUND).await;
    expect_problem(
        p.app.patch(&path, t, json!({"notes": "x"})).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_problem(
        p.app
            .post(&format!("{path}/status"), t, json!({"status": "cancelled"}))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_problem(
        p.app.get(&format!("{path}/history"), t).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_problem(
        p.app
            .patch(
                &format!("/api/v2/operatories/{beta_op}"),
                t,
                json!({"name": "Mine"}),
            )
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let hours = format!("/api/v2/providers/{}/working-hours", beta_dentist.user_id);
    expect_problem(p.app.get(&hours, t).await, StatusCode::NOT_FOUND).await;
    expect_problem(
        p.app
            .call(reqwest::Method::PUT, &hours, t, Some(json!({"weekly": []})))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let cal: Value = p
        .app
        .get(
            "/api/v2/appointments?from=2027-02-01T00:00:00Z&to=2027-03-01T00:00:00Z",
            t,
        )
        .await
        .json()
        .await
        .expect("json");
    assert!(cal["items"].as_array().expect("items").is_empty());
    let providers: Value = p
        .app
        .get("/api/v2/providers", t)
        .await
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = providers["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|x| x["id"].as_str())
        .collect();
    assert!(!ids.contains(&beta_dentist.user_id.as_str()));
    assert!(
        ids.contains(&p.dentist.user_id.as_str()) && ids.contains(&p.hygienist.user_id.as_str())
    );
}

#[tokio::test]
async fn a_retried_booking_with_the_same_idempotency_key_returns_the_first_booking() {
    let p = practice().await;
    let pat = p.app.patient(&p.owner.access, "Dou", "Ble").await;
    let body = booking(
        &pat,
        &p.dentist.user_id,
        &p.op1,
        "2027-02-10T09:00:00Z",
        "2027-02-10T09:30:00Z",
    );
    let send = || {
        p.app
            .client
            .post(p.app.url("/api/v2/appointments"))
            .bearer_auth(&p.owner.access)
            .header("idempotency-key", "booking-42")
            .json(&body)
            .send()
    };
    let first = send().await.expect("send");
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(first.headers()["etag"], "\"1\"");
    let first: Value = first.json().await.expect("json");
    let again = send().await.expect("send");
    assert_eq!(again.status(), StatusCode::CREATED, "a replay, not a 409");
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["id"], first["id"]);
    let cal: Value = p
        .app
        .get(
            "/api/v2/appointments?from=2027-02-10T00:00:00Z&to=2027-02-11T00:00:00Z",
            Some(&p.owner.access),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(cal["items"].as_array().expect("items").len(), 1);
}

#[tokio::test]
async fn a_date_both_off_and_with_hours_is_reported_once_wherever_it_stands() {
    let app = spawn().await;
    let (owner, dentist) = clinic_in(&app, "Europe/Berlin").await;
    let res = app
        .call(
            reqwest::Method::PUT,
            &format!("/api/v2/providers/{}/working-hours", dentist.user_id),
            Some(&owner.access),
            Some(json!({
                "weekly": [{"weekday": 1, "start": "09:00", "end": "10:00"}],
                "exceptions": [
                    {"date": "2027-12-24", "reason": "Christmas Eve"},
                    {"date": "2027-12-31", "reason": "New Year's Eve"},
                    {"date": "2027-12-24", "start": "09:00", "end": "12:00"}
                ]
            })),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = res.json().await.expect("problem");
    let clashes = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter(|e| e["message"] == "2027-12-24 is both a day off and has hours")
        .count();
    assert_eq!(clashes, 1, "{body}");
}

#[tokio::test]
async fn instants_beyond_what_the_database_stores_are_refused_not_failed() {
    let app = spawn().await;
    let owner = app.register_clinic("Far Future").await;
    // PostgreSQL holds 4713 BC to 294276 AD; chrono reads years far beyond both, and
    // RFC 3339 writes four-digit years only.
    for (from, to, status) in [
        (
            "-200000-01-01T00:00:00Z",
            "-200000-01-02T00:00:00Z",
            StatusCode::BAD_REQUEST,
        ),
        (
            "%2B290000-01-01T00:00:00Z",
            "%2B290000-01-02T00:00:00Z",
            StatusCode::BAD_REQUEST,
        ),
        (
            "0001-01-01T00:00:00Z",
            "0001-01-02T00:00:00Z",
            StatusCode::OK,
        ),
        (
            "9999-12-30T00:00:00Z",
            "9999-12-31T00:00:00Z",
            StatusCode::OK,
        ),
    ] {
        for path in [
            format!("/api/v2/appointments?from={from}&to={to}"),
            format!("/api/v2/audit-events?from={from}&to={to}"),
        ] {
            let res = app.get(&path, Some(&owner.access)).await;
            assert_eq!(res.status(), status, "{path}");
        }
    }
}

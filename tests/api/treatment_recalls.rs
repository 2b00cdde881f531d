//! Recalls (who is due, from their last completed trigger procedure) and the day sheet
//! (one local day of the clinic, 23 or 25 hours long across a DST change).

use crate::common::*;
use crate::treatment::*;
use chrono::{NaiveDate, SecondsFormat, TimeZone, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn recall_type(p: &Practice, triggers: &[&str]) -> String {
    id(&expect_json(
        p.app
            .post(
                "/api/v2/recall-types",
                Some(&p.owner.access),
                json!({"name": "Check-up", "interval_months": 6, "trigger_procedure_code_ids": triggers}),
            )
            .await,
        StatusCode::CREATED,
    )
    .await)
}

/// Charts a procedure of `code` as completed on `on`.
async fn done(p: &Practice, patient: &str, code: &str, on: &str) -> String {
    id(&chart(
        &p.app,
        &p.dentist.access,
        patient,
        json!({"procedure_code_id": code, "status": "completed", "completed_on": on}),
    )
    .await)
}

/// (patient, last_done_on, due_on, next_appointment_id) of each recall listed.
async fn recalls(p: &Practice, query: &str) -> Vec<(String, Value, String, Value)> {
    recalls_as(p, &p.owner.access, query).await
}

/// [`recalls`] as the holder of `token` sees them.
async fn recalls_as(p: &Practice, token: &str, query: &str) -> Vec<(String, Value, String, Value)> {
    let page = expect_json(
        p.app
            .get(&format!("/api/v2/recalls?{query}"), Some(token))
            .await,
        StatusCode::OK,
    )
    .await;
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| {
            (
                r["patient_id"].as_str().expect("patient").to_owned(),
                r["last_done_on"].clone(),
                r["due_on"].as_str().expect("due_on").to_owned(),
                r["next_appointment_id"].clone(),
            )
        })
        .collect()
}

async fn operatory(p: &Practice) -> String {
    id(&expect_json(
        p.app
            .post(
                "/api/v2/operatories",
                Some(&p.owner.access),
                json!({"name": "Chair 1"}),
            )
            .await,
        StatusCode::CREATED,
    )
    .await)
}

/// Books the dentist for `patient` from `start` to `end` (UTC), hours or not.
async fn book(p: &Practice, chair: &str, patient: &str, start: &str, end: &str) -> String {
    id(&expect_json(
        p.app
            .post(
                "/api/v2/appointments",
                Some(&p.owner.access),
                json!({"patient_id": patient, "provider_id": p.dentist.user_id, "operatory_id": chair,
                       "start_at": start, "end_at": end, "override": true}),
            )
            .await,
        StatusCode::CREATED,
    )
    .await)
}

async fn set_status(p: &Practice, appointment: &str, status: &str) {
    expect_json(
        p.app
            .post(
                &format!("/api/v2/appointments/{appointment}/status"),
                Some(&p.owner.access),
                json!({"status": status}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
}

async fn day_sheet(p: &Practice, date: &str) -> Value {
    expect_json(
        p.app
            .get(
                &format!("/api/v2/reports/day-sheet?date={date}"),
                Some(&p.owner.access),
            )
            .await,
        StatusCode::OK,
    )
    .await
}

/// A local time in Berlin (the test clinics' zone) as an RFC 3339 instant in UTC.
fn berlin(date: NaiveDate, h: u32, m: u32) -> String {
    chrono_tz::Europe::Berlin
        .from_local_datetime(&date.and_hms_opt(h, m, 0).expect("a time"))
        .single()
        .expect("an unambiguous local time")
        .with_timezone(&Utc)
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[tokio::test]
async fn a_patient_is_due_the_interval_after_their_last_trigger_procedure() {
    let p = practice().await;
    let exam = exam_code(&p.app, &p.owner.access, 4500).await;
    let filling = filling_code(&p.app, &p.owner.access, 9500).await;
    let kind = recall_type(&p, &[&exam]).await;
    let ann = p.patient.clone();
    let bob = p.app.patient(&p.owner.access, "Bob", "Month-End").await;
    let cas = p.app.patient(&p.owner.access, "Cas", "Reversed").await;
    let dee = p.app.patient(&p.owner.access, "Dee", "Never").await;
    let eve = p.app.patient(&p.owner.access, "Eve", "First-Visit").await;
    done(&p, &ann, &exam, "2025-06-01").await;
    done(&p, &ann, &exam, "2026-01-15").await;
    done(&p, &bob, &exam, "2025-08-31").await;
    done(&p, &cas, &exam, "2025-12-01").await;
    let mistake = done(&p, &cas, &exam, "2026-03-01").await;
    expect_json(
        p.app
            .post(
                &format!("/api/v2/procedures/{mistake}/reverse"),
                Some(&p.dentist.access),
                json!({"reason": "not done"}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    // Eve had a filling but never the check-up: due from that first visit.
    id(&chart(
        &p.app,
        &p.dentist.access,
        &eve,
        json!({"procedure_code_id": filling, "tooth": "36", "surfaces": ["O"],
               "status": "completed", "completed_on": "2026-02-01"}),
    )
    .await);

    let due = recalls(&p, &format!("due_before=2100-01-01&recall_type_id={kind}")).await;
    assert_eq!(
        due,
        vec![
            (eve.clone(), Value::Null, "2026-02-01".into(), Value::Null),
            (
                bob.clone(),
                json!("2025-08-31"),
                "2026-02-28".into(),
                Value::Null
            ),
            (
                cas.clone(),
                json!("2025-12-01"),
                "2026-06-01".into(),
                Value::Null
            ),
            (
                ann.clone(),
                json!("2026-01-15"),
                "2026-07-15".into(),
                Value::Null
            ),
        ],
        "Dee, never seen, is not due"
    );
    assert!(!due.iter().any(|r| r.0 == dee));
    let before = recalls(&p, "due_before=2026-07-15").await;
    assert!(
        !before.iter().any(|r| r.0 == ann),
        "due on the 15th, not before"
    );
    let by_16th = recalls(&p, "due_before=2026-07-16").await;
    assert!(by_16th.iter().any(|r| r.0 == ann));
}

#[tokio::test]
async fn a_future_booking_satisfies_the_recall() {
    let p = practice().await;
    let exam = exam_code(&p.app, &p.owner.access, 4500).await;
    recall_type(&p, &[&exam]).await;
    let chair = operatory(&p).await;
    let booked = p.patient.clone();
    let unbooked = p.app.patient(&p.owner.access, "Una", "Booked").await;
    done(&p, &booked, &exam, "2026-01-15").await;
    done(&p, &unbooked, &exam, "2026-01-20").await;
    let appointment = book(
        &p,
        &chair,
        &booked,
        "2030-01-07T09:00:00Z",
        "2030-01-07T09:30:00Z",
    )
    .await;
    let all = recalls(&p, "due_before=2100-01-01").await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].0, booked);
    assert_eq!(all[0].3, json!(appointment));
    assert_eq!(all[1].0, unbooked);
    assert_eq!(all[1].3, Value::Null);
    let open = recalls(&p, "due_before=2100-01-01&unscheduled_only=true").await;
    assert_eq!(
        open.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        vec![unbooked.clone()]
    );
    // A cancelled booking no longer satisfies it.
    set_status(&p, &appointment, "cancelled").await;
    let open = recalls(&p, "due_before=2100-01-01&unscheduled_only=true").await;
    assert_eq!(open.len(), 2);
}

#[tokio::test]
async fn a_restricted_patients_recall_is_left_out_for_clinicians_outside_the_care_team() {
    let p = practice().await;
    let exam = exam_code(&p.app, &p.owner.access, 4500).await;
    recall_type(&p, &[&exam]).await;
    let open = p.app.patient(&p.owner.access, "Open", "Record").await;
    done(&p, &p.patient, &exam, "2026-01-15").await;
    done(&p, &open, &exam, "2026-01-20").await;
    expect_json(
        p.app
            .patch(
                &format!("/api/v2/patients/{}", p.patient),
                Some(&p.owner.access),
                json!({"restricted": true, "care_team": [p.dentist.user_id]}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    let outsider = p.app.staff(&p.owner.access, "dentist").await;
    let front_desk = p.app.staff(&p.owner.access, "receptionist").await;
    let practice = &p;
    let listed = move |token: String| async move {
        recalls_as(practice, &token, "due_before=2100-01-01")
            .await
            .into_iter()
            .map(|r| (r.0, r.1))
            .collect::<Vec<_>>()
    };
    let restricted = (p.patient.clone(), json!("2026-01-15"));
    let unrestricted = (open.clone(), json!("2026-01-20"));
    // The care team and the front desk (who read procedures without clinical detail).
    for token in [p.dentist.access.clone(), front_desk.access.clone()] {
        assert_eq!(
            listed(token).await,
            vec![restricted.clone(), unrestricted.clone()]
        );
    }
    // A dentist outside the care team, and the owner (not on it either), see only the
    // patient whose record is open to them: the restricted one's date would tell when
    // the procedure was done.
    for token in [outsider.access.clone(), p.owner.access.clone()] {
        assert_eq!(listed(token).await, vec![unrestricted.clone()]);
    }
}

#[tokio::test]
async fn a_trigger_code_of_another_clinic_is_422() {
    let p = practice().await;
    let other = p.app.register_clinic("Other").await;
    let foreign = exam_code(&p.app, &other.access, 100).await;
    let exam = exam_code(&p.app, &p.owner.access, 4500).await;
    let t = Some(p.owner.access.as_str());
    expect_invalid(
        p.app
            .post(
                "/api/v2/recall-types",
                t,
                json!({"name": "Check-up", "interval_months": 6,
                       "trigger_procedure_code_ids": [exam, foreign]}),
            )
            .await,
        "trigger_procedure_code_ids[1]",
    )
    .await;
    expect_invalid(
        p.app
            .post(
                "/api/v2/recall-types",
                t,
                json!({"name": "Check-up", "interval_months": 0}),
            )
            .await,
        "interval_months",
    )
    .await;
    let kind = recall_type(&p, &[&exam]).await;
    expect_invalid(
        p.app
            .patch(
                &format!("/api/v2/recall-types/{kind}"),
                t,
                json!({"trigger_procedure_code_ids": [foreign]}),
            )
            .await,
        "trigger_procedure_code_ids[0]",
    )
    .await;
    let types = expect_json(p.app.get("/api/v2/recall-types", t).await, StatusCode::OK).await;
    assert_eq!(types["items"].as_array().expect("items").len(), 1);
    assert_eq!(
        types["items"][0]["trigger_procedure_code_ids"],
        json!([exam]),
        "the refused change left the triggers"
    );
}

#[tokio::test]
async fn the_day_sheet_counts_the_days_appointments_and_production() {
    let p = practice().await;
    let t = p.dentist.access.as_str();
    let filling = filling_code(&p.app, &p.owner.access, 9500).await;
    let exam = exam_code(&p.app, &p.owner.access, 4500).await;
    let kept = id(&chart(
        &p.app,
        t,
        &p.patient,
        json!({"procedure_code_id": filling, "tooth": "36", "surfaces": ["O"]}),
    )
    .await);
    let undone = id(&chart(&p.app, t, &p.patient, json!({"procedure_code_id": exam})).await);
    chart(&p.app, t, &p.patient, json!({"procedure_code_id": exam})).await;
    for procedure in [&kept, &undone] {
        expect_json(
            complete(&p.app, t, procedure, json!({})).await,
            StatusCode::OK,
        )
        .await;
    }
    expect_json(
        p.app
            .post(
                &format!("/api/v2/procedures/{undone}/reverse"),
                Some(t),
                json!({"reason": "not done"}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    // The day the charges were posted, in the clinic's zone.
    let mut db = p.app.admin_db().await;
    let day: String = sqlx::query_scalar(
        "SELECT ((posted_at AT TIME ZONE 'Europe/Berlin')::date)::text FROM ledger_transactions \
         WHERE procedure_id = $1::uuid",
    )
    .bind(&kept)
    .fetch_one(&mut db)
    .await
    .expect("posted");
    let date: NaiveDate = day.parse().expect("a date");
    let (before, after) = (
        date.pred_opt().expect("a day"),
        date.succ_opt().expect("a day"),
    );
    let chair = operatory(&p).await;
    let patient = p.patient.clone();
    let a = book(
        &p,
        &chair,
        &patient,
        &berlin(date, 8, 0),
        &berlin(date, 8, 30),
    )
    .await;
    let b = book(
        &p,
        &chair,
        &patient,
        &berlin(date, 9, 0),
        &berlin(date, 9, 30),
    )
    .await;
    book(
        &p,
        &chair,
        &patient,
        &berlin(date, 10, 0),
        &berlin(date, 10, 30),
    )
    .await;
    book(
        &p,
        &chair,
        &patient,
        &berlin(before, 23, 0),
        &berlin(before, 23, 30),
    )
    .await;
    book(
        &p,
        &chair,
        &patient,
        &berlin(after, 0, 30),
        &berlin(after, 1, 0),
    )
    .await;
    set_status(&p, &a, "cancelled").await;
    set_status(&p, &b, "arrived").await;

    let sheet = day_sheet(&p, &day).await;
    assert_eq!(sheet["date"], day);
    assert_eq!(sheet["timezone"], "Europe/Berlin");
    assert_eq!(
        sheet["appointments"],
        json!({"scheduled": 1, "confirmed": 0, "arrived": 1, "in_chair": 0, "completed": 0,
               "cancelled": 1, "no_show": 0, "total": 3})
    );
    assert_eq!(sheet["production_cents"], 9500, "the reversal nets out");
    assert_eq!(sheet["collections"]["total_cents"], 0);
    assert_eq!(sheet["adjustments_cents"], 0);
    assert_eq!(sheet["refunds_cents"], 0);
    assert_eq!(sheet["new_patients"], 1);
    let next = day_sheet(&p, &after.to_string()).await;
    assert_eq!(next["appointments"]["total"], 1);
    assert_eq!(next["production_cents"], 0);
    expect_problem(
        p.app
            .get("/api/v2/reports/day-sheet", Some(&p.owner.access))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn a_dst_day_is_read_in_the_clinics_zone() {
    let p = practice().await;
    let chair = operatory(&p).await;
    let patient = p.patient.clone();
    // 2026-03-29 in Berlin: clocks go from 02:00 CET to 03:00 CEST; the day is 23 hours.
    for (start, end) in [
        ("2026-03-28T22:30:00Z", "2026-03-28T22:45:00Z"), // 23:30 CET on the 28th
        ("2026-03-28T23:15:00Z", "2026-03-28T23:30:00Z"), // 00:15 CET on the 29th
        ("2026-03-29T21:30:00Z", "2026-03-29T21:45:00Z"), // 23:30 CEST on the 29th
        ("2026-03-29T22:30:00Z", "2026-03-29T22:45:00Z"), // 00:30 CEST on the 30th
    ] {
        book(&p, &chair, &patient, start, end).await;
    }
    let sheet = day_sheet(&p, "2026-03-29").await;
    assert_eq!(sheet["from"], "2026-03-28T23:00:00Z");
    assert_eq!(sheet["to"], "2026-03-29T22:00:00Z");
    let hours = |s: &Value| {
        let at = |k: &str| {
            chrono::DateTime::parse_from_rfc3339(s[k].as_str().expect(k)).expect("an instant")
        };
        (at("to") - at("from")).num_hours()
    };
    assert_eq!(hours(&sheet), 23);
    assert_eq!(sheet["appointments"]["total"], 2);
    assert_eq!(sheet["appointments"]["scheduled"], 2);
    assert_eq!(
        day_sheet(&p, "2026-03-28").await["appointments"]["total"],
        1
    );
    assert_eq!(
        day_sheet(&p, "2026-03-30").await["appointments"]["total"],
        1
    );
    // And back in October: a 25-hour day.
    let autumn = day_sheet(&p, "2026-10-25").await;
    assert_eq!(autumn["from"], "2026-10-24T22:00:00Z");
    assert_eq!(autumn["to"], "2026-10-25T23:00:00Z");
    assert_eq!(hours(&autumn), 25);
}

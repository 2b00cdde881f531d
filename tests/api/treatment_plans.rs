//! Treatment plans: drafts of a patient's planned procedures, presented as a frozen
//! version, accepted in whole or in part with a signature, declined, revised into the
//! next version; a concurrent acceptance and revision of one plan has one winner.

use crate::common::*;
use crate::treatment::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A practice with a filling code (9500) and `n` planned fillings for its patient.
async fn planned(n: usize) -> (Practice, Vec<String>) {
    let p = practice().await;
    let filling = filling_code(&p.app, &p.owner.access, 9500).await;
    let mut ids = Vec::new();
    for tooth in ["36", "37", "46", "47", "26", "27"].into_iter().take(n) {
        ids.push(id(&chart(
            &p.app,
            &p.dentist.access,
            &p.patient,
            json!({"procedure_code_id": filling, "tooth": tooth, "surfaces": ["O"]}),
        )
        .await));
    }
    (p, ids)
}

async fn create_plan(p: &Practice, items: Value) -> Value {
    expect_json(
        p.app
            .post(
                &format!("/api/v2/patients/{}/treatment-plans", p.patient),
                Some(&p.dentist.access),
                json!({"title": "Restorations", "items": items}),
            )
            .await,
        StatusCode::CREATED,
    )
    .await
}

async fn act(p: &Practice, plan: &str, action: &str, body: Value) -> reqwest::Response {
    p.app
        .post(
            &format!("/api/v2/treatment-plans/{plan}/{action}"),
            Some(&p.dentist.access),
            body,
        )
        .await
}

async fn version(p: &Practice, plan: &str, n: i32) -> reqwest::Response {
    p.app
        .get(
            &format!("/api/v2/treatment-plans/{plan}/versions/{n}"),
            Some(&p.dentist.access),
        )
        .await
}

/// A presented plan of every given procedure.
async fn presented(p: &Practice, procedures: &[String]) -> Value {
    let items: Vec<Value> = procedures
        .iter()
        .map(|id| json!({"procedure_id": id}))
        .collect();
    let plan = create_plan(p, json!(items)).await;
    expect_json(
        act(p, &id(&plan), "present", json!({})).await,
        StatusCode::OK,
    )
    .await
}

fn item_ids(plan: &Value) -> Vec<String> {
    plan["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(id)
        .collect()
}

#[tokio::test]
async fn a_draft_plan_holds_planned_procedures_of_its_patient() {
    let (p, procs) = planned(2).await;
    let res = p
        .app
        .post(
            &format!("/api/v2/patients/{}/treatment-plans", p.patient),
            Some(&p.dentist.access),
            json!({"title": "Lower left", "items": [
                {"procedure_id": procs[0], "phase": 1},
                {"procedure_id": procs[1], "phase": 2, "fee_cents": 8000, "note": "after healing"}
            ]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let location = res.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert!(res.headers().contains_key("etag"));
    let plan: Value = res.json().await.expect("json");
    assert_eq!(location, format!("/api/v2/treatment-plans/{}", id(&plan)));
    assert_eq!(plan["status"], "draft");
    assert_eq!(plan["version"], 1);
    assert_eq!(plan["patient_id"], json!(p.patient));
    let items = plan["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|i| i["id"].is_string()));
    assert_eq!(items[0]["procedure_id"], json!(procs[0]));
    assert_eq!(items[0]["fee_cents"], 9500, "the procedure's fee");
    assert_eq!(items[1]["fee_cents"], 8000, "the plan's own fee");
    assert_eq!(items[1]["note"], "after healing");
    assert_eq!(plan["total_cents"], 17500);
    let list = expect_json(
        p.app
            .get(
                &format!("/api/v2/patients/{}/treatment-plans", p.patient),
                Some(&p.dentist.access),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list["items"][0], plan);
}

#[tokio::test]
async fn an_item_that_is_not_a_planned_procedure_of_the_patient_is_422() {
    let (p, procs) = planned(2).await;
    let other = p.app.patient(&p.owner.access, "Oth", "Er").await;
    let exam = exam_code(&p.app, &p.owner.access, 4500).await;
    let theirs = id(&chart(
        &p.app,
        &p.dentist.access,
        &other,
        json!({"procedure_code_id": exam}),
    )
    .await);
    expect_json(
        complete(&p.app, &p.dentist.access, &procs[1], json!({})).await,
        StatusCode::OK,
    )
    .await;
    let plans = format!("/api/v2/patients/{}/treatment-plans", p.patient);
    for (items, field) in [
        (
            json!([{"procedure_id": procs[0]}, {"procedure_id": theirs}]),
            "items[1].procedure_id",
        ),
        (json!([{"procedure_id": procs[1]}]), "items[0].procedure_id"),
        (
            json!([{"procedure_id": uuid::Uuid::now_v7()}]),
            "items[0].procedure_id",
        ),
        (
            json!([{"procedure_id": procs[0]}, {"procedure_id": procs[0]}]),
            "items[1].procedure_id",
        ),
        (
            json!([{"procedure_id": procs[0], "phase": 21}]),
            "items[0].phase",
        ),
        (
            json!([{"procedure_id": procs[0], "id": uuid::Uuid::now_v7()}]),
            "items[0].id",
        ),
    ] {
        expect_invalid(
            p.app
                .post(
                    &plans,
                    Some(&p.dentist.access),
                    json!({"title": "Plan", "items": items}),
                )
                .await,
            field,
        )
        .await;
    }
    let list = expect_json(
        p.app.get(&plans, Some(&p.dentist.access)).await,
        StatusCode::OK,
    )
    .await;
    assert!(list["items"].as_array().expect("items").is_empty());
}

#[tokio::test]
async fn only_a_draft_plan_is_edited() {
    let (p, procs) = planned(3).await;
    let plan = create_plan(
        &p,
        json!([{"procedure_id": procs[0]}, {"procedure_id": procs[1]}]),
    )
    .await;
    let path = format!("/api/v2/treatment-plans/{}", id(&plan));
    let kept = item_ids(&plan)[0].clone();
    // Keep the first item by id, drop the second, add the third.
    let edited = expect_json(
        p.app
            .patch(
                &path,
                Some(&p.dentist.access),
                json!({"title": "Restorations, revised", "items": [
                    {"id": kept, "procedure_id": procs[0]},
                    {"procedure_id": procs[2], "phase": 2}
                ]}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(edited["title"], "Restorations, revised");
    let items = item_ids(&edited);
    assert_eq!(items.len(), 2);
    assert_eq!(items[0], kept);
    assert_eq!(edited["items"][1]["procedure_id"], json!(procs[2]));
    expect_json(
        act(&p, &id(&plan), "present", json!({})).await,
        StatusCode::OK,
    )
    .await;
    expect_problem(
        p.app
            .patch(&path, Some(&p.dentist.access), json!({"title": "Too late"}))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    let read = expect_json(
        p.app.get(&path, Some(&p.dentist.access)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(read["title"], "Restorations, revised");
}

#[tokio::test]
async fn presenting_freezes_the_version_as_shown_to_the_patient() {
    let (p, procs) = planned(2).await;
    let empty = create_plan(&p, json!([])).await;
    expect_invalid(act(&p, &id(&empty), "present", json!({})).await, "items").await;
    let plan = create_plan(
        &p,
        json!([{"procedure_id": procs[0]}, {"procedure_id": procs[1], "phase": 2}]),
    )
    .await;
    let plan_id = id(&plan);
    expect_problem(version(&p, &plan_id, 1).await, StatusCode::NOT_FOUND).await;
    let shown = expect_json(
        act(&p, &plan_id, "present", json!({})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(shown["status"], "presented");
    assert_eq!(shown["version"], 1);
    expect_problem(
        act(&p, &plan_id, "present", json!({})).await,
        StatusCode::CONFLICT,
    )
    .await;
    let frozen = expect_json(version(&p, &plan_id, 1).await, StatusCode::OK).await;
    assert_eq!(frozen["version"], 1);
    assert_eq!(frozen["title"], "Restorations");
    assert_eq!(frozen["total_cents"], 19000);
    assert_eq!(frozen["decision"], Value::Null);
    assert_eq!(frozen["presented_by"], json!(p.dentist.user_id));
    let items = frozen["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], plan["items"][0]["id"]);
    assert_eq!(items[0]["procedure_id"], json!(procs[0]));
    assert_eq!(items[0]["code"], "X-FILL");
    assert_eq!(items[0]["tooth"], "36");
    assert_eq!(items[0]["surfaces"], json!(["O"]));
    assert_eq!(items[0]["fee_cents"], 9500);
    assert_eq!(items[1]["phase"], 2);

    // The procedure's fee changes afterwards: the live plan shows it, the version not.
    expect_json(
        p.app
            .patch(
                &format!("/api/v2/procedures/{}", procs[0]),
                Some(&p.dentist.access),
                json!({"fee_cents": 20000}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    let live = expect_json(
        p.app
            .get(
                &format!("/api/v2/treatment-plans/{plan_id}"),
                Some(&p.dentist.access),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(live["total_cents"], 29500);
    let again = expect_json(version(&p, &plan_id, 1).await, StatusCode::OK).await;
    assert_eq!(again, frozen, "the frozen version never changes");
    expect_problem(version(&p, &plan_id, 2).await, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn accepting_every_item_accepts_the_plan() {
    let (p, procs) = planned(2).await;
    let plan = presented(&p, &procs).await;
    let plan_id = id(&plan);
    let accepted = expect_json(
        act(&p, &plan_id, "accept", json!({"signed_by": "Pat Ient"})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(accepted["status"], "accepted");
    let decision =
        expect_json(version(&p, &plan_id, 1).await, StatusCode::OK).await["decision"].clone();
    assert_eq!(decision["decision"], "accepted");
    assert_eq!(decision["signed_by"], "Pat Ient");
    assert_eq!(decision["accepted_item_ids"], json!(item_ids(&plan)));
    assert_eq!(decision["accepted_cents"], 19000);
    assert_eq!(decision["recorded_by"], json!(p.dentist.user_id));
    expect_problem(
        act(&p, &plan_id, "accept", json!({"signed_by": "Pat Ient"})).await,
        StatusCode::CONFLICT,
    )
    .await;
    expect_problem(
        act(&p, &plan_id, "decline", json!({"reason": "changed mind"})).await,
        StatusCode::CONFLICT,
    )
    .await;
}

#[tokio::test]
async fn accepting_some_items_partially_accepts_and_records_who_signed_which() {
    let (p, procs) = planned(3).await;
    let plan = presented(&p, &procs).await;
    let plan_id = id(&plan);
    let items = item_ids(&plan);
    // A 1×1 PNG.
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
    let res = act(
        &p,
        &plan_id,
        "accept",
        json!({"item_ids": [items[2], items[0]], "signed_by": "Paula Guardian", "signature_png": png}),
    )
    .await;
    let accepted = expect_json(res, StatusCode::OK).await;
    assert_eq!(accepted["status"], "partially_accepted");
    let frozen = expect_json(version(&p, &plan_id, 1).await, StatusCode::OK).await;
    let decision = &frozen["decision"];
    assert_eq!(decision["decision"], "partially_accepted");
    assert_eq!(decision["signed_by"], "Paula Guardian");
    assert_eq!(decision["signature_png"], png);
    assert_eq!(decision["accepted_item_ids"], json!([items[2], items[0]]));
    assert_eq!(decision["accepted_cents"], 19000);
    assert!(decision["decided_at"].is_string());
    assert_eq!(
        frozen["items"].as_array().expect("items").len(),
        3,
        "the version keeps every item"
    );
}

#[tokio::test]
async fn accepting_items_that_are_not_in_the_plan_is_422() {
    let (p, procs) = planned(3).await;
    let plan = presented(&p, &procs[..2]).await;
    let other = presented(&p, &procs[2..]).await;
    let plan_id = id(&plan);
    let draft = create_plan(&p, json!([{"procedure_id": procs[0]}])).await;
    for (body, field) in [
        (
            json!({"item_ids": [uuid::Uuid::now_v7()], "signed_by": "Pat Ient"}),
            "item_ids[0]",
        ),
        (
            json!({"item_ids": [item_ids(&plan)[0], item_ids(&other)[0]], "signed_by": "Pat Ient"}),
            "item_ids[1]",
        ),
        (
            json!({"item_ids": [item_ids(&plan)[0], item_ids(&plan)[0]], "signed_by": "Pat Ient"}),
            "item_ids[1]",
        ),
        (json!({"item_ids": [], "signed_by": "Pat Ient"}), "item_ids"),
        (json!({"signed_by": " "}), "signed_by"),
        (
            json!({"signed_by": "Pat Ient", "signature_png": "bm90IGEgcG5n"}),
            "signature_png",
        ),
    ] {
        expect_invalid(act(&p, &plan_id, "accept", body.clone()).await, field).await;
    }
    let read = expect_json(
        p.app
            .get(
                &format!("/api/v2/treatment-plans/{plan_id}"),
                Some(&p.dentist.access),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(read["status"], "presented");
    // A draft is not accepted at all.
    expect_problem(
        act(&p, &id(&draft), "accept", json!({"signed_by": "Pat Ient"})).await,
        StatusCode::CONFLICT,
    )
    .await;
}

#[tokio::test]
async fn a_declined_plan_is_revised_into_version_two_and_version_one_stays() {
    let (p, procs) = planned(3).await;
    let plan = presented(&p, &procs[..2]).await;
    let plan_id = id(&plan);
    expect_invalid(
        act(&p, &plan_id, "decline", json!({"reason": ""})).await,
        "reason",
    )
    .await;
    let declined = expect_json(
        act(
            &p,
            &plan_id,
            "decline",
            json!({"reason": "wants a second opinion"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(declined["status"], "declined");
    let v1 = expect_json(version(&p, &plan_id, 1).await, StatusCode::OK).await;
    assert_eq!(v1["decision"]["decision"], "declined");
    assert_eq!(v1["decision"]["reason"], "wants a second opinion");
    assert_eq!(v1["decision"]["signed_by"], Value::Null);

    let revised = expect_json(
        act(&p, &plan_id, "revise", json!({"reason": "cheaper option"})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(revised["status"], "draft");
    assert_eq!(revised["version"], 2);
    expect_problem(version(&p, &plan_id, 2).await, StatusCode::NOT_FOUND).await;
    // Version 2 is edited and presented; version 1 is as it was.
    expect_json(
        p.app
            .patch(
                &format!("/api/v2/treatment-plans/{plan_id}"),
                Some(&p.dentist.access),
                json!({"items": [{"procedure_id": procs[2]}]}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    expect_json(
        act(&p, &plan_id, "present", json!({})).await,
        StatusCode::OK,
    )
    .await;
    let v2 = expect_json(version(&p, &plan_id, 2).await, StatusCode::OK).await;
    assert_eq!(v2["items"].as_array().expect("items").len(), 1);
    assert_eq!(v2["items"][0]["procedure_id"], json!(procs[2]));
    assert_eq!(v2["total_cents"], 9500);
    assert_eq!(v2["decision"], Value::Null);
    assert_eq!(
        expect_json(version(&p, &plan_id, 1).await, StatusCode::OK).await,
        v1
    );
    // A presented plan is revised too (without a decision); a draft is not.
    let v3 = expect_json(
        act(&p, &plan_id, "revise", json!({"reason": "one more change"})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(v3["version"], 3);
    expect_problem(
        act(&p, &plan_id, "revise", json!({"reason": "again"})).await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(
        expect_json(version(&p, &plan_id, 2).await, StatusCode::OK).await,
        v2
    );
}

#[tokio::test]
async fn a_concurrent_acceptance_and_revision_of_one_plan_have_one_winner() {
    let (p, procs) = planned(1).await;
    let (mut accepts, mut revisions) = (0, 0);
    for _ in 0..10 {
        let plan = presented(&p, &procs).await;
        let plan_id = id(&plan);
        let (accept, revise) = tokio::join!(
            act(&p, &plan_id, "accept", json!({"signed_by": "Pat Ient"})),
            act(&p, &plan_id, "revise", json!({"reason": "changed"})),
        );
        let outcome = (accept.status(), revise.status());
        let read = expect_json(
            p.app
                .get(
                    &format!("/api/v2/treatment-plans/{plan_id}"),
                    Some(&p.dentist.access),
                )
                .await,
            StatusCode::OK,
        )
        .await;
        let v1 = expect_json(version(&p, &plan_id, 1).await, StatusCode::OK).await;
        match outcome {
            (StatusCode::OK, StatusCode::CONFLICT) => {
                accepts += 1;
                assert_eq!(read["status"], "accepted");
                assert_eq!(read["version"], 1);
                assert_eq!(v1["decision"]["decision"], "accepted");
            }
            (StatusCode::CONFLICT, StatusCode::OK) => {
                revisions += 1;
                assert_eq!(read["status"], "draft");
                assert_eq!(read["version"], 2);
                assert_eq!(
                    v1["decision"],
                    Value::Null,
                    "no decision on a revised version"
                );
            }
            other => panic!("want one 200 and one 409, got {other:?}"),
        }
    }
    assert_eq!(accepts + revisions, 10);
}

#[tokio::test]
async fn a_draft_whose_procedure_was_completed_meanwhile_is_not_presented() {
    let (p, procedures) = planned(2).await;
    let items: Vec<Value> = procedures
        .iter()
        .map(|id| json!({"procedure_id": id}))
        .collect();
    let plan = create_plan(&p, json!(items)).await;
    expect_json(
        p.app
            .post(
                &format!("/api/v2/procedures/{}/complete", procedures[1]),
                Some(&p.dentist.access),
                json!({}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    let problem = expect_problem(
        act(&p, &id(&plan), "present", json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "items[1].procedure_id");
    // Nothing was frozen.
    assert_eq!(
        version(&p, &id(&plan), 1).await.status(),
        StatusCode::NOT_FOUND
    );
}

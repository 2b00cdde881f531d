//! Payments (an `Idempotency-Key` required, allocations within the payment and each
//! invoice's open amount, the rest the payer's credit), refunds (never more than is left,
//! from the credit first, then back from the invoices), and adjustments; under
//! concurrency too.

use crate::billing::*;
use crate::common::*;
use crate::treatment::{expect_invalid, expect_json, fields, id};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn a_payment_without_an_idempotency_key_is_400_and_nothing_is_taken() {
    let d = desk().await;
    let res = d
        .app
        .post(
            "/api/v2/payments",
            Some(d.t()),
            json!({"patient_id": d.patient, "amount_cents": 1000, "method": "cash"}),
        )
        .await;
    expect_problem(res, StatusCode::BAD_REQUEST).await;
    assert!(d.ledger(&d.patient).await.is_empty());
    let listed = pages(&d.app, d.t(), "/api/v2/payments").await;
    assert!(listed.is_empty(), "{listed:?}");
}

#[tokio::test]
async fn a_replayed_payment_is_the_same_payment_taken_once() {
    let d = desk().await;
    let body = json!({"patient_id": d.patient, "amount_cents": 2500, "method": "card",
                      "reference": "terminal 4711"});
    let key = new_key();
    let res = post_keyed(&d.app, "/api/v2/payments", d.t(), &key, body.clone()).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let location = res.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let first: Value = res.json().await.expect("json");
    assert_eq!(location, format!("/api/v2/payments/{}", id(&first)));
    assert_eq!(first["amount_cents"], 2500);
    assert_eq!(first["method"], "card");
    assert_eq!(first["reference"], "terminal 4711");
    let again = expect_json(
        post_keyed(&d.app, "/api/v2/payments", d.t(), &key, body).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(again, first);
    let listed = pages(
        &d.app,
        d.t(),
        &format!("/api/v2/payments?patient_id={}", d.patient),
    )
    .await;
    assert_eq!(listed.len(), 1);
    assert_eq!(cents(&d.balance(&d.patient).await["credit_cents"]), 2500);
    // The same key with another body is refused, and takes nothing either.
    expect_invalid(
        post_keyed(
            &d.app,
            "/api/v2/payments",
            d.t(),
            &key,
            json!({"patient_id": d.patient, "amount_cents": 9999, "method": "card"}),
        )
        .await,
        "Idempotency-Key",
    )
    .await;
    assert_eq!(d.ledger(&d.patient).await.len(), 1);
}

#[tokio::test]
async fn amounts_must_be_positive_and_at_most_a_trillion_minor_units() {
    let d = desk().await;
    for amount in [0, -1, -2500, 1_000_000_000_001_i64] {
        expect_invalid(
            pay(
                &d.app,
                d.t(),
                json!({"patient_id": d.patient, "amount_cents": amount, "method": "cash"}),
            )
            .await,
            "amount_cents",
        )
        .await;
    }
    assert!(d.ledger(&d.patient).await.is_empty());
    let largest = d
        .pay(
            json!({"patient_id": d.patient, "amount_cents": 1_000_000_000_000_i64,
                    "method": "bank_transfer"}),
        )
        .await;
    assert_eq!(largest["amount_cents"], 1_000_000_000_000_i64);
}

#[tokio::test]
async fn a_payment_for_an_unknown_patient_is_422_naming_patient_id() {
    let d = desk().await;
    let problem = expect_invalid(
        pay(
            &d.app,
            d.t(),
            json!({"patient_id": uuid::Uuid::now_v7(), "amount_cents": 100, "method": "cash"}),
        )
        .await,
        "patient_id",
    )
    .await;
    assert_eq!(fields(&problem), vec!["patient_id"]);
}

#[tokio::test]
async fn allocations_stay_within_the_payment_and_each_invoices_open_amount() {
    let d = desk().await;
    d.charge(&d.patient, 4000).await;
    let first = d.issue(&d.patient).await;
    d.charge(&d.patient, 3000).await;
    let second = d.issue(&d.patient).await;
    let payment = |allocations: Value| {
        json!({"patient_id": d.patient, "amount_cents": 5000, "method": "cash",
               "allocations": allocations})
    };
    // Together more than the payment.
    expect_invalid(
        pay(
            &d.app,
            d.t(),
            payment(json!([{"invoice_id": first["id"], "amount_cents": 4000},
                           {"invoice_id": second["id"], "amount_cents": 1001}])),
        )
        .await,
        "allocations",
    )
    .await;
    // More than is open on the invoice.
    expect_invalid(
        pay(
            &d.app,
            d.t(),
            payment(json!([{"invoice_id": second["id"], "amount_cents": 3001}])),
        )
        .await,
        "allocations[0].amount_cents",
    )
    .await;
    // Not positive.
    expect_invalid(
        pay(
            &d.app,
            d.t(),
            payment(json!([{"invoice_id": second["id"], "amount_cents": 0}])),
        )
        .await,
        "allocations[0].amount_cents",
    )
    .await;
    assert!(
        d.ledger(&d.patient).await.len() == 2,
        "only the two charges"
    );
    // Within both: what is left over is the payer's credit.
    let taken = d
        .pay(payment(
            json!([{"invoice_id": first["id"], "amount_cents": 4000},
                             {"invoice_id": second["id"], "amount_cents": 500}]),
        ))
        .await;
    assert_eq!(taken["refundable_cents"], 5000);
    let mut allocations = taken["allocations"]
        .as_array()
        .expect("allocations")
        .clone();
    allocations.sort_by_key(|a| cents(&a["amount_cents"]));
    assert_eq!(
        allocations,
        vec![
            json!({"invoice_id": second["id"], "amount_cents": 500}),
            json!({"invoice_id": first["id"], "amount_cents": 4000}),
        ]
    );
    let first = d.invoice(first["id"].as_str().expect("id")).await;
    assert_eq!(
        (
            first["status"].as_str(),
            cents(&first["paid_cents"]),
            cents(&first["open_cents"])
        ),
        (Some("paid"), 4000, 0)
    );
    let second = d.invoice(second["id"].as_str().expect("id")).await;
    assert_eq!(
        (
            second["status"].as_str(),
            cents(&second["paid_cents"]),
            cents(&second["open_cents"])
        ),
        (Some("open"), 500, 2500)
    );
    assert_eq!(
        d.balance(&d.patient).await,
        json!({"balance_cents": 2000, "credit_cents": 500, "family_balance_cents": 2000})
    );
    // A paid invoice takes nothing more.
    expect_invalid(
        pay(
            &d.app,
            d.t(),
            payment(json!([{"invoice_id": first["id"], "amount_cents": 1}])),
        )
        .await,
        "allocations[0].amount_cents",
    )
    .await;
}

#[tokio::test]
async fn allocations_to_a_void_or_another_clinics_invoice_are_422_naming_the_invoice() {
    let d = desk().await;
    d.charge(&d.patient, 4000).await;
    let void = d.issue(&d.patient).await;
    expect_json(
        d.app
            .post(
                &format!("/api/v2/invoices/{}/void", id(&void)),
                Some(d.t()),
                json!({"reason": "issued twice"}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    let beta = desk_on(d.app.clone(), d.app.register_clinic("Beta").await).await;
    beta.charge(&beta.patient, 4000).await;
    let foreign = beta.issue(&beta.patient).await;
    let stranger = d.patient_of("Stranger", None).await;
    d.charge(&stranger, 4000).await;
    let strangers = d.issue(&stranger).await;
    for invoice in [&void, &foreign, &strangers] {
        let problem = expect_invalid(
            pay(
                &d.app,
                d.t(),
                json!({"patient_id": d.patient, "amount_cents": 1000, "method": "cash",
                       "allocations": [{"invoice_id": invoice["id"], "amount_cents": 1000}]}),
            )
            .await,
            "allocations[0].invoice_id",
        )
        .await;
        assert!(!problem.to_string().contains("Beta"), "{problem}");
    }
    assert_eq!(cents(&beta.invoice(&id(&foreign)).await["paid_cents"]), 0);
    assert_eq!(cents(&d.invoice(&id(&strangers)).await["paid_cents"]), 0);
    assert_eq!(cents(&d.balance(&d.patient).await["credit_cents"]), 0);
}

#[tokio::test]
async fn the_responsible_party_pays_a_childs_invoice() {
    let d = desk().await;
    let parent = d.patient.clone();
    let child = d.patient_of("Kid", Some(&parent)).await;
    d.charge(&child, 2500).await;
    let invoice = d.issue(&child).await;
    let payment = d
        .pay(
            json!({"patient_id": parent, "amount_cents": 3000, "method": "card",
                    "allocations": [{"invoice_id": invoice["id"], "amount_cents": 2500}]}),
        )
        .await;
    assert_eq!(payment["patient_id"], json!(parent));
    let invoice = d.invoice(&id(&invoice)).await;
    assert_eq!(invoice["status"], "paid");
    assert_eq!(cents(&d.balance(&child).await["balance_cents"]), 0);
    assert_eq!(
        d.balance(&parent).await,
        json!({"balance_cents": -500, "credit_cents": 500, "family_balance_cents": -500})
    );
    let childs = d.ledger(&child).await;
    assert_eq!(childs[0]["kind"], "payment");
    assert_eq!(childs[0]["payment_id"], payment["id"]);
    assert_eq!(cents(&childs[0]["amount_cents"]), -2500);
}

#[tokio::test]
async fn payments_are_listed_by_patient_and_received_time_and_read_one_by_one() {
    let d = desk().await;
    let other = d.patient_of("Other", None).await;
    let mut mine = Vec::new();
    for (day, method) in [(1, "cash"), (2, "card"), (3, "check")] {
        mine.push(
            d.pay(
                json!({"patient_id": d.patient, "amount_cents": 100 * day, "method": method,
                         "received_at": format!("2026-11-0{day}T10:00:00Z")}),
            )
            .await,
        );
    }
    let theirs = d
        .pay(
            json!({"patient_id": other, "amount_cents": 999, "method": "cash",
                    "received_at": "2026-11-02T11:00:00Z"}),
        )
        .await;
    assert_eq!(mine[1]["received_at"], "2026-11-02T10:00:00Z");
    let ids = |items: Vec<Value>| items.iter().map(id).collect::<Vec<_>>();
    let listed = pages(
        &d.app,
        d.t(),
        &format!("/api/v2/payments?patient_id={}&limit=2", d.patient),
    )
    .await;
    assert_eq!(
        ids(listed),
        vec![id(&mine[2]), id(&mine[1]), id(&mine[0])],
        "newest first, the other patient's left out"
    );
    let window = pages(
        &d.app,
        d.t(),
        "/api/v2/payments?from=2026-11-02T00:00:00Z&to=2026-11-03T00:00:00Z",
    )
    .await;
    assert_eq!(ids(window), vec![id(&theirs), id(&mine[1])]);
    let from = pages(&d.app, d.t(), "/api/v2/payments?from=2026-11-02T10:00:00Z").await;
    assert_eq!(from.len(), 3, "from is inclusive");
    let to = pages(&d.app, d.t(), "/api/v2/payments?to=2026-11-02T10:00:00Z").await;
    assert_eq!(ids(to), vec![id(&mine[0])], "to is exclusive");
    assert_eq!(d.payment(&id(&mine[1])).await, mine[1]);
    expect_problem(
        d.app
            .get(
                &format!("/api/v2/payments/{}", uuid::Uuid::now_v7()),
                Some(d.t()),
            )
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn a_refund_needs_an_idempotency_key_and_never_exceeds_what_is_left() {
    let d = desk().await;
    let payment = d
        .pay(json!({"patient_id": d.patient, "amount_cents": 5000, "method": "card"}))
        .await;
    let path = format!("/api/v2/payments/{}/refund", id(&payment));
    expect_problem(
        d.app
            .post(
                &path,
                Some(d.t()),
                json!({"amount_cents": 100, "reason": "x"}),
            )
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    for amount in [5001, 0, -5] {
        expect_invalid(
            refund(&d.app, d.t(), &id(&payment), amount).await,
            "amount_cents",
        )
        .await;
    }
    let res = refund(&d.app, d.t(), &id(&payment), 2000).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(res.headers().contains_key("location"));
    let first: Value = res.json().await.expect("json");
    assert_eq!(first["payment_id"], payment["id"]);
    assert_eq!(first["amount_cents"], 2000);
    assert_eq!(first["reason"], "Returned to the patient");
    expect_invalid(
        refund(&d.app, d.t(), &id(&payment), 3001).await,
        "amount_cents",
    )
    .await;
    expect_json(
        refund(&d.app, d.t(), &id(&payment), 3000).await,
        StatusCode::CREATED,
    )
    .await;
    expect_invalid(
        refund(&d.app, d.t(), &id(&payment), 1).await,
        "amount_cents",
    )
    .await;
    let read = d.payment(&id(&payment)).await;
    assert_eq!(read["refundable_cents"], 0);
    let refunds: Vec<i64> = read["refunds"]
        .as_array()
        .expect("refunds")
        .iter()
        .map(|r| cents(&r["amount_cents"]))
        .collect();
    assert_eq!(refunds, vec![2000, 3000]);
    assert_eq!(read["refunds"][0], first);
    assert_eq!(
        read["amount_cents"], 5000,
        "the payment itself is unchanged"
    );
}

#[tokio::test]
async fn a_refund_of_credit_lowers_the_credit() {
    let d = desk().await;
    let payment = d
        .pay(json!({"patient_id": d.patient, "amount_cents": 5000, "method": "cash"}))
        .await;
    expect_json(
        refund(&d.app, d.t(), &id(&payment), 2000).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        d.balance(&d.patient).await,
        json!({"balance_cents": -3000, "credit_cents": 3000, "family_balance_cents": -3000})
    );
    let entries = d.ledger(&d.patient).await;
    assert_eq!(entries[0]["kind"], "refund");
    assert_eq!(cents(&entries[0]["amount_cents"]), 2000);
    assert_eq!(entries[0]["payment_id"], payment["id"]);
    assert_eq!(d.payment(&id(&payment)).await["refundable_cents"], 3000);
}

#[tokio::test]
async fn a_refund_beyond_the_credit_takes_back_an_allocation_and_reopens_the_invoice() {
    let d = desk().await;
    d.charge(&d.patient, 9500).await;
    let invoice = d.issue(&d.patient).await;
    let payment = d
        .pay(
            json!({"patient_id": d.patient, "amount_cents": 10_000, "method": "card",
                    "allocations": [{"invoice_id": invoice["id"], "amount_cents": 9500}]}),
        )
        .await;
    assert_eq!(d.invoice(&id(&invoice)).await["status"], "paid");
    expect_json(
        refund(&d.app, d.t(), &id(&payment), 2000).await,
        StatusCode::CREATED,
    )
    .await;
    let reopened = d.invoice(&id(&invoice)).await;
    assert_eq!(
        (
            reopened["status"].as_str(),
            cents(&reopened["paid_cents"]),
            cents(&reopened["open_cents"])
        ),
        (Some("open"), 8000, 1500),
        "500 came from the credit, 1500 back from the invoice"
    );
    let read = d.payment(&id(&payment)).await;
    assert_eq!(read["refundable_cents"], 8000);
    assert_eq!(
        read["allocations"],
        json!([{"invoice_id": invoice["id"], "amount_cents": 8000}])
    );
    assert_eq!(
        d.balance(&d.patient).await,
        json!({"balance_cents": 1500, "credit_cents": 0, "family_balance_cents": 1500})
    );
    assert!(unbalanced(&d.app).await.is_empty());
}

#[tokio::test]
async fn only_owners_admins_and_billing_adjust_an_account() {
    let d = desk().await;
    let body = json!({"patient_id": d.patient, "amount_cents": -1000, "reason": "Senior discount"});
    for role in ["receptionist", "dentist"] {
        let who = d.app.staff(d.t(), role).await;
        expect_problem(
            d.app
                .post("/api/v2/adjustments", Some(&who.access), body.clone())
                .await,
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    assert!(d.ledger(&d.patient).await.is_empty());
    for role in ["billing", "admin"] {
        let who = d.app.staff(d.t(), role).await;
        let made = expect_json(
            d.app
                .post("/api/v2/adjustments", Some(&who.access), body.clone())
                .await,
            StatusCode::CREATED,
        )
        .await;
        assert_eq!(made["created_by"], json!(who.user_id));
    }
    d.adjust(&d.patient, 300).await;
    assert_eq!(d.ledger(&d.patient).await.len(), 3);
}

#[tokio::test]
async fn a_negative_adjustment_lowers_the_balance_and_zero_is_422() {
    let d = desk().await;
    d.charge(&d.patient, 9500).await;
    expect_invalid(
        d.app
            .post(
                "/api/v2/adjustments",
                Some(d.t()),
                json!({"patient_id": d.patient, "amount_cents": 0, "reason": "Nothing"}),
            )
            .await,
        "amount_cents",
    )
    .await;
    let made = d.adjust(&d.patient, -1500).await;
    assert_eq!(made["amount_cents"], -1500);
    assert_eq!(made["patient_id"], json!(d.patient));
    assert_eq!(cents(&d.balance(&d.patient).await["balance_cents"]), 8000);
    let entries = d.ledger(&d.patient).await;
    assert_eq!(kinds(&entries)[0], ("adjustment".to_owned(), -1500));
    assert_eq!(entries[0]["id"], made["id"]);
    assert_eq!(cents(&entries[0]["balance_cents"]), 8000);
}

/// Sends `n` requests at once; the statuses and bodies, in the order sent.
async fn at_once<F, Fut>(n: usize, request: F) -> Vec<(StatusCode, Value)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = reqwest::Response> + Send + 'static,
{
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let fut = request(i);
            tokio::spawn(async move {
                let res = fut.await;
                let status = res.status();
                (status, res.json::<Value>().await.unwrap_or(Value::Null))
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("the request ran"));
    }
    out
}

/// A payment sent from its own task.
fn payment_request(
    d: &Desk,
    token: &str,
    body: Value,
) -> impl std::future::Future<Output = reqwest::Response> + Send + 'static {
    let req = d
        .app
        .client
        .post(d.app.url("/api/v2/payments"))
        .bearer_auth(token)
        .header("Idempotency-Key", new_key())
        .json(&body);
    async move { req.send().await.expect("request reaches the server") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_payments_all_count_once_in_the_balance() {
    let d = desk().await;
    d.charge(&d.patient, 500_000).await;
    let results = at_once(50, |i| {
        payment_request(
            &d,
            d.t(),
            json!({"patient_id": d.patient, "amount_cents": 100 + i as i64, "method": "cash"}),
        )
    })
    .await;
    for (status, body) in &results {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
    }
    let paid: i64 = (0..50).map(|i| 100 + i).sum();
    let entries = d.ledger(&d.patient).await;
    assert_eq!(entries.len(), 51);
    let b = d.balance(&d.patient).await;
    assert_eq!(cents(&b["balance_cents"]), sum(&entries));
    assert_eq!(cents(&b["balance_cents"]), 500_000 - paid);
    assert_eq!(cents(&b["credit_cents"]), paid);
    assert_eq!(cents(&entries[0]["balance_cents"]), 500_000 - paid);
    assert!(unbalanced(&d.app).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_payments_for_an_invoices_whole_open_amount_exactly_one_is_taken() {
    let d = desk().await;
    // Several rounds, each on a fresh invoice, so that the two meet inside the window.
    for round in 0..5 {
        d.charge(&d.patient, 4000 + round).await;
        let invoice = d.issue(&d.patient).await;
        let open = cents(&invoice["open_cents"]);
        let body = json!({"patient_id": d.patient, "amount_cents": open, "method": "card",
                          "allocations": [{"invoice_id": invoice["id"], "amount_cents": open}]});
        let results = at_once(2, |_| payment_request(&d, d.t(), body.clone())).await;
        let mut statuses: Vec<u16> = results.iter().map(|r| r.0.as_u16()).collect();
        statuses.sort();
        assert_eq!(statuses, vec![201, 422], "round {round}: {results:?}");
        let refused = results
            .iter()
            .find(|r| r.0 == StatusCode::UNPROCESSABLE_ENTITY)
            .expect("a refusal");
        assert!(
            fields(&refused.1).contains(&"allocations[0].amount_cents".to_owned()),
            "{}",
            refused.1
        );
        let read = d.invoice(&id(&invoice)).await;
        assert_eq!(cents(&read["paid_cents"]), open, "round {round}");
    }
    assert_eq!(cents(&d.balance(&d.patient).await["balance_cents"]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refunds_of_one_payment_never_exceed_it() {
    let d = desk().await;
    let payment = d
        .pay(json!({"patient_id": d.patient, "amount_cents": 10_000, "method": "card"}))
        .await;
    let path = format!("/api/v2/payments/{}/refund", id(&payment));
    let results = at_once(5, |_| {
        let req = d
            .app
            .client
            .post(d.app.url(&path))
            .bearer_auth(d.t())
            .header("Idempotency-Key", new_key())
            .json(&json!({"amount_cents": 3000, "reason": "Returned"}));
        async move { req.send().await.expect("request reaches the server") }
    })
    .await;
    let mut statuses: Vec<u16> = results.iter().map(|r| r.0.as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, vec![201, 201, 201, 422, 422], "{results:?}");
    assert_eq!(d.payment(&id(&payment)).await["refundable_cents"], 1000);
    assert_eq!(
        d.balance(&d.patient).await,
        json!({"balance_cents": -1000, "credit_cents": 1000, "family_balance_cents": -1000})
    );
}

#[tokio::test]
async fn a_refund_whose_client_gave_up_can_be_retried_with_its_key() {
    use sqlx::Connection;
    let d = desk().await;
    let payment = expect_json(
        pay(
            &d.app,
            d.t(),
            json!({"patient_id": d.patient, "amount_cents": 5000, "method": "cash"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    // Hold the payer's row, so that the refund waits after claiming its key.
    let mut admin = d.app.admin_db().await;
    let mut held = admin.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM patients WHERE id = $1::uuid FOR UPDATE")
        .bind(&d.patient)
        .execute(&mut *held)
        .await
        .expect("lock the payer");
    let key = new_key();
    let path = format!("/api/v2/payments/{}/refund", id(&payment));
    let body = json!({"amount_cents": 1000, "reason": "Returned to the patient"});
    let gave_up = d
        .app
        .client
        .post(d.app.url(&path))
        .bearer_auth(d.t())
        .header("Idempotency-Key", &key)
        .timeout(std::time::Duration::from_millis(700))
        .json(&body)
        .send()
        .await;
    assert!(gave_up.is_err(), "the refund waited for the payer's lock");
    held.rollback().await.expect("release the payer");
    // The abandoned claim is released on a task of its own: the retry may race it once.
    let mut retried = None;
    for _ in 0..50 {
        let res = post_keyed(&d.app, &path, d.t(), &key, body.clone()).await;
        if res.status() != StatusCode::CONFLICT {
            retried = Some(res);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let retried = retried.expect("the key is not left claimed");
    assert_eq!(retried.status(), StatusCode::CREATED);
    let after = expect_json(
        d.app
            .get(&format!("/api/v2/payments/{}", id(&payment)), Some(d.t()))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(after["refunds"].as_array().expect("refunds").len(), 1);
    assert_eq!(after["refundable_cents"], 4000);
}

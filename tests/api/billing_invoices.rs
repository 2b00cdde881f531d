//! Invoices: issued from a patient's completed procedures, numbered without gaps per
//! clinic and year however many are issued at once, paid by allocations and applied
//! credit, voided only while nothing is paid; and what the database keeps the server's
//! own role from rewriting.

use chrono::{DateTime, Datelike, Utc};
use sqlx::Connection;

use crate::billing::*;
use crate::common::*;
use crate::treatment::{expect_invalid, expect_json, fields, id};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The year an invoice was issued in the clinic's zone (Europe/Berlin).
fn issued_year(invoice: &Value) -> i32 {
    let at: DateTime<Utc> = invoice["issued_at"]
        .as_str()
        .expect("issued_at")
        .parse()
        .expect("an instant");
    at.with_timezone(&chrono_tz::Europe::Berlin).year()
}

fn procedure_ids(invoice: &Value) -> Vec<String> {
    invoice["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l["procedure_id"].as_str().expect("procedure_id").to_owned())
        .collect()
}

#[tokio::test]
async fn an_invoice_bills_every_completed_procedure_not_yet_invoiced() {
    let d = desk().await;
    let first = d.charge(&d.patient, 4500).await;
    let second = d.charge(&d.patient, 9500).await;
    d.planned(&d.patient, 12_000).await;
    let res = d
        .app
        .post(
            "/api/v2/invoices",
            Some(d.t()),
            json!({"patient_id": d.patient}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let location = res.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let invoice: Value = res.json().await.expect("json");
    assert_eq!(location, format!("/api/v2/invoices/{}", id(&invoice)));
    assert_eq!(invoice["patient_id"], json!(d.patient));
    assert_eq!(procedure_ids(&invoice), vec![first, second]);
    let line = &invoice["lines"][0];
    assert_eq!(line["code"], "X-EXAM");
    assert_eq!(line["description"], "Periodic examination");
    assert_eq!(line["fee_cents"], 4500);
    assert_eq!(invoice["lines"][1]["fee_cents"], 9500);
    assert_eq!(invoice["total_cents"], 14_000, "Σ of the lines");
    assert_eq!(
        (
            &invoice["paid_cents"],
            &invoice["open_cents"],
            &invoice["status"]
        ),
        (&json!(0), &json!(14_000), &json!("open"))
    );
    assert_eq!(
        invoice["number"],
        json!(format!("{}-000001", issued_year(&invoice)))
    );
    assert_eq!(d.invoice(&id(&invoice)).await, invoice);
    // Nothing is left to bill now.
    expect_invalid(
        d.app
            .post(
                "/api/v2/invoices",
                Some(d.t()),
                json!({"patient_id": d.patient}),
            )
            .await,
        "procedure_ids",
    )
    .await;
}

#[tokio::test]
async fn an_invoice_bills_the_procedures_named_and_leaves_the_rest() {
    let d = desk().await;
    let a = d.charge(&d.patient, 1000).await;
    let b = d.charge(&d.patient, 2000).await;
    let c = d.charge(&d.patient, 3000).await;
    let only_b = expect_json(
        d.app
            .post(
                "/api/v2/invoices",
                Some(d.t()),
                json!({"patient_id": d.patient, "procedure_ids": [b]}),
            )
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(procedure_ids(&only_b), vec![b.clone()]);
    assert_eq!(only_b["total_cents"], 2000);
    let rest = d.issue(&d.patient).await;
    assert_eq!(procedure_ids(&rest), vec![a, c]);
    assert_eq!(rest["total_cents"], 4000);
    let year = issued_year(&rest);
    assert_eq!(only_b["number"], json!(format!("{year}-000001")));
    assert_eq!(rest["number"], json!(format!("{year}-000002")));
}

#[tokio::test]
async fn a_procedure_that_cannot_be_billed_is_422_naming_its_place() {
    let d = desk().await;
    let billable = d.charge(&d.patient, 1000).await;
    let other = d.patient_of("Other", None).await;
    let others = d.charge(&other, 1000).await;
    let planned = d.planned(&d.patient, 1000).await;
    let reversed = d.charge(&d.patient, 1000).await;
    d.reverse(&reversed).await;
    let invoiced = d.charge(&d.patient, 1000).await;
    expect_json(
        d.app
            .post(
                "/api/v2/invoices",
                Some(d.t()),
                json!({"patient_id": d.patient, "procedure_ids": [invoiced]}),
            )
            .await,
        StatusCode::CREATED,
    )
    .await;
    let problem = expect_problem(
        d.app
            .post(
                "/api/v2/invoices",
                Some(d.t()),
                json!({"patient_id": d.patient,
                       "procedure_ids": [billable, others, planned, reversed, invoiced,
                                         uuid::Uuid::now_v7()]}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        fields(&problem),
        vec![
            "procedure_ids[1]",
            "procedure_ids[2]",
            "procedure_ids[3]",
            "procedure_ids[4]",
            "procedure_ids[5]"
        ],
        "{problem}"
    );
    let listed = pages(
        &d.app,
        d.t(),
        &format!("/api/v2/invoices?patient_id={}", d.patient),
    )
    .await;
    assert_eq!(listed.len(), 1, "only the first invoice was issued");
    // The refusal gave no number away.
    let next = d.issue(&d.patient).await;
    assert_eq!(procedure_ids(&next), vec![billable]);
    assert!(next["number"]
        .as_str()
        .is_some_and(|n| n.ends_with("-000002")));
}

#[tokio::test]
async fn with_nothing_to_bill_or_no_such_patient_an_invoice_is_422() {
    let d = desk().await;
    d.planned(&d.patient, 1000).await;
    for body in [
        json!({"patient_id": d.patient}),
        json!({"patient_id": d.patient, "procedure_ids": []}),
    ] {
        expect_invalid(
            d.app.post("/api/v2/invoices", Some(d.t()), body).await,
            "procedure_ids",
        )
        .await;
    }
    expect_invalid(
        d.app
            .post(
                "/api/v2/invoices",
                Some(d.t()),
                json!({"patient_id": uuid::Uuid::now_v7()}),
            )
            .await,
        "patient_id",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_invoices_issued_at_once_are_numbered_one_to_ten() {
    let d = desk().await;
    let mut patients = Vec::new();
    for n in 0..10 {
        let p = d.patient_of(&format!("P{n}"), None).await;
        d.charge(&p, 1000 + n).await;
        patients.push(p);
    }
    let tasks: Vec<_> = patients
        .iter()
        .map(|p| {
            let req = d
                .app
                .client
                .post(d.app.url("/api/v2/invoices"))
                .bearer_auth(d.t())
                .json(&json!({"patient_id": p}));
            tokio::spawn(async move {
                let res = req.send().await.expect("sent");
                (res.status(), res.json::<Value>().await.expect("json"))
            })
        })
        .collect();
    let mut numbers = Vec::new();
    let mut year = 0;
    for t in tasks {
        let (status, invoice) = t.await.expect("ran");
        assert_eq!(status, StatusCode::CREATED, "{invoice}");
        year = issued_year(&invoice);
        numbers.push(invoice["number"].as_str().expect("number").to_owned());
    }
    numbers.sort();
    let expected: Vec<String> = (1..=10).map(|n| format!("{year}-{n:06}")).collect();
    assert_eq!(numbers, expected, "no gap and no duplicate");
    // Numbers run per clinic.
    let beta = desk_on(d.app.clone(), d.app.register_clinic("Beta").await).await;
    beta.charge(&beta.patient, 1000).await;
    let theirs = beta.issue(&beta.patient).await;
    assert_eq!(
        theirs["number"],
        json!(format!("{}-000001", issued_year(&theirs)))
    );
}

#[tokio::test]
async fn an_invoice_is_open_until_allocations_pay_it_in_full() {
    let d = desk().await;
    d.charge(&d.patient, 6000).await;
    let invoice = d.issue(&d.patient).await;
    let allocate = |amount: i64| {
        json!({"patient_id": d.patient, "amount_cents": amount, "method": "cash",
               "allocations": [{"invoice_id": invoice["id"], "amount_cents": amount}]})
    };
    d.pay(allocate(2500)).await;
    let partly = d.invoice(&id(&invoice)).await;
    assert_eq!(
        (
            partly["status"].as_str(),
            cents(&partly["paid_cents"]),
            cents(&partly["open_cents"])
        ),
        (Some("open"), 2500, 3500)
    );
    d.pay(allocate(3500)).await;
    let paid = d.invoice(&id(&invoice)).await;
    assert_eq!(
        (
            paid["status"].as_str(),
            cents(&paid["paid_cents"]),
            cents(&paid["open_cents"])
        ),
        (Some("paid"), 6000, 0)
    );
    assert_eq!(paid["total_cents"], 6000);
    let listed = pages(&d.app, d.t(), "/api/v2/invoices").await;
    assert_eq!(listed, vec![paid]);
}

#[tokio::test]
async fn an_unpaid_invoice_is_voided_once_and_its_procedures_billed_again() {
    let d = desk().await;
    let procedure = d.charge(&d.patient, 4500).await;
    let invoice = d.issue(&d.patient).await;
    let void = format!("/api/v2/invoices/{}/void", id(&invoice));
    expect_invalid(
        d.app.post(&void, Some(d.t()), json!({"reason": ""})).await,
        "reason",
    )
    .await;
    let voided = expect_json(
        d.app
            .post(&void, Some(d.t()), json!({"reason": "wrong patient"}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(voided["status"], "void");
    assert_eq!(voided["void_reason"], "wrong patient");
    assert!(voided["voided_at"].is_string());
    assert_eq!(voided["open_cents"], 0);
    assert_eq!(voided["number"], invoice["number"], "the number stays");
    expect_problem(
        d.app
            .post(&void, Some(d.t()), json!({"reason": "again"}))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    let again = d.issue(&d.patient).await;
    assert_eq!(procedure_ids(&again), vec![procedure]);
    assert!(again["number"]
        .as_str()
        .is_some_and(|n| n.ends_with("-000002")));
    assert_eq!(d.invoice(&id(&invoice)).await["status"], "void");
    // Credit is not applied to a void invoice.
    d.pay(json!({"patient_id": d.patient, "amount_cents": 1000, "method": "cash"}))
        .await;
    expect_problem(
        d.app
            .post(
                &format!("/api/v2/invoices/{}/apply-credit", id(&invoice)),
                Some(d.t()),
                json!({}),
            )
            .await,
        StatusCode::CONFLICT,
    )
    .await;
}

#[tokio::test]
async fn an_invoice_with_money_on_it_is_not_voided() {
    let d = desk().await;
    d.charge(&d.patient, 4500).await;
    let invoice = d.issue(&d.patient).await;
    d.pay(
        json!({"patient_id": d.patient, "amount_cents": 100, "method": "cash",
                 "allocations": [{"invoice_id": invoice["id"], "amount_cents": 100}]}),
    )
    .await;
    let void = format!("/api/v2/invoices/{}/void", id(&invoice));
    expect_problem(
        d.app
            .post(&void, Some(d.t()), json!({"reason": "oops"}))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    let read = d.invoice(&id(&invoice)).await;
    assert_eq!(
        (read["status"].as_str(), cents(&read["paid_cents"])),
        (Some("open"), 100)
    );
    expect_invalid(
        d.app
            .post(
                "/api/v2/invoices",
                Some(d.t()),
                json!({"patient_id": d.patient}),
            )
            .await,
        "procedure_ids",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_racing_a_payment_on_the_same_invoice_lets_only_one_through() {
    let d = desk().await;
    // Several rounds, each on a fresh invoice, the void sent a little later each time, so
    // that it meets the payment inside its transaction.
    for round in 0..8 {
        d.charge(&d.patient, 3000 + round).await;
        let invoice = d.issue(&d.patient).await;
        let open = cents(&invoice["open_cents"]);
        let payment = d
            .app
            .client
            .post(d.app.url("/api/v2/payments"))
            .bearer_auth(d.t())
            .header("Idempotency-Key", new_key())
            .json(
                &json!({"patient_id": d.patient, "amount_cents": open, "method": "cash",
                          "allocations": [{"invoice_id": invoice["id"], "amount_cents": open}]}),
            );
        let void = d
            .app
            .client
            .post(
                d.app
                    .url(&format!("/api/v2/invoices/{}/void", id(&invoice))),
            )
            .bearer_auth(d.t())
            .json(&json!({"reason": "reissued"}));
        let payment = tokio::spawn(async move { payment.send().await.expect("sent").status() });
        let void = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(3 * round as u64)).await;
            void.send().await.expect("sent").status()
        });
        let outcome = (
            payment.await.expect("ran").as_u16(),
            void.await.expect("ran").as_u16(),
        );
        let read = d.invoice(&id(&invoice)).await;
        let seen = (read["status"].as_str(), cents(&read["paid_cents"]));
        match outcome {
            (201, 409) => assert_eq!(seen, (Some("paid"), open), "round {round}"),
            (422, 200) => assert_eq!(seen, (Some("void"), 0), "round {round}"),
            other => panic!("round {round}: payment and void answered {other:?}; {read}"),
        }
    }
}

#[tokio::test]
async fn credit_applied_to_an_open_invoice_pays_it_and_no_more_than_the_credit() {
    let d = desk().await;
    d.charge(&d.patient, 4500).await;
    let invoice = d.issue(&d.patient).await;
    d.pay(json!({"patient_id": d.patient, "amount_cents": 5000, "method": "cash"}))
        .await;
    let apply = format!("/api/v2/invoices/{}/apply-credit", id(&invoice));
    expect_invalid(
        d.app
            .post(&apply, Some(d.t()), json!({"amount_cents": 5001}))
            .await,
        "amount_cents",
    )
    .await;
    let before = d.balance(&d.patient).await;
    assert_eq!(cents(&before["credit_cents"]), 5000);
    let paid = expect_json(
        d.app.post(&apply, Some(d.t()), json!({})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (
            paid["status"].as_str(),
            cents(&paid["paid_cents"]),
            cents(&paid["open_cents"])
        ),
        (Some("paid"), 4500, 0)
    );
    let after = d.balance(&d.patient).await;
    assert_eq!(
        cents(&after["credit_cents"]),
        500,
        "the credit drops by what was applied"
    );
    assert_eq!(
        after["balance_cents"], before["balance_cents"],
        "moving credit onto an invoice changes what is owed net of it by nothing"
    );
    let entries = d.ledger(&d.patient).await;
    assert_eq!(entries[0]["kind"], "credit_applied");
    assert_eq!(entries[0]["invoice_id"], invoice["id"]);
    assert_eq!(cents(&after["balance_cents"]), sum(&entries));
    // A paid invoice takes no credit; another takes at most what is left of it.
    expect_problem(
        d.app.post(&apply, Some(d.t()), json!({})).await,
        StatusCode::CONFLICT,
    )
    .await;
    d.charge(&d.patient, 2000).await;
    let next = d.issue(&d.patient).await;
    expect_invalid(
        d.app
            .post(
                &format!("/api/v2/invoices/{}/apply-credit", id(&next)),
                Some(d.t()),
                json!({"amount_cents": 501}),
            )
            .await,
        "amount_cents",
    )
    .await;
    assert_eq!(cents(&d.invoice(&id(&next)).await["paid_cents"]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_credit_applications_never_spend_more_than_the_credit() {
    let d = desk().await;
    let mut invoices = Vec::new();
    for _ in 0..4 {
        d.charge(&d.patient, 4500).await;
        invoices.push(id(&d.issue(&d.patient).await));
    }
    d.pay(json!({"patient_id": d.patient, "amount_cents": 5000, "method": "cash"}))
        .await;
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let req = d
                .app
                .client
                .post(d.app.url(&format!(
                    "/api/v2/invoices/{}/apply-credit",
                    invoices[i % invoices.len()]
                )))
                .bearer_auth(d.t())
                .json(&json!({"amount_cents": 1000}));
            tokio::spawn(async move { req.send().await.expect("sent").status() })
        })
        .collect();
    let mut applied = 0;
    for t in tasks {
        match t.await.expect("ran") {
            StatusCode::OK => applied += 1,
            StatusCode::UNPROCESSABLE_ENTITY => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(applied, 5, "5000 of credit pays five applications of 1000");
    let b = d.balance(&d.patient).await;
    assert_eq!(cents(&b["credit_cents"]), 0);
    let mut on_invoices = 0;
    for invoice in &invoices {
        on_invoices += cents(&d.invoice(invoice).await["paid_cents"]);
    }
    assert_eq!(on_invoices, 5000);
    assert_eq!(cents(&b["balance_cents"]), sum(&d.ledger(&d.patient).await));
}

#[tokio::test]
async fn every_journal_transaction_of_billing_sums_to_zero() {
    let d = desk().await;
    let child = d.patient_of("Kid", Some(&d.patient)).await;
    d.charge(&d.patient, 3000).await;
    d.charge(&d.patient, 4500).await;
    d.charge(&child, 2500).await;
    let own = d.issue(&d.patient).await;
    let childs = d.issue(&child).await;
    let payment = d
        .pay(
            json!({"patient_id": d.patient, "amount_cents": 9000, "method": "check",
                    "allocations": [{"invoice_id": childs["id"], "amount_cents": 2500},
                                    {"invoice_id": own["id"], "amount_cents": 4000}]}),
        )
        .await;
    expect_json(
        d.app
            .post(
                &format!("/api/v2/invoices/{}/apply-credit", id(&own)),
                Some(d.t()),
                json!({"amount_cents": 1000}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    expect_json(
        refund(&d.app, d.t(), &id(&payment), 8000).await,
        StatusCode::CREATED,
    )
    .await;
    d.adjust(&d.patient, -250).await;
    // A procedure on a live invoice is not reversed: this one is not billed yet.
    let reversed = d.charge(&d.patient, 1200).await;
    d.reverse(&reversed).await;
    assert_eq!(unbalanced(&d.app).await, Vec::<String>::new());
    let mut db = d.app.admin_db().await;
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT kind FROM ledger_transactions ORDER BY kind")
            .fetch_all(&mut db)
            .await
            .expect("kinds");
    assert_eq!(
        kinds,
        vec![
            "adjustment",
            "charge",
            "credit_applied",
            "payment",
            "refund",
            "reversal"
        ],
        "every kind of entry was checked"
    );
    for patient in [&d.patient, &child] {
        let b = d.balance(patient).await;
        assert_eq!(cents(&b["balance_cents"]), sum(&d.ledger(patient).await));
    }
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
async fn the_server_role_cannot_rewrite_payments_allocations_refunds_or_invoices() {
    let d = desk().await;
    d.charge(&d.patient, 4500).await;
    let invoice = d.issue(&d.patient).await;
    let payment = d
        .pay(
            json!({"patient_id": d.patient, "amount_cents": 5000, "method": "card",
                    "allocations": [{"invoice_id": invoice["id"], "amount_cents": 1000}]}),
        )
        .await;
    expect_json(
        refund(&d.app, d.t(), &id(&payment), 300).await,
        StatusCode::CREATED,
    )
    .await;
    let clinic = &d.owner.clinic_id;
    for sql in [
        "UPDATE payments SET amount_cents = 1",
        "DELETE FROM payments",
        "UPDATE allocations SET amount_cents = 1",
        "DELETE FROM allocations",
        "UPDATE refunds SET amount_cents = 1",
        "DELETE FROM refunds",
        "UPDATE invoice_lines SET fee_cents = 0",
        "DELETE FROM invoice_lines",
        "UPDATE invoices SET seq = seq + 100",
        "UPDATE invoices SET year = 1999",
        "UPDATE invoices SET number = DEFAULT",
        "DELETE FROM invoices",
    ] {
        assert_eq!(
            refused(&d.app, clinic, sql).await.as_deref(),
            Some("42501"),
            "permission denied: {sql}"
        );
    }
    let read = d.invoice(&id(&invoice)).await;
    assert_eq!(read["number"], invoice["number"]);
    assert_eq!(read["total_cents"], 4500);
    assert_eq!(d.payment(&id(&payment)).await["refundable_cents"], 4700);
}

#[tokio::test]
async fn a_void_invoice_stays_void_and_its_lines_stay_out_of_the_live_set() {
    let d = desk().await;
    d.charge(&d.patient, 4500).await;
    let invoice = d.issue(&d.patient).await;
    expect_json(
        d.app
            .post(
                &format!("/api/v2/invoices/{}/void", id(&invoice)),
                Some(d.t()),
                json!({"reason": "duplicate"}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    let clinic = &d.owner.clinic_id;
    let this = id(&invoice);
    for sql in [
        format!("UPDATE invoice_lines SET live = true WHERE invoice_id = '{this}'"),
        format!("UPDATE invoices SET voided_at = NULL, voided_by = NULL WHERE id = '{this}'"),
        format!("UPDATE invoices SET void_reason = 'rewritten' WHERE id = '{this}'"),
    ] {
        assert_eq!(
            refused(&d.app, clinic, &sql).await.as_deref(),
            Some("23514"),
            "refused by its trigger: {sql}"
        );
    }
    let read = d.invoice(&this).await;
    assert_eq!(read["status"], "void");
    assert_eq!(read["void_reason"], "duplicate");
    let again = d.issue(&d.patient).await;
    assert_eq!(
        again["total_cents"], 4500,
        "the procedure is billable again"
    );
}

#[tokio::test]
async fn an_invoice_asked_for_as_pdf_is_a_printable_pdf_of_it() {
    let d = desk().await;
    d.charge(&d.patient, 4500).await;
    d.charge(&d.patient, 9500).await;
    let invoice = d.issue(&d.patient).await;
    let number = invoice["number"].as_str().expect("number").to_owned();
    let res = d
        .app
        .client
        .get(d.app.url(&format!("/api/v2/invoices/{}", id(&invoice))))
        .bearer_auth(d.t())
        .header("accept", "application/pdf")
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/pdf");
    let bytes = res.bytes().await.expect("body");
    assert!(bytes.starts_with(b"%PDF-"), "a PDF");
    let text = String::from_utf8_lossy(&bytes);
    // Text shows uncompressed in the page's content stream.
    assert!(text.contains(&format!("Invoice {number}")), "the number");
    assert!(text.contains("140.00 EUR"), "the total in euros");
    assert!(text.contains("X-EXAM"), "a line's code");
    assert!(text.trim_end().ends_with("%%EOF"));
    // Without the Accept header it is JSON, as before.
    let json = d.invoice(&id(&invoice)).await;
    assert_eq!(json["total_cents"], 14_000);
}

//! Billing: a patient's account (ledger, running balance, family balance), who may read
//! and write it, what the audit trail records, the day sheet's money, and another
//! clinic's billing ids. Payments and refunds, invoices, and the properties under random
//! sequences have modules of their own; the fixtures they share are here.

use std::sync::Arc;

use crate::common::*;
use crate::treatment::{expect_invalid, expect_json, id};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

/// A clinic (Europe/Berlin) with its owner, a dentist, one patient and a whole-mouth code
/// whose fee each charted procedure overrides.
pub struct Desk {
    pub app: Arc<TestApp>,
    pub owner: Registered,
    pub dentist: Registered,
    pub patient: String,
    pub code: String,
}

/// A server whose rate limits leave room for bursts of concurrent requests.
pub async fn roomy_server() -> TestApp {
    spawn_with(|v| {
        v.insert("RATE_LIMIT_PER_MINUTE".into(), "100000".into());
        v.insert("RATE_LIMIT_CLINIC_PER_MINUTE".into(), "100000".into());
    })
    .await
}

pub async fn desk() -> Desk {
    let app = Arc::new(roomy_server().await);
    let owner = app.register_clinic("Billing").await;
    desk_on(app, owner).await
}

/// The rest of a [`Desk`] in `owner`'s clinic.
pub async fn desk_on(app: Arc<TestApp>, owner: Registered) -> Desk {
    let dentist = app.staff(&owner.access, "dentist").await;
    let patient = app.patient(&owner.access, "Pat", "Payer").await;
    let code = clinic_code(&app, &owner.access).await;
    Desk {
        app,
        owner,
        dentist,
        patient,
        code,
    }
}

/// A whole-mouth code of the caller's clinic.
pub async fn clinic_code(app: &TestApp, owner: &str) -> String {
    id(&expect_json(
        app.post(
            "/api/v2/procedure-codes",
            Some(owner),
            json!({"code": "X-EXAM", "description": "Periodic examination", "fee_cents": 4500}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await)
}

impl Desk {
    pub fn t(&self) -> &str {
        &self.owner.access
    }

    /// A procedure charted for `patient` with `fee` and left planned.
    pub async fn planned(&self, patient: &str, fee: i64) -> String {
        id(&expect_json(
            self.app
                .post(
                    &format!("/api/v2/patients/{patient}/procedures"),
                    Some(&self.dentist.access),
                    json!({"procedure_code_id": self.code, "fee_cents": fee}),
                )
                .await,
            StatusCode::CREATED,
        )
        .await)
    }

    /// A procedure charted and completed for `patient`: a charge of `fee`.
    pub async fn charge(&self, patient: &str, fee: i64) -> String {
        let procedure = self.planned(patient, fee).await;
        expect_json(
            self.app
                .post(
                    &format!("/api/v2/procedures/{procedure}/complete"),
                    Some(&self.dentist.access),
                    json!({}),
                )
                .await,
            StatusCode::OK,
        )
        .await;
        procedure
    }

    pub async fn reverse(&self, procedure: &str) {
        expect_json(
            self.app
                .post(
                    &format!("/api/v2/procedures/{procedure}/reverse"),
                    Some(&self.dentist.access),
                    json!({"reason": "charted in error"}),
                )
                .await,
            StatusCode::OK,
        )
        .await;
    }

    pub async fn patient_of(&self, first: &str, responsible: Option<&str>) -> String {
        let mut body = patient_body(first, "Payer");
        if let Some(r) = responsible {
            body["responsible_party_id"] = json!(r);
        }
        id(&expect_json(
            self.app
                .post("/api/v2/patients", Some(self.t()), body)
                .await,
            StatusCode::CREATED,
        )
        .await)
    }

    /// Records a payment as the owner (201) and returns it.
    pub async fn pay(&self, body: Value) -> Value {
        expect_json(pay(&self.app, self.t(), body).await, StatusCode::CREATED).await
    }

    /// Issues an invoice of all the patient's uninvoiced procedures (201).
    pub async fn issue(&self, patient: &str) -> Value {
        expect_json(
            self.app
                .post(
                    "/api/v2/invoices",
                    Some(self.t()),
                    json!({"patient_id": patient}),
                )
                .await,
            StatusCode::CREATED,
        )
        .await
    }

    pub async fn invoice(&self, invoice: &str) -> Value {
        expect_json(
            self.app
                .get(&format!("/api/v2/invoices/{invoice}"), Some(self.t()))
                .await,
            StatusCode::OK,
        )
        .await
    }

    pub async fn payment(&self, payment: &str) -> Value {
        expect_json(
            self.app
                .get(&format!("/api/v2/payments/{payment}"), Some(self.t()))
                .await,
            StatusCode::OK,
        )
        .await
    }

    pub async fn balance(&self, patient: &str) -> Value {
        balance(&self.app, self.t(), patient).await
    }

    pub async fn ledger(&self, patient: &str) -> Vec<Value> {
        ledger(&self.app, self.t(), patient).await
    }

    pub async fn adjust(&self, patient: &str, amount: i64) -> Value {
        expect_json(
            self.app
                .post(
                    "/api/v2/adjustments",
                    Some(self.t()),
                    json!({"patient_id": patient, "amount_cents": amount, "reason": "Courtesy"}),
                )
                .await,
            StatusCode::CREATED,
        )
        .await
    }
}

pub fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A POST with an `Idempotency-Key`.
pub async fn post_keyed(
    app: &TestApp,
    path: &str,
    token: &str,
    key: &str,
    body: Value,
) -> Response {
    app.client
        .post(app.url(path))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .expect("request reaches the server")
}

/// `POST /payments` under a fresh key.
pub async fn pay(app: &TestApp, token: &str, body: Value) -> Response {
    post_keyed(app, "/api/v2/payments", token, &new_key(), body).await
}

/// `POST /payments/{id}/refund` under a fresh key.
pub async fn refund(app: &TestApp, token: &str, payment: &str, amount: i64) -> Response {
    post_keyed(
        app,
        &format!("/api/v2/payments/{payment}/refund"),
        token,
        &new_key(),
        json!({"amount_cents": amount, "reason": "Returned to the patient"}),
    )
    .await
}

pub async fn balance(app: &TestApp, token: &str, patient: &str) -> Value {
    expect_json(
        app.get(&format!("/api/v2/patients/{patient}/balance"), Some(token))
            .await,
        StatusCode::OK,
    )
    .await
}

/// Every entry of the patient's ledger, newest first, page by page.
pub async fn ledger(app: &TestApp, token: &str, patient: &str) -> Vec<Value> {
    pages(
        app,
        token,
        &format!("/api/v2/patients/{patient}/ledger?limit=200"),
    )
    .await
}

/// Every item of a list, following `next_cursor`.
pub async fn pages(app: &TestApp, token: &str, first: &str) -> Vec<Value> {
    let sep = if first.contains('?') { '&' } else { '?' };
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let path = match &cursor {
            Some(c) => format!("{first}{sep}cursor={c}"),
            None => first.to_owned(),
        };
        let page = expect_json(app.get(&path, Some(token)).await, StatusCode::OK).await;
        items.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return items,
        }
    }
    panic!("{first} does not end");
}

pub fn cents(v: &Value) -> i64 {
    v.as_i64()
        .unwrap_or_else(|| panic!("an amount in minor units: {v}"))
}

/// The sum of the entries' `amount_cents`.
pub fn sum(entries: &[Value]) -> i64 {
    entries.iter().map(|e| cents(&e["amount_cents"])).sum()
}

/// The kinds and amounts of ledger entries, in their order.
pub fn kinds(entries: &[Value]) -> Vec<(String, i64)> {
    entries
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().expect("a kind").to_owned(),
                cents(&e["amount_cents"]),
            )
        })
        .collect()
}

/// Journal transactions whose lines do not sum to zero, in the whole database.
pub async fn unbalanced(app: &TestApp) -> Vec<String> {
    let mut db = app.admin_db().await;
    sqlx::query_scalar(
        "SELECT transaction_id::text FROM ledger_lines GROUP BY 1 HAVING sum(amount_cents) <> 0",
    )
    .fetch_all(&mut db)
    .await
    .expect("ledger lines")
}

#[tokio::test]
async fn the_ledger_lists_charges_payments_and_adjustments_newest_first_with_the_running_balance() {
    let d = desk().await;
    let procedure = d.charge(&d.patient, 9500).await;
    let payment = d
        .pay(json!({"patient_id": d.patient, "amount_cents": 3000, "method": "cash"}))
        .await;
    let adjustment = d.adjust(&d.patient, -500).await;
    let entries = d.ledger(&d.patient).await;
    assert_eq!(
        kinds(&entries),
        vec![
            ("adjustment".to_owned(), -500),
            ("payment".to_owned(), -3000),
            ("charge".to_owned(), 9500),
        ]
    );
    let running: Vec<i64> = entries.iter().map(|e| cents(&e["balance_cents"])).collect();
    assert_eq!(running, vec![6000, 6500, 9500]);
    let (adj, pay, charge) = (&entries[0], &entries[1], &entries[2]);
    assert_eq!(charge["procedure_id"], json!(procedure));
    assert_eq!(pay["payment_id"], payment["id"]);
    assert_eq!(adj["id"], adjustment["id"]);
    assert_eq!(adj["memo"], "Courtesy");
    assert_eq!(adj["created_by"], json!(d.owner.user_id));
    assert_eq!(charge["created_by"], json!(d.dentist.user_id));
    for e in &entries {
        assert!(
            e["posted_at"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{e}"
        );
    }
    let b = d.balance(&d.patient).await;
    assert_eq!(cents(&b["balance_cents"]), sum(&entries));
    assert_eq!(
        b,
        json!({"balance_cents": 6000, "credit_cents": 3000, "family_balance_cents": 6000})
    );
}

#[tokio::test]
async fn the_ledger_pages_one_entry_at_a_time_through_every_entry() {
    let d = desk().await;
    d.charge(&d.patient, 4500).await;
    d.charge(&d.patient, 9500).await;
    d.pay(json!({"patient_id": d.patient, "amount_cents": 2000, "method": "card"}))
        .await;
    d.adjust(&d.patient, 700).await;
    let all = d.ledger(&d.patient).await;
    assert_eq!(all.len(), 4);
    let mut walked = Vec::new();
    let mut path = format!("/api/v2/patients/{}/ledger?limit=1", d.patient);
    loop {
        let page = expect_json(d.app.get(&path, Some(d.t())).await, StatusCode::OK).await;
        let items = page["items"].as_array().expect("items");
        assert_eq!(items.len(), 1, "{page}");
        walked.push(items[0].clone());
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v2/patients/{}/ledger?limit=1&cursor={c}", d.patient),
            None => break,
        }
        assert!(walked.len() <= all.len(), "the pages end");
    }
    assert_eq!(
        walked, all,
        "the same entries, in the same order, each once"
    );
    expect_problem(
        d.app
            .get(
                &format!("/api/v2/patients/{}/ledger?cursor=tampered", d.patient),
                Some(d.t()),
            )
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn the_family_balance_includes_the_patients_the_payer_is_responsible_for() {
    let d = desk().await;
    let parent = d.patient.clone();
    let child = d.patient_of("Kid", Some(&parent)).await;
    let stranger = d.patient_of("Stranger", None).await;
    d.charge(&parent, 4000).await;
    d.charge(&child, 2500).await;
    d.charge(&stranger, 9900).await;
    d.pay(json!({"patient_id": parent, "amount_cents": 1000, "method": "cash"}))
        .await;
    let parents = d.balance(&parent).await;
    assert_eq!(cents(&parents["balance_cents"]), 3000);
    assert_eq!(
        cents(&parents["family_balance_cents"]),
        3000 + 2500,
        "the child's balance counts, the stranger's does not"
    );
    let childs = d.balance(&child).await;
    assert_eq!(cents(&childs["balance_cents"]), 2500);
    assert_eq!(cents(&childs["family_balance_cents"]), 2500);
}

#[tokio::test]
async fn billing_and_the_front_desk_read_the_ledger_and_take_payments_but_a_dentist_does_not() {
    let d = desk().await;
    d.charge(&d.patient, 4500).await;
    let billing = d.app.staff(d.t(), "billing").await;
    let reception = d.app.staff(d.t(), "receptionist").await;
    for who in [&billing, &reception] {
        let entries = ledger(&d.app, &who.access, &d.patient).await;
        assert_eq!(
            entries.last().map(|e| e["kind"].clone()),
            Some(json!("charge"))
        );
        let b = balance(&d.app, &who.access, &d.patient).await;
        assert_eq!(cents(&b["balance_cents"]), sum(&entries));
        let payment = expect_json(
            pay(
                &d.app,
                &who.access,
                json!({"patient_id": d.patient, "amount_cents": 1000, "method": "card"}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
        assert_eq!(payment["created_by"], json!(who.user_id));
    }
    let t = Some(d.dentist.access.as_str());
    for res in [
        d.app
            .get(&format!("/api/v2/patients/{}/ledger", d.patient), t)
            .await,
        d.app
            .get(&format!("/api/v2/patients/{}/balance", d.patient), t)
            .await,
        d.app.get("/api/v2/payments", t).await,
        pay(
            &d.app,
            &d.dentist.access,
            json!({"patient_id": d.patient, "amount_cents": 1000, "method": "cash"}),
        )
        .await,
    ] {
        expect_problem(res, StatusCode::FORBIDDEN).await;
    }
    assert_eq!(
        d.ledger(&d.patient).await.len(),
        3,
        "two payments and the charge"
    );
}

#[tokio::test]
async fn payments_ledger_reads_and_invoices_are_audited_for_the_patient() {
    let d = desk().await;
    let other = d.patient_of("Other", None).await;
    d.charge(&d.patient, 4500).await;
    let payment = d
        .pay(json!({"patient_id": d.patient, "amount_cents": 1000, "method": "cash"}))
        .await;
    let invoice = d.issue(&d.patient).await;
    d.ledger(&d.patient).await;
    let events = pages(
        &d.app,
        d.t(),
        &format!("/api/v2/audit-events?patient_id={}&limit=200", d.patient),
    )
    .await;
    let find = |action: &str| {
        events
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("a {action} event: {events:#?}"))
            .clone()
    };
    let created = find("payment.create");
    assert_eq!(created["resource_id"], payment["id"]);
    assert_eq!(created["user_id"], json!(d.owner.user_id));
    assert_eq!(created["outcome"], "success");
    assert_eq!(find("invoice.create")["resource_id"], invoice["id"]);
    assert_eq!(find("ledger.read")["patient_id"], json!(d.patient));
    let others = pages(
        &d.app,
        d.t(),
        &format!("/api/v2/audit-events?patient_id={other}&limit=200"),
    )
    .await;
    assert!(
        !others
            .iter()
            .any(|e| e["action"] == "payment.create" || e["action"] == "ledger.read"),
        "{others:#?}"
    );
}

/// The local date (Europe/Berlin) on which a payment was posted to the journal.
pub async fn posted_on(app: &TestApp, payment: &str) -> chrono::NaiveDate {
    let mut db = app.admin_db().await;
    let day: String = sqlx::query_scalar(
        "SELECT ((t.posted_at AT TIME ZONE 'Europe/Berlin')::date)::text FROM payments p \
         JOIN ledger_transactions t ON t.clinic_id = p.clinic_id AND t.id = p.transaction_id \
         WHERE p.id = $1::uuid",
    )
    .bind(payment)
    .fetch_one(&mut db)
    .await
    .expect("posted");
    day.parse().expect("a date")
}

#[tokio::test]
async fn the_day_sheet_counts_collections_by_method_refunds_and_adjustments() {
    let d = desk().await;
    d.charge(&d.patient, 50_000).await;
    let mut card = Value::Null;
    for (method, amount) in [
        ("cash", 1000),
        ("card", 2000),
        ("bank_transfer", 3000),
        ("check", 4000),
        ("cash", 500),
    ] {
        let p = d
            .pay(json!({"patient_id": d.patient, "amount_cents": amount, "method": method}))
            .await;
        if method == "card" {
            card = p;
        }
    }
    expect_json(
        refund(&d.app, d.t(), card["id"].as_str().expect("id"), 800).await,
        StatusCode::CREATED,
    )
    .await;
    d.adjust(&d.patient, -700).await;
    d.adjust(&d.patient, 200).await;
    let day = posted_on(&d.app, card["id"].as_str().expect("id")).await;
    let sheet = expect_json(
        d.app
            .get(
                &format!("/api/v2/reports/day-sheet?date={day}"),
                Some(d.t()),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        sheet["collections"],
        json!({"cash": 1500, "card": 2000, "bank_transfer": 3000, "check": 4000,
               "total_cents": 10_500})
    );
    assert_eq!(sheet["refunds_cents"], 800);
    assert_eq!(sheet["adjustments_cents"], -500);
    assert_eq!(sheet["production_cents"], 50_000);
    let before = day.pred_opt().expect("a day");
    let quiet = expect_json(
        d.app
            .get(
                &format!("/api/v2/reports/day-sheet?date={before}"),
                Some(d.t()),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(quiet["collections"]["total_cents"], 0);
    assert_eq!(quiet["refunds_cents"], 0);
    assert_eq!(quiet["adjustments_cents"], 0);
}

#[tokio::test]
async fn another_clinics_payments_invoices_and_accounts_are_404() {
    let d = desk().await;
    let b = desk_on(d.app.clone(), d.app.register_clinic("Beta").await).await;
    b.charge(&b.patient, 4500).await;
    let b_invoice = b.issue(&b.patient).await;
    let b_payment = b
        .pay(
            json!({"patient_id": b.patient, "amount_cents": 6000, "method": "card",
                    "allocations": [{"invoice_id": b_invoice["id"], "amount_cents": 1000}]}),
        )
        .await;
    let (invoice, payment) = (id(&b_invoice), id(&b_payment));
    let (app, t) = (&d.app, Some(d.t()));
    for res in [
        app.get(&format!("/api/v2/payments/{payment}"), t).await,
        refund(app, d.t(), &payment, 100).await,
        app.get(&format!("/api/v2/invoices/{invoice}"), t).await,
        app.post(
            &format!("/api/v2/invoices/{invoice}/void"),
            t,
            json!({"reason": "not ours"}),
        )
        .await,
        app.post(
            &format!("/api/v2/invoices/{invoice}/apply-credit"),
            t,
            json!({}),
        )
        .await,
        app.get(&format!("/api/v2/patients/{}/ledger", b.patient), t)
            .await,
        app.get(&format!("/api/v2/patients/{}/balance", b.patient), t)
            .await,
    ] {
        let url = res.url().path().to_owned();
        let problem = expect_problem(res, StatusCode::NOT_FOUND).await;
        assert!(
            !problem.to_string().contains(&b.patient),
            "{url}: {problem}"
        );
    }
    // Nor does a list or a body reach them.
    let listed = expect_json(
        app.get(&format!("/api/v2/payments?patient_id={}", b.patient), t)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed["items"], json!([]));
    expect_invalid(
        pay(
            app,
            d.t(),
            json!({"patient_id": b.patient, "amount_cents": 100, "method": "cash"}),
        )
        .await,
        "patient_id",
    )
    .await;
    // B's are as they were.
    assert_eq!(b.payment(&payment).await, b_payment);
    let read = b.invoice(&invoice).await;
    assert_eq!(
        (read["status"].as_str(), cents(&read["paid_cents"])),
        (Some("open"), 1000)
    );
    assert_eq!(cents(&b.balance(&b.patient).await["credit_cents"]), 5000);
}

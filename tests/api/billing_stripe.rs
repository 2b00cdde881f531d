//! Card payments through Stripe, against a local server that speaks Stripe's protocol
//! ([`crate::stripe_fake`]): PaymentIntents created with Stripe's idempotency keys, on the
//! clinic's connected account when it has one; the signed webhook that records each
//! payment and refund once; refunds of card payments made at Stripe first; and the
//! procedure on a live invoice that is not reversed.

use std::sync::Arc;

use crate::billing::{
    balance, desk, desk_on, new_key, pages, post_keyed, posted_on, unbalanced, Desk,
};
use crate::common::*;
use crate::stripe_fake::{stripe_id, FakeStripe};
use crate::treatment::{expect_json, id};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

const INTENTS: &str = "/api/v2/payments/stripe-intents";

/// A clinic whose server takes card payments through the fake Stripe.
async fn card_desk() -> (Desk, FakeStripe) {
    let stripe = FakeStripe::start().await;
    let app = spawn_with(|v| {
        stripe.configure(v);
        v.insert("RATE_LIMIT_PER_MINUTE".into(), "100000".into());
        v.insert("RATE_LIMIT_CLINIC_PER_MINUTE".into(), "100000".into());
    })
    .await;
    let app = Arc::new(app);
    let owner = app.register_clinic("Card payments").await;
    (desk_on(app, owner).await, stripe)
}

async fn start_intent(d: &Desk, key: &str, body: Value) -> Response {
    post_keyed(&d.app, INTENTS, d.t(), key, body).await
}

/// A completed procedure of `fee` billed on a new invoice; returns the invoice's id.
async fn invoiced(d: &Desk, fee: i64) -> String {
    d.charge(&d.patient, fee).await;
    id(&d.issue(&d.patient).await)
}

/// A PaymentIntent for the desk's patient (201); returns its id.
async fn intent(d: &Desk, amount: i64, invoice: Option<&str>) -> String {
    let mut body = json!({"patient_id": d.patient, "amount_cents": amount});
    if let Some(i) = invoice {
        body["invoice_id"] = json!(i);
    }
    let created = expect_json(start_intent(d, &new_key(), body).await, StatusCode::CREATED).await;
    created["payment_intent_id"]
        .as_str()
        .expect("payment_intent_id")
        .to_owned()
}

/// The desk's patient's payments.
async fn payments(d: &Desk) -> Vec<Value> {
    pages(
        &d.app,
        d.t(),
        &format!("/api/v2/payments?patient_id={}", d.patient),
    )
    .await
}

/// The one payment of the desk's patient.
async fn the_payment(d: &Desk) -> Value {
    let all = payments(d).await;
    assert_eq!(all.len(), 1, "exactly one payment: {all:?}");
    all.into_iter().next().expect("one")
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    let mut db = app.admin_db().await;
    sqlx::query_scalar(sql)
        .fetch_one(&mut db)
        .await
        .expect("count")
}

/// What a journal account holds, in the whole database.
async fn account_total(app: &TestApp, account: &str) -> i64 {
    let mut db = app.admin_db().await;
    sqlx::query_scalar(
        "SELECT coalesce(sum(amount_cents), 0)::bigint FROM ledger_lines WHERE account = $1",
    )
    .bind(account)
    .fetch_one(&mut db)
    .await
    .expect("account total")
}

async fn stripe_refund_ids(app: &TestApp) -> Vec<Option<String>> {
    let mut db = app.admin_db().await;
    sqlx::query_scalar("SELECT stripe_refund_id FROM refunds ORDER BY created_at, id")
        .fetch_all(&mut db)
        .await
        .expect("refunds")
}

/// The webhook's answer; an event it takes is `queued`, and `"recorded"` here waits until
/// the outbox worker has recorded it.
async fn answered(app: &TestApp, res: Response, result: &str) {
    let body = expect_json(res, StatusCode::OK).await;
    if result == "recorded" {
        assert_eq!(body, json!({ "result": "queued" }));
        settle(app).await;
    } else {
        assert_eq!(body, json!({ "result": result }));
    }
}

/// Waits until every queued Stripe event is recorded.
async fn settle(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let owed = count(
            app,
            "SELECT count(*) FROM outbox WHERE topic = 'stripe' AND delivered_at IS NULL",
        )
        .await;
        if owed == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{owed} Stripe events not recorded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_intent_is_created_at_stripe_in_the_clinics_currency_naming_clinic_patient_and_invoice()
{
    let (d, stripe) = card_desk().await;
    let invoice = invoiced(&d, 9500).await;
    let key = new_key();
    let body = json!({"patient_id": d.patient, "amount_cents": 9500, "invoice_id": invoice});
    // Stripe creates the intent but its answer is lost: the client sees a 503 and
    // retries under the same key, which is the same request at Stripe.
    stripe.lose_next_answer();
    let res = start_intent(&d, &key, body.clone()).await;
    expect_problem(res, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(
        count(&d.app, "SELECT count(*) FROM stripe_intents").await,
        0
    );
    let res = start_intent(&d, &key, body.clone()).await;
    assert!(
        res.headers().contains_key("location"),
        "a created resource has a Location"
    );
    let created = expect_json(res, StatusCode::CREATED).await;
    let pi = created["payment_intent_id"].as_str().expect("an intent id");
    assert!(pi.starts_with("pi_"), "{created}");
    assert!(
        created["client_secret"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{pi}_secret_"))),
        "{created}"
    );
    assert_eq!(
        created.as_object().map(|o| o.len()),
        Some(2),
        "only the id and the client secret: {created}"
    );

    let sent = stripe.requests_to("/v1/payment_intents");
    assert_eq!(sent.len(), 2, "the first try and the retry");
    assert_eq!(stripe.intent_count(), 1, "one intent at Stripe");
    let first = &sent[0];
    assert_eq!(
        first.header("authorization"),
        Some(format!("Bearer {}", stripe.secret_key).as_str())
    );
    assert!(first
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded")));
    assert_eq!(first.field("amount"), Some("9500"));
    assert_eq!(first.field("currency"), Some("eur"));
    assert_eq!(
        first.field("automatic_payment_methods[enabled]"),
        Some("true")
    );
    assert_eq!(
        first.field("metadata[clinic_id]"),
        Some(d.owner.clinic_id.as_str())
    );
    assert_eq!(
        first.field("metadata[patient_id]"),
        Some(d.patient.as_str())
    );
    assert_eq!(first.field("metadata[invoice_id]"), Some(invoice.as_str()));
    assert_eq!(first.header("stripe-account"), None, "no connected account");
    let stripe_key = first
        .header("idempotency-key")
        .expect("an Idempotency-Key for Stripe")
        .to_owned();
    assert_eq!(
        sent[1].header("idempotency-key"),
        Some(stripe_key.as_str()),
        "the retry sends Stripe the same key"
    );
    assert_eq!(sent[1].form, first.form);
    assert_eq!(
        stripe.intent(pi)["metadata"],
        json!({"clinic_id": d.owner.clinic_id, "patient_id": d.patient, "invoice_id": invoice})
    );

    // Once answered, a retry under the same key is the same answer: the same intent.
    let again = expect_json(start_intent(&d, &key, body).await, StatusCode::CREATED).await;
    assert_eq!(again, created);
    let sent = stripe.requests_to("/v1/payment_intents");
    assert!(sent
        .iter()
        .all(|r| r.header("idempotency-key") == Some(stripe_key.as_str())));
    assert_eq!(stripe.intent_count(), 1);
    assert_eq!(
        count(&d.app, "SELECT count(*) FROM stripe_intents").await,
        1
    );

    // Another key is another payment.
    let other = intent(&d, 9500, Some(&invoice)).await;
    assert_ne!(other, pi);
    let last = stripe
        .requests_to("/v1/payment_intents")
        .pop()
        .expect("sent");
    assert_ne!(last.header("idempotency-key"), Some(stripe_key.as_str()));
    assert_eq!(stripe.intent_count(), 2);
    assert_eq!(
        count(&d.app, "SELECT count(*) FROM stripe_intents").await,
        2
    );
}

#[tokio::test]
async fn the_same_idempotency_key_with_another_amount_is_422_and_starts_nothing() {
    let (d, stripe) = card_desk().await;
    let key = new_key();
    expect_json(
        start_intent(
            &d,
            &key,
            json!({"patient_id": d.patient, "amount_cents": 5000}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let res = start_intent(
        &d,
        &key,
        json!({"patient_id": d.patient, "amount_cents": 7000}),
    )
    .await;
    expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(
        count(&d.app, "SELECT count(*) FROM stripe_intents").await,
        1
    );
    assert!(stripe
        .requests_to("/v1/payment_intents")
        .iter()
        .all(|r| r.field("amount") == Some("5000")));
}

#[tokio::test]
async fn a_clinic_with_a_connected_account_creates_its_intents_on_that_account() {
    let (d, stripe) = card_desk().await;
    expect_json(
        d.app
            .patch(
                "/api/v2/clinic",
                Some(d.t()),
                json!({"settings": {"stripe_account": "acct_123"}}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    intent(&d, 2500, None).await;
    let sent = stripe.requests_to("/v1/payment_intents");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header("stripe-account"), Some("acct_123"));
    assert_eq!(sent[0].field("metadata[invoice_id]"), None);
}

#[tokio::test]
async fn without_stripe_keys_card_payments_and_the_webhook_are_503() {
    let d = desk().await;
    let res = start_intent(
        &d,
        &new_key(),
        json!({"patient_id": d.patient, "amount_cents": 1000}),
    )
    .await;
    expect_problem(res, StatusCode::SERVICE_UNAVAILABLE).await;
    // Even a well-signed event: the server has no secret to check it with.
    let stripe = FakeStripe::start().await;
    let res = stripe.deliver(&d.app, &stripe.foreign_success(1000)).await;
    expect_problem(res, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(stripe.requests().is_empty(), "nothing reached Stripe");
    assert!(payments(&d).await.is_empty());
}

#[tokio::test]
async fn a_succeeded_intent_records_one_card_payment_that_pays_its_invoice() {
    let (d, stripe) = card_desk().await;
    let invoice = invoiced(&d, 9500).await;
    let pi = intent(&d, 9500, Some(&invoice)).await;
    assert!(payments(&d).await.is_empty(), "nothing is paid yet");
    let succeeded = stripe.succeed(&pi);
    answered(&d.app, stripe.deliver(&d.app, &succeeded).await, "recorded").await;

    let payment = the_payment(&d).await;
    assert_eq!(payment["method"], "card");
    assert_eq!(payment["amount_cents"], 9500);
    assert_eq!(
        payment["allocations"],
        json!([{"invoice_id": invoice, "amount_cents": 9500}])
    );
    let paid = d.invoice(&invoice).await;
    assert_eq!(paid["status"], "paid");
    assert_eq!(paid["paid_cents"], 9500);
    assert_eq!(balance(&d.app, d.t(), &d.patient).await["balance_cents"], 0);

    let day = posted_on(&d.app, payment["id"].as_str().expect("id")).await;
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
    assert_eq!(sheet["collections"]["card"], 9500);
    assert_eq!(sheet["collections"]["total_cents"], 9500);

    // Stripe delivers at least once: the same event again records nothing.
    answered(
        &d.app,
        stripe.deliver(&d.app, &succeeded).await,
        "duplicate",
    )
    .await;
    the_payment(&d).await;
    assert!(unbalanced(&d.app).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_events_for_one_intent_at_once_record_one_payment() {
    let (d, stripe) = card_desk().await;
    let pi = intent(&d, 4000, None).await;
    let (first, second) = (stripe.succeed(&pi), stripe.succeed(&pi));
    assert_ne!(first["id"], second["id"], "two events");
    let (a, b) = tokio::join!(
        stripe.deliver(&d.app, &first),
        stripe.deliver(&d.app, &second)
    );
    assert_eq!(a.status(), StatusCode::OK, "{:?}", a.text().await);
    assert_eq!(b.status(), StatusCode::OK, "{:?}", b.text().await);
    settle(&d.app).await;
    let payment = the_payment(&d).await;
    assert_eq!(payment["amount_cents"], 4000);
    assert_eq!(
        balance(&d.app, d.t(), &d.patient).await["credit_cents"],
        4000
    );
    // The same event twice at once, too.
    let third = stripe.succeed(&pi);
    let (a, b) = tokio::join!(
        stripe.deliver(&d.app, &third),
        stripe.deliver(&d.app, &third)
    );
    assert_eq!(a.status(), StatusCode::OK);
    assert_eq!(b.status(), StatusCode::OK);
    settle(&d.app).await;
    the_payment(&d).await;
    assert_eq!(count(&d.app, "SELECT count(*) FROM stripe_events").await, 3);
    assert!(unbalanced(&d.app).await.is_empty());
}

#[tokio::test]
async fn an_event_for_an_intent_the_server_never_created_is_ignored() {
    let (d, stripe) = card_desk().await;
    // Metadata that names the clinic and patient does not make it ours.
    let mut foreign = stripe.foreign_success(7000);
    foreign["data"]["object"]["metadata"] =
        json!({"clinic_id": d.owner.clinic_id, "patient_id": d.patient});
    answered(&d.app, stripe.deliver(&d.app, &foreign).await, "ignored").await;
    assert!(payments(&d).await.is_empty());
    assert_eq!(count(&d.app, "SELECT count(*) FROM stripe_events").await, 0);
    assert_eq!(count(&d.app, "SELECT count(*) FROM payments").await, 0);
    // Other event types are acknowledged and ignored.
    let pi = intent(&d, 7000, None).await;
    let created = crate::stripe_fake::event("payment_intent.created", stripe.intent(&pi), None);
    answered(&d.app, stripe.deliver(&d.app, &created).await, "ignored").await;
    assert!(payments(&d).await.is_empty());
}

#[tokio::test]
async fn a_missing_wrong_tampered_or_stale_signature_is_400_and_records_nothing() {
    let (d, stripe) = card_desk().await;
    let pi = intent(&d, 6000, None).await;
    let succeeded = stripe.succeed(&pi);
    let body = serde_json::to_vec(&succeeded).expect("json");
    let now = chrono::Utc::now().timestamp();
    let mut tampered = succeeded.clone();
    tampered["data"]["object"]["amount_received"] = json!(600_000);
    let tampered = serde_json::to_vec(&tampered).expect("json");
    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        ("missing", body.clone(), None),
        (
            "another secret",
            body.clone(),
            Some(FakeStripe::signature("whsec_not_ours", now, &body)),
        ),
        (
            "a tampered body",
            tampered,
            Some(FakeStripe::signature(&stripe.webhook_secret, now, &body)),
        ),
        (
            "older than 5 minutes",
            body.clone(),
            Some(FakeStripe::signature(
                &stripe.webhook_secret,
                now - 6 * 60,
                &body,
            )),
        ),
        ("not a signature", body.clone(), Some("v1=deadbeef".into())),
    ];
    for (what, payload, signature) in cases {
        let res = stripe.post_webhook(&d.app, payload, signature).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{what}");
        expect_problem(res, StatusCode::BAD_REQUEST).await;
    }
    assert!(payments(&d).await.is_empty());
    assert_eq!(count(&d.app, "SELECT count(*) FROM stripe_events").await, 0);
    assert_eq!(count(&d.app, "SELECT count(*) FROM payments").await, 0);
    // The same body, signed now with the endpoint's secret, is taken.
    let res = stripe
        .post_webhook(
            &d.app,
            body.clone(),
            Some(FakeStripe::signature(&stripe.webhook_secret, now, &body)),
        )
        .await;
    answered(&d.app, res, "recorded").await;
    assert_eq!(the_payment(&d).await["amount_cents"], 6000);
}

#[tokio::test]
async fn a_refund_made_at_stripe_is_recorded_once() {
    let (d, stripe) = card_desk().await;
    let invoice = invoiced(&d, 9500).await;
    let pi = intent(&d, 9500, Some(&invoice)).await;
    answered(
        &d.app,
        stripe.deliver(&d.app, &stripe.succeed(&pi)).await,
        "recorded",
    )
    .await;
    let (refund, refunded) = stripe.refund_outside(&pi, 3000);
    answered(&d.app, stripe.deliver(&d.app, &refunded).await, "recorded").await;
    answered(&d.app, stripe.deliver(&d.app, &refunded).await, "duplicate").await;
    let payment = the_payment(&d).await;
    let refunds = payment["refunds"].as_array().expect("refunds");
    assert_eq!(refunds.len(), 1, "{payment}");
    assert_eq!(refunds[0]["amount_cents"], 3000);
    assert_eq!(payment["refundable_cents"], 6500);
    assert_eq!(stripe_refund_ids(&d.app).await, vec![Some(refund)]);
    // The money came back off the invoice, which is open again.
    let reopened = d.invoice(&invoice).await;
    assert_eq!(reopened["status"], "open");
    assert_eq!(reopened["paid_cents"], 6500);
    assert_eq!(
        balance(&d.app, d.t(), &d.patient).await["balance_cents"],
        3000
    );
    assert!(unbalanced(&d.app).await.is_empty());
}

#[tokio::test]
async fn a_refund_arriving_before_the_success_ends_with_one_payment_and_one_refund() {
    let (d, stripe) = card_desk().await;
    let pi = intent(&d, 8000, None).await;
    let succeeded = stripe.succeed(&pi);
    let (refund, refunded) = stripe.refund_outside(&pi, 2000);
    answered(&d.app, stripe.deliver(&d.app, &refunded).await, "recorded").await;
    answered(&d.app, stripe.deliver(&d.app, &succeeded).await, "recorded").await;
    answered(&d.app, stripe.deliver(&d.app, &refunded).await, "duplicate").await;
    let payment = the_payment(&d).await;
    assert_eq!(payment["amount_cents"], 8000);
    assert_eq!(payment["method"], "card");
    let refunds = payment["refunds"].as_array().expect("refunds");
    assert_eq!(refunds.len(), 1, "{payment}");
    assert_eq!(refunds[0]["amount_cents"], 2000);
    assert_eq!(stripe_refund_ids(&d.app).await, vec![Some(refund)]);
    assert_eq!(
        balance(&d.app, d.t(), &d.patient).await["credit_cents"],
        6000
    );
    assert!(unbalanced(&d.app).await.is_empty());
}

#[tokio::test]
async fn refunding_a_card_payment_refunds_it_at_stripe_and_the_event_that_follows_adds_nothing() {
    let (d, stripe) = card_desk().await;
    let invoice = invoiced(&d, 9500).await;
    let pi = intent(&d, 9500, Some(&invoice)).await;
    answered(
        &d.app,
        stripe.deliver(&d.app, &stripe.succeed(&pi)).await,
        "recorded",
    )
    .await;
    let payment = id(&the_payment(&d).await);

    let key = new_key();
    let path = format!("/api/v2/payments/{payment}/refund");
    let body = json!({"amount_cents": 4000, "reason": "Treatment not carried out"});
    let refund = expect_json(
        post_keyed(&d.app, &path, d.t(), &key, body.clone()).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(refund["amount_cents"], 4000);
    let sent = stripe.requests_to("/v1/refunds");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].field("payment_intent"), Some(pi.as_str()));
    assert_eq!(sent[0].field("amount"), Some("4000"));
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {}", stripe.secret_key).as_str())
    );
    assert!(sent[0].header("idempotency-key").is_some());
    let at_stripe = stripe.refunds_of(&pi);
    assert_eq!(at_stripe.len(), 1);
    assert_eq!(at_stripe[0].1, 4000);
    assert_eq!(
        stripe_refund_ids(&d.app).await,
        vec![Some(at_stripe[0].0.clone())]
    );

    // A retried refund is the first one: Stripe is not asked again.
    let again = expect_json(
        post_keyed(&d.app, &path, d.t(), &key, body).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(again["id"], refund["id"]);
    assert_eq!(stripe.requests_to("/v1/refunds").len(), 1);

    // Stripe then reports the refund it made; it is recorded already.
    answered(
        &d.app,
        stripe.deliver(&d.app, &stripe.charge_refunded(&pi)).await,
        "recorded",
    )
    .await;
    let after = the_payment(&d).await;
    assert_eq!(
        after["refunds"].as_array().map(Vec::len),
        Some(1),
        "{after}"
    );
    assert_eq!(after["refundable_cents"], 5500);
    // The money left through Stripe: its clearing account holds what is left, and the
    // card terminal's account was never touched.
    assert_eq!(account_total(&d.app, "stripe_clearing").await, 5500);
    assert_eq!(account_total(&d.app, "card").await, 0);
    assert_eq!(d.invoice(&invoice).await["paid_cents"], 5500);
    assert!(unbalanced(&d.app).await.is_empty());
}

#[tokio::test]
async fn a_card_payment_on_a_connected_account_is_refunded_on_that_account() {
    let (d, stripe) = card_desk().await;
    expect_json(
        d.app
            .patch(
                "/api/v2/clinic",
                Some(d.t()),
                json!({"settings": {"stripe_account": "acct_123"}}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    let pi = intent(&d, 3000, None).await;
    answered(
        &d.app,
        stripe.deliver(&d.app, &stripe.succeed(&pi)).await,
        "recorded",
    )
    .await;
    let payment = id(&the_payment(&d).await);
    let res = post_keyed(
        &d.app,
        &format!("/api/v2/payments/{payment}/refund"),
        d.t(),
        &new_key(),
        json!({"amount_cents": 3000, "reason": "Cancelled"}),
    )
    .await;
    expect_json(res, StatusCode::CREATED).await;
    let sent = stripe.requests_to("/v1/refunds");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header("stripe-account"), Some("acct_123"));
    assert_eq!(stripe.refunds_of(&pi).len(), 1);
}

#[tokio::test]
async fn when_stripe_refuses_a_refund_nothing_is_recorded() {
    let (d, stripe) = card_desk().await;
    let pi = intent(&d, 3000, None).await;
    answered(
        &d.app,
        stripe.deliver(&d.app, &stripe.succeed(&pi)).await,
        "recorded",
    )
    .await;
    let payment = id(&the_payment(&d).await);
    // Refunded in full at Stripe's dashboard, and not yet reported to the server.
    stripe.refund_outside(&pi, 3000);
    let res = post_keyed(
        &d.app,
        &format!("/api/v2/payments/{payment}/refund"),
        d.t(),
        &new_key(),
        json!({"amount_cents": 1000, "reason": "Cancelled"}),
    )
    .await;
    expect_problem(res, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(count(&d.app, "SELECT count(*) FROM refunds").await, 0);
    assert!(unbalanced(&d.app).await.is_empty());
}

#[tokio::test]
async fn a_procedure_on_a_live_invoice_is_reversed_only_after_the_invoice_is_voided() {
    let d = desk().await;
    let procedure = d.charge(&d.patient, 4500).await;
    let invoice = id(&d.issue(&d.patient).await);
    let reverse = format!("/api/v2/procedures/{procedure}/reverse");
    let reason = json!({"reason": "charted in error"});
    let problem = expect_problem(
        d.app
            .post(&reverse, Some(&d.dentist.access), reason.clone())
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|t| t.contains("invoice")),
        "{problem}"
    );
    assert_eq!(
        balance(&d.app, d.t(), &d.patient).await["balance_cents"],
        4500,
        "the charge stands"
    );
    expect_json(
        d.app
            .post(
                &format!("/api/v2/invoices/{invoice}/void"),
                Some(d.t()),
                json!({"reason": "billed in error"}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    d.reverse(&procedure).await;
    assert_eq!(balance(&d.app, d.t(), &d.patient).await["balance_cents"], 0);
}

#[tokio::test]
async fn a_refund_event_without_its_refund_list_is_recorded_from_the_refunded_total_once() {
    // Current Stripe API versions leave `refunds` out of `charge.refunded`.
    let (d, stripe) = card_desk().await;
    let pi = intent(&d, 9000, None).await;
    answered(
        &d.app,
        stripe.deliver(&d.app, &stripe.succeed(&pi)).await,
        "recorded",
    )
    .await;
    let (_, mut first) = stripe.refund_outside(&pi, 2000);
    first["data"]["object"]
        .as_object_mut()
        .expect("a charge")
        .remove("refunds");
    answered(&d.app, stripe.deliver(&d.app, &first).await, "recorded").await;
    let (_, mut second) = stripe.refund_outside(&pi, 500);
    second["data"]["object"]
        .as_object_mut()
        .expect("a charge")
        .remove("refunds");
    // A new event id each time: the totals, not the ids, keep it from counting twice.
    answered(&d.app, stripe.deliver(&d.app, &second).await, "recorded").await;
    first["id"] = json!(stripe_id("evt"));
    answered(&d.app, stripe.deliver(&d.app, &first).await, "recorded").await;
    let payment = the_payment(&d).await;
    let amounts: Vec<i64> = payment["refunds"]
        .as_array()
        .expect("refunds")
        .iter()
        .map(|r| r["amount_cents"].as_i64().expect("amount"))
        .collect();
    assert_eq!(amounts, vec![2000, 500], "{payment}");
    assert_eq!(payment["refundable_cents"], 6500);
    assert!(unbalanced(&d.app).await.is_empty());
}

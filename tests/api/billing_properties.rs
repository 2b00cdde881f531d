//! A property of the patient's account: whatever sequence of charges, invoices, payments
//! (with and without allocations), refunds, adjustments, credit applications, voids and
//! procedure reversals happens, the balance is the sum of the ledger's entries (and each
//! entry's running balance follows from the one before), every journal transaction sums
//! to zero, the credit is never negative, and no invoice is paid below zero or above its
//! total. Each request is also answered as a model of the account expects.

use crate::billing::*;
use crate::common::*;
use crate::properties::check_all;
use crate::treatment::expect_json;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
enum Op {
    /// Chart and complete a procedure with this fee.
    Charge(i64),
    /// Issue an invoice of everything not yet billed.
    Invoice,
    /// A payment, allocating `share` % of what it can to the n-th invoice.
    Pay {
        amount: i64,
        invoice: Option<usize>,
        share: i64,
    },
    /// Refund `share` % of what is left of the n-th payment.
    Refund {
        payment: usize,
        share: i64,
    },
    Adjust(i64),
    ApplyCredit(usize),
    Void(usize),
    Reverse(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0i64..=20_000).prop_map(Op::Charge),
        2 => Just(Op::Invoice),
        3 => (1i64..=15_000, prop::option::of(0usize..6), 1i64..=100)
            .prop_map(|(amount, invoice, share)| Op::Pay { amount, invoice, share }),
        2 => (0usize..6, 1i64..=100).prop_map(|(payment, share)| Op::Refund { payment, share }),
        1 => prop_oneof![-5000i64..=-1, 1i64..=5000].prop_map(Op::Adjust),
        2 => (0usize..6).prop_map(Op::ApplyCredit),
        1 => (0usize..6).prop_map(Op::Void),
        1 => (0usize..6).prop_map(Op::Reverse),
    ]
}

struct Procedure {
    id: String,
    reversed: bool,
    invoiced: bool,
}

struct Invoice {
    id: String,
    procedures: Vec<String>,
}

/// What the account holds, as far as the requests decide.
#[derive(Default)]
struct Model {
    procedures: Vec<Procedure>,
    invoices: Vec<Invoice>,
    payments: Vec<String>,
}

async fn json_of(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn step(d: &Desk, m: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    let (app, t) = (&d.app, d.t());
    match op {
        Op::Charge(fee) => {
            let id = d.charge(&d.patient, *fee).await;
            m.procedures.push(Procedure {
                id,
                reversed: false,
                invoiced: false,
            });
        }
        Op::Invoice => {
            let (status, body) = json_of(
                app.post(
                    "/api/v2/invoices",
                    Some(t),
                    json!({"patient_id": d.patient}),
                )
                .await,
            )
            .await;
            if m.procedures.iter().any(|p| !p.reversed && !p.invoiced) {
                prop_assert_eq!(status, StatusCode::CREATED, "{}", body);
                let billed: Vec<String> = body["lines"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|l| l["procedure_id"].as_str().map(str::to_owned))
                    .collect();
                for p in m.procedures.iter_mut() {
                    if billed.contains(&p.id) {
                        prop_assert!(!p.invoiced && !p.reversed, "{} billed twice", p.id);
                        p.invoiced = true;
                    }
                }
                m.invoices.push(Invoice {
                    id: body["id"].as_str().unwrap_or_default().to_owned(),
                    procedures: billed,
                });
            } else {
                prop_assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{}", body);
            }
        }
        Op::Pay {
            amount,
            invoice,
            share,
        } => {
            let mut body =
                json!({"patient_id": d.patient, "amount_cents": amount, "method": "card"});
            if let (Some(n), false) = (invoice, m.invoices.is_empty()) {
                let target = &m.invoices[n % m.invoices.len()].id;
                let open = cents(&d.invoice(target).await["open_cents"]);
                let allocated = open.min(*amount) * share / 100;
                if allocated > 0 {
                    body["allocations"] =
                        json!([{"invoice_id": target, "amount_cents": allocated}]);
                }
            }
            let (status, made) = json_of(pay(app, t, body).await).await;
            prop_assert_eq!(status, StatusCode::CREATED, "{}", made);
            m.payments
                .push(made["id"].as_str().unwrap_or_default().to_owned());
        }
        Op::Refund { payment, share } => {
            if m.payments.is_empty() {
                return Ok(());
            }
            let target = m.payments[payment % m.payments.len()].clone();
            let left = cents(&d.payment(&target).await["refundable_cents"]);
            let amount = (left * share / 100).max(1);
            let (status, body) = json_of(refund(app, t, &target, amount).await).await;
            let expected = if amount <= left {
                StatusCode::CREATED
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            prop_assert_eq!(status, expected, "refund {} of {}: {}", amount, left, body);
        }
        Op::Adjust(amount) => {
            d.adjust(&d.patient, *amount).await;
        }
        Op::ApplyCredit(n) => {
            if m.invoices.is_empty() {
                return Ok(());
            }
            let target = m.invoices[n % m.invoices.len()].id.clone();
            let before = d.invoice(&target).await;
            let credit = cents(&d.balance(&d.patient).await["credit_cents"]);
            let (status, after) = json_of(
                app.post(
                    &format!("/api/v2/invoices/{target}/apply-credit"),
                    Some(t),
                    json!({}),
                )
                .await,
            )
            .await;
            if before["status"] != "open" {
                prop_assert_eq!(status, StatusCode::CONFLICT, "{}", after);
            } else if credit == 0 {
                prop_assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{}", after);
            } else {
                prop_assert_eq!(status, StatusCode::OK, "{}", after);
                let applied = credit.min(cents(&before["open_cents"]));
                prop_assert_eq!(
                    cents(&after["paid_cents"]),
                    cents(&before["paid_cents"]) + applied
                );
            }
        }
        Op::Void(n) => {
            if m.invoices.is_empty() {
                return Ok(());
            }
            let k = n % m.invoices.len();
            let before = d.invoice(&m.invoices[k].id).await;
            let (status, body) = json_of(
                app.post(
                    &format!("/api/v2/invoices/{}/void", m.invoices[k].id),
                    Some(t),
                    json!({"reason": "reissued"}),
                )
                .await,
            )
            .await;
            if before["status"] != "void" && cents(&before["paid_cents"]) == 0 {
                prop_assert_eq!(status, StatusCode::OK, "{}", body);
                for p in m.procedures.iter_mut() {
                    if m.invoices[k].procedures.contains(&p.id) {
                        p.invoiced = false;
                    }
                }
            } else {
                prop_assert_eq!(status, StatusCode::CONFLICT, "{}", body);
            }
        }
        Op::Reverse(n) => {
            if m.procedures.is_empty() {
                return Ok(());
            }
            let k = n % m.procedures.len();
            let (status, body) = json_of(
                app.post(
                    &format!("/api/v2/procedures/{}/reverse", m.procedures[k].id),
                    Some(&d.dentist.access),
                    json!({"reason": "not done"}),
                )
                .await,
            )
            .await;
            // Reversed already, or billed on a live invoice (void it first).
            if m.procedures[k].reversed || m.procedures[k].invoiced {
                prop_assert_eq!(status, StatusCode::CONFLICT, "{}", body);
            } else {
                prop_assert_eq!(status, StatusCode::OK, "{}", body);
                m.procedures[k].reversed = true;
            }
        }
    }
    Ok(())
}

async fn invariants(d: &Desk) -> Result<(), TestCaseError> {
    let entries = d.ledger(&d.patient).await;
    let b = d.balance(&d.patient).await;
    let balance = cents(&b["balance_cents"]);
    prop_assert_eq!(
        balance,
        sum(&entries),
        "the balance is the sum of the entries"
    );
    prop_assert_eq!(cents(&b["family_balance_cents"]), balance);
    prop_assert!(cents(&b["credit_cents"]) >= 0, "credit {}", b);
    if let Some(newest) = entries.first() {
        prop_assert_eq!(cents(&newest["balance_cents"]), balance);
    }
    for pair in entries.windows(2) {
        prop_assert_eq!(
            cents(&pair[0]["balance_cents"]),
            cents(&pair[1]["balance_cents"]) + cents(&pair[0]["amount_cents"]),
            "running balance of {}",
            pair[0]
        );
    }
    if let Some(oldest) = entries.last() {
        prop_assert_eq!(&oldest["balance_cents"], &oldest["amount_cents"]);
    }
    prop_assert_eq!(unbalanced(&d.app).await, Vec::<String>::new());
    let invoices = pages(
        &d.app,
        d.t(),
        &format!("/api/v2/invoices?patient_id={}", d.patient),
    )
    .await;
    for i in &invoices {
        let (total, paid) = (cents(&i["total_cents"]), cents(&i["paid_cents"]));
        let lines: i64 = i["lines"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| cents(&l["fee_cents"]))
            .sum();
        prop_assert_eq!(total, lines, "total = Σ lines: {}", i);
        prop_assert!((0..=total).contains(&paid), "paid within 0..=total: {}", i);
        if i["status"] != "void" {
            prop_assert_eq!(cents(&i["open_cents"]), total - paid, "{}", i);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_sequence_of_account_activity_keeps_the_books_balanced() {
    let d = desk().await;
    let (app, owner, dentist, code) = (
        d.app.clone(),
        d.owner.clone(),
        d.dentist.clone(),
        d.code.clone(),
    );
    check_all(
        6,
        prop::collection::vec(op(), 1..=12),
        move |ops: Vec<Op>| {
            let d = Desk {
                app: app.clone(),
                owner: owner.clone(),
                dentist: dentist.clone(),
                patient: String::new(),
                code: code.clone(),
            };
            async move {
                let patient = expect_json(
                    d.app
                        .post(
                            "/api/v2/patients",
                            Some(d.t()),
                            patient_body("Prop", "Erty"),
                        )
                        .await,
                    StatusCode::CREATED,
                )
                .await;
                let d = Desk {
                    patient: patient["id"].as_str().expect("id").to_owned(),
                    ..d
                };
                let mut model = Model::default();
                for op in &ops {
                    step(&d, &mut model, op).await?;
                    invariants(&d).await.map_err(|e| {
                        TestCaseError::fail(format!("after {op:?} of {ops:?}: {e}"))
                    })?;
                }
                Ok(())
            }
        },
    )
    .await;
}

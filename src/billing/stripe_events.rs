//! Stripe's webhook: checks Stripe's signature scheme, keeps each event once and queues it
//! in the outbox with that in one transaction, and records each payment and refund once
//! when the outbox worker hands the event back ([`process`]).
//!
//! The webhook has no user: it finds the clinic from the PaymentIntent this server
//! created and stored (`stripe_intent_clinic`), never from the payload alone.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::lock_patient;
use super::payments::{insert_allocations, Allocation};
use crate::audit::{self, AuditContext, Event};
use crate::auth::Caller;
use crate::db::Tx;
use crate::error::{AppError, AppResult, Problem};
use crate::ledger::{self, Account, Entry};
use crate::outbox::Outcome;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(webhook))
}

/// How far a webhook's timestamp may be from now (Stripe's default tolerance).
pub const TOLERANCE_SECS: i64 = 300;

/// Checks a `Stripe-Signature` header (`t=<unix time>,v1=<hex HMAC-SHA256 of "t.payload">`,
/// possibly several `v1`) against the endpoint's secret, within [`TOLERANCE_SECS`] of `now`.
pub fn verify_signature(header: &str, payload: &[u8], secret: &[u8], now: i64) -> bool {
    let mut timestamp = None;
    let mut signatures = vec![];
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", s)) => signatures.extend(hex::decode(s).ok()),
            _ => {}
        }
    }
    let Some(t) = timestamp else {
        return false;
    };
    if now.abs_diff(t) > TOLERANCE_SECS.unsigned_abs() {
        return false;
    }
    signatures.iter().any(|sig| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return false;
        };
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(payload);
        // Constant time.
        mac.verify_slice(sig).is_ok()
    })
}

#[derive(Debug, Deserialize)]
struct StripeEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: EventData,
}

#[derive(Debug, Deserialize)]
struct EventData {
    object: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAnswer {
    /// `queued` (recorded shortly after), `duplicate` or `ignored`.
    result: String,
}

fn answer(result: &str) -> Response {
    Json(WebhookAnswer {
        result: result.into(),
    })
    .into_response()
}

/// Stripe's webhook (no bearer token: authenticated by `Stripe-Signature`). A
/// `payment_intent.succeeded` or `charge.refunded` event for an intent this server made is
/// kept once (by its id) and queued in the outbox in one transaction, and answered at once;
/// the outbox worker then records the payment once, allocated to the intent's invoice, or
/// the refunds once ([`process`]). Other types are ignored.
#[utoipa::path(post, path = "/webhooks/stripe", tag = "billing",
    request_body(content = serde_json::Value, description = "A Stripe event"),
    responses(
        (status = 200, description = "Queued, a duplicate, or ignored", body = WebhookAnswer),
        (status = 400, description = "A missing, bad or stale signature", body = Problem),
        (status = 503, description = "Card payments are not configured", body = Problem)))]
pub async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> AppResult<Response> {
    let (_, secret) = super::stripe::keys(&state).ok_or_else(super::stripe::not_configured)?;
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    if !verify_signature(signature, &body, secret.expose_secret().as_bytes(), now) {
        return Err(AppError::BadRequest(
            "the Stripe-Signature is missing, wrong or older than 5 minutes".into(),
        ));
    }
    let event: StripeEvent = serde_json::from_slice(&body)
        .map_err(|_| AppError::BadRequest("the event is not one Stripe sends".into()))?;
    let Some(intent_id) = intent_of(&event)? else {
        return Ok(answer("ignored"));
    };
    let mut lookup = state.db.unscoped_tx().await?;
    let clinic: Option<Uuid> =
        sqlx::query_scalar!("SELECT stripe_intent_clinic($1) AS clinic", intent_id)
            .fetch_one(&mut *lookup)
            .await?;
    lookup.commit().await?;
    let Some(clinic) = clinic else {
        tracing::warn!(event = %event.id, intent = %intent_id, "a Stripe event for an intent this server did not create; ignored");
        return Ok(answer("ignored"));
    };
    let mut tx = state.db.clinic_tx(clinic).await?;
    let first = sqlx::query!(
        "INSERT INTO stripe_events (clinic_id, event_id, type) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        clinic,
        &event.id,
        &event.kind,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !first {
        return Ok(answer("duplicate"));
    }
    // The event as Stripe sent it; recorded by the outbox worker, retried until done.
    let payload: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| AppError::BadRequest("the event is not one Stripe sends".into()))?;
    crate::outbox::enqueue(
        &mut tx,
        clinic,
        "stripe",
        &payload,
        chrono::Duration::days(3),
    )
    .await?;
    tx.commit().await?;
    Ok(answer("queued"))
}

/// The payment intent a handled event is about; `None` for the types that are ignored.
fn intent_of(event: &StripeEvent) -> AppResult<Option<&str>> {
    let object = &event.data.object;
    let intent = match event.kind.as_str() {
        "payment_intent.succeeded" => object["id"].as_str(),
        "charge.refunded" => object["payment_intent"].as_str(),
        _ => return Ok(None),
    };
    intent
        .map(Some)
        .ok_or_else(|| AppError::BadRequest("the event names no payment intent".into()))
}

/// Records a queued event (for the outbox worker): the payment of a succeeded intent, or
/// the refunds of a charge, each once, under the intent's lock.
pub async fn process(state: &AppState, clinic: Uuid, payload: serde_json::Value) -> Outcome {
    let event: StripeEvent = match serde_json::from_value(payload) {
        Ok(e) => e,
        Err(_) => return Outcome::GiveUp("the payload is not a Stripe event".into()),
    };
    let receipt = serde_json::json!({ "event_id": event.id, "type": event.kind });
    match record_event(state, clinic, &event).await {
        Ok(()) => Outcome::Delivered(receipt),
        Err(e) => Outcome::Retry(format!("{e}")),
    }
}

async fn record_event(state: &AppState, clinic: Uuid, event: &StripeEvent) -> AppResult<()> {
    let Some(intent_id) = intent_of(event)? else {
        return Ok(());
    };
    let object = &event.data.object;
    let mut tx = state.db.worker_tx(Some(clinic)).await?;
    let intent = sqlx::query!(
        "SELECT id, patient_id, invoice_id, amount_cents, payment_id, created_by FROM stripe_intents \
         WHERE intent_id = $1 FOR UPDATE",
        intent_id
    )
    .fetch_one(&mut *tx)
    .await?;
    // The intent's creator stands in as the user of what the webhook records.
    let actor = Caller::system(clinic, intent.created_by);
    lock_patient(&mut tx, intent.patient_id, "patient_id").await?;
    let payment_id = match intent.payment_id {
        Some(p) => p,
        None => {
            // Also when a refund arrives before the success: the payment is recorded first.
            let amount = object["amount_received"]
                .as_i64()
                .or_else(|| object["amount"].as_i64())
                .filter(|a| *a > 0)
                .unwrap_or(intent.amount_cents);
            record_payment(
                &mut tx,
                &actor,
                intent_id,
                intent.patient_id,
                intent.invoice_id,
                amount,
            )
            .await?
        }
    };
    if event.kind == "charge.refunded" {
        let refunds = object["refunds"]["data"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for r in refunds {
            let (Some(id), Some(amount)) = (r["id"].as_str(), r["amount"].as_i64()) else {
                continue;
            };
            record_stripe_refund(&mut tx, &actor, payment_id, intent.patient_id, id, amount)
                .await?;
        }
        // Stripe API versions since 2022-11-15 leave the refunds out of the event: the
        // charge's cumulative `amount_refunded` then says what is not recorded yet. Under
        // the intent's lock, so a repeated or late event adds nothing.
        if let Some(total) = object["amount_refunded"].as_i64() {
            reconcile_refunds(&mut tx, &actor, payment_id, intent.patient_id, total).await?;
        }
    }
    let ctx = AuditContext {
        clinic_id: clinic,
        user_id: None,
        request_id: crate::error::current_request_id(),
        ip: None,
    };
    audit::record(
        &mut tx,
        &ctx,
        Event::new("payment.stripe_event", "payment")
            .resource(payment_id)
            .patient(intent.patient_id)
            .details(serde_json::json!({ "event_id": event.id, "type": event.kind })),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Records a succeeded intent's payment: allocated to its invoice (as much as is open),
/// the rest the payer's credit.
async fn record_payment(
    tx: &mut Tx,
    actor: &Caller,
    intent_id: &str,
    patient: Uuid,
    invoice: Option<Uuid>,
    amount: i64,
) -> AppResult<Uuid> {
    let mut allocations = vec![];
    let mut invoice_patient = patient;
    if let Some(i) = invoice {
        let open = super::payments::open_amount(tx, i).await?;
        if let Some((p, open)) = open {
            let a = open.min(amount);
            if a > 0 {
                allocations.push(Allocation {
                    invoice_id: i,
                    amount_cents: a,
                });
                invoice_patient = p;
            }
        }
    }
    let allocated: i64 = allocations.iter().map(|a| a.amount_cents).sum();
    let payment_id = Uuid::now_v7();
    let transaction = ledger::post(
        tx,
        actor,
        Entry {
            kind: "payment",
            patient_id: patient,
            payment_id: Some(payment_id),
            invoice_id: None,
            memo: Some(intent_id),
            lines: vec![
                (Account::StripeClearing, amount),
                (Account::Receivable(invoice_patient), -allocated),
                (Account::PatientCredit(patient), -(amount - allocated)),
            ],
        },
    )
    .await?;
    sqlx::query!(
        "INSERT INTO payments (clinic_id, id, patient_id, amount_cents, method, reference, transaction_id, created_by) \
         VALUES ($1, $2, $3, $4, 'card', $5, $6, $7)",
        actor.clinic_id,
        payment_id,
        patient,
        amount,
        intent_id,
        transaction,
        actor.user_id,
    )
    .execute(&mut **tx)
    .await?;
    if !allocations.is_empty() {
        insert_allocations(tx, actor, Some(payment_id), transaction, &allocations).await?;
    }
    sqlx::query!(
        "UPDATE stripe_intents SET payment_id = $2 WHERE intent_id = $1",
        intent_id,
        payment_id
    )
    .execute(&mut **tx)
    .await?;
    Ok(payment_id)
}

/// Records a refund Stripe made, once per Stripe refund id.
async fn record_stripe_refund(
    tx: &mut Tx,
    actor: &Caller,
    payment: Uuid,
    patient: Uuid,
    refund_id: &str,
    amount: i64,
) -> AppResult<()> {
    let known = sqlx::query_scalar!(
        "SELECT id FROM refunds WHERE stripe_refund_id = $1",
        refund_id
    )
    .fetch_optional(&mut **tx)
    .await?;
    if known.is_some() || amount <= 0 {
        return Ok(());
    }
    super::payments::post_refund(
        tx,
        actor,
        payment,
        patient,
        amount,
        "refunded at Stripe",
        Some(refund_id),
    )
    .await
    .map(|_| ())
}

/// Records, without a Stripe refund id, what Stripe says was refunded on the payment's
/// charge beyond the refunds recorded already.
async fn reconcile_refunds(
    tx: &mut Tx,
    actor: &Caller,
    payment: Uuid,
    patient: Uuid,
    refunded_at_stripe: i64,
) -> AppResult<()> {
    let row = sqlx::query!(
        r#"SELECT p.amount_cents,
                  (SELECT coalesce(sum(r.amount_cents), 0) FROM refunds r
                   WHERE r.clinic_id = p.clinic_id AND r.payment_id = p.id)::bigint AS "recorded!"
           FROM payments p WHERE p.id = $1"#,
        payment
    )
    .fetch_one(&mut **tx)
    .await?;
    let missing = refunded_at_stripe
        .min(row.amount_cents)
        .saturating_sub(row.recorded);
    if missing > 0 {
        super::payments::post_refund(
            tx,
            actor,
            payment,
            patient,
            missing,
            "refunded at Stripe",
            None,
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], t: i64, payload: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
        mac.update(format!("{t}.").as_bytes());
        mac.update(payload);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn a_signature_verifies_with_its_secret_within_the_tolerance() {
        let (secret, body, t) = (
            b"whsec_test".as_slice(),
            br#"{"id":"evt_1"}"#.as_slice(),
            1_800_000_000,
        );
        let good = format!("t={t},v1={}", sign(secret, t, body));
        assert!(verify_signature(&good, body, secret, t));
        assert!(verify_signature(&good, body, secret, t + TOLERANCE_SECS));
        assert!(
            !verify_signature(&good, body, secret, t + TOLERANCE_SECS + 1),
            "stale"
        );
        assert!(
            !verify_signature(&good, body, secret, t - TOLERANCE_SECS - 1),
            "from the future"
        );
        assert!(
            !verify_signature(&good, b"{}", secret, t),
            "another payload"
        );
        assert!(
            !verify_signature(&good, body, b"whsec_other", t),
            "another secret"
        );
        // Several v1 (while Stripe rolls a secret): any one may match.
        let rolled = format!("t={t},v1={},v1={}", "00".repeat(32), sign(secret, t, body));
        assert!(verify_signature(&rolled, body, secret, t));
        // A crafted extreme timestamp is refused, not an overflow.
        let extreme = format!("t={},v1={}", i64::MIN, sign(secret, i64::MIN, body));
        assert!(!verify_signature(&extreme, body, secret, t));
        for bad in [
            "",
            "t=abc,v1=00",
            &format!("v1={}", sign(secret, t, body)),
            &format!("t={t}"),
        ] {
            assert!(!verify_signature(bad, body, secret, t), "{bad}");
        }
    }
}

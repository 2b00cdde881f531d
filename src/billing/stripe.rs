//! Card payments through Stripe: a small client of our own (form-encoded requests with
//! Stripe's idempotency keys, JSON answers) against `STRIPE_API_BASE`, and the webhook,
//! which checks Stripe's signature scheme and records each payment and refund once.
//!
//! The webhook has no user: it finds the clinic from the PaymentIntent this server
//! created and stored (`stripe_intent_clinic`), never from the payload alone.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::payments::{check_allocations, insert_allocations, Allocation};
use super::{check_positive, lock_patient};
use crate::audit::{self, AuditContext, Event};
use crate::auth::{Caller, Permission};
use crate::db::Tx;
use crate::error::{AppError, AppResult, Problem};
use crate::http::idempotency::{self, Created, HashedJson, IdempotencyKey};
use crate::ledger::{self, Account, Entry};
use crate::state::AppState;
use crate::validate::Errors;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_intent))
        .routes(routes!(webhook))
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

/// The keys, when card payments are on.
fn keys(state: &AppState) -> Option<(&SecretString, &SecretString)> {
    state
        .config
        .stripe_secret_key
        .as_ref()
        .zip(state.config.stripe_webhook_secret.as_ref())
}

fn client() -> AppResult<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| AppError::Internal(anyhow::anyhow!("HTTP client: {e}")))
}

#[derive(Debug, Deserialize)]
struct StripeIntent {
    id: String,
    client_secret: String,
}

#[derive(Debug, Deserialize)]
struct StripeRefund {
    id: String,
}

/// Calls Stripe: a form-encoded POST with an idempotency key (and the connected account
/// when the clinic has one); a 503 when Stripe cannot be reached or refuses.
async fn post_form<T: serde::de::DeserializeOwned>(
    state: &AppState,
    path: &str,
    form: &[(&str, String)],
    idempotency_key: &str,
    account: Option<&str>,
) -> AppResult<T> {
    let (secret, _) = keys(state).ok_or_else(not_configured)?;
    let mut req = client()?
        .post(format!("{}{path}", state.config.stripe_api_base))
        .bearer_auth(secret.expose_secret())
        .header("Idempotency-Key", idempotency_key)
        .form(form);
    if let Some(a) = account {
        req = req.header("Stripe-Account", a);
    }
    let res = req.send().await.map_err(|e| {
        tracing::warn!(error = %e, "Stripe could not be reached");
        AppError::Unavailable("the card payment provider could not be reached".into())
    })?;
    let status = res.status();
    if !status.is_success() {
        let body = res.text().await.unwrap_or_default();
        tracing::warn!(%status, body = %body.chars().take(500).collect::<String>(), "Stripe refused a request");
        return Err(AppError::Unavailable(format!(
            "the card payment provider refused the request ({status})"
        )));
    }
    res.json::<T>().await.map_err(|e| {
        tracing::warn!(error = %e, "Stripe answered something unreadable");
        AppError::Unavailable("the card payment provider answered something unreadable".into())
    })
}

fn not_configured() -> AppError {
    AppError::Unavailable("card payments are not configured (STRIPE_SECRET_KEY)".into())
}

/// A key for Stripe from the caller's own `Idempotency-Key` (so a retried request is one
/// request at Stripe too), or a fresh one.
fn stripe_key(headers: &HeaderMap, caller: &Caller, what: &str) -> String {
    match headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        Some(k) => {
            let mut h = Sha256::new();
            h.update(caller.clinic_id.as_bytes());
            h.update(caller.user_id.as_bytes());
            h.update(what.as_bytes());
            h.update(k.as_bytes());
            format!("molar-{}", hex::encode(&h.finalize()[..16]))
        }
        None => format!("molar-{}", Uuid::now_v7()),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"patient_id": "0193f5a0-0000-7000-8000-000000000003", "amount_cents": 9500}))]
pub struct NewIntent {
    /// Who pays.
    patient_id: Uuid,
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    amount_cents: i64,
    /// An open invoice of the payer (or of a patient they are responsible for) that the
    /// payment goes to when it succeeds; at most its open amount.
    invoice_id: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedIntent {
    payment_intent_id: String,
    /// For Stripe.js on the front-end to confirm the payment.
    client_secret: String,
}

/// Starts a card payment: creates a Stripe PaymentIntent in the clinic's currency (on its
/// connected account when it has one). The payment is recorded when Stripe reports it
/// succeeded.
#[utoipa::path(post, path = "/payments/stripe-intents", tag = "billing", security(("bearer" = [])),
    params(IdempotencyKey),
    request_body = NewIntent,
    responses(
        (status = 201, description = "Created at Stripe", body = CreatedIntent, headers(("Location" = String))),
        (status = 403, description = "Role lacks ledger.write", body = Problem),
        (status = 409, description = "The same key is still being processed", body = Problem),
        (status = 422, description = "An unknown patient or invoice, an amount over the invoice's open amount, or a reused key with another body", body = Problem),
        (status = 503, description = "Card payments are not configured, or Stripe cannot be reached", body = Problem)))]
pub async fn create_intent(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: HashedJson<NewIntent>,
) -> AppResult<Response> {
    let (hash, body) = (body.hash, body.value);
    let event = || Event::new("payment.stripe_intent", "payment").patient(body.patient_id);
    caller
        .authorize(&state, Permission::LedgerWrite, event)
        .await?;
    let mut errors = Errors::default();
    check_positive("amount_cents", body.amount_cents, &mut errors);
    errors.finish()?;
    if keys(&state).is_none() {
        return Err(not_configured());
    }
    // Under the caller's key, a retry after success is answered here; a retry after a
    // failure reaches Stripe again under the same Stripe key, and so finds the intent
    // Stripe may have created the first time.
    idempotency::run(&state, &caller, &headers, &hash, || {
        start_intent(&state, &caller, &headers, &body, event)
    })
    .await
}

async fn start_intent(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    body: &NewIntent,
    event: impl Fn() -> Event,
) -> AppResult<(Tx, Created<CreatedIntent>)> {
    // Check what can be checked before calling Stripe, without holding a transaction
    // open across the call.
    let mut tx = caller.begin(state).await?;
    crate::patients::ensure_exists(&mut tx, body.patient_id)
        .await
        .map_err(|_| AppError::validation("patient_id", "does not exist in your clinic"))?;
    if let Some(invoice) = body.invoice_id {
        check_allocations(
            &mut tx,
            body.patient_id,
            &[Allocation {
                invoice_id: invoice,
                amount_cents: body.amount_cents,
            }],
            "invoice",
        )
        .await
        .map_err(|e| match e {
            AppError::Validation(_) => AppError::validation(
                "invoice_id",
                "is not an open invoice of the payer with at least this amount open",
            ),
            other => other,
        })?;
    }
    let clinic = crate::clinic::load(&mut tx, caller.clinic_id).await?;
    tx.commit().await?;
    let account = connected_account(&clinic.settings);
    let mut form = vec![
        ("amount", body.amount_cents.to_string()),
        ("currency", clinic.currency.to_lowercase()),
        ("automatic_payment_methods[enabled]", "true".into()),
        ("metadata[clinic_id]", caller.clinic_id.to_string()),
        ("metadata[patient_id]", body.patient_id.to_string()),
    ];
    if let Some(i) = body.invoice_id {
        form.push(("metadata[invoice_id]", i.to_string()));
    }
    let key = stripe_key(headers, caller, "payment_intent");
    let intent: StripeIntent = post_form(
        state,
        "/v1/payment_intents",
        &form,
        &key,
        account.as_deref(),
    )
    .await?;
    let mut tx = caller.begin(state).await?;
    sqlx::query!(
        "INSERT INTO stripe_intents (clinic_id, id, intent_id, patient_id, invoice_id, amount_cents, currency, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (intent_id) DO NOTHING",
        caller.clinic_id,
        Uuid::now_v7(),
        &intent.id,
        body.patient_id,
        body.invoice_id,
        body.amount_cents,
        &clinic.currency,
        caller.user_id,
    )
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &caller.audit(),
        event().details(serde_json::json!({
            "payment_intent_id": intent.id, "amount_cents": body.amount_cents
        })),
    )
    .await?;
    Ok((
        tx,
        Created {
            location: "/api/v2/payments".into(),
            version: None,
            value: CreatedIntent {
                payment_intent_id: intent.id,
                client_secret: intent.client_secret,
            },
        },
    ))
}

/// The clinic's connected Stripe account (`settings.stripe_account`), if it has one:
/// its card payments are made, and refunded, on that account.
pub fn connected_account(settings: &serde_json::Value) -> Option<String> {
    settings
        .get("stripe_account")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

/// Refunds a card payment at Stripe before it is recorded here (the `charge.refunded`
/// event that follows finds the refund recorded by its id), on the connected account
/// the payment was made on.
pub async fn refund_at_stripe(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    intent_id: &str,
    amount_cents: i64,
    account: Option<&str>,
) -> AppResult<String> {
    let key = stripe_key(headers, caller, "refund");
    let refund: StripeRefund = post_form(
        state,
        "/v1/refunds",
        &[
            ("payment_intent", intent_id.to_owned()),
            ("amount", amount_cents.to_string()),
        ],
        &key,
        account,
    )
    .await?;
    Ok(refund.id)
}

/// The Stripe intent a payment was made through, if any.
pub async fn intent_of_payment(tx: &mut Tx, payment: Uuid) -> AppResult<Option<String>> {
    Ok(sqlx::query_scalar!(
        "SELECT intent_id FROM stripe_intents WHERE payment_id = $1",
        payment
    )
    .fetch_optional(&mut **tx)
    .await?)
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
    /// `recorded`, `duplicate` or `ignored`.
    result: String,
}

fn answer(result: &str) -> Response {
    Json(WebhookAnswer {
        result: result.into(),
    })
    .into_response()
}

/// Stripe's webhook (no bearer token: authenticated by `Stripe-Signature`).
/// `payment_intent.succeeded` records the payment once, allocated to the intent's invoice;
/// `charge.refunded` records the refunds once; other types are ignored.
#[utoipa::path(post, path = "/webhooks/stripe", tag = "billing",
    request_body(content = serde_json::Value, description = "A Stripe event"),
    responses(
        (status = 200, description = "Handled, a duplicate, or ignored", body = WebhookAnswer),
        (status = 400, description = "A missing, bad or stale signature", body = Problem),
        (status = 503, description = "Card payments are not configured", body = Problem)))]
pub async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> AppResult<Response> {
    let (_, secret) = keys(&state).ok_or_else(not_configured)?;
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
    let object = &event.data.object;
    let intent_id = match event.kind.as_str() {
        "payment_intent.succeeded" => object["id"].as_str(),
        "charge.refunded" => object["payment_intent"].as_str(),
        _ => return Ok(answer("ignored")),
    };
    let Some(intent_id) = intent_id else {
        return Err(AppError::BadRequest(
            "the event names no payment intent".into(),
        ));
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
    Ok(answer("recorded"))
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

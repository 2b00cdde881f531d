//! Card payments through Stripe: a small client of our own (form-encoded requests with
//! Stripe's idempotency keys, JSON answers) against `STRIPE_API_BASE`. Stripe's webhook is
//! in `stripe_events.rs`.

use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::check_positive;
use super::payments::{check_allocations, Allocation};
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::db::Tx;
use crate::error::{AppError, AppResult, Problem};
use crate::http::idempotency::{self, Created, HashedJson, IdempotencyKey};
use crate::state::AppState;
use crate::validate::Errors;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_intent))
}

/// The keys, when card payments are on.
pub(super) fn keys(state: &AppState) -> Option<(&SecretString, &SecretString)> {
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

pub(super) fn not_configured() -> AppError {
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

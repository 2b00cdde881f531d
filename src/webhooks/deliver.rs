//! Delivering one webhook event to one subscription, for the outbox worker: the
//! subscription is read afresh (a deactivated or deleted one gets nothing), the address is
//! resolved and checked again, the body is signed, redirects are not followed, and every
//! attempt is logged for the clinic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use super::ssrf;
use crate::outbox::Outcome;
use crate::state::AppState;

/// The seal purpose of signing secrets.
pub const SEAL_PURPOSE: &[u8] = b"webhook-secret";
/// How long a receiver has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The delivery client: no redirects, no proxies, the guarded resolver.
pub struct Deliverer {
    client: reqwest::Client,
    allow_private: bool,
}

impl Deliverer {
    pub fn new(allow_private: bool) -> anyhow::Result<Deliverer> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .dns_resolver(Arc::new(ssrf::Guarded { allow_private }))
            .user_agent(concat!("Molar-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Deliverer {
            client,
            allow_private,
        })
    }

    /// Delivers the outbox row `payload` (`{"subscription_id", "event"}`) of `clinic_id`;
    /// `attempts` earlier attempts were made.
    pub async fn deliver(
        &self,
        state: &AppState,
        clinic_id: Uuid,
        payload: &Value,
        attempts: i32,
    ) -> Outcome {
        let (Some(subscription), Some(event)) = (
            payload["subscription_id"]
                .as_str()
                .and_then(|s| s.parse::<Uuid>().ok()),
            payload.get("event"),
        ) else {
            return Outcome::GiveUp("the payload is not a webhook event".into());
        };
        let event_id = event["id"].as_str().and_then(|s| s.parse::<Uuid>().ok());
        let event_type = event["type"].as_str().unwrap_or_default().to_owned();
        let receipt = serde_json::json!({
            "subscription_id": subscription, "event_id": event_id, "type": event_type
        });
        let started = Instant::now();
        let (status, outcome) = match self.target(state, clinic_id, subscription).await {
            Ok(Some(target)) => {
                self.send(&target, event, event_id, &event_type, attempts)
                    .await
            }
            Ok(None) => {
                return Outcome::GiveUp("the subscription is inactive or was deleted".into())
            }
            Err(refused) => (None, Err(refused)),
        };
        let duration_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        let logged = log(
            state,
            clinic_id,
            subscription,
            event_id,
            &event_type,
            attempts + 1,
            status,
            outcome.as_ref().err().map(String::as_str),
            duration_ms,
        )
        .await;
        if let Err(e) = logged {
            tracing::warn!(error = %crate::error::loggable(&e), "could not log a webhook delivery");
        }
        match outcome {
            Ok(()) => Outcome::Delivered(receipt),
            Err(why) => Outcome::Retry(why),
        }
    }

    /// One signed POST; the receiver's status and whether it took the event.
    async fn send(
        &self,
        target: &Target,
        event: &Value,
        event_id: Option<Uuid>,
        event_type: &str,
        attempts: i32,
    ) -> (Option<i32>, Result<(), String>) {
        let body = serde_json::to_vec(event).unwrap_or_default();
        let t = chrono::Utc::now().timestamp();
        let sent = self
            .client
            .post(&target.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                "Molar-Signature",
                super::signature(&target.secret, t, &body),
            )
            .header(
                "Molar-Event-Id",
                event_id.map(|i| i.to_string()).unwrap_or_default(),
            )
            .header("Molar-Event-Type", event_type)
            .header("Molar-Delivery-Attempt", (attempts + 1).to_string())
            .body(body)
            .send()
            .await;
        match sent {
            Ok(res) if res.status().is_success() => {
                (Some(i32::from(res.status().as_u16())), Ok(()))
            }
            Ok(res) => (
                Some(i32::from(res.status().as_u16())),
                Err(format!("the receiver answered {}", res.status())),
            ),
            Err(e) => (None, Err(describe(&e))),
        }
    }

    /// The subscription's address and secret, if it is active; an address literal that is
    /// forbidden is refused here (names are checked by the resolver as it connects).
    async fn target(
        &self,
        state: &AppState,
        clinic_id: Uuid,
        id: Uuid,
    ) -> Result<Option<Target>, String> {
        let row = async {
            let mut tx = state.db.worker_tx(Some(clinic_id)).await?;
            let row = sqlx::query!(
                "SELECT url, secret FROM webhook_subscriptions WHERE id = $1 AND active",
                id
            )
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(row)
        }
        .await
        .map_err(|e| format!("the database: {}", crate::error::loggable(&e)))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let url =
            reqwest::Url::parse(&row.url).map_err(|_| "the address is not a URL".to_owned())?;
        let host = url.host_str().unwrap_or_default();
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok();
        if literal {
            ssrf::resolve(host, 0, self.allow_private).await?;
        }
        let (secret, _) = state
            .secret_seal
            .open_for(SEAL_PURPOSE, clinic_id, id, &row.secret)
            .map_err(|_| "the signing secret does not open (SECRET_KEY replaced?)".to_owned())?;
        Ok(Some(Target {
            url: row.url,
            secret: String::from_utf8_lossy(&secret).into_owned(),
        }))
    }
}

struct Target {
    url: String,
    secret: String,
}

/// Why a request failed, from the innermost cause (the resolver's refusal, say), without
/// the URL.
fn describe(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let why = if e.is_timeout() {
        "the receiver did not answer in time".to_owned()
    } else {
        format!("could not connect: {cause}")
    };
    why.chars().take(500).collect()
}

#[allow(clippy::too_many_arguments)]
async fn log(
    state: &AppState,
    clinic_id: Uuid,
    subscription: Uuid,
    event_id: Option<Uuid>,
    event_type: &str,
    attempt: i32,
    status_code: Option<i32>,
    error: Option<&str>,
    duration_ms: i32,
) -> Result<(), sqlx::Error> {
    let mut tx = state.db.worker_tx(Some(clinic_id)).await?;
    sqlx::query!(
        "INSERT INTO webhook_deliveries (clinic_id, id, subscription_id, event_id, event_type, \
         attempt, status_code, error, duration_ms, delivered) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        clinic_id,
        Uuid::now_v7(),
        subscription,
        event_id.unwrap_or_else(Uuid::nil),
        event_type,
        attempt,
        status_code,
        error,
        duration_ms,
        error.is_none()
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

//! The transactional outbox: what must happen outside the request because of a change is
//! written by [`enqueue`] in the transaction that makes the change, and handled by
//! [`spawn_worker`], which runs in every instance. Topics: `email` (sent over SMTP),
//! `webhook` (an event for a clinic's subscription, see `webhooks`) and `stripe` (an
//! incoming Stripe event, recorded by `billing::stripe_events::process`). A worker leases due rows (`FOR UPDATE
//! SKIP LOCKED`, then their next attempt pushed past the lease) in a short transaction,
//! delivers them holding no lock or connection, and records each outcome in a short
//! transaction of its own: each row is delivered by one instance, a slow mail server holds
//! nothing up, and a row whose worker died mid-delivery is leased again when the lease
//! ends (delivery is at least once). A failed attempt is retried with exponential back-off
//! and jitter until the row's give-up time (a day by default), then given up and logged.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use uuid::Uuid;

use futures_util::StreamExt;

use crate::db::{Db, Tx};
use crate::mail::Email;
use crate::state::AppState;
use crate::webhooks::deliver::Deliverer;

/// Rows claimed per round.
const BATCH: i32 = 20;
/// Rows of a round delivered at once (a slow receiver does not hold the others up).
const CONCURRENT: usize = 8;
/// How long a due row may wait when the outbox is idle.
const POLL: Duration = Duration::from_secs(1);
/// How long a leased row is left to its worker: longer than delivering a batch can take
/// (each message has the SMTP client's 30-second timeout).
const LEASE_SECONDS: f64 = 600.0;

/// Queues an email in the caller's transaction (its clinic); attempts stop after
/// `give_up_after`.
pub async fn enqueue_email(
    tx: &mut Tx,
    clinic_id: Uuid,
    email: &Email,
    give_up_after: chrono::Duration,
) -> Result<(), sqlx::Error> {
    let payload = serde_json::to_value(email).unwrap_or_default();
    enqueue(tx, clinic_id, "email", &payload, give_up_after).await
}

/// Queues `payload` under `topic` in the caller's transaction (its clinic).
pub async fn enqueue(
    tx: &mut Tx,
    clinic_id: Uuid,
    topic: &str,
    payload: &serde_json::Value,
    give_up_after: chrono::Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO outbox (clinic_id, id, topic, payload, give_up_at) \
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        clinic_id,
        Uuid::now_v7(),
        topic,
        payload,
        give_up_after.num_seconds() as f64
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The wait before attempt `n + 1` after `n` failed ones: 30 s doubling to at most an
/// hour, with up to a fifth of jitter so that instances do not retry in step.
pub fn back_off(attempts: i32) -> Duration {
    let base = 30u64
        .saturating_mul(1u64 << attempts.clamp(0, 10))
        .min(3600);
    let jitter = rand::thread_rng().gen_range(0..=base / 5);
    Duration::from_secs(base + jitter)
}

/// What became of an attempt.
pub enum Outcome {
    /// Delivered; the row keeps this instead of its payload.
    Delivered(serde_json::Value),
    /// Failed; tried again after a back-off until the row's give-up time.
    Retry(String),
    /// Failed for good (a deleted subscription, say).
    GiveUp(String),
}

/// Delivers what is due, one batch at a time, until none is; returns how many rows were
/// handled.
pub async fn deliver_due(state: &AppState, webhooks: &Deliverer) -> Result<usize, sqlx::Error> {
    let db = &state.db;
    let mut handled = 0;
    loop {
        let mut tx = db.worker_tx(None).await?;
        let rows = sqlx::query!(
            r#"SELECT clinic_id AS "clinic_id!", id AS "id!", topic AS "topic!",
                      payload AS "payload!", attempts AS "attempts!", give_up_at AS "give_up_at!"
               FROM outbox_claim(ARRAY['email', 'webhook', 'stripe'], $1, make_interval(secs => $2))"#,
            BATCH,
            LEASE_SECONDS
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        if rows.is_empty() {
            return Ok(handled);
        }
        handled += rows.len();
        let results: Vec<Result<(), sqlx::Error>> = futures_util::stream::iter(rows)
            .map(|row| async move {
                let outcome = match row.topic.as_str() {
                    "email" => match serde_json::from_value::<Email>(row.payload) {
                        Ok(email) => match state.mailer.send(&email).await {
                            Ok(()) => Outcome::Delivered(email.receipt()),
                            Err(why) => Outcome::Retry(why),
                        },
                        Err(_) => Outcome::GiveUp("the payload is not an email".to_owned()),
                    },
                    "webhook" => {
                        webhooks
                            .deliver(state, row.clinic_id, &row.payload, row.attempts)
                            .await
                    }
                    "stripe" => {
                        crate::billing::stripe_events::process(state, row.clinic_id, row.payload)
                            .await
                    }
                    other => Outcome::GiveUp(format!("no worker delivers the topic {other}")),
                };
                record(
                    db,
                    row.clinic_id,
                    row.id,
                    row.attempts,
                    row.give_up_at,
                    outcome,
                )
                .await
            })
            .buffer_unordered(CONCURRENT)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
    }
}

async fn record(
    db: &Db,
    clinic_id: Uuid,
    id: Uuid,
    attempts: i32,
    give_up_at: DateTime<Utc>,
    outcome: Outcome,
) -> Result<(), sqlx::Error> {
    let (delivered, error, next, keep) = match outcome {
        Outcome::Delivered(keep) => (true, None, None, Some(keep)),
        Outcome::GiveUp(why) => {
            tracing::error!(outbox = %id, error = %why, attempts = attempts + 1, "gave up delivering an outbox message");
            (
                false,
                Some(why),
                None,
                Some(serde_json::json!({ "gave_up": true })),
            )
        }
        Outcome::Retry(why) => {
            let next =
                Utc::now() + chrono::Duration::from_std(back_off(attempts)).unwrap_or_default();
            if next > give_up_at {
                tracing::error!(outbox = %id, error = %why, attempts = attempts + 1, "gave up delivering an outbox message");
                (
                    false,
                    Some(why),
                    None,
                    Some(serde_json::json!({ "gave_up": true })),
                )
            } else {
                tracing::warn!(outbox = %id, error = %why, attempts = attempts + 1, "outbox delivery failed; retrying");
                (false, Some(why), Some(next), None)
            }
        }
    };
    let mut tx = db.worker_tx(None).await?;
    sqlx::query!(
        r#"SELECT outbox_record($1, $2, $3, $4, $5, $6) AS "changed!""#,
        clinic_id,
        id,
        delivered,
        error,
        next,
        keep
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The worker of this instance: delivers what is due every second.
pub fn spawn_worker(state: AppState, webhooks: Deliverer) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = deliver_due(&state, &webhooks).await {
                tracing::warn!(error = %crate::error::loggable(&e), "the outbox worker could not reach the database");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_from_thirty_seconds_to_an_hour_with_jitter() {
        for (attempts, base) in [(0, 30), (1, 60), (2, 120), (6, 1920), (7, 3600), (30, 3600)] {
            for _ in 0..20 {
                let wait = back_off(attempts).as_secs();
                assert!(
                    (base..=base + base / 5).contains(&wait),
                    "{attempts}: {wait}"
                );
            }
        }
    }
}

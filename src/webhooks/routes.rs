//! `/webhooks/subscriptions`: a clinic's webhook subscriptions (owners and admins), and each
//! one's delivery log.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::deliver::SEAL_PURPOSE;
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission};
use crate::error::{AppError, AppResult, Problem};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use crate::http::pagination::{self, Limit, Page};
use crate::state::AppState;
use crate::validate::patch_field;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_subscriptions, create_subscription))
        .routes(routes!(update_subscription, delete_subscription))
        .routes(routes!(list_deliveries))
}

/// A subscription as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct Subscription {
    id: Uuid,
    url: String,
    /// Event types (`patient.created`) and families (`patient.*`).
    events: Vec<String>,
    active: bool,
    version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// The answer to a new subscription: the one time its signing secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewSubscriptionAnswer {
    #[serde(flatten)]
    subscription: Subscription,
    /// The key of the `Molar-Signature` HMAC; shown only here.
    secret: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    /// An `https://` address that resolves to public addresses only (plain `http://` and
    /// private addresses only where `WEBHOOK_ALLOW_PRIVATE` allows them).
    #[schema(pattern = r"^[^\u0000]*$", min_length = 8, max_length = 2000)]
    url: String,
    /// Event types or families (`appointment.*`, `patient.*`, `payment.*`, `invoice.*`).
    #[schema(min_items = 1, max_items = 32)]
    events: Vec<String>,
    /// Defaults to true.
    active: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
/// No field can be cleared: `null` is a 422.
pub struct SubscriptionPatch {
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = String, pattern = r"^[^\u0000]*$", min_length = 8, max_length = 2000)]
    url: Option<Option<String>>,
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = Vec<String>, min_items = 1, max_items = 32)]
    events: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "patch_field")]
    #[schema(value_type = bool)]
    active: Option<Option<bool>>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SubscriptionPath {
    /// The subscription's id.
    id: Uuid,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// Page size (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200, default = 50)]
    limit: Option<Limit>,
    /// The `next_cursor` of the previous page.
    #[param(min_length = 1, pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

async fn authorize(state: &AppState, caller: &Caller, action: &'static str) -> AppResult<()> {
    caller
        .authorize(state, Permission::WebhooksManage, || {
            Event::new(action, "webhook_subscription")
        })
        .await
}

/// Checks an address: a URL with a host, `https` (or `http` where private addresses are
/// allowed), no credentials, resolving to allowed addresses only.
async fn check_url(state: &AppState, raw: &str) -> AppResult<String> {
    let invalid = |why: &str| AppError::validation("url", why);
    let url = reqwest::Url::parse(raw.trim()).map_err(|_| invalid("is not an absolute URL"))?;
    let allow_private = state.config.webhook_allow_private;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        _ => return Err(invalid("must be an https:// address")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not carry credentials"));
    }
    let host = url.host_str().ok_or_else(|| invalid("has no host"))?;
    let port = url.port_or_known_default().unwrap_or(443);
    super::ssrf::resolve(host, port, allow_private)
        .await
        .map_err(|why| invalid(&format!("is refused: {why}")))?;
    Ok(url.to_string())
}

fn check_events(events: &[String]) -> AppResult<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if !super::known_pattern(e) {
            return Err(AppError::validation(
                format!("events[{i}]"),
                "is not an event type or family (see the webhooks documentation)",
            ));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    if out.is_empty() || out.len() > 32 {
        return Err(AppError::validation(
            "events",
            "must name 1 to 32 event types",
        ));
    }
    Ok(out)
}

struct Row {
    id: Uuid,
    url: String,
    events: Vec<String>,
    active: bool,
    version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Row> for Subscription {
    fn from(r: Row) -> Subscription {
        Subscription {
            id: r.id,
            url: r.url,
            events: r.events,
            active: r.active,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// The clinic's subscriptions, oldest first.
#[utoipa::path(get, path = "/webhooks/subscriptions", tag = "webhooks", security(("bearer" = [])),
    params(PageParams),
    responses(
        (status = 200, description = "A page of subscriptions", body = Page<Subscription>),
        (status = 400, description = "Malformed parameters or cursor", body = Problem),
        (status = 403, description = "Role lacks webhooks.manage", body = Problem)))]
pub async fn list_subscriptions(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<PageParams>,
) -> AppResult<Json<Page<Subscription>>> {
    authorize(&state, &caller, "webhook_subscription.list").await?;
    let limit = pagination::limit(params.limit)?;
    let after: Option<Uuid> = state.cursors.decode_opt(params.cursor.as_deref())?;
    let mut tx = caller.begin(&state).await?;
    let rows = sqlx::query_as!(
        Row,
        "SELECT id, url, events, active, version, created_at, updated_at \
         FROM webhook_subscriptions WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2",
        after,
        pagination::overfetch(limit)
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let items = rows.into_iter().map(Subscription::from).collect();
    Ok(Json(state.cursors.page(
        items,
        limit,
        |s: &Subscription| s.id,
    )))
}

/// Subscribes an address to events. The answer alone carries the signing `secret`.
#[utoipa::path(post, path = "/webhooks/subscriptions", tag = "webhooks", security(("bearer" = [])),
    request_body = NewSubscription,
    responses(
        (status = 201, description = "Subscribed", body = NewSubscriptionAnswer, headers(("Location" = String))),
        (status = 403, description = "Role lacks webhooks.manage", body = Problem),
        (status = 422, description = "Not an allowed address (scheme, private address, does not resolve) or unknown events", body = Problem)))]
pub async fn create_subscription(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewSubscription>,
) -> AppResult<Response> {
    authorize(&state, &caller, "webhook_subscription.create").await?;
    let events = check_events(&body.events)?;
    let url = check_url(&state, &body.url).await?;
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let id = Uuid::now_v7();
    let sealed =
        state
            .secret_seal
            .seal_for(SEAL_PURPOSE, caller.clinic_id, id, secret.as_bytes())?;
    let mut tx = caller.begin(&state).await?;
    let row = sqlx::query_as!(
        Row,
        "INSERT INTO webhook_subscriptions (clinic_id, id, url, events, secret, active) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         RETURNING id, url, events, active, version, created_at, updated_at",
        caller.clinic_id,
        id,
        url,
        &events,
        sealed,
        body.active.unwrap_or(true)
    )
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new("webhook_subscription.create", "webhook_subscription")
            .resource(id)
            .details(serde_json::json!({ "events": events })),
    )
    .await?;
    tx.commit().await?;
    let mut res = (
        StatusCode::CREATED,
        Json(NewSubscriptionAnswer {
            subscription: row.into(),
            secret,
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v2/webhooks/subscriptions/{id}")) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

/// Changes a subscription's address, events or activity.
#[utoipa::path(patch, path = "/webhooks/subscriptions/{id}", tag = "webhooks", security(("bearer" = [])),
    params(SubscriptionPath),
    request_body = SubscriptionPatch,
    responses(
        (status = 200, description = "The subscription", body = Subscription),
        (status = 403, description = "Role lacks webhooks.manage", body = Problem),
        (status = 404, description = "No such subscription in your clinic", body = Problem),
        (status = 422, description = "Not an allowed address, unknown events, or a null", body = Problem)))]
pub async fn update_subscription(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(SubscriptionPath { id }): ApiPath<SubscriptionPath>,
    ApiJson(patch): ApiJson<SubscriptionPatch>,
) -> AppResult<Json<Subscription>> {
    authorize(&state, &caller, "webhook_subscription.update").await?;
    let null = |f: &str| AppError::validation(f.to_owned(), "cannot be cleared");
    let url = match patch.url {
        Some(None) => return Err(null("url")),
        Some(Some(u)) => Some(check_url(&state, &u).await?),
        None => None,
    };
    let events = match patch.events {
        Some(None) => return Err(null("events")),
        Some(Some(e)) => Some(check_events(&e)?),
        None => None,
    };
    let active = match patch.active {
        Some(None) => return Err(null("active")),
        Some(a) => a,
        None => None,
    };
    let mut tx = caller.begin(&state).await?;
    let row = sqlx::query_as!(
        Row,
        "UPDATE webhook_subscriptions SET url = coalesce($2, url), \
         events = coalesce($3, events), active = coalesce($4, active), \
         version = version + 1, updated_at = now() WHERE id = $1 \
         RETURNING id, url, events, active, version, created_at, updated_at",
        id,
        url,
        events.as_deref(),
        active
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AppError::not_found("subscription"))?;
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new("webhook_subscription.update", "webhook_subscription").resource(id),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(row.into()))
}

/// Deletes a subscription and its delivery log; events not yet delivered are dropped.
#[utoipa::path(delete, path = "/webhooks/subscriptions/{id}", tag = "webhooks", security(("bearer" = [])),
    params(SubscriptionPath),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Role lacks webhooks.manage", body = Problem),
        (status = 404, description = "No such subscription in your clinic", body = Problem)))]
pub async fn delete_subscription(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(SubscriptionPath { id }): ApiPath<SubscriptionPath>,
) -> AppResult<StatusCode> {
    authorize(&state, &caller, "webhook_subscription.delete").await?;
    let mut tx = caller.begin(&state).await?;
    let deleted = sqlx::query!("DELETE FROM webhook_subscriptions WHERE id = $1", id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(AppError::not_found("subscription"));
    }
    audit::record(
        &mut tx,
        &caller.audit(),
        Event::new("webhook_subscription.delete", "webhook_subscription").resource(id),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One attempt to deliver an event.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    id: Uuid,
    event_id: Uuid,
    event_type: String,
    /// 1 for the first attempt.
    attempt: i32,
    /// The receiver's status, when it answered.
    status_code: Option<i32>,
    /// Why the attempt failed.
    error: Option<String>,
    duration_ms: i32,
    delivered: bool,
    at: DateTime<Utc>,
}

/// A subscription's delivery attempts, newest first.
#[utoipa::path(get, path = "/webhooks/subscriptions/{id}/deliveries", tag = "webhooks", security(("bearer" = [])),
    params(SubscriptionPath, PageParams),
    responses(
        (status = 200, description = "A page of attempts", body = Page<Delivery>),
        (status = 400, description = "Malformed parameters or cursor", body = Problem),
        (status = 403, description = "Role lacks webhooks.manage", body = Problem),
        (status = 404, description = "No such subscription in your clinic", body = Problem)))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(SubscriptionPath { id }): ApiPath<SubscriptionPath>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> AppResult<Json<Page<Delivery>>> {
    authorize(&state, &caller, "webhook_delivery.list").await?;
    let limit = pagination::limit(params.limit)?;
    let before: Option<Uuid> = state.cursors.decode_opt(params.cursor.as_deref())?;
    let mut tx = caller.begin(&state).await?;
    let exists = sqlx::query_scalar!("SELECT 1 FROM webhook_subscriptions WHERE id = $1", id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Err(AppError::not_found("subscription"));
    }
    let items = sqlx::query_as!(
        Delivery,
        "SELECT id, event_id, event_type, attempt, status_code, error, duration_ms, delivered, at \
         FROM webhook_deliveries WHERE subscription_id = $1 AND ($2::uuid IS NULL OR id < $2) \
         ORDER BY id DESC LIMIT $3",
        id,
        before,
        pagination::overfetch(limit)
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(state.cursors.page(items, limit, |d: &Delivery| d.id)))
}

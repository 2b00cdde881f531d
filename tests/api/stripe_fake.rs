//! A local Stripe for the tests: an HTTP server on 127.0.0.1 that speaks Stripe's wire
//! format (form-encoded POSTs with bracketed nested keys, a bearer secret key,
//! `Idempotency-Key` and `Stripe-Account` headers, JSON answers and JSON errors), records
//! every request it gets, and sends signed webhook events to a Molar server the way
//! Stripe does (`Stripe-Signature: t=…,v1=…`).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::common::TestApp;

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
    /// The decoded form fields, in the order sent.
    pub form: Form,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What Stripe holds for one PaymentIntent.
#[derive(Debug, Clone)]
struct Intent {
    account: Option<String>,
    object: Value,
    charge_id: String,
    /// Refunds of its charge: (id, amount).
    refunds: Vec<(String, i64)>,
}

/// A decoded form body, fields in the order sent.
type Form = Vec<(String, String)>;

/// Where an idempotency key counts: Stripe keeps keys per account.
type KeyScope = (Option<String>, String);

#[derive(Default)]
struct Books {
    requests: Vec<Recorded>,
    /// (account, key) → (the form first sent, the answer given).
    idempotent: HashMap<KeyScope, (Form, StatusCode, Value)>,
    intents: BTreeMap<String, Intent>,
    /// The next request is carried out but its answer lost on the way back.
    lose_next_answer: bool,
}

#[derive(Clone)]
struct Shared {
    secret_key: String,
    books: Arc<Mutex<Books>>,
}

pub struct FakeStripe {
    pub base: String,
    pub secret_key: String,
    pub webhook_secret: String,
    shared: Shared,
    client: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Stripe-style id: `prefix_` and 24 random alphanumerics.
pub fn stripe_id(prefix: &str) -> String {
    let raw = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &raw[..24])
}

fn stripe_error(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Response {
    let mut error = json!({"type": kind, "message": message});
    if let Some(c) = code {
        error["code"] = json!(c);
    }
    (status, Json(json!({ "error": error }))).into_response()
}

/// Stripe's bracketed keys (`metadata[clinic_id]`) as nested JSON objects.
fn nest(form: &Form, prefix: &str) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in form {
        if let Some(inner) = k
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('['))
            .and_then(|r| r.strip_suffix(']'))
        {
            out.insert(inner.to_owned(), json!(v));
        }
    }
    Value::Object(out)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl FakeStripe {
    pub async fn start() -> FakeStripe {
        let shared = Shared {
            secret_key: format!("sk_test_{}", uuid::Uuid::new_v4().simple()),
            books: Arc::default(),
        };
        let router = Router::new()
            .route("/v1/payment_intents", post(create_payment_intent))
            .route("/v1/refunds", post(create_refund))
            .fallback(unknown_route)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Stripe on port 0");
        let addr: SocketAddr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("the fake Stripe serves");
        });
        FakeStripe {
            base: format!("http://{addr}"),
            secret_key: shared.secret_key.clone(),
            webhook_secret: format!("whsec_{}", uuid::Uuid::new_v4().simple()),
            shared,
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .expect("http client"),
            task,
        }
    }

    /// The server settings that point Molar at this fake.
    pub fn configure(&self, vars: &mut HashMap<String, String>) {
        vars.insert("STRIPE_SECRET_KEY".into(), self.secret_key.clone());
        vars.insert("STRIPE_WEBHOOK_SECRET".into(), self.webhook_secret.clone());
        vars.insert("STRIPE_API_BASE".into(), self.base.clone());
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.books.lock().expect("books").requests.clone()
    }

    /// The requests received on `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// The PaymentIntent as Stripe holds it now.
    pub fn intent(&self, id: &str) -> Value {
        self.shared.books.lock().expect("books").intents[id]
            .object
            .clone()
    }

    /// The next request is carried out (and its answer kept for its idempotency key) but
    /// the caller gets a 502 instead, as when a connection drops after Stripe acted.
    pub fn lose_next_answer(&self) {
        self.shared.books.lock().expect("books").lose_next_answer = true;
    }

    /// How many PaymentIntents Stripe holds.
    pub fn intent_count(&self) -> usize {
        self.shared.books.lock().expect("books").intents.len()
    }

    /// The refunds Stripe holds on the intent's charge: (id, amount), oldest first.
    pub fn refunds_of(&self, intent_id: &str) -> Vec<(String, i64)> {
        self.shared.books.lock().expect("books").intents[intent_id]
            .refunds
            .clone()
    }

    /// The customer pays: the intent succeeds at Stripe and the
    /// `payment_intent.succeeded` event for it is returned (not yet sent).
    pub fn succeed(&self, intent_id: &str) -> Value {
        let mut books = self.shared.books.lock().expect("books");
        let intent = books
            .intents
            .get_mut(intent_id)
            .unwrap_or_else(|| panic!("the fake holds no intent {intent_id}"));
        let amount = intent.object["amount"].clone();
        intent.object["status"] = json!("succeeded");
        intent.object["amount_received"] = amount;
        intent.object["latest_charge"] = json!(intent.charge_id);
        let (object, account) = (intent.object.clone(), intent.account.clone());
        drop(books);
        event("payment_intent.succeeded", object, account.as_deref())
    }

    /// A `payment_intent.succeeded` event for an intent Stripe holds but Molar never
    /// created (another integration on the same account, or a forged id).
    pub fn foreign_success(&self, amount: i64) -> Value {
        let id = stripe_id("pi");
        let object = json!({
            "id": id, "object": "payment_intent", "amount": amount, "amount_received": amount,
            "currency": "eur", "client_secret": format!("{id}_secret_x"), "metadata": {},
            "status": "succeeded", "latest_charge": stripe_id("ch"), "livemode": false,
        });
        event("payment_intent.succeeded", object, None)
    }

    /// Someone refunds at Stripe itself (the dashboard): a refund of `amount` is added
    /// to the intent's charge and the `charge.refunded` event is returned (not yet sent).
    pub fn refund_outside(&self, intent_id: &str, amount: i64) -> (String, Value) {
        let refund = stripe_id("re");
        {
            let mut books = self.shared.books.lock().expect("books");
            let intent = books.intents.get_mut(intent_id).expect("a known intent");
            intent.refunds.push((refund.clone(), amount));
        }
        (refund, self.charge_refunded(intent_id))
    }

    /// The `charge.refunded` event for the intent's charge as Stripe holds it now (all
    /// its refunds listed, newest first).
    pub fn charge_refunded(&self, intent_id: &str) -> Value {
        let books = self.shared.books.lock().expect("books");
        let intent = &books.intents[intent_id];
        let amount = intent.object["amount"].as_i64().expect("an amount");
        let refunded: i64 = intent.refunds.iter().map(|(_, a)| a).sum();
        let data: Vec<Value> = intent
            .refunds
            .iter()
            .rev()
            .map(|(id, a)| {
                json!({"id": id, "object": "refund", "amount": a, "charge": intent.charge_id,
                       "payment_intent": intent_id, "status": "succeeded"})
            })
            .collect();
        let charge = json!({
            "id": intent.charge_id, "object": "charge", "payment_intent": intent_id,
            "amount": amount, "amount_captured": amount, "amount_refunded": refunded,
            "currency": intent.object["currency"], "paid": true, "refunded": refunded == amount,
            "status": "succeeded", "metadata": intent.object["metadata"],
            "refunds": {"object": "list", "data": data, "has_more": false,
                        "url": format!("/v1/charges/{}/refunds", intent.charge_id)},
        });
        event("charge.refunded", charge, intent.account.as_deref())
    }

    /// `Stripe-Signature` for `body` at unix time `t` under `secret`.
    pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    /// Sends an event to the server's webhook, signed now with the endpoint's secret.
    pub async fn deliver(&self, app: &TestApp, event: &Value) -> reqwest::Response {
        let body = serde_json::to_vec_pretty(event).expect("an event serialises");
        let signature = Self::signature(&self.webhook_secret, now(), &body);
        self.post_webhook(app, body, Some(signature)).await
    }

    /// Posts raw bytes to the server's webhook with the given `Stripe-Signature` (none
    /// when `None`), as Stripe's webhook sender does.
    pub async fn post_webhook(
        &self,
        app: &TestApp,
        body: Vec<u8>,
        signature: Option<String>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(app.url("/api/v2/webhooks/stripe"))
            .header("content-type", "application/json; charset=utf-8")
            .header(
                "user-agent",
                "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            )
            .body(body);
        if let Some(s) = signature {
            req = req.header("Stripe-Signature", s);
        }
        req.send().await.expect("the webhook reaches the server")
    }
}

/// An event as Stripe sends it (`account` set for a connected account's event).
pub fn event(kind: &str, object: Value, account: Option<&str>) -> Value {
    let mut e = json!({
        "id": stripe_id("evt"),
        "object": "event",
        "api_version": "2024-06-20",
        "created": now(),
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": kind,
        "data": {"object": object},
    });
    if let Some(a) = account {
        e["account"] = json!(a);
    }
    e
}

/// What the checks common to every request decided.
enum Admission {
    /// Carry the request out, and keep its answer under `key`.
    Proceed { form: Form, key: Option<KeyScope> },
    /// Already answered: refused, or replayed for its idempotency key.
    Answered(Response),
}

/// Records the request, then checks what Stripe checks of every request: the secret
/// key, a form-encoded body, and the idempotency key's earlier use.
fn admit(shared: &Shared, path: &str, headers: &HeaderMap, body: &Bytes) -> Admission {
    let form: Form = form_urlencoded::parse(body).into_owned().collect();
    let mut books = shared.books.lock().expect("books");
    books.requests.push(Recorded {
        method: "POST".into(),
        path: path.into(),
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        form: form.clone(),
    });
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(shared.secret_key.as_str()) {
        return Admission::Answered(stripe_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            "Invalid API Key provided",
        ));
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Admission::Answered(stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            "Invalid request: bodies are form-encoded",
        ));
    }
    let account = headers
        .get("stripe-account")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| (account, k.to_owned()));
    if let Some(k) = &key {
        if let Some((first, status, answer)) = books.idempotent.get(k) {
            if *first != form {
                return Admission::Answered(stripe_error(
                    StatusCode::BAD_REQUEST,
                    "idempotency_error",
                    None,
                    "Keys for idempotent requests can only be used with the same parameters \
                     they were first used with.",
                ));
            }
            let mut res = (*status, Json(answer.clone())).into_response();
            res.headers_mut()
                .insert("idempotent-replayed", "true".parse().expect("a header"));
            return Admission::Answered(res);
        }
    }
    Admission::Proceed { form, key }
}

fn remember(
    shared: &Shared,
    key: Option<KeyScope>,
    form: Form,
    status: StatusCode,
    answer: Value,
) -> Response {
    let mut books = shared.books.lock().expect("books");
    if let Some(k) = key {
        books.idempotent.insert(k, (form, status, answer.clone()));
    }
    if std::mem::take(&mut books.lose_next_answer) {
        return stripe_error(
            StatusCode::BAD_GATEWAY,
            "api_error",
            None,
            "the answer was lost on the way back",
        );
    }
    (status, Json(answer)).into_response()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn create_payment_intent(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (form, key) = match admit(&shared, "/v1/payment_intents", &headers, &body) {
        Admission::Proceed { form, key } => (form, key),
        Admission::Answered(res) => return res,
    };
    let Some(amount) = field(&form, "amount").and_then(|a| a.parse::<i64>().ok()) else {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("parameter_missing"),
            "Missing required param: amount.",
        );
    };
    let Some(currency) = field(&form, "currency") else {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("parameter_missing"),
            "Missing required param: currency.",
        );
    };
    if amount < 1 || currency != currency.to_lowercase() || currency.len() != 3 {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("parameter_invalid_integer"),
            "Invalid amount or currency.",
        );
    }
    let id = stripe_id("pi");
    let object = json!({
        "id": id,
        "object": "payment_intent",
        "amount": amount,
        "amount_received": 0,
        "currency": currency,
        "client_secret": format!("{id}_secret_{}", &uuid::Uuid::new_v4().simple().to_string()[..24]),
        "metadata": nest(&form, "metadata"),
        "automatic_payment_methods": {"enabled": field(&form, "automatic_payment_methods[enabled]") == Some("true")},
        "status": "requires_payment_method",
        "livemode": false,
        "created": now(),
    });
    let account = headers
        .get("stripe-account")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    shared.books.lock().expect("books").intents.insert(
        id.clone(),
        Intent {
            account,
            object: object.clone(),
            charge_id: stripe_id("ch"),
            refunds: vec![],
        },
    );
    remember(&shared, key, form, StatusCode::OK, object)
}

async fn create_refund(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let (form, key) = match admit(&shared, "/v1/refunds", &headers, &body) {
        Admission::Proceed { form, key } => (form, key),
        Admission::Answered(res) => return res,
    };
    let account = headers
        .get("stripe-account")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(intent_id) = field(&form, "payment_intent").map(str::to_owned) else {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("parameter_missing"),
            "One of the following params should be provided for this request: payment_intent or charge.",
        );
    };
    let mut books = shared.books.lock().expect("books");
    // Objects live in their account: a connected account's intent is not found on the
    // platform's, nor the other way round.
    let Some(intent) = books
        .intents
        .get_mut(&intent_id)
        .filter(|i| i.account == account)
    else {
        drop(books);
        return stripe_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("resource_missing"),
            &format!("No such payment_intent: '{intent_id}'"),
        );
    };
    if intent.object["status"] != "succeeded" {
        drop(books);
        return stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("charge_not_refundable"),
            "This PaymentIntent does not have a successful charge to refund.",
        );
    }
    let received = intent.object["amount_received"].as_i64().unwrap_or(0);
    let refunded: i64 = intent.refunds.iter().map(|(_, a)| a).sum();
    let amount = match field(&form, "amount") {
        Some(a) => match a.parse::<i64>() {
            Ok(a) if a > 0 => a,
            _ => {
                drop(books);
                return stripe_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("parameter_invalid_integer"),
                    "Invalid positive integer",
                );
            }
        },
        None => received - refunded,
    };
    if amount > received - refunded {
        drop(books);
        return stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("charge_already_refunded"),
            "Refund amount is greater than the unrefunded amount on the charge.",
        );
    }
    let id = stripe_id("re");
    intent.refunds.push((id.clone(), amount));
    let answer = json!({
        "id": id,
        "object": "refund",
        "amount": amount,
        "charge": intent.charge_id,
        "currency": intent.object["currency"],
        "payment_intent": intent_id,
        "status": "succeeded",
        "created": now(),
    });
    drop(books);
    remember(&shared, key, form, StatusCode::OK, answer)
}

async fn unknown_route(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Admission::Answered(res) = admit(&shared, uri.path(), &headers, &body) {
        return res;
    }
    stripe_error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        None,
        "Unrecognized request URL.",
    )
}

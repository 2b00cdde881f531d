//! Webhooks: subscriptions, events from the outbox delivered once across instances, signed
//! as documented, retried after failures, not lost when an instance dies mid-delivery, and
//! never sent to private addresses unless allowed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxStatus};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::common::*;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    headers: HeaderMap,
    body: Bytes,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

/// What the receiver does with the next requests: answer a status, or hang.
#[derive(Debug, Clone, Copy)]
enum Next {
    Status(u16),
    Hang,
}

#[derive(Clone, Default)]
struct Receiver {
    hits: Arc<Mutex<Vec<Hit>>>,
    script: Arc<Mutex<VecDeque<Next>>>,
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1; returns it and its URL.
    async fn start(script: &[Next]) -> (Receiver, String) {
        let r = Receiver::default();
        if let Ok(mut s) = r.script.lock() {
            s.extend(script.iter().copied());
        }
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (r, url)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().map(|h| h.clone()).unwrap_or_default()
    }

    async fn wait_for(&self, n: usize) -> Vec<Hit> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let hits = self.hits();
            if hits.len() >= n {
                return hits;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} deliveries, got {}",
                hits.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> AxStatus {
    if let Ok(mut h) = r.hits.lock() {
        h.push(Hit { headers, body });
    }
    let next = r.script.lock().ok().and_then(|mut s| s.pop_front());
    match next {
        Some(Next::Status(s)) => AxStatus::from_u16(s).unwrap_or(AxStatus::OK),
        Some(Next::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            AxStatus::OK
        }
        None => AxStatus::OK,
    }
}

/// The subscription's delivery log, newest first, once it holds at least `n` attempts: the
/// worker logs an attempt after the receiver has answered, so the log can trail the receiver.
async fn delivery_log(app: &TestApp, token: &str, subscription: &str, n: usize) -> Vec<Value> {
    let path = format!("/api/v2/webhooks/subscriptions/{subscription}/deliveries");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log: Value = app
            .get(&path, Some(token))
            .await
            .json()
            .await
            .expect("json");
        let items = log["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= n {
            return items;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} logged attempts, got {}",
            items.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn allowing_private() -> TestApp {
    spawn_with(|v| {
        v.insert("WEBHOOK_ALLOW_PRIVATE".into(), "true".into());
    })
    .await
}

async fn subscribe(app: &TestApp, token: &str, url: &str, events: Value) -> Value {
    let res = app
        .post(
            "/api/v2/webhooks/subscriptions",
            Some(token),
            json!({"url": url, "events": events}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.expect("json")
}

/// The documented recipe: HMAC-SHA256 keyed with the secret of "<t>.<body>", in hex.
fn verify(secret: &str, hit: &Hit) -> bool {
    let header = hit.header("molar-signature");
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = Some(x.to_owned()),
            Some(("v1", x)) => v1 = Some(x.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(&hit.body);
    hex::encode(mac.finalize().into_bytes()) == v1
}

#[tokio::test]
async fn events_are_delivered_once_signed_across_two_instances() {
    let app = allowing_private().await;
    let second = spawn_on(app.db_name.clone(), app.vars.clone()).await;
    let owner = app.register_clinic("Hooks").await;
    let (receiver, url) = Receiver::start(&[]).await;
    let sub = subscribe(&app, &owner.access, &url, json!(["patient.*"])).await;
    let secret = sub["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"));
    let id = sub["id"].as_str().expect("id").to_owned();
    // The secret is shown once: not in the list.
    let list: Value = app
        .get("/api/v2/webhooks/subscriptions", Some(&owner.access))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list["items"][0]["id"], id.as_str());
    assert!(list["items"][0].get("secret").is_none());

    // Changes on both instances; an appointment-free subscription gets patients only.
    let mut patients = Vec::new();
    for i in 0..6 {
        let on = if i % 2 == 0 { &app } else { &second };
        patients.push(
            on.patient(&owner.access, "Hook", &format!("Patient{i}"))
                .await,
        );
    }
    let hits = receiver.wait_for(6).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hits = if receiver.hits().len() > hits.len() {
        receiver.hits()
    } else {
        hits
    };
    assert_eq!(hits.len(), 6, "each event once");
    let mut delivered: Vec<String> = hits
        .iter()
        .map(|h| {
            h.json()["data"]["patient_id"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    delivered.sort();
    patients.sort();
    assert_eq!(delivered, patients);
    for h in &hits {
        assert!(verify(&secret, h), "signature verifies");
        assert!(!verify("whsec_other", h));
        let body = h.json();
        assert_eq!(body["type"], "patient.created");
        assert_eq!(h.header("molar-event-type"), "patient.created");
        assert_eq!(
            h.header("molar-event-id"),
            body["id"].as_str().unwrap_or("-")
        );
        // Ids and types only: no name.
        assert!(!String::from_utf8_lossy(&h.body).contains("Hook"));
    }
    // The delivery log.
    let items = delivery_log(&app, &owner.access, &id, 6).await;
    assert_eq!(items.len(), 6);
    assert!(items
        .iter()
        .all(|d| d["delivered"] == true && d["status_code"] == 200 && d["attempt"] == 1));

    // Inactive: nothing more is sent. Another clinic cannot see or change it.
    let stranger = app.register_clinic("Elsewhere").await;
    let path = format!("/api/v2/webhooks/subscriptions/{id}");
    expect_problem(
        app.patch(&path, Some(&stranger.access), json!({"active": false}))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let dentist = app.staff(&owner.access, "dentist").await;
    expect_problem(
        app.get("/api/v2/webhooks/subscriptions", Some(&dentist.access))
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    let res = app
        .patch(&path, Some(&owner.access), json!({"active": false}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    app.patient(&owner.access, "Quiet", "Patient").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.hits().len(), 6);
    assert_eq!(
        app.delete(&path, Some(&owner.access)).await.status(),
        StatusCode::NO_CONTENT
    );
    second.stop().await.expect("stop");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_receiver_that_fails_gets_the_event_after_back_off() {
    let app = allowing_private().await;
    let owner = app.register_clinic("Flaky").await;
    let (receiver, url) = Receiver::start(&[Next::Status(500), Next::Status(503)]).await;
    let sub = subscribe(&app, &owner.access, &url, json!(["patient.created"])).await;
    let id = sub["id"].as_str().expect("id").to_owned();
    app.patient(&owner.access, "Flaky", "Patient").await;
    receiver.wait_for(1).await;
    let mut db = app.admin_db().await;
    // Each failure puts the next attempt off; the test cuts the wait short.
    for n in 2..=3 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox WHERE topic = 'webhook' AND delivered_at IS NULL \
                 AND available_at > now() + interval '20 seconds' AND attempts = $1",
            )
            .bind(n - 1)
            .fetch_one(&mut db)
            .await
            .expect("count");
            if waiting == 1 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no back-off recorded"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sqlx::query("UPDATE outbox SET available_at = now() WHERE topic = 'webhook'")
            .execute(&mut db)
            .await
            .expect("due now");
        receiver.wait_for(n as usize).await;
    }
    let hits = receiver.hits();
    assert_eq!(hits.len(), 3);
    let event_ids: Vec<String> = hits.iter().map(|h| h.header("molar-event-id")).collect();
    assert!(
        event_ids.iter().all(|e| *e == event_ids[0]),
        "one event, three attempts"
    );
    assert_eq!(hits[2].header("molar-delivery-attempt"), "3");
    let codes: Vec<i64> = delivery_log(&app, &owner.access, &id, 3)
        .await
        .iter()
        .map(|d| d["status_code"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(codes, [200, 503, 500], "newest first");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn an_instance_killed_mid_delivery_does_not_lose_the_event() {
    let app = allowing_private().await;
    let owner = app.register_clinic("Crash").await;
    let (receiver, url) = Receiver::start(&[Next::Hang]).await;
    subscribe(&app, &owner.access, &url, json!(["patient.*"])).await;
    // Only a separate process delivers: this one stops first.
    let vars = app.vars.clone();
    let db_name = app.db_name.clone();
    app.stop().await.expect("stop");
    let mut doomed = ServerProcess::start(&vars).await;
    let token = {
        let res = reqwest::Client::new()
            .post(doomed.url("/api/v2/auth/login"))
            .json(&json!({"email": owner.email, "password": STRONG_PASSWORD}))
            .send()
            .await
            .expect("login");
        let body: Value = res.json().await.expect("json");
        body["access_token"].as_str().expect("token").to_owned()
    };
    let res = reqwest::Client::new()
        .post(doomed.url("/api/v2/patients"))
        .bearer_auth(&token)
        .json(&patient_body("Crash", "Patient"))
        .send()
        .await
        .expect("create");
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.expect("json");
    // The receiver holds the request; the instance dies holding the lease.
    receiver.wait_for(1).await;
    doomed.child.kill().await.expect("kill");
    let mut db = admin_connection(&db_name).await;
    let leased: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE topic = 'webhook' AND delivered_at IS NULL \
         AND available_at > now()",
    )
    .fetch_one(&mut db)
    .await
    .expect("count");
    assert_eq!(leased, 1, "still owed, leased to the dead instance");
    // The lease ends (cut short here) and another instance delivers it.
    sqlx::query("UPDATE outbox SET available_at = now() WHERE topic = 'webhook'")
        .execute(&mut db)
        .await
        .expect("lease over");
    let survivor = spawn_on(db_name, vars).await;
    let hits = receiver.wait_for(2).await;
    assert_eq!(
        hits[0].header("molar-event-id"),
        hits[1].header("molar-event-id")
    );
    assert_eq!(hits[1].json()["data"]["patient_id"], created["id"]);
    survivor.stop().await.expect("stop");
}

#[tokio::test]
async fn private_addresses_are_refused_at_subscription_and_at_delivery() {
    let app = spawn().await;
    let owner = app.register_clinic("Careful").await;
    for url in [
        "https://127.0.0.1/hook",
        "https://10.0.0.8/hook",
        "https://172.16.5.4/hook",
        "https://192.168.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[::ffff:a9fe:a9fe]/hook",
        "https://[fd00::1]/hook",
        "https://localhost/hook",
        "https://0.0.0.0/hook",
        "http://example.com/hook",
        "https://user:pass@example.com/hook",
        "ftp://example.com/hook",
        "not a url",
    ] {
        let res = app
            .post(
                "/api/v2/webhooks/subscriptions",
                Some(&owner.access),
                json!({"url": url, "events": ["patient.*"]}),
            )
            .await;
        let body = expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(body["errors"][0]["field"], "url", "{url}");
    }
    let body = expect_problem(
        app.post(
            "/api/v2/webhooks/subscriptions",
            Some(&owner.access),
            json!({"url": "https://[::1]/", "events": ["note.*"]}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "events[0]");

    // Allowed once (a test network), then the configuration changes: the next delivery
    // re-checks and refuses, and nothing reaches the address.
    let (receiver, url) = Receiver::start(&[]).await;
    let vars = app.vars.clone();
    let db_name = app.db_name.clone();
    app.stop().await.expect("stop");
    let mut open = vars.clone();
    open.insert("WEBHOOK_ALLOW_PRIVATE".into(), "true".into());
    let lenient = spawn_on(db_name.clone(), open).await;
    let sub = subscribe(&lenient, &owner.access, &url, json!(["patient.*"])).await;
    lenient.stop().await.expect("stop");
    let strict = spawn_on(db_name, vars).await;
    strict.patient(&owner.access, "Never", "Sent").await;
    let attempt = delivery_log(&strict, &owner.access, sub["id"].as_str().expect("id"), 1)
        .await
        .remove(0);
    assert_eq!(attempt["delivered"], false);
    assert!(attempt["status_code"].is_null());
    assert!(
        attempt["error"]
            .as_str()
            .is_some_and(|e| e.contains("private, loopback")),
        "{attempt}"
    );
    assert!(receiver.hits().is_empty());
    strict.stop().await.expect("stop");
}

//! Password reset by email, through the outbox, against a real SMTP server (the sink).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;
use crate::smtp_sink::{decoded, SmtpSink};

const SUBJECT: &str = "Reset your Molar password";
const NEW_PASSWORD: &str = "lantern orchard velvet 77 quietly";

async fn with_mail(sink: &SmtpSink, extra: &[(&str, &str)]) -> TestApp {
    let url = sink.url();
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    spawn_with(move |v| {
        v.insert("SMTP_URL".into(), url);
        v.insert("PUBLIC_APP_URL".into(), "https://app.example".into());
        v.insert(
            "MAIL_FROM".into(),
            "Praxis <no-reply@praxis.example>".into(),
        );
        for (k, val) in extra {
            v.insert(k, val);
        }
    })
    .await
}

async fn ask(app: &TestApp, email: &str) -> (StatusCode, Value) {
    let res = app
        .post("/api/v2/auth/password-reset", None, json!({"email": email}))
        .await;
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The token of the link in a message.
fn token_in(data: &str) -> String {
    let text = decoded(data);
    let start = text
        .find("https://app.example/reset-password?token=")
        .expect("a reset link")
        + "https://app.example/reset-password?token=".len();
    text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

async fn confirm(app: &TestApp, token: &str, password: &str) -> reqwest::Response {
    app.post(
        "/api/v2/auth/password-reset/confirm",
        None,
        json!({"token": token, "new_password": password}),
    )
    .await
}

#[tokio::test]
async fn a_reset_link_arrives_works_once_and_ends_every_session() {
    let sink = SmtpSink::keeping(SUBJECT).await;
    let app = with_mail(&sink, &[]).await;
    let owner = app.register_clinic("Reset").await;
    let other_device = app.login(&owner.email, STRONG_PASSWORD).await;

    let (status, body) = ask(&app, &owner.email.to_uppercase()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(body["detail"]
        .as_str()
        .is_some_and(|d| d.contains("on its way")));
    let mail = sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].to, [format!("<{}>", owner.email)]);
    assert_eq!(mail[0].from, "<no-reply@praxis.example>");
    let data = &mail[0].data;
    assert!(
        data.contains("Subject: Reset your Molar password"),
        "{data}"
    );
    assert!(data.contains("Content-Type: text/plain") && data.contains("Content-Type: text/html"));
    assert!(decoded(data).contains("Hello Olga Owner,"));
    let token = token_in(data);
    assert_eq!(token.len(), 43);

    // The outbox keeps who and what, not the link.
    // The sink has the message once the server sent it; the worker marks it delivered
    // just after, in its own transaction (a bounded wait, so that a race fails, not hangs).
    let mut db = app.admin_db().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (delivered, payload) = loop {
        let (delivered, payload): (Option<chrono::DateTime<chrono::Utc>>, Value) = sqlx::query_as(
            "SELECT delivered_at, payload FROM outbox WHERE payload->>'subject' = $1",
        )
        .bind(SUBJECT)
        .fetch_one(&mut db)
        .await
        .expect("outbox row");
        if delivered.is_some() || tokio::time::Instant::now() > deadline {
            break (delivered, payload);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(delivered.is_some());
    assert_eq!(
        payload,
        json!({"to": owner.email, "subject": "Reset your Molar password"})
    );
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT token_hash FROM auth_tokens WHERE purpose = 'password_reset'")
            .fetch_one(&mut db)
            .await
            .expect("token row");
    assert_eq!(stored.len(), 32, "only the hash is stored");

    // A weak password is refused and leaves the link working.
    let body = expect_problem(
        confirm(&app, &token, "Olga Owner 2024").await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "new_password");
    // Two uses at once: one wins.
    let (a, b) = tokio::join!(
        confirm(&app, &token, NEW_PASSWORD),
        confirm(&app, &token, NEW_PASSWORD)
    );
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [204, 422]);
    let body = expect_problem(
        confirm(&app, &token, NEW_PASSWORD).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "token");

    // Every session ended; the new password signs in, the old one does not.
    expect_problem(
        app.get("/api/v2/auth/me", Some(&owner.access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let token = other_device["access_token"].as_str().expect("token");
    expect_problem(
        app.get("/api/v2/auth/me", Some(token)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let res = app
        .post(
            "/api/v2/auth/refresh",
            None,
            json!({"refresh_token": owner.refresh}),
        )
        .await;
    expect_problem(res, StatusCode::UNAUTHORIZED).await;
    let res = app
        .post(
            "/api/v2/auth/login",
            None,
            json!({"email": owner.email, "password": STRONG_PASSWORD}),
        )
        .await;
    expect_problem(res, StatusCode::UNAUTHORIZED).await;
    let res = app
        .post(
            "/api/v2/auth/login",
            None,
            json!({"email": owner.email, "password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action IN ('auth.password_reset_request', 'auth.password_reset')",
    )
    .fetch_one(&mut db)
    .await
    .expect("count");
    assert_eq!(events, 2);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn unknown_addresses_get_the_same_answer_no_mail_and_the_same_limit() {
    let sink = SmtpSink::keeping(SUBJECT).await;
    let app = with_mail(&sink, &[("PASSWORD_RESET_RATE_LIMIT_PER_HOUR", "2")]).await;
    let owner = app.register_clinic("Enumerate").await;
    let unknown = "nobody-here@example.test";

    let known_answer = ask(&app, &owner.email).await;
    let unknown_answer = ask(&app, unknown).await;
    assert_eq!(known_answer, unknown_answer, "the same status and body");
    assert_eq!(known_answer.0, StatusCode::ACCEPTED);
    // The second request for each address is allowed, the third is not: for both alike.
    assert_eq!(ask(&app, &owner.email).await.0, StatusCode::ACCEPTED);
    assert_eq!(ask(&app, unknown).await.0, StatusCode::ACCEPTED);
    for address in [owner.email.as_str(), unknown] {
        let res = app
            .post(
                "/api/v2/auth/password-reset",
                None,
                json!({"email": address}),
            )
            .await;
        assert!(res.headers().get("retry-after").is_some());
        expect_problem(res, StatusCode::TOO_MANY_REQUESTS).await;
    }
    // Two messages, both to the known address.
    let mail = sink.wait_for(2, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mail = if sink.messages().len() > mail.len() {
        sink.messages()
    } else {
        mail
    };
    assert_eq!(mail.len(), 2);
    assert!(mail.iter().all(|m| m.to == [format!("<{}>", owner.email)]));
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn an_expired_or_forged_token_is_refused() {
    let sink = SmtpSink::keeping(SUBJECT).await;
    let app = with_mail(&sink, &[]).await;
    let owner = app.register_clinic("Expired").await;
    assert_eq!(ask(&app, &owner.email).await.0, StatusCode::ACCEPTED);
    let token = token_in(&sink.wait_for(1, Duration::from_secs(20)).await[0].data);
    let mut db = app.admin_db().await;
    sqlx::query("UPDATE auth_tokens SET expires_at = now() - interval '1 second'")
        .execute(&mut db)
        .await
        .expect("expire");
    let body = expect_problem(
        confirm(&app, &token, NEW_PASSWORD).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "token");
    for forged in ["", "not-a-token", &"A".repeat(43)] {
        expect_problem(
            confirm(&app, forged, NEW_PASSWORD).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    assert_eq!(
        app.login(&owner.email, STRONG_PASSWORD).await["token_type"],
        "Bearer"
    );
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_mail_server_that_fails_then_recovers_gets_each_message_once_from_two_instances() {
    let sink = SmtpSink::keeping(SUBJECT).await;
    let app = with_mail(&sink, &[]).await;
    let second = spawn_on(app.db_name.clone(), app.vars.clone()).await;
    let owner = app.register_clinic("Outage").await;
    let mut emails = vec![owner.email.clone()];
    for _ in 0..5 {
        emails.push(app.staff(&owner.access, "assistant").await.email);
    }

    sink.refuse(true);
    for email in &emails {
        assert_eq!(ask(&app, email).await.0, StatusCode::ACCEPTED);
    }
    // Every message is attempted and put off with back-off.
    let mut db = app.admin_db().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let failed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE attempts >= 1 AND last_error IS NOT NULL \
             AND delivered_at IS NULL AND available_at > now() AND payload->>'subject' = $1",
        )
        .bind(SUBJECT)
        .fetch_one(&mut db)
        .await
        .expect("count");
        if failed == emails.len() as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{failed} of {} attempted",
            emails.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sink.messages().is_empty());

    // The server recovers; the back-off is cut short rather than waited for.
    sink.refuse(false);
    sqlx::query("UPDATE outbox SET available_at = now()")
        .execute(&mut db)
        .await
        .expect("due now");
    let mail = sink.wait_for(emails.len(), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mail = if sink.messages().len() > mail.len() {
        sink.messages()
    } else {
        mail
    };
    let mut to: Vec<String> = mail.iter().map(|m| m.to[0].clone()).collect();
    to.sort();
    let mut want: Vec<String> = emails.iter().map(|e| format!("<{e}>")).collect();
    want.sort();
    assert_eq!(to, want, "each message exactly once");
    let attempts: Vec<i32> = sqlx::query_scalar(
        "SELECT attempts FROM outbox WHERE delivered_at IS NOT NULL AND payload->>'subject' = $1",
    )
    .bind(SUBJECT)
    .fetch_all(&mut db)
    .await
    .expect("attempts");
    assert_eq!(attempts.len(), emails.len());
    assert!(attempts.iter().all(|a| *a >= 2), "{attempts:?}");
    second.stop().await.expect("stop");
    app.stop().await.expect("stop");
}

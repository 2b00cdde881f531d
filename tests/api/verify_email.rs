//! Verified email addresses, against a real SMTP server (the sink): links for new accounts
//! and changed addresses, the grace after which an unverified account stops signing in,
//! and addresses that an unverified account cannot hold for ever.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;
use crate::smtp_sink::{decoded, Received, SmtpSink};

const SUBJECT: &str = "Confirm your email address for Molar";
const WAIT: Duration = Duration::from_secs(20);

async fn with_mail(sink: &SmtpSink, grace_hours: Option<&str>) -> TestApp {
    let url = sink.url();
    let grace = grace_hours.map(str::to_owned);
    spawn_with(move |v| {
        v.insert("SMTP_URL".into(), url);
        v.insert("PUBLIC_APP_URL".into(), "https://app.example".into());
        if let Some(g) = grace {
            v.insert("EMAIL_VERIFICATION_GRACE_HOURS".into(), g);
        }
    })
    .await
}

/// The token of the verification link in a message.
fn token_in(m: &Received) -> String {
    let text = decoded(&m.data);
    let prefix = "https://app.example/verify-email?token=";
    let start = text.find(prefix).expect("a verification link") + prefix.len();
    text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

/// The messages to `address` once `n` of them have arrived.
async fn mail_to(sink: &SmtpSink, address: &str, n: usize) -> Vec<Received> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got: Vec<Received> = sink
            .messages()
            .into_iter()
            .filter(|m| m.to == [format!("<{address}>")])
            .collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} message(s) to {address}, got {}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn confirm(app: &TestApp, token: &str) -> reqwest::Response {
    app.post(
        "/api/v2/auth/verify-email/confirm",
        None,
        json!({ "token": token }),
    )
    .await
}

async fn me(app: &TestApp, token: &str) -> Value {
    let res = app.get("/api/v2/auth/me", Some(token)).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.expect("json")
}

async fn login_status(app: &TestApp, email: &str) -> StatusCode {
    app.post(
        "/api/v2/auth/login",
        None,
        json!({"email": email, "password": STRONG_PASSWORD}),
    )
    .await
    .status()
}

#[tokio::test]
async fn a_new_owner_and_new_staff_confirm_their_address_once() {
    let sink = SmtpSink::keeping(SUBJECT).await;
    let app = with_mail(&sink, None).await;
    let owner = app.register_clinic("Verify").await;
    assert_eq!(
        me(&app, &owner.access).await["user"]["email_verified"],
        false
    );
    let mail = mail_to(&sink, &owner.email, 1).await;
    let data = &mail[0].data;
    assert!(data.contains("Content-Type: text/plain") && data.contains("Content-Type: text/html"));
    assert!(decoded(data).contains("Hello Olga Owner,"));
    let token = token_in(&mail[0]);

    // Two uses at once: one wins, the other is told the link is spent.
    let (a, b) = tokio::join!(confirm(&app, &token), confirm(&app, &token));
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 422]);
    let ok = if a.status() == StatusCode::OK { a } else { b };
    let body: Value = ok.json().await.expect("json");
    assert_eq!(body["email"], owner.email.as_str());
    assert_eq!(body["email_verified"], true);
    assert_eq!(
        me(&app, &owner.access).await["user"]["email_verified"],
        true
    );
    let body = expect_problem(
        confirm(&app, &token).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "token");
    // Nothing left to verify.
    expect_problem(
        app.post("/api/v2/auth/verify-email", Some(&owner.access), json!({}))
            .await,
        StatusCode::CONFLICT,
    )
    .await;

    // Staff added by the owner get a link of their own, and can ask for another.
    let dentist = app.staff(&owner.access, "dentist").await;
    let first = mail_to(&sink, &dentist.email, 1).await;
    let res = app
        .post(
            "/api/v2/auth/verify-email",
            Some(&dentist.access),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["email"], dentist.email.as_str());
    let both = mail_to(&sink, &dentist.email, 2).await;
    assert_ne!(token_in(&first[0]), token_in(&both[1]));
    assert_eq!(
        confirm(&app, &token_in(&both[1])).await.status(),
        StatusCode::OK
    );

    // Forged, expired and audited.
    for forged in ["", "nope", &"A".repeat(43)] {
        expect_problem(
            confirm(&app, forged).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    let mut db = app.admin_db().await;
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_events WHERE action IN \
         ('user.email_verified', 'auth.verify_email_request') ORDER BY at, id",
    )
    .fetch_all(&mut db)
    .await
    .expect("audit");
    assert_eq!(
        actions,
        [
            "user.email_verified",
            "auth.verify_email_request",
            "user.email_verified"
        ]
    );
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn an_expired_link_is_refused() {
    let sink = SmtpSink::keeping(SUBJECT).await;
    let app = with_mail(&sink, None).await;
    let owner = app.register_clinic("Late").await;
    let token = token_in(&mail_to(&sink, &owner.email, 1).await[0]);
    let mut db = app.admin_db().await;
    sqlx::query("UPDATE auth_tokens SET expires_at = now() - interval '1 second'")
        .execute(&mut db)
        .await
        .expect("expire");
    expect_problem(
        confirm(&app, &token).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        me(&app, &owner.access).await["user"]["email_verified"],
        false
    );
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_changed_address_takes_effect_only_once_verified() {
    let sink = SmtpSink::start().await;
    let app = with_mail(&sink, None).await;
    let owner = app.register_clinic("Change").await;
    let other = app.register_clinic("Other").await;
    let new_address = format!("new-{}@example.test", uuid::Uuid::new_v4().simple());

    // Another account's address is refused at once.
    expect_problem(
        app.patch(
            &format!("/api/v2/users/{}", owner.user_id),
            Some(&owner.access),
            json!({"email": other.email}),
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;

    let res = app
        .patch(
            &format!("/api/v2/users/{}", owner.user_id),
            Some(&owner.access),
            json!({"email": new_address}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let user: Value = res.json().await.expect("json");
    assert_eq!(user["email"], owner.email.as_str());
    assert_eq!(user["pending_email"], new_address.as_str());
    // The old address signs in until the new one is confirmed; the new one does not yet.
    assert_eq!(login_status(&app, &owner.email).await, StatusCode::OK);
    assert_eq!(
        login_status(&app, &new_address).await,
        StatusCode::UNAUTHORIZED
    );
    let link = mail_to(&sink, &new_address, 1).await;
    // The link for the old address, sent at registration, no longer verifies anything once
    // the new one is confirmed.
    let old_link = mail_to(&sink, &owner.email, 1).await;

    let res = confirm(&app, &token_in(&link[0])).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["email"], new_address.as_str());
    assert_eq!(
        login_status(&app, &owner.email).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(login_status(&app, &new_address).await, StatusCode::OK);
    let user = me(&app, &owner.access).await["user"].clone();
    assert_eq!(user["email"], new_address.as_str());
    assert_eq!(user["email_verified"], true);
    assert!(user["pending_email"].is_null());
    expect_problem(
        confirm(&app, &token_in(&old_link[0])).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    // The old address is told.
    let notices = mail_to(&sink, &owner.email, 2).await;
    assert!(notices[1]
        .data
        .contains("Subject: Your Molar sign-in address has changed"));
    assert!(decoded(&notices[1].data).contains(&new_address));
    // The old address is free again.
    let res = app
        .post(
            "/api/v2/users",
            Some(&other.access),
            json!({"email": owner.email, "password": STRONG_PASSWORD, "full_name": "Taker", "role": "billing"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn after_the_grace_an_unverified_account_signs_in_only_once_verified() {
    let sink = SmtpSink::keeping(SUBJECT).await;
    let app = with_mail(&sink, Some("0")).await;
    let owner = app.register_clinic("Strict").await;
    mail_to(&sink, &owner.email, 1).await;

    let body = expect_problem(
        app.post(
            "/api/v2/auth/login",
            None,
            json!({"email": owner.email, "password": STRONG_PASSWORD}),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert!(body["detail"]
        .as_str()
        .is_some_and(|d| d.contains("confirm your email address")));
    // A wrong password is still just a wrong password.
    assert_eq!(
        app.post(
            "/api/v2/auth/login",
            None,
            json!({"email": owner.email, "password": "not the password at all"}),
        )
        .await
        .status(),
        StatusCode::UNAUTHORIZED
    );
    // The registration's link is recent, so no other was sent. Once it is ten minutes old,
    // a refused sign-in sends a new one, and a second one right after does not.
    let mut db = app.admin_db().await;
    sqlx::query("UPDATE auth_tokens SET created_at = now() - interval '11 minutes'")
        .execute(&mut db)
        .await
        .expect("age the link");
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(
        login_status(&app, &owner.email).await,
        StatusCode::FORBIDDEN
    );
    let mail = mail_to(&sink, &owner.email, 2).await;
    assert_eq!(
        login_status(&app, &owner.email).await,
        StatusCode::FORBIDDEN
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.messages().len(), 2);
    // The registration's session cannot be refreshed either.
    expect_problem(
        app.post(
            "/api/v2/auth/refresh",
            None,
            json!({"refresh_token": owner.refresh}),
        )
        .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;

    assert_eq!(
        confirm(&app, &token_in(&mail[1])).await.status(),
        StatusCode::OK
    );
    assert_eq!(login_status(&app, &owner.email).await, StatusCode::OK);
    let refused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'auth.login' AND outcome = 'failure' \
         AND details->>'reason' = 'email_unverified'",
    )
    .fetch_one(&mut db)
    .await
    .expect("audit");
    assert_eq!(refused, 3);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn an_unverified_address_is_held_only_until_its_grace_ends() {
    let sink = SmtpSink::keeping(SUBJECT).await;
    let app = with_mail(&sink, None).await;
    let squatter = app.register_clinic("Squatter").await;
    let address = squatter.email.clone();
    let squatter_link = token_in(&mail_to(&sink, &address, 1).await[0]);
    let register = |name: &'static str| {
        app.post(
            "/api/v2/auth/register-clinic",
            None,
            json!({
                "clinic": {"name": name, "timezone": "Europe/Berlin", "currency": "EUR"},
                "owner": {"email": address, "password": STRONG_PASSWORD, "full_name": "Real Owner"}
            }),
        )
    };
    // Within the grace the address is held.
    expect_problem(register("Too early").await, StatusCode::CONFLICT).await;

    // The squatter's grace ends: the address can be taken, and then belongs to the taker.
    let mut db = app.admin_db().await;
    sqlx::query("UPDATE users SET email_verify_by = now() - interval '1 hour' WHERE id = $1::uuid")
        .bind(&squatter.user_id)
        .execute(&mut db)
        .await
        .expect("grace over");
    let res = register("Rightful").await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let rightful: Value = res.json().await.expect("json");
    let holder: String = sqlx::query_scalar(
        "SELECT user_id::text FROM user_logins WHERE email_normalized = lower($1)",
    )
    .bind(&address)
    .fetch_one(&mut db)
    .await
    .expect("login row");
    assert_eq!(holder, rightful["user"]["id"].as_str().expect("id"));
    // The squatter's late link cannot take it back.
    expect_problem(confirm(&app, &squatter_link).await, StatusCode::CONFLICT).await;
    // Once verified, it is held for good.
    let mail = mail_to(&sink, &address, 2).await;
    assert_eq!(
        confirm(&app, &token_in(&mail[1])).await.status(),
        StatusCode::OK
    );
    expect_problem(register("Too late").await, StatusCode::CONFLICT).await;
    app.stop().await.expect("stop");
}

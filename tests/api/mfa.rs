//! Two-factor sign-in with TOTP: setup, the two-step login, one use per code and step,
//! recovery codes, disabling, and clinics that require it for chosen roles.

use reqwest::StatusCode;
use serde_json::{json, Value};
use totp_rs::{Builder, Secret, Totp};

use crate::common::*;

fn device(secret_base32: &str) -> Totp {
    Builder::new()
        .with_secret(Secret::try_from_base32(secret_base32).expect("base32 secret"))
        .with_account_name("test")
        .build()
        .expect("totp")
}

/// The current time step.
fn step_now() -> i64 {
    chrono::Utc::now().timestamp() / 30
}

/// The code of time step `step`.
fn code_at(t: &Totp, step: i64) -> String {
    t.generate(u64::try_from(step * 30).expect("positive"))
        .to_string()
}

/// The code `offset` steps from now.
fn code(t: &Totp, offset: i64) -> String {
    code_at(t, step_now() + offset)
}

/// Sets TOTP up with the current step's code; returns the device, the recovery codes, the
/// secret and the step that enabled it (used up).
async fn set_up(app: &TestApp, token: &str) -> (Totp, Vec<String>, String, i64) {
    let res = app
        .post("/api/v2/auth/mfa/totp", Some(token), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let setup: Value = res.json().await.expect("json");
    let secret = setup["secret"].as_str().expect("secret");
    let uri = setup["otpauth_uri"].as_str().expect("uri");
    assert!(uri.starts_with("otpauth://totp/Molar:"), "{uri}");
    assert!(uri.contains(&format!("secret={secret}")), "{uri}");
    let t = device(secret);
    let res = app
        .post(
            "/api/v2/auth/mfa/totp/enable",
            Some(token),
            json!({"code": "000000x"}),
        )
        .await;
    expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    let enabled = step_now();
    let res = app
        .post(
            "/api/v2/auth/mfa/totp/enable",
            Some(token),
            json!({"code": code_at(&t, enabled)}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.expect("json");
    let codes: Vec<String> = body["recovery_codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| c.as_str().expect("code").to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    (t, codes, secret.to_owned(), enabled)
}

async fn first_step(app: &TestApp, email: &str) -> Value {
    app.login(email, STRONG_PASSWORD).await
}

async fn second_step(
    app: &TestApp,
    mfa_token: &str,
    field: &str,
    value: &str,
) -> reqwest::Response {
    app.post(
        "/api/v2/auth/login/mfa",
        None,
        json!({"mfa_token": mfa_token, field: value}),
    )
    .await
}

#[tokio::test]
async fn a_second_factor_is_asked_for_and_each_code_works_once() {
    // Second steps are limited per user like sign-ins (LOGIN_RATE_LIMIT_PER_MINUTE); this
    // test makes more than the default five.
    let app = spawn_with(|v| {
        v.insert("LOGIN_RATE_LIMIT_PER_MINUTE".into(), "50".into());
    })
    .await;
    let owner = app.register_clinic("Two factors").await;
    let (t, recovery, secret, enabled) = set_up(&app, &owner.access).await;
    // Set up already: a second setup is refused until it is disabled.
    let res = app
        .post("/api/v2/auth/mfa/totp", Some(&owner.access), json!({}))
        .await;
    expect_problem(res, StatusCode::CONFLICT).await;

    let first = first_step(&app, &owner.email).await;
    assert_eq!(first["mfa_required"], true);
    assert!(first.get("access_token").is_none());
    let mfa = first["mfa_token"].as_str().expect("mfa token").to_owned();
    // The code that enabled it is used up (steps are absolute, so this holds whenever the
    // clock turns a step during the test).
    expect_problem(
        second_step(&app, &mfa, "code", &code_at(&t, enabled)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let now = step_now();
    // Three steps back is outside the window.
    expect_problem(
        second_step(&app, &mfa, "code", &code_at(&t, now - 3)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // One step ahead is inside it; once.
    let ahead = code_at(&t, now + 1);
    let res = second_step(&app, &mfa, "code", &ahead).await;
    assert_eq!(res.status(), StatusCode::OK);
    let tokens: Value = res.json().await.expect("json");
    assert_eq!(
        app.get("/api/v2/auth/me", tokens["access_token"].as_str())
            .await
            .status(),
        StatusCode::OK
    );
    expect_problem(
        second_step(&app, &mfa, "code", &ahead).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // A step earlier than the one just used: refused too.
    expect_problem(
        second_step(&app, &mfa, "code", &code_at(&t, now)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;

    // A recovery code works once, however it is typed.
    let typed = recovery[3].replace('-', "").to_uppercase();
    assert_eq!(
        second_step(&app, &mfa, "recovery_code", &typed)
            .await
            .status(),
        StatusCode::OK
    );
    expect_problem(
        second_step(&app, &mfa, "recovery_code", &recovery[3]).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // Neither or both factors, or a forged token.
    let res = app
        .post("/api/v2/auth/login/mfa", None, json!({"mfa_token": mfa}))
        .await;
    expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    expect_problem(
        second_step(&app, "not.a.token", "recovery_code", &recovery[4]).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // An access token is not an mfa token.
    expect_problem(
        second_step(&app, &owner.access, "recovery_code", &recovery[4]).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;

    let mut db = app.admin_db().await;
    let failures: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'auth.login' AND outcome = 'failure' \
         AND details->>'reason' = 'wrong_second_factor'",
    )
    .fetch_one(&mut db)
    .await
    .expect("count");
    assert!(failures >= 4, "{failures}");
    let sealed: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT totp_secret FROM users WHERE email = $1")
            .bind(&owner.email)
            .fetch_one(&mut db)
            .await
            .expect("row");
    let sealed = sealed.expect("a sealed secret");
    let raw = Secret::try_from_base32(&secret).expect("base32");
    assert_eq!(sealed.len(), 24 + 20 + 16, "nonce, secret, tag");
    assert!(
        !sealed.windows(20).any(|w| w == raw.as_bytes()),
        "not kept in the clear"
    );
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn turning_it_off_needs_the_password_and_a_code() {
    let app = spawn().await;
    let owner = app.register_clinic("Off").await;
    let (t, _, _, _) = set_up(&app, &owner.access).await;
    let off = |password: &str, code: String| {
        app.call(
            reqwest::Method::DELETE,
            "/api/v2/auth/mfa/totp",
            Some(&owner.access),
            Some(json!({"password": password, "code": code})),
        )
    };
    let body = expect_problem(
        off("not my password at all", code(&t, 0)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "password");
    let wrong_code = expect_problem(
        off(STRONG_PASSWORD, "123456".into()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        wrong_code["errors"], body["errors"],
        "one answer for either mistake"
    );
    assert_eq!(
        off(STRONG_PASSWORD, code(&t, 1)).await.status(),
        StatusCode::NO_CONTENT
    );
    expect_problem(
        off(STRONG_PASSWORD, code(&t, 1)).await,
        StatusCode::CONFLICT,
    )
    .await;
    let tokens = first_step(&app, &owner.email).await;
    assert!(tokens["access_token"].is_string() && tokens["refresh_token"].is_string());
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_clinic_that_requires_it_gives_unprepared_users_a_setup_only_token() {
    let app = spawn().await;
    let owner = app.register_clinic("Required").await;
    let dentist = app.staff(&owner.access, "dentist").await;
    let res = app
        .patch(
            "/api/v2/clinic",
            Some(&owner.access),
            json!({"settings": {"mfa_required_roles": ["dentist"]}}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);

    // A session from before the requirement is not refreshed.
    let res = app
        .post(
            "/api/v2/auth/refresh",
            None,
            json!({"refresh_token": dentist.refresh}),
        )
        .await;
    let body = expect_problem(res, StatusCode::UNAUTHORIZED).await;
    assert!(body["detail"]
        .as_str()
        .is_some_and(|d| d.contains("two-factor")));

    let answer = app.login(&dentist.email, STRONG_PASSWORD).await;
    assert_eq!(answer["mfa_setup_required"], true);
    assert!(answer.get("refresh_token").is_none());
    let limited = answer["access_token"].as_str().expect("token").to_owned();
    let body = expect_problem(
        app.get("/api/v2/patients", Some(&limited)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert!(body["detail"]
        .as_str()
        .is_some_and(|d| d.contains("two-factor")));
    assert_eq!(
        app.get("/api/v2/auth/me", Some(&limited)).await.status(),
        StatusCode::OK
    );
    let (t, _, _, _) = set_up(&app, &limited).await;
    let answer = app.login(&dentist.email, STRONG_PASSWORD).await;
    assert_eq!(answer["mfa_required"], true);
    // While the clinic requires it, it stays on.
    let res = app
        .call(
            reqwest::Method::DELETE,
            "/api/v2/auth/mfa/totp",
            Some(&limited),
            Some(json!({"password": STRONG_PASSWORD, "code": code(&t, 1)})),
        )
        .await;
    expect_problem(res, StatusCode::CONFLICT).await;
    // The owner's role is not required to.
    let answer = app.login(&owner.email, STRONG_PASSWORD).await;
    assert!(answer["refresh_token"].is_string());
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn an_owner_turns_off_a_lost_device_and_the_user_sets_up_again() {
    let sink = crate::smtp_sink::SmtpSink::keeping(
        "Two-factor sign-in was turned off for your Molar account",
    )
    .await;
    let url = sink.url();
    let app = spawn_with(move |v| {
        v.insert("SMTP_URL".into(), url);
    })
    .await;
    let owner = app.register_clinic("Lost device").await;
    let admin = app.staff(&owner.access, "admin").await;
    let dentist = app.staff(&owner.access, "dentist").await;
    set_up(&app, &dentist.access).await;
    let path = format!("/api/v2/users/{}/mfa", dentist.user_id);

    // Only an owner, and not for their own account.
    expect_problem(
        app.delete(&path, Some(&admin.access)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    expect_problem(
        app.delete(&path, Some(&dentist.access)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    expect_problem(
        app.delete(
            &format!("/api/v2/users/{}/mfa", owner.user_id),
            Some(&owner.access),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    expect_problem(
        app.delete(
            &format!("/api/v2/users/{}/mfa", uuid::Uuid::now_v7()),
            Some(&owner.access),
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    // Another clinic's owner cannot reach the user.
    let stranger = app.register_clinic("Elsewhere").await;
    expect_problem(
        app.delete(&path, Some(&stranger.access)).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(first_step(&app, &dentist.email).await["mfa_required"], true);

    let res = app.delete(&path, Some(&owner.access)).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // The user's sessions ended at once, access and refresh alike.
    expect_problem(
        app.get("/api/v2/auth/me", Some(&dentist.access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    expect_problem(
        app.post(
            "/api/v2/auth/refresh",
            None,
            json!({"refresh_token": dentist.refresh}),
        )
        .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // The password alone signs in now, and the device can be set up again.
    let answer = first_step(&app, &dentist.email).await;
    assert!(answer["refresh_token"].is_string(), "{answer}");
    let fresh = answer["access_token"].as_str().expect("token").to_owned();
    set_up(&app, &fresh).await;
    // Told by email; audited; a second reset of a user without it is a 409.
    let mail = sink.wait_for(1, std::time::Duration::from_secs(20)).await;
    assert_eq!(mail[0].to, [format!("<{}>", dentist.email)]);
    assert!(crate::smtp_sink::decoded(&mail[0].data).contains("Olga Owner turned off"));
    let mut db = app.admin_db().await;
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'user.mfa_reset' AND outcome = 'success' \
         AND resource_id = $1::uuid",
    )
    .bind(&dentist.user_id)
    .fetch_one(&mut db)
    .await
    .expect("audit");
    assert_eq!(audited, 1);
    let other = app.staff(&owner.access, "hygienist").await;
    expect_problem(
        app.delete(
            &format!("/api/v2/users/{}/mfa", other.user_id),
            Some(&owner.access),
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    app.stop().await.expect("stop");
}

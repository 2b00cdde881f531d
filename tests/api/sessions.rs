//! Signed-in devices (sessions) and password strength.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

async fn login_as(app: &TestApp, email: &str, agent: &str) -> Value {
    let res = app
        .client
        .post(app.url("/api/v2/auth/login"))
        .header("user-agent", agent)
        .json(&json!({"email": email, "password": STRONG_PASSWORD}))
        .send()
        .await
        .expect("login");
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.expect("json")
}

async fn sessions(app: &TestApp, token: &str, path: &str) -> Vec<Value> {
    let res = app.get(path, Some(token)).await;
    assert_eq!(res.status(), StatusCode::OK, "{path}");
    let body: Value = res.json().await.expect("json");
    body["items"].as_array().cloned().expect("items")
}

#[tokio::test]
async fn devices_are_listed_and_one_ended_is_refused_at_once_on_every_instance() {
    let app = spawn().await;
    // A second instance on the same database and Redis.
    let other = spawn_on(app.db_name.clone(), app.vars.clone()).await;
    let owner = app.register_clinic("Devices").await;
    let laptop = login_as(&app, &owner.email, "Laptop/1.0").await;
    let phone = login_as(&app, &owner.email, "Phone/2.0").await;
    let laptop_token = laptop["access_token"].as_str().expect("token");
    let phone_token = phone["access_token"].as_str().expect("token");

    let list = sessions(&app, laptop_token, "/api/v2/auth/sessions").await;
    // Registering signed in too: three sessions, the phone's most recent.
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!(list[0]["user_agent"], "Phone/2.0");
    assert_eq!(list[0]["ip"], "127.0.0.1");
    assert_eq!(list[0]["current"], false);
    let mine: Vec<&Value> = list.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["user_agent"], "Laptop/1.0");

    // A refresh keeps the session (a new token of the same family), with a later use.
    let res = app
        .client
        .post(app.url("/api/v2/auth/refresh"))
        .header("user-agent", "Phone/2.1")
        .json(&json!({"refresh_token": phone["refresh_token"]}))
        .send()
        .await
        .expect("refresh");
    assert_eq!(res.status(), StatusCode::OK);
    let phone2: Value = res.json().await.expect("json");
    let after = sessions(&app, laptop_token, "/api/v2/auth/sessions").await;
    assert_eq!(after.len(), 3);
    assert_eq!(after[0]["id"], list[0]["id"]);
    assert_eq!(after[0]["user_agent"], "Phone/2.1");
    assert_eq!(after[0]["created_at"], list[0]["created_at"]);
    assert!(after[0]["last_used_at"].as_str() > list[0]["last_used_at"].as_str());

    // The laptop ends the phone's session: its access token is refused by the other
    // instance at once, and its refresh token no longer works.
    let phone_id = after[0]["id"].as_str().expect("id");
    let res = app
        .delete(
            &format!("/api/v2/auth/sessions/{phone_id}"),
            Some(laptop_token),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = other.get("/api/v2/auth/me", Some(phone_token)).await;
    expect_problem(res, StatusCode::UNAUTHORIZED).await;
    let res = other
        .post(
            "/api/v2/auth/refresh",
            None,
            json!({"refresh_token": phone2["refresh_token"]}),
        )
        .await;
    expect_problem(res, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        other
            .get("/api/v2/auth/me", Some(laptop_token))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        sessions(&other, laptop_token, "/api/v2/auth/sessions")
            .await
            .len(),
        2
    );
    // Ended is gone: a second end, or an unknown id, is a 404.
    let res = app
        .delete(
            &format!("/api/v2/auth/sessions/{phone_id}"),
            Some(laptop_token),
        )
        .await;
    expect_problem(res, StatusCode::NOT_FOUND).await;
    other.stop().await.expect("stop");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn an_owner_ends_a_staff_members_session_and_staff_cannot_touch_others() {
    let app = spawn().await;
    let owner = app.register_clinic("Owner ends").await;
    let dentist = app.staff(&owner.access, "dentist").await;
    let stranger = app.register_clinic("Elsewhere").await;

    let theirs = sessions(
        &app,
        &owner.access,
        &format!("/api/v2/users/{}/sessions", dentist.user_id),
    )
    .await;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0]["current"], false);
    let id = theirs[0]["id"].as_str().expect("id").to_owned();

    // The dentist sees neither the owner's sessions nor ends them; another clinic's owner
    // does not find the dentist's session at all.
    let res = app
        .get(
            &format!("/api/v2/users/{}/sessions", owner.user_id),
            Some(&dentist.access),
        )
        .await;
    expect_problem(res, StatusCode::FORBIDDEN).await;
    let owners = sessions(&app, &owner.access, "/api/v2/auth/sessions").await;
    let owner_session = owners[0]["id"].as_str().expect("id");
    let res = app
        .delete(
            &format!("/api/v2/auth/sessions/{owner_session}"),
            Some(&dentist.access),
        )
        .await;
    expect_problem(res, StatusCode::NOT_FOUND).await;
    let res = app
        .delete(
            &format!("/api/v2/auth/sessions/{id}"),
            Some(&stranger.access),
        )
        .await;
    expect_problem(res, StatusCode::NOT_FOUND).await;
    let res = app
        .get(
            &format!("/api/v2/users/{}/sessions", dentist.user_id),
            Some(&stranger.access),
        )
        .await;
    expect_problem(res, StatusCode::NOT_FOUND).await;

    let res = app
        .delete(&format!("/api/v2/auth/sessions/{id}"), Some(&owner.access))
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    expect_problem(
        app.get("/api/v2/auth/me", Some(&dentist.access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let mut db = app.admin_db().await;
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'session.end' AND resource_id = $1::uuid",
    )
    .bind(&dentist.user_id)
    .fetch_one(&mut db)
    .await
    .expect("count");
    assert_eq!(ended, 1);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn guessable_passwords_are_refused_with_the_estimators_advice() {
    let app = spawn().await;
    let owner = app.register_clinic("Strength").await;
    let create = |password: &str, name: &str| {
        json!({"email": format!("{}@example.test", uuid::Uuid::new_v4().simple()),
               "password": password, "full_name": name, "role": "assistant"})
    };
    // Long enough and not on the common list, but a keyboard pattern and a year.
    let res = app
        .post(
            "/api/v2/users",
            Some(&owner.access),
            create("qwertzuiop2024", "Ann Assistant"),
        )
        .await;
    let body = expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "password");
    let message = body["errors"][0]["message"].as_str().expect("message");
    assert!(message.starts_with("is too easy to guess"), "{message}");
    // Built from the user's own name.
    let res = app
        .post(
            "/api/v2/users",
            Some(&owner.access),
            create("magdalena kowalczyk 1", "Magdalena Kowalczyk"),
        )
        .await;
    expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    let res = app
        .post(
            "/api/v2/users",
            Some(&owner.access),
            create(STRONG_PASSWORD, "Ann Assistant"),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    // The same rule on a password change.
    let res = app
        .post(
            "/api/v2/auth/change-password",
            Some(&owner.access),
            json!({"current_password": STRONG_PASSWORD, "new_password": "Olga Owner 2024"}),
        )
        .await;
    let body = expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "new_password");
    app.stop().await.expect("stop");
}

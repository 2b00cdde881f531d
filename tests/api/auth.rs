//! Sign-in and staff, tested as attacks as well as happy paths: forged tokens, refresh
//! reuse, role boundaries, cross-clinic ids, rate limits, and bad input of every kind.

use crate::common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn registering_a_clinic_returns_the_clinic_its_owner_and_tokens() {
    let app = spawn().await;
    let res = app
        .post(
            "/api/v2/auth/register-clinic",
            None,
            json!({
                "clinic": {"name": "Smile Dental", "timezone": "America/New_York", "currency": "USD"},
                "owner": {"email": "Owner@Smile.example", "password": STRONG_PASSWORD, "full_name": "Sam Smile"}
            }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["location"], "/api/v2/clinic");
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["clinic"]["currency"], "USD");
    assert_eq!(body["clinic"]["timezone"], "America/New_York");
    assert_eq!(body["user"]["role"], "owner");
    assert_eq!(body["user"]["clinic_id"], body["clinic"]["id"]);
    assert_eq!(body["tokens"]["token_type"], "Bearer");
    assert_eq!(body["tokens"]["expires_in"], 900);
    let me = app
        .get("/api/v2/auth/me", body["tokens"]["access_token"].as_str())
        .await;
    assert_eq!(me.status(), StatusCode::OK);
    let me: Value = me.json().await.expect("json");
    assert_eq!(me["role"], "owner");
    assert!(me["permissions"]
        .as_array()
        .expect("permissions")
        .contains(&json!("users.manage")));
    // The password is stored as argon2id, never in the clear.
    let mut db = app.admin_db().await;
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&mut db)
        .await
        .expect("hash");
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
}

#[tokio::test]
async fn invalid_registrations_name_every_bad_field() {
    let app = spawn().await;
    let res = app
        .post(
            "/api/v2/auth/register-clinic",
            None,
            json!({
                "clinic": {"name": " ", "timezone": "Mars/Olympus", "currency": "XXQ"},
                "owner": {"email": "not-an-email", "password": "password1234", "full_name": "X"}
            }),
        )
        .await;
    let body = expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    for f in [
        "clinic.name",
        "clinic.timezone",
        "clinic.currency",
        "owner.email",
        "owner.password",
    ] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }
}

#[tokio::test]
async fn bad_requests_of_every_kind_get_the_right_problem() {
    let app = spawn_with(|v| {
        v.insert("MAX_BODY_KB".into(), "4".into());
    })
    .await;
    let url = app.url("/api/v2/auth/login");
    // Malformed JSON: 400.
    let res = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .expect("send");
    expect_problem(res, StatusCode::BAD_REQUEST).await;
    // Wrong content type: 415.
    let res = app
        .client
        .post(&url)
        .header("content-type", "text/plain")
        .body("email=a")
        .send()
        .await
        .expect("send");
    expect_problem(res, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    // Unknown field: 422 naming it.
    let res = app
        .post(
            "/api/v2/auth/login",
            None,
            json!({"email": "a@b.co", "password": "x", "admin": true}),
        )
        .await;
    let body = expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "admin");
    // Wrong type: 422 naming it.
    let res = app
        .post(
            "/api/v2/auth/login",
            None,
            json!({"email": 5, "password": "x"}),
        )
        .await;
    let body = expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "email");
    // Too large: 413.
    let big = "x".repeat(8 * 1024);
    let res = app
        .post(
            "/api/v2/auth/login",
            None,
            json!({"email": big, "password": "x"}),
        )
        .await;
    expect_problem(res, StatusCode::PAYLOAD_TOO_LARGE).await;
    // Malformed path id: 400; malformed query: 400.
    let owner = app.register_clinic("Paths").await;
    expect_problem(
        app.get("/api/v2/users/not-a-uuid", Some(&owner.access))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    expect_problem(
        app.get("/api/v2/users?limit=lots", Some(&owner.access))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    expect_problem(
        app.get("/api/v2/users?cursor=forged.cursor", Some(&owner.access))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn emails_are_unique_across_clinics_regardless_of_case() {
    let app = spawn().await;
    let first = app.register_clinic("First").await;
    let res = app
        .post(
            "/api/v2/auth/register-clinic",
            None,
            json!({
                "clinic": {"name": "Second", "timezone": "UTC", "currency": "EUR"},
                "owner": {"email": first.email.to_uppercase(), "password": STRONG_PASSWORD, "full_name": "Copy Cat"}
            }),
        )
        .await;
    expect_problem(res, StatusCode::CONFLICT).await;
    // Nothing of the failed registration was kept.
    let mut db = app.admin_db().await;
    let clinics: i64 = sqlx::query_scalar("SELECT count(*) FROM clinics")
        .fetch_one(&mut db)
        .await
        .expect("count");
    assert_eq!(clinics, 1);
}

#[tokio::test]
async fn sign_up_can_be_switched_off() {
    let app = spawn_with(|v| {
        v.insert("ALLOW_CLINIC_SIGNUP".into(), "false".into());
    })
    .await;
    let res = app
        .post(
            "/api/v2/auth/register-clinic",
            None,
            json!({"clinic": {"name": "N", "timezone": "UTC", "currency": "EUR"},
                   "owner": {"email": "a@b.example", "password": STRONG_PASSWORD, "full_name": "A"}}),
        )
        .await;
    expect_problem(res, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn wrong_email_and_wrong_password_look_the_same() {
    let app = spawn().await;
    let owner = app.register_clinic("Same").await;
    let wrong_pw = app
        .post(
            "/api/v2/auth/login",
            None,
            json!({"email": owner.email, "password": "not the password at all"}),
        )
        .await;
    let a = expect_problem(wrong_pw, StatusCode::UNAUTHORIZED).await;
    let unknown = app
        .post(
            "/api/v2/auth/login",
            None,
            json!({"email": "nobody@nowhere.example", "password": "not the password at all"}),
        )
        .await;
    let b = expect_problem(unknown, StatusCode::UNAUTHORIZED).await;
    assert_eq!(a["detail"], b["detail"]);
    assert_eq!(a["type"], b["type"]);
    // The unknown email went to the global security log, hashed.
    let mut db = app.admin_db().await;
    let (action, email_hash): (String, String) =
        sqlx::query_as("SELECT action, email_hash FROM security_events")
            .fetch_one(&mut db)
            .await
            .expect("security event");
    assert_eq!(action, "auth.login_unknown_email");
    assert!(!email_hash.contains('@'));
}

fn forge(secret: &str, alg: Algorithm, claims: Value, kid: Option<String>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid;
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

#[tokio::test]
async fn forged_and_misused_tokens_are_all_401() {
    let app = spawn().await;
    let owner = app.register_clinic("Forgery").await;
    let secret = app.vars["SECRET_KEY"].clone();
    let kid = Some(molar::auth::tokens::kid_of(secret.as_bytes()));
    let now = chrono::Utc::now().timestamp();
    let claims = |overrides: Value| {
        let mut c = json!({
            "iss": "molar", "aud": "molar-api", "sub": owner.user_id, "cid": owner.clinic_id,
            "role": "owner", "ver": 1, "iat": now, "nbf": now, "exp": now + 600,
            "jti": uuid::Uuid::now_v7(), "typ": "access"
        });
        molar::validate::merge_patch(&mut c, &overrides);
        c
    };
    // A correctly made token works, so the failures below are about what was changed.
    let good = forge(&secret, Algorithm::HS256, claims(json!({})), kid.clone());
    assert_eq!(
        app.get("/api/v2/auth/me", Some(&good)).await.status(),
        StatusCode::OK
    );

    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": kid})),
        b64(&claims(json!({})))
    );
    let wrong_key = forge(
        "another-secret-another-secret-0000",
        Algorithm::HS256,
        claims(json!({})),
        kid.clone(),
    );
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&claims(
            json!({"role": "owner", "cid": uuid::Uuid::now_v7()})
        )),
        parts[2]
    );
    let expired = forge(
        &secret,
        Algorithm::HS256,
        claims(json!({"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600})),
        kid.clone(),
    );
    let not_yet = forge(
        &secret,
        Algorithm::HS256,
        claims(json!({"nbf": now + 3600, "exp": now + 7200})),
        kid.clone(),
    );
    let wrong_aud = forge(
        &secret,
        Algorithm::HS256,
        claims(json!({"aud": "someone-else"})),
        kid.clone(),
    );
    let wrong_iss = forge(
        &secret,
        Algorithm::HS256,
        claims(json!({"iss": "evil"})),
        kid.clone(),
    );
    let hs512 = forge(&secret, Algorithm::HS512, claims(json!({})), kid.clone());
    let no_kid = forge(&secret, Algorithm::HS256, claims(json!({})), None);
    let no_exp = {
        let mut c = claims(json!({}));
        c.as_object_mut().expect("object").remove("exp");
        forge(&secret, Algorithm::HS256, c, kid.clone())
    };
    for (name, token) in [
        ("alg none", alg_none),
        ("wrong key", wrong_key),
        ("tampered payload", tampered),
        ("expired", expired),
        ("not yet valid", not_yet),
        ("wrong audience", wrong_aud),
        ("wrong issuer", wrong_iss),
        ("other algorithm", hs512),
        ("no kid", no_kid),
        ("no exp", no_exp),
        ("refresh token as access token", owner.refresh.clone()),
        ("garbage", "garbage".to_string()),
    ] {
        let res = app.get("/api/v2/auth/me", Some(&token)).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{name}");
        expect_problem(res, StatusCode::UNAUTHORIZED).await;
    }
    expect_problem(
        app.get("/api/v2/auth/me", None).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

async fn refresh(app: &TestApp, token: &str) -> reqwest::Response {
    app.post(
        "/api/v2/auth/refresh",
        None,
        json!({"refresh_token": token}),
    )
    .await
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_whole_family() {
    let app = spawn().await;
    let owner = app.register_clinic("Rotation").await;
    let first = refresh(&app, &owner.refresh).await;
    assert_eq!(first.status(), StatusCode::OK);
    let pair: Value = first.json().await.expect("json");
    let second_refresh = pair["refresh_token"].as_str().expect("refresh").to_owned();
    assert_ne!(second_refresh, owner.refresh);
    assert_eq!(
        app.get("/api/v2/auth/me", pair["access_token"].as_str())
            .await
            .status(),
        StatusCode::OK
    );
    // The old token is spent; presenting it again is treated as theft.
    expect_problem(
        refresh(&app, &owner.refresh).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // ...and the legitimate newer token of the same family is now dead too.
    expect_problem(
        refresh(&app, &second_refresh).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // A fresh sign-in starts a new family that works.
    let fresh = app.login(&owner.email, STRONG_PASSWORD).await;
    assert_eq!(
        refresh(&app, fresh["refresh_token"].as_str().expect("refresh"))
            .await
            .status(),
        StatusCode::OK
    );
    // A refresh token with a forged clinic or secret is simply invalid.
    let mut forged = owner.refresh.clone();
    forged.pop();
    forged.push(if owner.refresh.ends_with('A') {
        'B'
    } else {
        'A'
    });
    expect_problem(refresh(&app, &forged).await, StatusCode::UNAUTHORIZED).await;
    let mut db = app.admin_db().await;
    let reuse: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'auth.refresh_reuse' AND outcome = 'failure'",
    )
    .fetch_one(&mut db)
    .await
    .expect("count");
    assert_eq!(reuse, 1);
}

#[tokio::test]
async fn logout_revokes_the_family() {
    let app = spawn().await;
    let owner = app.register_clinic("Logout").await;
    let res = app
        .post(
            "/api/v2/auth/logout",
            None,
            json!({"refresh_token": owner.refresh}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    expect_problem(
        refresh(&app, &owner.refresh).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn changing_the_password_ends_every_session_at_once() {
    let app = spawn().await;
    let owner = app.register_clinic("Passwords").await;
    let other_session = app.login(&owner.email, STRONG_PASSWORD).await;
    let wrong = app
        .post(
            "/api/v2/auth/change-password",
            Some(&owner.access),
            json!({"current_password": "definitely not it", "new_password": "a brand new passphrase 7"}),
        )
        .await;
    let body = expect_problem(wrong, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "current_password");
    let weak = app
        .post(
            "/api/v2/auth/change-password",
            Some(&owner.access),
            json!({"current_password": STRONG_PASSWORD, "new_password": "1234567890123"}),
        )
        .await;
    expect_problem(weak, StatusCode::UNPROCESSABLE_ENTITY).await;
    let ok = app
        .post(
            "/api/v2/auth/change-password",
            Some(&owner.access),
            json!({"current_password": STRONG_PASSWORD, "new_password": "a brand new passphrase 7"}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    expect_problem(
        app.get("/api/v2/auth/me", Some(&owner.access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    expect_problem(
        refresh(&app, &owner.refresh).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    expect_problem(
        refresh(
            &app,
            other_session["refresh_token"].as_str().expect("refresh"),
        )
        .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    app.login(&owner.email, "a brand new passphrase 7").await;
}

#[tokio::test]
async fn deactivating_a_user_cuts_them_off_on_the_next_request() {
    let app = spawn().await;
    let owner = app.register_clinic("Deactivate").await;
    let dentist = app.staff(&owner.access, "dentist").await;
    assert_eq!(
        app.get("/api/v2/auth/me", Some(&dentist.access))
            .await
            .status(),
        StatusCode::OK
    );
    let res = app
        .patch(
            &format!("/api/v2/users/{}", dentist.user_id),
            Some(&owner.access),
            json!({"active": false}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    expect_problem(
        app.get("/api/v2/auth/me", Some(&dentist.access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    expect_problem(
        refresh(&app, &dentist.refresh).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let login = app
        .post(
            "/api/v2/auth/login",
            None,
            json!({"email": dentist.email, "password": STRONG_PASSWORD}),
        )
        .await;
    expect_problem(login, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn a_refused_session_leaves_the_connection_usable() {
    // One connection: the session check that refuses runs before BEGIN, so the next
    // request on the same connection is not inside a failed transaction.
    let app = spawn_with(|v| {
        v.insert("DB_POOL_SIZE".into(), "1".into());
    })
    .await;
    let owner = app.register_clinic("One connection").await;
    let dentist = app.staff(&owner.access, "dentist").await;
    let res = app
        .patch(
            &format!("/api/v2/users/{}", dentist.user_id),
            Some(&owner.access),
            json!({"active": false}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    for _ in 0..3 {
        expect_problem(
            app.get("/api/v2/patients", Some(&dentist.access)).await,
            StatusCode::UNAUTHORIZED,
        )
        .await;
        let res = app.get("/api/v2/patients", Some(&owner.access)).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_role_change_takes_effect_on_the_next_request() {
    let app = spawn().await;
    let owner = app.register_clinic("Roles").await;
    let admin = app.staff(&owner.access, "admin").await;
    assert_eq!(
        app.get("/api/v2/users", Some(&admin.access)).await.status(),
        StatusCode::OK
    );
    app.patch(
        &format!("/api/v2/users/{}", admin.user_id),
        Some(&owner.access),
        json!({"role": "receptionist"}),
    )
    .await;
    expect_problem(
        app.get("/api/v2/users", Some(&admin.access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let pair: Value = refresh(&app, &admin.refresh)
        .await
        .json()
        .await
        .expect("json");
    let demoted = pair["access_token"].as_str().expect("access");
    expect_problem(
        app.get("/api/v2/users", Some(demoted)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn the_last_active_owner_cannot_be_demoted_or_deactivated() {
    let app = spawn().await;
    let owner = app.register_clinic("Owners").await;
    let me = format!("/api/v2/users/{}", owner.user_id);
    expect_problem(
        app.patch(&me, Some(&owner.access), json!({"active": false}))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    expect_problem(
        app.patch(&me, Some(&owner.access), json!({"role": "admin"}))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    let second = app.staff(&owner.access, "owner").await;
    let res = app
        .patch(
            &format!("/api/v2/users/{}", second.user_id),
            Some(&owner.access),
            json!({"role": "dentist"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["role"], "dentist");
}

#[tokio::test]
async fn nobody_raises_their_own_role_or_grants_above_it() {
    let app = spawn().await;
    let owner = app.register_clinic("Escalation").await;
    let admin = app.staff(&owner.access, "admin").await;
    let reception = app.staff(&owner.access, "receptionist").await;
    expect_problem(
        app.patch(
            &format!("/api/v2/users/{}", admin.user_id),
            Some(&admin.access),
            json!({"role": "owner"}),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    expect_problem(
        app.patch(
            &format!("/api/v2/users/{}", reception.user_id),
            Some(&reception.access),
            json!({"role": "admin"}),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    let res = app
        .post(
            "/api/v2/users",
            Some(&admin.access),
            json!({"email": "boss@esc.example", "password": STRONG_PASSWORD, "full_name": "New Boss", "role": "owner"}),
        )
        .await;
    expect_problem(res, StatusCode::FORBIDDEN).await;
    // An admin cannot deactivate an owner either.
    expect_problem(
        app.patch(
            &format!("/api/v2/users/{}", owner.user_id),
            Some(&admin.access),
            json!({"active": false}),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    // Nothing about a user can be cleared with null.
    let problem = expect_problem(
        app.patch(
            &format!("/api/v2/users/{}", reception.user_id),
            Some(&owner.access),
            json!({"full_name": null}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "full_name");
    // But anyone may fix their own name.
    let res = app
        .patch(
            &format!("/api/v2/users/{}", reception.user_id),
            Some(&reception.access),
            json!({"full_name": "Rae Ception"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn each_role_meets_its_permission_boundaries() {
    let app = spawn().await;
    let owner = app.register_clinic("Matrix").await;
    let roles = [
        "admin",
        "dentist",
        "hygienist",
        "assistant",
        "receptionist",
        "billing",
    ];
    let mut tokens = vec![("owner", owner.access.clone())];
    for role in roles {
        tokens.push((role, app.staff(&owner.access, role).await.access));
    }
    for (role, token) in &tokens {
        let manager = matches!(*role, "owner" | "admin");
        let expect = |ok: bool| {
            if ok {
                StatusCode::OK
            } else {
                StatusCode::FORBIDDEN
            }
        };
        assert_eq!(
            app.get("/api/v2/users", Some(token)).await.status(),
            expect(manager),
            "{role} lists users"
        );
        assert_eq!(
            app.get("/api/v2/audit-events", Some(token)).await.status(),
            expect(manager),
            "{role} reads audit"
        );
        assert_eq!(
            app.get("/api/v2/clinic", Some(token)).await.status(),
            StatusCode::OK,
            "{role} reads clinic"
        );
        assert_eq!(
            app.patch(
                "/api/v2/clinic",
                Some(token),
                json!({"phone": "+49 30 1234567"})
            )
            .await
            .status(),
            expect(manager),
            "{role} edits clinic"
        );
        let create = app
            .post(
                "/api/v2/users",
                Some(token),
                json!({"email": format!("x-{}@m.example", uuid::Uuid::new_v4().simple()), "password": STRONG_PASSWORD, "full_name": "X", "role": "billing"}),
            )
            .await;
        assert_eq!(
            create.status(),
            if manager {
                StatusCode::CREATED
            } else {
                StatusCode::FORBIDDEN
            },
            "{role} creates users"
        );
    }
    // Denials are audited as failures.
    let mut db = app.admin_db().await;
    let denied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE outcome = 'failure' AND action = 'user.create'",
    )
    .fetch_one(&mut db)
    .await
    .expect("count");
    assert_eq!(denied, roles.len() as i64 - 1);
}

#[tokio::test]
async fn another_clinics_ids_are_404_on_every_route() {
    let app = spawn().await;
    let alpha = app.register_clinic("Alpha").await;
    let beta = app.register_clinic("Beta").await;
    let beta_user = format!("/api/v2/users/{}", beta.user_id);
    expect_problem(
        app.get(&beta_user, Some(&alpha.access)).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_problem(
        app.patch(
            &beta_user,
            Some(&alpha.access),
            json!({"full_name": "Pwned"}),
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let list: Value = app
        .get("/api/v2/users", Some(&alpha.access))
        .await
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|u| u["id"].as_str())
        .collect();
    assert_eq!(ids, vec![alpha.user_id.as_str()]);
    let events: Value = app
        .get("/api/v2/audit-events", Some(&alpha.access))
        .await
        .json()
        .await
        .expect("json");
    assert!(events["items"]
        .as_array()
        .expect("items")
        .iter()
        .all(|e| e["user_id"] != json!(beta.user_id)));
    let clinic: Value = app
        .get("/api/v2/clinic", Some(&alpha.access))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(clinic["id"], json!(alpha.clinic_id));
}

#[tokio::test]
async fn login_is_rate_limited_per_account_with_headers() {
    let app = spawn_with(|v| {
        v.insert("LOGIN_RATE_LIMIT_PER_MINUTE".into(), "3".into());
    })
    .await;
    let owner = app.register_clinic("Limits").await;
    for i in 0..3 {
        let res = app
            .post(
                "/api/v2/auth/login",
                None,
                json!({"email": owner.email, "password": "wrong wrong wrong"}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let res = app
        .post(
            "/api/v2/auth/login",
            None,
            json!({"email": owner.email, "password": STRONG_PASSWORD}),
        )
        .await;
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry));
    let policy = res.headers()["ratelimit-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(policy.contains("\"login-account\";q=3;w=60"), "{policy}");
    assert!(res.headers()["ratelimit"]
        .to_str()
        .expect("ascii")
        .contains(";r=0;"));
    expect_problem(res, StatusCode::TOO_MANY_REQUESTS).await;
    // Another account is not affected.
    let other = app.register_clinic("Other").await;
    app.login(&other.email, STRONG_PASSWORD).await;
}

#[tokio::test]
async fn a_login_limit_holds_across_two_instances_sharing_redis() {
    let a = spawn_with(|v| {
        v.insert("LOGIN_RATE_LIMIT_PER_MINUTE".into(), "4".into());
    })
    .await;
    let b = spawn_on(a.db_name.clone(), a.vars.clone()).await;
    let owner = a.register_clinic("Shared").await;
    let attempt = |app: &TestApp| {
        let email = owner.email.clone();
        let url = app.url("/api/v2/auth/login");
        let client = app.client.clone();
        async move {
            client
                .post(url)
                .json(&json!({"email": email, "password": "wrong wrong wrong"}))
                .send()
                .await
                .expect("send")
                .status()
        }
    };
    for app in [&a, &b, &a, &b] {
        assert_eq!(attempt(app).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(attempt(&b).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(attempt(&a).await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn while_redis_is_down_login_falls_back_to_a_local_limit() {
    let app = spawn_with(|v| {
        v.insert("REDIS_URL".into(), "redis://127.0.0.1:1".into());
        v.insert("REDIS_TIMEOUT_MS".into(), "100".into());
        v.insert("LOGIN_RATE_LIMIT_PER_MINUTE".into(), "2".into());
    })
    .await;
    let owner = app.register_clinic("NoRedis").await;
    let login = || {
        app.post(
            "/api/v2/auth/login",
            None,
            json!({"email": owner.email, "password": STRONG_PASSWORD}),
        )
    };
    assert_eq!(login().await.status(), StatusCode::OK);
    assert_eq!(login().await.status(), StatusCode::OK);
    expect_problem(login().await, StatusCode::TOO_MANY_REQUESTS).await;
}

#[tokio::test]
async fn sign_ins_and_staff_changes_are_in_the_audit_trail_with_request_ids() {
    let app = spawn().await;
    let owner = app.register_clinic("Audited").await;
    let res = app
        .client
        .post(app.url("/api/v2/auth/login"))
        .header("x-request-id", "login-req-1")
        .json(&json!({"email": owner.email, "password": STRONG_PASSWORD}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), StatusCode::OK);
    app.post(
        "/api/v2/auth/login",
        None,
        json!({"email": owner.email, "password": "bad bad bad bad"}),
    )
    .await;
    let dentist = app.staff(&owner.access, "dentist").await;
    app.patch(
        &format!("/api/v2/users/{}", dentist.user_id),
        Some(&owner.access),
        json!({"active": false}),
    )
    .await;
    let page: Value = app
        .get("/api/v2/audit-events?limit=200", Some(&owner.access))
        .await
        .json()
        .await
        .expect("json");
    let events = page["items"].as_array().expect("items");
    let has = |action: &str, outcome: &str| {
        events
            .iter()
            .any(|e| e["action"] == action && e["outcome"] == outcome)
    };
    assert!(has("clinic.create", "success"));
    assert!(has("auth.login", "success"));
    assert!(has("auth.login", "failure"));
    assert!(has("user.create", "success"));
    assert!(has("user.deactivate", "success"));
    let tagged = events
        .iter()
        .find(|e| e["request_id"] == "login-req-1")
        .expect("the login carries its request id");
    assert_eq!(tagged["action"], "auth.login");
    assert_eq!(tagged["ip"], "127.0.0.1");
    // Filters and pagination.
    let logins: Value = app
        .get(
            "/api/v2/audit-events?action=auth.login&limit=1",
            Some(&owner.access),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(logins["items"].as_array().expect("items").len(), 1);
    let next = logins["next_cursor"].as_str().expect("more pages");
    let page2: Value = app
        .get(
            &format!("/api/v2/audit-events?action=auth.login&limit=1&cursor={next}"),
            Some(&owner.access),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_ne!(page2["items"][0]["id"], logins["items"][0]["id"]);
}

#[tokio::test]
async fn the_server_role_cannot_change_or_delete_audit_events() {
    let app = spawn().await;
    let owner = app.register_clinic("Append only").await;
    let mut db = app.server_db().await;
    for sql in [
        "UPDATE audit_events SET action = 'x.y'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "UPDATE audit_seals SET event_count = 0",
        "DELETE FROM audit_seals",
    ] {
        let mut tx = sqlx::Connection::begin(&mut db).await.expect("begin");
        sqlx::query("SELECT set_config('app.clinic_id', $1, true)")
            .bind(&owner.clinic_id)
            .execute(&mut *tx)
            .await
            .expect("scope");
        let err = sqlx::query(sql).execute(&mut *tx).await.expect_err(sql);
        let code = err
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.to_string());
        assert_eq!(code.as_deref(), Some("42501"), "{sql}: {err}");
        tx.rollback().await.expect("rollback");
    }
}

#[tokio::test]
async fn the_hash_chain_detects_an_edit_made_by_the_owner_role() {
    let app = spawn().await;
    let owner = app.register_clinic("Chained").await;
    app.login(&owner.email, STRONG_PASSWORD).await;
    let config = molar::config::Config::from_map(app.vars.clone()).expect("config");
    let db = molar::db::Db::connect_lazy(&config, &server_url(&app.db_name), None).expect("db");
    assert_eq!(
        molar::audit::seal(&db, std::time::Duration::ZERO)
            .await
            .expect("seal")
            .seals,
        1
    );
    assert!(molar::audit::verify(&db).await.expect("verify").is_empty());
    // Sealing again with nothing new adds nothing; new events extend the chain.
    app.login(&owner.email, STRONG_PASSWORD).await;
    assert_eq!(
        molar::audit::seal(&db, std::time::Duration::ZERO)
            .await
            .expect("seal")
            .seals,
        1
    );
    assert!(molar::audit::verify(&db).await.expect("verify").is_empty());

    // Someone with the owning role's credentials rewrites history.
    let mut owner_db = app.owner_db_in(&owner.clinic_id).await;
    let changed = sqlx::query(
        "UPDATE audit_events SET outcome = 'failure' WHERE action = 'auth.login' AND outcome = 'success' \
         AND at = (SELECT min(at) FROM audit_events WHERE action = 'auth.login')",
    )
    .execute(&mut owner_db)
    .await
    .expect("owner edits an event");
    assert_eq!(changed.rows_affected(), 1);

    let broken = molar::audit::verify(&db).await.expect("verify");
    assert_eq!(broken.len(), 1);
    assert_eq!(broken[0].clinic_id.to_string(), owner.clinic_id);
    assert_eq!(broken[0].seq, 1, "the first sealed range is the one edited");
    // The command-line check reports it and fails.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_molar"))
        .args(["audit", "verify"])
        .env_clear()
        .envs(app.vars.iter())
        .output()
        .await
        .expect("run molar audit verify");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("seal 1"));
}

#[tokio::test]
async fn clinic_updates_honour_if_match_and_merge_settings() {
    let app = spawn().await;
    let owner = app.register_clinic("Settings").await;
    let res = app.get("/api/v2/clinic", Some(&owner.access)).await;
    let etag = res.headers()["etag"].to_str().expect("ascii").to_owned();
    assert_eq!(etag, "\"1\"");
    let stale = app
        .client
        .patch(app.url("/api/v2/clinic"))
        .bearer_auth(&owner.access)
        .header("if-match", "\"7\"")
        .json(&json!({"name": "Renamed"}))
        .send()
        .await
        .expect("send");
    expect_problem(stale, StatusCode::PRECONDITION_FAILED).await;
    let ok = app
        .client
        .patch(app.url("/api/v2/clinic"))
        .bearer_auth(&owner.access)
        .header("if-match", &etag)
        .json(&json!({"name": "Renamed", "settings": {"appointment_default_minutes": 30, "reminders": {"sms": true}}}))
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["etag"], "\"2\"");
    let body: Value = ok.json().await.expect("json");
    assert_eq!(body["name"], "Renamed");
    let res = app
        .patch(
            "/api/v2/clinic",
            Some(&owner.access),
            json!({"settings": {"reminders": null}, "phone": null, "timezone": "Asia/Tokyo"}),
        )
        .await;
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["settings"], json!({"appointment_default_minutes": 30}));
    assert_eq!(body["timezone"], "Asia/Tokyo");
    let bad = app
        .patch(
            "/api/v2/clinic",
            Some(&owner.access),
            json!({"timezone": "Nowhere/Land", "currency": "EURO"}),
        )
        .await;
    let body = expect_problem(bad, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"].as_array().expect("errors").len(), 2);
}

#[tokio::test]
async fn operators_create_clinics_from_the_command_line() {
    let app = spawn_with(|v| {
        v.insert("ALLOW_CLINIC_SIGNUP".into(), "false".into());
    })
    .await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_molar"))
        .args([
            "create-clinic",
            "--name",
            "Cli Dental",
            "--timezone",
            "Europe/Paris",
            "--currency",
            "EUR",
            "--owner-email",
            "cli-owner@cli.example",
            "--owner-name",
            "Cli Owner",
        ])
        .env_clear()
        .envs(app.vars.iter())
        .env("MOLAR_OWNER_PASSWORD", STRONG_PASSWORD)
        .output()
        .await
        .expect("run create-clinic");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tokens = app.login("cli-owner@cli.example", STRONG_PASSWORD).await;
    let me: Value = app
        .get("/api/v2/auth/me", tokens["access_token"].as_str())
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["clinic"]["name"], "Cli Dental");
}

#[tokio::test]
async fn pruning_old_audit_months_keeps_the_chain_verifiable() {
    let app = spawn().await;
    let owner = app.register_clinic("Retention").await;
    // Events from long ago (they land in the default partition) and from now.
    let mut admin = app.admin_db().await;
    sqlx::query(
        "INSERT INTO audit_events (clinic_id, id, at, action, resource_type, outcome) \
         SELECT $1::uuid, gen_random_uuid(), TIMESTAMPTZ '2019-03-01' + g * interval '1 day', 'auth.login', 'user', 'success' \
         FROM generate_series(1, 5) g",
    )
    .bind(&owner.clinic_id)
    .execute(&mut admin)
    .await
    .expect("old events");
    let config = molar::config::Config::from_map(app.vars.clone()).expect("config");
    let db = molar::db::Db::connect_lazy(&config, &server_url(&app.db_name), None).expect("db");
    molar::audit::seal(&db, std::time::Duration::ZERO)
        .await
        .expect("seal");
    assert!(molar::audit::verify(&db).await.expect("verify").is_empty());

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_molar"))
        .args(["audit", "prune"])
        .env_clear()
        .envs(app.vars.iter())
        .output()
        .await
        .expect("run molar audit prune");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let old: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE at < '2020-01-01'")
        .fetch_one(&mut admin)
        .await
        .expect("count");
    assert_eq!(old, 0, "events past the six-year retention are gone");
    let recent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE at > now() - interval '1 day'")
            .fetch_one(&mut admin)
            .await
            .expect("count");
    assert!(recent > 0, "recent events stay");
    assert!(
        molar::audit::verify(&db).await.expect("verify").is_empty(),
        "the chain still verifies"
    );
    // The server's role cannot prune.
    let mut server = app.server_db().await;
    let err = sqlx::query("SELECT audit_prune(now())")
        .execute(&mut server)
        .await
        .expect_err("owner only");
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("42501")
    );
}

#[tokio::test]
async fn nul_characters_in_sign_in_the_audit_filter_and_clinic_settings_are_refused() {
    let app = spawn().await;
    let owner = app.register_clinic("Nul settings").await;
    let body = expect_problem(
        app.post(
            "/api/v2/auth/login",
            None,
            json!({"email": format!("{}\u{0}", owner.email), "password": STRONG_PASSWORD}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "email");
    for query in ["action=auth.login%00", "action=%00", "act%00ion=x"] {
        let body = expect_problem(
            app.get(
                &format!("/api/v2/audit-events?{query}"),
                Some(&owner.access),
            )
            .await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(
            body["detail"].as_str().expect("detail").contains("U+0000"),
            "{body}"
        );
    }
    for (patch, field) in [
        (
            json!({"settings": {"greeting": "hi\u{0}"}}),
            "settings.greeting",
        ),
        (
            json!({"settings": {"nested": {"list": ["ok", "\u{0}"]}}}),
            "settings.nested.list[1]",
        ),
        (
            json!({"address": {"line1": "Main St\u{0}"}}),
            "address.line1",
        ),
        (json!({"name": "Clinic\u{0}"}), "name"),
    ] {
        let body = expect_problem(
            app.patch("/api/v2/clinic", Some(&owner.access), patch)
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(body["errors"][0]["field"], field, "{body}");
    }
    // A NUL in a settings key, too.
    let body = expect_problem(
        app.patch(
            "/api/v2/clinic",
            Some(&owner.access),
            json!({"settings": {"k\u{0}ey": true}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(
        body["errors"][0]["field"]
            .as_str()
            .expect("field")
            .starts_with("settings."),
        "{body}"
    );
    let clinic: Value = app
        .get("/api/v2/clinic", Some(&owner.access))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(clinic["settings"], json!({}));
    assert_eq!(clinic["version"], 1);
}

#[tokio::test]
async fn login_spellings_that_reach_one_account_share_its_limit() {
    let app = spawn_with(|v| {
        v.insert("LOGIN_RATE_LIMIT_PER_MINUTE".into(), "3".into());
    })
    .await;
    let email = format!("iris-{}@example.test", uuid::Uuid::new_v4().simple());
    let res = app
        .post(
            "/api/v2/auth/register-clinic",
            None,
            json!({
                "clinic": {"name": "Spellings", "timezone": "Europe/Berlin", "currency": "EUR"},
                "owner": {"email": email, "password": STRONG_PASSWORD, "full_name": "Iris Owner"}
            }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    // U+0130 (İ): PostgreSQL's lower() folds it to `i`, which reaches this account, while
    // Rust's to_lowercase() makes it `i` + U+0307, a different string.
    let variant = email.replacen('i', "\u{130}", 1);
    assert_ne!(variant.to_lowercase(), email);
    let mut db = app.admin_db().await;
    let same: bool = sqlx::query_scalar("SELECT lower($1) = $2")
        .bind(&variant)
        .bind(&email)
        .fetch_one(&mut db)
        .await
        .expect("lower");
    assert!(same, "this database's lower() does not fold U+0130 to i");
    for i in 0..3 {
        let res = app
            .post(
                "/api/v2/auth/login",
                None,
                json!({"email": email, "password": "wrong wrong wrong"}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let res = app
        .post(
            "/api/v2/auth/login",
            None,
            json!({"email": variant, "password": STRONG_PASSWORD}),
        )
        .await;
    expect_problem(res, StatusCode::TOO_MANY_REQUESTS).await;
    // An address that belongs to no account is limited the same way, so the shared
    // limit does not reveal which addresses exist.
    let unknown = format!("ivan-{}@example.test", uuid::Uuid::new_v4().simple());
    for _ in 0..3 {
        let res = app
            .post(
                "/api/v2/auth/login",
                None,
                json!({"email": unknown, "password": "wrong wrong wrong"}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    let res = app
        .post(
            "/api/v2/auth/login",
            None,
            json!({"email": unknown.replacen('i', "\u{130}", 1), "password": "wrong wrong wrong"}),
        )
        .await;
    expect_problem(res, StatusCode::TOO_MANY_REQUESTS).await;
}

#[tokio::test]
async fn logging_out_ends_that_sign_ins_access_token_at_once() {
    let app = spawn().await;
    let owner = app.register_clinic("Sign out").await;
    let other = app.login(&owner.email, STRONG_PASSWORD).await;
    let other_access = other["access_token"].as_str().expect("access");
    assert_eq!(
        app.get("/api/v2/auth/me", Some(&owner.access))
            .await
            .status(),
        StatusCode::OK
    );
    let res = app
        .post(
            "/api/v2/auth/logout",
            None,
            json!({"refresh_token": owner.refresh}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    expect_problem(
        app.get("/api/v2/auth/me", Some(&owner.access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // The user's other sign-in is untouched, and so are the tokens it refreshes to.
    assert_eq!(
        app.get("/api/v2/auth/me", Some(other_access))
            .await
            .status(),
        StatusCode::OK
    );
    let res = refresh(&app, other["refresh_token"].as_str().expect("refresh")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let pair: Value = res.json().await.expect("json");
    let refreshed = pair["access_token"].as_str().expect("access").to_owned();
    assert_eq!(
        app.get("/api/v2/auth/me", Some(&refreshed)).await.status(),
        StatusCode::OK
    );
    // An access token from a refresh ends with its sign-in too.
    let res = app
        .post(
            "/api/v2/auth/logout",
            None,
            json!({"refresh_token": pair["refresh_token"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for token in [other_access, refreshed.as_str()] {
        expect_problem(
            app.get("/api/v2/auth/me", Some(token)).await,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }
    // A token from before tokens named their sign-in (no `sid`) is checked as it was
    // then, until it expires; one naming a sign-in that does not exist is refused.
    let secret = app.vars["SECRET_KEY"].clone();
    let kid = Some(molar::auth::tokens::kid_of(secret.as_bytes()));
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": "molar", "aud": "molar-api", "sub": owner.user_id, "cid": owner.clinic_id,
        "role": "owner", "ver": 1, "iat": now, "nbf": now, "exp": now + 600,
        "jti": uuid::Uuid::now_v7(), "typ": "access"
    });
    let legacy = forge(&secret, Algorithm::HS256, claims.clone(), kid.clone());
    assert_eq!(
        app.get("/api/v2/auth/me", Some(&legacy)).await.status(),
        StatusCode::OK
    );
    let mut unknown = claims;
    unknown["sid"] = json!(uuid::Uuid::now_v7());
    let unknown = forge(&secret, Algorithm::HS256, unknown, kid);
    expect_problem(
        app.get("/api/v2/auth/me", Some(&unknown)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn password_changes_hold_no_connection_while_hashing() {
    // One connection, a two-second wait for it, and more hashes allowed at once than
    // there are connections: if a change held the connection while it verified and hashed
    // (two argon2id runs, ~0.1 s), the forty requests would queue for seconds and time out
    // (503); done right, each holds it for two short statements.
    let app = spawn_with(|v| {
        v.insert("DB_POOL_SIZE".into(), "1".into());
        v.insert("DB_POOL_TIMEOUT".into(), "2".into());
        v.insert("PASSWORD_HASH_CONCURRENCY".into(), "4".into());
        v.insert("LOGIN_IP_RATE_LIMIT_PER_MINUTE".into(), "1000".into());
        v.insert("RATE_LIMIT_ANON_PER_MINUTE".into(), "1000".into());
    })
    .await;
    let owner = app.register_clinic("Busy").await;
    let mut staff = Vec::new();
    for _ in 0..40 {
        staff.push(app.staff(&owner.access, "dentist").await);
    }
    // The new accounts' verification messages go out first: the one connection is then
    // the password changes' alone.
    let mut db = app.admin_db().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let owed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE delivered_at IS NULL AND failed_at IS NULL",
        )
        .fetch_one(&mut db)
        .await
        .expect("outbox");
        if owed == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{owed} messages still owed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let changes = staff.iter().map(|s| {
        app.post(
            "/api/v2/auth/change-password",
            Some(&s.access),
            json!({"current_password": STRONG_PASSWORD, "new_password": "a brand new passphrase 7"}),
        )
    });
    let all = async {
        let me = app.get("/api/v2/auth/me", Some(&owner.access));
        let (changes, me) = tokio::join!(futures_util::future::join_all(changes), me);
        (
            changes.iter().map(|r| r.status()).collect::<Vec<_>>(),
            me.status(),
        )
    };
    let (changed, me) = tokio::time::timeout(std::time::Duration::from_secs(120), all)
        .await
        .expect("every request is answered");
    assert_eq!(me, StatusCode::OK);
    assert!(
        changed.iter().all(|s| *s == StatusCode::NO_CONTENT),
        "{changed:?}"
    );
    for s in &staff {
        app.login(&s.email, "a brand new passphrase 7").await;
    }
}

#[tokio::test]
async fn a_password_changed_while_the_new_one_is_hashed_is_a_conflict() {
    let app = spawn().await;
    let owner = app.register_clinic("Race").await;
    // Another writer changes the stored hash (without committing yet) after the request
    // has read it: the request's write must not overwrite that change.
    let mut other = app.admin_db().await;
    sqlx::raw_sql("BEGIN")
        .execute(&mut other)
        .await
        .expect("begin");
    sqlx::query("UPDATE users SET password_hash = 'changed elsewhere' WHERE id = $1::uuid")
        .bind(&owner.user_id)
        .execute(&mut other)
        .await
        .expect("update");
    let change = app.post(
        "/api/v2/auth/change-password",
        Some(&owner.access),
        json!({"current_password": STRONG_PASSWORD, "new_password": "a brand new passphrase 7"}),
    );
    let commit_once_blocked = async {
        let mut watcher = app.admin_db().await;
        for _ in 0..300 {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND query LIKE 'UPDATE users SET password_hash%'",
            )
            .fetch_one(&mut watcher)
            .await
            .expect("pg_stat_activity");
            if waiting > 0 {
                sqlx::raw_sql("COMMIT")
                    .execute(&mut other)
                    .await
                    .expect("commit");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the password change never reached its write");
    };
    let (res, ()) = tokio::join!(change, commit_once_blocked);
    expect_problem(res, StatusCode::CONFLICT).await;
    let mut db = app.admin_db().await;
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1::uuid")
        .bind(&owner.user_id)
        .fetch_one(&mut db)
        .await
        .expect("hash");
    assert_eq!(hash, "changed elsewhere");
}

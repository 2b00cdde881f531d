//! The server's ground floor: probes, problem+json for every kind of bad request,
//! request ids, security headers, CORS, metrics, OpenAPI and graceful shutdown.

use std::time::Duration;

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn health_answers_with_version_and_touches_nothing() {
    let app = spawn_with(|v| {
        // A database that does not exist: liveness must not care.
        v.insert(
            "DATABASE_URL".into(),
            "postgres://nobody@127.0.0.1:1/none".into(),
        );
    })
    .await;
    let res = app.get("/api/v2/health", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.expect("json");
    assert_eq!(
        body,
        json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})
    );
    let ready = app.get("/api/v2/ready", None).await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn startup_check_reports_every_dependency_ok() {
    let app = spawn().await;
    let res = app.get("/api/v2/startup-check", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["status"], "ok", "{body}");
    for check in [
        "database",
        "migrations",
        "database_role",
        "redis",
        "storage",
        "config",
    ] {
        assert_eq!(body["checks"][check]["status"], "ok", "{check}: {body}");
    }
    assert!(body["checks"]["database"]["latency_ms"].is_number());
    assert_eq!(
        body["checks"]["database_role"]["details"]["role"],
        SERVER_ROLE
    );
}

#[tokio::test]
async fn startup_check_fails_when_the_server_role_bypasses_row_level_security() {
    let app = spawn_with(|v| {
        // The administrator is a superuser: exactly what the role check must refuse.
        let db = v["DATABASE_URL"]
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        v.insert("DATABASE_URL".into(), url_for(&db, None));
    })
    .await;
    let res = app.get("/api/v2/startup-check", None).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["status"], "fail");
    assert_eq!(body["checks"]["database_role"]["status"], "fail");
    let reason = body["checks"]["database_role"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("superuser"), "{reason}");
}

#[tokio::test]
async fn production_refuses_to_start_with_a_superuser_role() {
    let db = fresh_database().await;
    let mut vars = base_vars(&db);
    vars.insert("ENVIRONMENT".into(), "production".into());
    vars.insert("DATABASE_URL".into(), url_for(&db, None));
    let config = molar::config::Config::from_map(vars).expect("valid production config");
    let err = match molar::Server::prepare(config).await {
        Ok(_) => panic!("a superuser role must not be accepted in production"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("superuser"), "{err}");
    assert!(
        !err.contains("postgres:postgres"),
        "no credentials in the message: {err}"
    );
}

#[tokio::test]
async fn startup_check_is_degraded_not_failed_when_optional_redis_is_down() {
    let app = spawn_with(|v| {
        v.insert("REDIS_URL".into(), "redis://127.0.0.1:1".into());
        v.insert("REDIS_TIMEOUT_MS".into(), "200".into());
    })
    .await;
    let res = app.get("/api/v2/startup-check", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["checks"]["redis"]["status"], "fail");
    assert_eq!(
        app.get("/api/v2/ready", None).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn required_redis_that_is_down_fails_readiness_and_the_startup_check() {
    let app = spawn_with(|v| {
        v.insert("REDIS_URL".into(), "redis://127.0.0.1:1".into());
        v.insert("REQUIRE_REDIS".into(), "true".into());
        v.insert("REDIS_TIMEOUT_MS".into(), "200".into());
    })
    .await;
    assert_eq!(
        app.get("/api/v2/startup-check", None).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        app.get("/api/v2/ready", None).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn unknown_routes_are_problem_404_with_the_request_id() {
    let app = spawn().await;
    let res = app
        .client
        .get(app.url("/api/v2/no-such-thing"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .expect("send");
    assert_eq!(res.headers()["x-request-id"], "trace-abc-123");
    let body = expect_problem(res, StatusCode::NOT_FOUND).await;
    assert_eq!(body["request_id"], "trace-abc-123");
}

#[tokio::test]
async fn a_hostile_request_id_is_replaced() {
    let app = spawn().await;
    let res = app
        .client
        .get(app.url("/api/v2/health"))
        .header("x-request-id", "<script>alert(1)</script>")
        .send()
        .await
        .expect("send");
    let id = res.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(!id.contains('<'));
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "a generated id is a UUID: {id}"
    );
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let app = spawn().await;
    let res = app.post("/api/v2/health", None, json!({})).await;
    let allow = res.headers().get("allow").cloned();
    expect_problem(res, StatusCode::METHOD_NOT_ALLOWED).await;
    let allow = allow.expect("Allow header present");
    assert!(allow.to_str().unwrap_or_default().contains("GET"));
}

#[tokio::test]
async fn api_responses_carry_security_headers() {
    let app = spawn_with(|v| {
        v.insert("HSTS_MAX_AGE".into(), "31536000".into());
    })
    .await;
    let res = app.get("/api/v2/health", None).await;
    let h = res.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(
        h["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    assert!(h.contains_key("x-request-id"));
}

#[tokio::test]
async fn cors_admits_exactly_the_configured_origins() {
    let app = spawn_with(|v| {
        v.insert(
            "ALLOWED_ORIGINS".into(),
            "https://front.example.test".into(),
        );
    })
    .await;
    let allowed = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/v2/health"))
        .header("origin", "https://front.example.test")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("send");
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://front.example.test"
    );
    let other = app
        .client
        .get(app.url("/api/v2/health"))
        .header("origin", "https://evil.example.test")
        .send()
        .await
        .expect("send");
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn responses_are_compressed_when_asked() {
    let app = spawn().await;
    let res = app
        .client
        .get(app.url("/api/v2/openapi.json"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("send");
    assert_eq!(res.headers()["content-encoding"], "gzip");
}

#[tokio::test]
async fn metrics_expose_request_counts_by_route() {
    let app = spawn().await;
    app.get("/api/v2/health", None).await;
    let res = app.get("/metrics", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.expect("text");
    assert!(text.contains("http_requests_total"), "{text}");
    assert!(text.contains("route=\"/api/v2/health\""), "{text}");
    assert!(text.contains("http_request_duration_seconds_bucket"));
    assert!(text.contains("db_pool_connections"));
    assert!(text.contains("molar_build_info"));
}

/// The recorder's upkeep runs on its own, without a scrape: it folds histogram samples into
/// their buckets (which a server nobody scrapes otherwise keeps, one per request) and, in
/// the same pass, reads the process's resident memory.
#[tokio::test]
async fn metrics_upkeep_runs_without_a_scrape() {
    let app = spawn().await;
    let resident = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = app.get("/metrics", None).await.text().await.expect("text");
        if let Some(bytes) = resident(&text) {
            assert!(bytes > 1e6, "resident memory {bytes} bytes");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no upkeep within 5 s:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn metrics_need_the_token_when_one_is_configured() {
    let app = spawn_with(|v| {
        v.insert(
            "METRICS_TOKEN".into(),
            "a-long-metrics-token-for-tests".into(),
        );
    })
    .await;
    expect_problem(app.get("/metrics", None).await, StatusCode::UNAUTHORIZED).await;
    expect_problem(
        app.get("/metrics", Some("wrong-token")).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let ok = app
        .get("/metrics", Some("a-long-metrics-token-for-tests"))
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn openapi_document_is_3_1_and_lists_the_probes() {
    let app = spawn().await;
    let res = app.get("/api/v2/openapi.json", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let doc: Value = res.json().await.expect("json");
    assert!(doc["openapi"]
        .as_str()
        .unwrap_or_default()
        .starts_with("3.1"));
    for path in ["/api/v2/health", "/api/v2/ready", "/api/v2/startup-check"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} documented");
    }
    assert!(doc["components"]["schemas"]["Problem"].is_object());
}

#[tokio::test]
async fn docs_page_and_its_assets_come_from_the_binary() {
    let app = spawn().await;
    let page = app.get("/api/v2/docs", None).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap_or_default()
        .contains("script-src 'self'"));
    let html = page.text().await.expect("text");
    assert!(html.contains("/api/v2/docs/swagger-ui-bundle.js"));
    assert!(
        !html.contains("https://"),
        "no asset is fetched from elsewhere"
    );
    let js = app.get("/api/v2/docs/swagger-ui-bundle.js", None).await;
    assert_eq!(js.status(), StatusCode::OK);
    assert!(js.bytes().await.expect("bytes").len() > 100_000);
}

#[tokio::test]
async fn sigterm_drains_readiness_first_then_stops_accepting() {
    let mut app = spawn_with(|v| {
        v.insert("SHUTDOWN_DRAIN_SECONDS".into(), "2".into());
    })
    .await;
    assert_eq!(
        app.get("/api/v2/ready", None).await.status(),
        StatusCode::OK
    );
    app.trigger_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Draining: still accepting, but not ready.
    let ready = app.get("/api/v2/ready", None).await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        app.get("/api/v2/health", None).await.status(),
        StatusCode::OK
    );
    app.wait_stopped().await.expect("clean exit");
    let fresh = reqwest::Client::new();
    assert!(
        fresh.get(app.url("/api/v2/health")).send().await.is_err(),
        "new connections are refused after the drain"
    );
}

#[tokio::test]
async fn healthcheck_command_exits_zero_only_when_health_answers() {
    let app = spawn().await;
    let bin = env!("CARGO_BIN_EXE_molar");
    let ok = tokio::process::Command::new(bin)
        .args(["healthcheck", "--url", &app.url("/api/v2/health")])
        .env("ENVIRONMENT", "test")
        .status()
        .await
        .expect("run healthcheck");
    assert!(ok.success());
    let down = tokio::process::Command::new(bin)
        .args(["healthcheck", "--url", "http://127.0.0.1:1/api/v2/health"])
        .env("ENVIRONMENT", "test")
        .status()
        .await
        .expect("run healthcheck");
    assert!(!down.success());
}

#[tokio::test]
async fn the_binary_refuses_a_weak_secret_in_production_without_printing_it() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_molar"))
        .arg("serve")
        .env_clear()
        .env("ENVIRONMENT", "production")
        .env("SECRET_KEY", "hunter2-short")
        .env("DATABASE_URL", "postgres://x@127.0.0.1:1/x")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .await
        .expect("run molar");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SECRET_KEY"), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "the secret is never printed: {stderr}"
    );
}

#[tokio::test]
async fn the_binary_refuses_wildcard_origins_and_missing_redis_in_production() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_molar"))
        .arg("serve")
        .env_clear()
        .env("ENVIRONMENT", "production")
        .env("SECRET_KEY", molar::random_hex(32))
        .env("DATABASE_URL", "postgres://x@127.0.0.1:1/x")
        .env("ALLOWED_ORIGINS", "*")
        .output()
        .await
        .expect("run molar");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ALLOWED_ORIGINS"), "{stderr}");
    assert!(stderr.contains("REDIS_URL"), "{stderr}");
}

#[tokio::test]
async fn metrics_move_to_their_own_port_when_one_is_configured() {
    let port = free_port();
    let app = spawn_with(|v| {
        v.insert("METRICS_PORT".into(), port.to_string());
        v.insert("HOST".into(), "127.0.0.1".into());
    })
    .await;
    expect_problem(app.get("/metrics", None).await, StatusCode::NOT_FOUND).await;
    let res = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("the metrics port answers");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.expect("text").contains("molar_build_info"));
}

#[tokio::test]
async fn in_production_startup_check_details_need_the_metrics_token() {
    let app = spawn_with(|v| {
        v.insert("ENVIRONMENT".into(), "production".into());
        v.insert(
            "METRICS_TOKEN".into(),
            "operators-metrics-token-0123".into(),
        );
    })
    .await;
    let anonymous: Value = app
        .get("/api/v2/startup-check", None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(anonymous["status"], "ok", "{anonymous}");
    assert!(
        anonymous["checks"]["database_role"]["details"].is_null(),
        "{anonymous}"
    );
    let operator: Value = app
        .get(
            "/api/v2/startup-check",
            Some("operators-metrics-token-0123"),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        operator["checks"]["database_role"]["details"]["role"],
        SERVER_ROLE
    );
}

#[tokio::test]
async fn a_database_error_is_logged_without_the_values_it_quotes() {
    let db = fresh_database().await;
    let mut conn = admin_connection(&db).await;
    let err = sqlx::query("SELECT $1::jsonb")
        .bind(r#"{"name": "Jane\u0000Doe"}"#)
        .fetch_one(&mut conn)
        .await
        .expect_err("PostgreSQL refuses \\u0000 in jsonb");
    // The driver's own rendering quotes the patient's data …
    assert!(format!("{err:?}").contains("Jane"), "{err:?}");
    // … what the server logs does not, but still names the SQLSTATE.
    let logged = molar::error::loggable(&err).to_string();
    assert!(logged.contains("22P05"), "{logged}");
    assert!(!logged.contains("Jane"), "{logged}");
    let err = sqlx::query("SELECT $1::uuid")
        .bind("Jane Doe")
        .fetch_one(&mut conn)
        .await
        .expect_err("not a uuid");
    assert!(err.to_string().contains("Jane"), "{err}");
    let logged = molar::error::loggable(&err).to_string();
    assert!(logged.contains("22P02"), "{logged}");
    assert!(!logged.contains("Jane"), "{logged}");
    sqlx::raw_sql("CREATE TEMP TABLE contacts (email text CONSTRAINT contacts_email UNIQUE)")
        .execute(&mut conn)
        .await
        .expect("temp table");
    let insert = "INSERT INTO contacts VALUES ('jane.doe@example.test')";
    sqlx::raw_sql(insert)
        .execute(&mut conn)
        .await
        .expect("first");
    let err = sqlx::raw_sql(insert)
        .execute(&mut conn)
        .await
        .expect_err("duplicate");
    assert!(format!("{err:?}").contains("jane.doe"), "{err:?}");
    let logged = molar::error::loggable(&err).to_string();
    assert!(
        logged.contains("23505") && logged.contains("contacts_email"),
        "{logged}"
    );
    assert!(!logged.contains("jane.doe"), "{logged}");
}

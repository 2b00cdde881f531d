//! Many instances behave as one: two real server processes sharing PostgreSQL and Redis
//! share rate limits, session revocation and cache invalidation; a Redis outage (of a
//! private Redis started here) degrades reads gracefully and limits come back with it.

use std::time::Duration;

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn get(client: &reqwest::Client, url: String, token: &str) -> reqwest::Response {
    tokio::time::timeout(
        Duration::from_secs(10),
        client.get(url).bearer_auth(token).send(),
    )
    .await
    .expect("answered within the bound")
    .expect("send")
}

#[tokio::test]
async fn a_rate_limit_holds_across_two_server_processes() {
    let db = fresh_database().await;
    let mut vars = base_vars(&db);
    vars.insert("RATE_LIMIT_PER_MINUTE".into(), "6".into());
    let a = ServerProcess::start(&vars).await;
    let b = ServerProcess::start(&vars).await;
    let client = reqwest::Client::new();
    let res = client
        .post(a.url("/api/v2/auth/register-clinic"))
        .json(&json!({"clinic": {"name": "Two", "timezone": "UTC", "currency": "EUR"},
                      "owner": {"email": "two@procs.example", "password": STRONG_PASSWORD, "full_name": "Two"}}))
        .send()
        .await
        .expect("send");
    let token = res.json::<Value>().await.expect("json")["tokens"]["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let mut statuses = Vec::new();
    for i in 0..8 {
        let server = if i % 2 == 0 { &a } else { &b };
        let res = get(&client, server.url("/api/v2/auth/me"), &token).await;
        if i == 0 {
            let policy = res.headers()["ratelimit-policy"]
                .to_str()
                .expect("ascii")
                .to_owned();
            assert!(policy.contains("\"user\";q=6;w=60"), "{policy}");
        }
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429]);
}

#[tokio::test]
async fn deactivation_and_clinic_changes_on_one_instance_show_on_the_other() {
    let db = fresh_database().await;
    let vars = base_vars(&db);
    let a = ServerProcess::start(&vars).await;
    let b = ServerProcess::start(&vars).await;
    let client = reqwest::Client::new();
    let reg: Value = client
        .post(a.url("/api/v2/auth/register-clinic"))
        .json(&json!({"clinic": {"name": "Cached Dental", "timezone": "UTC", "currency": "EUR"},
                      "owner": {"email": "cache@procs.example", "password": STRONG_PASSWORD, "full_name": "Owner"}}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let owner = reg["tokens"]["access_token"]
        .as_str()
        .expect("token")
        .to_owned();

    // B reads (and caches) the clinic twice; A renames it; B sees the new name at once.
    for _ in 0..2 {
        let c: Value = get(&client, b.url("/api/v2/clinic"), &owner)
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(c["name"], "Cached Dental");
    }
    let metrics = client
        .get(b.url("/metrics"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("cache_hits_total{kind=\"clinic\"} 1"),
        "{metrics}"
    );
    let res = client
        .patch(a.url("/api/v2/clinic"))
        .bearer_auth(&owner)
        .json(&json!({"name": "Renamed Dental"}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), StatusCode::OK);
    let c: Value = get(&client, b.url("/api/v2/clinic"), &owner)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(c["name"], "Renamed Dental");

    // A staff member created on A, deactivated on A: B refuses them on the next request.
    let email = "staff@procs.example";
    let user: Value = client
        .post(a.url("/api/v2/users"))
        .bearer_auth(&owner)
        .json(&json!({"email": email, "password": STRONG_PASSWORD, "full_name": "Staff", "role": "dentist"}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let providers: Value = get(&client, b.url("/api/v2/providers"), &owner)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        providers["items"].as_array().expect("items").len(),
        2,
        "the new provider is listed on B, after the owner who registered the clinic"
    );
    let tokens: Value = client
        .post(b.url("/api/v2/auth/login"))
        .json(&json!({"email": email, "password": STRONG_PASSWORD}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let staff = tokens["access_token"].as_str().expect("token").to_owned();
    assert_eq!(
        get(&client, b.url("/api/v2/auth/me"), &staff)
            .await
            .status(),
        StatusCode::OK
    );
    let res = client
        .patch(a.url(&format!(
            "/api/v2/users/{}",
            user["id"].as_str().expect("id")
        )))
        .bearer_auth(&owner)
        .json(&json!({"active": false}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        get(&client, b.url("/api/v2/auth/me"), &staff)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let providers: Value = get(&client, b.url("/api/v2/providers"), &owner)
        .await
        .json()
        .await
        .expect("json");
    let listed: Vec<&Value> = providers["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| &p["id"])
        .collect();
    assert!(
        !listed.contains(&&user["id"]),
        "the provider list was invalidated: {listed:?}"
    );
    assert_eq!(listed.len(), 1, "only the owner is left: {listed:?}");
}

/// A Redis of the test's own, on its own port.
struct PrivateRedis {
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    fn start(port: u16) -> PrivateRedis {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "private redis did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis { child: Some(child) }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn a_redis_outage_degrades_gracefully_and_limits_return_with_it() {
    let port = free_port();
    let mut redis = PrivateRedis::start(port);
    let db = fresh_database().await;
    let mut vars = base_vars(&db);
    vars.insert("REDIS_URL".into(), format!("redis://127.0.0.1:{port}"));
    vars.insert("REDIS_TIMEOUT_MS".into(), "200".into());
    vars.insert("RATE_LIMIT_PER_MINUTE".into(), "5".into());
    vars.insert("LOGIN_RATE_LIMIT_PER_MINUTE".into(), "3".into());
    let server = ServerProcess::start(&vars).await;
    let client = reqwest::Client::new();
    let reg: Value = client
        .post(server.url("/api/v2/auth/register-clinic"))
        .json(&json!({"clinic": {"name": "Outage", "timezone": "UTC", "currency": "EUR"},
                      "owner": {"email": "outage@redis.example", "password": STRONG_PASSWORD, "full_name": "O"}}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let token = reg["tokens"]["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(
        get(&client, server.url("/api/v2/clinic"), &token)
            .await
            .status(),
        StatusCode::OK
    );

    redis.stop();
    // Reads keep working past the general limit (it fails open), each within the bound.
    for _ in 0..8 {
        assert_eq!(
            get(&client, server.url("/api/v2/clinic"), &token)
                .await
                .status(),
            StatusCode::OK
        );
    }
    let ready = client
        .get(server.url("/api/v2/ready"))
        .send()
        .await
        .expect("send");
    assert_eq!(ready.status(), StatusCode::OK, "Redis is not required");
    // Sign-in falls back to a limit in the process: never unlimited.
    let mut login = Vec::new();
    for _ in 0..4 {
        let res = tokio::time::timeout(
            Duration::from_secs(10),
            client
                .post(server.url("/api/v2/auth/login"))
                .json(&json!({"email": "outage@redis.example", "password": STRONG_PASSWORD}))
                .send(),
        )
        .await
        .expect("bounded")
        .expect("send");
        login.push(res.status().as_u16());
    }
    assert_eq!(login, [200, 200, 200, 429]);
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("redis_errors_total"), "{metrics}");

    // Redis comes back on the same port: the shared limit applies again, no restart.
    let _redis = PrivateRedis::start(port);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(
            get(&client, server.url("/api/v2/clinic"), &token)
                .await
                .status()
                .as_u16(),
        );
    }
    assert!(
        statuses.contains(&429),
        "limits apply again once Redis is back: {statuses:?}"
    );
}

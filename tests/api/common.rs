//! Test harness: every test gets its own database cloned from a migrated template, its
//! own Redis key prefix, and the real server on port 0, connected as a login role that is
//! only a member of `molar_app` (never a superuser or owner), so row-level security is
//! exercised by every test. Without PostgreSQL or Redis the tests fail loudly.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use molar::config::Config;
use molar::Server;
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use tokio::sync::{oneshot, OnceCell};

pub const OWNER_ROLE: &str = "molar_owner";
pub const SERVER_ROLE: &str = "molar_test_server";

pub fn admin_url() -> String {
    std::env::var("MOLAR_TEST_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("MOLAR_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The admin URL pointed at another database and, optionally, another role.
pub fn url_for(db: &str, role: Option<(&str, &str)>) -> String {
    let admin = admin_url();
    let (scheme_rest, _) = admin
        .rsplit_once('/')
        .expect("MOLAR_TEST_ADMIN_URL has a path");
    let mut url = format!("{scheme_rest}/{db}");
    if let Some((user, password)) = role {
        let after_scheme = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .expect("MOLAR_TEST_ADMIN_URL is a postgres:// URL")
            .to_owned();
        let host = after_scheme
            .rsplit_once('@')
            .map(|(_, h)| h.to_owned())
            .unwrap_or(after_scheme);
        url = format!("postgres://{user}:{password}@{host}");
    }
    url
}

pub async fn admin_connection(db: &str) -> PgConnection {
    let url = url_for(db, None);
    match PgConnection::connect(&url).await {
        Ok(c) => c,
        Err(e) => panic!(
            "PostgreSQL is not reachable as the test administrator ({e}). Start it with \
             scripts/test, or point MOLAR_TEST_ADMIN_URL at a superuser connection."
        ),
    }
}

fn template_name() -> String {
    let mut h = Sha256::new();
    for m in molar::db::MIGRATOR.iter() {
        h.update(m.version.to_le_bytes());
        h.update(&*m.checksum);
    }
    format!("molar_tpl_{}", &hex::encode(h.finalize())[..16])
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// Creates the test roles and a migrated template database, once per migration set.
async fn template() -> String {
    TEMPLATE
        .get_or_init(|| async {
            let name = template_name();
            let mut admin = admin_connection("postgres").await;
            // Serialises template creation across test processes.
            sqlx::query("SELECT pg_advisory_lock(7262011)")
                .execute(&mut admin)
                .await
                .expect("advisory lock");
            for (role, attrs) in [
                (OWNER_ROLE, "LOGIN CREATEROLE PASSWORD 'molar_owner'"),
                (SERVER_ROLE, "LOGIN PASSWORD 'molar_test_server'"),
            ] {
                sqlx::raw_sql(&format!(
                    "DO $$ BEGIN CREATE ROLE {role} {attrs}; \
                     EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
                ))
                .execute(&mut admin)
                .await
                .expect("create test roles");
            }
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&name)
                    .fetch_one(&mut admin)
                    .await
                    .expect("query pg_database");
            if !exists {
                let building = format!("{name}_building");
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {building}"))
                    .execute(&mut admin)
                    .await
                    .expect("drop half-built template");
                sqlx::raw_sql(&format!("CREATE DATABASE {building} OWNER {OWNER_ROLE}"))
                    .execute(&mut admin)
                    .await
                    .expect("create template");
                let owner_url = url_for(&building, Some((OWNER_ROLE, "molar_owner")));
                molar::db::migrate(&owner_url.into())
                    .await
                    .expect("migrate the template as the owning role");
                sqlx::raw_sql(&format!("ALTER DATABASE {building} RENAME TO {name}"))
                    .execute(&mut admin)
                    .await
                    .expect("publish template");
            }
            sqlx::raw_sql(&format!("GRANT molar_app TO {SERVER_ROLE}"))
                .execute(&mut admin)
                .await
                .expect("grant molar_app to the test server role");
            sqlx::query("SELECT pg_advisory_unlock(7262011)")
                .execute(&mut admin)
                .await
                .expect("advisory unlock");
            name
        })
        .await
        .clone()
}

/// A fresh database for one test, cloned from the migrated template.
pub async fn fresh_database() -> String {
    let template = template().await;
    let name = format!("molar_t_{}", uuid::Uuid::new_v4().simple());
    let mut admin = admin_connection("postgres").await;
    let mut last = None;
    for _ in 0..20 {
        match sqlx::raw_sql(&format!(
            "CREATE DATABASE {name} TEMPLATE {template} OWNER {OWNER_ROLE}"
        ))
        .execute(&mut admin)
        .await
        {
            Ok(_) => return name,
            // Another test may be cloning the same template at this instant.
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("could not create a test database: {last:?}");
}

pub fn server_url(db: &str) -> String {
    url_for(db, Some((SERVER_ROLE, "molar_test_server")))
}

pub fn owner_url(db: &str) -> String {
    url_for(db, Some((OWNER_ROLE, "molar_owner")))
}

/// The configuration a test server starts with; tests override entries as they need.
pub fn base_vars(db: &str) -> HashMap<String, String> {
    let mut vars = HashMap::new();
    let mut set = |k: &str, v: String| {
        vars.insert(k.to_owned(), v);
    };
    set("ENVIRONMENT", "test".into());
    set("DATABASE_URL", server_url(db));
    set("MIGRATION_DATABASE_URL", owner_url(db));
    set("REDIS_URL", redis_url());
    set(
        "REDIS_KEY_PREFIX",
        format!("molar-test:{}:", uuid::Uuid::new_v4().simple()),
    );
    set("SECRET_KEY", molar::random_hex(32));
    set("LOG_LEVEL", "warn".into());
    set("SHUTDOWN_DRAIN_SECONDS", "0".into());
    set("DB_POOL_SIZE", "5".into());
    set(
        "MEDICAL_RECORDS_STORAGE_PATH",
        std::env::temp_dir()
            .join(format!("molar-test-{}", uuid::Uuid::new_v4().simple()))
            .display()
            .to_string(),
    );
    vars
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub db_name: String,
    pub client: reqwest::Client,
    pub vars: HashMap<String, String>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn() -> TestApp {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(adjust: impl FnOnce(&mut HashMap<String, String>)) -> TestApp {
    let db_name = fresh_database().await;
    let mut vars = base_vars(&db_name);
    adjust(&mut vars);
    spawn_on(db_name, vars).await
}

/// Starts a server on an existing database with the given configuration.
pub async fn spawn_on(db_name: String, vars: HashMap<String, String>) -> TestApp {
    ensure_redis().await;
    let config = Config::from_map(vars.clone()).expect("test configuration is valid");
    molar::telemetry::init_logging(&config);
    let server = Server::prepare(config).await.expect("server prepares");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(server.run(listener, async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        base: format!("http://{addr}"),
        db_name,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client"),
        vars,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

static REDIS_CHECKED: OnceCell<()> = OnceCell::const_new();

async fn ensure_redis() {
    REDIS_CHECKED
        .get_or_init(|| async {
            let client = redis::Client::open(redis_url()).expect("MOLAR_TEST_REDIS_URL is valid");
            let ok = tokio::time::timeout(Duration::from_secs(3), async {
                let mut c = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut c).await
            })
            .await;
            if !matches!(ok, Ok(Ok(_))) {
                panic!(
                    "Redis is not reachable at {}. Start it with scripts/test, or point \
                     MOLAR_TEST_REDIS_URL at a running Redis.",
                    redis_url()
                );
            }
        })
        .await;
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Signals shutdown and waits for the server to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("server stops within 30 s")
                .expect("server task did not panic"),
            None => Ok(()),
        }
    }

    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn wait_stopped(&mut self) -> anyhow::Result<()> {
        match self.handle.take() {
            Some(h) => tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("server stops within 30 s")
                .expect("server task did not panic"),
            None => Ok(()),
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Response {
        self.call(Method::POST, path, token, Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> Response {
        self.call(Method::PATCH, path, token, Some(body)).await
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.expect("request reaches the server")
    }

    /// A superuser connection to this test's database, for setting up and inspecting.
    pub async fn admin_db(&self) -> PgConnection {
        admin_connection(&self.db_name).await
    }

    /// A connection to this test's database as the server's role.
    pub async fn server_db(&self) -> PgConnection {
        PgConnection::connect(&server_url(&self.db_name))
            .await
            .expect("connect as the server role")
    }

    /// A connection to this test's database as the role that owns the tables, in `clinic`
    /// for the whole session: what someone holding the owner's credentials could do.
    pub async fn owner_db_in(&self, clinic: &str) -> PgConnection {
        let mut conn = PgConnection::connect(&owner_url(&self.db_name))
            .await
            .expect("connect as the owning role");
        sqlx::query("SELECT set_config('app.clinic_id', $1, false)")
            .bind(clinic)
            .execute(&mut conn)
            .await
            .expect("scope the owner's connection");
        conn
    }

    /// Registers a clinic with an owner; returns (clinic id, owner email, access token).
    pub async fn register_clinic(&self, name: &str) -> Registered {
        let email = format!("owner-{}@example.test", uuid::Uuid::new_v4().simple());
        let res = self
            .post(
                "/api/v2/auth/register-clinic",
                None,
                json!({
                    "clinic": {"name": name, "timezone": "Europe/Berlin", "currency": "EUR"},
                    "owner": {"email": email, "password": STRONG_PASSWORD, "full_name": "Olga Owner"}
                }),
            )
            .await;
        assert_eq!(
            res.status(),
            StatusCode::CREATED,
            "register-clinic: {:?}",
            res.text().await
        );
        let body: Value = res.json().await.expect("json");
        Registered {
            clinic_id: body["clinic"]["id"].as_str().expect("clinic id").to_owned(),
            user_id: body["user"]["id"].as_str().expect("user id").to_owned(),
            email,
            access: body["tokens"]["access_token"]
                .as_str()
                .expect("access")
                .to_owned(),
            refresh: body["tokens"]["refresh_token"]
                .as_str()
                .expect("refresh")
                .to_owned(),
        }
    }

    /// Creates a staff member with `role` in the caller's clinic and signs them in.
    pub async fn staff(&self, owner_token: &str, role: &str) -> Registered {
        let email = format!("{role}-{}@example.test", uuid::Uuid::new_v4().simple());
        let res = self
            .post(
                "/api/v2/users",
                Some(owner_token),
                json!({"email": email, "password": STRONG_PASSWORD, "full_name": format!("A {role}"), "role": role}),
            )
            .await;
        assert_eq!(
            res.status(),
            StatusCode::CREATED,
            "create {role}: {:?}",
            res.text().await
        );
        let user: Value = res.json().await.expect("json");
        let tokens = self.login(&email, STRONG_PASSWORD).await;
        Registered {
            clinic_id: user["clinic_id"].as_str().unwrap_or_default().to_owned(),
            user_id: user["id"].as_str().expect("user id").to_owned(),
            email,
            access: tokens["access_token"].as_str().expect("access").to_owned(),
            refresh: tokens["refresh_token"]
                .as_str()
                .expect("refresh")
                .to_owned(),
        }
    }

    pub async fn login(&self, email: &str, password: &str) -> Value {
        let res = self
            .post(
                "/api/v2/auth/login",
                None,
                json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "login: {:?}",
            res.text().await
        );
        res.json().await.expect("json")
    }
}

pub const STRONG_PASSWORD: &str = "correct horse battery staple 42";

#[derive(Debug, Clone)]
pub struct Registered {
    pub clinic_id: String,
    pub user_id: String,
    pub email: String,
    pub access: String,
    pub refresh: String,
}

/// Asserts a problem+json response with `status`, returning its body.
pub async fn expect_problem(res: Response, status: StatusCode) -> Value {
    assert_eq!(res.status(), status, "unexpected status");
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        ct.starts_with("application/problem+json"),
        "content-type was {ct}"
    );
    let header_id = res
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = res.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], json!(status.as_u16()));
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string());
    assert_eq!(
        body["request_id"].as_str(),
        header_id.as_deref(),
        "request_id matches the header"
    );
    body
}

/// A minimal valid patient body.
pub fn patient_body(first: &str, last: &str) -> Value {
    json!({"first_name": first, "last_name": last, "date_of_birth": "1985-04-12"})
}

impl TestApp {
    /// Creates a patient and returns its id.
    pub async fn patient(&self, token: &str, first: &str, last: &str) -> String {
        let res = self
            .post("/api/v2/patients", Some(token), patient_body(first, last))
            .await;
        assert_eq!(
            res.status(),
            StatusCode::CREATED,
            "create patient: {:?}",
            res.text().await
        );
        let body: Value = res.json().await.expect("json");
        body["id"].as_str().expect("id").to_owned()
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Response {
        self.call(Method::DELETE, path, token, None).await
    }
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The real `molar serve` binary as a child process.
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub base: String,
    pub port: u16,
}

impl ServerProcess {
    /// Starts `molar serve` with `vars` (plus HOST/PORT) and waits until health answers.
    pub async fn start(vars: &HashMap<String, String>) -> ServerProcess {
        let port = free_port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_molar"))
            .arg("serve")
            .env_clear()
            .envs(vars.iter())
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start molar serve");
        let server = ServerProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            port,
        };
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(server.url("/api/v2/health")).send().await {
                if r.status() == StatusCode::OK {
                    return server;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "molar serve did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}

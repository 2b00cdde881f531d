//! The faults operators meet: PostgreSQL restarting under load (a private cluster started
//! here, as an unprivileged user), SIGTERM during slow requests, and a backup restored
//! into an empty database.

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn pg_bindir() -> PathBuf {
    if let Ok(out) = StdCommand::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("pg_ctl").exists() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries are installed (scripts/services installs them)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop().expect("a PostgreSQL bin directory")
}

/// A PostgreSQL cluster of this test's own, on its own port. PostgreSQL refuses to run as
/// root, so as root it runs as the `postgres` system user.
struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
    bindir: PathBuf,
}

impl PrivatePostgres {
    fn pg(&self, program: &str) -> StdCommand {
        let path = self.bindir.join(program);
        if is_root() {
            let mut c = StdCommand::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            StdCommand::new(path)
        }
    }

    fn init() -> PrivatePostgres {
        let dir = std::env::temp_dir().join(format!("molar-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let pg = PrivatePostgres {
            dir,
            port: free_port(),
            bindir: pg_bindir(),
        };
        if is_root() {
            let ok = StdCommand::new("chown")
                .args(["-R", "postgres"])
                .arg(&pg.dir)
                .status()
                .expect("chown");
            assert!(ok.success());
        }
        let out = pg
            .pg("initdb")
            .arg("-D")
            .arg(pg.dir.join("data"))
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.start();
        pg
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let out = self
            .pg("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "30", "-o", &opts, "start"])
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stop(&self) {
        let out = self
            .pg("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .output()
            .expect("pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// Roles, a database and the migrations, as an operator would set them up.
    async fn prepare(&self) {
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres", "postgres"))
            .await
            .expect("connect");
        for sql in [
            "CREATE ROLE molar_owner LOGIN CREATEROLE",
            "CREATE ROLE molar_server LOGIN",
            "CREATE DATABASE molar OWNER molar_owner",
        ] {
            sqlx::raw_sql(sql).execute(&mut admin).await.expect(sql);
        }
        molar::db::migrate(&self.url("molar_owner", "molar").into())
            .await
            .expect("migrate");
        sqlx::raw_sql("GRANT molar_app TO molar_server")
            .execute(&mut admin)
            .await
            .expect("grant");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .pg("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn register(base: &str, email: &str) -> String {
    let res = reqwest::Client::new()
        .post(format!("{base}/api/v2/auth/register-clinic"))
        .json(
            &json!({"clinic": {"name": "Faulty", "timezone": "UTC", "currency": "EUR"},
                      "owner": {"email": email, "password": STRONG_PASSWORD, "full_name": "F"}}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json::<Value>().await.expect("json")["tokens"]["access_token"]
        .as_str()
        .expect("token")
        .to_owned()
}

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    status: u16,
    took: Duration,
    problem: bool,
}

#[tokio::test]
async fn a_postgres_restart_under_load_fails_fast_and_recovers_by_itself() {
    let pg = PrivatePostgres::init();
    pg.prepare().await;
    let mut vars = base_vars("molar");
    vars.insert("DATABASE_URL".into(), pg.url("molar_server", "molar"));
    vars.insert(
        "MIGRATION_DATABASE_URL".into(),
        pg.url("molar_owner", "molar"),
    );
    vars.insert("DB_POOL_TIMEOUT".into(), "2".into());
    vars.insert("RATE_LIMIT_PER_MINUTE".into(), "100000".into());
    vars.insert("RATE_LIMIT_CLINIC_PER_MINUTE".into(), "100000".into());
    let server = ServerProcess::start(&vars).await;
    let token = register(&server.base, "restart@pg.example").await;

    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (samples, stop, token) = (samples.clone(), stop.clone(), token.clone());
        let url = server.url("/api/v2/clinic");
        load.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let res = tokio::time::timeout(
                    Duration::from_secs(15),
                    client.get(&url).bearer_auth(&token).send(),
                )
                .await;
                let sample = match res {
                    Ok(Ok(r)) => Sample {
                        at: started,
                        status: r.status().as_u16(),
                        took: started.elapsed(),
                        problem: r.headers().get("content-type").is_some_and(|v| {
                            v.to_str()
                                .unwrap_or("")
                                .starts_with("application/problem+json")
                        }),
                    },
                    Ok(Err(_)) => Sample {
                        at: started,
                        status: 0,
                        took: started.elapsed(),
                        problem: false,
                    },
                    Err(_) => Sample {
                        at: started,
                        status: 999,
                        took: started.elapsed(),
                        problem: false,
                    },
                };
                samples.lock().expect("lock").push(sample);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let down_at = Instant::now();
    pg.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    pg.start();
    let up_at = Instant::now();
    // Recovery without a restart of the server.
    let deadline = up_at + Duration::from_secs(20);
    loop {
        let recovered = samples
            .lock()
            .expect("lock")
            .iter()
            .any(|s| s.at > up_at && s.status == 200);
        if recovered {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not recover within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    let samples = samples.lock().expect("lock").clone();
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at > down_at && s.at < up_at)
        .collect();
    assert!(
        during.iter().any(|s| s.status == 503),
        "the outage was seen as 503"
    );
    for s in &samples {
        assert!(
            matches!(s.status, 200 | 503),
            "only 200 or 503, never {}",
            s.status
        );
        if s.status == 503 {
            assert!(s.problem, "503s are problem+json");
        }
        assert!(
            s.took < Duration::from_secs(6),
            "no request hangs past the pool timeout: {:?}",
            s.took
        );
    }
}

#[tokio::test]
async fn sigterm_drains_and_lets_slow_requests_finish_before_exiting_zero() {
    let db = fresh_database().await;
    let mut vars = base_vars(&db);
    vars.insert("SHUTDOWN_DRAIN_SECONDS".into(), "2".into());
    let mut server = ServerProcess::start(&vars).await;
    let token = register(&server.base, "sigterm@proc.example").await;

    // A slow request: PATCH /clinic waits on a row lock held here.
    let mut admin = admin_connection(&db).await;
    let mut lock = admin.begin().await.expect("begin");
    sqlx::query("SELECT * FROM clinics FOR UPDATE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    let client = reqwest::Client::new();
    let slow = {
        let (client, url, token) = (client.clone(), server.url("/api/v2/clinic"), token.clone());
        tokio::spawn(async move {
            client
                .patch(url)
                .bearer_auth(token)
                .json(&json!({"name": "Renamed during shutdown"}))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = client
        .get(server.url("/api/v2/ready"))
        .send()
        .await
        .expect("still accepting while draining");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    // After the drain the listener is closed, while the slow request is still running.
    tokio::time::sleep(Duration::from_millis(2400)).await;
    assert!(
        reqwest::Client::new()
            .get(server.url("/api/v2/health"))
            .send()
            .await
            .is_err(),
        "new connections are refused after the drain"
    );
    assert!(!slow.is_finished(), "the slow request is still in flight");
    lock.commit().await.expect("release the lock");
    let res = tokio::time::timeout(Duration::from_secs(20), slow)
        .await
        .expect("the slow request finishes")
        .expect("task")
        .expect("the in-flight request completes");
    assert_eq!(res.status(), StatusCode::OK);
    let status = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .expect("exits before a 20 s grace period")
        .expect("wait");
    assert!(status.success(), "exit status {status:?}");
    assert!(reqwest::Client::new()
        .get(server.url("/api/v2/health"))
        .send()
        .await
        .is_err());
}

fn run_script(script: &str, args: &[&str]) -> String {
    let out = StdCommand::new(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(script),
    )
    .args(args)
    .output()
    .expect("run script");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test]
async fn a_backup_restores_into_an_empty_database_and_is_served() {
    let app = spawn().await;
    let owner = app.register_clinic("Backed up").await;
    let patient = app.patient(&owner.access, "Bea", "Kup").await;
    let dir = std::env::temp_dir().join(format!("molar-backup-{}", uuid::Uuid::new_v4().simple()));
    let out = run_script(
        "backup",
        &[&url_for(&app.db_name, None), &dir.display().to_string()],
    );
    let dump = out
        .lines()
        .last()
        .expect("the dump's path")
        .trim()
        .to_owned();
    assert!(Path::new(&dump).exists(), "{dump}");

    let target = format!("molar_t_{}", uuid::Uuid::new_v4().simple());
    let mut admin = admin_connection("postgres").await;
    sqlx::raw_sql(&format!("CREATE DATABASE {target} OWNER {OWNER_ROLE}"))
        .execute(&mut admin)
        .await
        .expect("create target");
    run_script("restore", &[&dump, &url_for(&target, None)]);

    let mut vars = app.vars.clone();
    vars.insert("DATABASE_URL".into(), server_url(&target));
    vars.insert("MIGRATION_DATABASE_URL".into(), owner_url(&target));
    let restored = spawn_on(target, vars).await;
    let check: Value = restored
        .get("/api/v2/startup-check", None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(check["status"], "ok", "{check}");
    let tokens = restored.login(&owner.email, STRONG_PASSWORD).await;
    let token = tokens["access_token"].as_str().expect("token");
    let read: Value = restored
        .get(&format!("/api/v2/patients/{patient}"), Some(token))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(read["last_name"], "Kup");
    let _ = std::fs::remove_dir_all(dir);
}

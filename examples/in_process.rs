//! The server's work for one request without the HTTP connection, for `bench/run`: what a
//! patient read or a page of patients costs this process's CPU when the request never
//! crosses a socket to reach it, so that the benchmark can say how much of the server's
//! CPU per request is its database and Redis round trips and how much is HTTP.
//!
//! ```sh
//! in_process <router|calls|trips> <path> <seconds> <concurrency>
//! ```
//!
//! The server's own configuration comes from the environment, as for `molar serve`, and
//! the access token from `BENCH_TOKEN`. `path` is `/api/v2/patients/{id}` or
//! `/api/v2/patients?limit=50`. Two depths:
//!
//! - `router`: the whole application (every middleware layer, the rate limit, the token,
//!   the handler, JSON and gzip), each request sent to the router in process;
//! - `calls`: only the rate limit's check, the caller's extraction and the handler, called
//!   directly: the database's and Redis's round trips with the least code around them;
//! - `trips`: the round trips alone: the rate limit's check and the caller's extraction,
//!   then the caller's transaction (its begin with the session check), `SELECT 1` in place
//!   of the handler's statement, and the commit. The path only has to be a valid one.
//!
//! `concurrency` tasks send requests one after another for `seconds` on a runtime like the
//! server's. It prints one JSON line: the requests, their rate, and the CPU this process
//! spent per request (user and system, every thread).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::{header, Request, StatusCode};
use axum::response::IntoResponse;
use tower::ServiceExt;
use uuid::Uuid;

use molar::auth::Caller;
use molar::config::Config;
use molar::http::extract::{ApiPath, ApiQuery};
use molar::patients::routes::{get_patient, PatientPath};
use molar::patients::search::list_patients;
use molar::state::AppState;

/// The server's allocator, as in `main.rs`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, PartialEq)]
enum Depth {
    Router,
    Calls,
    Trips,
}

#[derive(Clone)]
enum Target {
    Read(Uuid),
    Page(String),
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes only into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF counts every thread of this process.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn request(path: &str, bearer: &str) -> anyhow::Result<Request<Body>> {
    let mut req = Request::builder()
        .uri(path)
        .header(header::AUTHORIZATION, bearer)
        .header(header::ACCEPT_ENCODING, "gzip")
        .body(Body::empty())?;
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    Ok(req)
}

/// One request at `depth`: the status and the body's length.
async fn one(
    depth: Depth,
    state: &AppState,
    app: &axum::Router,
    target: &Target,
    path: &str,
    bearer: &str,
) -> anyhow::Result<(StatusCode, usize)> {
    let mut req = request(path, bearer)?;
    let res = match depth {
        Depth::Router => app.clone().oneshot(req).await?,
        Depth::Calls | Depth::Trips => {
            if let Err(refused) = molar::http::limits::check_rate(state, &mut req).await {
                return Ok((refused.status(), 0));
            }
            let (mut parts, _) = req.into_parts();
            let caller = match Caller::from_request_parts(&mut parts, state).await {
                Ok(c) => c,
                Err(e) => return Ok((e.into_response().status(), 0)),
            };
            let answer = match target {
                _ if depth == Depth::Trips => trips(state, &caller).await,
                Target::Read(id) => {
                    get_patient(
                        State(state.clone()),
                        caller,
                        ApiPath(PatientPath { id: *id }),
                    )
                    .await
                }
                Target::Page(query) => {
                    let params = serde_urlencoded::from_str(query)?;
                    list_patients(State(state.clone()), caller, ApiQuery(params))
                        .await
                        .map(IntoResponse::into_response)
                }
            };
            answer.into_response()
        }
    };
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX).await?;
    Ok((status, body.len()))
}

/// The caller's transaction with `SELECT 1` in it: a handler's round trips and nothing else.
async fn trips(
    state: &AppState,
    caller: &Caller,
) -> molar::error::AppResult<axum::response::Response> {
    let mut tx = caller.begin(state).await?;
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(StatusCode::OK.into_response())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [depth, path, seconds, concurrency] = args.as_slice() else {
        bail!("usage: in_process <router|calls|trips> <path> <seconds> <concurrency>");
    };
    let depth = match depth.as_str() {
        "router" => Depth::Router,
        "calls" => Depth::Calls,
        "trips" => Depth::Trips,
        other => bail!("unknown depth {other:?}: router, calls or trips"),
    };
    let target = match path.strip_prefix("/api/v2/patients") {
        Some(rest) if rest.starts_with('/') => Target::Read(rest[1..].parse()?),
        Some(rest) if rest.starts_with('?') => Target::Page(rest[1..].to_owned()),
        _ => bail!("the path is /api/v2/patients/{{id}} or /api/v2/patients?..."),
    };
    let seconds: f64 = seconds.parse().context("seconds")?;
    let concurrency: usize = concurrency.parse().context("concurrency")?;
    let bearer = format!(
        "Bearer {}",
        std::env::var("BENCH_TOKEN").context("BENCH_TOKEN is required")?
    );

    let config = Config::from_env()?;
    let server = molar::Server::prepare(config).await?;
    let state = server.state().clone();
    let app = molar::app::app(state.clone());

    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (state, app, target, path, bearer) = (
            state.clone(),
            app.clone(),
            target.clone(),
            path.clone(),
            bearer.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut other, mut bytes) = (0u64, 0u64, 0usize);
            while Instant::now() < deadline {
                let (status, len) = one(depth, &state, &app, &target, &path, &bearer).await?;
                if status == StatusCode::OK {
                    ok += 1;
                    bytes += len;
                } else {
                    other += 1;
                }
            }
            anyhow::Ok((ok, other, bytes))
        }));
    }
    let (mut ok, mut other, mut bytes) = (0u64, 0u64, 0usize);
    for task in tasks {
        let (o, x, b) = task.await??;
        ok += o;
        other += x;
        bytes += b;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let total = (ok + other).max(1);
    println!(
        "{}",
        serde_json::json!({
            "depth": match depth {
                Depth::Router => "router",
                Depth::Calls => "calls",
                Depth::Trips => "trips",
            },
            "path": path,
            "ok": ok,
            "other": other,
            "seconds": elapsed,
            "rate": ok as f64 / elapsed,
            "bytes_per_response": bytes as f64 / ok.max(1) as f64,
            "cpu_ms_per_request": cpu * 1000.0 / total as f64,
        })
    );
    if other > 0 {
        bail!("{other} of {total} requests were not answered 200");
    }
    Ok(())
}

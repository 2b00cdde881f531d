//! API-wide rate limits: per user and per clinic for signed-in callers, per client
//! address otherwise. Shared through Redis by every instance; when Redis is down these
//! general limits let requests through (credential endpoints have their own, stricter
//! limits that never do).

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

use crate::auth::tokens::VerifiedClaims;
use crate::http::client_ip::client_ip_of;
use crate::ratelimit::{Decision, Quota, WhenRedisDown};
use crate::state::AppState;

/// Liveness, readiness, docs and the document are never limited (the deep start-up check
/// is, as an anonymous route).
fn exempt(path: &str) -> bool {
    !path.starts_with("/api/v2/")
        || matches!(
            path,
            "/api/v2/health" | "/api/v2/ready" | "/api/v2/openapi.json"
        )
        || path.starts_with("/api/v2/docs")
}

pub async fn api_rate_limit(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    if exempt(req.uri().path()) {
        return next.run(req).await;
    }
    let config = &state.config;
    let claims = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.get(..7)
                .filter(|s| s.eq_ignore_ascii_case("bearer "))
                .map(|_| &v[7..])
        })
        .and_then(|t| state.tokens.verify_access(t.trim()).ok());
    let checks = match &claims {
        Some(c) => vec![
            (
                Quota::per_minute("user", config.rate_limit_per_minute),
                c.sub.to_string(),
            ),
            (
                Quota::per_minute("clinic", config.rate_limit_clinic_per_minute),
                c.cid.to_string(),
            ),
        ],
        None => {
            let ip = client_ip_of(req.headers(), req.extensions(), &config.trusted_proxies)
                .map(crate::http::client_ip::rate_key)
                .unwrap_or_default();
            vec![(
                Quota::per_minute("anonymous", config.rate_limit_anon_per_minute),
                ip,
            )]
        }
    };
    if let Some(c) = claims {
        req.extensions_mut().insert(VerifiedClaims(c));
    }
    let decisions = state
        .limiter
        .check_all(state.redis.as_ref(), &checks, WhenRedisDown::Allow)
        .await;
    if let Some(res) = Decision::rejection(&decisions) {
        return res;
    }
    let mut res = next.run(req).await;
    // A route with a stricter budget of its own (sign-in) reports that one.
    if !res.headers().contains_key("ratelimit-policy") {
        Decision::apply_headers(&decisions, res.headers_mut());
    }
    res
}

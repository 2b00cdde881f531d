//! API-wide rate limits: per user and per clinic for signed-in callers, per client
//! address otherwise. Shared through Redis by every instance; when Redis is down these
//! general limits let requests through (credential endpoints have their own, stricter
//! limits that never do).

use axum::extract::Request;
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

/// The body limit and the time limit of a request: `MAX_BODY_KB` and
/// `REQUEST_TIMEOUT_SECONDS`, except for a document upload, which may carry
/// `MAX_UPLOAD_MB` (plus the form's own few bytes) for `UPLOAD_TIMEOUT_SECONDS`, and a
/// document download, which has `UPLOAD_TIMEOUT_SECONDS` too. A declared
/// `Content-Length` over the limit is refused at once; a body that turns out longer fails
/// as it is read. Past its time a request is answered 503.
pub async fn body_and_time(
    state: &AppState,
    route: Option<&str>,
    req: Request,
    next: Next,
) -> Response {
    use axum::response::IntoResponse;
    let config = &state.config;
    let upload = req.method() == axum::http::Method::POST
        && route == Some(crate::documents::routes::UPLOAD_ROUTE);
    // A download authenticates the whole range before its first byte: as long as an upload.
    let download = route == Some(crate::documents::routes::CONTENT_ROUTE);
    let (limit, time) = if upload {
        (
            usize::try_from(u64::from(config.max_upload_mb) * 1024 * 1024 + 64 * 1024)
                .unwrap_or(usize::MAX),
            config.upload_timeout.max(config.request_timeout),
        )
    } else if download {
        (
            config.max_body_bytes,
            config.upload_timeout.max(config.request_timeout),
        )
    } else {
        (config.max_body_bytes, config.request_timeout)
    };
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return crate::error::AppError::PayloadTooLarge.into_response();
    }
    let req = req.map(|body| axum::body::Body::new(http_body_util::Limited::new(body, limit)));
    match tokio::time::timeout(time, next.run(req)).await {
        Ok(res) => res,
        Err(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// The API-wide limits' decisions for a request (none for an exempt path), or the 429 that
/// answers it. A valid access token's claims are left in the request's extensions, so that
/// the handler does not verify the token again.
pub async fn check_rate(state: &AppState, req: &mut Request) -> Result<Vec<Decision>, Response> {
    if exempt(req.uri().path()) {
        return Ok(Vec::new());
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
    match Decision::rejection(&decisions) {
        Some(res) => Err(res),
        None => Ok(decisions),
    }
}

/// The limits' headers on an answer, unless a route with a stricter budget of its own
/// (sign-in) already reports that one.
pub fn rate_headers(decisions: &[Decision], res: &mut Response) {
    if !res.headers().contains_key("ratelimit-policy") {
        Decision::apply_headers(decisions, res.headers_mut());
    }
}

//! The HTTP surface: every area's routes merged under `/api/v2`, the OpenAPI document
//! built from the same annotations, and the middleware stack around them.

pub mod client;
pub mod client_ip;
pub mod etag;
pub mod extract;
pub mod idempotency;
pub mod json;
pub mod limits;
pub mod middleware;
pub mod pagination;
pub mod query;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tower::ServiceBuilder;
use tower_http::compression::predicate::{
    DefaultPredicate, NotForContentType, Predicate, SizeAbove,
};
use tower_http::compression::{CompressionLayer, CompressionLevel};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::health;
use crate::http::query::StrictQuery;
use crate::state::AppState;

/// Wraps the assembled routes in the middleware stack, outermost first: around the router
/// as a whole, request id → CORS → compression → security headers; then, for the route
/// matched, trace → metrics → FHIR outcomes → problem fallback → rate limit → strict query
/// → timeout → body limits. A layer added with `Router::layer` wraps every route and runs
/// (and clones what it wraps) per request, so only what needs the matched route's template
/// is one.
pub fn with_middleware(router: Router<AppState>, state: AppState, strict: StrictQuery) -> Router {
    let config = state.config.clone();
    let cors = cors_layer(&config.allowed_origins);
    let hsts = (config.hsts_max_age > 0).then(|| {
        let value = format!("max-age={}; includeSubDomains", config.hsts_max_age);
        SetResponseHeaderLayer::if_not_present(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("max-age=0")),
        )
    });
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &Request| {
            let request_id = req
                .headers()
                .get(&middleware::X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(|m| m.as_str())
                .unwrap_or("unmatched");
            tracing::info_span!("request", method = %req.method(), route, request_id)
        })
        .on_response(DefaultOnResponse::new().level(Level::INFO))
        // Server errors are already logged where they arise, with their cause.
        .on_failure(DefaultOnFailure::new().level(Level::DEBUG));

    let security = ServiceBuilder::new()
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ));
    // Router::layer wraps what is already there, so the last layer added runs first.
    let routed = router
        .fallback(middleware::not_found)
        .with_state(state.clone())
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            middleware::PerRoute { state, strict },
            middleware::per_route,
        ))
        .layer(trace);
    let whole = ServiceBuilder::new()
        .layer(axum::middleware::from_fn(middleware::request_id))
        .layer(cors)
        .layer(compression_layer())
        .layer(security)
        .option_layer(hsts)
        .service(routed);
    Router::new().fallback_service(whole)
}

/// Gzip for bodies worth it: below a kilobyte (a single patient, a problem document) the
/// compressor's set-up costs more than the bytes it saves. The fastest level keeps a page
/// of patients at about a fifth of its size for a fraction of the default level's CPU.
fn compression_layer() -> CompressionLayer<impl Predicate> {
    CompressionLayer::new()
        .quality(CompressionLevel::Fastest)
        .compress_when(
            DefaultPredicate::new()
                .and(SizeAbove::new(1024))
                // Documents keep their Content-Length (and are compressed already).
                .and(NotForContentType::const_new("application/pdf"))
                .and(NotForContentType::const_new("application/dicom")),
        )
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let base = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            HeaderName::from_static("idempotency-key"),
            middleware::X_REQUEST_ID.clone(),
        ])
        .expose_headers([
            header::ETAG,
            header::LOCATION,
            header::RETRY_AFTER,
            middleware::X_REQUEST_ID.clone(),
            HeaderName::from_static("ratelimit"),
            HeaderName::from_static("ratelimit-policy"),
        ])
        .max_age(std::time::Duration::from_secs(600));
    if origins.iter().any(|o| o == "*") {
        return base.allow_origin(AllowOrigin::any());
    }
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
        .collect();
    base.allow_origin(AllowOrigin::list(list))
}

/// A router serving only `/metrics`, for a private `METRICS_PORT`.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(s): axum::extract::State<AppState>| async move {
                    health::render_metrics(&s).into_response()
                },
            ),
        )
        .with_state(state)
}

//! Cross-cutting request handling: request ids, problem+json for every error the
//! framework or a layer produces, and per-route metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use metrics::{Label, SharedString};

use super::limits;
use super::query::StrictQuery;
use crate::error::{problem_response, problem_type, Problem, PROBLEM_JSON, REQUEST_ID};
use crate::state::AppState;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// An incoming request id is kept when it is short and plain; otherwise a new one is made.
fn acceptable_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| s.to_owned())
}

/// Accepts or generates `X-Request-Id`, makes it visible to handlers and logs, echoes it.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(acceptable_request_id)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let value = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    req.headers_mut()
        .insert(X_REQUEST_ID.clone(), value.clone());
    let mut res = REQUEST_ID.scope(id, next.run(req)).await;
    res.headers_mut().insert(X_REQUEST_ID.clone(), value);
    res
}

/// What [`per_route`] needs: the application's state and the query parameters each
/// documented route declares.
#[derive(Clone)]
pub struct PerRoute {
    pub state: AppState,
    pub strict: StrictQuery,
}

/// Everything the stack does per matched route, as one layer (each `from_fn` layer clones
/// the route beneath it for every request, so six of them cost six clones), outermost
/// first: metrics, FHIR errors as `OperationOutcome`s, problem+json for every other error,
/// the API-wide rate limit, the strict query check, then the body and time limits around
/// the handler.
pub async fn per_route(
    State(PerRoute { state, strict }): State<PerRoute>,
    mut req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route: Option<Arc<str>> = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| Arc::from(p.as_str()));
    let fhir = crate::fhir::outcome::is_fhir(req.uri().path());
    let res = match limits::check_rate(&state, &mut req).await {
        Err(rejection) => rejection,
        Ok(decisions) => {
            let mut res = match strict.check(&req) {
                Some(refused) => refused,
                None => limits::body_and_time(&state, route.as_deref(), req, next).await,
            };
            limits::rate_headers(&decisions, &mut res);
            res
        }
    };
    let res = problem_fallback(res);
    let res = if fhir {
        crate::fhir::outcome::rewrite_errors(res).await
    } else {
        res
    };
    record_metrics(&method, route, start, &res);
    res
}

/// Rewrites any error response that is not already problem+json (framework rejections,
/// 404/405 from the router, 413 from the body limit, the timeout) into one.
fn problem_fallback(res: Response) -> Response {
    let status = res.status();
    if status.as_u16() < 400 {
        return res;
    }
    // Problem documents and deliberate JSON bodies (readiness, start-up check) pass through;
    // empty and plain-text bodies from the framework and layers are replaced.
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(PROBLEM_JSON) || ct.starts_with("application/json"));
    if is_json {
        return res;
    }
    let (slug, detail) = match status {
        StatusCode::NOT_FOUND => ("not-found", "no resource at this path"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method-not-allowed",
            "this path does not accept this method; see the Allow header",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload-too-large",
            "the request body is larger than this server accepts",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported-media-type",
            "the request body must be JSON with Content-Type: application/json",
        ),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => (
            "service-unavailable",
            "the request could not be completed in time; retry shortly",
        ),
        StatusCode::BAD_REQUEST => ("bad-request", "the request is malformed"),
        StatusCode::UNPROCESSABLE_ENTITY => ("validation-error", "the request has invalid fields"),
        s if s.is_server_error() => (
            "internal-error",
            "an internal error occurred; quote the request id when reporting it",
        ),
        _ => ("error", "the request could not be served"),
    };
    let problem = Problem {
        type_: problem_type(slug),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail: detail.to_owned(),
        request_id: crate::error::current_request_id(),
        errors: None,
        extra: None,
    };
    let (mut parts, _) = res.into_parts();
    let fresh = problem_response(status, &problem);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    let (_, body) = fresh.into_parts();
    Response::from_parts(parts, body)
}

/// Counts requests and records latency by method, matched route and status.
fn record_metrics(method: &Method, route: Option<Arc<str>>, start: Instant, res: &Response) {
    // Labels borrowed from static strings or shared by reference count, so that the two
    // series' keys are built without copying them.
    let method: SharedString = match *method {
        Method::GET => "GET".into(),
        Method::POST => "POST".into(),
        Method::PUT => "PUT".into(),
        Method::PATCH => "PATCH".into(),
        Method::DELETE => "DELETE".into(),
        Method::HEAD => "HEAD".into(),
        Method::OPTIONS => "OPTIONS".into(),
        ref other => other.as_str().to_owned().into(),
    };
    let route: SharedString = route.map_or("unmatched".into(), Into::into);
    let labels = vec![
        Label::new("method", method),
        Label::new("route", route),
        Label::new("status", status_label(res.status())),
    ];
    metrics::counter!("http_requests_total", labels.clone()).increment(1);
    metrics::histogram!("http_request_duration_seconds", labels)
        .record(start.elapsed().as_secs_f64());
}

/// A status code as a label, without an allocation for the codes the API answers with.
fn status_label(status: StatusCode) -> SharedString {
    const CODES: [&str; 22] = [
        "200", "201", "202", "204", "304", "400", "401", "403", "404", "405", "406", "409", "412",
        "413", "415", "422", "428", "429", "500", "502", "503", "504",
    ];
    let code = status.as_str();
    match CODES.iter().find(|c| **c == code) {
        Some(c) => (*c).into(),
        None => code.to_owned().into(),
    }
}

/// The 404 for paths no route serves.
pub async fn not_found() -> Response {
    crate::error::AppError::NotFound("no resource at this path".into()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_sanitised() {
        assert_eq!(
            acceptable_request_id(&HeaderValue::from_static("abc-123_x.y:z")).as_deref(),
            Some("abc-123_x.y:z")
        );
        assert!(acceptable_request_id(&HeaderValue::from_static("has space")).is_none());
        assert!(acceptable_request_id(&HeaderValue::from_static("<script>")).is_none());
        let long = "a".repeat(129);
        assert!(acceptable_request_id(&HeaderValue::from_str(&long).expect("ascii")).is_none());
    }

    #[test]
    fn status_labels_are_the_codes() {
        for status in [
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::IM_A_TEAPOT,
        ] {
            assert_eq!(status_label(status).as_ref(), status.as_str());
        }
    }
}

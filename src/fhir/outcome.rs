//! Errors on the FHIR routes are `OperationOutcome`s: one layer, outside the rate limiter
//! and the framework's rejections, rewrites every problem document answered under
//! `/api/v2/fhir` into an outcome with the same status, headers (`Retry-After`,
//! `WWW-Authenticate`) and detail, so a FHIR client never meets another error format.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fhir_r4::coded::Coded;
use fhir_r4::codes::{IssueSeverity, IssueType};
use fhir_r4::resources::operation_outcome::OperationOutcomeIssue;
use fhir_r4::resources::{OperationOutcome, Resource};

use super::{string, FHIR_JSON, PREFIX};
use crate::error::PROBLEM_JSON;

/// The largest problem document read back (ours are a few hundred bytes).
const MAX_PROBLEM_BYTES: usize = 64 * 1024;

/// The issue type FHIR names for an HTTP status.
pub fn issue_type(status: StatusCode) -> IssueType {
    match status.as_u16() {
        400 | 422 => IssueType::Invalid,
        401 => IssueType::Login,
        403 => IssueType::Forbidden,
        404 => IssueType::NotFound,
        405 | 406 | 415 => IssueType::NotSupported,
        409 | 412 => IssueType::Conflict,
        413 => IssueType::TooCostly,
        429 => IssueType::Throttled,
        503 | 504 => IssueType::Transient,
        _ => IssueType::Exception,
    }
}

/// An outcome of one error issue.
pub fn outcome(status: StatusCode, diagnostics: &str) -> OperationOutcome {
    let issue = OperationOutcomeIssue {
        severity: Coded::Known(IssueSeverity::Error),
        code: Coded::Known(issue_type(status)),
        diagnostics: Some(string(diagnostics)),
        ..Default::default()
    };
    OperationOutcome {
        id: None,
        meta: None,
        implicit_rules: None,
        implicit_rules_ext: None,
        language: None,
        language_ext: None,
        text: None,
        contained: vec![],
        extension: vec![],
        modifier_extension: vec![],
        issue: vec1::vec1![issue],
    }
}

pub fn is_fhir(path: &str) -> bool {
    path.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The rewrite of an answer under `/api/v2/fhir` (see [`is_fhir`]): problem+json becomes
/// an `OperationOutcome`.
pub async fn rewrite_errors(res: Response) -> Response {
    if res.status().as_u16() < 400 {
        return res;
    }
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(PROBLEM_JSON));
    if !is_problem {
        return res;
    }
    let status = res.status();
    let (mut parts, body) = res.into_parts();
    let detail = match axum::body::to_bytes(body, MAX_PROBLEM_BYTES).await {
        Ok(bytes) => problem_detail(&bytes),
        Err(_) => None,
    }
    .unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("the request could not be served")
            .to_owned()
    });
    let body = match serde_json::to_vec(&Resource::OperationOutcome(Box::new(outcome(
        status, &detail,
    )))) {
        Ok(b) => b,
        Err(_) => return (status, detail).into_response(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    Response::from_parts(parts, Body::from(body))
}

/// The problem's `detail`, with the fields a 422 names and the request id to quote.
fn problem_detail(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let mut detail = v.get("detail")?.as_str()?.to_owned();
    if let Some(errors) = v.get("errors").and_then(|e| e.as_array()) {
        let fields: Vec<String> = errors
            .iter()
            .filter_map(|e| {
                Some(format!(
                    "{}: {}",
                    e.get("field")?.as_str()?,
                    e.get("message")?.as_str()?
                ))
            })
            .collect();
        if !fields.is_empty() {
            detail = format!("{detail} ({})", fields.join("; "));
        }
    }
    if let Some(id) = v.get("request_id").and_then(|r| r.as_str()) {
        detail = format!("{detail} [request id {id}]");
    }
    Some(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_paths_only() {
        assert!(is_fhir("/api/v2/fhir/Patient"));
        assert!(is_fhir("/api/v2/fhir"));
        assert!(!is_fhir("/api/v2/fhirish"));
        assert!(!is_fhir("/api/v2/patients"));
    }

    #[test]
    fn a_problem_becomes_its_detail_with_fields_and_request_id() {
        let p = br#"{"type":"urn:molar:problem:validation-error","title":"x","status":422,
            "detail":"invalid","request_id":"r1","errors":[{"field":"a","message":"is bad"}]}"#;
        assert_eq!(
            problem_detail(p).as_deref(),
            Some("invalid (a: is bad) [request id r1]")
        );
        assert_eq!(problem_detail(b"not json"), None);
        let o = outcome(StatusCode::TOO_MANY_REQUESTS, "slow down");
        assert_eq!(o.issue.first().code, Coded::Known(IssueType::Throttled));
    }
}

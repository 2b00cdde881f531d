//! Optimistic concurrency: a strong ETag derived from a resource's `version`, and
//! `If-Match` checking (optional; a mismatch is 412).

use axum::http::{header, HeaderMap, HeaderValue};

use crate::error::{AppError, AppResult};

pub fn etag(version: i32) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// The version the client expects, if it sent `If-Match` (`*` matches anything).
pub fn if_match(headers: &HeaderMap) -> AppResult<Option<i32>> {
    let Some(raw) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let raw = raw
        .to_str()
        .map_err(|_| AppError::BadRequest("If-Match is malformed".into()))?
        .trim();
    if raw == "*" {
        return Ok(None);
    }
    let tag = raw
        .split(',')
        .next()
        .unwrap_or("")
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"');
    match tag.parse::<i32>() {
        Ok(v) => Ok(Some(v)),
        // A tag this server never issued cannot match.
        Err(_) => Err(AppError::PreconditionFailed),
    }
}

/// 412 unless `If-Match` is absent or names `current`.
pub fn check(headers: &HeaderMap, current: i32) -> AppResult<()> {
    match if_match(headers)? {
        Some(v) if v != current => Err(AppError::PreconditionFailed),
        _ => Ok(()),
    }
}

//! Optimistic concurrency: a strong ETag derived from a resource's `version`, and
//! `If-Match` checking (optional; a malformed one is 400, one that does not match 412).

use axum::http::{header, HeaderMap, HeaderValue};
use utoipa::IntoParams;

use crate::error::{AppError, AppResult};

/// The `If-Match` header of the operations that honour it.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IfMatch {
    /// `*` or the resource's `ETag` (`"<version>"`), or a comma-separated list of entity
    /// tags (RFC 9110): the change is made only when one of them is the current version
    /// (strong comparison: a weak tag never matches), else 412. Optional.
    #[param(rename = "If-Match", value_type = String, required = false,
        pattern = r#"^[ \t]*(\*|((W/)?"[!#-+\--~]*")?([ \t]*,[ \t]*((W/)?"[!#-+\--~]*")?)*)[ \t]*$"#)]
    if_match: String,
}

pub fn etag(version: i32) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// A 200 with `body` and the ETag of `version`.
pub fn tagged<T: serde::Serialize>(version: i32, body: &T) -> axum::response::Response {
    use axum::response::IntoResponse;
    ([(header::ETAG, etag(version))], axum::Json(body)).into_response()
}

/// What `If-Match` asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Precondition {
    /// No `If-Match`, or `*`: any current version will do.
    Any,
    /// One of these strong entity tags (their opaque text, without quotes).
    OneOf(Vec<String>),
}

/// Reads `If-Match` (RFC 9110: `*` or a list of entity tags); anything else is a 400.
pub fn if_match(headers: &HeaderMap) -> AppResult<Precondition> {
    let Some(raw) = headers.get(header::IF_MATCH) else {
        return Ok(Precondition::Any);
    };
    let malformed = || {
        AppError::BadRequest("If-Match is malformed: send * or entity tags such as \"3\"".into())
    };
    let raw = raw.to_str().map_err(|_| malformed())?;
    let raw = raw.trim_matches([' ', '\t']);
    if raw == "*" {
        return Ok(Precondition::Any);
    }
    let mut strong = Vec::new();
    // A list may hold empty elements (RFC 9110, 5.6.1); an empty list matches nothing.
    for tag in raw.split(',') {
        let tag = tag.trim_matches([' ', '\t']);
        if tag.is_empty() {
            continue;
        }
        let (weak, quoted) = match tag.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, tag),
        };
        let opaque = quoted
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .ok_or_else(malformed)?;
        // etagc: any visible character but the double quote (and the comma, which
        // separates the tags).
        if !opaque
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x2b).contains(&b) || (0x2d..=0x7e).contains(&b))
        {
            return Err(malformed());
        }
        if !weak {
            strong.push(opaque.to_owned());
        }
    }
    Ok(Precondition::OneOf(strong))
}

/// 412 unless `If-Match` is absent, `*`, or names `current` (400 when malformed).
pub fn check(headers: &HeaderMap, current: i32) -> AppResult<()> {
    match if_match(headers)? {
        Precondition::Any => Ok(()),
        Precondition::OneOf(tags) if tags.iter().any(|t| *t == current.to_string()) => Ok(()),
        Precondition::OneOf(_) => Err(AppError::PreconditionFailed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_MATCH,
            HeaderValue::from_str(value).expect("header"),
        );
        h
    }

    #[test]
    fn if_match_follows_rfc_9110() {
        assert!(check(&HeaderMap::new(), 3).is_ok());
        assert!(check(&with("*"), 3).is_ok());
        assert!(check(&with("\"3\""), 3).is_ok());
        assert!(check(&with("\"1\", \"3\""), 3).is_ok());
        for stale in ["\"2\"", "W/\"3\"", "\"abc\"", "\"\"", "", " , "] {
            assert!(
                matches!(check(&with(stale), 3), Err(AppError::PreconditionFailed)),
                "{stale}"
            );
        }
        for malformed in ["3", "\"3", "abc", "\"3\" junk", "\"a\"b\""] {
            assert!(
                matches!(check(&with(malformed), 3), Err(AppError::BadRequest(_))),
                "{malformed}"
            );
        }
    }
}

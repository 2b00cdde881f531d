//! Request extractors whose rejections speak problem+json: JSON bodies (415/413/400/422),
//! query strings (400) and path parameters (400).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::{AppError, FieldError};

/// A JSON request body. Unknown fields are refused by the target type
/// (`#[serde(deny_unknown_fields)]`), wrong types and missing fields are 422 naming the field,
/// and so is a string holding U+0000 anywhere in the body.
pub struct ApiJson<T>(pub T);

fn is_json_content_type(req: &Request) -> bool {
    let Some(ct) = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(&req) {
            return Err(AppError::UnsupportedMediaType(
                "the request body must be JSON with Content-Type: application/json".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    AppError::PayloadTooLarge
                } else {
                    AppError::BadRequest("the request body could not be read".into())
                }
            })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// The message for a string that holds U+0000.
pub const NUL_MESSAGE: &str = "must not contain the NUL character (U+0000)";

/// Parses a JSON document, classifying syntax errors (400) apart from shape errors (422).
/// A string or key holding U+0000 anywhere in the document is a 422 naming it.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    if let Some(field) = nul_in_json(bytes) {
        return Err(AppError::validation(field, NUL_MESSAGE));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let field = if path == "." { String::new() } else { path };
                    let (field, message) = describe_data_error(&field, &inner.to_string());
                    Err(AppError::Validation(vec![FieldError::new(field, message)]))
                }
                _ => Err(AppError::BadRequest(format!(
                    "the request body is not valid JSON (line {}, column {})",
                    inner.line(),
                    inner.column()
                ))),
            }
        }
    }
}

/// Where a JSON document holds U+0000, as a field path (`address.line1`,
/// `medical_alerts[0].description`), if it does.
///
/// PostgreSQL cannot store U+0000 in `text` or `jsonb` and fails the statement (a 500
/// whose error would quote the value), so no such string may reach it: this backstop
/// covers every JSON body, whatever its fields, including free-form ones such as the
/// clinic's settings. A NUL can only be written `\u0000` in JSON (a raw control character
/// in a string is a syntax error), so documents without that escape are not walked.
fn nul_in_json(bytes: &[u8]) -> Option<String> {
    const ESCAPE: &[u8] = b"\\u0000";
    if !bytes.windows(ESCAPE.len()).any(|w| w == ESCAPE) {
        return None;
    }
    // Not a JSON document: the normal parse reports it.
    let doc: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    nul_path(&doc, String::new())
}

fn nul_path(value: &serde_json::Value, path: String) -> Option<String> {
    use serde_json::Value;
    let at = |path: String| if path.is_empty() { "body".into() } else { path };
    match value {
        Value::String(s) if s.contains('\0') => Some(at(path)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_path(v, format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let name = k.replace('\0', "\\u0000");
            let field = if path.is_empty() {
                name
            } else {
                format!("{path}.{name}")
            };
            if k.contains('\0') {
                Some(field)
            } else {
                nul_path(v, field)
            }
        }),
        _ => None,
    }
}

/// Where a query string holds U+0000 (`%00`), as the parameter's name, if it does.
fn nul_in_query(uri: &axum::http::Uri) -> Option<String> {
    // `%00` is the only way to write a NUL in a query string.
    if !uri.query()?.contains("%00") {
        return None;
    }
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri).ok()?;
    pairs
        .into_iter()
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
        .map(|(k, _)| k.replace('\0', "\\u0000").chars().take(64).collect())
}

/// Turns serde's message into a field name and a message that does not echo positions.
fn describe_data_error(path: &str, raw: &str) -> (String, String) {
    let message = raw.split(" at line ").next().unwrap_or(raw).to_owned();
    // serde names missing and unknown fields in the message rather than the path.
    let named = |prefix: &str| -> Option<String> {
        let rest = message.strip_prefix(prefix)?;
        let start = rest.find('`')? + 1;
        let end = rest[start..].find('`')? + start;
        Some(rest[start..end].to_owned())
    };
    let join = |name: String| {
        if path.is_empty() || path == name {
            name
        } else if path.ends_with(&format!(".{name}")) {
            path.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    if let Some(name) = named("missing field ") {
        return (join(name), "is required".into());
    }
    if let Some(name) = named("unknown field ") {
        return (join(name), "is not a known field".into());
    }
    let field = if path.is_empty() {
        "body".to_owned()
    } else {
        path.to_owned()
    };
    (field, message)
}

/// A query string; anything that does not parse, or a value holding U+0000, is a 400
/// naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // As for JSON bodies: no value holding U+0000 reaches the database.
        if let Some(name) = nul_in_query(&parts.uri) {
            return Err(AppError::BadRequest(format!(
                "invalid query parameters: `{name}` {NUL_MESSAGE}"
            )));
        }
        crate::http::query::parse(parts.uri.query()).map(ApiQuery)
    }
}

/// Path parameters; a malformed id is a 400.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|_: PathRejection| {
                AppError::BadRequest("a path parameter is malformed (ids are UUIDs)".into())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Owner {
        email: String,
        age: u8,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        owner: Owner,
    }

    fn field_of(r: Result<Body, AppError>) -> String {
        match r {
            Err(AppError::Validation(errs)) => errs[0].field.clone(),
            other => panic!("expected validation error, got {other:?}"),
        }
    }

    #[test]
    fn syntax_errors_are_bad_requests() {
        assert!(matches!(
            parse_json::<Body>(b"{\"owner\": "),
            Err(AppError::BadRequest(_))
        ));
    }

    #[test]
    fn missing_unknown_and_mistyped_fields_are_named() {
        assert_eq!(
            field_of(parse_json(br#"{"owner": {"age": 3}}"#)),
            "owner.email"
        );
        assert_eq!(
            field_of(parse_json(
                br#"{"owner": {"email": "a", "age": 3, "x": 1}}"#
            )),
            "owner.x"
        );
        assert_eq!(
            field_of(parse_json(br#"{"owner": {"email": "a", "age": "old"}}"#)),
            "owner.age"
        );
        assert_eq!(field_of(parse_json(br#"{}"#)), "owner");
    }

    fn nul_field(json: &[u8]) -> Option<String> {
        match parse_json::<serde_json::Value>(json) {
            Err(AppError::Validation(errs)) => {
                assert_eq!(errs[0].message, NUL_MESSAGE);
                Some(errs[0].field.clone())
            }
            Ok(_) => None,
            Err(other) => panic!("expected a NUL refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_nul_anywhere_in_a_body_is_named() {
        assert_eq!(
            nul_field(br#"{"owner": {"email": "a\u0000b"}}"#).as_deref(),
            Some("owner.email")
        );
        assert_eq!(
            nul_field(br#"{"alerts": [{"d": "x"}, {"d": "\u0000"}]}"#).as_deref(),
            Some("alerts[1].d")
        );
        assert_eq!(
            nul_field(br#"{"settings": {"k\u0000": 1}}"#).as_deref(),
            Some("settings.k\\u0000")
        );
        assert_eq!(nul_field(br#""\u0000""#).as_deref(), Some("body"));
        // An escaped backslash followed by `u0000` is text, not a NUL.
        assert_eq!(nul_field(br#"{"note": "C:\\u0000"}"#), None);
        assert_eq!(
            nul_field(br#"{"note": "\u2400 is a picture of NUL"}"#),
            None
        );
    }

    #[test]
    fn a_nul_in_a_query_string_names_the_parameter() {
        let uri = |s: &str| s.parse::<axum::http::Uri>().expect("uri");
        assert_eq!(nul_in_query(&uri("/p?q=a%00b")).as_deref(), Some("q"));
        assert_eq!(
            nul_in_query(&uri("/p?limit=5&x%00=1")).as_deref(),
            Some("x\\u0000")
        );
        assert_eq!(nul_in_query(&uri("/p?q=%2500")), None);
        assert_eq!(nul_in_query(&uri("/p?q=ann")), None);
        assert_eq!(nul_in_query(&uri("/p")), None);
    }
}

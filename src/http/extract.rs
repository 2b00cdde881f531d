//! Request extractors whose rejections speak problem+json: JSON bodies (415/413/400/422),
//! query strings (400) and path parameters (400).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::{AppError, FieldError};

/// A JSON request body. Unknown fields are refused by the target type
/// (`#[serde(deny_unknown_fields)]`), wrong types and missing fields are 422 naming the field.
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

/// Parses a JSON document, classifying syntax errors (400) apart from shape errors (422).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
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

/// A query string; anything that does not parse is a 400 naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
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
}

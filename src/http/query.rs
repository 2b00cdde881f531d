//! Query strings are parameters with a schema, like path ids: a parameter that does not
//! parse, breaks its schema (a range, a pattern, an enum) or is not one the operation
//! declares is a 400 naming it, before any work. 422 is left to what a schema cannot say
//! (`to` before `from`, an id that is not in the caller's clinic).
//!
//! [`parse`] reads a query into an operation's parameter type (its `Deserialize` refuses
//! what the schema refuses: see [`Limit`], [`SearchText`], [`ActionName`]); [`StrictQuery`]
//! refuses, on every documented route, a parameter name that route does not declare.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

use crate::error::AppError;

/// Parses a query string (`None`: no query) into `T`; any failure is a 400 naming the
/// parameter.
pub fn parse<T: DeserializeOwned>(query: Option<&str>) -> Result<T, AppError> {
    let query = query.unwrap_or("");
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let message = err.into_inner().to_string();
        let detail = if let Some(name) = backticked(&message, "unknown field ") {
            format!("unknown query parameter `{name}`")
        } else if let Some(name) = backticked(&message, "missing field ") {
            format!("the query parameter `{name}` is required")
        } else if let Some(name) = backticked(&message, "duplicate field ") {
            format!("the query parameter `{name}` is given more than once")
        } else if path.is_empty() || path == "." {
            format!("invalid query parameters: {message}")
        } else {
            format!("the query parameter `{path}` {}", as_predicate(&message))
        };
        AppError::BadRequest(detail)
    })
}

/// The name in serde's "unknown field `x`, expected …" and the like.
fn backticked(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    let start = rest.find('`')? + 1;
    let end = rest[start..].find('`')? + start;
    Some(rest[start..end].to_owned())
}

/// Our own messages say what the value must be ("must be 1 to 200"); serde's and the
/// parsers' say what went wrong.
fn as_predicate(message: &str) -> String {
    if message.starts_with("must ") {
        message.to_owned()
    } else {
        format!("is invalid: {message}")
    }
}

/// A page size: 1 to 200 (`limit`; absent means 50).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub u32);

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(d)?;
        if (1..=crate::http::pagination::MAX_LIMIT).contains(&n) {
            Ok(Limit(n))
        } else {
            Err(D::Error::custom(format!(
                "must be 1 to {}",
                crate::http::pagination::MAX_LIMIT
            )))
        }
    }
}

/// The pattern of query text: no control characters.
pub const NO_CONTROL_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";

/// Free text in a query (a search): at most 200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchText(pub String);

pub const SEARCH_MAX_CHARS: usize = 200;

impl<'de> Deserialize<'de> for SearchText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.chars().count() > SEARCH_MAX_CHARS {
            return Err(D::Error::custom(format!(
                "must be at most {SEARCH_MAX_CHARS} characters"
            )));
        }
        if s.chars().any(char::is_control) {
            return Err(D::Error::custom("must not contain control characters"));
        }
        Ok(SearchText(s))
    }
}

/// An audit action, `<resource>.<verb>` (`patient.read`, `auth.login_unknown_email`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionName(pub String);

pub const ACTION_PATTERN: &str = r"^[a-z_]{1,50}\.[a-z_]{1,50}$";

impl<'de> Deserialize<'de> for ActionName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let part = |p: &str| {
            (1..=50).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        };
        match s.split_once('.') {
            Some((resource, verb)) if part(resource) && part(verb) => Ok(ActionName(s)),
            _ => Err(D::Error::custom(
                "must be an action such as patient.read (`<resource>.<verb>`)",
            )),
        }
    }
}

/// The query parameters one operation declares, by its method.
type Declared = Vec<(Method, BTreeSet<String>)>;

/// The query parameters each documented operation declares, by route and method.
#[derive(Clone, Default)]
pub struct StrictQuery {
    declared: Arc<HashMap<String, Declared>>,
}

impl StrictQuery {
    /// From the served OpenAPI document.
    pub fn from_document(doc: &serde_json::Value) -> StrictQuery {
        let mut declared: HashMap<String, Declared> = HashMap::new();
        if let Some(paths) = doc["paths"].as_object() {
            for (path, item) in paths {
                let Some(item) = item.as_object() else {
                    continue;
                };
                for (method, op) in item {
                    let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                    else {
                        continue;
                    };
                    let names = op["parameters"]
                        .as_array()
                        .map(|ps| {
                            ps.iter()
                                .filter(|p| p["in"] == "query")
                                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    declared
                        .entry(path.clone())
                        .or_default()
                        .push((method, names));
                }
            }
        }
        StrictQuery {
            declared: Arc::new(declared),
        }
    }

    /// The first parameter of `query` that `method route` does not declare, if any; routes
    /// the document does not describe are not checked.
    pub fn undeclared(&self, method: &Method, route: &str, query: &str) -> Option<String> {
        let names = self
            .declared
            .get(route)?
            .iter()
            .find_map(|(m, names)| (m == method).then_some(names))?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| !names.contains(k.as_ref()))
            .map(|(k, _)| k.into_owned())
    }

    /// A 400 for a query parameter the matched route does not declare, or for one holding
    /// U+0000 (as `ApiQuery` says it, on routes without one too); `None` when the query is
    /// acceptable or there is none.
    pub fn check(&self, req: &Request) -> Option<Response> {
        let query = req.uri().query()?;
        let route = req.extensions().get::<MatchedPath>()?;
        let nul = form_urlencoded::parse(query.as_bytes())
            .find(|(k, v)| k.contains('\0') || v.contains('\0'));
        if let Some((name, _)) = nul {
            return Some(
                AppError::BadRequest(format!(
                    "invalid query parameters: `{}` {}",
                    name.replace('\0', "\\0"),
                    crate::http::extract::NUL_MESSAGE
                ))
                .into_response(),
            );
        }
        let name = self.undeclared(req.method(), route.as_str(), query)?;
        Some(AppError::BadRequest(format!("unknown query parameter `{name}`")).into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Params {
        limit: Option<Limit>,
        q: Option<SearchText>,
        #[serde(default)]
        flag: bool,
        action: Option<ActionName>,
    }

    fn detail(query: &str) -> String {
        match parse::<Params>(Some(query)) {
            Err(AppError::BadRequest(d)) => d,
            other => panic!("expected a 400 for {query:?}, got {other:?}"),
        }
    }

    #[test]
    fn parameters_within_their_schema_parse() {
        let p: Params =
            parse(Some("limit=200&q=M%C3%BCller&flag=true&action=auth.login")).expect("parses");
        assert_eq!(p.limit, Some(Limit(200)));
        assert!(p.flag);
        let p: Params = parse(None).expect("parses");
        assert_eq!(p.limit, None);
    }

    #[test]
    fn parameters_outside_their_schema_are_named() {
        assert_eq!(
            detail("limit=0"),
            "the query parameter `limit` must be 1 to 200"
        );
        assert_eq!(
            detail("limit=201"),
            "the query parameter `limit` must be 1 to 200"
        );
        assert!(detail("limit=true").starts_with("the query parameter `limit` is invalid"));
        assert!(detail("flag=1").starts_with("the query parameter `flag` is invalid"));
        assert_eq!(detail("nope=1"), "unknown query parameter `nope`");
        assert_eq!(
            detail("limit=1&limit=2"),
            "the query parameter `limit` is given more than once"
        );
        assert!(detail(&format!("q={}", "a".repeat(201))).contains("at most 200"));
        assert!(detail("q=a%00b").contains("control characters"));
        assert!(detail("action=Patient.Read").contains("`action`"));
    }

    #[test]
    fn undeclared_parameters_are_found() {
        let doc = serde_json::json!({"paths": {"/x/{id}": {"get": {"parameters": [
            {"in": "path", "name": "id"}, {"in": "query", "name": "limit"}]}}}});
        let strict = StrictQuery::from_document(&doc);
        let get = Method::GET;
        assert_eq!(strict.undeclared(&get, "/x/{id}", "limit=3"), None);
        assert_eq!(
            strict
                .undeclared(&get, "/x/{id}", "limit=3&id=4")
                .as_deref(),
            Some("id")
        );
        // Percent-encoded names are compared decoded.
        assert_eq!(strict.undeclared(&get, "/x/{id}", "l%69mit=3"), None);
        assert_eq!(strict.undeclared(&get, "/other", "anything=1"), None);
        // A method the document does not describe on a described path is not checked.
        assert_eq!(
            strict.undeclared(&Method::POST, "/x/{id}", "anything=1"),
            None
        );
    }
}

//! `GET /documents/{id}/content`: the content streamed, one byte range of it for large
//! images, every chunk served authenticated before the first byte is sent; content that
//! fails is an error and an audit event, never partial plaintext.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use utoipa::ToSchema;

use super::routes::{documents, readable, sha_etag, DocumentPath};
use super::{ContentError, Row};
use crate::audit::{self, Event};
use crate::auth::Caller;
use crate::error::{AppError, AppResult, Problem};
use crate::http::extract::ApiPath;
use crate::state::AppState;
/// The content (binary, of the document's `content_type`).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct Content(Vec<u8>);

/// What a `Range` header asks for.
enum Wanted {
    All,
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range (RFC 9110); several ranges or another unit get the whole content.
fn wanted(headers: &HeaderMap, size: u64) -> Wanted {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Wanted::All;
    };
    if spec.contains(',') {
        return Wanted::All;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Wanted::All;
    };
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(start), Ok(end)) if start <= end => Some((start, end.min(size - 1))),
        (Ok(start), Err(_)) if b.is_empty() => Some((start, size - 1)),
        (Err(_), Ok(suffix)) if a.is_empty() && suffix > 0 => {
            Some((size.saturating_sub(suffix), size - 1))
        }
        _ => return Wanted::All,
    };
    match range {
        Some((start, end)) if start < size && start <= end => Wanted::Part(start, end),
        _ => Wanted::Unsatisfiable,
    }
}

/// `attachment` with the title as the file name (ASCII fallback and RFC 8187 UTF-8 form).
fn disposition(title: &str, content_type: &str) -> HeaderValue {
    let ext = super::ALLOWED_TYPES
        .iter()
        .find(|(m, _)| *m == content_type)
        .map_or("bin", |(_, e)| e);
    let name = format!("{}.{ext}", title.trim());
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " .-_()".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// The content, streamed; every chunk served is authenticated first. `Range` (one range of
/// bytes) is honoured for large images; `If-None-Match` with the ETag answers 304.
#[utoipa::path(get, path = "/documents/{id}/content", tag = "documents", security(("bearer" = [])),
    params(DocumentPath),
    responses(
        (status = 200, description = "The content, with Content-Type, Content-Length, ETag (its sha256) and Content-Disposition",
            content((Content = "application/octet-stream"), (Content = "image/jpeg"), (Content = "image/png"),
                (Content = "application/pdf"), (Content = "application/dicom"), (Content = "image/tiff"))),
        (status = 206, description = "The requested range", body = Content, content_type = "application/octet-stream"),
        (status = 304, description = "Not modified (If-None-Match matched)"),
        (status = 403, description = "Role may not read this kind", body = Problem),
        (status = 404, description = "No such document in your clinic, or a deleted one", body = Problem),
        (status = 416, description = "The range is outside the content", body = Problem),
        (status = 500, description = "The stored content failed its integrity check (audited)", body = Problem),
        (status = 503, description = "Documents are not enabled, or the store is unavailable", body = Problem)))]
pub async fn get_content(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(DocumentPath { id }): ApiPath<DocumentPath>,
    headers: HeaderMap,
) -> AppResult<Response> {
    let docs = documents(&state)?;
    let row = readable(&state, &caller, id, "document.download").await?;
    let etag = sha_etag(&row.doc.sha256);
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes() || v.as_bytes() == b"*")
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let size = u64::try_from(row.doc.size_bytes).unwrap_or(0);
    let (start, end, status) = match wanted(&headers, size) {
        Wanted::All => (0, size - 1, StatusCode::OK),
        Wanted::Part(a, b) => (a, b, StatusCode::PARTIAL_CONTENT),
        Wanted::Unsatisfiable => {
            let mut res = AppError::RangeNotSatisfiable.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                res.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(res);
        }
    };
    let chunk = super::crypto::CHUNK as u64;
    let chunks = start / chunk..end / chunk + 1;
    // Every chunk is authenticated before the first byte is sent, so a tampered, cut or
    // moved object is an error response, not a partial download.
    let opened = match docs.open(&row).await {
        Ok(o) => o,
        Err(e) => return Err(content_failure(&state, &caller, &row, e).await),
    };
    if let Err(e) = docs.verify(&opened, chunks.clone()).await {
        return Err(content_failure(&state, &caller, &row, e).await);
    }
    let stream = docs
        .chunks(&opened, chunks.clone())
        .await
        .map_err(|e| AppError::Internal(e.into()))?;
    let first = chunks.start * chunk;
    let body = stream.map(move |piece| piece.map_err(std::io::Error::other));
    // Trim the first and last chunks to the range.
    let mut offset = first;
    let body = body.map(move |piece| {
        piece.map(|mut bytes| {
            let from = start.saturating_sub(offset) as usize;
            let until = ((end + 1).saturating_sub(offset) as usize).min(bytes.len());
            offset += bytes.len() as u64;
            bytes.truncate(until);
            bytes.drain(..from.min(bytes.len()));
            bytes::Bytes::from(bytes)
        })
    });
    let mut res = Response::new(Body::from_stream(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&row.doc.content_type)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
    h.insert(header::ETAG, etag);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_DISPOSITION,
        disposition(&row.doc.title, &row.doc.content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(res)
}

/// Content that cannot be served: audited as a failed download naming why, logged, and
/// answered without detail beyond the kind of failure.
async fn content_failure(
    state: &AppState,
    caller: &Caller,
    row: &Row,
    e: ContentError,
) -> AppError {
    let (action, detail) = match &e {
        ContentError::Integrity(_) | ContentError::Missing => (
            "document.integrity_failure",
            "the document's stored content failed its integrity check; it was not served",
        ),
        ContentError::Key(_) => (
            "document.integrity_failure",
            "the document's key is not configured on this server; it was not served",
        ),
        ContentError::Store(_) => ("document.download", ""),
    };
    tracing::error!(document = %row.doc.id, error = %e, "document content could not be served");
    audit::record_failure(
        &state.db,
        &caller.audit(),
        Event::new(action, "document")
            .resource(row.doc.id)
            .patient(row.doc.patient_id)
            .details(serde_json::json!({ "reason": e.to_string() })),
    )
    .await;
    match e {
        ContentError::Store(_) => {
            AppError::Unavailable("the document store is unavailable; retry shortly".into())
        }
        _ => AppError::Integrity(detail.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(spec: &str, size: u64) -> Wanted {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(spec).expect("ascii"));
        wanted(&h, size)
    }

    #[test]
    fn one_range_of_bytes_is_honoured_and_anything_else_is_the_whole() {
        assert!(matches!(range("bytes=0-9", 100), Wanted::Part(0, 9)));
        assert!(matches!(range("bytes=90-200", 100), Wanted::Part(90, 99)));
        assert!(matches!(range("bytes=50-", 100), Wanted::Part(50, 99)));
        assert!(matches!(range("bytes=-10", 100), Wanted::Part(90, 99)));
        assert!(matches!(range("bytes=-500", 100), Wanted::Part(0, 99)));
        assert!(matches!(range("bytes=100-", 100), Wanted::Unsatisfiable));
        assert!(matches!(range("bytes=0-1,5-6", 100), Wanted::All));
        assert!(matches!(range("items=0-1", 100), Wanted::All));
        assert!(matches!(range("bytes=9-1", 100), Wanted::All));
        assert!(matches!(range("bytes=-0", 100), Wanted::All));
        assert!(matches!(wanted(&HeaderMap::new(), 100), Wanted::All));
    }

    #[test]
    fn the_download_name_is_the_title_with_the_types_extension() {
        let d = disposition("Röntgen 36/37 \"final\"", "application/dicom");
        assert_eq!(
            d.to_str().expect("ascii"),
            "attachment; filename=\"R_ntgen 36_37 _final_.dcm\"; \
             filename*=UTF-8''R%C3%B6ntgen%2036%2F37%20%22final%22.dcm"
        );
    }
}

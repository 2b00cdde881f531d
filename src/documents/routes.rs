//! `/patients/{id}/documents` and `/documents/{id}`: upload, list, describe, download and
//! delete. Every read is audited; content that fails its integrity check is an error and
//! an audit event, never partial plaintext.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::NaiveDate;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;
use uuid::Uuid;

use super::content::{__path_get_content, get_content};
use super::upload::{self, Form};
use super::{Document, Documents, Kind, Row};
use crate::audit::{self, Event};
use crate::auth::{Caller, Permission, NOT_PERMITTED};
use crate::error::{AppError, AppResult, Problem};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use crate::http::idempotency::{self, Created, IdempotencyKey};
use crate::http::pagination::{self, Page};
use crate::http::query::Limit;
use crate::patients::routes::PatientPath;
use crate::state::AppState;
use crate::validate::Errors;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_documents))
        // The upload's size is bounded by MAX_UPLOAD_MB while it streams (see
        // http::limits), not by the JSON body limit.
        .routes(routes!(upload_document).layer(DefaultBodyLimit::disable()))
        .routes(routes!(get_document, delete_document))
        .routes(routes!(get_content))
}

/// The route whose body may be as large as `MAX_UPLOAD_MB` (see `http::limits`).
pub const UPLOAD_ROUTE: &str = "/api/v2/patients/{id}/documents";
/// The download, which has the upload's time limit (see `http::limits`).
pub const CONTENT_ROUTE: &str = "/api/v2/documents/{id}/content";

pub(super) fn documents(state: &AppState) -> AppResult<&Documents> {
    state.documents.as_deref().ok_or_else(|| {
        AppError::Unavailable(
            "documents are not enabled on this server (FILE_ENCRYPTION_KEY is not set)".into(),
        )
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DocumentPath {
    /// The document's id.
    pub(super) id: Uuid,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DocumentParams {
    /// Only documents of this kind.
    kind: Option<Kind>,
    /// Page size (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200, default = 50)]
    limit: Option<Limit>,
    /// The `next_cursor` of the previous page.
    #[param(min_length = 1, pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

/// A patient's documents, newest first; a role that reads only forms (consent, referral)
/// sees only those.
#[utoipa::path(get, path = "/patients/{id}/documents", tag = "documents", security(("bearer" = [])),
    params(PatientPath, DocumentParams),
    responses(
        (status = 200, description = "A page of documents", body = Page<Document>),
        (status = 400, description = "Malformed parameters or cursor", body = Problem),
        (status = 403, description = "Role reads no documents", body = Problem),
        (status = 404, description = "No such patient in your clinic", body = Problem)))]
pub async fn list_documents(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(PatientPath { id }): ApiPath<PatientPath>,
    ApiQuery(p): ApiQuery<DocumentParams>,
) -> AppResult<Json<Page<Document>>> {
    let event = || Event::new("document.list", "document").patient(id);
    let mut kinds = super::readable_kinds(&caller);
    if kinds.is_empty() {
        return Err(caller.deny(&state, event(), NOT_PERMITTED).await);
    }
    if let Some(k) = p.kind {
        kinds.retain(|x| x == k.as_str());
    }
    let limit = pagination::limit(p.limit)?;
    let before = state.cursors.decode_opt(p.cursor.as_deref())?;
    let mut tx = crate::patients::begin_on(&state, &caller, id, Permission::DocumentsRead).await?;
    let docs = super::list(&mut tx, id, &kinds, before, pagination::overfetch(limit)).await?;
    let ids: Vec<Uuid> = docs.iter().take(limit as usize).map(|d| d.id).collect();
    audit::record(&mut tx, &caller.audit(), event().ids(ids)).await?;
    tx.commit().await?;
    Ok(Json(
        state
            .cursors
            .page(docs, limit, |d: &Document| (d.created_at, d.id)),
    ))
}

/// The upload form (`multipart/form-data`; fields in any order).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The file: JPEG, PNG, PDF, DICOM or TIFF, recognised from its bytes; at most
    /// `MAX_UPLOAD_MB`.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    kind: Kind,
    /// 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    title: String,
    /// When the image was taken or the form signed (`YYYY-MM-DD`).
    #[schema(value_type = Option<String>, format = Date)]
    taken_on: Option<NaiveDate>,
}

/// Uploads a document for a patient (streamed; encrypted at rest). Consent forms and
/// referral letters need `documents.forms` or `documents.write`; other kinds
/// `documents.write`.
#[utoipa::path(post, path = "/patients/{id}/documents", tag = "documents", security(("bearer" = [])),
    params(PatientPath, IdempotencyKey),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored", body = Document, headers(("Location" = String))),
        (status = 400, description = "A malformed multipart body", body = Problem),
        (status = 403, description = "Role may not upload this kind", body = Problem),
        (status = 404, description = "No such patient in your clinic", body = Problem),
        (status = 413, description = "The file is larger than MAX_UPLOAD_MB", body = Problem),
        (status = 415, description = "Not multipart/form-data, or a file that is not JPEG, PNG, PDF, DICOM or TIFF", body = Problem),
        (status = 422, description = "A missing or invalid field", body = Problem),
        (status = 503, description = "Documents are not enabled, or the store is unavailable", body = Problem)))]
pub async fn upload_document(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(PatientPath { id: patient }): ApiPath<PatientPath>,
    request: Request,
) -> AppResult<Response> {
    let event = || Event::new("document.upload", "document").patient(patient);
    if !caller.can(Permission::DocumentsWrite) && !caller.can(Permission::DocumentsForms) {
        return Err(caller.deny(&state, event(), NOT_PERMITTED).await);
    }
    let docs = documents(&state)?;
    // The patient is confirmed before any byte is stored.
    {
        let tx =
            crate::patients::begin_on(&state, &caller, patient, Permission::DocumentsWrite).await?;
        tx.rollback().await?;
    }
    let is_form_data = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("multipart/form-data"));
    if !is_form_data {
        return Err(AppError::UnsupportedMediaType(
            "send the document as multipart/form-data".into(),
        ));
    }
    let headers = request.headers().clone();
    let multipart = axum::extract::Multipart::from_request(request, &state)
        .await
        .map_err(|_| AppError::BadRequest("the multipart/form-data body has no boundary".into()))?;
    let mut form = upload::receive(docs, caller.clinic_id, multipart).await?;
    let Some(stored) = form.file.take() else {
        return Err(AppError::validation("file", "is required"));
    };
    let id = stored.id;
    let result = record(&state, &caller, &headers, patient, form, stored).await;
    match result {
        Ok((response, true)) => Ok(response),
        Ok((response, false)) => {
            // A replay of an earlier upload: this copy is not needed.
            upload::discard(docs, caller.clinic_id, id).await;
            Ok(response)
        }
        Err(e) => {
            upload::discard(docs, caller.clinic_id, id).await;
            if let AppError::Forbidden(_) = e {
                return Err(caller.deny(&state, event(), NOT_PERMITTED).await);
            }
            Err(e)
        }
    }
}

/// Validates the form and writes the row (under the request's Idempotency-Key); the bool
/// says whether this request's stored file is the one recorded.
async fn record(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    patient: Uuid,
    form: Form,
    stored: upload::Stored,
) -> AppResult<(Response, bool)> {
    let mut errors = Errors::default();
    let kind = match form.kind.as_deref().map(str::trim) {
        None | Some("") => {
            errors.add("kind", "is required");
            None
        }
        Some(k) => Kind::parse(k).or_else(|| {
            errors.add(
                "kind",
                "must be xray, photo, consent, referral, lab or other",
            );
            None
        }),
    };
    let title = match form.title.as_deref() {
        None => {
            errors.add("title", "is required");
            String::new()
        }
        Some(t) => errors.text("title", t, 200),
    };
    // Absent is no date; present, it must be one (an empty field is not).
    let taken_on = match form.taken_on.as_deref() {
        None => None,
        Some(d) => match NaiveDate::parse_from_str(d, "%Y-%m-%d") {
            Ok(d) if crate::validate::storable_date(d) => Some(d),
            _ => {
                errors.add("taken_on", "must be a date as YYYY-MM-DD");
                None
            }
        },
    };
    errors.finish()?;
    let Some(kind) = kind else {
        return Err(AppError::validation("kind", "is required"));
    };
    if !super::may_write(caller, kind) {
        return Err(AppError::Forbidden(NOT_PERMITTED.into()));
    }

    // The same key with the same form and file replays; the file counts by its hash.
    let mut hash = Sha256::new();
    hash.update(format!("POST /api/v2/patients/{patient}/documents\n").as_bytes());
    for part in [
        kind.as_str(),
        &title,
        &taken_on.map(|d| d.to_string()).unwrap_or_default(),
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.update(stored.sha256.as_bytes());
    let hash = hash.finalize().to_vec();

    let recorded = Arc::new(AtomicBool::new(false));
    let flag = recorded.clone();
    let response = idempotency::run(state, caller, headers, &hash, || async move {
        let mut tx =
            crate::patients::begin_on(state, caller, patient, Permission::DocumentsWrite).await?;
        let doc = super::insert(
            &mut tx,
            super::NewRow {
                clinic_id: caller.clinic_id,
                id: stored.id,
                patient_id: patient,
                kind,
                title: &title,
                content_type: stored.content_type,
                size_bytes: i64::try_from(stored.size).unwrap_or(i64::MAX),
                sha256: &stored.sha256,
                taken_on,
                key_id: &stored.key_id,
                wrapped_key: &stored.wrapped_key,
                created_by: caller.user_id,
            },
        )
        .await?;
        audit::record(
            &mut tx,
            &caller.audit(),
            Event::new("document.upload", "document")
                .patient(patient)
                .resource(doc.id)
                .details(serde_json::json!({
                    "kind": kind.as_str(),
                    "content_type": doc.content_type,
                    "size_bytes": doc.size_bytes,
                    "sha256": doc.sha256,
                })),
        )
        .await?;
        flag.store(true, Ordering::SeqCst);
        Ok((
            tx,
            Created {
                location: format!("/api/v2/documents/{}", doc.id),
                version: None,
                value: doc,
            },
        ))
    })
    .await?;
    Ok((response, recorded.load(Ordering::SeqCst)))
}

/// Loads a document the caller may read (404 for another clinic's or a deleted one, 403
/// for a kind their role does not read), with the read audited in the same transaction.
pub(super) async fn readable(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    action: &'static str,
) -> AppResult<Row> {
    let event = || Event::new(action, "document").resource(id);
    if !caller.can(Permission::DocumentsRead) && !caller.can(Permission::DocumentsForms) {
        return Err(caller.deny(state, event(), NOT_PERMITTED).await);
    }
    let mut tx = caller.begin(state).await?;
    let row = super::load(&mut tx, id).await?;
    if !super::may_read(caller, row.doc.kind) {
        tx.rollback().await?;
        return Err(caller
            .deny(state, event().patient(row.doc.patient_id), NOT_PERMITTED)
            .await);
    }
    audit::record(
        &mut tx,
        &caller.audit(),
        event().patient(row.doc.patient_id),
    )
    .await?;
    tx.commit().await?;
    Ok(row)
}

pub(super) fn sha_etag(sha256: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{sha256}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// A document's description.
#[utoipa::path(get, path = "/documents/{id}", tag = "documents", security(("bearer" = [])),
    params(DocumentPath),
    responses(
        (status = 200, description = "The document's description (its ETag is the content's sha256)", body = Document),
        (status = 403, description = "Role may not read this kind", body = Problem),
        (status = 404, description = "No such document in your clinic, or a deleted one", body = Problem)))]
pub async fn get_document(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(DocumentPath { id }): ApiPath<DocumentPath>,
) -> AppResult<Response> {
    let row = readable(&state, &caller, id, "document.read").await?;
    Ok(([(header::ETAG, sha_etag(&row.doc.sha256))], Json(row.doc)).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteDocument {
    /// Why it is removed (e.g. filed under the wrong patient); 1 to 500 characters.
    #[schema(schema_with = crate::validate::schema::text_500)]
    reason: String,
}

/// Deletes a document: hidden from lists and reads at once, its content kept for
/// `DOCUMENT_RETENTION_DAYS` and then removed by `molar documents purge`.
#[utoipa::path(delete, path = "/documents/{id}", tag = "documents", security(("bearer" = [])),
    params(DocumentPath),
    request_body = DeleteDocument,
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Role may not delete this kind", body = Problem),
        (status = 404, description = "No such document in your clinic, or a deleted one", body = Problem),
        (status = 422, description = "A missing or too long reason", body = Problem)))]
pub async fn delete_document(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(DocumentPath { id }): ApiPath<DocumentPath>,
    ApiJson(body): ApiJson<DeleteDocument>,
) -> AppResult<StatusCode> {
    let event = || Event::new("document.delete", "document").resource(id);
    if !caller.can(Permission::DocumentsWrite) && !caller.can(Permission::DocumentsForms) {
        return Err(caller.deny(&state, event(), NOT_PERMITTED).await);
    }
    let mut errors = Errors::default();
    let reason = errors.text("reason", &body.reason, 500);
    errors.finish()?;
    let mut tx = caller.begin(&state).await?;
    let row = sqlx::query!(
        r#"SELECT patient_id, kind FROM documents WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"#,
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AppError::not_found("document"))?;
    let kind = Kind::parse(&row.kind).unwrap_or(Kind::Other);
    if !super::may_write(&caller, kind) {
        tx.rollback().await?;
        return Err(caller
            .deny(&state, event().patient(row.patient_id), NOT_PERMITTED)
            .await);
    }
    sqlx::query!(
        "UPDATE documents SET deleted_at = now(), deleted_by = $2, delete_reason = $3 WHERE id = $1",
        id,
        caller.user_id,
        reason
    )
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &caller.audit(),
        event()
            .patient(row.patient_id)
            .details(serde_json::json!({ "reason": reason })),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

//! Receiving an upload: the `multipart/form-data` body is read field by field; the file's
//! bytes go from the socket through the sealer into the store part by part, so memory
//! does not grow with the file. The content type is recognised from the first bytes.

use axum::extract::multipart::{Field, MultipartError};
use axum::extract::Multipart;
use axum::http::StatusCode;
use uuid::Uuid;

use super::crypto::{ChunkCipher, DataKey, Sealer};
use super::store::{DocumentStore, Upload};
use super::Documents;
use crate::error::{AppError, AppResult};

/// Bytes looked at to recognise the type (DICOM's marker is at byte 128).
const SNIFF_BYTES: usize = 4096;
/// Longest text field accepted.
const TEXT_FIELD_BYTES: usize = 2048;

/// The form's fields as sent, and the stored file.
#[derive(Default)]
pub struct Form {
    pub kind: Option<String>,
    pub title: Option<String>,
    pub taken_on: Option<String>,
    pub file: Option<Stored>,
}

/// A file whose sealed content is complete in the store.
pub struct Stored {
    pub id: Uuid,
    pub content_type: &'static str,
    pub size: u64,
    pub sha256: String,
    pub key_id: String,
    pub wrapped_key: Vec<u8>,
    /// The name the client gave the file, if any (used for the download's name when the
    /// form has no title).
    pub file_name: Option<String>,
}

fn multipart_error(e: MultipartError) -> AppError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::PayloadTooLarge
    } else {
        AppError::BadRequest("the multipart/form-data body is malformed or ended early".into())
    }
}

/// Reads every field. On any error, a file already stored is removed again.
pub async fn receive(docs: &Documents, clinic: Uuid, mut multipart: Multipart) -> AppResult<Form> {
    let mut form = Form::default();
    let result = read_fields(docs, clinic, &mut multipart, &mut form).await;
    if let Err(e) = result {
        if let Some(stored) = form.file.take() {
            discard(docs, clinic, stored.id).await;
        }
        return Err(e);
    }
    Ok(form)
}

/// Removes a stored file that will not be recorded.
pub async fn discard(docs: &Documents, clinic: Uuid, id: Uuid) {
    if let Err(e) = docs.store.delete(&DocumentStore::path(clinic, id)).await {
        tracing::warn!(error = %e, document = %id, "could not remove unrecorded document content; the sweep will");
    }
}

async fn read_fields(
    docs: &Documents,
    clinic: Uuid,
    multipart: &mut Multipart,
    form: &mut Form,
) -> AppResult<()> {
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        let slot = match name.as_str() {
            "kind" => &mut form.kind,
            "title" => &mut form.title,
            "taken_on" => &mut form.taken_on,
            "file" => {
                if form.file.is_some() {
                    return Err(AppError::validation("file", "send one file per document"));
                }
                form.file = Some(store_file(docs, clinic, field).await?);
                continue;
            }
            _ => {
                return Err(AppError::validation(
                    if name.is_empty() { "(unnamed)" } else { &name },
                    "not a field of this form (file, kind, title, taken_on)",
                ))
            }
        };
        if slot.is_some() {
            return Err(AppError::validation(&name, "sent more than once"));
        }
        *slot = Some(text(field, &name).await?);
    }
    Ok(())
}

async fn text(mut field: Field<'_>, name: &str) -> AppResult<String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if bytes.len() + chunk.len() > TEXT_FIELD_BYTES {
            return Err(AppError::validation(name, "is too long"));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| AppError::validation(name, "must be UTF-8 text"))
}

/// Streams the file field into the store, sealed; 415 for a type not recognised, 413 past
/// `MAX_UPLOAD_MB` (and nothing left behind either way).
async fn store_file(docs: &Documents, clinic: Uuid, mut field: Field<'_>) -> AppResult<Stored> {
    let file_name = field.file_name().map(str::to_owned);
    // The first bytes decide the type before anything is stored.
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    let mut ended = false;
    while head.len() < SNIFF_BYTES {
        match field.chunk().await.map_err(multipart_error)? {
            Some(chunk) => head.extend_from_slice(&chunk),
            None => {
                ended = true;
                break;
            }
        }
    }
    if head.is_empty() {
        return Err(AppError::validation("file", "is empty"));
    }
    let content_type = super::sniff(&head).ok_or_else(|| {
        AppError::UnsupportedMediaType(
            "the file is not a JPEG, PNG, PDF, DICOM or TIFF file (recognised from its bytes, \
             not its name or declared type)"
                .into(),
        )
    })?;

    let id = Uuid::now_v7();
    let key = DataKey::random();
    let (cipher, header) = ChunkCipher::create(&key, clinic, id);
    let (key_id, wrapped_key) = docs.keys.wrap(clinic, id, &key);
    let mut upload = docs
        .store
        .begin(&DocumentStore::path(clinic, id))
        .await
        .map_err(store_unavailable)?;
    let mut sealer = Sealer::new(cipher);
    let streamed = async {
        upload.write(header).await.map_err(store_unavailable)?;
        let mut next = Some(head);
        while let Some(bytes) = next.take() {
            if sealer.size() + bytes.len() as u64 > docs.max_upload_bytes {
                return Err(AppError::PayloadTooLarge);
            }
            for chunk in sealer
                .push(&bytes)
                .map_err(|e| AppError::Internal(e.into()))?
            {
                upload.write(chunk).await.map_err(store_unavailable)?;
            }
            if !ended {
                match field.chunk().await.map_err(multipart_error)? {
                    Some(b) => next = Some(b.to_vec()),
                    None => ended = true,
                }
            }
        }
        Ok::<(), AppError>(())
    }
    .await;
    if let Err(e) = streamed {
        upload.abort().await;
        return Err(e);
    }
    let (last, size, sha256) = sealer.finish().map_err(|e| AppError::Internal(e.into()))?;
    if let Err(e) = write_last(&mut upload, last).await {
        upload.abort().await;
        return Err(e);
    }
    upload.finish().await.map_err(store_unavailable)?;
    Ok(Stored {
        id,
        content_type,
        size,
        sha256,
        key_id,
        wrapped_key,
        file_name,
    })
}

async fn write_last(upload: &mut Upload, last: Vec<u8>) -> AppResult<()> {
    upload.write(last).await.map_err(store_unavailable)
}

pub fn store_unavailable(e: object_store::Error) -> AppError {
    tracing::error!(error = %e, "the document store failed");
    AppError::Unavailable("the document store is unavailable; retry shortly".into())
}

//! Medical-record documents: x-rays, photos, consent forms, referral and lab letters,
//! streamed in and out, encrypted at rest per document (see [`crypto`]), kept in a shared
//! store (see [`store`]), described by a row that is written only once the content is
//! complete.

pub mod content;
pub mod crypto;
pub mod maintenance;
pub mod routes;
pub mod store;
pub mod upload;

use std::ops::Range;

use chrono::{DateTime, NaiveDate, Utc};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{Caller, Permission};
use crate::config::Config;
use crate::db::Tx;
use crate::error::{AppError, AppResult};
use crypto::{ChunkCipher, IntegrityError, Keyring, Layout, UnwrapError, HEADER};
use store::DocumentStore;

/// What a document is. Consent forms and referral letters are the front desk's paperwork;
/// the others are clinical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Xray,
    Photo,
    Consent,
    Referral,
    Lab,
    Other,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Xray,
        Kind::Photo,
        Kind::Consent,
        Kind::Referral,
        Kind::Lab,
        Kind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Xray => "xray",
            Kind::Photo => "photo",
            Kind::Consent => "consent",
            Kind::Referral => "referral",
            Kind::Lab => "lab",
            Kind::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Paperwork the front desk handles (`documents.forms`).
    pub fn is_form(self) -> bool {
        matches!(self, Kind::Consent | Kind::Referral)
    }
}

/// Whether the caller may read documents of this kind: clinical kinds need
/// `documents.read`, forms `documents.read` or `documents.forms`.
pub fn may_read(caller: &Caller, kind: Kind) -> bool {
    caller.can(Permission::DocumentsRead)
        || (kind.is_form() && caller.can(Permission::DocumentsForms))
}

/// Whether the caller may upload or delete documents of this kind.
pub fn may_write(caller: &Caller, kind: Kind) -> bool {
    caller.can(Permission::DocumentsWrite)
        || (kind.is_form() && caller.can(Permission::DocumentsForms))
}

/// The kinds the caller may read (what their lists show).
pub fn readable_kinds(caller: &Caller) -> Vec<String> {
    Kind::ALL
        .into_iter()
        .filter(|k| may_read(caller, *k))
        .map(|k| k.as_str().to_owned())
        .collect()
}

/// Content types recognised from the bytes themselves, and the file name extension each
/// is downloaded with.
pub const ALLOWED_TYPES: [(&str, &str); 5] = [
    ("image/jpeg", "jpg"),
    ("image/png", "png"),
    ("application/pdf", "pdf"),
    ("application/dicom", "dcm"),
    ("image/tiff", "tif"),
];

/// The allowed content type of a file's first bytes, if it is one.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    let found = infer::get(head)?.mime_type();
    ALLOWED_TYPES
        .iter()
        .find(|(mime, _)| *mime == found)
        .map(|(mime, _)| *mime)
}

/// A document's description, as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Document {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub kind: Kind,
    pub title: String,
    /// Recognised from the file's bytes: `image/jpeg`, `image/png`, `application/pdf`,
    /// `application/dicom` or `image/tiff`.
    pub content_type: String,
    pub size_bytes: i64,
    /// Hex SHA-256 of the content (also its `ETag`).
    pub sha256: String,
    pub taken_on: Option<NaiveDate>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
}

/// A document's row, with its wrapped key.
pub struct Row {
    pub clinic_id: Uuid,
    pub doc: Document,
    pub key_id: String,
    pub wrapped_key: Vec<u8>,
}

struct RawRow {
    clinic_id: Uuid,
    id: Uuid,
    patient_id: Uuid,
    kind: String,
    title: String,
    content_type: String,
    size_bytes: i64,
    sha256: String,
    taken_on: Option<NaiveDate>,
    created_by: Uuid,
    created_at: DateTime<Utc>,
    key_id: String,
    wrapped_key: Vec<u8>,
}

impl RawRow {
    fn into_row(self) -> Row {
        Row {
            clinic_id: self.clinic_id,
            doc: Document {
                id: self.id,
                patient_id: self.patient_id,
                // The table's check admits only these words.
                kind: Kind::parse(&self.kind).unwrap_or(Kind::Other),
                title: self.title,
                content_type: self.content_type,
                size_bytes: self.size_bytes,
                sha256: self.sha256,
                taken_on: self.taken_on,
                created_by: self.created_by,
                created_at: self.created_at,
            },
            key_id: self.key_id,
            wrapped_key: self.wrapped_key,
        }
    }
}

/// A live (not deleted) document of the transaction's clinic, or 404.
pub async fn load(tx: &mut Tx, id: Uuid) -> AppResult<Row> {
    sqlx::query_as!(
        RawRow,
        "SELECT clinic_id, id, patient_id, kind, title, content_type, size_bytes, sha256, taken_on, \
                created_by, created_at, key_id, wrapped_key \
         FROM documents WHERE id = $1 AND deleted_at IS NULL",
        id
    )
    .fetch_optional(&mut **tx)
    .await?
    .map(RawRow::into_row)
    .ok_or_else(|| AppError::not_found("document"))
}

/// What a new document's row holds.
pub struct NewRow<'a> {
    pub clinic_id: Uuid,
    pub id: Uuid,
    pub patient_id: Uuid,
    pub kind: Kind,
    pub title: &'a str,
    pub content_type: &'a str,
    pub size_bytes: i64,
    pub sha256: &'a str,
    pub taken_on: Option<NaiveDate>,
    pub key_id: &'a str,
    pub wrapped_key: &'a [u8],
    pub created_by: Uuid,
}

/// Records a document whose content is complete in the store.
pub async fn insert(tx: &mut Tx, new: NewRow<'_>) -> AppResult<Document> {
    let row = sqlx::query_as!(
        RawRow,
        "INSERT INTO documents (clinic_id, id, patient_id, kind, title, content_type, size_bytes, \
                                sha256, taken_on, key_id, wrapped_key, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         RETURNING clinic_id, id, patient_id, kind, title, content_type, size_bytes, sha256, taken_on, \
                   created_by, created_at, key_id, wrapped_key",
        new.clinic_id,
        new.id,
        new.patient_id,
        new.kind.as_str(),
        new.title,
        new.content_type,
        new.size_bytes,
        new.sha256,
        new.taken_on,
        new.key_id,
        new.wrapped_key,
        new.created_by
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(row.into_row().doc)
}

/// A patient's live documents of the given kinds, newest first, after `before`.
pub async fn list(
    tx: &mut Tx,
    patient: Uuid,
    kinds: &[String],
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> AppResult<Vec<Document>> {
    let (before_at, before_id) = before.unzip();
    let rows = sqlx::query_as!(
        RawRow,
        "SELECT clinic_id, id, patient_id, kind, title, content_type, size_bytes, sha256, taken_on, \
                created_by, created_at, key_id, wrapped_key \
         FROM documents \
         WHERE patient_id = $1 AND deleted_at IS NULL AND kind = ANY($2) \
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
         ORDER BY created_at DESC, id DESC LIMIT $5",
        patient,
        kinds,
        before_at,
        before_id,
        limit
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|r| r.into_row().doc).collect())
}

/// Documents as this server runs them: the keys and the store.
pub struct Documents {
    pub keys: Keyring,
    pub store: DocumentStore,
    pub max_upload_bytes: u64,
}

/// The key every development and test server uses when `FILE_ENCRYPTION_KEY` is not set,
/// so that documents survive a restart there; production never uses it.
const DEVELOPMENT_KEY: [u8; 32] = *b"molar development documents key!";

impl Documents {
    /// Documents are on when a key is configured, and always outside production (with the
    /// development key when none is set).
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Documents>> {
        let current = match &config.file_encryption_key {
            Some(k) => crypto::decode_key(k.expose_secret())
                .map_err(|why| anyhow::anyhow!("FILE_ENCRYPTION_KEY {why}"))?,
            None if config.is_production() => return Ok(None),
            None => {
                tracing::warn!(
                    "FILE_ENCRYPTION_KEY is not set: documents are encrypted under the \
                     development key, which is not secret"
                );
                DEVELOPMENT_KEY
            }
        };
        let previous = config
            .file_encryption_keys
            .iter()
            .map(|k| crypto::decode_key(k.expose_secret()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| anyhow::anyhow!("FILE_ENCRYPTION_KEYS entry {why}"))?;
        Ok(Some(Documents {
            keys: Keyring::new(&current, &previous),
            store: DocumentStore::from_config(config)?,
            max_upload_bytes: u64::from(config.max_upload_mb) * 1024 * 1024,
        }))
    }
}

/// Why stored content could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("the stored content failed its integrity check: {0}")]
    Integrity(&'static str),
    #[error("the stored content is missing")]
    Missing,
    #[error("{0}")]
    Key(String),
    #[error("the document store failed: {0}")]
    Store(#[from] object_store::Error),
}

impl From<IntegrityError> for ContentError {
    fn from(e: IntegrityError) -> Self {
        ContentError::Integrity(e.0)
    }
}

/// A stored document ready to be read: its cipher and where its chunks are.
pub struct Opened {
    cipher: std::sync::Arc<ChunkCipher>,
    pub layout: Layout,
    path: object_store::path::Path,
}

impl Documents {
    /// Opens a document's data key and its object's header, checking the object's length.
    pub async fn open(&self, row: &Row) -> Result<Opened, ContentError> {
        let id = row.doc.id;
        let key = self
            .keys
            .unwrap(row.clinic_id, id, &row.key_id, &row.wrapped_key)
            .map_err(|e| match e {
                UnwrapError::UnknownKey(_) => ContentError::Key(e.to_string()),
                UnwrapError::Integrity => {
                    ContentError::Integrity("the wrapped data key does not open")
                }
            })?;
        let layout = Layout {
            size: u64::try_from(row.doc.size_bytes).unwrap_or(0),
        };
        let path = DocumentStore::path(row.clinic_id, id);
        match self.store.len(&path).await? {
            None => return Err(ContentError::Missing),
            Some(n) if n != layout.stored_len() => {
                return Err(ContentError::Integrity(
                    "the stored object's length does not match the document",
                ))
            }
            Some(_) => {}
        }
        let header = self.store.read(&path, 0..HEADER as u64).await?;
        let mut pieces = store::rechunk(header, std::iter::once(HEADER));
        let header = match pieces.next().await {
            Some(Ok(h)) => h,
            _ => return Err(ContentError::Integrity("the stored object has no header")),
        };
        let cipher = ChunkCipher::open_header(&key, row.clinic_id, id, &header)?;
        Ok(Opened {
            cipher: std::sync::Arc::new(cipher),
            layout,
            path,
        })
    }

    /// The plaintext of chunks `chunks`, each opened and authenticated before it is
    /// yielded; the stream ends with an error at the first chunk that does not open.
    pub async fn chunks(
        &self,
        opened: &Opened,
        chunks: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Vec<u8>, ContentError>>, ContentError> {
        let layout = opened.layout;
        let bytes = layout.chunk_range(chunks.start).start..layout.chunk_range(chunks.end - 1).end;
        let raw = self.store.read(&opened.path, bytes).await?;
        let sizes = chunks
            .clone()
            .map(move |i| layout.plain_len(i) + crypto::TAG);
        let cipher = opened.cipher.clone();
        let mut index = chunks.start;
        Ok(store::rechunk(raw, sizes)
            .map(move |piece| {
                let i = index;
                index += 1;
                let mut chunk = piece.map_err(|_| {
                    ContentError::Integrity("the stored object ended early or could not be read")
                })?;
                cipher.open(i, layout.is_last(i), &mut chunk)?;
                Ok(chunk)
            })
            .boxed())
    }

    /// Authenticates chunks `chunks` without keeping their plaintext.
    pub async fn verify(&self, opened: &Opened, chunks: Range<u64>) -> Result<(), ContentError> {
        let mut stream = self.chunks(opened, chunks).await?;
        while let Some(chunk) = stream.next().await {
            chunk?;
        }
        Ok(())
    }
}

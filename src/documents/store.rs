//! Where document content lives: local files under `MEDICAL_RECORDS_STORAGE_PATH` (one
//! folder per clinic) or an S3-compatible bucket named by `DOCUMENT_STORE_URL`, both through
//! `object_store`. Objects are written as multipart uploads, which become visible only when
//! complete (a local upload is staged and renamed; an S3 multipart upload is committed), so
//! a crash mid-upload leaves no object under the document's name.

use std::ops::Range;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, WriteMultipart};
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::config::Config;

/// Local uploads are written in parts of this size; S3 needs at least 5 MiB per part.
const LOCAL_PART: usize = 1024 * 1024;
const S3_PART: usize = 5 * 1024 * 1024;
/// Parts in flight at once per upload: memory per upload is about this many parts.
const PARTS_IN_FLIGHT: usize = 2;

#[derive(Clone)]
pub struct DocumentStore {
    inner: Arc<dyn ObjectStore>,
    part_size: usize,
    /// For logs and the start-up check: `local` or `s3`, never credentials.
    pub kind: &'static str,
    local_root: Option<std::path::PathBuf>,
}

impl DocumentStore {
    pub fn from_config(config: &Config) -> anyhow::Result<DocumentStore> {
        match &config.document_store_url {
            Some(url) => {
                // `s3://bucket/prefix`: the prefix is a folder inside the bucket.
                let rest = url.strip_prefix("s3://").unwrap_or(url);
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let mut builder =
                    object_store::aws::AmazonS3Builder::new().with_bucket_name(bucket);
                // Every AWS_* variable the S3 client knows; others (AWS_PROFILE, or what a
                // platform injects) are not its business.
                for (name, value) in &config.document_store_options {
                    match name
                        .to_ascii_lowercase()
                        .parse::<object_store::aws::AmazonS3ConfigKey>()
                    {
                        Ok(key) => builder = builder.with_config(key, value.expose_secret()),
                        Err(_) => {
                            tracing::debug!(variable = %name, "not an S3 client setting; ignored")
                        }
                    }
                }
                let store = builder
                    .build()
                    .context("DOCUMENT_STORE_URL does not name a usable S3 bucket")?;
                let prefix = prefix.trim_matches('/');
                let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    Arc::new(store)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
                };
                Ok(DocumentStore {
                    inner,
                    part_size: S3_PART,
                    kind: "s3",
                    local_root: None,
                })
            }
            None => {
                let root = &config.medical_records_storage_path;
                std::fs::create_dir_all(root).with_context(|| {
                    format!(
                        "cannot create MEDICAL_RECORDS_STORAGE_PATH {}",
                        root.display()
                    )
                })?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(root)
                    .context("MEDICAL_RECORDS_STORAGE_PATH is not usable")?
                    .with_automatic_cleanup(true);
                Ok(DocumentStore {
                    inner: Arc::new(store),
                    part_size: LOCAL_PART,
                    kind: "local",
                    local_root: Some(root.clone()),
                })
            }
        }
    }

    /// The folder of local storage (`None` for S3).
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }

    /// `<clinic>/<document>`: one folder per clinic.
    pub fn path(clinic: Uuid, document: Uuid) -> Path {
        Path::from(format!("{clinic}/{document}"))
    }

    pub async fn begin(&self, path: &Path) -> object_store::Result<Upload> {
        let upload = self.inner.put_multipart(path).await?;
        Ok(Upload {
            writer: WriteMultipart::new_with_chunk_size(upload, self.part_size),
        })
    }

    /// The object's length, or `None` when there is no such object.
    pub async fn len(&self, path: &Path) -> object_store::Result<Option<u64>> {
        match self.inner.head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A byte range of an object, as a stream. Local files are read a mebibyte at a time
    /// (`object_store` streams them in 8 KiB reads, each a trip to the blocking pool); S3
    /// objects as one ranged GET.
    pub async fn read(
        &self,
        path: &Path,
        range: Range<u64>,
    ) -> object_store::Result<BoxStream<'static, object_store::Result<Bytes>>> {
        if self.local_root.is_some() {
            const PIECE: u64 = 1024 * 1024;
            let store = self.inner.clone();
            let path = path.clone();
            let pieces = (range.start..range.end)
                .step_by(PIECE as usize)
                .map(move |start| start..(start + PIECE).min(range.end));
            return Ok(futures_util::stream::iter(pieces)
                .then(move |r| {
                    let (store, path) = (store.clone(), path.clone());
                    async move { store.get_range(&path, r).await }
                })
                .boxed());
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        Ok(self.inner.get_opts(path, options).await?.into_stream())
    }

    pub async fn put_small(&self, path: &Path, bytes: Bytes) -> object_store::Result<()> {
        self.inner.put(path, bytes.into()).await.map(|_| ())
    }

    pub async fn get_small(&self, path: &Path) -> object_store::Result<Bytes> {
        self.inner.get(path).await?.bytes().await
    }

    /// Removes an object; one that is already gone is not an error.
    pub async fn delete(&self, path: &Path) -> object_store::Result<()> {
        match self.inner.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The top-level folders (clinic ids) that hold objects.
    pub async fn clinics(&self) -> object_store::Result<Vec<Uuid>> {
        let listing = self.inner.list_with_delimiter(None).await?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(|f| f.parse().ok()))
            .collect())
    }

    /// Start-up probe objects written before `cutoff`.
    pub async fn probes_before(&self, cutoff: DateTime<Utc>) -> object_store::Result<Vec<Path>> {
        let prefix = Path::from("_probe");
        self.inner
            .list(Some(&prefix))
            .try_filter_map(|meta| async move {
                Ok((meta.last_modified < cutoff).then_some(meta.location))
            })
            .try_collect()
            .await
    }

    /// The documents stored in a clinic's folder, with when each was written.
    pub async fn objects(&self, clinic: Uuid) -> object_store::Result<Vec<(Uuid, DateTime<Utc>)>> {
        let prefix = Path::from(clinic.to_string());
        self.inner
            .list(Some(&prefix))
            .try_filter_map(|meta| async move {
                Ok(meta
                    .location
                    .filename()
                    .and_then(|f| f.parse::<Uuid>().ok())
                    .map(|id| (id, meta.last_modified)))
            })
            .try_collect()
            .await
    }
}

/// An upload in progress: nothing is visible under its name until [`Upload::finish`].
pub struct Upload {
    writer: WriteMultipart,
}

impl Upload {
    /// Queues bytes, waiting while too many parts are in flight (so memory stays bounded
    /// whatever the file's size).
    pub async fn write(&mut self, bytes: Vec<u8>) -> object_store::Result<()> {
        self.writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        self.writer.put(Bytes::from(bytes));
        Ok(())
    }

    pub async fn finish(self) -> object_store::Result<()> {
        self.writer.finish().await.map(|_| ())
    }

    pub async fn abort(self) {
        if let Err(e) = self.writer.abort().await {
            tracing::warn!(error = %e, "could not abort a document upload; the sweep removes what is left");
        }
    }
}

/// Reads whole objects' streams into exact-size pieces (the chunks of a document).
pub fn rechunk(
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    sizes: impl Iterator<Item = usize> + Send + 'static,
) -> BoxStream<'static, std::io::Result<Vec<u8>>> {
    let state = (stream, sizes, Vec::<u8>::new(), Bytes::new());
    futures_util::stream::try_unfold(state, |(mut stream, mut sizes, _, mut rest)| async move {
        let Some(want) = sizes.next() else {
            return Ok(None);
        };
        let mut piece = Vec::with_capacity(want);
        while piece.len() < want {
            if rest.is_empty() {
                match stream.next().await {
                    Some(Ok(b)) => rest = b,
                    Some(Err(e)) => return Err(std::io::Error::other(e)),
                    None => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the stored object is shorter than its document",
                        ))
                    }
                }
            }
            let take = (want - piece.len()).min(rest.len());
            piece.extend_from_slice(&rest.split_to(take));
        }
        Ok(Some((piece, (stream, sizes, Vec::new(), rest))))
    })
    .boxed()
}

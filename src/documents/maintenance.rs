//! Work on documents across clinics: the start-up key check and storage probe, re-wrapping
//! data keys under a new key (`molar documents rewrap`), removing deleted documents'
//! content past retention (`molar documents purge`) and sweeping objects no row describes.
//! Each clinic's rows are read and changed under row-level security with that clinic set;
//! only the list of clinics and the keys in use come from definer functions.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::crypto::{ChunkCipher, DataKey, Layout, Sealer, HEADER};
use super::store::DocumentStore;
use super::Documents;
use crate::audit::{self, AuditContext, Event};
use crate::db::Db;
use crate::state::AppState;

/// Rows changed per transaction.
const BATCH: i64 = 200;

/// The keys that wrap the documents that still have content.
pub async fn keys_in_use(db: &Db) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT document_key_ids AS "key_id!" FROM document_key_ids()"#)
        .fetch_all(db.pool())
        .await
}

/// Key ids in use that this server cannot open.
pub fn unknown_keys(docs: &Documents, in_use: &[String]) -> Vec<String> {
    let ids = docs.keys.ids();
    in_use
        .iter()
        .filter(|id| !ids.contains(&id.as_str()))
        .cloned()
        .collect()
}

/// At start-up: a production server without `FILE_ENCRYPTION_KEY` refuses to start once
/// documents exist; keys in use that are not configured are logged (and fail the start-up
/// check's `storage`).
pub async fn check_keys(state: &AppState) -> anyhow::Result<()> {
    let usage = match keys_in_use(&state.db).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(error = %crate::error::loggable(&e), "could not read which keys documents use (not migrated yet?)");
            return Ok(());
        }
    };
    match &state.documents {
        None if !usage.is_empty() => bail!(
            "documents exist but FILE_ENCRYPTION_KEY is not set: set it (and FILE_ENCRYPTION_KEYS \
             for older keys) so that they can be read"
        ),
        None => Ok(()),
        Some(docs) => {
            let unknown = unknown_keys(docs, &usage);
            if !unknown.is_empty() {
                tracing::error!(keys = %unknown.join(", "), "documents are wrapped under keys this server does not have; add them to FILE_ENCRYPTION_KEYS");
            }
            Ok(())
        }
    }
}

/// The start-up check's round trip: seal a random probe, store it, read it back, open it,
/// remove it. Returns what the check reports on success.
pub async fn probe(docs: &Documents) -> anyhow::Result<()> {
    let id = Uuid::now_v7();
    let path = object_store::path::Path::from(format!("_probe/{id}"));
    let mut data = vec![0u8; 64];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut data);
    let key = DataKey::random();
    let (cipher, mut stored) = ChunkCipher::create(&key, Uuid::nil(), id);
    let mut sealer = Sealer::new(cipher);
    for c in sealer.push(&data)? {
        stored.extend_from_slice(&c);
    }
    let (last, size, _) = sealer.finish()?;
    stored.extend_from_slice(&last);
    docs.store
        .put_small(&path, Bytes::from(stored))
        .await
        .context("the store did not accept a probe object")?;
    let back = docs.store.get_small(&path).await;
    let _ = docs.store.delete(&path).await;
    let back = back.context("the probe object could not be read back")?;
    let layout = Layout { size };
    if back.len() as u64 != layout.stored_len() {
        bail!("the probe object came back with another length");
    }
    let cipher = ChunkCipher::open_header(&key, Uuid::nil(), id, &back[..HEADER])?;
    let mut chunk = back[HEADER..].to_vec();
    cipher.open(0, true, &mut chunk)?;
    if chunk != data {
        bail!("the probe object came back changed");
    }
    Ok(())
}

async fn clinics(db: &Db) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT document_clinics AS "id!" FROM document_clinics()"#)
        .fetch_all(db.pool())
        .await
}

fn system(clinic: Uuid) -> AuditContext {
    AuditContext {
        clinic_id: clinic,
        user_id: None,
        request_id: None,
        ip: None,
    }
}

/// Re-wraps every data key that is not under the current key; the content is untouched,
/// so this is quick and runs beside a serving server. Returns how many were re-wrapped.
pub async fn rewrap(db: &Db, docs: &Documents) -> anyhow::Result<u64> {
    let current = docs.keys.current_id().to_owned();
    let mut total = 0;
    for clinic in clinics(db).await? {
        let mut in_clinic = 0;
        loop {
            let mut tx = db.maintenance_tx(clinic).await?;
            let rows = sqlx::query!(
                "SELECT id, key_id, wrapped_key FROM documents \
                 WHERE key_id <> $1 AND purged_at IS NULL ORDER BY id LIMIT $2 FOR UPDATE",
                current,
                BATCH
            )
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let key = docs
                    .keys
                    .unwrap(clinic, r.id, &r.key_id, &r.wrapped_key)
                    .with_context(|| format!("document {} of clinic {clinic}", r.id))?;
                let (key_id, wrapped) = docs.keys.wrap(clinic, r.id, &key);
                sqlx::query!(
                    "UPDATE documents SET key_id = $2, wrapped_key = $3 WHERE id = $1",
                    r.id,
                    key_id,
                    wrapped
                )
                .execute(&mut *tx)
                .await?;
            }
            in_clinic += rows.len() as u64;
            audit::record(
                &mut tx,
                &system(clinic),
                Event::new("document.rewrap", "document").details(serde_json::json!({
                    "documents": rows.len(), "key_id": current,
                })),
            )
            .await?;
            tx.commit().await?;
        }
        total += in_clinic;
    }
    Ok(total)
}

/// Removes the content of documents deleted before `before` and marks them purged (their
/// rows stay, for the record). Returns how many.
pub async fn purge(db: &Db, docs: &Documents, before: DateTime<Utc>) -> anyhow::Result<u64> {
    let mut total = 0;
    for clinic in clinics(db).await? {
        loop {
            let mut tx = db.maintenance_tx(clinic).await?;
            let ids = sqlx::query_scalar!(
                "SELECT id FROM documents \
                 WHERE deleted_at < $1 AND purged_at IS NULL ORDER BY id LIMIT $2 FOR UPDATE",
                before,
                BATCH
            )
            .fetch_all(&mut *tx)
            .await?;
            if ids.is_empty() {
                break;
            }
            for id in &ids {
                docs.store
                    .delete(&DocumentStore::path(clinic, *id))
                    .await
                    .with_context(|| format!("removing document {id}'s content"))?;
            }
            sqlx::query!(
                "UPDATE documents SET purged_at = now() WHERE id = ANY($1)",
                &ids
            )
            .execute(&mut *tx)
            .await?;
            let purged = ids.len() as u64;
            audit::record(
                &mut tx,
                &system(clinic),
                Event::new("document.purge", "document")
                    .ids(ids)
                    .details(serde_json::json!({ "deleted_before": before })),
            )
            .await?;
            tx.commit().await?;
            total += purged;
        }
    }
    Ok(total)
}

/// Removes objects older than `grace` that no document row describes (an upload whose
/// row was never written: a crash between storing and recording), and on local storage
/// the staging files of uploads that never completed. Returns how many were removed.
pub async fn sweep(db: &Db, docs: &Documents, grace: Duration) -> anyhow::Result<u64> {
    let cutoff = Utc::now() - chrono::Duration::from_std(grace).unwrap_or_default();
    let mut removed = 0;
    for clinic in docs.store.clinics().await? {
        let old: Vec<Uuid> = docs
            .store
            .objects(clinic)
            .await?
            .into_iter()
            .filter(|(_, at)| *at < cutoff)
            .map(|(id, _)| id)
            .collect();
        for batch in old.chunks(1000) {
            let mut tx = db.maintenance_tx(clinic).await?;
            let known = sqlx::query_scalar!(
                "SELECT id FROM documents WHERE id = ANY($1) AND purged_at IS NULL",
                batch
            )
            .fetch_all(&mut *tx)
            .await?;
            tx.rollback().await?;
            for id in batch.iter().filter(|id| !known.contains(id)) {
                docs.store.delete(&DocumentStore::path(clinic, *id)).await?;
                tracing::info!(clinic = %clinic, document = %id, "removed an object no document describes");
                removed += 1;
            }
        }
    }
    // Start-up probes are removed by the check itself; one cut off by its timeout is not.
    for stale in docs.store.probes_before(cutoff).await? {
        docs.store.delete(&stale).await?;
        removed += 1;
    }
    if let Some(root) = docs.store.local_root() {
        removed += sweep_staging(root, grace)?;
    }
    Ok(removed)
}

/// Local uploads are staged as `<document>#<n>` beside their final name until complete.
fn sweep_staging(root: &std::path::Path, grace: Duration) -> anyhow::Result<u64> {
    let mut removed = 0;
    let Ok(clinics) = std::fs::read_dir(root) else {
        return Ok(0);
    };
    for clinic in clinics.flatten() {
        let Ok(files) = std::fs::read_dir(clinic.path()) else {
            continue;
        };
        for file in files.flatten() {
            let staged = file.file_name().to_string_lossy().contains('#');
            let old = file
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > grace);
            if staged && old && std::fs::remove_file(file.path()).is_ok() {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// The server's own sweep, once an hour on every instance (removing the same orphan twice
/// is harmless). The grace outlasts any upload still between storing and recording.
pub fn spawn_sweeper(state: AppState) -> Option<tokio::task::JoinHandle<()>> {
    let docs = state.documents.clone()?;
    let grace = (state.config.upload_timeout * 2).max(Duration::from_secs(3600));
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match sweep(&state.db, &docs, grace).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "swept orphaned document objects"),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "the document sweep failed"),
            }
        }
    }))
}

//! `Idempotency-Key` for creating POSTs: scoped to the user, kept 24 hours. A replay with
//! the same body returns the first response; a different body is 422; a replay while the
//! first request is still running is 409. The key is claimed in a short transaction of
//! its own, and the response is stored in the same transaction as the work.

use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::db::{Db, Tx};
use crate::error::{AppError, AppResult};
use crate::http::extract::{parse_json, ApiJson};

/// A JSON body together with a hash of its canonical form (keys sorted).
pub struct HashedJson<T> {
    pub value: T,
    pub hash: Vec<u8>,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for HashedJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // The key covers the target too: the same body sent to another patient's
        // route is a different request.
        let target = format!("{} {}\n", req.method(), req.uri().path());
        let ApiJson(raw) = ApiJson::<serde_json::Value>::from_request(req, state).await?;
        let canonical = serde_json::to_vec(&raw).map_err(|e| AppError::Internal(e.into()))?;
        let value = parse_json::<T>(&canonical)?;
        let mut hash = Sha256::new();
        hash.update(target.as_bytes());
        hash.update(&canonical);
        Ok(HashedJson {
            value,
            hash: hash.finalize().to_vec(),
        })
    }
}

/// A stored key: request hash, and the response once the first request finished.
struct StoredKey {
    request_hash: Vec<u8>,
    status: Option<i16>,
    response: Option<serde_json::Value>,
    location: Option<String>,
}

/// A claimed key, to be completed in the work's transaction.
pub struct Claim {
    key: String,
}

pub enum Begin {
    /// No key was sent: just do the work.
    NoKey,
    /// The key is ours: do the work, then `complete` it in the same transaction.
    Claimed(Claim),
    /// The first request already finished: send its response again.
    Replay(Response),
}

/// The `Idempotency-Key` header of the creating operations.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IdempotencyKey {
    /// Makes a retried create safe: the same key with the same body returns the first
    /// response; with another body it is a 422; while the first request still runs, a 409.
    /// 1 to 255 visible ASCII characters (inner spaces allowed), kept 24 hours per user.
    #[param(rename = "Idempotency-Key", value_type = String, required = false,
        min_length = 1, max_length = 255, pattern = "^[!-~]([ -~]*[!-~])?$")]
    idempotency_key: String,
}

/// The `Idempotency-Key` of the financial writes (payments, refunds), where it is
/// required: a retried payment must never be taken twice (400 without it).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct RequiredIdempotencyKey {
    /// Required. The same key with the same body returns the first response; with another
    /// body it is a 422; while the first request still runs, a 409. 1 to 255 visible ASCII
    /// characters (inner spaces allowed), kept 24 hours per user.
    #[param(rename = "Idempotency-Key", value_type = String, required = true,
        min_length = 1, max_length = 255, pattern = "^[!-~]([ -~]*[!-~])?$")]
    idempotency_key: String,
}

/// The request's key; one that is not 1 to 255 visible ASCII characters (inner spaces
/// allowed) is a 400.
fn key_of(headers: &HeaderMap) -> AppResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bytes = v.as_bytes();
    let visible = |b: &u8| (0x21..=0x7e).contains(b);
    let ok = (1..=255).contains(&bytes.len())
        && bytes.first().is_some_and(visible)
        && bytes.last().is_some_and(visible)
        && bytes.iter().all(|b| (0x20..=0x7e).contains(b));
    if !ok {
        return Err(AppError::BadRequest(
            "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// Claims the request's key, or answers with the stored response, 409 or 422.
pub async fn begin(
    state: &crate::state::AppState,
    caller: &Caller,
    headers: &HeaderMap,
    request_hash: &[u8],
) -> AppResult<Begin> {
    let Some(key) = key_of(headers)? else {
        return Ok(Begin::NoKey);
    };
    // The caller's session is checked before anything is claimed or replayed.
    let mut tx = caller.begin(state).await?;
    // Keys expire after 24 hours; an abandoned claim (the server died mid-request) after 10 minutes.
    sqlx::query!(
        "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND \
         (created_at < now() - interval '24 hours' OR (status IS NULL AND created_at < now() - interval '10 minutes'))",
        caller.user_id,
        key
    )
    .execute(&mut *tx)
    .await?;
    let claimed = sqlx::query!(
        "INSERT INTO idempotency_keys (clinic_id, user_id, key, request_hash) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING",
        caller.clinic_id,
        caller.user_id,
        key,
        request_hash
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if claimed {
        tx.commit().await?;
        return Ok(Begin::Claimed(Claim { key }));
    }
    let row = sqlx::query_as!(
        StoredKey,
        "SELECT request_hash, status, response, location FROM idempotency_keys \
             WHERE user_id = $1 AND key = $2",
        caller.user_id,
        key
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    match row {
        None => Err(AppError::conflict(
            "a request with this Idempotency-Key is still in progress",
        )),
        Some(stored) if stored.request_hash != request_hash => Err(AppError::validation(
            "Idempotency-Key",
            "was already used with a different request body",
        )),
        Some(StoredKey { status: None, .. }) => Err(AppError::conflict(
            "a request with this Idempotency-Key is still in progress",
        )),
        Some(StoredKey {
            status: Some(status),
            response: body,
            location,
            ..
        }) => {
            let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
            let body = body.unwrap_or_default();
            let version = body["version"].as_i64().and_then(|v| i32::try_from(v).ok());
            let mut res = (status, axum::Json(body)).into_response();
            if let Some(v) = version {
                res.headers_mut()
                    .insert(header::ETAG, crate::http::etag::etag(v));
            }
            if let Some(loc) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
                res.headers_mut().insert(header::LOCATION, loc);
            }
            res.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(Begin::Replay(res))
        }
    }
}

/// Stores the response for the claimed key, in the transaction that did the work.
pub async fn complete<T: Serialize>(
    tx: &mut Tx,
    caller: &Caller,
    claim: &Claim,
    status: StatusCode,
    body: &T,
    location: Option<&str>,
) -> AppResult<()> {
    let body = serde_json::to_value(body).map_err(|e| AppError::Internal(e.into()))?;
    sqlx::query!(
        "UPDATE idempotency_keys SET status = $3, response = $4, location = $5 WHERE user_id = $1 AND key = $2",
        caller.user_id,
        claim.key,
        status.as_u16() as i16,
        body,
        location
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Releases a claimed key after the work failed, so that the client may retry.
pub async fn release(db: &Db, caller: &Caller, claim: Claim) {
    let result = async {
        let mut tx = db.clinic_tx(caller.clinic_id).await?;
        sqlx::query!(
            "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND status IS NULL",
            caller.user_id,
            claim.key
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %crate::error::loggable(&e), "could not release an idempotency key");
    }
}

/// Releases a claimed key when a request's future is dropped before it finished (the
/// client went away), on a task of its own; disarmed once the work has an outcome.
struct ReleaseOnDrop {
    db: Db,
    caller: Caller,
    key: Option<String>,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (db, caller) = (self.db.clone(), self.caller.clone());
            runtime.spawn(async move { release(&db, &caller, Claim { key }).await });
        }
    }
}

/// What a creating request made: the resource, where it lives, and its version (ETag).
pub struct Created<T> {
    pub value: T,
    pub location: String,
    pub version: Option<i32>,
}

/// Runs a creating request under its `Idempotency-Key`: `work` does the work in an open
/// transaction and returns it with what it created; the response is stored in that
/// transaction before it commits. Without a key it simply runs.
pub async fn run<T, F, Fut>(
    state: &crate::state::AppState,
    caller: &Caller,
    headers: &HeaderMap,
    request_hash: &[u8],
    work: F,
) -> AppResult<Response>
where
    T: Serialize,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = AppResult<(Tx, Created<T>)>>,
{
    let claim = match begin(state, caller, headers, request_hash).await? {
        Begin::Replay(res) => return Ok(res),
        Begin::NoKey => None,
        Begin::Claimed(c) => Some(c),
    };
    // A client that goes away mid-request drops this future (its transaction rolls back):
    // the claim is released then too, so that its retry is not refused as in progress.
    let mut on_drop = ReleaseOnDrop {
        db: state.db.clone(),
        caller: caller.clone(),
        key: claim.as_ref().map(|c| c.key.clone()),
    };
    let result = async {
        let (mut tx, created) = work().await?;
        if let Some(c) = &claim {
            complete(
                &mut tx,
                caller,
                c,
                StatusCode::CREATED,
                &created.value,
                Some(&created.location),
            )
            .await?;
        }
        tx.commit().await?;
        Ok::<_, AppError>(created)
    }
    .await;
    on_drop.key = None;
    match result {
        Ok(created) => {
            let mut res = (StatusCode::CREATED, axum::Json(&created.value)).into_response();
            if let Ok(v) = HeaderValue::from_str(&created.location) {
                res.headers_mut().insert(header::LOCATION, v);
            }
            if let Some(version) = created.version {
                res.headers_mut()
                    .insert(header::ETAG, crate::http::etag::etag(version));
            }
            Ok(res)
        }
        Err(e) => {
            if let Some(c) = claim {
                release(&state.db, caller, c).await;
            }
            Err(e)
        }
    }
}

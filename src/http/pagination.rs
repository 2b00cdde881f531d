//! Lists: `limit` (default 50, at most 200) and an opaque cursor that the server signs,
//! so a tampered cursor is a 400 and never reaches a query.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::{IntoParams, ToSchema};

use crate::error::{AppError, AppResult};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page from a query that fetched `limit + 1` rows: the extra row only says that
    /// there is more, and the cursor points after the last row kept.
    pub fn from_overfetch(
        mut items: Vec<T>,
        limit: u32,
        cursor_after: impl FnOnce(&T) -> String,
    ) -> Page<T> {
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(cursor_after)
        } else {
            None
        };
        Page { items, next_cursor }
    }
}

/// The requested page size: absent means 50, above 200 means 200, 0 is invalid.
pub fn limit(requested: Option<u32>) -> AppResult<u32> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(0) => Err(AppError::validation("limit", "must be at least 1")),
        Some(n) => Ok(n.min(MAX_LIMIT)),
    }
}

/// The rows to fetch for a page of `limit`: one more, which only says that another page
/// follows (see [`Page::from_overfetch`]).
pub fn overfetch(limit: u32) -> i64 {
    i64::from(limit) + 1
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PageParams {
    /// Page size (default 50, max 200).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Clone)]
pub struct CursorCodec {
    key: Vec<u8>,
}

impl CursorCodec {
    pub fn new(secret: &[u8]) -> CursorCodec {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"molar-cursor-key")
            .expect("HMAC accepts any key length");
        mac.update(secret);
        CursorCodec {
            key: mac.finalize().into_bytes().to_vec(),
        }
    }

    fn mac(&self, payload: &[u8]) -> Vec<u8> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(payload);
        mac.finalize().into_bytes()[..16].to_vec()
    }

    pub fn encode<T: Serialize>(&self, position: &T) -> String {
        let payload = serde_json::to_vec(position).unwrap_or_default();
        let tag = self.mac(&payload);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The position the client's cursor names; `None` for the first page.
    pub fn decode_opt<T: DeserializeOwned>(&self, cursor: Option<&str>) -> AppResult<Option<T>> {
        cursor.map(|c| self.decode(c)).transpose()
    }

    /// A page of `limit` from [`overfetch`] rows; its cursor names the `position` of the
    /// last row kept.
    pub fn page<T, P: Serialize>(
        &self,
        rows: Vec<T>,
        limit: u32,
        position: impl FnOnce(&T) -> P,
    ) -> Page<T> {
        Page::from_overfetch(rows, limit, |last| self.encode(&position(last)))
    }

    pub fn decode<T: DeserializeOwned>(&self, cursor: &str) -> AppResult<T> {
        let bad = || AppError::BadRequest("the cursor is not one this server issued".into());
        let (payload, tag) = cursor.split_once('.').ok_or_else(bad)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| bad())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| bad())?;
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(&payload);
        mac.verify_truncated_left(&tag).map_err(|_| bad())?;
        serde_json::from_slice(&payload).map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_tampering_is_refused() {
        let codec = CursorCodec::new(b"secret");
        let c = codec.encode(&("2026-11-23T10:00:00Z", 42));
        let back: (String, i32) = codec.decode(&c).expect("decodes");
        assert_eq!(back.1, 42);
        let mut tampered = c.clone();
        tampered.replace_range(0..2, "xx");
        assert!(codec.decode::<(String, i32)>(&tampered).is_err());
        assert!(codec.decode::<(String, i32)>("garbage").is_err());
        let other = CursorCodec::new(b"other");
        assert!(other.decode::<(String, i32)>(&c).is_err());
    }

    #[test]
    fn limits_default_and_cap() {
        assert_eq!(limit(None).ok(), Some(50));
        assert_eq!(limit(Some(500)).ok(), Some(200));
        assert!(limit(Some(0)).is_err());
    }
}

//! Lists: `limit` (default 50, at most 200) and an opaque cursor that the server seals
//! with an AEAD (XChaCha20-Poly1305): a tampered or truncated cursor is a 400 and never
//! reaches a query, and what a cursor holds (a patient's name, for the patient list) is
//! not readable in the URLs and proxy logs it passes through.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::Sha256;
use utoipa::ToSchema;

use crate::error::{AppError, AppResult};
pub use crate::http::query::Limit;

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

/// The requested page size: absent means 50 (the parameter itself refuses anything but 1
/// to 200, see [`Limit`]).
pub fn limit(requested: Option<Limit>) -> AppResult<u32> {
    Ok(requested.map_or(DEFAULT_LIMIT, |l| l.0))
}

/// The rows to fetch for a page of `limit`: one more, which only says that another page
/// follows (see [`Page::from_overfetch`]).
pub fn overfetch(limit: u32) -> i64 {
    i64::from(limit) + 1
}

/// The nonce length of XChaCha20-Poly1305: random nonces this long never repeat in practice.
const NONCE_BYTES: usize = 24;

#[derive(Clone)]
pub struct CursorCodec {
    cipher: XChaCha20Poly1305,
}

impl CursorCodec {
    pub fn new(secret: &[u8]) -> CursorCodec {
        // A key of its own, derived from the signing secret, so cursors and tokens never
        // share one.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"molar-cursor-key")
            .expect("HMAC accepts any key length");
        mac.update(secret);
        let key = mac.finalize().into_bytes();
        CursorCodec {
            cipher: XChaCha20Poly1305::new(&key),
        }
    }

    pub fn encode<T: Serialize>(&self, position: &T) -> String {
        let payload = serde_json::to_vec(position).unwrap_or_default();
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        // Encrypting a short buffer in memory cannot fail; an empty cursor would be refused.
        let sealed = self
            .cipher
            .encrypt(&XNonce::from(nonce), payload.as_slice())
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(out)
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
        let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
        if raw.len() <= NONCE_BYTES {
            return Err(bad());
        }
        let (nonce, sealed) = raw.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| bad())?;
        // The whole 16-byte tag is checked: a cursor cut short is refused.
        let payload = self
            .cipher
            .decrypt(&XNonce::from(nonce), sealed)
            .map_err(|_| bad())?;
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
    fn a_cursor_cut_short_is_refused_at_every_length() {
        let codec = CursorCodec::new(b"secret");
        let c = codec.encode(&("Mustermann", 7));
        for cut in 1..c.len() {
            assert!(
                codec.decode::<(String, i32)>(&c[..c.len() - cut]).is_err(),
                "a cursor missing its last {cut} characters was accepted"
            );
        }
    }

    #[test]
    fn a_cursor_does_not_show_what_it_holds() {
        let codec = CursorCodec::new(b"secret");
        let c = codec.encode(&("Mustermann", 7));
        let raw = URL_SAFE_NO_PAD.decode(&c).expect("base64url");
        let shown = String::from_utf8_lossy(&raw);
        assert!(
            !shown.contains("Mustermann"),
            "the name is readable in {shown:?}"
        );
        assert_ne!(
            c,
            codec.encode(&("Mustermann", 7)),
            "equal positions give equal cursors"
        );
    }

    #[test]
    fn limits_default() {
        assert_eq!(limit(None).ok(), Some(50));
        assert_eq!(limit(Some(Limit(200))).ok(), Some(200));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;
    use uuid::Uuid;

    type Position = (String, i64, Uuid);

    fn position() -> impl Strategy<Value = Position> {
        (any::<String>(), any::<i64>(), any::<u128>())
            .prop_map(|(s, n, u)| (s, n, Uuid::from_u128(u)))
    }

    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        (-62_135_596_800i64..253_402_300_799, 0u32..1_000_000_000)
            .prop_map(|(s, ns)| DateTime::from_timestamp(s, ns).expect("in range"))
    }

    fn codec() -> CursorCodec {
        CursorCodec::new(b"property-test-secret")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_position_round_trips(p in position(), at in instant(), id in any::<u128>()) {
            let codec = codec();
            prop_assert_eq!(codec.decode::<Position>(&codec.encode(&p)).ok(), Some(p));
            let q = (at, Uuid::from_u128(id));
            prop_assert_eq!(codec.decode::<(DateTime<Utc>, Uuid)>(&codec.encode(&q)).ok(), Some(q));
        }

        #[test]
        fn a_flipped_bit_is_refused(p in position(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let codec = codec();
            let mut raw = URL_SAFE_NO_PAD.decode(codec.encode(&p)).expect("base64url");
            let i = at.index(raw.len());
            raw[i] ^= 1 << bit;
            prop_assert!(codec.decode::<Position>(&URL_SAFE_NO_PAD.encode(&raw)).is_err());
        }

        #[test]
        fn a_changed_character_is_refused(
            p in position(),
            at in any::<prop::sample::Index>(),
            c in any::<char>(),
        ) {
            let codec = codec();
            let cursor = codec.encode(&p);
            let i = at.index(cursor.len());
            prop_assume!(cursor.as_bytes()[i] as char != c);
            let mut changed = cursor.clone();
            changed.replace_range(i..=i, c.encode_utf8(&mut [0; 4]));
            prop_assert!(codec.decode::<Position>(&changed).is_err(), "{} accepted", changed);
        }

        #[test]
        fn a_truncated_or_extended_cursor_is_refused(
            p in position(),
            keep in any::<prop::sample::Index>(),
            suffix in "\\PC{1,8}",
        ) {
            let codec = codec();
            let cursor = codec.encode(&p);
            let cut = &cursor[..keep.index(cursor.len())];
            prop_assert!(codec.decode::<Position>(cut).is_err(), "{} accepted", cut);
            let longer = format!("{cursor}{suffix}");
            prop_assert!(codec.decode::<Position>(&longer).is_err(), "{} accepted", longer);
        }

        #[test]
        fn arbitrary_text_is_never_a_cursor(
            s in prop_oneof![any::<String>(), "[A-Za-z0-9_-]{0,120}"],
        ) {
            let codec = codec();
            prop_assert!(codec.decode::<Position>(&s).is_err());
            prop_assert!(codec.decode::<serde_json::Value>(&s).is_err());
        }

        #[test]
        fn a_cursor_of_another_key_is_refused(p in position(), other in "[a-z]{1,32}") {
            prop_assume!(other != "property-test-secret");
            let cursor = CursorCodec::new(other.as_bytes()).encode(&p);
            prop_assert!(codec().decode::<Position>(&cursor).is_err());
        }
    }
}

//! Documents at rest: a random data key per document, its content sealed in chunks by
//! XChaCha20-Poly1305 in the STREAM construction, the data key wrapped by a key-encryption
//! key (KEK) that has an id.
//!
//! Stored object: `MOLARDOC`, a format byte, the 19-byte STREAM nonce prefix, then the
//! chunks: [`CHUNK`] plaintext bytes each (the last one shorter, never empty unless the
//! content is), each followed by its 16-byte tag. A chunk's nonce carries its position and
//! whether it is the last (STREAM), and its associated data binds the clinic, the document,
//! the position and the last flag, so bytes moved between documents or clinics, reordered,
//! or cut short fail to open.

use chacha20poly1305::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
/// Authentication tag per chunk.
pub const TAG: usize = 16;
const MAGIC: &[u8; 8] = b"MOLARDOC";
const FORMAT: u8 = 1;
const PREFIX: usize = 19;
/// Bytes before the first chunk.
pub const HEADER: usize = MAGIC.len() + 1 + PREFIX;
/// A wrapped data key: nonce, key, tag.
pub const WRAPPED_LEN: usize = 24 + 32 + TAG;

/// Content that does not open: tampered, truncated, reordered, moved, or under another key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IntegrityError(pub &'static str);

/// One key-encryption key and its id (derived from the key, so it cannot be mislabelled).
struct Kek {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl Kek {
    fn new(bytes: &[u8; 32]) -> Kek {
        let digest = Sha256::new()
            .chain_update(b"molar/kek-id/v1")
            .chain_update(bytes)
            .finalize();
        Kek {
            id: format!("k{}", hex::encode(&digest[..8])),
            cipher: XChaCha20Poly1305::new(&Key::from(*bytes)),
        }
    }
}

/// The current key-encryption key, which wraps new data keys, and the previous ones, which
/// still open data keys wrapped before a rotation (until `molar documents rewrap`).
pub struct Keyring {
    current: Kek,
    previous: Vec<Kek>,
}

/// Decodes a key given as base64 of 32 bytes.
pub fn decode_key(text: &str) -> Result<[u8; 32], &'static str> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| "must be base64 (e.g. `openssl rand -base64 32`)")?;
    bytes
        .try_into()
        .map_err(|_| "must be exactly 32 bytes, base64-encoded (e.g. `openssl rand -base64 32`)")
}

impl Keyring {
    pub fn new(current: &[u8; 32], previous: &[[u8; 32]]) -> Keyring {
        let current = Kek::new(current);
        let previous = previous
            .iter()
            .map(Kek::new)
            .filter(|k| k.id != current.id)
            .collect();
        Keyring { current, previous }
    }

    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Every key id this keyring opens, the current one first.
    pub fn ids(&self) -> Vec<&str> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|k| k.id.as_str())
            .collect()
    }

    fn find(&self, id: &str) -> Option<&Kek> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
    }

    fn aad(clinic: Uuid, document: Uuid, key_id: &str) -> Vec<u8> {
        let mut aad = b"molar/data-key/v1".to_vec();
        aad.extend_from_slice(clinic.as_bytes());
        aad.extend_from_slice(document.as_bytes());
        aad.extend_from_slice(key_id.as_bytes());
        aad
    }

    /// Wraps a data key under the current key: `(key id, nonce ‖ ciphertext)`.
    pub fn wrap(&self, clinic: Uuid, document: Uuid, key: &DataKey) -> (String, Vec<u8>) {
        let mut nonce = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut nonce);
        let aad = Self::aad(clinic, document, &self.current.id);
        let sealed = self
            .current
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &key.0,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        (self.current.id.clone(), out)
    }

    /// Opens a data key wrapped for this clinic and document under `key_id`.
    pub fn unwrap(
        &self,
        clinic: Uuid,
        document: Uuid,
        key_id: &str,
        wrapped: &[u8],
    ) -> Result<DataKey, UnwrapError> {
        let kek = self
            .find(key_id)
            .ok_or_else(|| UnwrapError::UnknownKey(key_id.to_owned()))?;
        if wrapped.len() != WRAPPED_LEN {
            return Err(UnwrapError::Integrity);
        }
        let (nonce, sealed) = wrapped.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| UnwrapError::Integrity)?;
        let aad = Self::aad(clinic, document, key_id);
        let plain = kek
            .cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| UnwrapError::Integrity)?;
        let key: [u8; 32] = plain.try_into().map_err(|_| UnwrapError::Integrity)?;
        Ok(DataKey(key))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnwrapError {
    #[error("the data key is wrapped under key {0}, which is not configured")]
    UnknownKey(String),
    #[error("the wrapped data key does not open")]
    Integrity,
}

/// A document's own key.
pub struct DataKey([u8; 32]);

impl DataKey {
    pub fn random() -> DataKey {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        DataKey(key)
    }
}

/// How a document of `size` plaintext bytes lies in its object.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub size: u64,
}

impl Layout {
    /// Number of chunks (at least one).
    pub fn chunks(self) -> u64 {
        self.size.div_ceil(CHUNK as u64).max(1)
    }

    /// The stored object's length.
    pub fn stored_len(self) -> u64 {
        HEADER as u64 + self.size + self.chunks() * TAG as u64
    }

    /// Plaintext length of chunk `i`.
    pub fn plain_len(self, i: u64) -> usize {
        let start = i * CHUNK as u64;
        (self.size.saturating_sub(start)).min(CHUNK as u64) as usize
    }

    /// Byte range of chunk `i` in the object.
    pub fn chunk_range(self, i: u64) -> std::ops::Range<u64> {
        let start = HEADER as u64 + i * (CHUNK + TAG) as u64;
        start..start + (self.plain_len(i) + TAG) as u64
    }

    pub fn is_last(self, i: u64) -> bool {
        i + 1 == self.chunks()
    }
}

/// Seals or opens the chunks of one document.
pub struct ChunkCipher {
    stream: StreamBE32<XChaCha20Poly1305>,
    clinic: Uuid,
    document: Uuid,
}

impl ChunkCipher {
    /// A new document's cipher and the header that starts its object.
    pub fn create(key: &DataKey, clinic: Uuid, document: Uuid) -> (ChunkCipher, Vec<u8>) {
        let mut prefix = [0u8; PREFIX];
        rand::thread_rng().fill_bytes(&mut prefix);
        let mut header = MAGIC.to_vec();
        header.push(FORMAT);
        header.extend_from_slice(&prefix);
        (Self::with_prefix(key, clinic, document, &prefix), header)
    }

    /// The cipher of a stored document, from its object's header.
    pub fn open_header(
        key: &DataKey,
        clinic: Uuid,
        document: Uuid,
        header: &[u8],
    ) -> Result<ChunkCipher, IntegrityError> {
        if header.len() != HEADER || &header[..MAGIC.len()] != MAGIC {
            return Err(IntegrityError("the stored object is not a Molar document"));
        }
        if header[MAGIC.len()] != FORMAT {
            return Err(IntegrityError("the stored object has an unknown format"));
        }
        Ok(Self::with_prefix(
            key,
            clinic,
            document,
            &header[MAGIC.len() + 1..],
        ))
    }

    fn with_prefix(key: &DataKey, clinic: Uuid, document: Uuid, prefix: &[u8]) -> ChunkCipher {
        let aead = XChaCha20Poly1305::new(&Key::from(key.0));
        let stream = StreamBE32::from_aead(aead, prefix.into());
        ChunkCipher {
            stream,
            clinic,
            document,
        }
    }

    fn aad(&self, index: u32, last: bool) -> [u8; 54] {
        let mut aad = [0u8; 54];
        aad[..17].copy_from_slice(b"molar/document/v1");
        aad[17..33].copy_from_slice(self.clinic.as_bytes());
        aad[33..49].copy_from_slice(self.document.as_bytes());
        aad[49..53].copy_from_slice(&index.to_be_bytes());
        aad[53] = u8::from(last);
        aad
    }

    /// Seals `chunk` (plaintext in, plaintext ‖ tag out) at position `index`.
    pub fn seal(&self, index: u64, last: bool, chunk: &mut Vec<u8>) -> Result<(), IntegrityError> {
        let index = u32::try_from(index).map_err(|_| IntegrityError("the document is too long"))?;
        self.stream
            .encrypt_in_place(index, last, &self.aad(index, last), chunk)
            .map_err(|_| IntegrityError("a chunk could not be sealed"))
    }

    /// Opens chunk `index` in place (ciphertext ‖ tag in, plaintext out).
    pub fn open(&self, index: u64, last: bool, chunk: &mut Vec<u8>) -> Result<(), IntegrityError> {
        let index = u32::try_from(index).map_err(|_| IntegrityError("the document is too long"))?;
        self.stream
            .decrypt_in_place(index, last, &self.aad(index, last), chunk)
            .map_err(|_| IntegrityError("a chunk of the stored content failed authentication"))
    }
}

/// Turns a stream of plaintext into sealed chunks, counting and hashing as it goes. The
/// last chunk is sealed by [`Sealer::finish`], so a chunk is only sealed once it is known
/// whether more follows.
pub struct Sealer {
    cipher: ChunkCipher,
    pending: Vec<u8>,
    index: u64,
    size: u64,
    hash: Sha256,
}

impl Sealer {
    pub fn new(cipher: ChunkCipher) -> Sealer {
        Sealer {
            cipher,
            pending: Vec::with_capacity(CHUNK + TAG),
            index: 0,
            size: 0,
            hash: Sha256::new(),
        }
    }

    /// Plaintext bytes taken so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Takes plaintext; returns the sealed chunks that are complete.
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<Vec<u8>>, IntegrityError> {
        self.size += data.len() as u64;
        self.hash.update(data);
        let mut sealed = Vec::new();
        while !data.is_empty() {
            // A full chunk is sealed only when at least one more byte follows it.
            if self.pending.len() == CHUNK {
                let mut chunk =
                    std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK + TAG));
                self.cipher.seal(self.index, false, &mut chunk)?;
                self.index += 1;
                sealed.push(chunk);
            }
            let take = (CHUNK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(sealed)
    }

    /// Seals the last chunk; returns it with the size and the hex sha256 of the plaintext.
    pub fn finish(mut self) -> Result<(Vec<u8>, u64, String), IntegrityError> {
        let mut chunk = std::mem::take(&mut self.pending);
        self.cipher.seal(self.index, true, &mut chunk)?;
        Ok((chunk, self.size, hex::encode(self.hash.finalize())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal_all(cipher: ChunkCipher, header: Vec<u8>, data: &[u8], step: usize) -> Vec<u8> {
        let mut out = header;
        let mut sealer = Sealer::new(cipher);
        for part in data.chunks(step.max(1)) {
            for c in sealer.push(part).expect("seal") {
                out.extend_from_slice(&c);
            }
        }
        let (last, size, _) = sealer.finish().expect("seal");
        assert_eq!(size, data.len() as u64);
        out.extend_from_slice(&last);
        out
    }

    fn open_all(
        key: &DataKey,
        clinic: Uuid,
        doc: Uuid,
        stored: &[u8],
        size: u64,
    ) -> Result<Vec<u8>, IntegrityError> {
        let layout = Layout { size };
        if stored.len() as u64 != layout.stored_len() {
            return Err(IntegrityError("length"));
        }
        let cipher = ChunkCipher::open_header(key, clinic, doc, &stored[..HEADER])?;
        let mut out = Vec::new();
        for i in 0..layout.chunks() {
            let r = layout.chunk_range(i);
            let mut chunk = stored[r.start as usize..r.end as usize].to_vec();
            cipher.open(i, layout.is_last(i), &mut chunk)?;
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    #[test]
    fn round_trips_any_size_in_any_pieces() {
        let (clinic, doc) = (Uuid::now_v7(), Uuid::now_v7());
        for size in [
            1usize,
            100,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK,
            3 * CHUNK + 7,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            for step in [1000, CHUNK, 7 * CHUNK] {
                let key = DataKey::random();
                let (cipher, header) = ChunkCipher::create(&key, clinic, doc);
                let stored = seal_all(cipher, header, &data, step);
                assert_eq!(
                    stored.len() as u64,
                    Layout { size: size as u64 }.stored_len()
                );
                let back = open_all(&key, clinic, doc, &stored, size as u64).expect("opens");
                assert_eq!(back, data, "size {size} step {step}");
            }
        }
    }

    #[test]
    fn tampering_moving_reordering_and_truncating_fail() {
        let (clinic, doc) = (Uuid::now_v7(), Uuid::now_v7());
        let size = 3 * CHUNK + 5;
        let data = vec![7u8; size];
        let key = DataKey::random();
        let (cipher, header) = ChunkCipher::create(&key, clinic, doc);
        let stored = seal_all(cipher, header, &data, CHUNK);
        let size = size as u64;

        let mut flipped = stored.clone();
        flipped[HEADER + CHUNK + 40] ^= 1;
        assert!(open_all(&key, clinic, doc, &flipped, size).is_err());

        assert!(
            open_all(&key, Uuid::now_v7(), doc, &stored, size).is_err(),
            "other clinic"
        );
        assert!(
            open_all(&key, clinic, Uuid::now_v7(), &stored, size).is_err(),
            "other document"
        );

        // Swap chunks 0 and 1 (both full).
        let mut swapped = stored[..HEADER].to_vec();
        let l = Layout { size };
        let c0 = &stored[l.chunk_range(0).start as usize..l.chunk_range(0).end as usize];
        let c1 = &stored[l.chunk_range(1).start as usize..l.chunk_range(1).end as usize];
        swapped.extend_from_slice(c1);
        swapped.extend_from_slice(c0);
        swapped.extend_from_slice(&stored[l.chunk_range(2).start as usize..]);
        assert!(open_all(&key, clinic, doc, &swapped, size).is_err());

        // Drop the last chunk and claim the content was that long: the new last chunk was
        // not sealed as last.
        let cut = l.chunk_range(3).start as usize;
        let shorter = 3 * CHUNK as u64;
        assert!(open_all(&key, clinic, doc, &stored[..cut], shorter).is_err());
    }

    #[test]
    fn data_keys_wrap_under_the_current_key_and_open_under_previous_ones() {
        let (old, new) = ([1u8; 32], [2u8; 32]);
        let (clinic, doc) = (Uuid::now_v7(), Uuid::now_v7());
        let before = Keyring::new(&old, &[]);
        let dk = DataKey::random();
        let (id, wrapped) = before.wrap(clinic, doc, &dk);
        assert_eq!(wrapped.len(), WRAPPED_LEN);
        assert!(id.starts_with('k') && id.len() == 17);

        let after = Keyring::new(&new, &[old]);
        assert_ne!(after.current_id(), id);
        let opened = after
            .unwrap(clinic, doc, &id, &wrapped)
            .expect("previous key opens");
        assert_eq!(opened.0, dk.0);
        assert!(matches!(
            after.unwrap(Uuid::now_v7(), doc, &id, &wrapped),
            Err(UnwrapError::Integrity)
        ));
        let only_new = Keyring::new(&new, &[]);
        assert!(matches!(
            only_new.unwrap(clinic, doc, &id, &wrapped),
            Err(UnwrapError::UnknownKey(_))
        ));
    }

    #[test]
    fn keys_decode_from_base64_of_32_bytes() {
        use base64::Engine;
        let good = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        assert_eq!(decode_key(&good), Ok([9u8; 32]));
        let short = base64::engine::general_purpose::STANDARD.encode([9u8; 16]);
        assert!(decode_key(&short).is_err());
        assert!(decode_key("not base64!").is_err());
    }
}

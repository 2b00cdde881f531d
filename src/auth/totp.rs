//! TOTP itself: RFC 6238 codes (SHA-1, six digits, 30-second steps, one step of skew
//! either way) accepted once per step, recovery codes kept as hashes, and the sealing of
//! the shared secret at rest under a key derived from `SECRET_KEY` (opened with
//! `JWT_PREVIOUS_SECRET_KEYS` after a rotation), bound to the clinic and user.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::{Rng, RngCore};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use totp_rs::{Builder, Secret, Totp};
use uuid::Uuid;

use crate::config::Config;
use crate::error::{AppError, AppResult};

const RECOVERY_CODES: usize = 10;
const ISSUER: &str = "Molar";

/// Seals TOTP secrets at rest.
pub struct SecretSeal {
    current: XChaCha20Poly1305,
    previous: Vec<XChaCha20Poly1305>,
}

pub(super) fn derive(secret: &str) -> XChaCha20Poly1305 {
    let key: [u8; 32] = Sha256::new()
        .chain_update(b"molar/totp-secret/v1")
        .chain_update(secret.as_bytes())
        .finalize()
        .into();
    XChaCha20Poly1305::new(&Key::from(key))
}

impl SecretSeal {
    pub fn new(config: &Config) -> SecretSeal {
        let current = config
            .secret_key
            .as_ref()
            .map(|s| s.expose_secret().to_owned())
            .unwrap_or_default();
        SecretSeal {
            current: derive(&current),
            previous: config
                .jwt_previous_secret_keys
                .iter()
                .map(|s| derive(s.expose_secret()))
                .collect(),
        }
    }

    /// What a sealed secret is bound to: its purpose (empty for TOTP secrets, which came
    /// first), its clinic and its owner (a user, or a webhook subscription).
    fn aad(purpose: &[u8], clinic: Uuid, owner: Uuid) -> Vec<u8> {
        [
            purpose,
            clinic.as_bytes().as_slice(),
            owner.as_bytes().as_slice(),
        ]
        .concat()
    }

    pub(super) fn seal(&self, clinic: Uuid, user: Uuid, secret: &[u8]) -> AppResult<Vec<u8>> {
        self.seal_for(b"", clinic, user, secret)
    }

    /// Seals another kind of secret (`purpose` keeps kinds apart).
    pub(crate) fn seal_for(
        &self,
        purpose: &[u8],
        clinic: Uuid,
        owner: Uuid,
        secret: &[u8],
    ) -> AppResult<Vec<u8>> {
        let mut nonce = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut nonce);
        let aad = Self::aad(purpose, clinic, owner);
        let sealed = self
            .current
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                AppError::Internal(anyhow::anyhow!("the TOTP secret could not be sealed"))
            })?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    /// Opens a sealed secret; the second value is a fresh seal under the current key when
    /// it was opened with a previous one (so that dropping that key later loses nothing).
    pub(super) fn open(
        &self,
        clinic: Uuid,
        user: Uuid,
        sealed: &[u8],
    ) -> AppResult<(Vec<u8>, Option<Vec<u8>>)> {
        self.open_for(b"", clinic, user, sealed)
    }

    /// Opens a secret sealed by [`SecretSeal::seal_for`], as [`SecretSeal::open`] does.
    pub(crate) fn open_for(
        &self,
        purpose: &[u8],
        clinic: Uuid,
        owner: Uuid,
        sealed: &[u8],
    ) -> AppResult<(Vec<u8>, Option<Vec<u8>>)> {
        let failed = || {
            AppError::Internal(anyhow::anyhow!("a sealed secret does not open (was SECRET_KEY replaced without keeping the old one in JWT_PREVIOUS_SECRET_KEYS?)"))
        };
        if sealed.len() < 24 {
            return Err(failed());
        }
        let (nonce, body) = sealed.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| failed())?;
        let aad = Self::aad(purpose, clinic, owner);
        let open = |k: &XChaCha20Poly1305| {
            k.decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .ok()
        };
        if let Some(secret) = open(&self.current) {
            return Ok((secret, None));
        }
        let secret = self.previous.iter().find_map(open).ok_or_else(failed)?;
        let resealed = self.seal_for(purpose, clinic, owner, &secret)?;
        Ok((secret, Some(resealed)))
    }
}

pub(super) fn totp(secret: &[u8], account: &str) -> AppResult<Totp> {
    Builder::new()
        .with_secret(Secret::new(secret.to_vec().into_boxed_slice()))
        .with_issuer(Some(ISSUER))
        .with_account_name(account.replace(':', "_"))
        .build()
        .map_err(|e| AppError::Internal(anyhow::anyhow!("TOTP: {e}")))
}

pub(super) fn now() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or_default()
}

/// The step a code matches (the current one or one either side), if it is later than the
/// last step accepted.
pub(super) fn accepted_step(totp: &Totp, code: &str, last: Option<i64>) -> Option<i64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let step = i64::try_from(totp.check(&code, now())?).ok()?;
    (last.is_none_or(|l| step > l)).then_some(step)
}

pub(super) fn recovery_hash(code: &str) -> Vec<u8> {
    let normal: String = code
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    Sha256::digest(normal.as_bytes()).to_vec()
}

/// Ten codes of ten characters (no 0/o, 1/l), shown as `xxxxx-xxxxx`.
pub(super) fn new_recovery_codes() -> Vec<String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    (0..RECOVERY_CODES)
        .map(|_| {
            let c: String = (0..10)
                .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
                .collect();
            format!("{}-{}", &c[..5], &c[5..])
        })
        .collect()
}

/// Turns a user's TOTP off in the transaction: secret, pending setup and recovery codes go.
pub async fn turn_off(tx: &mut crate::db::Tx, user: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE users SET totp_secret = NULL, totp_pending = NULL, totp_enabled_at = NULL, \
         totp_last_step = NULL WHERE id = $1",
        user
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query!("DELETE FROM mfa_recovery_codes WHERE user_id = $1", user)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_accepted_within_one_step_and_only_once() {
        let secret = [7u8; 20];
        let t = totp(&secret, "a@b.example").expect("totp");
        let now = now();
        let code = t.generate(now).to_string();
        let step = accepted_step(&t, &code, None).expect("current code");
        assert_eq!(accepted_step(&t, &code, Some(step)), None, "used once");
        let before = t.generate(now - 30).to_string();
        assert!(
            accepted_step(&t, &before, Some(step - 2)).is_some(),
            "one step back"
        );
        let ahead = t.generate(now + 30).to_string();
        assert!(
            accepted_step(&t, &ahead, Some(step)).is_some(),
            "one step ahead"
        );
        let stale = t.generate(now - 120).to_string();
        if stale != code && stale != before && stale != ahead {
            assert_eq!(accepted_step(&t, &stale, None), None, "four steps back");
        }
    }

    #[test]
    fn recovery_codes_are_ten_distinct_and_match_however_typed() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), 10);
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), 10);
        let c = &codes[0];
        assert_eq!(c.len(), 11);
        assert_eq!(
            recovery_hash(c),
            recovery_hash(&c.replace('-', "").to_uppercase())
        );
    }
}

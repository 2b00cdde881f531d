//! Passwords: argon2id at OWASP's parameters, hashed off the async runtime with bounded
//! concurrency, and a policy of length, a refusal of the most common passwords, and a
//! strength estimate (zxcvbn, with the user's own name and email as context).

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::error::{AppError, AppResult, FieldError};

pub const MIN_LENGTH: usize = 12;
pub const MAX_LENGTH: usize = 128;

/// OWASP: argon2id, m = 19 MiB, t = 2, p = 1.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

static COMMON: OnceLock<HashSet<&'static str>> = OnceLock::new();

fn common_passwords() -> &'static HashSet<&'static str> {
    COMMON.get_or_init(|| {
        include_str!("../../assets/common-passwords.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    })
}

/// The least zxcvbn score a new password needs: 3 of 4, "safely unguessable: moderate
/// protection from offline slow-hash scenario" (about 10^10 guesses).
pub const MIN_SCORE: u8 = 3;

/// Checks a new password against the policy; `field` names it in the 422. `context` holds
/// what the password must not be built from: the user's email and name.
pub fn check_policy(field: &str, password: &str, context: &[&str]) -> Result<(), FieldError> {
    let chars = password.chars().count();
    if chars < MIN_LENGTH {
        return Err(FieldError::new(
            field,
            format!("must be at least {MIN_LENGTH} characters"),
        ));
    }
    if chars > MAX_LENGTH {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_LENGTH} characters"),
        ));
    }
    let lowered = password.to_lowercase();
    if common_passwords().contains(lowered.as_str()) {
        return Err(FieldError::new(
            field,
            "is one of the most common passwords; choose another",
        ));
    }
    if context
        .iter()
        .any(|c| !c.is_empty() && lowered == c.to_lowercase())
    {
        return Err(FieldError::new(
            field,
            "must not be your email address or name",
        ));
    }
    // The estimator is told the email, its local part and each word of the name.
    let mut words: Vec<&str> = Vec::new();
    for c in context {
        words.push(c);
        if let Some((local, _)) = c.split_once('@') {
            words.push(local);
        }
        words.extend(c.split_whitespace());
    }
    let estimate = zxcvbn::zxcvbn(password, &words);
    if (estimate.score() as u8) < MIN_SCORE {
        let mut message = String::from("is too easy to guess");
        if let Some(feedback) = estimate.feedback() {
            if let Some(warning) = feedback.warning() {
                message.push_str(&format!(": {warning}"));
            }
            let tips: Vec<String> = feedback
                .suggestions()
                .iter()
                .map(|s| s.to_string())
                .collect();
            if !tips.is_empty() {
                message.push_str(&format!(". {}", tips.join(" ")));
            }
        }
        return Err(FieldError::new(field, message));
    }
    Ok(())
}

#[derive(Clone)]
pub struct PasswordHashing {
    permits: Arc<Semaphore>,
    /// Verified against when the email is unknown, so both failures cost the same.
    dummy_hash: Arc<str>,
}

impl PasswordHashing {
    pub fn new(concurrency: usize) -> anyhow::Result<PasswordHashing> {
        let salt = SaltString::generate(&mut OsRng);
        let dummy = argon2()
            .hash_password(b"molar-dummy-password-for-timing", &salt)
            .map_err(|e| anyhow::anyhow!("argon2 is unusable: {e}"))?
            .to_string();
        Ok(PasswordHashing {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy_hash: dummy.into(),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> AppResult<T> {
        // The permit moves into the blocking task, so that a request that gives up (its
        // client went away) cannot let more hashes run at once than allowed.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AppError::Unavailable("password hashing is shutting down".into()))?;
        tokio::task::spawn_blocking(move || {
            let out = f();
            drop(permit);
            out
        })
        .await
        .map_err(|e| AppError::Internal(anyhow::anyhow!("hashing task failed: {e}")))
    }

    pub async fn hash(&self, password: &str) -> AppResult<String> {
        let password = password.to_owned();
        self.blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon2()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| AppError::Internal(anyhow::anyhow!("hashing failed: {e}")))
        })
        .await?
    }

    /// Verifies `password` against `hash`, or against a dummy hash when there is none.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> AppResult<bool> {
        let password = password.to_owned();
        let real = hash.is_some();
        let hash = hash
            .map(str::to_owned)
            .unwrap_or_else(|| self.dummy_hash.to_string());
        let ok = self
            .blocking(move || match PasswordHash::new(&hash) {
                Ok(parsed) => argon2()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok(),
                Err(_) => false,
            })
            .await?;
        Ok(ok && real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_long_common_and_guessable_passwords_are_refused() {
        let check = |p: &str| check_policy("password", p, &[]);
        assert!(check("short").is_err());
        assert!(check(&"x".repeat(129)).is_err());
        assert!(check("qwertyuiopasdfghjkl").is_err());
        assert!(check("123456789012").is_err());
        assert!(check("correct horse battery staple 42").is_ok());
        // Length counts characters, not bytes, and there are no composition rules.
        let short = check("ééééééééééé").expect_err("11 characters");
        assert!(short.message.contains("at least 12"), "{}", short.message);
        assert!(check("Bäcker Öztürk grüßt früh").is_ok());
        // Long enough, not on the common list, but a keyboard walk plus a year.
        let weak = check("asdfghjkl2024").expect_err("guessable");
        assert!(
            weak.message.starts_with("is too easy to guess"),
            "{}",
            weak.message
        );
    }

    #[test]
    fn the_users_own_name_and_email_count_against_a_password() {
        let context = [
            "magdalena.kowalczyk@praxis-sonne.example",
            "Magdalena Kowalczyk",
        ];
        let own = "magdalena kowalczyk 1";
        assert!(
            check_policy("password", own, &[]).is_ok(),
            "strong without context"
        );
        let refused = check_policy("password", own, &context).expect_err("built from the name");
        assert_eq!(refused.field, "password");
        assert!(check_policy("password", "Magdalena Kowalczyk", &context).is_err());
    }

    #[test]
    fn the_common_list_is_large() {
        assert!(common_passwords().len() >= 10_000);
    }

    #[tokio::test]
    async fn hashes_verify_and_use_argon2id_at_owasp_cost() {
        let h = PasswordHashing::new(1).expect("hasher");
        let hash = h
            .hash("correct horse battery staple 42")
            .await
            .expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(h
            .verify("correct horse battery staple 42", Some(&hash))
            .await
            .expect("verify"));
        assert!(!h
            .verify("wrong password entirely", Some(&hash))
            .await
            .expect("verify"));
        assert!(!h
            .verify("anything at all here", None)
            .await
            .expect("verify"));
    }
}

//! Access tokens (HS256 JWTs with pinned algorithm, issuer, audience and a `kid` so keys
//! rotate) and refresh tokens (opaque: clinic, id and a random secret of which only a hash
//! is stored).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Role;
use crate::config::Config;
use crate::error::{AppError, AppResult};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// The user.
    pub sub: Uuid,
    /// The user's clinic.
    pub cid: Uuid,
    pub role: Role,
    /// The user's credential version; a mismatch with the database ends the session.
    pub ver: i32,
    /// The sign-in (refresh-token family) that issued the token; once it is revoked
    /// (logout, reuse of a refresh token) the token stops working. Absent from tokens
    /// issued before this claim existed, which are checked without it until they expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: Uuid,
    pub typ: String,
}

/// Claims already verified earlier in the request (by the rate limiter).
#[derive(Debug, Clone)]
pub struct VerifiedClaims(pub AccessClaims);

struct Key {
    kid: String,
    decoding: DecodingKey,
}

pub struct TokenService {
    current_kid: String,
    encoding: EncodingKey,
    keys: Vec<Key>,
    issuer: String,
    audience: String,
    pub access_ttl_secs: i64,
}

/// The key id of a signing secret, as carried in the JWT header.
pub fn kid_of(secret: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"molar-kid:");
    h.update(secret);
    hex::encode(&h.finalize()[..8])
}

fn unauthorized() -> AppError {
    AppError::Unauthorized("the access token is missing, invalid or expired".into())
}

impl TokenService {
    pub fn new(config: &Config) -> anyhow::Result<TokenService> {
        let secret = config
            .secret_key
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("SECRET_KEY is not set"))?;
        let current = secret.expose_secret().as_bytes();
        let mut keys = vec![Key {
            kid: kid_of(current),
            decoding: DecodingKey::from_secret(current),
        }];
        for previous in &config.jwt_previous_secret_keys {
            let bytes = previous.expose_secret().as_bytes();
            keys.push(Key {
                kid: kid_of(bytes),
                decoding: DecodingKey::from_secret(bytes),
            });
        }
        Ok(TokenService {
            current_kid: kid_of(current),
            encoding: EncodingKey::from_secret(current),
            keys,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            access_ttl_secs: config.access_token_expire_minutes * 60,
        })
    }

    pub fn issue_access(
        &self,
        user: Uuid,
        clinic: Uuid,
        role: Role,
        auth_version: i32,
        session: Uuid,
    ) -> AppResult<String> {
        let now = Utc::now().timestamp();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user,
            cid: clinic,
            role,
            ver: auth_version,
            sid: Some(session),
            iat: now,
            nbf: now,
            exp: now + self.access_ttl_secs,
            jti: Uuid::now_v7(),
            typ: "access".into(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.current_kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| AppError::Internal(anyhow::anyhow!("token signing failed: {e}")))
    }

    pub fn verify_access(&self, token: &str) -> AppResult<AccessClaims> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| unauthorized())?;
        if header.alg != Algorithm::HS256 {
            return Err(unauthorized());
        }
        let kid = header.kid.ok_or_else(unauthorized)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(unauthorized)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.validate_exp = true;
        validation.leeway = 5;
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &validation)
            .map_err(|_| unauthorized())?;
        if data.claims.typ != "access" || data.claims.iat > Utc::now().timestamp() + 5 {
            return Err(unauthorized());
        }
        Ok(data.claims)
    }
}

/// A refresh token as handed to the client: clinic, token id and secret, base64url.
pub struct RefreshToken {
    pub clinic_id: Uuid,
    pub id: Uuid,
    pub secret: [u8; 32],
}

const REFRESH_PREFIX: &str = "mrt_";

impl RefreshToken {
    pub fn generate(clinic_id: Uuid) -> RefreshToken {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        RefreshToken {
            clinic_id,
            id: Uuid::now_v7(),
            secret,
        }
    }

    pub fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(64);
        raw.extend_from_slice(self.clinic_id.as_bytes());
        raw.extend_from_slice(self.id.as_bytes());
        raw.extend_from_slice(&self.secret);
        format!("{REFRESH_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }

    pub fn decode(s: &str) -> Option<RefreshToken> {
        let raw = URL_SAFE_NO_PAD
            .decode(s.trim().strip_prefix(REFRESH_PREFIX)?)
            .ok()?;
        if raw.len() != 64 {
            return None;
        }
        let clinic_id = Uuid::from_slice(&raw[..16]).ok()?;
        let id = Uuid::from_slice(&raw[16..32]).ok()?;
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&raw[32..]);
        Some(RefreshToken {
            clinic_id,
            id,
            secret,
        })
    }

    pub fn secret_hash(&self) -> Vec<u8> {
        Sha256::digest(self.secret).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn service(secret: &str, previous: &str) -> TokenService {
        let mut vars = HashMap::new();
        vars.insert("SECRET_KEY".to_string(), secret.to_string());
        vars.insert("JWT_PREVIOUS_SECRET_KEYS".to_string(), previous.to_string());
        TokenService::new(&Config::from_map(vars).expect("config")).expect("tokens")
    }

    #[test]
    fn tokens_signed_with_a_previous_key_still_verify_after_rotation() {
        let old = service("old-secret-old-secret-old-secret-0001", "");
        let token = old
            .issue_access(
                Uuid::now_v7(),
                Uuid::now_v7(),
                Role::Dentist,
                1,
                Uuid::now_v7(),
            )
            .expect("issue");
        let rotated = service(
            "new-secret-new-secret-new-secret-0002",
            "old-secret-old-secret-old-secret-0001",
        );
        assert!(rotated.verify_access(&token).is_ok());
        let forgot = service("new-secret-new-secret-new-secret-0002", "");
        assert!(forgot.verify_access(&token).is_err());
    }

    #[test]
    fn refresh_tokens_round_trip_and_reject_garbage() {
        let t = RefreshToken::generate(Uuid::now_v7());
        let back = RefreshToken::decode(&t.encode()).expect("decodes");
        assert_eq!(back.clinic_id, t.clinic_id);
        assert_eq!(back.id, t.id);
        assert_eq!(back.secret, t.secret);
        assert!(RefreshToken::decode("mrt_short").is_none());
        assert!(RefreshToken::decode("eyJhbGciOi.x.y").is_none());
    }
}

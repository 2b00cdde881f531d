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
    /// The user treats patients (`is_provider`); an owner or admin who does holds a
    /// dentist's clinical permissions. Changing it ends the user's access tokens (through
    /// `ver`), so the claim is never stale for longer than a request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prv: bool,
    /// Setup only: the clinic requires two-factor sign-in for the user's role and they have
    /// not set it up; the token opens only the routes that set it up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stp: bool,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: Uuid,
    pub typ: String,
}

/// How long the second step of a two-factor sign-in may take.
pub const MFA_TOKEN_SECONDS: i64 = 300;

struct Grant {
    user: Uuid,
    clinic: Uuid,
    role: Role,
    provider: bool,
    auth_version: i32,
    session: Option<Uuid>,
    typ: &'static str,
    setup_only: bool,
    ttl: i64,
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
    /// What every access or second-step token must satisfy, built once: its sets of
    /// issuers, audiences and required claims would otherwise be allocated per request.
    validation: Validation,
    pub access_ttl_secs: i64,
}

/// The key id of a signing secret, as carried in the JWT header.
pub fn kid_of(secret: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"molar-kid:");
    h.update(secret);
    hex::encode(&h.finalize()[..8])
}

/// HS256 only, from `issuer` for `audience`, within its times (five seconds' leeway for
/// clocks), with every claim the checks rely on present.
fn validation(issuer: &str, audience: &str) -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    validation.validate_exp = true;
    validation.leeway = 5;
    validation
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
            validation: validation(&config.jwt_issuer, &config.jwt_audience),
            access_ttl_secs: config.access_token_expire_minutes * 60,
        })
    }

    pub fn issue_access(
        &self,
        user: Uuid,
        clinic: Uuid,
        role: Role,
        provider: bool,
        auth_version: i32,
        session: Uuid,
    ) -> AppResult<String> {
        self.issue(Grant {
            user,
            clinic,
            role,
            provider,
            auth_version,
            session: Some(session),
            typ: "access",
            setup_only: false,
            ttl: self.access_ttl_secs,
        })
    }

    /// A token for the second step of a sign-in with two-factor authentication
    /// (`POST /auth/login/mfa`), valid [`MFA_TOKEN_SECONDS`].
    pub fn issue_mfa(
        &self,
        user: Uuid,
        clinic: Uuid,
        role: Role,
        auth_version: i32,
    ) -> AppResult<String> {
        self.issue(Grant {
            user,
            clinic,
            role,
            provider: false,
            auth_version,
            session: None,
            typ: "mfa",
            setup_only: false,
            ttl: MFA_TOKEN_SECONDS,
        })
    }

    /// An access token that opens only the routes that set up two-factor sign-in.
    pub fn issue_setup_only(
        &self,
        user: Uuid,
        clinic: Uuid,
        role: Role,
        provider: bool,
        auth_version: i32,
    ) -> AppResult<String> {
        self.issue(Grant {
            user,
            clinic,
            role,
            provider,
            auth_version,
            session: None,
            typ: "access",
            setup_only: true,
            ttl: self.access_ttl_secs,
        })
    }

    fn issue(&self, g: Grant) -> AppResult<String> {
        let now = Utc::now().timestamp();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: g.user,
            cid: g.clinic,
            role: g.role,
            ver: g.auth_version,
            sid: g.session,
            prv: g.provider,
            stp: g.setup_only,
            iat: now,
            nbf: now,
            exp: now + g.ttl,
            jti: Uuid::now_v7(),
            typ: g.typ.into(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.current_kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| AppError::Internal(anyhow::anyhow!("token signing failed: {e}")))
    }

    pub fn verify_access(&self, token: &str) -> AppResult<AccessClaims> {
        self.verify(token, "access")
    }

    /// The claims of a second-step token from [`TokenService::issue_mfa`].
    pub fn verify_mfa(&self, token: &str) -> AppResult<AccessClaims> {
        self.verify(token, "mfa")
    }

    fn verify(&self, token: &str, typ: &str) -> AppResult<AccessClaims> {
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
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &self.validation)
            .map_err(|_| unauthorized())?;
        if data.claims.typ != typ || data.claims.iat > Utc::now().timestamp() + 5 {
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
                true,
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

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const SECRET: &str = "property-secret-property-secret-0001";

    fn service() -> TokenService {
        let mut vars = HashMap::new();
        vars.insert("SECRET_KEY".to_string(), SECRET.to_string());
        TokenService::new(&Config::from_map(vars).expect("config")).expect("tokens")
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Text shaped like a JWT: three base64url segments, some of them JSON.
    fn jwt_like() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            "[A-Za-z0-9_-]{0,60}",
            any::<String>().prop_map(|s| b64(s.as_bytes())),
            proptest::sample::select(vec![
                r#"{"alg":"none","typ":"JWT"}"#,
                r#"{"alg":"HS256"}"#,
                r#"{"alg":"HS256","kid":"0000000000000000"}"#,
                r#"{"alg":"RS256","kid":"x"}"#,
                r#"{}"#,
                r#"null"#,
            ])
            .prop_map(|s| b64(s.as_bytes())),
        ];
        (segment.clone(), segment.clone(), segment).prop_map(|(h, p, s)| format!("{h}.{p}.{s}"))
    }

    /// An offset from now, in seconds, well clear of the 5-second leeway: mostly in the
    /// past (`past`) or mostly in the future.
    fn offset(past: bool) -> impl Strategy<Value = i64> {
        let (likely, unlikely) = if past {
            (-100_000i64..-60, 60i64..100_000)
        } else {
            (60i64..100_000, -100_000i64..-60)
        };
        prop_oneof![6 => likely, 1 => unlikely]
    }

    /// Mostly true, so that a case with every claim right comes up often.
    fn mostly() -> impl Strategy<Value = bool> {
        proptest::bool::weighted(6.0 / 7.0)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_text_never_verifies_as_an_access_token(
            s in prop_oneof![any::<String>(), jwt_like()],
        ) {
            let tokens = service();
            prop_assert!(tokens.verify_access(&s).is_err());
            prop_assert!(tokens.verify_access(s.trim()).is_err());
        }

        #[test]
        fn any_changed_character_of_an_issued_token_is_refused(
            at in any::<prop::sample::Index>(),
            c in any::<char>(),
        ) {
            let tokens = service();
            let token = tokens
                .issue_access(Uuid::now_v7(), Uuid::now_v7(), Role::Dentist, true, 1, Uuid::now_v7())
                .expect("issue");
            prop_assert!(tokens.verify_access(&token).is_ok());
            let i = at.index(token.len());
            prop_assume!(token.as_bytes()[i] as char != c);
            let mut changed = token.clone();
            changed.replace_range(i..=i, c.encode_utf8(&mut [0; 4]));
            prop_assert!(tokens.verify_access(&changed).is_err(), "{} accepted", changed);
        }

        #[test]
        fn a_token_is_accepted_only_with_every_claim_right(
            right_iss in mostly(),
            right_aud in mostly(),
            typ in prop_oneof![
                6 => Just("access"),
                1 => proptest::sample::select(vec!["refresh", "Access", ""]),
            ],
            exp in offset(false),
            nbf in offset(true),
            iat in offset(true),
            right_key in mostly(),
            alg in prop_oneof![
                6 => Just(Algorithm::HS256),
                1 => proptest::sample::select(vec![Algorithm::HS384, Algorithm::HS512]),
            ],
        ) {
            let tokens = service();
            let now = Utc::now().timestamp();
            let claims = AccessClaims {
                iss: if right_iss { tokens.issuer.clone() } else { format!("{}x", tokens.issuer) },
                aud: if right_aud { tokens.audience.clone() } else { format!("x{}", tokens.audience) },
                sub: Uuid::now_v7(),
                cid: Uuid::now_v7(),
                role: Role::Owner,
                ver: 1,
                sid: Some(Uuid::now_v7()),
                prv: false,
                stp: false,
                iat: now + iat,
                nbf: now + nbf,
                exp: now + exp,
                jti: Uuid::now_v7(),
                typ: typ.to_owned(),
            };
            // The header always names the server's key; only the right secret signs with it.
            let mut header = Header::new(alg);
            header.kid = Some(tokens.current_kid.clone());
            let secret = if right_key { SECRET.to_owned() } else { format!("{SECRET}-forged") };
            let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret.as_bytes()))
                .expect("sign");
            let valid = right_iss && right_aud && typ == "access" && exp > 0 && nbf < 0 && iat < 0
                && right_key && alg == Algorithm::HS256;
            prop_assert_eq!(tokens.verify_access(&token).is_ok(), valid);
        }

        #[test]
        fn issued_refresh_tokens_round_trip(clinic in any::<u128>()) {
            let t = RefreshToken::generate(Uuid::from_u128(clinic));
            let s = t.encode();
            prop_assert!(s.starts_with(REFRESH_PREFIX));
            let back = RefreshToken::decode(&s).expect("decodes");
            prop_assert_eq!(back.clinic_id, t.clinic_id);
            prop_assert_eq!(back.id, t.id);
            prop_assert_eq!(back.secret, t.secret);
            prop_assert_eq!(back.secret_hash(), t.secret_hash());
            // Neither kind of token passes for the other.
            prop_assert!(service().verify_access(&s).is_err());
            let access = service()
                .issue_access(Uuid::now_v7(), t.clinic_id, Role::Owner, false, 1, Uuid::now_v7())
                .expect("issue");
            prop_assert!(RefreshToken::decode(&access).is_none());
        }

        #[test]
        fn a_refresh_token_parses_only_in_its_own_spelling(
            s in prop_oneof![
                any::<String>(),
                "mrt_[A-Za-z0-9_-]{80,90}",
                proptest::collection::vec(any::<u8>(), 60..68)
                    .prop_map(|raw| format!("{REFRESH_PREFIX}{}", b64(&raw))),
                proptest::collection::vec(any::<u8>(), 64)
                    .prop_map(|raw| format!("MRT_{}", b64(&raw))),
            ],
        ) {
            // What parses is exactly the encoding of what it parsed to: no second spelling
            // (padding, other alphabets, stray bits, other lengths) names the same token.
            if let Some(t) = RefreshToken::decode(&s) {
                prop_assert_eq!(t.encode(), s.trim());
            }
        }

        #[test]
        fn a_changed_character_of_a_refresh_token_changes_or_breaks_it(
            at in any::<prop::sample::Index>(),
            c in any::<char>(),
        ) {
            let t = RefreshToken::generate(Uuid::now_v7());
            let s = t.encode();
            let i = at.index(s.len());
            prop_assume!(s.as_bytes()[i] as char != c);
            let mut changed = s.clone();
            changed.replace_range(i..=i, c.encode_utf8(&mut [0; 4]));
            if let Some(back) = RefreshToken::decode(&changed) {
                prop_assert!(
                    back.clinic_id != t.clinic_id || back.id != t.id || back.secret != t.secret,
                    "{} names the same token as {}", changed, s
                );
            }
        }
    }
}

//! Typed configuration: defaults, then an optional file (`MOLAR_CONFIG_FILE`), then the
//! environment, read into [`Settings`] and validated once into [`Config`]; production
//! refuses unsafe settings. [`reference`] documents every variable.

mod de;
#[cfg(test)]
mod generated_docs;
pub mod reference;
mod settings;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

pub use de::Parsed;
use reference::{Allowed, Setting};
pub use settings::{Settings, CONFIG_FILE_VARIABLE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Test,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Test => "test",
            Environment::Production => "production",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Secrets that ship in examples or are commonly left in place; never accepted in production.
const KNOWN_DEFAULT_SECRETS: &[&str] = &[
    "changeme",
    "change-me",
    "secret",
    "dev",
    "development",
    "test",
    "your-secret-key",
    "replace-with-64-random-hex-characters-generated-by-openssl-rand-hex-32",
    "molar-development-secret-key-not-for-production-use",
];

/// Minimum length of a signing secret in production.
pub const MIN_SECRET_BYTES: usize = 32;

/// `HSTS_MAX_AGE` in production when it is not set: two years, the most it accepts.
pub const HSTS_TWO_YEARS: u64 = 63_072_000;

#[derive(Debug, Clone)]
pub struct Config {
    pub environment: Environment,
    pub host: String,
    pub port: u16,
    pub log_level: String,
    pub log_format: LogFormat,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub shutdown_drain: Duration,
    pub hsts_max_age: u64,

    pub database_url: Option<SecretString>,
    pub migration_database_url: Option<SecretString>,
    pub database_read_url: Option<SecretString>,
    pub db_pool_size: u32,
    pub db_pool_timeout: Duration,
    pub db_pool_recycle: Duration,

    pub redis_url: Option<SecretString>,
    pub require_redis: bool,
    pub redis_key_prefix: String,
    pub redis_timeout: Duration,
    pub cache_enabled: bool,
    pub cache_default_ttl: Duration,

    pub secret_key: Option<SecretString>,
    pub jwt_previous_secret_keys: Vec<SecretString>,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub access_token_expire_minutes: i64,
    pub refresh_token_expire_days: i64,
    pub refresh_token_idle_days: i64,
    pub password_hash_concurrency: usize,

    pub rate_limit_per_minute: u32,
    pub rate_limit_clinic_per_minute: u32,
    pub rate_limit_anon_per_minute: u32,
    pub login_rate_limit_per_minute: u32,
    pub login_ip_rate_limit_per_minute: u32,
    pub signup_rate_limit_per_hour: u32,
    pub trusted_proxies: Vec<IpNet>,

    pub allowed_origins: Vec<String>,
    pub allow_clinic_signup: bool,
    pub metrics_token: Option<SecretString>,
    pub metrics_port: Option<u16>,

    pub stripe_secret_key: Option<SecretString>,
    pub stripe_webhook_secret: Option<SecretString>,
    pub stripe_api_base: String,

    pub smtp_url: Option<SecretString>,
    pub mail_from: String,
    /// The front-end's address, for links in emails (no trailing slash).
    pub public_app_url: String,
    /// Without a trailing slash.
    pub public_api_url: String,
    pub password_reset_rate_limit_per_hour: u32,
    pub email_verification_grace_hours: u32,
    pub webhook_allow_private: bool,

    pub appointment_max_minutes: u32,
    pub calendar_max_days: u32,
    pub availability_grid_minutes: u32,

    pub medical_records_storage_path: PathBuf,
    /// `s3://bucket[/prefix]`; `None` stores documents under the storage path.
    pub document_store_url: Option<String>,
    /// The S3 client's settings: every `AWS_*` variable (credentials, region, endpoint).
    pub document_store_options: Vec<(String, SecretString)>,
    pub file_encryption_key: Option<SecretString>,
    pub file_encryption_keys: Vec<SecretString>,
    pub max_upload_mb: u32,
    pub upload_timeout: Duration,
    pub document_retention_days: u32,
    pub audit_retention_months: u32,
    /// How long a break-glass grant opens a restricted patient's clinical record.
    pub break_glass_minutes: u32,
}

/// Why the configuration was refused. Never carries a secret's value.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Reads `MOLAR_CONFIG_FILE` (if set) and the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut vars = HashMap::new();
        let mut unreadable = Vec::new();
        for (name, value) in std::env::vars_os() {
            match (name.into_string(), value.into_string()) {
                (Ok(name), Ok(value)) => {
                    vars.insert(name, value);
                }
                (Ok(name), Err(_))
                    if name == CONFIG_FILE_VARIABLE
                        || reference::settings().any(|s| s.name == name) =>
                {
                    unreadable.push(format!("{name} is not valid UTF-8"));
                }
                // Not one of ours.
                _ => {}
            }
        }
        match (Config::from_map(vars), unreadable.is_empty()) {
            (Ok(config), true) => Ok(config),
            (Ok(_), false) => Err(ConfigError(unreadable)),
            (Err(ConfigError(problems)), _) => Err(ConfigError(
                unreadable.into_iter().chain(problems).collect(),
            )),
        }
    }

    /// Builds the configuration from a map of variable names (as in the environment) to values.
    /// `MOLAR_CONFIG_FILE` in the map names an optional TOML file read underneath it.
    pub fn from_map(vars: HashMap<String, String>) -> Result<Config, ConfigError> {
        let mut aws: Vec<(String, SecretString)> = vars
            .iter()
            .filter(|(k, v)| k.starts_with("AWS_") && !v.trim().is_empty())
            .map(|(k, v)| (k.clone(), SecretString::from(v.trim().to_owned())))
            .collect();
        aws.sort_by(|a, b| a.0.cmp(&b.0));
        let mut config = Config::from_settings(Settings::from_map(vars)?)?;
        config.document_store_options = aws;
        Ok(config)
    }

    /// The one validation pass: every value that did not parse, every number outside its
    /// range (from [`reference`]) and every production guard, reported together.
    pub fn from_settings(s: Settings) -> Result<Config, ConfigError> {
        use reference as r;
        let mut check = Check::default();
        let environment = check
            .value(&r::ENVIRONMENT, s.environment)
            .unwrap_or(Environment::Development);
        let production = environment == Environment::Production;
        let default_format = if production {
            LogFormat::Json
        } else {
            LogFormat::Pretty
        };

        let config = Config {
            environment,
            host: s.host,
            port: check.number(&r::PORT, s.port),
            log_level: s.log_level,
            log_format: check
                .optional(&r::LOG_FORMAT, s.log_format)
                .unwrap_or(default_format),
            request_timeout: Duration::from_secs(
                check.number(&r::REQUEST_TIMEOUT_SECONDS, s.request_timeout_seconds),
            ),
            max_body_bytes: check.number(&r::MAX_BODY_KB, s.max_body_kb) * 1024,
            shutdown_drain: Duration::from_secs(
                check.number(&r::SHUTDOWN_DRAIN_SECONDS, s.shutdown_drain_seconds),
            ),
            hsts_max_age: s
                .hsts_max_age
                .map(|v| check.number(&r::HSTS_MAX_AGE, v))
                .unwrap_or(if production { HSTS_TWO_YEARS } else { 0 }),

            database_url: s.database_url,
            migration_database_url: s.migration_database_url,
            database_read_url: s.database_read_url,
            db_pool_size: check.number(&r::DB_POOL_SIZE, s.db_pool_size),
            db_pool_timeout: Duration::from_secs(
                check.number(&r::DB_POOL_TIMEOUT, s.db_pool_timeout),
            ),
            db_pool_recycle: Duration::from_secs(
                check.number(&r::DB_POOL_RECYCLE, s.db_pool_recycle),
            ),

            redis_url: s.redis_url,
            require_redis: check
                .optional(&r::REQUIRE_REDIS, s.require_redis)
                .unwrap_or(production),
            redis_key_prefix: s.redis_key_prefix,
            redis_timeout: Duration::from_millis(
                check.number(&r::REDIS_TIMEOUT_MS, s.redis_timeout_ms),
            ),
            cache_enabled: check
                .value(&r::CACHE_ENABLED, s.cache_enabled)
                .unwrap_or_default(),
            cache_default_ttl: Duration::from_secs(
                check.number(&r::CACHE_DEFAULT_TTL, s.cache_default_ttl),
            ),

            secret_key: s.secret_key,
            jwt_previous_secret_keys: s.jwt_previous_secret_keys,
            jwt_issuer: s.jwt_issuer,
            jwt_audience: s.jwt_audience,
            access_token_expire_minutes: check.number(
                &r::ACCESS_TOKEN_EXPIRE_MINUTES,
                s.access_token_expire_minutes,
            ),
            refresh_token_expire_days: check
                .number(&r::REFRESH_TOKEN_EXPIRE_DAYS, s.refresh_token_expire_days),
            refresh_token_idle_days: check
                .number(&r::REFRESH_TOKEN_IDLE_DAYS, s.refresh_token_idle_days),
            password_hash_concurrency: check
                .number(&r::PASSWORD_HASH_CONCURRENCY, s.password_hash_concurrency),

            rate_limit_per_minute: check.number(&r::RATE_LIMIT_PER_MINUTE, s.rate_limit_per_minute),
            rate_limit_clinic_per_minute: check.number(
                &r::RATE_LIMIT_CLINIC_PER_MINUTE,
                s.rate_limit_clinic_per_minute,
            ),
            rate_limit_anon_per_minute: check
                .number(&r::RATE_LIMIT_ANON_PER_MINUTE, s.rate_limit_anon_per_minute),
            login_rate_limit_per_minute: check.number(
                &r::LOGIN_RATE_LIMIT_PER_MINUTE,
                s.login_rate_limit_per_minute,
            ),
            login_ip_rate_limit_per_minute: check.number(
                &r::LOGIN_IP_RATE_LIMIT_PER_MINUTE,
                s.login_ip_rate_limit_per_minute,
            ),
            signup_rate_limit_per_hour: check
                .number(&r::SIGNUP_RATE_LIMIT_PER_HOUR, s.signup_rate_limit_per_hour),
            trusted_proxies: s
                .trusted_proxies
                .into_iter()
                .filter_map(|p| check.value(&r::TRUSTED_PROXIES, p))
                .collect(),

            allowed_origins: s.allowed_origins,
            allow_clinic_signup: check
                .optional(&r::ALLOW_CLINIC_SIGNUP, s.allow_clinic_signup)
                .unwrap_or(!production),
            metrics_token: s.metrics_token,
            metrics_port: s.metrics_port.map(|p| check.number(&r::METRICS_PORT, p)),

            stripe_secret_key: s.stripe_secret_key,
            stripe_webhook_secret: s.stripe_webhook_secret,
            stripe_api_base: s.stripe_api_base.trim_end_matches('/').to_owned(),

            smtp_url: s.smtp_url,
            mail_from: s.mail_from,
            public_app_url: s.public_app_url.trim_end_matches('/').to_owned(),
            public_api_url: s.public_api_url.trim_end_matches('/').to_owned(),
            password_reset_rate_limit_per_hour: check.number(
                &r::PASSWORD_RESET_RATE_LIMIT_PER_HOUR,
                s.password_reset_rate_limit_per_hour,
            ),
            email_verification_grace_hours: check.number(
                &r::EMAIL_VERIFICATION_GRACE_HOURS,
                s.email_verification_grace_hours,
            ),
            webhook_allow_private: check
                .value(&r::WEBHOOK_ALLOW_PRIVATE, s.webhook_allow_private)
                .unwrap_or_default(),

            appointment_max_minutes: check
                .number(&r::APPOINTMENT_MAX_MINUTES, s.appointment_max_minutes),
            calendar_max_days: check.number(&r::CALENDAR_MAX_DAYS, s.calendar_max_days),
            availability_grid_minutes: check
                .number(&r::AVAILABILITY_GRID_MINUTES, s.availability_grid_minutes),

            medical_records_storage_path: s.medical_records_storage_path,
            document_store_url: s.document_store_url,
            document_store_options: Vec::new(),
            file_encryption_key: s.file_encryption_key,
            file_encryption_keys: s.file_encryption_keys,
            max_upload_mb: check.number(&r::MAX_UPLOAD_MB, s.max_upload_mb),
            upload_timeout: Duration::from_secs(
                check.number(&r::UPLOAD_TIMEOUT_SECONDS, s.upload_timeout_seconds),
            ),
            document_retention_days: check
                .number(&r::DOCUMENT_RETENTION_DAYS, s.document_retention_days),
            audit_retention_months: check
                .number(&r::AUDIT_RETENTION_MONTHS, s.audit_retention_months),
            break_glass_minutes: check.number(&r::BREAK_GLASS_MINUTES, s.break_glass_minutes),
        };

        let mut problems = check.problems;
        problems.extend(config.document_problems());
        problems.extend(config.production_problems());
        if config
            .allowed_origins
            .iter()
            .any(|o| o != "*" && !(o.starts_with("http://") || o.starts_with("https://")))
        {
            problems
                .push("ALLOWED_ORIGINS must list origins such as https://app.example.com".into());
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(problems))
        }
    }

    /// The guards that stop a production server from starting with unsafe settings.
    fn production_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.environment != Environment::Production {
            return problems;
        }
        match &self.secret_key {
            None => problems.push("SECRET_KEY is required in production".into()),
            Some(s) => {
                if let Some(why) = weak_secret(s.expose_secret()) {
                    problems.push(format!("SECRET_KEY {why}"));
                }
            }
        }
        for (i, s) in self.jwt_previous_secret_keys.iter().enumerate() {
            if let Some(why) = weak_secret(s.expose_secret()) {
                problems.push(format!("JWT_PREVIOUS_SECRET_KEYS entry {} {why}", i + 1));
            }
        }
        if self.allowed_origins.iter().any(|o| o == "*") {
            problems.push(
                "ALLOWED_ORIGINS=* is not allowed in production; list the front-end origins".into(),
            );
        }
        if self.require_redis && self.redis_url.is_none() {
            problems.push("REDIS_URL is required when REQUIRE_REDIS=true".into());
        }
        if self.database_url.is_none() {
            problems.push("DATABASE_URL is required in production".into());
        }
        if let Some(t) = &self.metrics_token {
            if t.expose_secret().len() < 16 || t.expose_secret().to_lowercase().contains("replace")
            {
                problems.push("METRICS_TOKEN must be at least 16 characters".into());
            }
        }
        if self.stripe_secret_key.is_some() != self.stripe_webhook_secret.is_some() {
            problems.push(
                "Stripe is half-configured: set both STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET, or neither"
                    .into(),
            );
        }
        problems
    }

    /// Keys that do not decode and store URLs this server cannot use, in every environment.
    fn document_problems(&self) -> Vec<String> {
        use crate::documents::crypto::decode_key;
        let mut problems = Vec::new();
        if let Some(k) = &self.file_encryption_key {
            if let Err(why) = decode_key(k.expose_secret()) {
                problems.push(format!("FILE_ENCRYPTION_KEY {why}"));
            }
        }
        for (i, k) in self.file_encryption_keys.iter().enumerate() {
            if let Err(why) = decode_key(k.expose_secret()) {
                problems.push(format!("FILE_ENCRYPTION_KEYS entry {} {why}", i + 1));
            }
        }
        if !(self.public_app_url.starts_with("http://")
            || self.public_app_url.starts_with("https://"))
        {
            problems.push("PUBLIC_APP_URL must be an http:// or https:// address".into());
        }
        if !(self.public_api_url.starts_with("http://")
            || self.public_api_url.starts_with("https://"))
        {
            problems.push("PUBLIC_API_URL must be an http:// or https:// address".into());
        }
        if let Some(url) = &self.document_store_url {
            let bucket = url.strip_prefix("s3://").unwrap_or_default();
            if bucket.is_empty() || bucket.starts_with('/') {
                problems
                    .push("DOCUMENT_STORE_URL must be s3://bucket or s3://bucket/prefix".into());
            }
        }
        problems
    }

    pub fn is_production(&self) -> bool {
        self.environment == Environment::Production
    }

    /// Whether `/metrics` on the main port needs no token.
    pub fn metrics_open(&self) -> bool {
        !self.is_production() && self.metrics_token.is_none()
    }
}

fn weak_secret(s: &str) -> Option<&'static str> {
    let lowered = s.to_ascii_lowercase();
    if KNOWN_DEFAULT_SECRETS.contains(&lowered.as_str())
        || lowered.contains("changeme")
        || lowered.contains("replace")
        || lowered.contains("example")
    {
        Some("is a known default; generate one with `openssl rand -hex 32`")
    } else if s.len() < MIN_SECRET_BYTES {
        Some("must be at least 32 bytes; generate one with `openssl rand -hex 32`")
    } else {
        None
    }
}

/// Collects the problems of the validation pass. A value with a problem is replaced by a
/// placeholder, which never escapes: with any problem recorded no `Config` is returned.
#[derive(Default)]
struct Check {
    problems: Vec<String>,
}

impl Check {
    /// The value, or `None` (and a problem naming the variable) if it did not parse.
    fn value<T>(&mut self, setting: &Setting, value: Parsed<T>) -> Option<T> {
        match value {
            Parsed::Valid(v) => Some(v),
            Parsed::Invalid(text) => {
                self.refuse(setting, &text);
                None
            }
        }
    }

    /// As [`Check::value`], for a setting whose default depends on the environment.
    fn optional<T>(&mut self, setting: &Setting, value: Option<Parsed<T>>) -> Option<T> {
        value.and_then(|v| self.value(setting, v))
    }

    /// A number inside the range its reference row allows.
    fn number<T>(&mut self, setting: &Setting, value: Parsed<T>) -> T
    where
        T: Copy + Default + std::fmt::Display + TryInto<i64>,
    {
        let Some(n) = self.value(setting, value) else {
            return T::default();
        };
        if let Allowed::Range { min, max } = setting.allowed {
            let inside = n.try_into().is_ok_and(|v: i64| (min..=max).contains(&v));
            if !inside {
                self.refuse(setting, &n.to_string());
                return T::default();
            }
        }
        n
    }

    fn refuse(&mut self, setting: &Setting, text: &str) {
        let got = match setting.allowed {
            Allowed::Secret(_) => String::new(),
            _ => format!(" (got {text:?})"),
        };
        self.problems.push(format!(
            "{} {}{got}",
            setting.name,
            setting.allowed.expectation()
        ));
    }
}

#[cfg(test)]
mod tests;

//! The settings as read, one field per variable, before validation: built-in defaults, then
//! the optional TOML file named by `MOLAR_CONFIG_FILE`, then the environment on top.

use std::collections::HashMap;
use std::path::PathBuf;

use config::{Source, Value, ValueKind};
use ipnet::IpNet;
use secrecy::SecretString;
use serde::Deserialize;

use super::de::{self, Parsed};
use super::{ConfigError, Environment, LogFormat};

/// The variable naming the optional TOML file read underneath the environment.
pub const CONFIG_FILE_VARIABLE: &str = "MOLAR_CONFIG_FILE";

/// One field per variable (the field name is the variable's name in lowercase; the file uses
/// the same keys). A field missing or empty takes its default; an `Option` left `None` takes
/// a default that depends on `ENVIRONMENT`, chosen by [`super::Config::from_settings`].
/// [`super::reference`] documents every field; a test keeps the two in step.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Settings {
    // Runtime
    pub environment: Parsed<Environment>,
    #[serde(deserialize_with = "de::text")]
    pub host: String,
    pub port: Parsed<u16>,
    #[serde(deserialize_with = "de::text")]
    pub log_level: String,
    /// JSON in production, pretty otherwise.
    pub log_format: Option<Parsed<LogFormat>>,
    pub request_timeout_seconds: Parsed<u64>,
    pub max_body_kb: Parsed<usize>,
    pub shutdown_drain_seconds: Parsed<u64>,
    pub hsts_max_age: Option<Parsed<u64>>,

    // Database
    #[serde(deserialize_with = "de::secret")]
    pub database_url: Option<SecretString>,
    #[serde(deserialize_with = "de::secret")]
    pub migration_database_url: Option<SecretString>,
    #[serde(deserialize_with = "de::secret")]
    pub database_read_url: Option<SecretString>,
    pub db_pool_size: Parsed<u32>,
    pub db_pool_timeout: Parsed<u64>,
    pub db_pool_recycle: Parsed<u64>,

    // Redis
    #[serde(deserialize_with = "de::secret")]
    pub redis_url: Option<SecretString>,
    /// On in production, off otherwise.
    pub require_redis: Option<Parsed<bool>>,
    #[serde(deserialize_with = "de::text")]
    pub redis_key_prefix: String,
    pub redis_timeout_ms: Parsed<u64>,
    pub cache_enabled: Parsed<bool>,
    pub cache_default_ttl: Parsed<u64>,

    // Tokens
    #[serde(deserialize_with = "de::secret")]
    pub secret_key: Option<SecretString>,
    #[serde(deserialize_with = "de::list")]
    pub jwt_previous_secret_keys: Vec<SecretString>,
    #[serde(deserialize_with = "de::text")]
    pub jwt_issuer: String,
    #[serde(deserialize_with = "de::text")]
    pub jwt_audience: String,
    pub access_token_expire_minutes: Parsed<i64>,
    pub refresh_token_expire_days: Parsed<i64>,
    pub refresh_token_idle_days: Parsed<i64>,
    pub password_hash_concurrency: Parsed<usize>,

    // Limits
    pub rate_limit_per_minute: Parsed<u32>,
    pub rate_limit_clinic_per_minute: Parsed<u32>,
    pub rate_limit_anon_per_minute: Parsed<u32>,
    pub login_rate_limit_per_minute: Parsed<u32>,
    pub login_ip_rate_limit_per_minute: Parsed<u32>,
    pub signup_rate_limit_per_hour: Parsed<u32>,
    #[serde(deserialize_with = "de::parsed_list")]
    pub trusted_proxies: Vec<Parsed<IpNet>>,

    // Web
    #[serde(deserialize_with = "de::list")]
    pub allowed_origins: Vec<String>,
    /// Off in production, on otherwise.
    pub allow_clinic_signup: Option<Parsed<bool>>,
    #[serde(deserialize_with = "de::secret")]
    pub metrics_token: Option<SecretString>,
    pub metrics_port: Option<Parsed<u16>>,

    // Payments
    #[serde(deserialize_with = "de::secret")]
    pub stripe_secret_key: Option<SecretString>,
    #[serde(deserialize_with = "de::secret")]
    pub stripe_webhook_secret: Option<SecretString>,
    #[serde(deserialize_with = "de::text")]
    pub stripe_api_base: String,

    // Email
    #[serde(deserialize_with = "de::secret")]
    pub smtp_url: Option<SecretString>,
    #[serde(deserialize_with = "de::text")]
    pub mail_from: String,
    #[serde(deserialize_with = "de::text")]
    pub public_app_url: String,
    #[serde(deserialize_with = "de::text")]
    pub public_api_url: String,
    pub password_reset_rate_limit_per_hour: Parsed<u32>,
    pub email_verification_grace_hours: Parsed<u32>,
    pub webhook_allow_private: Parsed<bool>,

    // Clinic rules
    pub appointment_max_minutes: Parsed<u32>,
    pub calendar_max_days: Parsed<u32>,
    pub availability_grid_minutes: Parsed<u32>,

    // Records and audit
    #[serde(deserialize_with = "de::text")]
    pub medical_records_storage_path: PathBuf,
    #[serde(deserialize_with = "de::optional_text")]
    pub document_store_url: Option<String>,
    #[serde(deserialize_with = "de::secret")]
    pub file_encryption_key: Option<SecretString>,
    #[serde(deserialize_with = "de::list")]
    pub file_encryption_keys: Vec<SecretString>,
    pub max_upload_mb: Parsed<u32>,
    pub upload_timeout_seconds: Parsed<u64>,
    pub document_retention_days: Parsed<u32>,
    pub audit_retention_months: Parsed<u32>,
    pub break_glass_minutes: Parsed<u32>,
}

/// The defaults that do not depend on the environment, set once; the reference table shows
/// them and a test checks that it shows these.
impl Default for Settings {
    fn default() -> Self {
        Settings {
            environment: Environment::Development.into(),
            host: "127.0.0.1".into(),
            port: 8000.into(),
            log_level: "info".into(),
            log_format: None,
            request_timeout_seconds: 30.into(),
            max_body_kb: 1024.into(),
            shutdown_drain_seconds: 5.into(),
            hsts_max_age: None,

            database_url: None,
            migration_database_url: None,
            database_read_url: None,
            db_pool_size: 10.into(),
            db_pool_timeout: 5.into(),
            db_pool_recycle: 1800.into(),

            redis_url: None,
            require_redis: None,
            redis_key_prefix: "molar:".into(),
            redis_timeout_ms: 250.into(),
            cache_enabled: true.into(),
            cache_default_ttl: 300.into(),

            secret_key: None,
            jwt_previous_secret_keys: Vec::new(),
            jwt_issuer: "molar".into(),
            jwt_audience: "molar-api".into(),
            access_token_expire_minutes: 15.into(),
            refresh_token_expire_days: 30.into(),
            refresh_token_idle_days: 7.into(),
            password_hash_concurrency: 2.into(),

            rate_limit_per_minute: 600.into(),
            rate_limit_clinic_per_minute: 6000.into(),
            rate_limit_anon_per_minute: 120.into(),
            login_rate_limit_per_minute: 5.into(),
            login_ip_rate_limit_per_minute: 20.into(),
            signup_rate_limit_per_hour: 5.into(),
            trusted_proxies: Vec::new(),

            allowed_origins: Vec::new(),
            allow_clinic_signup: None,
            metrics_token: None,
            metrics_port: None,

            stripe_secret_key: None,
            stripe_webhook_secret: None,
            stripe_api_base: "https://api.stripe.com".into(),

            smtp_url: None,
            mail_from: "Molar <no-reply@molar.invalid>".into(),
            public_app_url: "http://localhost:3000".into(),
            public_api_url: "http://localhost:8000".into(),
            password_reset_rate_limit_per_hour: 5.into(),
            email_verification_grace_hours: 72.into(),
            webhook_allow_private: false.into(),

            appointment_max_minutes: 480.into(),
            calendar_max_days: 62.into(),
            availability_grid_minutes: 15.into(),

            medical_records_storage_path: PathBuf::from(".molar/records"),
            document_store_url: None,
            file_encryption_key: None,
            file_encryption_keys: Vec::new(),
            max_upload_mb: 25.into(),
            upload_timeout_seconds: 900.into(),
            document_retention_days: 3650.into(),
            audit_retention_months: 72.into(),
            break_glass_minutes: 60.into(),
        }
    }
}

impl Settings {
    /// Reads the settings from a map of variable names (as in the environment) to values,
    /// underneath which the TOML file named by `MOLAR_CONFIG_FILE` (if any) is read. Only an
    /// unreadable source fails here; bad values are left for the validation pass.
    pub fn from_map(vars: HashMap<String, String>) -> Result<Settings, ConfigError> {
        let unreadable = |e: config::ConfigError| {
            ConfigError(vec![format!("could not read configuration: {e}")])
        };
        let mut builder = config::Config::builder();
        if let Some(file) = vars.get(CONFIG_FILE_VARIABLE).filter(|f| !f.is_empty()) {
            builder = builder
                .add_source(config::File::new(file, config::FileFormat::Toml).required(true));
        }
        // Only upper-case names: the source lowercases keys, so `port` or `Port` in the
        // environment would otherwise count as `PORT`.
        let env: config::Map<String, String> = vars
            .into_iter()
            .filter(|(k, _)| {
                k.bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit())
            })
            .collect();
        builder = builder.add_source(config::Environment::default().source(Some(env)));
        let merged = builder
            .build()
            .and_then(|c| c.collect())
            .map_err(unreadable)?;
        // An empty value counts as unset, also when it empties a value the file set.
        let present: config::Map<String, Value> = merged
            .into_iter()
            .filter(|(_, v)| !matches!(&v.kind, ValueKind::String(s) if s.trim().is_empty()))
            .collect();
        Settings::deserialize(Value::from(present)).map_err(unreadable)
    }
}

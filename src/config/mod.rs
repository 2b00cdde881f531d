//! Typed configuration: defaults, then an optional file (`MOLAR_CONFIG_FILE`), then the
//! environment. Validated once at start-up; production refuses unsafe settings.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

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

    pub appointment_max_minutes: u32,
    pub calendar_max_days: u32,
    pub availability_grid_minutes: u32,

    pub medical_records_storage_path: PathBuf,
    pub max_upload_mb: u32,
    pub audit_retention_months: u32,
}

/// Raw values as they arrive from the file and the environment; parsed into [`Config`].
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Raw {
    environment: Option<String>,
    host: Option<String>,
    port: Option<String>,
    log_level: Option<String>,
    log_format: Option<String>,
    request_timeout_seconds: Option<String>,
    max_body_kb: Option<String>,
    shutdown_drain_seconds: Option<String>,
    hsts_max_age: Option<String>,
    database_url: Option<String>,
    migration_database_url: Option<String>,
    database_read_url: Option<String>,
    db_pool_size: Option<String>,
    db_pool_timeout: Option<String>,
    db_pool_recycle: Option<String>,
    redis_url: Option<String>,
    require_redis: Option<String>,
    redis_key_prefix: Option<String>,
    redis_timeout_ms: Option<String>,
    cache_enabled: Option<String>,
    cache_default_ttl: Option<String>,
    secret_key: Option<String>,
    jwt_previous_secret_keys: Option<String>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    access_token_expire_minutes: Option<String>,
    refresh_token_expire_days: Option<String>,
    refresh_token_idle_days: Option<String>,
    password_hash_concurrency: Option<String>,
    rate_limit_per_minute: Option<String>,
    rate_limit_clinic_per_minute: Option<String>,
    rate_limit_anon_per_minute: Option<String>,
    login_rate_limit_per_minute: Option<String>,
    login_ip_rate_limit_per_minute: Option<String>,
    signup_rate_limit_per_hour: Option<String>,
    trusted_proxies: Option<String>,
    allowed_origins: Option<String>,
    allow_clinic_signup: Option<String>,
    metrics_token: Option<String>,
    metrics_port: Option<String>,
    appointment_max_minutes: Option<String>,
    calendar_max_days: Option<String>,
    availability_grid_minutes: Option<String>,
    medical_records_storage_path: Option<String>,
    max_upload_mb: Option<String>,
    audit_retention_months: Option<String>,
}

/// Why the configuration was refused. Never carries a secret's value.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

struct Parser {
    problems: Vec<String>,
}

impl Parser {
    fn text(&self, v: &Option<String>) -> Option<String> {
        v.as_ref()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    fn num<T: std::str::FromStr + Copy + PartialOrd + std::fmt::Display>(
        &mut self,
        v: &Option<String>,
        name: &str,
        default: T,
        min: T,
        max: T,
    ) -> T {
        match self.text(v) {
            None => default,
            Some(s) => match s.parse::<T>() {
                Ok(n) if n >= min && n <= max => n,
                _ => {
                    self.problems.push(format!(
                        "{name} must be a number from {min} to {max} (got {s:?})"
                    ));
                    default
                }
            },
        }
    }

    fn flag(&mut self, v: &Option<String>, name: &str, default: bool) -> bool {
        match self.text(v).map(|s| s.to_ascii_lowercase()) {
            None => default,
            Some(s) => match s.as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => {
                    self.problems
                        .push(format!("{name} must be true or false (got {s:?})"));
                    default
                }
            },
        }
    }

    fn list(&self, v: &Option<String>) -> Vec<String> {
        self.text(v)
            .map(|s| {
                s.split(',')
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Config {
    /// Reads `MOLAR_CONFIG_FILE` (if set) and the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Config::from_map(vars)
    }

    /// Builds the configuration from a map of variable names (as in the environment) to values.
    /// `MOLAR_CONFIG_FILE` in the map names an optional TOML file read underneath it.
    pub fn from_map(vars: HashMap<String, String>) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = vars.get("MOLAR_CONFIG_FILE").filter(|f| !f.is_empty()) {
            builder = builder
                .add_source(config::File::new(file, config::FileFormat::Toml).required(true));
        }
        let env: config::Map<String, String> = vars
            .into_iter()
            .filter(|(k, _)| {
                k.bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit())
            })
            .collect();
        builder = builder.add_source(config::Environment::default().source(Some(env)));
        let raw: Raw = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError(vec![format!("could not read configuration: {e}")]))?;
        Config::parse(raw)
    }

    fn parse(raw: Raw) -> Result<Config, ConfigError> {
        let mut p = Parser {
            problems: Vec::new(),
        };
        let environment = match p.text(&raw.environment).map(|s| s.to_ascii_lowercase()) {
            None => Environment::Development,
            Some(s) => match s.as_str() {
                "development" | "dev" => Environment::Development,
                "test" => Environment::Test,
                "production" | "prod" => Environment::Production,
                other => {
                    p.problems.push(format!(
                        "ENVIRONMENT must be development, test or production (got {other:?})"
                    ));
                    Environment::Development
                }
            },
        };
        let production = environment == Environment::Production;
        let log_format = match p.text(&raw.log_format).map(|s| s.to_ascii_lowercase()) {
            None if production => LogFormat::Json,
            None => LogFormat::Pretty,
            Some(s) if s == "json" => LogFormat::Json,
            Some(s) if s == "pretty" || s == "text" => LogFormat::Pretty,
            Some(s) => {
                p.problems
                    .push(format!("LOG_FORMAT must be json or pretty (got {s:?})"));
                LogFormat::Pretty
            }
        };
        let secret = |v: &Option<String>| {
            v.as_ref()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .map(SecretString::from)
        };

        let mut trusted_proxies = Vec::new();
        for item in p.list(&raw.trusted_proxies) {
            match item.parse::<IpNet>() {
                Ok(net) => trusted_proxies.push(net),
                Err(_) => match item.parse::<IpAddr>() {
                    Ok(ip) => trusted_proxies.push(IpNet::from(ip)),
                    Err(_) => p.problems.push(format!(
                        "TRUSTED_PROXIES must be a comma-separated list of CIDR ranges (got {item:?})"
                    )),
                },
            }
        }
        let metrics_port = match p.text(&raw.metrics_port) {
            None => None,
            Some(_) => Some(p.num(&raw.metrics_port, "METRICS_PORT", 9100u16, 1, u16::MAX)),
        };

        let config = Config {
            environment,
            host: p.text(&raw.host).unwrap_or_else(|| "127.0.0.1".into()),
            port: p.num(&raw.port, "PORT", 8000u16, 0, u16::MAX),
            log_level: p.text(&raw.log_level).unwrap_or_else(|| "info".into()),
            log_format,
            request_timeout: Duration::from_secs(p.num(
                &raw.request_timeout_seconds,
                "REQUEST_TIMEOUT_SECONDS",
                30u64,
                1,
                3600,
            )),
            max_body_bytes: p.num(&raw.max_body_kb, "MAX_BODY_KB", 1024usize, 1, 1024 * 1024)
                * 1024,
            shutdown_drain: Duration::from_secs(p.num(
                &raw.shutdown_drain_seconds,
                "SHUTDOWN_DRAIN_SECONDS",
                5u64,
                0,
                600,
            )),
            hsts_max_age: p.num(&raw.hsts_max_age, "HSTS_MAX_AGE", 0u64, 0, 63_072_000),
            database_url: secret(&raw.database_url),
            migration_database_url: secret(&raw.migration_database_url),
            database_read_url: secret(&raw.database_read_url),
            db_pool_size: p.num(&raw.db_pool_size, "DB_POOL_SIZE", 10u32, 1, 1000),
            db_pool_timeout: Duration::from_secs(p.num(
                &raw.db_pool_timeout,
                "DB_POOL_TIMEOUT",
                5u64,
                1,
                300,
            )),
            db_pool_recycle: Duration::from_secs(p.num(
                &raw.db_pool_recycle,
                "DB_POOL_RECYCLE",
                1800u64,
                10,
                86_400,
            )),
            redis_url: secret(&raw.redis_url),
            require_redis: p.flag(&raw.require_redis, "REQUIRE_REDIS", production),
            redis_key_prefix: p
                .text(&raw.redis_key_prefix)
                .unwrap_or_else(|| "molar:".into()),
            redis_timeout: Duration::from_millis(p.num(
                &raw.redis_timeout_ms,
                "REDIS_TIMEOUT_MS",
                250u64,
                1,
                60_000,
            )),
            cache_enabled: p.flag(&raw.cache_enabled, "CACHE_ENABLED", true),
            cache_default_ttl: Duration::from_secs(p.num(
                &raw.cache_default_ttl,
                "CACHE_DEFAULT_TTL",
                300u64,
                1,
                86_400,
            )),
            secret_key: secret(&raw.secret_key),
            jwt_previous_secret_keys: p
                .list(&raw.jwt_previous_secret_keys)
                .into_iter()
                .map(SecretString::from)
                .collect(),
            jwt_issuer: p.text(&raw.jwt_issuer).unwrap_or_else(|| "molar".into()),
            jwt_audience: p
                .text(&raw.jwt_audience)
                .unwrap_or_else(|| "molar-api".into()),
            access_token_expire_minutes: p.num(
                &raw.access_token_expire_minutes,
                "ACCESS_TOKEN_EXPIRE_MINUTES",
                15i64,
                1,
                24 * 60,
            ),
            refresh_token_expire_days: p.num(
                &raw.refresh_token_expire_days,
                "REFRESH_TOKEN_EXPIRE_DAYS",
                30i64,
                1,
                365,
            ),
            refresh_token_idle_days: p.num(
                &raw.refresh_token_idle_days,
                "REFRESH_TOKEN_IDLE_DAYS",
                7i64,
                1,
                365,
            ),
            password_hash_concurrency: p.num(
                &raw.password_hash_concurrency,
                "PASSWORD_HASH_CONCURRENCY",
                2usize,
                1,
                256,
            ),
            rate_limit_per_minute: p.num(
                &raw.rate_limit_per_minute,
                "RATE_LIMIT_PER_MINUTE",
                600u32,
                1,
                1_000_000,
            ),
            rate_limit_clinic_per_minute: p.num(
                &raw.rate_limit_clinic_per_minute,
                "RATE_LIMIT_CLINIC_PER_MINUTE",
                6000u32,
                1,
                10_000_000,
            ),
            rate_limit_anon_per_minute: p.num(
                &raw.rate_limit_anon_per_minute,
                "RATE_LIMIT_ANON_PER_MINUTE",
                120u32,
                1,
                1_000_000,
            ),
            login_rate_limit_per_minute: p.num(
                &raw.login_rate_limit_per_minute,
                "LOGIN_RATE_LIMIT_PER_MINUTE",
                5u32,
                1,
                10_000,
            ),
            login_ip_rate_limit_per_minute: p.num(
                &raw.login_ip_rate_limit_per_minute,
                "LOGIN_IP_RATE_LIMIT_PER_MINUTE",
                20u32,
                1,
                100_000,
            ),
            signup_rate_limit_per_hour: p.num(
                &raw.signup_rate_limit_per_hour,
                "SIGNUP_RATE_LIMIT_PER_HOUR",
                5u32,
                1,
                100_000,
            ),
            trusted_proxies,
            allowed_origins: p.list(&raw.allowed_origins),
            allow_clinic_signup: p.flag(
                &raw.allow_clinic_signup,
                "ALLOW_CLINIC_SIGNUP",
                !production,
            ),
            metrics_token: secret(&raw.metrics_token),
            metrics_port,
            appointment_max_minutes: p.num(
                &raw.appointment_max_minutes,
                "APPOINTMENT_MAX_MINUTES",
                480u32,
                5,
                24 * 60,
            ),
            calendar_max_days: p.num(&raw.calendar_max_days, "CALENDAR_MAX_DAYS", 62u32, 1, 366),
            availability_grid_minutes: p.num(
                &raw.availability_grid_minutes,
                "AVAILABILITY_GRID_MINUTES",
                15u32,
                5,
                120,
            ),
            medical_records_storage_path: p
                .text(&raw.medical_records_storage_path)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".molar/records")),
            max_upload_mb: p.num(&raw.max_upload_mb, "MAX_UPLOAD_MB", 25u32, 1, 1024),
            audit_retention_months: p.num(
                &raw.audit_retention_months,
                "AUDIT_RETENTION_MONTHS",
                72u32,
                12,
                1200,
            ),
        };
        p.problems.extend(config.production_problems());
        if config
            .allowed_origins
            .iter()
            .any(|o| o != "*" && !(o.starts_with("http://") || o.starts_with("https://")))
        {
            p.problems
                .push("ALLOWED_ORIGINS must list origins such as https://app.example.com".into());
        }
        if p.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(p.problems))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const GOOD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn development_defaults_apply() {
        let c = Config::from_map(map(&[])).expect("defaults are valid");
        assert_eq!(c.environment, Environment::Development);
        assert_eq!(c.port, 8000);
        assert_eq!(c.host, "127.0.0.1");
        assert!(!c.require_redis);
        assert!(c.allow_clinic_signup);
        assert_eq!(c.access_token_expire_minutes, 15);
    }

    #[test]
    fn production_refuses_missing_short_and_default_secrets() {
        let base = [
            ("ENVIRONMENT", "production"),
            ("DATABASE_URL", "postgres://x@y/z"),
            ("REDIS_URL", "redis://127.0.0.1"),
        ];
        let err = Config::from_map(map(&base)).unwrap_err().to_string();
        assert!(err.contains("SECRET_KEY is required"), "{err}");

        let mut short = base.to_vec();
        short.push(("SECRET_KEY", "tooshort"));
        let err = Config::from_map(map(&short)).unwrap_err().to_string();
        assert!(err.contains("at least 32 bytes"), "{err}");
        assert!(!err.contains("tooshort"), "the secret must not be echoed");

        let mut default = base.to_vec();
        default.push((
            "SECRET_KEY",
            "molar-development-secret-key-not-for-production-use",
        ));
        let err = Config::from_map(map(&default)).unwrap_err().to_string();
        assert!(err.contains("known default"), "{err}");

        let mut good = base.to_vec();
        good.push(("SECRET_KEY", GOOD));
        let c = Config::from_map(map(&good)).expect("valid production config");
        assert!(c.require_redis);
        assert!(!c.allow_clinic_signup);
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn production_refuses_wildcard_origins_and_missing_redis() {
        let err = Config::from_map(map(&[
            ("ENVIRONMENT", "production"),
            ("DATABASE_URL", "postgres://x@y/z"),
            ("SECRET_KEY", GOOD),
            ("ALLOWED_ORIGINS", "*"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("ALLOWED_ORIGINS=*"), "{err}");
        assert!(err.contains("REDIS_URL is required"), "{err}");
    }

    #[test]
    fn bad_numbers_are_named() {
        let err = Config::from_map(map(&[("PORT", "eighty"), ("DB_POOL_SIZE", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("PORT"), "{err}");
        assert!(err.contains("DB_POOL_SIZE"), "{err}");
    }

    #[test]
    fn trusted_proxies_parse_as_cidr_or_address() {
        let c =
            Config::from_map(map(&[("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")])).expect("valid");
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(Config::from_map(map(&[("TRUSTED_PROXIES", "nonsense")])).is_err());
    }
}

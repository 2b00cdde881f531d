//! The configuration's own tests: layers, defaults, ranges, production guards.

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
fn production_sends_hsts_for_two_years_unless_told_otherwise() {
    let production = [
        ("ENVIRONMENT", "production"),
        ("DATABASE_URL", "postgres://x@y/z"),
        ("REDIS_URL", "redis://127.0.0.1"),
        ("SECRET_KEY", GOOD),
    ];
    let c = Config::from_map(map(&production)).expect("valid production config");
    assert_eq!(c.hsts_max_age, 63_072_000);
    let mut off = production.to_vec();
    off.push(("HSTS_MAX_AGE", "0"));
    let c = Config::from_map(map(&off)).expect("valid production config");
    assert_eq!(c.hsts_max_age, 0);
    let mut short = production.to_vec();
    short.push(("HSTS_MAX_AGE", "86400"));
    let c = Config::from_map(map(&short)).expect("valid production config");
    assert_eq!(c.hsts_max_age, 86_400);
    for environment in ["development", "test"] {
        let c = Config::from_map(map(&[("ENVIRONMENT", environment)])).expect("valid");
        assert_eq!(c.hsts_max_age, 0, "{environment}");
    }
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
    let c = Config::from_map(map(&[("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")])).expect("valid");
    assert_eq!(c.trusted_proxies.len(), 2);
    assert!(Config::from_map(map(&[("TRUSTED_PROXIES", "nonsense")])).is_err());
}
#[test]
fn every_problem_is_reported_together() {
    let err = Config::from_map(map(&[
        ("ENVIRONMENT", "production"),
        ("PORT", "eighty"),
        ("CACHE_ENABLED", "maybe"),
        ("TRUSTED_PROXIES", "10.0.0.0/8, nonsense, 300.1.1.1"),
        ("ALLOWED_ORIGINS", "app.example.com"),
    ]))
    .unwrap_err();
    let all = err.0.join("\n");
    for expected in [
        "PORT must be a number from 0 to 65535 (got \"eighty\")",
        "CACHE_ENABLED must be true or false (got \"maybe\")",
        "TRUSTED_PROXIES must be a comma-separated list of CIDR ranges or addresses (got \"nonsense\")",
        "(got \"300.1.1.1\")",
        "SECRET_KEY is required in production",
        "DATABASE_URL is required in production",
        "REDIS_URL is required when REQUIRE_REDIS=true",
        "ALLOWED_ORIGINS must list origins",
    ] {
        assert!(all.contains(expected), "{expected} missing from:\n{all}");
    }
    assert_eq!(err.0.len(), 8, "{all}");
}

#[test]
fn values_are_trimmed_and_an_empty_value_is_unset() {
    let c = Config::from_map(map(&[
        ("PORT", " 9000 "),
        ("HOST", "  "),
        (
            "ALLOWED_ORIGINS",
            " https://a.example , ,https://b.example ",
        ),
        ("METRICS_PORT", ""),
    ]))
    .expect("valid");
    assert_eq!(c.port, 9000);
    assert_eq!(c.host, "127.0.0.1");
    assert_eq!(
        c.allowed_origins,
        ["https://a.example", "https://b.example"]
    );
    assert_eq!(c.metrics_port, None);
}

#[test]
fn the_file_lies_underneath_the_environment() {
    let path = std::env::temp_dir().join(format!("molar-config-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(
        &path,
        "port = 9000\nhost = \"0.0.0.0\"\ncache_enabled = false\nredis_key_prefix = \"file:\"\n",
    )
    .expect("write the file");
    let file = path.display().to_string();
    let c = Config::from_map(map(&[
        ("MOLAR_CONFIG_FILE", &file),
        ("PORT", "9001"),
        ("REDIS_KEY_PREFIX", ""),
    ]));
    std::fs::remove_file(&path).expect("remove the file");
    let c = c.expect("valid");
    assert_eq!(c.port, 9001, "the environment wins");
    assert_eq!(c.host, "0.0.0.0", "the file applies");
    assert!(!c.cache_enabled, "native booleans are read");
    assert_eq!(
        c.redis_key_prefix, "molar:",
        "an empty value unsets the file's"
    );

    let err = Config::from_map(map(&[("MOLAR_CONFIG_FILE", &file)]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("could not read configuration"), "{err}");
}

#[test]
fn production_refuses_stripe_half_configured() {
    let production = [
        ("ENVIRONMENT", "production"),
        ("DATABASE_URL", "postgres://x@y/z"),
        ("REDIS_URL", "redis://127.0.0.1"),
        ("SECRET_KEY", GOOD),
    ];
    for half in ["STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"] {
        let mut only = production.to_vec();
        only.push((half, "sk_live_0123456789abcdef"));
        let err = Config::from_map(map(&only)).unwrap_err();
        let all = err.0.join("\n");
        assert!(all.contains("Stripe"), "{half} alone: {all}");
        assert_eq!(err.0.len(), 1, "{all}");
        assert!(!all.contains("sk_live_"), "the secret must not be echoed");
    }
    let mut both = production.to_vec();
    both.push(("STRIPE_SECRET_KEY", "sk_live_0123456789abcdef"));
    both.push(("STRIPE_WEBHOOK_SECRET", "whsec_0123456789abcdef"));
    let c = Config::from_map(map(&both)).expect("valid production config");
    assert!(c.stripe_secret_key.is_some() && c.stripe_webhook_secret.is_some());
    Config::from_map(map(&production)).expect("card payments off is valid too");
}

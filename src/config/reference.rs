//! The configuration reference: every variable with its default, what it accepts and what
//! it means. The validation pass takes ranges and accepted words from here, and
//! docs/configuration.md's table is rendered from here.

use Allowed::{Flag, List, OneOf, Secret, Text};
use DefaultValue::{ByEnvironment, Empty, Is, Unset};

/// One documented variable.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub name: &'static str,
    pub default: DefaultValue,
    pub allowed: Allowed,
    pub meaning: &'static str,
}

/// The default as readers see it.
#[derive(Debug, Clone, Copy)]
pub enum DefaultValue {
    /// This value, written as it would be in the environment.
    Is(&'static str),
    /// Depends on `ENVIRONMENT`.
    ByEnvironment {
        otherwise: &'static str,
        production: &'static str,
    },
    /// Unset; the meaning says what happens then.
    Unset,
    /// An empty list.
    Empty,
    /// Not read (yet).
    NotApplicable,
}

/// What a variable accepts.
#[derive(Debug, Clone, Copy)]
pub enum Allowed {
    /// A whole number from `min` to `max`.
    Range { min: i64, max: i64 },
    /// `true/false`, `1/0`, `yes/no` or `on/off`, in any case.
    Flag,
    /// One of these words, in any case (short forms, if any, are named in the meaning).
    OneOf(&'static [&'static str]),
    /// Free text, described for readers.
    Text(&'static str),
    /// Text that is never printed or echoed in an error.
    Secret(&'static str),
    /// A comma-separated list of the things described.
    List(&'static str),
    /// Not read (yet).
    NotApplicable,
}

/// Settings under a heading of the reference table.
#[derive(Debug, Clone, Copy)]
pub struct Group {
    pub heading: &'static str,
    /// Shown after the heading, e.g. "(named in the design, not read yet)".
    pub note: &'static str,
    pub settings: &'static [Setting],
}

impl Allowed {
    /// The end of a message such as "PORT must be a number from 0 to 65535".
    pub fn expectation(&self) -> String {
        match self {
            Allowed::Range { min, max } => format!("must be a number from {min} to {max}"),
            Allowed::Flag => "must be true or false".into(),
            Allowed::OneOf(words) => format!("must be {}", one_of(words)),
            Allowed::List(what) => format!("must be a comma-separated list of {what}"),
            Allowed::Text(what) | Allowed::Secret(what) => format!("must be {what}"),
            Allowed::NotApplicable => "is not read".into(),
        }
    }

    fn markdown(&self) -> String {
        match self {
            Allowed::Range { min, max } => format!("{min}–{max}"),
            Allowed::Flag => "boolean".into(),
            Allowed::OneOf(words) => words
                .iter()
                .map(|w| format!("`{w}`"))
                .collect::<Vec<_>>()
                .join(", "),
            Allowed::Text(what) => (*what).into(),
            Allowed::Secret(what) => format!("{what} (secret)"),
            Allowed::List(what) => format!("comma-separated {what}"),
            Allowed::NotApplicable => "—".into(),
        }
    }
}

impl DefaultValue {
    fn markdown(&self) -> String {
        match self {
            DefaultValue::Is(v) => format!("`{v}`"),
            DefaultValue::ByEnvironment {
                otherwise,
                production,
            } => format!("`{otherwise}`; **`{production}` in production**"),
            DefaultValue::Unset => "none".into(),
            DefaultValue::Empty => "empty".into(),
            DefaultValue::NotApplicable => "—".into(),
        }
    }
}

/// "a, b or c"
fn one_of(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [only] => (*only).into(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

const fn setting(
    name: &'static str,
    default: DefaultValue,
    allowed: Allowed,
    meaning: &'static str,
) -> Setting {
    Setting {
        name,
        default,
        allowed,
        meaning,
    }
}

const fn number(
    name: &'static str,
    default: &'static str,
    min: i64,
    max: i64,
    meaning: &'static str,
) -> Setting {
    setting(
        name,
        DefaultValue::Is(default),
        Allowed::Range { min, max },
        meaning,
    )
}

// Runtime
pub const ENVIRONMENT: Setting = setting(
    "ENVIRONMENT",
    Is("development"),
    OneOf(&["development", "test", "production"]),
    "`dev` and `prod` are short forms. `test` is development without the embedded database.",
);
pub const HOST: Setting = setting(
    "HOST",
    Is("127.0.0.1"),
    Text("address"),
    "listen address (`0.0.0.0` in the container image)",
);
pub const PORT: Setting = number("PORT", "8000", 0, 65_535, "listen port");
pub const LOG_LEVEL: Setting = setting(
    "LOG_LEVEL",
    Is("info"),
    Text("filter directive"),
    "a `tracing` filter directive (`sqlx` and `hyper` are held at `warn`)",
);
pub const LOG_FORMAT: Setting = setting(
    "LOG_FORMAT",
    ByEnvironment {
        otherwise: "pretty",
        production: "json",
    },
    OneOf(&["json", "pretty"]),
    "`json` (one object per line, with the request's `request_id`) or `pretty` (alias `text`)",
);
pub const REQUEST_TIMEOUT_SECONDS: Setting = number(
    "REQUEST_TIMEOUT_SECONDS",
    "30",
    1,
    3600,
    "a request still running then is answered 503",
);
pub const MAX_BODY_KB: Setting = number(
    "MAX_BODY_KB",
    "1024",
    1,
    1024 * 1024,
    "larger bodies are 413",
);
pub const SHUTDOWN_DRAIN_SECONDS: Setting = number(
    "SHUTDOWN_DRAIN_SECONDS",
    "5",
    0,
    600,
    "after SIGTERM/SIGINT readiness is 503 but requests are still accepted this long, then \
     in-flight requests finish",
);
pub const HSTS_MAX_AGE: Setting = setting(
    "HSTS_MAX_AGE",
    ByEnvironment {
        otherwise: "0",
        production: "63072000",
    },
    Allowed::Range {
        min: 0,
        max: 63_072_000,
    },
    "in seconds; 0 sends no `Strict-Transport-Security` (else `max-age=…; includeSubDomains`). \
     Production defaults to two years: serve it only behind HTTPS",
);

// Database
pub const DATABASE_URL: Setting = setting(
    "DATABASE_URL",
    Unset,
    Secret("URL"),
    "the server's login role (member of `molar_app`). Unset in development: the embedded \
     PostgreSQL. Required otherwise.",
);
pub const MIGRATION_DATABASE_URL: Setting = setting(
    "MIGRATION_DATABASE_URL",
    Unset,
    Secret("URL"),
    "the owning role, for `molar migrate` and `molar audit prune` (outside production \
     `migrate` falls back to `DATABASE_URL` with a warning)",
);
pub const DATABASE_READ_URL: Setting = setting(
    "DATABASE_READ_URL",
    Unset,
    Secret("URL"),
    "optional read replica: a second pool of the same size; the primary when unset (no route \
     reads from it yet)",
);
pub const DB_POOL_SIZE: Setting = number("DB_POOL_SIZE", "10", 1, 1000, "connections per pool");
pub const DB_POOL_TIMEOUT: Setting = number(
    "DB_POOL_TIMEOUT",
    "5",
    1,
    300,
    "seconds to wait for a connection before answering 503",
);
pub const DB_POOL_RECYCLE: Setting = number(
    "DB_POOL_RECYCLE",
    "1800",
    10,
    86_400,
    "seconds a connection lives",
);

// Redis
pub const REDIS_URL: Setting = setting(
    "REDIS_URL",
    Unset,
    Secret("URL"),
    "shared rate limits and cache; unset: in-process (one instance only)",
);
pub const REQUIRE_REDIS: Setting = setting(
    "REQUIRE_REDIS",
    ByEnvironment {
        otherwise: "false",
        production: "true",
    },
    Flag,
    "readiness and the start-up check fail without Redis",
);
pub const REDIS_KEY_PREFIX: Setting = setting(
    "REDIS_KEY_PREFIX",
    Is("molar:"),
    Text("text"),
    "prefix of every key, so deployments can share a Redis",
);
pub const REDIS_TIMEOUT_MS: Setting = number(
    "REDIS_TIMEOUT_MS",
    "250",
    1,
    60_000,
    "bound on connecting and on every call",
);
pub const CACHE_ENABLED: Setting = setting(
    "CACHE_ENABLED",
    Is("true"),
    Flag,
    "cache clinic settings and provider lists",
);
pub const CACHE_DEFAULT_TTL: Setting = number(
    "CACHE_DEFAULT_TTL",
    "300",
    1,
    86_400,
    "seconds a cache entry lives",
);

// Tokens
pub const SECRET_KEY: Setting = setting(
    "SECRET_KEY",
    Unset,
    Secret("text"),
    "HS256 signing key for access tokens (a key derived from it seals list cursors). Required in production \
     (at least 32 bytes, not a known default); development/test generate a random one per \
     process.",
);
pub const JWT_PREVIOUS_SECRET_KEYS: Setting = setting(
    "JWT_PREVIOUS_SECRET_KEYS",
    Empty,
    Secret("comma-separated keys"),
    "old keys, accepted for verification only \
     ([rotation](tokens.md#rotating-secret_key-without-signing-everyone-out))",
);
pub const JWT_ISSUER: Setting = setting(
    "JWT_ISSUER",
    Is("molar"),
    Text("text"),
    "`iss`, required to match",
);
pub const JWT_AUDIENCE: Setting = setting(
    "JWT_AUDIENCE",
    Is("molar-api"),
    Text("text"),
    "`aud`, required to match",
);
pub const ACCESS_TOKEN_EXPIRE_MINUTES: Setting = number(
    "ACCESS_TOKEN_EXPIRE_MINUTES",
    "15",
    1,
    24 * 60,
    "lifetime of an access token",
);
pub const REFRESH_TOKEN_EXPIRE_DAYS: Setting = number(
    "REFRESH_TOKEN_EXPIRE_DAYS",
    "30",
    1,
    365,
    "absolute lifetime of a sign-in (a refresh-token family)",
);
pub const REFRESH_TOKEN_IDLE_DAYS: Setting = number(
    "REFRESH_TOKEN_IDLE_DAYS",
    "7",
    1,
    365,
    "a refresh token unused this long expires",
);
pub const PASSWORD_HASH_CONCURRENCY: Setting = number(
    "PASSWORD_HASH_CONCURRENCY",
    "2",
    1,
    256,
    "argon2 hashes at once per instance",
);

// Limits
pub const RATE_LIMIT_PER_MINUTE: Setting = number(
    "RATE_LIMIT_PER_MINUTE",
    "600",
    1,
    1_000_000,
    "per signed-in user",
);
pub const RATE_LIMIT_CLINIC_PER_MINUTE: Setting = number(
    "RATE_LIMIT_CLINIC_PER_MINUTE",
    "6000",
    1,
    10_000_000,
    "per clinic (all its users together)",
);
pub const RATE_LIMIT_ANON_PER_MINUTE: Setting = number(
    "RATE_LIMIT_ANON_PER_MINUTE",
    "120",
    1,
    1_000_000,
    "per client address, requests without a valid token",
);
pub const LOGIN_RATE_LIMIT_PER_MINUTE: Setting = number(
    "LOGIN_RATE_LIMIT_PER_MINUTE",
    "5",
    1,
    10_000,
    "sign-ins per account (also password changes per user)",
);
pub const LOGIN_IP_RATE_LIMIT_PER_MINUTE: Setting = number(
    "LOGIN_IP_RATE_LIMIT_PER_MINUTE",
    "20",
    1,
    100_000,
    "sign-ins per client address",
);
pub const SIGNUP_RATE_LIMIT_PER_HOUR: Setting = number(
    "SIGNUP_RATE_LIMIT_PER_HOUR",
    "5",
    1,
    100_000,
    "clinic registrations per client address",
);
pub const TRUSTED_PROXIES: Setting = setting(
    "TRUSTED_PROXIES",
    Empty,
    List("CIDR ranges or addresses"),
    "proxies whose `X-Forwarded-For` is believed; empty trusts none",
);

// Web
pub const ALLOWED_ORIGINS: Setting = setting(
    "ALLOWED_ORIGINS",
    Empty,
    List("origins"),
    "CORS origins, each `http://…` or `https://…`; empty allows no cross-origin calls; `*` \
     any (refused in production)",
);
pub const ALLOW_CLINIC_SIGNUP: Setting = setting(
    "ALLOW_CLINIC_SIGNUP",
    ByEnvironment {
        otherwise: "true",
        production: "false",
    },
    Flag,
    "`POST /auth/register-clinic`; when off it is 404 (use `molar create-clinic`)",
);
pub const METRICS_TOKEN: Setting = setting(
    "METRICS_TOKEN",
    Unset,
    Secret("text"),
    "bearer token for `/metrics` (at least 16 characters in production)",
);
// Payments
pub const STRIPE_SECRET_KEY: Setting = setting(
    "STRIPE_SECRET_KEY",
    Unset,
    Secret("text"),
    "Stripe API key for card payments (`POST /payments/stripe-intents`, refunds of card \
     payments); production refuses to start with only one of it and \
     `STRIPE_WEBHOOK_SECRET`",
);
pub const STRIPE_WEBHOOK_SECRET: Setting = setting(
    "STRIPE_WEBHOOK_SECRET",
    Unset,
    Secret("text"),
    "the signing secret of the Stripe webhook endpoint (`POST /webhooks/stripe`)",
);
pub const STRIPE_API_BASE: Setting = setting(
    "STRIPE_API_BASE",
    Is("https://api.stripe.com"),
    Text("URL"),
    "where the Stripe API is (tests point it at a local server that speaks Stripe's \
     protocol)",
);
// Email
pub const SMTP_URL: Setting = setting(
    "SMTP_URL",
    Unset,
    Secret("`smtps://user:pass@host:465` or `smtp://user:pass@host:587?tls=required`"),
    "the mail server; unset, messages are written to the log instead (development) or not \
     sent (production, with a warning)",
);
pub const MAIL_FROM: Setting = setting(
    "MAIL_FROM",
    Is("Molar <no-reply@molar.invalid>"),
    Text("a mailbox"),
    "the sender of every message",
);
pub const PUBLIC_APP_URL: Setting = setting(
    "PUBLIC_APP_URL",
    Is("http://localhost:3000"),
    Text("URL"),
    "the front-end's address, for links in emails (`/reset-password?token=…`); production \
     warns when it is not `https://`",
);
pub const PUBLIC_API_URL: Setting = setting(
    "PUBLIC_API_URL",
    Is("http://localhost:8000"),
    Text("URL"),
    "the API's public address (before `/api/v2`), for the absolute links of the FHIR view \
     (`fullUrl`, paging)",
);
pub const PASSWORD_RESET_RATE_LIMIT_PER_HOUR: Setting = number(
    "PASSWORD_RESET_RATE_LIMIT_PER_HOUR",
    "5",
    1,
    1000,
    "reset requests per address per hour (ten times as many per client address)",
);
pub const WEBHOOK_ALLOW_PRIVATE: Setting = setting(
    "WEBHOOK_ALLOW_PRIVATE",
    Is("false"),
    Flag,
    "let webhooks reach private, loopback and link-local addresses and plain `http://` (tests, \
     closed networks); off, such addresses are refused at subscription and at every delivery",
);
pub const EMAIL_VERIFICATION_GRACE_HOURS: Setting = number(
    "EMAIL_VERIFICATION_GRACE_HOURS",
    "72",
    0,
    720,
    "how long a new account signs in (and holds its address) before its email address is \
     verified; 0 requires verification before the first sign-in",
);
pub const METRICS_PORT: Setting = setting(
    "METRICS_PORT",
    Unset,
    Allowed::Range {
        min: 1,
        max: 65_535,
    },
    "if set, `/metrics` is served only on `HOST:METRICS_PORT` (no token) and not on the API \
     port",
);

// Clinic rules
pub const APPOINTMENT_MAX_MINUTES: Setting = number(
    "APPOINTMENT_MAX_MINUTES",
    "480",
    5,
    24 * 60,
    "longest appointment and availability duration",
);
pub const CALENDAR_MAX_DAYS: Setting = number(
    "CALENDAR_MAX_DAYS",
    "62",
    1,
    366,
    "widest `from`–`to` window of `GET /appointments`",
);
pub const AVAILABILITY_GRID_MINUTES: Setting = number(
    "AVAILABILITY_GRID_MINUTES",
    "15",
    5,
    120,
    "availability starts step by this from each working interval's start",
);

// Records and audit
pub const MEDICAL_RECORDS_STORAGE_PATH: Setting = setting(
    "MEDICAL_RECORDS_STORAGE_PATH",
    Is(".molar/records"),
    Text("path"),
    "where documents are stored when `DOCUMENT_STORE_URL` is not set: one folder per clinic \
     (a shared volume when several instances run)",
);
pub const DOCUMENT_STORE_URL: Setting = setting(
    "DOCUMENT_STORE_URL",
    Unset,
    Text("`s3://bucket` or `s3://bucket/prefix`"),
    "store documents in an S3-compatible bucket instead; the client takes its credentials, \
     region and endpoint from the `AWS_*` variables ([documents](documents.md#storage))",
);
pub const FILE_ENCRYPTION_KEY: Setting = setting(
    "FILE_ENCRYPTION_KEY",
    Unset,
    Secret("base64 of 32 random bytes (`openssl rand -base64 32`)"),
    "the key-encryption key that wraps each document's data key; unset outside production, a \
     fixed development key is used; in production documents are off without it (and the \
     server refuses to start if documents exist)",
);
pub const FILE_ENCRYPTION_KEYS: Setting = setting(
    "FILE_ENCRYPTION_KEYS",
    Empty,
    Secret("comma-separated keys, each base64 of 32 bytes"),
    "previous keys, still accepted to open data keys until `molar documents rewrap` has moved \
     every document to `FILE_ENCRYPTION_KEY` ([rotation](documents.md#rotating-the-key))",
);
pub const MAX_UPLOAD_MB: Setting = number(
    "MAX_UPLOAD_MB",
    "25",
    1,
    4096,
    "largest document upload, enforced while it streams (413)",
);
pub const UPLOAD_TIMEOUT_SECONDS: Setting = number(
    "UPLOAD_TIMEOUT_SECONDS",
    "900",
    30,
    86_400,
    "how long a document upload may take (other requests have `REQUEST_TIMEOUT_SECONDS`)",
);
pub const DOCUMENT_RETENTION_DAYS: Setting = number(
    "DOCUMENT_RETENTION_DAYS",
    "3650",
    1,
    36_500,
    "how long a deleted document's content is kept before `molar documents purge` removes it",
);
pub const BREAK_GLASS_MINUTES: Setting = number(
    "BREAK_GLASS_MINUTES",
    "60",
    1,
    24 * 60,
    "how long breaking the glass opens a restricted patient's clinical record \
     ([restricted patients](roles-and-permissions.md#restricted-patients-and-break-glass))",
);
pub const AUDIT_RETENTION_MONTHS: Setting = number(
    "AUDIT_RETENTION_MONTHS",
    "72",
    12,
    1200,
    "72 = six years; the cut-off `molar audit prune` uses; the server itself never deletes \
     audit events",
);

/// Every field of [`super::Settings`], once each, under its heading.
pub const SETTINGS: &[Group] = &[
    Group {
        heading: "Runtime",
        note: "",
        settings: &[
            ENVIRONMENT,
            HOST,
            PORT,
            PUBLIC_API_URL,
            LOG_LEVEL,
            LOG_FORMAT,
            REQUEST_TIMEOUT_SECONDS,
            MAX_BODY_KB,
            SHUTDOWN_DRAIN_SECONDS,
            HSTS_MAX_AGE,
        ],
    },
    Group {
        heading: "Database",
        note: "",
        settings: &[
            DATABASE_URL,
            MIGRATION_DATABASE_URL,
            DATABASE_READ_URL,
            DB_POOL_SIZE,
            DB_POOL_TIMEOUT,
            DB_POOL_RECYCLE,
        ],
    },
    Group {
        heading: "Redis",
        note: "",
        settings: &[
            REDIS_URL,
            REQUIRE_REDIS,
            REDIS_KEY_PREFIX,
            REDIS_TIMEOUT_MS,
            CACHE_ENABLED,
            CACHE_DEFAULT_TTL,
        ],
    },
    Group {
        heading: "Tokens",
        note: "",
        settings: &[
            SECRET_KEY,
            JWT_PREVIOUS_SECRET_KEYS,
            JWT_ISSUER,
            JWT_AUDIENCE,
            ACCESS_TOKEN_EXPIRE_MINUTES,
            REFRESH_TOKEN_EXPIRE_DAYS,
            REFRESH_TOKEN_IDLE_DAYS,
            PASSWORD_HASH_CONCURRENCY,
        ],
    },
    Group {
        heading: "Limits",
        note: "",
        settings: &[
            RATE_LIMIT_PER_MINUTE,
            RATE_LIMIT_CLINIC_PER_MINUTE,
            RATE_LIMIT_ANON_PER_MINUTE,
            LOGIN_RATE_LIMIT_PER_MINUTE,
            LOGIN_IP_RATE_LIMIT_PER_MINUTE,
            SIGNUP_RATE_LIMIT_PER_HOUR,
            TRUSTED_PROXIES,
        ],
    },
    Group {
        heading: "Web",
        note: "",
        settings: &[
            ALLOWED_ORIGINS,
            ALLOW_CLINIC_SIGNUP,
            METRICS_TOKEN,
            METRICS_PORT,
        ],
    },
    Group {
        heading: "Payments",
        note: "(card payments through Stripe; off while the keys are unset)",
        settings: &[STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET, STRIPE_API_BASE],
    },
    Group {
        heading: "Email",
        note: "",
        settings: &[
            SMTP_URL,
            MAIL_FROM,
            PUBLIC_APP_URL,
            PASSWORD_RESET_RATE_LIMIT_PER_HOUR,
            EMAIL_VERIFICATION_GRACE_HOURS,
            WEBHOOK_ALLOW_PRIVATE,
        ],
    },
    Group {
        heading: "Clinic rules",
        note: "",
        settings: &[
            APPOINTMENT_MAX_MINUTES,
            CALENDAR_MAX_DAYS,
            AVAILABILITY_GRID_MINUTES,
        ],
    },
    Group {
        heading: "Records and audit",
        note: "",
        settings: &[
            MEDICAL_RECORDS_STORAGE_PATH,
            DOCUMENT_STORE_URL,
            FILE_ENCRYPTION_KEY,
            FILE_ENCRYPTION_KEYS,
            MAX_UPLOAD_MB,
            UPLOAD_TIMEOUT_SECONDS,
            DOCUMENT_RETENTION_DAYS,
            AUDIT_RETENTION_MONTHS,
            BREAK_GLASS_MINUTES,
        ],
    },
];

/// Variables read outside [`super::Settings`]: before it, by one command, or by the tests.
pub const OTHERS: &[Group] = &[
    Group {
        heading: "Other variables",
        note: "(read on their own, outside the settings above)",
        settings: &[
            setting(
                super::settings::CONFIG_FILE_VARIABLE,
                Unset,
                Text("path"),
                "TOML file read underneath the environment (lowercase keys, e.g. `port = 8000`); \
                 it must exist when named",
            ),
            setting(
                "AWS_*",
                Unset,
                Secret("the S3 client's settings"),
                "with `DOCUMENT_STORE_URL`: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, \
                 `AWS_REGION`, `AWS_ENDPOINT` (an S3-compatible server), `AWS_ALLOW_HTTP`, \
                 as `object_store` reads them",
            ),
            setting(
                "MOLAR_OWNER_PASSWORD",
                Unset,
                Secret("text"),
                "the first owner's password for `molar create-clinic` (never taken from the \
                 command line)",
            ),
        ],
    },
    Group {
        heading: "Test suite",
        note: "(read by `cargo test` only)",
        settings: &[
            setting(
                "MOLAR_TEST_ADMIN_URL",
                Is("postgres://postgres:postgres@127.0.0.1:5432/postgres"),
                Text("URL"),
                "a superuser connection; each test creates its own database through it",
            ),
            setting(
                "MOLAR_TEST_REDIS_URL",
                Is("redis://127.0.0.1:6379"),
                Text("URL"),
                "the Redis the tests share (each test under its own key prefix)",
            ),
            setting(
                "MOLAR_WRITE_DOCS",
                Unset,
                Text("`1`"),
                "`1` makes the `generated_docs` tests rewrite the generated sections of \
                 `docs/` instead of failing when they are out of date",
            ),
        ],
    },
];

/// The rows of [`SETTINGS`], one per field of [`super::Settings`].
pub fn settings() -> impl Iterator<Item = &'static Setting> {
    SETTINGS.iter().flat_map(|group| group.settings.iter())
}

/// Every documented variable, settings first.
pub fn all() -> impl Iterator<Item = &'static Setting> {
    SETTINGS
        .iter()
        .chain(OTHERS)
        .flat_map(|group| group.settings.iter())
}

/// The reference as a markdown table, one row per variable under bold group headings.
pub fn markdown() -> String {
    let mut out = String::from("| variable | default | allowed | meaning |\n|---|---|---|---|\n");
    for group in SETTINGS.iter().chain(OTHERS) {
        let note = if group.note.is_empty() {
            String::new()
        } else {
            format!(" {}", group.note)
        };
        out.push_str(&format!("| **{}**{note} | | | |\n", group.heading));
        for s in group.settings {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                s.name,
                s.default.markdown(),
                s.allowed.markdown(),
                s.meaning
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use serde::de::{self, Deserialize, Deserializer, Visitor};

    use super::*;
    use crate::config::{Config, Settings};

    /// The field names a derived `Deserialize` asks for, without a hand-written list: a
    /// deserializer that records them and stops.
    fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
        struct Fields<'a>(&'a mut &'static [&'static str]);

        impl<'de> Deserializer<'de> for Fields<'_> {
            type Error = de::value::Error;

            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("not a struct"))
            }

            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _name: &'static str,
                fields: &'static [&'static str],
                _visitor: V,
            ) -> Result<V::Value, Self::Error> {
                *self.0 = fields;
                Err(de::Error::custom("fields recorded"))
            }

            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
                enum identifier ignored_any
            }
        }

        let mut fields: &'static [&'static str] = &[];
        let _ = T::deserialize(Fields(&mut fields));
        fields
    }

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A production configuration that passes every guard.
    fn production(extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut v = vars(&[
            ("ENVIRONMENT", "production"),
            (
                "SECRET_KEY",
                "0123456789abcdef0123456789abcdef0123456789abcdef",
            ),
            ("DATABASE_URL", "postgres://x@y/z"),
            ("REDIS_URL", "redis://127.0.0.1"),
        ]);
        v.extend(vars(extra));
        v
    }

    fn debug(v: HashMap<String, String>) -> String {
        format!("{:?}", Config::from_map(v).expect("valid"))
    }

    fn refusal(v: HashMap<String, String>) -> String {
        Config::from_map(v).expect_err("refused").to_string()
    }

    #[test]
    fn every_setting_has_exactly_one_reference_row_and_every_row_a_setting() {
        let fields: BTreeSet<String> = field_names::<Settings>()
            .iter()
            .map(|f| f.to_ascii_uppercase())
            .collect();
        assert!(fields.len() > 40, "introspection found {fields:?}");
        let rows: Vec<&str> = settings().map(|s| s.name).collect();
        let unique: BTreeSet<String> = rows.iter().map(|r| r.to_string()).collect();
        assert_eq!(rows.len(), unique.len(), "a variable is listed twice");
        assert_eq!(fields, unique);
        for other in OTHERS.iter().flat_map(|g| g.settings) {
            assert!(!fields.contains(other.name), "{} is a setting", other.name);
        }
    }

    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let development = debug(vars(&[]));
        let production_defaults = debug(production(&[]));
        for s in settings() {
            match s.default {
                DefaultValue::Is(v) => {
                    assert_eq!(debug(vars(&[(s.name, v)])), development, "{}", s.name);
                }
                DefaultValue::ByEnvironment {
                    otherwise,
                    production: p,
                } => {
                    assert_eq!(
                        debug(vars(&[(s.name, otherwise)])),
                        development,
                        "{}",
                        s.name
                    );
                    assert_eq!(
                        debug(production(&[(s.name, p)])),
                        production_defaults,
                        "{}",
                        s.name
                    );
                }
                DefaultValue::Unset | DefaultValue::Empty | DefaultValue::NotApplicable => {}
            }
        }
    }

    #[test]
    fn every_number_is_held_to_its_documented_range() {
        for s in settings() {
            let Allowed::Range { min, max } = s.allowed else {
                continue;
            };
            for inside in [min, max] {
                Config::from_map(vars(&[(s.name, &inside.to_string())]))
                    .unwrap_or_else(|e| panic!("{} = {inside}: {e}", s.name));
            }
            let expected = format!("{} must be a number from {min} to {max}", s.name);
            for outside in [(min - 1).to_string(), (max + 1).to_string(), "ten".into()] {
                let err = refusal(vars(&[(s.name, &outside)]));
                assert!(err.contains(&expected), "{} = {outside}: {err}", s.name);
            }
        }
    }

    #[test]
    fn every_flag_accepts_the_usual_spellings_and_names_itself_otherwise() {
        for s in settings().filter(|s| matches!(s.allowed, Allowed::Flag)) {
            for text in ["true", "FALSE", "1", "0", "Yes", "no", "ON", "off"] {
                Config::from_map(vars(&[(s.name, text)]))
                    .unwrap_or_else(|e| panic!("{} = {text}: {e}", s.name));
            }
            let err = refusal(vars(&[(s.name, "maybe")]));
            assert!(
                err.contains(&format!("{} must be true or false (got \"maybe\")", s.name)),
                "{err}"
            );
        }
    }

    #[test]
    fn every_choice_accepts_its_documented_words_in_any_case() {
        for s in settings() {
            let Allowed::OneOf(words) = s.allowed else {
                continue;
            };
            for word in words {
                let mut v = production(&[]);
                v.insert(s.name.into(), word.to_ascii_uppercase());
                Config::from_map(v).unwrap_or_else(|e| panic!("{} = {word}: {e}", s.name));
            }
            let err = refusal(vars(&[(s.name, "nonsense")]));
            assert!(err.contains(&s.allowed.expectation()), "{err}");
        }
    }

    #[test]
    fn secrets_never_appear_in_errors_or_debug_output() {
        let secrets: Vec<&Setting> = settings()
            .filter(|s| matches!(s.allowed, Allowed::Secret(_)))
            .collect();
        assert!(secrets.len() >= 6, "{secrets:?}");
        let mut v = vars(&[("ENVIRONMENT", "production"), ("PORT", "x")]);
        for s in &secrets {
            v.insert(s.name.into(), format!("hunter2-{}", s.name));
        }
        // Keys must decode (base64 of 32 bytes) for the development configuration to pass.
        let key = format!("{}A=", "hunter2X".repeat(6).get(..42).unwrap_or_default());
        v.insert("FILE_ENCRYPTION_KEY".into(), key.clone());
        v.insert("FILE_ENCRYPTION_KEYS".into(), key);
        let err = refusal(v.clone());
        assert!(!err.contains("hunter2"), "{err}");
        v.insert("ENVIRONMENT".into(), "development".into());
        v.remove("PORT");
        let shown = debug(v);
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn the_table_has_a_heading_row_per_group_and_a_row_per_variable() {
        let table = markdown();
        let groups = SETTINGS.len() + OTHERS.len();
        assert_eq!(table.lines().count(), 2 + groups + all().count());
        assert!(
            table.contains("| `PORT` | `8000` | 0–65535 | listen port |"),
            "{table}"
        );
        assert!(
            table.contains("| `REQUIRE_REDIS` | `false`; **`true` in production** | boolean |"),
            "{table}"
        );
    }
}

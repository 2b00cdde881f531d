//! What every handler can reach: configuration, database, Redis, metrics and the
//! draining flag that readiness reports during shutdown.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::password::PasswordHashing;
use crate::auth::tokens::TokenService;
use crate::auth::totp::SecretSeal;
use crate::cache::Cache;
use crate::config::Config;
use crate::db::Db;
use crate::documents::Documents;
use crate::http::pagination::CursorCodec;
use crate::mail::Mailer;
use crate::ratelimit::RateLimiter;
use crate::redis_store::Redis;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub db: Db,
    pub redis: Option<Redis>,
    pub metrics: PrometheusHandle,
    pub tokens: TokenService,
    pub passwords: PasswordHashing,
    pub limiter: RateLimiter,
    pub cursors: CursorCodec,
    pub cache: Cache,
    /// `None` in production without `FILE_ENCRYPTION_KEY` (document routes answer 503).
    pub documents: Option<Arc<Documents>>,
    pub mailer: Arc<Mailer>,
    pub secret_seal: SecretSeal,
    draining: AtomicBool,
}

impl AppState {
    pub fn new(
        config: Config,
        db: Db,
        redis: Option<Redis>,
        metrics: PrometheusHandle,
    ) -> anyhow::Result<Self> {
        let tokens = TokenService::new(&config)?;
        let passwords = PasswordHashing::new(config.password_hash_concurrency)?;
        let cursors = CursorCodec::new(
            config
                .secret_key
                .as_ref()
                .map(|s| secrecy::ExposeSecret::expose_secret(s).as_bytes())
                .unwrap_or_default(),
        );
        let cache = Cache::new(config.cache_enabled, config.cache_default_ttl);
        let documents = Documents::from_config(&config)?.map(Arc::new);
        let mailer = Arc::new(Mailer::from_config(&config)?);
        let secret_seal = SecretSeal::new(&config);
        Ok(AppState(Arc::new(Inner {
            config,
            db,
            redis,
            metrics,
            tokens,
            passwords,
            limiter: RateLimiter::default(),
            cursors,
            cache,
            documents,
            mailer,
            secret_seal,
            draining: AtomicBool::new(false),
        })))
    }

    pub fn start_draining(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::SeqCst)
    }
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

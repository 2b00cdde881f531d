//! The shared Redis connection: connected lazily (the server starts while Redis is down),
//! reconnected by the connection manager, and every call bounded by `REDIS_TIMEOUT_MS`.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::OnceCell;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis did not answer within the timeout")]
    Timeout,
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
}

#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    manager: std::sync::Arc<OnceCell<ConnectionManager>>,
    prefix: String,
    timeout: Duration,
}

impl Redis {
    pub fn new(url: &SecretString, prefix: &str, timeout: Duration) -> anyhow::Result<Redis> {
        let client = redis::Client::open(url.expose_secret())
            .map_err(|_| anyhow::anyhow!("REDIS_URL is not a valid Redis URL"))?;
        Ok(Redis {
            client,
            manager: std::sync::Arc::new(OnceCell::new()),
            prefix: prefix.to_owned(),
            timeout,
        })
    }

    /// A key under this deployment's prefix.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub async fn connection(&self) -> Result<ConnectionManager, RedisError> {
        let init = self.manager.get_or_try_init(|| async {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(self.timeout)
                .set_response_timeout(self.timeout)
                .set_number_of_retries(1)
                .set_max_delay(1000);
            ConnectionManager::new_with_config(self.client.clone(), config)
                .await
                .map_err(|e| RedisError::Unavailable(format!("{:?}", e.kind())))
        });
        match tokio::time::timeout(self.timeout * 2, init).await {
            Ok(Ok(m)) => Ok(m.clone()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RedisError::Timeout),
        }
    }

    /// Runs one command (or pipeline) with the configured timeout, counting failures.
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T, RedisError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let result = async {
            let conn = self.connection().await?;
            match tokio::time::timeout(self.timeout, f(conn)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(RedisError::Unavailable(format!("{:?}", e.kind()))),
                Err(_) => Err(RedisError::Timeout),
            }
        }
        .await;
        if result.is_err() {
            metrics::counter!("redis_errors_total").increment(1);
        }
        result
    }

    pub async fn ping(&self) -> Result<(), RedisError> {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(|_| ())
    }
}

//! Cache for what is read often (a clinic's settings, its providers): in Redis, shared by
//! every instance, or in process when no Redis is configured. Keys always carry the
//! clinic and the clinic's generation; a change increments the generation after its
//! transaction commits, so every instance misses at once and a slow reader can only
//! write under a generation nobody reads any more.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::redis_store::Redis;

const READ_LUA: &str = r#"
local gen = redis.call('GET', KEYS[1]) or '0'
local value = redis.call('GET', ARGV[1] .. gen .. ':' .. ARGV[2])
return {gen, value or false}
"#;

pub struct Cache {
    enabled: bool,
    ttl: Duration,
    read: redis::Script,
    local: Mutex<LocalCache>,
}

#[derive(Default)]
struct LocalCache {
    generations: HashMap<Uuid, u64>,
    values: HashMap<(Uuid, u64, &'static str), (Instant, String)>,
}

/// A read's generation, to store the value under after a miss.
#[derive(Debug, Clone, Copy)]
pub struct Generation(u64);

impl Cache {
    pub fn new(enabled: bool, ttl: Duration) -> Cache {
        Cache {
            enabled,
            ttl,
            read: redis::Script::new(READ_LUA),
            local: Mutex::new(LocalCache::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LocalCache> {
        match self.local.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The cached value, or a miss with the generation to store a fresh value under.
    /// `None` generation means: do not store (disabled or Redis unavailable).
    pub async fn get<T: DeserializeOwned>(
        &self,
        redis: Option<&Redis>,
        clinic: Uuid,
        kind: &'static str,
    ) -> (Option<T>, Option<Generation>) {
        if !self.enabled {
            return (None, None);
        }
        let (found, generation) = match redis {
            Some(r) => {
                let gen_key = r.key(&format!("cache:{clinic}:gen"));
                let prefix = r.key(&format!("cache:{clinic}:"));
                let script = &self.read;
                let result = r
                    .run(|mut c| async move {
                        script
                            .key(gen_key)
                            .arg(prefix)
                            .arg(kind)
                            .invoke_async::<(String, Option<String>)>(&mut c)
                            .await
                    })
                    .await;
                match result {
                    Ok((generation, value)) => {
                        (value, generation.parse::<u64>().ok().map(Generation))
                    }
                    Err(_) => (None, None),
                }
            }
            None => {
                let local = self.lock();
                let generation = local.generations.get(&clinic).copied().unwrap_or(0);
                let value = local
                    .values
                    .get(&(clinic, generation, kind))
                    .filter(|(at, _)| at.elapsed() < self.ttl)
                    .map(|(_, v)| v.clone());
                (value, Some(Generation(generation)))
            }
        };
        match found.and_then(|v| serde_json::from_str(&v).ok()) {
            Some(v) => {
                metrics::counter!("cache_hits_total", "kind" => kind).increment(1);
                (Some(v), generation)
            }
            None => {
                metrics::counter!("cache_misses_total", "kind" => kind).increment(1);
                (None, generation)
            }
        }
    }

    /// Stores a value read from the database under the generation of the miss.
    pub async fn put<T: Serialize>(
        &self,
        redis: Option<&Redis>,
        clinic: Uuid,
        generation: Option<Generation>,
        kind: &'static str,
        value: &T,
    ) {
        let (Some(Generation(generation)), true) = (generation, self.enabled) else {
            return;
        };
        let Ok(json) = serde_json::to_string(value) else {
            return;
        };
        match redis {
            Some(r) => {
                let key = r.key(&format!("cache:{clinic}:{generation}:{kind}"));
                let ttl = self.ttl.as_secs().max(1);
                let _ = r
                    .run(|mut c| async move {
                        redis::cmd("SET")
                            .arg(key)
                            .arg(json)
                            .arg("EX")
                            .arg(ttl)
                            .query_async::<()>(&mut c)
                            .await
                    })
                    .await;
            }
            None => {
                let mut local = self.lock();
                if local.values.len() > 10_000 {
                    let ttl = self.ttl;
                    local.values.retain(|_, (at, _)| at.elapsed() < ttl);
                }
                local
                    .values
                    .insert((clinic, generation, kind), (Instant::now(), json));
            }
        }
    }

    /// Makes every instance miss this clinic's entries. Call after the change commits.
    /// If Redis cannot be reached, keeps trying in the background for one TTL, after
    /// which every entry written before the change has expired anyway.
    pub async fn invalidate(&self, redis: Option<&Redis>, clinic: Uuid) {
        match redis {
            None => {
                let mut local = self.lock();
                *local.generations.entry(clinic).or_insert(0) += 1;
            }
            Some(r) => {
                if bump(r, clinic).await {
                    return;
                }
                tracing::warn!(%clinic, "could not invalidate the cache; retrying in the background");
                let r = r.clone();
                let ttl = self.ttl;
                tokio::spawn(async move {
                    let started = Instant::now();
                    while started.elapsed() < ttl {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if bump(&r, clinic).await {
                            return;
                        }
                    }
                });
            }
        }
    }
}

async fn bump(r: &Redis, clinic: Uuid) -> bool {
    let key = r.key(&format!("cache:{clinic}:gen"));
    r.run(|mut c| async move { redis::cmd("INCR").arg(key).query_async::<i64>(&mut c).await })
        .await
        .is_ok()
}

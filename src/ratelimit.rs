//! Rate limits with GCRA (the generic cell rate algorithm): in Redis through one Lua
//! script that reads the clock inside Redis, so every instance shares one budget; in
//! process when Redis is not configured, and as the fallback for credential endpoints
//! while Redis is down (they are never left unlimited).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::redis_store::Redis;

/// A named budget: `limit` requests per `period`.
#[derive(Debug, Clone)]
pub struct Quota {
    pub name: &'static str,
    pub limit: u32,
    pub period: Duration,
}

impl Quota {
    pub fn per_minute(name: &'static str, limit: u32) -> Quota {
        Quota {
            name,
            limit: limit.max(1),
            period: Duration::from_secs(60),
        }
    }

    pub fn per_hour(name: &'static str, limit: u32) -> Quota {
        Quota {
            name,
            limit: limit.max(1),
            period: Duration::from_secs(3600),
        }
    }
}

/// What to do when Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenRedisDown {
    /// Let the request through (general API limits): availability first.
    Allow,
    /// Apply the same quota in this process (credential endpoints): never unlimited.
    LocalLimit,
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub quota: Quota,
    pub allowed: bool,
    pub remaining: u32,
    /// Seconds until the budget is whole again.
    pub reset_secs: u64,
    /// Seconds until the next request would be allowed (0 when allowed).
    pub retry_after_secs: u64,
}

impl Decision {
    /// The 429 for a set of decisions when any of them refused, counted in the metrics.
    pub fn rejection(decisions: &[Decision]) -> Option<axum::response::Response> {
        use axum::response::IntoResponse;
        let denied = decisions.iter().find(|d| !d.allowed)?;
        metrics::counter!("rate_limit_rejections_total", "quota" => denied.quota.name).increment(1);
        let mut res = crate::error::AppError::RateLimited {
            retry_after_secs: denied.retry_after_secs,
        }
        .into_response();
        Decision::apply_headers(decisions, res.headers_mut());
        Some(res)
    }

    /// IETF `RateLimit-Policy` / `RateLimit` headers (structured-field form).
    pub fn apply_headers(decisions: &[Decision], headers: &mut HeaderMap) {
        if decisions.is_empty() {
            return;
        }
        let policy = decisions
            .iter()
            .map(|d| {
                format!(
                    "\"{}\";q={};w={}",
                    d.quota.name,
                    d.quota.limit,
                    d.quota.period.as_secs()
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        // The most constrained budget is the one the client needs to know.
        let tightest = decisions
            .iter()
            .min_by_key(|d| (d.allowed, d.remaining))
            .unwrap_or(&decisions[0]);
        let current = format!(
            "\"{}\";r={};t={}",
            tightest.quota.name, tightest.remaining, tightest.reset_secs
        );
        if let Ok(v) = HeaderValue::from_str(&policy) {
            headers.insert(HeaderName::from_static("ratelimit-policy"), v);
        }
        if let Ok(v) = HeaderValue::from_str(&current) {
            headers.insert(HeaderName::from_static("ratelimit"), v);
        }
    }
}

/// GCRA over several keys at once: KEYS[i] with ARGV[2i-1] = limit, ARGV[2i] = period (ms).
/// A request is admitted only if every key admits it, and then all of them are charged.
/// Returns, per key: allowed (0/1), remaining, reset (ms), retry after (ms).
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local all = true
local tats = {}
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i - 1])
  local period = tonumber(ARGV[2 * i])
  local interval = period / limit
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - period
  if allow_at > now then
    all = false
    table.insert(out, 0); table.insert(out, 0)
    table.insert(out, math.ceil(tat - now)); table.insert(out, math.ceil(allow_at - now))
  else
    tats[i] = new_tat
    table.insert(out, 1); table.insert(out, math.floor((now - allow_at) / interval))
    table.insert(out, math.ceil(new_tat - now)); table.insert(out, 0)
  end
end
if all then
  for i, key in ipairs(KEYS) do
    redis.call('SET', key, tostring(tats[i]), 'PX', math.ceil(tats[i] - now) + 1)
  end
else
  for i = 1, #KEYS do
    if out[4 * i - 3] == 1 then out[4 * i - 3] = 2 end
  end
end
return out
"#;

pub struct RateLimiter {
    script: redis::Script,
    local: Mutex<HashMap<String, f64>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            script: redis::Script::new(GCRA_LUA),
            local: Mutex::new(HashMap::new()),
        }
    }
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn decision(
    quota: &Quota,
    allowed: bool,
    remaining: i64,
    reset_ms: i64,
    retry_ms: i64,
) -> Decision {
    Decision {
        quota: quota.clone(),
        allowed,
        remaining: remaining.clamp(0, quota.limit as i64) as u32,
        reset_secs: (reset_ms.max(0) as u64).div_ceil(1000),
        retry_after_secs: (retry_ms.max(0) as u64).div_ceil(1000),
    }
}

impl RateLimiter {
    /// Takes one unit from `quota` for `key`.
    pub async fn check(
        &self,
        redis: Option<&Redis>,
        quota: &Quota,
        key: &str,
        when_down: WhenRedisDown,
    ) -> Decision {
        let mut all = self
            .check_all(redis, &[(quota.clone(), key.to_owned())], when_down)
            .await;
        all.pop()
            .unwrap_or_else(|| decision(quota, true, quota.limit as i64, 0, 0))
    }

    /// Takes one unit from every quota, or from none when any is spent (one Redis call).
    pub async fn check_all(
        &self,
        redis: Option<&Redis>,
        checks: &[(Quota, String)],
        when_down: WhenRedisDown,
    ) -> Vec<Decision> {
        if checks.is_empty() {
            return vec![];
        }
        if let Some(redis) = redis {
            let mut invocation = self.script.prepare_invoke();
            for (quota, key) in checks {
                invocation
                    .key(redis.key(&format!("rl:{}:{key}", quota.name)))
                    .arg(quota.limit)
                    .arg(quota.period.as_millis() as i64);
            }
            let invocation = &invocation;
            let result = redis
                .run(|mut c| async move { invocation.invoke_async::<Vec<i64>>(&mut c).await })
                .await;
            match result {
                Ok(v) if v.len() == checks.len() * 4 => {
                    return checks
                        .iter()
                        .zip(v.chunks(4))
                        .map(|((quota, _), r)| {
                            // 2: this budget had room, but another one refused the request.
                            let remaining = if r[0] == 2 { r[1] + 1 } else { r[1] };
                            decision(quota, r[0] != 0, remaining, r[2], r[3])
                        })
                        .collect();
                }
                _ => {
                    if when_down == WhenRedisDown::Allow {
                        return checks
                            .iter()
                            .map(|(q, _)| decision(q, true, q.limit as i64, 0, 0))
                            .collect();
                    }
                    tracing::warn!("redis unavailable: applying the limits in this process");
                }
            }
        }
        checks
            .iter()
            .map(|(quota, key)| self.check_local(quota, key))
            .collect()
    }

    fn check_local(&self, quota: &Quota, key: &str) -> Decision {
        let now = now_ms();
        let period = quota.period.as_millis() as f64;
        let interval = period / quota.limit as f64;
        let mut map = match self.local.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() > 100_000 {
            map.retain(|_, tat| *tat > now);
        }
        let full_key = format!("{}:{key}", quota.name);
        let tat = map.get(&full_key).copied().unwrap_or(now).max(now);
        let new_tat = tat + interval;
        let allow_at = new_tat - period;
        if allow_at > now {
            return decision(
                quota,
                false,
                0,
                (tat - now).ceil() as i64,
                (allow_at - now).ceil() as i64,
            );
        }
        map.insert(full_key, new_tat);
        let remaining = ((now - allow_at) / interval).floor() as i64;
        decision(quota, true, remaining, (new_tat - now).ceil() as i64, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_limiter_allows_exactly_the_quota_then_refuses() {
        let limiter = RateLimiter::default();
        let quota = Quota::per_minute("test", 5);
        for i in 0..5 {
            let d = limiter.check_local(&quota, "k");
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 4 - i);
        }
        let refused = limiter.check_local(&quota, "k");
        assert!(!refused.allowed);
        assert!(refused.retry_after_secs >= 1 && refused.retry_after_secs <= 12);
        assert!(
            limiter.check_local(&quota, "other").allowed,
            "keys are separate"
        );
    }

    #[test]
    fn headers_use_the_structured_field_form() {
        let limiter = RateLimiter::default();
        let d = limiter.check_local(&Quota::per_minute("login", 5), "k");
        let mut h = HeaderMap::new();
        Decision::apply_headers(&[d], &mut h);
        assert_eq!(h["ratelimit-policy"], "\"login\";q=5;w=60");
        assert!(h["ratelimit"]
            .to_str()
            .unwrap_or_default()
            .starts_with("\"login\";r=4;t="));
    }
}

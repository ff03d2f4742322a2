//! Rate limiting on the credentials route: every admitted request mints an Orga token,
//! so budgets guard the upstream spend.
//!
//! - [`client_ip`]: who the client is (peer, trusted proxies, IPv6 prefix keying).
//! - [`local`]: governor's keyed GCRA in memory, bounded, on an injected clock.
//! - [`redis`]: the same GCRA in Redis, shared by every replica.
//!
//! Two limits, checked by the gate's stages (`crate::http::gate`): per client IP
//! (before auth) and per authenticated subject (after auth, off by default). Both
//! send `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` on admitted
//! responses and answer 429 `rate_limited` with `Retry-After` when a budget is spent.
//! SIGHUP can change their numbers ([`RateLimit::reload`]).

pub mod client_ip;
pub mod local;
pub mod redis;

pub use client_ip::ClientKey;
pub use local::{LocalLimiter, Rate};

use self::redis::RedisLimiter;
use crate::clock::Clock;
use crate::config::{Backend, RateLimitConfig, RedisConfig, TrustedProxies};
use crate::error::{ApiError, retry_after_secs};
use crate::store::RedisConnection;
use arc_swap::ArcSwapOption;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use std::fmt::Display;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `RateLimit-Limit`: requests a full budget admits at once (the burst).
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`: requests left in the budget after this one.
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`: whole seconds, rounded up, until the budget is full again.
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// One limiter's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The burst: what a full budget admits.
    pub limit: u32,
    /// What is left after this request (0 when refused).
    pub remaining: u32,
    /// Time until the budget is full again.
    pub reset: Duration,
    /// `None` when admitted; otherwise the wait before one request is admitted.
    pub retry_after: Option<Duration>,
}

impl Decision {
    fn admitted(limit: u32, remaining: u32, reset: Duration) -> Self {
        Self {
            limit,
            remaining,
            reset,
            retry_after: None,
        }
    }

    fn refused(limit: u32, wait: Duration, reset: Duration) -> Self {
        Self {
            limit,
            remaining: 0,
            reset: reset.max(wait),
            retry_after: Some(wait),
        }
    }

    /// True when the request may go on.
    pub fn is_admitted(&self) -> bool {
        self.retry_after.is_none()
    }

    /// The 429 for a refused decision.
    fn into_error(self) -> ApiError {
        ApiError::RateLimited {
            limit: self.limit,
            reset: self.reset,
            retry_after: self.retry_after.unwrap_or(Duration::ZERO),
        }
    }

    /// Sets the `RateLimit-*` headers, unless the response already carries those of
    /// a budget closer to running out (the per-subject limit runs inside this one).
    pub fn apply(&self, headers: &mut HeaderMap) {
        let existing = headers
            .get(&RATELIMIT_REMAINING)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok());
        if existing.is_some_and(|remaining| remaining <= self.remaining) {
            return;
        }
        headers.insert(RATELIMIT_LIMIT, HeaderValue::from(self.limit));
        headers.insert(RATELIMIT_REMAINING, HeaderValue::from(self.remaining));
        headers.insert(RATELIMIT_RESET, HeaderValue::from(reset_secs(self.reset)));
    }
}

/// `RateLimit-Reset` in whole seconds, rounded up (0 only for a budget already full).
pub fn reset_secs(reset: Duration) -> u64 {
    if reset.is_zero() {
        0
    } else {
        retry_after_secs(reset)
    }
}

/// Where one limit keeps its budgets.
#[derive(Debug)]
enum Limiter<K: Hash + Eq + Clone> {
    /// In this process.
    Memory(Arc<LocalLimiter<K>>),
    /// In Redis, with a local fallback.
    Redis(RedisLimiter<K>),
}

impl<K: Hash + Eq + Clone + Display + Send + Sync + 'static> Limiter<K> {
    fn build(
        config: &RateLimitConfig,
        rate: Rate,
        redis: Option<(&Arc<RedisConnection>, String)>,
        clock: &Clock,
    ) -> Self {
        let local = Arc::new(LocalLimiter::new(
            rate,
            config.max_tracked_clients,
            config.sweep_interval,
            clock.clone(),
        ));
        match redis {
            None => Self::Memory(local),
            Some((connection, prefix)) => {
                Self::Redis(RedisLimiter::new(connection.clone(), prefix, rate, local))
            }
        }
    }

    /// `Ok(Some)`: a decision to honour; `Ok(None)`: admitted without one (Redis
    /// failing open); `Err`: answer this error.
    async fn check(&self, key: &K) -> Result<Option<Decision>, ApiError> {
        let decision = match self {
            Self::Memory(local) => Some(local.check(key)),
            Self::Redis(redis) => redis.check(key).await.map_err(|()| ApiError::Unavailable {
                reason: "The rate limiter is unavailable; try again shortly.".into(),
                retry_after: Duration::from_secs(1),
            })?,
        };
        match decision {
            Some(decision) if !decision.is_admitted() => Err(decision.into_error()),
            other => Ok(other),
        }
    }
}

/// The rate-limit handle kept in `AppState`; cheap to clone. Disabled, it still knows
/// who a client is (quotas key on it) but admits everything and sends no headers.
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// Whose `X-Forwarded-For` is believed.
    trusted: Arc<TrustedProxies>,
    /// `rate_limit.ipv6_prefix`.
    ipv6_prefix: u8,
    /// The limits, when enabled; replaced when a reload changes their numbers.
    limits: Arc<ArcSwapOption<Limits>>,
    /// What the limits are built from.
    source: Arc<Source>,
}

/// The enabled limits.
#[derive(Debug)]
struct Limits {
    /// Per client IP (IPv6 per prefix).
    clients: Limiter<ClientKey>,
    /// Per authenticated subject, when `per_subject.enabled`.
    subjects: Option<Limiter<String>>,
}

/// What [`Limits`] are built from: the configuration in force and the shared handles.
#[derive(Debug)]
struct Source {
    /// `[rate_limit]` as in force: as started, with the numbers of the last reload.
    config: Mutex<RateLimitConfig>,
    /// The shared connection, with the Redis backend.
    redis: Option<Arc<RedisConnection>>,
    /// `redis.key_prefix`.
    key_prefix: String,
    /// The limiters' time source.
    clock: Clock,
}

impl Source {
    fn build(&self, config: &RateLimitConfig) -> Option<Arc<Limits>> {
        config.enabled.then(|| {
            let shared = |scope: &str| {
                self.redis
                    .as_ref()
                    .filter(|_| config.backend == Backend::Redis)
                    .map(|connection| (connection, format!("{}rl:{scope}:", self.key_prefix)))
            };
            let clients = Limiter::build(
                config,
                Rate::per_minute(config.requests_per_minute, config.burst),
                shared("ip"),
                &self.clock,
            );
            let subject = &config.per_subject;
            let subjects = subject.enabled.then(|| {
                let rate = Rate::per_minute(subject.requests_per_minute, subject.burst);
                Limiter::build(config, rate, shared("sub"), &self.clock)
            });
            Arc::new(Limits { clients, subjects })
        })
    }
}

/// The numbers a reload may change: requests per minute and burst, per client and per
/// subject.
fn numbers(config: &RateLimitConfig) -> [u32; 4] {
    let subject = &config.per_subject;
    [
        config.requests_per_minute,
        config.burst,
        subject.requests_per_minute,
        subject.burst,
    ]
}

/// Who the client is: its address (through trusted proxies) and the key its budgets
/// live under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client's address.
    pub ip: IpAddr,
    /// Its key: the address for IPv4, the `/ipv6_prefix` network for IPv6.
    pub key: ClientKey,
}

impl RateLimit {
    /// Builds the limits from a validated configuration. With the Redis backend,
    /// `redis` is the shared connection (see [`crate::store`]).
    pub fn new(
        config: &RateLimitConfig,
        redis: Option<&Arc<RedisConnection>>,
        redis_config: &RedisConfig,
        clock: Clock,
    ) -> Self {
        let source = Source {
            config: Mutex::new(config.clone()),
            redis: redis.cloned(),
            key_prefix: redis_config.key_prefix.clone(),
            clock,
        };
        Self {
            trusted: Arc::new(config.trusted_proxies.clone()),
            ipv6_prefix: config.ipv6_prefix,
            limits: Arc::new(ArcSwapOption::new(source.build(config))),
            source: Arc::new(source),
        }
    }

    /// Takes the numbers of `config` (requests per minute and burst, per client and per
    /// subject) and rebuilds the limits with them; `true` if any changed. Everything
    /// else stays as started (turning a limit on or off, the backend, the table size).
    /// In memory every budget then starts full again; in Redis the budgets carry on.
    pub fn reload(&self, config: &RateLimitConfig) -> bool {
        let mut current = self
            .source
            .config
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if numbers(&current) == numbers(config) {
            return false;
        }
        current.take_live_numbers(config);
        self.limits.store(self.source.build(&current));
        true
    }

    /// The client behind `peer` (see [`client_ip::client_ip`]).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Client {
        let ip = client_ip::client_ip(peer, headers, &self.trusted);
        Client {
            ip,
            key: ClientKey::new(ip, self.ipv6_prefix),
        }
    }

    /// Spends one request of the client's budget.
    pub async fn check_client(&self, key: &ClientKey) -> Result<Option<Decision>, ApiError> {
        // A reference count, not a guard: the Redis check awaits.
        match self.limits.load_full() {
            Some(limits) => limits.clients.check(key).await,
            None => Ok(None),
        }
    }

    /// Spends one request of the subject's budget, when the per-subject limit is on.
    pub async fn check_subject(&self, subject: &str) -> Result<Option<Decision>, ApiError> {
        match self.limits.load_full() {
            Some(limits) => match &limits.subjects {
                Some(subjects) => subjects.check(&subject.to_owned()).await,
                None => Ok(None),
            },
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn limits(requests_per_minute: u32, burst: u32) -> RateLimitConfig {
        RateLimitConfig {
            requests_per_minute,
            burst,
            ..RateLimitConfig::default()
        }
    }

    async fn admitted(limit: &RateLimit, key: &ClientKey) -> bool {
        limit.check_client(key).await.is_ok()
    }

    #[tokio::test]
    async fn a_reload_takes_new_numbers_and_only_new_numbers_reset_the_budgets() {
        let clock = Clock::manual(SystemTime::UNIX_EPOCH);
        let limit = RateLimit::new(&limits(1, 1), None, &RedisConfig::default(), clock);
        let key = ClientKey::new("192.0.2.1".parse().unwrap(), 64);
        assert!(admitted(&limit, &key).await);
        assert!(!admitted(&limit, &key).await, "a burst of 1 is spent");

        assert!(
            !limit.reload(&limits(1, 1)),
            "the same numbers change nothing"
        );
        assert!(!admitted(&limit, &key).await, "and keep the budget spent");

        assert!(limit.reload(&limits(1, 3)));
        for n in 0..3 {
            assert!(admitted(&limit, &key).await, "request {n} of the new burst");
        }
        assert!(!admitted(&limit, &key).await);
        let refused = limit.check_client(&key).await.unwrap_err();
        assert!(
            matches!(refused, ApiError::RateLimited { limit: 3, .. }),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_reload_does_not_turn_a_disabled_limit_on() {
        let clock = Clock::manual(SystemTime::UNIX_EPOCH);
        let off = RateLimitConfig {
            enabled: false,
            ..limits(1, 1)
        };
        let limit = RateLimit::new(&off, None, &RedisConfig::default(), clock);
        limit.reload(&limits(1, 2));
        let key = ClientKey::new("192.0.2.1".parse().unwrap(), 64);
        for _ in 0..5 {
            assert!(admitted(&limit, &key).await);
        }
    }
}

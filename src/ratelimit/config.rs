//! `[rate_limit]`: the typed section and its start-up validation.

use super::client_ip::TrustedProxies;
use crate::config::Secret;
use crate::config::parse;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Most requests per minute accepted in configuration: past this the GCRA
/// interval drops below 60 µs and the limit stops meaning anything.
const MAX_RATE: u32 = 1_000_000;
/// Largest burst accepted; a bigger burst is no limit at all.
const MAX_BURST: u32 = 100_000;
/// Largest table of tracked clients accepted (about 7 GB at the measured ~70 bytes each).
const MAX_TRACKED: usize = 100_000_000;

/// `[rate_limit]`: per-client limits on the credentials route. Every admitted
/// request mints an Orga token, so this guards the upstream spend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Turns the per-client (and per-subject) limits on or off.
    pub enabled: bool,
    /// Sustained rate per client IP (IPv6: per `/ipv6_prefix`).
    pub requests_per_minute: u32,
    /// Requests a client may make at once before the sustained rate applies.
    pub burst: u32,
    /// CIDRs (or single addresses) of the proxies in front of this service whose
    /// `X-Forwarded-For` is believed. Empty: forwarded headers are ignored entirely.
    #[serde(deserialize_with = "parse::string_list")]
    pub trusted_proxies: Vec<String>,
    /// IPv6 clients are keyed by this prefix length, so rotating addresses inside
    /// one allocation (usually a /64) shares one budget.
    pub ipv6_prefix: u8,
    /// Most clients tracked at once by the in-memory limiter. Past it, new clients
    /// share one overflow budget until idle ones are evicted. About 70 bytes each.
    pub max_tracked_clients: usize,
    /// How often idle clients (whose budget is full again) are evicted from memory.
    #[serde(with = "parse::duration")]
    pub sweep_interval: Duration,
    /// Where budgets live: `memory` (per process) or `redis` (shared by replicas).
    pub backend: Backend,
    /// `redis://[user:password@]host:port[/db]` for `backend = "redis"`. A secret:
    /// it may carry a password, and is never printed.
    pub redis_url: Secret,
    /// Deadline of every Redis call; past it the call counts as a Redis failure.
    #[serde(with = "parse::duration")]
    pub redis_timeout: Duration,
    /// What happens to a request when Redis fails: `local` (the replica limits on
    /// its own in memory), `open` (admit), `closed` (answer 503).
    pub redis_failure: RedisFailure,
    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[serde(deserialize_with = "parse::lenient_string")]
    pub redis_key_prefix: String,
    /// An additional limit per authenticated subject (after auth), so one account
    /// cannot mint unlimited tokens from many addresses. Off by default.
    pub per_subject: PerSubjectConfig,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            requests_per_minute: 30,
            burst: 10,
            trusted_proxies: Vec::new(),
            ipv6_prefix: 64,
            max_tracked_clients: 100_000,
            sweep_interval: Duration::from_secs(30),
            backend: Backend::Memory,
            redis_url: Secret::default(),
            redis_timeout: Duration::from_millis(250),
            redis_failure: RedisFailure::Local,
            redis_key_prefix: "orga-proxy:rl:".into(),
            per_subject: PerSubjectConfig::default(),
        }
    }
}

/// `[rate_limit.per_subject]`: a budget per authenticated caller.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerSubjectConfig {
    /// Turns the per-subject limit on; it applies only to requests auth identified.
    pub enabled: bool,
    /// Sustained rate per subject.
    pub requests_per_minute: u32,
    /// Requests a subject may make at once.
    pub burst: u32,
}

impl Default for PerSubjectConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            requests_per_minute: 60,
            burst: 20,
        }
    }
}

/// Where rate-limit budgets are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In this process: each replica has its own budgets.
    Memory,
    /// In Redis: every replica shares one budget per client.
    Redis,
}

/// What a request meets while Redis is failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisFailure {
    /// Each replica falls back to its own in-memory budgets (limits hold per replica).
    Local,
    /// Fail open: admit without limit until Redis answers again.
    Open,
    /// Fail closed: answer 503 `unavailable`; Redis is then required for readiness.
    Closed,
}

/// Every problem in `[rate_limit]`, as `(key, message)`.
pub fn validate(config: &RateLimitConfig) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let mut check = |key: &'static str, result: Result<(), String>| {
        if let Err(message) = result {
            problems.push((key, message));
        }
    };
    check(
        "rate_limit.requests_per_minute",
        within(config.requests_per_minute, 1, MAX_RATE),
    );
    check("rate_limit.burst", within(config.burst, 1, MAX_BURST));
    check(
        "rate_limit.trusted_proxies",
        TrustedProxies::parse(&config.trusted_proxies).map(|_| ()),
    );
    check(
        "rate_limit.ipv6_prefix",
        within(u32::from(config.ipv6_prefix), 32, 128),
    );
    check(
        "rate_limit.max_tracked_clients",
        within(config.max_tracked_clients, 1, MAX_TRACKED),
    );
    check(
        "rate_limit.sweep_interval",
        if config.sweep_interval < Duration::from_secs(1) {
            Err("must be at least 1s: a sweep walks the whole client table".into())
        } else {
            Ok(())
        },
    );
    check(
        "rate_limit.per_subject.requests_per_minute",
        within(config.per_subject.requests_per_minute, 1, MAX_RATE),
    );
    check(
        "rate_limit.per_subject.burst",
        within(config.per_subject.burst, 1, MAX_BURST),
    );
    if config.backend == Backend::Redis {
        check("rate_limit.redis_url", redis_url(&config.redis_url));
        check(
            "rate_limit.redis_timeout",
            if config.redis_timeout.is_zero() || config.redis_timeout > Duration::from_secs(5) {
                Err("must be between 1ms and 5s: every request waits on it".into())
            } else {
                Ok(())
            },
        );
        check(
            "rate_limit.redis_key_prefix",
            if config.redis_key_prefix.chars().any(char::is_control) {
                Err("must not contain control characters".into())
            } else {
                Ok(())
            },
        );
    }
    problems
}

fn within<T: PartialOrd + std::fmt::Display>(value: T, min: T, max: T) -> Result<(), String> {
    if value < min || value > max {
        Err(format!("{value} is out of range: use {min} to {max}"))
    } else {
        Ok(())
    }
}

/// Checks the shape only; the value is never echoed because it may hold a password.
fn redis_url(url: &Secret) -> Result<(), String> {
    if url.is_empty() {
        return Err("required with backend = \"redis\", e.g. \"redis://redis:6379/0\"".into());
    }
    let parsed = url::Url::parse(url.expose())
        .map_err(|e| format!("is not a URL ({e}); value not shown: it may hold a password"))?;
    match parsed.scheme() {
        "redis" if parsed.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        "redis" => Err("needs a host, e.g. \"redis://redis:6379/0\"".into()),
        "rediss" => Err(
            "TLS (rediss://) is not supported by this build; reach Redis over a private network or a TLS sidecar"
                .into(),
        ),
        scheme => Err(format!(
            "scheme {scheme:?} is not supported; use redis://host:port[/db]"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(config: &RateLimitConfig) -> Vec<&'static str> {
        validate(config).into_iter().map(|(key, _)| key).collect()
    }

    #[test]
    fn the_defaults_are_valid() {
        assert!(validate(&RateLimitConfig::default()).is_empty());
    }

    #[test]
    fn zero_rates_and_bursts_are_refused() {
        let config = RateLimitConfig {
            requests_per_minute: 0,
            burst: 0,
            per_subject: PerSubjectConfig {
                burst: 0,
                ..PerSubjectConfig::default()
            },
            ..RateLimitConfig::default()
        };
        assert_eq!(
            keys(&config),
            [
                "rate_limit.requests_per_minute",
                "rate_limit.burst",
                "rate_limit.per_subject.burst"
            ]
        );
    }

    #[test]
    fn an_ipv6_prefix_outside_32_to_128_is_refused() {
        let mut config = RateLimitConfig {
            ipv6_prefix: 8,
            ..RateLimitConfig::default()
        };
        assert_eq!(keys(&config), ["rate_limit.ipv6_prefix"]);
        config.ipv6_prefix = 129;
        assert_eq!(keys(&config), ["rate_limit.ipv6_prefix"]);
    }

    #[test]
    fn the_redis_backend_needs_a_redis_url_and_never_shows_it() {
        let mut config = RateLimitConfig {
            backend: Backend::Redis,
            ..RateLimitConfig::default()
        };
        assert_eq!(keys(&config), ["rate_limit.redis_url"]);
        config.redis_url = Secret::new("http://:hunter2@redis:6379");
        let problems = validate(&config);
        assert_eq!(problems.len(), 1);
        assert!(!problems[0].1.contains("hunter2"), "{}", problems[0].1);
        config.redis_url = Secret::new("not a url hunter2");
        assert!(!validate(&config)[0].1.contains("hunter2"));
        config.redis_url = Secret::new("redis://:hunter2@redis:6379/0");
        assert!(validate(&config).is_empty());
    }

    #[test]
    fn redis_keys_are_not_checked_when_the_backend_is_memory() {
        let config = RateLimitConfig {
            redis_url: Secret::new("nonsense"),
            ..RateLimitConfig::default()
        };
        assert!(validate(&config).is_empty());
    }

    #[test]
    fn a_trusted_proxy_list_that_trusts_everyone_is_refused() {
        let config = RateLimitConfig {
            trusted_proxies: vec!["10.0.0.0/8".into(), "0.0.0.0/0".into()],
            ..RateLimitConfig::default()
        };
        let problems = validate(&config);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].1.contains("0.0.0.0/0"), "{}", problems[0].1);
    }
}

//! `[redis]`: the one Redis that replicas share state through (rate limits with
//! `rate_limit.backend = "redis"`, quotas, relay token binding), and [`RedisUrl`].

use super::parse;
use super::validate::{Problems, duration_within};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// `[redis]`: the shared Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS) `[user:password@]host:port[/db]`; `""` keeps all
    /// state in the process. A secret: it may carry a password, and is never printed.
    #[serde(with = "parse::optional_text")]
    pub url: Option<RedisUrl>,
    /// Deadline of every Redis call; past it the call counts as a Redis failure.
    #[serde(with = "parse::duration")]
    pub timeout: Duration,
    /// Prefix of every key, so several deployments can share one Redis.
    #[serde(deserialize_with = "parse::lenient_string")]
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            timeout: Duration::from_millis(250),
            key_prefix: "orga-proxy:".into(),
        }
    }
}

impl RedisConfig {
    pub(super) fn check(&self, problems: &mut Problems) {
        problems.check(
            "redis.timeout",
            duration_within(
                self.timeout,
                Duration::from_millis(1),
                Duration::from_secs(5),
            )
            .map_err(|e| format!("{e}: every request that uses Redis waits on it")),
        );
        if self.key_prefix.chars().any(char::is_control) {
            problems.add("redis.key_prefix", "must not contain control characters");
        }
    }
}

/// A Redis URL, checked for shape only. It may carry a password, so it prints as
/// `[redacted]` and no error ever quotes it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// The URL as configured.
    url: Secret,
    /// `rediss://`: the connection uses TLS.
    pub tls: bool,
}

impl RedisUrl {
    /// The raw URL, for the Redis client only.
    pub fn expose(&self) -> &str {
        self.url.expose()
    }
}

impl FromStr for RedisUrl {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(value)
            .map_err(|e| format!("is not a URL ({e}); value not shown: it may hold a password"))?;
        let tls = match parsed.scheme() {
            "redis" => false,
            "rediss" => true,
            _ => {
                return Err(format!(
                    "scheme {:?} is not supported; use redis://host:port[/db] or rediss:// for TLS",
                    parsed.scheme()
                ));
            }
        };
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err("needs a host, e.g. \"redis://redis:6379/0\"".into());
        }
        Ok(Self {
            url: Secret::new(value),
            tls,
        })
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.url, f)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisUrl")
            .field("url", &self.url)
            .field("tls", &self.tls)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_never_shown() {
        let url: RedisUrl = "redis://:hunter2@redis:6379/0".parse().unwrap();
        assert!(!url.tls);
        assert!(!format!("{url} {url:?}").contains("hunter2"));
        assert!("rediss://redis:6380".parse::<RedisUrl>().unwrap().tls);
        for bad in [
            "http://:hunter2@redis:6379",
            "not a url hunter2",
            "redis://",
        ] {
            let error = bad.parse::<RedisUrl>().unwrap_err();
            assert!(!error.contains("hunter2"), "{error}");
        }
    }
}

//! `[pool]`: credentials minted ahead of demand (off by default).

use super::parse;
use super::validate::{Problems, duration_within, within};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::time::Duration;

/// `[pool]`: the opt-in prefetch pool. Each credential is handed out once; the cost is
/// tokens minted and never used (see the operations guide).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Turn the pool on.
    pub enabled: bool,
    /// How many credentials to keep ready: a number, or `"auto"` to follow demand.
    pub size: PoolSize,
    /// With `size = "auto"`, the most credentials kept ready or being minted.
    pub max_size: usize,
    /// Credentials older than this are discarded, never handed out; keep it well under
    /// the token lifetime so a client has time to open its call.
    #[serde(with = "parse::duration")]
    pub max_age: Duration,
    /// With a fixed size, upstream mints the refill task runs at once, at most. An
    /// automatic pool replaces what demand takes as it is taken, as live mints would.
    pub refill_concurrency: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            size: PoolSize::Fixed(8),
            max_size: 64,
            max_age: Duration::from_secs(30),
            refill_concurrency: 2,
        }
    }
}

impl PoolConfig {
    pub(super) fn check(&self, problems: &mut Problems) {
        if let PoolSize::Fixed(size) = self.size {
            problems.check("pool.size", within(size, 1, 10_000));
        }
        problems.check("pool.max_size", within(self.max_size, 1, 10_000));
        problems.check(
            "pool.refill_concurrency",
            within(self.refill_concurrency, 1, 64),
        );
        problems.check(
            "pool.max_age",
            duration_within(
                self.max_age,
                Duration::from_secs(1),
                Duration::from_secs(3_600),
            ),
        );
    }
}

/// `pool.size`: a fixed number of credentials, or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolSize {
    /// Follow demand: about what callers take while one credential is minted, plus a
    /// margin for bursts, between 0 and `pool.max_size`.
    Auto,
    /// Keep this many ready.
    Fixed(usize),
}

impl Serialize for PoolSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => serializer.serialize_str("auto"),
            Self::Fixed(n) => serializer.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for PoolSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// A TOML integer, or text (an environment variable may hold either).
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "a number of credentials or \"auto\"")]
        enum Written {
            Number(u64),
            Text(String),
        }
        let refused = || de::Error::custom("expected a number of credentials or \"auto\"");
        match Written::deserialize(deserializer)? {
            Written::Number(n) => usize::try_from(n).map(Self::Fixed).map_err(|_| refused()),
            Written::Text(text) if text.trim().eq_ignore_ascii_case("auto") => Ok(Self::Auto),
            Written::Text(text) => text.trim().parse().map(Self::Fixed).map_err(|_| refused()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size_of(text: &str) -> Result<PoolSize, String> {
        toml::from_str::<PoolConfig>(text)
            .map(|config| config.size)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn size_is_a_number_or_auto_and_reads_back_as_written() {
        assert_eq!(size_of("size = 12"), Ok(PoolSize::Fixed(12)));
        assert_eq!(size_of("size = \"12\""), Ok(PoolSize::Fixed(12)));
        assert_eq!(size_of("size = \"auto\""), Ok(PoolSize::Auto));
        assert_eq!(size_of("size = \" Auto \""), Ok(PoolSize::Auto));
        for size in [PoolSize::Auto, PoolSize::Fixed(3)] {
            let config = PoolConfig {
                size,
                ..PoolConfig::default()
            };
            let text = toml::to_string(&config).unwrap();
            assert_eq!(size_of(&text), Ok(size), "{text}");
        }
    }

    #[test]
    fn anything_else_is_refused_with_what_is_expected() {
        for bad in ["size = \"lots\"", "size = -1", "size = 2.5", "size = true"] {
            let error = size_of(bad).unwrap_err();
            assert!(error.contains("\"auto\""), "{bad}: {error}");
        }
    }

    #[test]
    fn a_fixed_size_and_max_size_are_range_checked() {
        let mut problems = Problems::default();
        PoolConfig {
            size: PoolSize::Fixed(0),
            max_size: 0,
            ..PoolConfig::default()
        }
        .check(&mut problems);
        let all = problems.0.join("\n");
        assert!(all.contains("pool.size"), "{all}");
        assert!(all.contains("pool.max_size"), "{all}");
        let mut problems = Problems::default();
        PoolConfig {
            size: PoolSize::Auto,
            ..PoolConfig::default()
        }
        .check(&mut problems);
        assert!(problems.is_empty(), "{:?}", problems.0);
    }
}

//! `[pool]`: credentials minted ahead of demand (off by default).

use super::parse;
use super::validate::{Problems, duration_within, within};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[pool]`: the opt-in prefetch pool. Each credential is handed out once; the cost is
/// tokens minted and never used (see the operations guide).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Turn the pool on.
    pub enabled: bool,
    /// How many credentials to keep ready.
    pub size: usize,
    /// Credentials older than this are discarded, never handed out; keep it well under
    /// the token lifetime so a client has time to open its call.
    #[serde(with = "parse::duration")]
    pub max_age: Duration,
    /// Upstream mints the refill task runs at once, at most.
    pub refill_concurrency: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            size: 8,
            max_age: Duration::from_secs(30),
            refill_concurrency: 2,
        }
    }
}

impl PoolConfig {
    pub(super) fn check(&self, problems: &mut Problems) {
        problems.check("pool.size", within(self.size, 1, 10_000));
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

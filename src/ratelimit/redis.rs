//! The shared backend: one GCRA state per client in Redis, updated by one Lua script
//! that reads the server's own `TIME`, so every replica shares one budget and one
//! clock. Every call has a deadline; when Redis fails, `redis_failure` decides.

use super::Decision;
use super::local::{LocalLimiter, Rate};
use crate::config::RedisFailure;
use crate::store::RedisConnection;
use std::fmt::Display;
use std::hash::Hash;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// GCRA (as in governor: `tau = interval × (burst − 1)`) in microseconds of Redis time.
/// KEYS[1]: the client's key. ARGV: interval µs, burst.
/// Returns {admitted 0|1, remaining, µs until the budget is full, µs until admitted}.
/// The arrival time is written with `%d`: Lua's default number format keeps only 14
/// digits, too few for microseconds since 1970.
const GCRA_LUA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tau = interval * (burst - 1)
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local earliest = tat - tau
if now < earliest then
  return {0, 0, tat - now, earliest - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
local remaining = math.floor((now + tau + interval - new_tat) / interval)
return {1, remaining, new_tat - now, 0}
";

static GCRA: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GCRA_LUA));

/// Runs the GCRA script for `key`.
async fn gcra(connection: &RedisConnection, key: &str, rate: Rate) -> Result<Decision, String> {
    let interval_us = u64::try_from(rate.interval.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    let reply = connection
        .query(|mut conn| async move {
            GCRA.key(key)
                .arg(interval_us)
                .arg(rate.burst.get())
                .invoke_async::<Vec<i64>>(&mut conn)
                .await
        })
        .await?;
    let [admitted, remaining, reset_us, wait_us] = reply[..] else {
        return Err(format!(
            "unexpected reply shape from the GCRA script: {reply:?}"
        ));
    };
    let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    let limit = rate.burst.get();
    Ok(if admitted == 1 {
        let remaining = u32::try_from(remaining).unwrap_or(0).min(limit);
        Decision::admitted(limit, remaining, micros(reset_us))
    } else {
        Decision::refused(limit, micros(wait_us), micros(reset_us))
    })
}

/// A keyed limiter whose budgets live in Redis.
#[derive(Debug)]
pub struct RedisLimiter<K: Hash + Eq + Clone> {
    /// Shared with the other limit, if any.
    connection: Arc<RedisConnection>,
    /// `redis_key_prefix` plus the limit's own scope (`ip:`, `sub:`).
    prefix: String,
    /// The quota passed to the script.
    rate: Rate,
    /// Used while Redis fails, with `redis_failure = "local"`.
    fallback: Arc<LocalLimiter<K>>,
}

impl<K: Hash + Eq + Clone + Display + Send + Sync + 'static> RedisLimiter<K> {
    /// A limiter of `rate` under `prefix`, falling back to `fallback` as configured.
    pub fn new(
        connection: Arc<RedisConnection>,
        prefix: String,
        rate: Rate,
        fallback: Arc<LocalLimiter<K>>,
    ) -> Self {
        Self {
            connection,
            prefix,
            rate,
            fallback,
        }
    }

    /// Spends one request of `key`'s shared budget. `Ok(None)`: admitted without a
    /// decision (fail open); `Err`: Redis failed and the limiter fails closed.
    pub async fn check(&self, key: &K) -> Result<Option<Decision>, ()> {
        // While Redis is known to be failing, requests do not wait on it (each would
        // spend up to redis_timeout); the pinger brings it back once it answers.
        let shared = if self.connection.is_healthy() {
            let storage_key = format!("{}{key}", self.prefix);
            gcra(&self.connection, &storage_key, self.rate).await.ok()
        } else {
            None
        };
        match shared {
            Some(decision) => Ok(Some(decision)),
            None => match self.connection.failure_policy() {
                RedisFailure::Local => Ok(Some(self.fallback.check(key))),
                RedisFailure::Open => Ok(None),
                RedisFailure::Closed => Err(()),
            },
        }
    }
}

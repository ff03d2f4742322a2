//! The shared backend: one GCRA state per client in Redis, updated by one Lua script
//! that reads the server's own `TIME`, so every replica shares one budget and one
//! clock. Every call has a deadline; when Redis fails, `redis_failure` decides.

use super::Decision;
use super::config::RedisFailure;
use super::local::{LocalLimiter, Rate};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::fmt::Display;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};
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

/// How often Redis is pinged while healthy, and while not.
const PING_HEALTHY: Duration = Duration::from_secs(5);
const PING_FAILING: Duration = Duration::from_secs(1);

/// The connection shared by the client and subject limiters, with its health.
pub struct RedisConnection {
    /// Reconnects by itself; cloned per call (it is a handle).
    manager: ConnectionManager,
    /// `rate_limit.redis_timeout`, applied to every call.
    timeout: Duration,
    /// `rate_limit.redis_failure`.
    failure: RedisFailure,
    /// Whether the last call succeeded (for logging transitions once).
    healthy: AtomicBool,
    /// The `redis` readiness flag: with `closed`, whether Redis answers now; otherwise
    /// whether it has answered once (a wrong `redis_url` never becomes ready, but an
    /// outage later does not take every replica out of the load balancer).
    ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("timeout", &self.timeout)
            .field("failure", &self.failure)
            .field("healthy", &self.healthy)
            .finish_non_exhaustive()
    }
}

impl RedisConnection {
    /// Connects lazily (nothing blocks here) and starts the health pinger, which
    /// stops when the connection is dropped. Needs a Tokio runtime.
    pub fn start(
        url: &str,
        timeout: Duration,
        failure: RedisFailure,
        ready: Arc<AtomicBool>,
    ) -> Result<Arc<Self>, String> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(
                "the Redis rate-limit backend must be started inside a Tokio runtime".into(),
            );
        }
        // The URL's shape was validated; errors here never echo it (it may hold a password).
        let client = redis::Client::open(url)
            .map_err(|e| format!("rate_limit.redis_url is not usable: {:?}", e.kind()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("cannot set up the Redis connection: {:?}", e.kind()))?;
        let connection = Arc::new(Self {
            manager,
            timeout,
            failure,
            // Presumed healthy until a call fails, so that first failure is logged
            // (a wrong host or password would otherwise never say a word).
            healthy: AtomicBool::new(true),
            ready,
        });
        tokio::spawn(ping_until_dropped(Arc::downgrade(&connection)));
        Ok(connection)
    }

    /// Runs the GCRA script for `key`.
    async fn gcra(&self, key: &str, rate: Rate) -> Result<Decision, String> {
        let interval_us = u64::try_from(rate.interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut conn = self.manager.clone();
        let call = async move {
            GCRA.key(key)
                .arg(interval_us)
                .arg(rate.burst.get())
                .invoke_async::<Vec<i64>>(&mut conn)
                .await
        };
        let reply = self.deadline(call).await?;
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

    /// False from a failed call until the pinger gets an answer again.
    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    async fn ping(&self) -> Result<(), String> {
        let mut conn = self.manager.clone();
        let call = async move { redis::cmd("PING").query_async::<String>(&mut conn).await };
        self.deadline(call).await.map(|_| ())
    }

    /// Applies the call deadline and records the outcome.
    async fn deadline<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        self.record(result.as_ref().err());
        result
    }

    fn record(&self, error: Option<&String>) {
        let ok = error.is_none();
        if ok || self.failure == RedisFailure::Closed {
            self.ready.store(ok, Ordering::SeqCst);
        }
        let was = self.healthy.swap(ok, Ordering::SeqCst);
        match error {
            Some(error) if was => tracing::warn!(
                error = %error,
                on_failure = ?self.failure,
                "rate-limit Redis is failing; applying rate_limit.redis_failure"
            ),
            None if !was => tracing::info!("rate-limit Redis is answering"),
            _ => {}
        }
    }
}

/// A Redis error without anything from the connection info.
fn describe(error: &redis::RedisError) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connection_refusal() {
        "connection refused".into()
    } else {
        error.to_string()
    }
}

async fn ping_until_dropped(connection: Weak<RedisConnection>) {
    loop {
        let healthy = {
            let Some(connection) = connection.upgrade() else {
                return;
            };
            connection.ping().await.is_ok()
        };
        tokio::time::sleep(if healthy { PING_HEALTHY } else { PING_FAILING }).await;
    }
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
            self.connection.gcra(&storage_key, self.rate).await.ok()
        } else {
            None
        };
        match shared {
            Some(decision) => Ok(Some(decision)),
            None => match self.connection.failure {
                RedisFailure::Local => Ok(Some(self.fallback.check(key))),
                RedisFailure::Open => Ok(None),
                RedisFailure::Closed => Err(()),
            },
        }
    }
}

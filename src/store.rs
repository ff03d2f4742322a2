//! The Redis connection replicas share state through (`[redis]`): rate-limit budgets
//! with `rate_limit.backend = "redis"`, daily quota counts, and whatever else needs one
//! view across replicas. Every call has a deadline (`redis.timeout`); a pinger tracks
//! health, and `rate_limit.redis_failure` decides what a failing Redis means for
//! readiness, for rate limits and quotas alike.

use crate::config::{Backend, Config, RedisFailure};
use crate::readiness::Readiness;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often Redis is pinged while healthy, and while not.
const PING_HEALTHY: Duration = Duration::from_secs(5);
const PING_FAILING: Duration = Duration::from_secs(1);

/// The connection shared by the client and subject limiters, with its health.
pub struct RedisConnection {
    /// Reconnects by itself; cloned per call (it is a handle).
    manager: ConnectionManager,
    /// `redis.timeout`, applied to every call.
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
            return Err("the Redis connection must be started inside a Tokio runtime".into());
        }
        // The URL's shape was validated; errors here never echo it (it may hold a password).
        let client = redis::Client::open(url)
            .map_err(|e| format!("redis.url is not usable: {:?}", e.kind()))?;
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

    /// Connects to `[redis]` when something needs it (rate limits with
    /// `rate_limit.backend = "redis"`; quotas whenever `redis.url` is set), registering
    /// the `redis` readiness dependency.
    pub fn from_config(
        config: &Config,
        readiness: &Readiness,
    ) -> Result<Option<Arc<Self>>, String> {
        let rate_limit = &config.rate_limit;
        let for_quotas = config.quota.any() && config.redis.url.is_some();
        let needed = (rate_limit.enabled && rate_limit.backend == Backend::Redis) || for_quotas;
        match (&config.redis.url, needed) {
            (Some(url), true) => Self::start(
                url.expose(),
                config.redis.timeout,
                rate_limit.redis_failure,
                readiness.dependency("redis"),
            )
            .map(Some),
            (None, true) => Err("redis.url is required with rate_limit.backend = \"redis\"".into()),
            (_, false) => Ok(None),
        }
    }

    /// Runs `call` on a connection within `redis.timeout`, recording the outcome.
    pub async fn query<T, F, Fut>(&self, call: F) -> Result<T, String>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.deadline(call(self.manager.clone())).await
    }

    /// What a failing Redis means (`rate_limit.redis_failure`).
    pub fn failure_policy(&self) -> RedisFailure {
        self.failure
    }

    /// False from a failed call until the pinger gets an answer again.
    pub fn is_healthy(&self) -> bool {
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
                "Redis is failing; applying rate_limit.redis_failure"
            ),
            None if !was => tracing::info!("Redis is answering"),
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

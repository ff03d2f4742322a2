//! The Redis connection replicas share state through (`[redis]`): rate-limit budgets
//! with `rate_limit.backend = "redis"`, daily quota counts, relay token bindings, and
//! whatever else needs one view across replicas. Every call has a deadline
//! (`redis.timeout`); a pinger tracks health, and `rate_limit.redis_failure` decides what
//! a failing Redis means for readiness, for rate limits and quotas alike.

use crate::config::{Backend, CaFile, Config, RedisFailure, RedisUrl};
use crate::readiness::Readiness;
use arc_swap::ArcSwap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

/// How often Redis is pinged while healthy, and while not.
const PING_HEALTHY: Duration = Duration::from_secs(5);
const PING_FAILING: Duration = Duration::from_secs(1);

/// The connection shared by the client and subject limiters, with its health.
pub struct RedisConnection {
    /// What the manager connects with (kept to build a new one, see `ping`).
    client: redis::Client,
    /// Reconnects by itself after I/O errors; cloned per call (it is a handle).
    manager: ArcSwap<ConnectionManager>,
    /// `redis.timeout`, applied to every call.
    timeout: Duration,
    /// `rate_limit.redis_failure`.
    failure: RedisFailure,
    /// Whether the last call succeeded, and what the log has said about it.
    health: Health,
    /// The `redis` readiness flag: when nothing can be served without Redis
    /// ([`RedisConnection::required`]), whether Redis answers now; otherwise whether it
    /// has answered once (a wrong `redis.url` never becomes ready, but an outage later
    /// does not take every replica out of the load balancer).
    ready: Arc<AtomicBool>,
    /// Whether readiness follows Redis's health: with `redis_failure = "closed"`, and
    /// with relay token binding in Redis, which refuses every credential while it fails.
    required: bool,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("timeout", &self.timeout)
            .field("failure", &self.failure)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl RedisConnection {
    /// Connects lazily (nothing blocks here) and starts the health pinger, which
    /// stops when the connection is dropped. Needs a Tokio runtime.
    pub fn start(
        client: redis::Client,
        timeout: Duration,
        failure: RedisFailure,
        ready: Arc<AtomicBool>,
        required: bool,
    ) -> Result<Arc<Self>, String> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err("the Redis connection must be started inside a Tokio runtime".into());
        }
        let manager = new_manager(&client, timeout)?;
        let connection = Arc::new(Self {
            client,
            manager: ArcSwap::from_pointee(manager),
            timeout,
            failure,
            health: Health::default(),
            ready,
            required,
        });
        tokio::spawn(ping_until_dropped(Arc::downgrade(&connection)));
        Ok(connection)
    }

    /// Connects to `[redis]` when something needs it (rate limits with
    /// `rate_limit.backend = "redis"`; quotas and relay token binding whenever
    /// `redis.url` is set), registering the `redis` readiness dependency.
    pub fn from_config(
        config: &Config,
        readiness: &Readiness,
    ) -> Result<Option<Arc<Self>>, String> {
        let rate_limit = &config.rate_limit;
        let for_quotas = config.quota.any() && config.redis.url.is_some();
        let binding = config.relay.enabled && config.relay.bind_tokens;
        let needed = (rate_limit.enabled && rate_limit.backend == Backend::Redis) || for_quotas;
        match (&config.redis.url, needed || binding) {
            (Some(url), true) => Self::start(
                client(url, config.redis.tls_ca_file.as_ref())?,
                config.redis.timeout,
                rate_limit.redis_failure,
                readiness.dependency("redis"),
                rate_limit.redis_failure == RedisFailure::Closed || binding,
            )
            .map(Some),
            (None, _) if needed => {
                Err("redis.url is required with rate_limit.backend = \"redis\"".into())
            }
            _ => Ok(None),
        }
    }

    /// Runs `call` on a connection within `redis.timeout`, recording the outcome.
    pub async fn query<T, F, Fut>(&self, call: F) -> Result<T, String>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let manager = ConnectionManager::clone(&self.manager.load());
        self.deadline(call(manager))
            .await
            .map_err(|e| e.to_string())
    }

    /// What a failing Redis means (`rate_limit.redis_failure`).
    pub fn failure_policy(&self) -> RedisFailure {
        self.failure
    }

    /// False from a failed call until the pinger gets an answer again.
    pub fn is_healthy(&self) -> bool {
        self.health.healthy.load(Ordering::SeqCst)
    }

    /// One `PING`. After a refused authentication the manager would keep that error
    /// for good (it reconnects only after I/O errors), so a fresh one is built for the
    /// next ping: a password fixed on the server side then takes effect without a
    /// restart, while requests skip Redis until a ping succeeds.
    async fn ping(&self) -> Result<(), Failure> {
        let mut conn = ConnectionManager::clone(&self.manager.load());
        let call = async move { redis::cmd("PING").query_async::<String>(&mut conn).await };
        let result = self.deadline(call).await.map(|_| ());
        if matches!(result, Err(Failure::Authentication)) {
            match new_manager(&self.client, self.timeout) {
                Ok(manager) => self.manager.store(Arc::new(manager)),
                Err(e) => tracing::warn!(error = %e, "cannot renew the Redis connection"),
            }
        }
        result
    }

    /// Applies the call deadline and records the outcome.
    async fn deadline<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Failure> {
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Failure::of(&e, self.timeout)),
            Err(_) => Err(Failure::NoAnswer(self.timeout)),
        };
        self.record(result.as_ref().err());
        result
    }

    fn record(&self, error: Option<&Failure>) {
        let ok = error.is_none();
        if ok || self.required {
            self.ready.store(ok, Ordering::SeqCst);
        }
        match (self.health.observe(error), error) {
            (Some(Change::Failing), Some(error)) => tracing::warn!(
                error = %error,
                on_failure = self.failure.as_str(),
                "Redis is failing; applying rate_limit.redis_failure"
            ),
            (Some(Change::NewReason), Some(error)) => tracing::warn!(
                error = %error,
                on_failure = self.failure.as_str(),
                "Redis is still failing, now for another reason"
            ),
            (Some(Change::Recovered), _) => tracing::info!("Redis is answering"),
            _ => {}
        }
    }
}

/// Whether Redis answers, and the failure last logged: each outage is logged when it
/// starts and again only when its reason changes (the first call may time out while
/// connecting, and the next ones say why: a refused password, a refused certificate).
#[derive(Debug)]
struct Health {
    /// Whether the last call succeeded. Presumed true until a call fails, so that the
    /// first failure is logged (a wrong host or password would otherwise never say a word).
    healthy: AtomicBool,
    /// The reason last logged while failing.
    last_failure: Mutex<Option<Failure>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            last_failure: Mutex::new(None),
        }
    }
}

/// What one call's outcome changes in what the log has said.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// Redis answered before; it fails now.
    Failing,
    /// Still failing, for another reason than the one logged.
    NewReason,
    /// It answers again.
    Recovered,
}

impl Health {
    /// Records one call's outcome; `Some` when it is news for the log.
    fn observe(&self, error: Option<&Failure>) -> Option<Change> {
        let Some(failure) = error else {
            let was = self.healthy.swap(true, Ordering::SeqCst);
            return (!was).then_some(Change::Recovered);
        };
        let mut last = self
            .last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let was = self.healthy.swap(false, Ordering::SeqCst);
        let change = if was {
            Some(Change::Failing)
        } else if last.as_ref() != Some(failure) {
            Some(Change::NewReason)
        } else {
            None
        };
        *last = Some(failure.clone());
        change
    }
}

/// Opens the client for `url`: TLS for `rediss://`, trusting `ca_file` when given and
/// the platform's roots otherwise. Errors never echo the URL (it may hold a password).
fn client(url: &RedisUrl, ca_file: Option<&CaFile>) -> Result<redis::Client, String> {
    let opened = match (url.tls, ca_file) {
        (true, ca_file) => {
            // rustls builds its TLS config on the process-wide provider; make it
            // aws-lc-rs, as everywhere else in the crate (an Err means one is set already).
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: ca_file.map(|ca| ca.pem().to_vec()),
            };
            redis::Client::build_with_tls(url.expose(), certificates)
        }
        (false, _) => redis::Client::open(url.expose()),
    };
    opened.map_err(|e| format!("redis.url is not usable: {:?}", e.kind()))
}

/// A manager that connects on first use. One connection attempt per call, no
/// retries: the call deadline leaves no room for them, and a retried failure would
/// reach the log as a timeout rather than its cause (a wrong password, a refused
/// certificate). After an I/O error the manager reconnects on the next call, which
/// the pinger makes every second while Redis fails.
fn new_manager(client: &redis::Client, timeout: Duration) -> Result<ConnectionManager, String> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(0);
    ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|e| format!("cannot set up the Redis connection: {:?}", e.kind()))
}

/// Why a Redis call failed, in words for the operator. Nothing from the connection
/// info (the URL may hold a password) ever reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// No answer within `redis.timeout` (the call's deadline, or the client's own
    /// connect and response timeouts, which are the same).
    NoAnswer(Duration),
    /// The server refused the user or password (`WRONGPASS`), or wants one (`NOAUTH`).
    Authentication,
    /// The TLS handshake failed; the reason in words.
    Tls(String),
    /// Nothing listens at the address.
    Refused,
    /// Anything else, as the Redis client describes it.
    Other(String),
}

impl Failure {
    /// What `error` means, for calls with `timeout`.
    fn of(error: &redis::RedisError, timeout: Duration) -> Self {
        if error.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(error.code(), Some("NOAUTH" | "WRONGPASS"))
        {
            Self::Authentication
        } else if let Some(tls) = tls_error(error) {
            Self::Tls(describe_tls(tls))
        } else if error.is_timeout() {
            Self::NoAnswer(timeout)
        } else if error.is_connection_refusal() {
            Self::Refused
        } else {
            Self::Other(error.to_string())
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoAnswer(timeout) => write!(f, "no answer within {timeout:?}"),
            Self::Authentication => {
                f.write_str("authentication failed (check the user and password in redis.url)")
            }
            Self::Tls(reason) => write!(f, "TLS handshake failed: {reason}"),
            Self::Refused => f.write_str("connection refused"),
            Self::Other(error) => f.write_str(error),
        }
    }
}

/// The rustls error inside a failed connection attempt, if that is what failed. The
/// Redis client wraps it in an `io::Error`, held behind an `Arc` as the error's source.
fn tls_error(error: &redis::RedisError) -> Option<&rustls::Error> {
    use std::error::Error;
    let source = error.source()?;
    let io = source.downcast_ref::<std::io::Error>().or_else(|| {
        source
            .downcast_ref::<Arc<dyn Error + Send + Sync>>()
            .and_then(|inner| inner.downcast_ref::<std::io::Error>())
    })?;
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A TLS failure in words. Name mismatches are described without the names, which
/// come from `redis.url`.
fn describe_tls(error: &rustls::Error) -> String {
    use rustls::CertificateError as Certificate;
    match error {
        rustls::Error::InvalidCertificate(Certificate::UnknownIssuer) => {
            "the server's certificate is not signed by a trusted CA (redis.tls_ca_file, or the platform's roots when it is empty)".into()
        }
        rustls::Error::InvalidCertificate(
            Certificate::NotValidForName | Certificate::NotValidForNameContext { .. },
        ) => "the server's certificate is not valid for the host in redis.url".into(),
        rustls::Error::InvalidCertificate(
            Certificate::Expired | Certificate::ExpiredContext { .. },
        ) => "the server's certificate has expired".into(),
        other => other.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_logged_when_it_starts_when_its_reason_changes_and_when_it_ends() {
        let health = Health::default();
        let timeout = Failure::NoAnswer(Duration::from_millis(250));
        let auth = Failure::Authentication;
        let seen: Vec<Option<Change>> = [
            None,
            Some(&timeout),
            Some(&timeout),
            Some(&auth),
            Some(&auth),
            None,
            None,
            Some(&auth),
        ]
        .into_iter()
        .map(|outcome| health.observe(outcome))
        .collect();
        assert_eq!(
            seen,
            [
                None,
                Some(Change::Failing),
                None,
                Some(Change::NewReason),
                None,
                Some(Change::Recovered),
                None,
                Some(Change::Failing),
            ]
        );
    }

    #[test]
    fn refused_passwords_read_as_authentication_failures_whatever_the_server_says() {
        for code in ["NOAUTH", "WRONGPASS"] {
            let error = redis::make_extension_error(code.into(), Some("from the server".into()));
            let failure = Failure::of(&error, Duration::from_millis(250));
            assert_eq!(failure, Failure::Authentication, "{code}");
        }
        let error = redis::RedisError::from((
            redis::ErrorKind::AuthenticationFailed,
            "Password authentication failed",
        ));
        let failure = Failure::of(&error, Duration::from_millis(250));
        assert_eq!(
            failure.to_string(),
            "authentication failed (check the user and password in redis.url)"
        );
    }
}

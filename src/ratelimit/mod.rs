//! Rate limiting on the credentials route: every admitted request mints an Orga token,
//! so budgets guard the upstream spend.
//!
//! - [`client_ip`]: who the client is (peer, trusted proxies, IPv6 prefix keying).
//! - [`local`]: governor's keyed GCRA in memory, bounded, on an injected clock.
//! - [`redis`]: the same GCRA in Redis, shared by every replica.
//! - [`config`]: the `[rate_limit]` section.
//!
//! Two middlewares: [`limit_clients`] (per client IP, before auth) and
//! [`limit_subjects`] (per authenticated subject, after auth, off by default). Both
//! send `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` on admitted
//! responses and answer 429 `rate_limited` with `Retry-After` when a budget is spent.

pub mod client_ip;
pub mod config;
pub mod local;
pub mod redis;

pub use client_ip::{ClientKey, TrustedProxies};
pub use config::{Backend, PerSubjectConfig, RateLimitConfig, RedisFailure};
pub use local::{LimiterClock, LocalLimiter, Rate};

use self::redis::{RedisConnection, RedisLimiter};
use crate::error::{ApiError, retry_after_secs};
use crate::state::Readiness;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::fmt::Display;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
        scope: &str,
        clock: &LimiterClock,
        redis: Option<&Arc<RedisConnection>>,
    ) -> Self {
        let local = Arc::new(LocalLimiter::new(
            rate,
            config.max_tracked_clients,
            config.sweep_interval,
            clock.clone(),
        ));
        match redis {
            None => Self::Memory(local),
            Some(connection) => Self::Redis(RedisLimiter::new(
                connection.clone(),
                format!("{}{scope}:", config.redis_key_prefix),
                rate,
                local,
            )),
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

/// The rate-limit handle kept in `AppState`; cheap to clone. Disabled, it admits
/// everything and sends no headers.
#[derive(Debug, Clone, Default)]
pub struct RateLimit(Option<Arc<Limits>>);

/// The enabled limits.
#[derive(Debug)]
struct Limits {
    /// Per client IP (IPv6 per prefix).
    clients: Limiter<ClientKey>,
    /// Per authenticated subject, when `per_subject.enabled`.
    subjects: Option<Limiter<String>>,
    /// Whose `X-Forwarded-For` is believed.
    trusted: TrustedProxies,
    /// `rate_limit.ipv6_prefix`.
    ipv6_prefix: u8,
}

impl RateLimit {
    /// Builds the limits from a validated configuration on the monotonic clock. With
    /// the Redis backend this registers the `redis` readiness dependency and needs a
    /// Tokio runtime.
    pub fn from_config(config: &RateLimitConfig, readiness: &Readiness) -> Result<Self, String> {
        Self::with_clock(config, readiness, LimiterClock::monotonic())
    }

    /// As [`RateLimit::from_config`], with the in-memory budgets on `clock`.
    pub fn with_clock(
        config: &RateLimitConfig,
        readiness: &Readiness,
        clock: LimiterClock,
    ) -> Result<Self, String> {
        if !config.enabled {
            return Ok(Self(None));
        }
        let trusted = TrustedProxies::parse(&config.trusted_proxies)
            .map_err(|e| format!("rate_limit.trusted_proxies: {e}"))?;
        let redis = match config.backend {
            Backend::Memory => None,
            Backend::Redis => Some(RedisConnection::start(
                config.redis_url.expose(),
                config.redis_timeout,
                config.redis_failure,
                readiness.dependency("redis"),
            )?),
        };
        let clients = Limiter::build(
            config,
            Rate::per_minute(config.requests_per_minute, config.burst),
            "ip",
            &clock,
            redis.as_ref(),
        );
        let subject = &config.per_subject;
        let subjects = subject.enabled.then(|| {
            let rate = Rate::per_minute(subject.requests_per_minute, subject.burst);
            Limiter::build(config, rate, "sub", &clock, redis.as_ref())
        });
        Ok(Self(Some(Arc::new(Limits {
            clients,
            subjects,
            trusted,
            ipv6_prefix: config.ipv6_prefix,
        }))))
    }

    /// A handle that limits nothing.
    pub fn disabled() -> Self {
        Self(None)
    }

    /// The key of the client behind `peer` (see [`client_ip::client_ip`]).
    pub fn client_key(&self, peer: IpAddr, headers: &HeaderMap) -> Option<ClientKey> {
        let limits = self.0.as_ref()?;
        let ip = client_ip::client_ip(peer, headers, &limits.trusted);
        Some(ClientKey::new(ip, limits.ipv6_prefix))
    }

    /// Spends one request of the client's budget.
    pub async fn check_client(&self, key: &ClientKey) -> Result<Option<Decision>, ApiError> {
        match &self.0 {
            Some(limits) => limits.clients.check(key).await,
            None => Ok(None),
        }
    }

    /// Spends one request of the subject's budget, when the per-subject limit is on.
    pub async fn check_subject(&self, subject: &str) -> Result<Option<Decision>, ApiError> {
        match self.0.as_ref().and_then(|l| l.subjects.as_ref()) {
            Some(subjects) => subjects.check(&subject.to_owned()).await,
            None => Ok(None),
        }
    }
}

/// The peer address of `request`, for [`admit_client`].
pub fn peer_of(request: &Request) -> IpAddr {
    match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => addr.ip(),
        None => {
            warn_no_peer_once();
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        }
    }
}

/// The per-client check of [`limit_clients`] for a request from `peer` with `headers`:
/// the decision whose headers go on the answer, or the refusal to send instead.
pub async fn admit_client(
    limit: &RateLimit,
    peer: IpAddr,
    headers: &HeaderMap,
) -> Result<Option<Decision>, Response> {
    let Some(key) = limit.client_key(peer, headers) else {
        return Ok(None);
    };
    limit.check_client(&key).await.map_err(|error| {
        // A Redis failure (fail closed) is logged once by the backend, not per request.
        if matches!(error, ApiError::RateLimited { .. }) {
            tracing::info!(client = %key, "client over its rate limit");
        }
        error.into_response()
    })
}

/// Middleware, outermost on the credentials route (before auth): one budget per
/// client IP.
pub async fn limit_clients(
    State(limit): State<RateLimit>,
    request: Request,
    next: Next,
) -> Response {
    let decision = match admit_client(&limit, peer_of(&request), request.headers()).await {
        Ok(decision) => decision,
        Err(refused) => return refused,
    };
    let mut response = next.run(request).await;
    if let Some(decision) = decision {
        decision.apply(response.headers_mut());
    }
    response
}

/// The caller auth identified ([`crate::auth::require`] puts it in the extensions).
fn subject_of(request: &Request) -> Option<&str> {
    request
        .extensions()
        .get::<crate::auth::Subject>()
        .map(crate::auth::Subject::as_str)
}

/// The per-subject check of [`limit_subjects`]: the decision whose headers go on the
/// answer, or the refusal to send instead.
pub async fn admit_subject(limit: &RateLimit, subject: &str) -> Result<Option<Decision>, Response> {
    limit.check_subject(subject).await.map_err(|error| {
        if matches!(error, ApiError::RateLimited { .. }) {
            tracing::info!("subject over its rate limit");
        }
        error.into_response()
    })
}

/// Middleware, after auth on the credentials route: one budget per authenticated
/// subject. Requests without a subject (auth mode `none`) pass untouched.
pub async fn limit_subjects(
    State(limit): State<RateLimit>,
    request: Request,
    next: Next,
) -> Response {
    let Some(subject) = subject_of(&request) else {
        return next.run(request).await;
    };
    let decision = match admit_subject(&limit, subject).await {
        Ok(decision) => decision,
        Err(refused) => return refused,
    };
    let mut response = next.run(request).await;
    if let Some(decision) = decision {
        decision.apply(response.headers_mut());
    }
    response
}

fn warn_no_peer_once() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::error!(
            "no peer address on the request (serve the router with into_make_service_with_connect_info); every client shares one rate-limit budget"
        );
    }
}

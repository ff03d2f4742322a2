//! Daily quotas on the credentials route (`[quota]`): credentials per authenticated
//! subject, per client and for the whole service, per UTC day.
//!
//! - [`memory`]: the counts in this process, bounded.
//! - [`redis`]: the counts in the shared Redis, one atomic script per check.
//!
//! A credential counts when it is issued. The gate's quota stage
//! (`crate::http::gate::limit_quota`) takes a [`Reservation`] of one credential from
//! every quota that applies before the handler runs, all or nothing (a later quota
//! refusing leaves the earlier ones untouched), and keeps it only if the handler answers
//! 2xx; any other answer, or a request dropped half-way, gives it back. So concurrent
//! requests at the boundary cannot overshoot (each holds its unit while Orga is called),
//! a failed upstream call costs nothing, and a pool hit counts like any credential.
//!
//! The day is the UTC day: of this process's clock in memory, of the Redis server's
//! `TIME` with Redis (one clock for every replica). Counts of a day are dropped when it
//! ends, and a refusal says to retry at the next 00:00 UTC.

pub mod memory;
mod redis;

use crate::clock::Clock;
use crate::config::{QuotaConfig, RedisFailure};
use crate::error::ApiError;
use crate::metrics::{QUOTA_EXCEEDED, QUOTA_GLOBAL_USED};
use crate::ratelimit::ClientKey;
use crate::store::RedisConnection;
use arc_swap::ArcSwap;
use memory::MemoryCounts;
use redis::RedisCounts;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds in a UTC day (no leap seconds in Unix time).
const DAY_SECS: u64 = 86_400;

/// Which quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `quota.per_subject_per_day`.
    Subject,
    /// `quota.per_client_per_day`.
    Client,
    /// `quota.global_per_day`.
    Global,
}

impl Scope {
    /// The metric label and log field.
    pub fn label(self) -> &'static str {
        match self {
            Self::Subject => "subject",
            Self::Client => "client",
            Self::Global => "global",
        }
    }

    /// Whose quota, as the refusal's message says it.
    fn whose(self) -> &'static str {
        match self {
            Self::Subject => "this caller",
            Self::Client => "this client",
            Self::Global => "this service",
        }
    }
}

/// One quota a request is counted against.
#[derive(Debug, Clone)]
struct Want {
    /// Which quota.
    scope: Scope,
    /// The subject or client key; empty for the global quota.
    key: String,
    /// The quota's daily limit.
    limit: u32,
}

/// The UTC day `wall` falls in (days since 1970-01-01) and the time left until it ends.
pub fn utc_day(wall: SystemTime) -> (u64, Duration) {
    let since = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let day = since.as_secs() / DAY_SECS;
    (day, Duration::from_secs((day + 1) * DAY_SECS) - since)
}

/// The quotas, kept in `AppState`; a cheap clone. Off (every quota 0), it admits all.
#[derive(Clone, Default)]
pub struct Quotas {
    /// `None` when every quota is off.
    inner: Option<Arc<Inner>>,
}

/// The enabled quotas.
struct Inner {
    /// The limits; SIGHUP replaces them.
    config: ArcSwap<QuotaConfig>,
    /// The counts in this process: the backend without Redis, the fallback with it
    /// (`rate_limit.redis_failure = "local"`).
    memory: MemoryCounts,
    /// The counts in Redis, when `redis.url` is set.
    redis: Option<RedisCounts>,
    /// The UTC day of the in-memory counts.
    clock: Clock,
    /// The global count last seen, as `day << 32 | count`, for [`Quotas::global_spent`].
    global_seen: AtomicU64,
}

/// What a reservation holds, to give back.
enum Held {
    /// Nothing (quotas off, or Redis failing open).
    Nothing,
    /// Units of the in-memory counts.
    Memory(memory::Held),
    /// Units of the Redis counts: the server's day and the keys.
    Redis { day: u64, keys: Vec<String> },
}

/// One credential reserved from every quota that applies. Dropped, it is given back;
/// [`Reservation::keep`] spends it.
#[must_use = "a reservation is given back when dropped; keep() spends it"]
pub struct Reservation {
    /// The quotas it was taken from.
    inner: Option<Arc<Inner>>,
    /// The units.
    held: Held,
}

impl Reservation {
    fn nothing() -> Self {
        Self {
            inner: None,
            held: Held::Nothing,
        }
    }

    /// The credential was issued: the units stay spent.
    pub fn keep(mut self) {
        self.held = Held::Nothing;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let (Some(inner), held) = (
            self.inner.take(),
            std::mem::replace(&mut self.held, Held::Nothing),
        ) else {
            return;
        };
        match held {
            Held::Nothing => {}
            Held::Memory(held) => {
                let global = inner.memory.release(&held);
                inner.report_global(global, Some(held.day()));
            }
            Held::Redis { day, keys } => {
                // Drop cannot wait: the release runs on its own. If it fails, the unit
                // stays counted, which errs on the side of the spend cap.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        if let Some(redis) = &inner.redis {
                            redis.release(day, keys).await;
                        }
                    });
                }
            }
        }
    }
}

impl Quotas {
    /// The quotas of `config`. With `redis` (`redis.url` set) the counts are shared in
    /// it under `key_prefix`; otherwise, and as the fallback, each in-memory table holds
    /// at most `max_tracked` subjects or clients.
    pub fn new(
        config: &QuotaConfig,
        max_tracked: usize,
        redis: Option<&Arc<RedisConnection>>,
        key_prefix: &str,
        clock: Clock,
    ) -> Self {
        if !config.any() {
            return Self::default();
        }
        let inner = Inner {
            config: ArcSwap::from_pointee(config.clone()),
            memory: MemoryCounts::new(max_tracked),
            redis: redis.map(|connection| RedisCounts::new(connection.clone(), key_prefix)),
            clock,
            global_seen: AtomicU64::new(0),
        };
        Self {
            inner: Some(Arc::new(inner)),
        }
    }

    /// True when at least one quota is on.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// True while today's global quota is used up, as this process last saw the count
    /// (its own reservations and refusals; with Redis, other replicas' are seen at the
    /// next reservation here). The prefetch pool mints nothing then: a credential no
    /// caller may take would be spend past the cap.
    pub fn global_spent(&self) -> bool {
        let Some(inner) = &self.inner else {
            return false;
        };
        let limit = inner.config.load().global_per_day;
        let seen = inner.global_seen.load(Ordering::Relaxed);
        let (today, _) = utc_day(inner.clock.wall());
        limit > 0 && seen >> 32 == today && seen & u64::from(u32::MAX) >= u64::from(limit)
    }

    /// Applies new limits (SIGHUP); today's counts stay. Quotas that were all off at start
    /// have no stage in the gate, so turning one on needs a restart: `false` then.
    pub fn reload(&self, config: &QuotaConfig) -> bool {
        match &self.inner {
            Some(inner) => {
                inner.config.store(Arc::new(config.clone()));
                true
            }
            None => !config.any(),
        }
    }

    /// Reserves one credential from each quota that applies to `subject` and `client`,
    /// or answers 429 `quota_exceeded` (naming the first quota used up, in the order
    /// subject, client, global), or 503 while Redis fails with `redis_failure = "closed"`.
    pub async fn reserve(
        &self,
        subject: Option<&str>,
        client: Option<&ClientKey>,
    ) -> Result<Reservation, ApiError> {
        let Some(inner) = &self.inner else {
            return Ok(Reservation::nothing());
        };
        let wants = inner.wants(subject, client);
        if wants.is_empty() {
            return Ok(Reservation::nothing());
        }
        let outcome = match &inner.redis {
            None => inner.reserve_in_memory(&wants),
            Some(redis) => match redis.reserve(&wants).await {
                Ok(outcome) => outcome,
                Err(()) => match redis.failure_policy() {
                    RedisFailure::Local => inner.reserve_in_memory(&wants),
                    RedisFailure::Open => return Ok(Reservation::nothing()),
                    RedisFailure::Closed => {
                        return Err(ApiError::Unavailable {
                            reason: "The quota store is unavailable, so no credential can be counted; try again shortly.".into(),
                            retry_after: Duration::from_secs(1),
                        });
                    }
                },
            },
        };
        match outcome {
            Ok((held, global)) => {
                let day = match &held {
                    Held::Memory(units) => Some(units.day()),
                    Held::Redis { day, .. } => Some(*day),
                    Held::Nothing => None,
                };
                inner.report_global(global, day);
                Ok(Reservation {
                    inner: Some(inner.clone()),
                    held,
                })
            }
            Err((scope, retry_after)) => {
                if let Some(global) = wants.iter().find(|want| want.scope == Scope::Global) {
                    if scope == Scope::Global {
                        inner.seen_global(global.limit, None);
                    }
                }
                metrics::counter!(QUOTA_EXCEEDED, "quota" => scope.label()).increment(1);
                tracing::info!(quota = scope.label(), "daily quota used up");
                Err(ApiError::QuotaExceeded {
                    whose: scope.whose(),
                    retry_after,
                })
            }
        }
    }
}

/// A reservation's units and the global count after it, or the quota that refused and
/// the time until its day ends.
type Outcome = Result<(Held, Option<u32>), (Scope, Duration)>;

impl Inner {
    /// The quotas that apply, in the order they are checked.
    fn wants(&self, subject: Option<&str>, client: Option<&ClientKey>) -> Vec<Want> {
        let config = self.config.load();
        let mut wants = Vec::with_capacity(3);
        if let (Some(subject), limit @ 1..) = (subject, config.per_subject_per_day) {
            wants.push(Want {
                scope: Scope::Subject,
                key: subject.to_owned(),
                limit,
            });
        }
        if let (Some(client), limit @ 1..) = (client, config.per_client_per_day) {
            wants.push(Want {
                scope: Scope::Client,
                key: client.to_string(),
                limit,
            });
        }
        if config.global_per_day > 0 {
            wants.push(Want {
                scope: Scope::Global,
                key: String::new(),
                limit: config.global_per_day,
            });
        }
        wants
    }

    fn reserve_in_memory(&self, wants: &[Want]) -> Outcome {
        let (day, until_midnight) = utc_day(self.clock.wall());
        match self.memory.reserve(day, wants) {
            Ok((held, global)) => Ok((Held::Memory(held), global)),
            Err(scope) => Err((scope, until_midnight)),
        }
    }

    /// The global count, when the global quota is on.
    /// `day` is the day the count belongs to (Redis's, for counts kept there); this
    /// process's own UTC day when unknown.
    fn report_global(&self, global: Option<u32>, day: Option<u64>) {
        if let Some(count) = global {
            metrics::gauge!(QUOTA_GLOBAL_USED).set(f64::from(count));
            self.seen_global(count, day);
        }
    }

    /// Notes the global count for [`Quotas::global_spent`] (not for the gauge: a refusal
    /// knows only that the count is at least the limit).
    fn seen_global(&self, count: u32, day: Option<u64>) {
        let day = day.unwrap_or_else(|| utc_day(self.clock.wall()).0);
        self.global_seen
            .store(day << 32 | u64::from(count), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_utc_day_ends_at_midnight() {
        let noon = UNIX_EPOCH + Duration::from_secs(20_000 * DAY_SECS + 43_200);
        assert_eq!(utc_day(noon), (20_000, Duration::from_secs(43_200)));
        let last_moment = UNIX_EPOCH + Duration::from_millis((20_001 * DAY_SECS) * 1000 - 1);
        assert_eq!(utc_day(last_moment), (20_000, Duration::from_millis(1)));
        let midnight = UNIX_EPOCH + Duration::from_secs(20_001 * DAY_SECS);
        assert_eq!(utc_day(midnight), (20_001, Duration::from_secs(DAY_SECS)));
    }

    fn quotas(subject: u32, client: u32, global: u32, clock: &Clock) -> Quotas {
        let config = QuotaConfig {
            per_subject_per_day: subject,
            per_client_per_day: client,
            global_per_day: global,
        };
        Quotas::new(&config, 100, None, "", clock.clone())
    }

    fn client(last: u8) -> ClientKey {
        ClientKey::new([192, 0, 2, last].into(), 64)
    }

    /// Reserves one credential of `subject` from `client`, and keeps it.
    async fn take(quotas: &Quotas, subject: Option<&str>, client: Option<&ClientKey>) {
        let reserved = quotas.reserve(subject, client).await;
        reserved.expect("within every quota").keep();
    }

    /// Whose quota refuses the next credential of `subject` from `client`.
    async fn refusal(
        quotas: &Quotas,
        subject: Option<&str>,
        client: Option<&ClientKey>,
    ) -> &'static str {
        match quotas.reserve(subject, client).await {
            Err(ApiError::QuotaExceeded { whose, .. }) => whose,
            Err(other) => panic!("refused, but not by a quota: {other:?}"),
            Ok(_) => panic!("not refused"),
        }
    }

    #[tokio::test]
    async fn a_later_quota_refusing_leaves_the_earlier_ones_untouched() {
        let clock = Clock::manual(UNIX_EPOCH + Duration::from_secs(20_000 * DAY_SECS));
        let quotas = quotas(5, 1, 0, &clock);
        take(&quotas, Some("ann"), Some(&client(1))).await;
        // Ann's second credential from the same client is refused by the client quota...
        let whose = refusal(&quotas, Some("ann"), Some(&client(1))).await;
        assert_eq!(whose, "this client");
        // ...and took nothing from her own: four more from four other clients pass.
        for last in 2..6 {
            take(&quotas, Some("ann"), Some(&client(last))).await;
        }
        let whose = refusal(&quotas, Some("ann"), Some(&client(9))).await;
        assert_eq!(whose, "this caller");
    }

    #[tokio::test]
    async fn a_dropped_reservation_is_given_back_and_a_kept_one_is_not() {
        let clock = Clock::manual(UNIX_EPOCH + Duration::from_secs(20_000 * DAY_SECS));
        let quotas = quotas(0, 0, 1, &clock);
        drop(quotas.reserve(None, None).await.unwrap());
        take(&quotas, None, None).await;
        let refused = quotas.reserve(None, None).await;
        let Err(ApiError::QuotaExceeded { whose, retry_after }) = refused else {
            panic!("the global quota of 1 is spent");
        };
        assert_eq!(whose, "this service");
        assert_eq!(retry_after, Duration::from_secs(DAY_SECS));
        clock.advance(Duration::from_secs(DAY_SECS));
        assert!(quotas.reserve(None, None).await.is_ok(), "a new UTC day");
    }
}

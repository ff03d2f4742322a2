//! The in-memory backend: governor's keyed GCRA over a bounded table, on an injected
//! clock. Idle keys (whose budget is full again, so forgetting them changes nothing)
//! are swept out every `sweep_interval`; past `max_tracked_clients`, new keys share one
//! overflow budget until a sweep makes room.

use super::Decision;
use crate::clock::Clock;
use governor::clock::Clock as GovernorClock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A GCRA quota: `burst` requests at once, one more every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests admitted back to back from a full budget.
    pub burst: NonZeroU32,
    /// Time for one request's worth of budget to come back (60 s / requests per minute).
    pub interval: Duration,
}

impl Rate {
    /// `requests_per_minute` sustained, `burst` at once; zeros are raised to 1
    /// (validation refuses them before this is reached).
    pub fn per_minute(requests_per_minute: u32, burst: u32) -> Self {
        let per_minute = u64::from(requests_per_minute.max(1));
        Self {
            burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
            interval: Duration::from_nanos(60_000_000_000 / per_minute),
        }
    }

    /// Time for an empty budget to fill again.
    pub fn full_refill(&self) -> Duration {
        self.interval * self.burst.get()
    }
}

/// The state table: one atomic GCRA state per key, plus the shared overflow state.
#[derive(Debug)]
struct Table<K: Hash + Eq> {
    /// governor's own DashMap store type, used here as a plain concurrent map.
    states: DashMapStateStore<K>,
    /// Where keys go while the table is full.
    overflow: InMemoryState,
    /// `rate_limit.max_tracked_clients`.
    max_keys: usize,
    /// Requests that met a full table since the last sweep.
    overflowed: AtomicU64,
}

/// governor's view of the table (a local newtype so the table can also be shared
/// with the sweeper).
#[derive(Debug)]
struct Store<K: Hash + Eq>(Arc<Table<K>>);

/// Reads a state's theoretical arrival time without changing it: the closure refuses,
/// handing the current value back as its error.
fn peek(state: &InMemoryState) -> u64 {
    state
        .measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>)
        .err()
        .flatten()
        .map_or(0, Nanos::as_u64)
}

impl<K: Hash + Eq + Clone> StateStore for Store<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let table = &self.0;
        if let Some(state) = table.states.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if table.states.len() >= table.max_keys {
            table.overflowed.fetch_add(1, Ordering::Relaxed);
            return table.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let state = table.states.entry(key.clone()).or_default();
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for Store<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64();
        self.0.states.retain(|_, state| peek(state) > drop_below);
    }

    fn shrink_to_fit(&self) {
        self.0.states.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.states.len()
    }

    fn is_empty(&self) -> bool {
        self.0.states.is_empty()
    }
}

type Governor<K> = RateLimiter<K, Store<K>, Clock, StateInformationMiddleware>;

/// A keyed in-memory limiter.
#[derive(Debug)]
pub struct LocalLimiter<K: Hash + Eq + Clone> {
    /// The GCRA and the clock, over `table`.
    governor: Governor<K>,
    /// The same table, for counting and sweeping.
    table: Arc<Table<K>>,
    /// The quota, for the headers.
    rate: Rate,
    /// `rate_limit.sweep_interval`.
    sweep_interval: Duration,
    /// Clock reading (ns) at which the next sweep is due.
    next_sweep: AtomicU64,
    /// Whether a sweep is running (sweeps never overlap).
    sweeping: Arc<AtomicBool>,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> LocalLimiter<K> {
    /// A limiter of `rate` tracking at most `max_keys` keys, swept every `sweep_interval`.
    pub fn new(rate: Rate, max_keys: usize, sweep_interval: Duration, clock: Clock) -> Self {
        let quota = Quota::with_period(rate.interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(rate.burst);
        let table = Arc::new(Table {
            states: DashMapStateStore::default(),
            overflow: InMemoryState::default(),
            max_keys: max_keys.max(1),
            overflowed: AtomicU64::new(0),
        });
        let first_sweep = GovernorClock::now(&clock)
            .as_u64()
            .saturating_add(nanos(sweep_interval));
        Self {
            governor: RateLimiter::new(quota, Store(table.clone()), clock),
            table,
            rate,
            sweep_interval,
            next_sweep: AtomicU64::new(first_sweep),
            sweeping: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Spends one request of `key`'s budget, or says how long until it may.
    pub fn check(self: &Arc<Self>, key: &K) -> Decision {
        self.maybe_sweep();
        let limit = self.rate.burst.get();
        match self.governor.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                // governor does not expose the new arrival time, so the refill time is
                // counted in whole intervals: exact or at most one interval long.
                let reset = self.rate.interval * limit.saturating_sub(remaining);
                Decision::admitted(limit, remaining, reset)
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(GovernorClock::now(self.governor.clock()));
                let reset = wait + self.rate.interval * (limit - 1);
                Decision::refused(limit, wait, reset)
            }
        }
    }

    /// Number of keys tracked now.
    pub fn tracked(&self) -> usize {
        self.table.states.len()
    }

    /// Evicts every key whose budget is full again and returns the memory to the
    /// allocator. Runs on a blocking thread when called from the runtime.
    pub fn sweep(&self) {
        let before = self.table.states.len();
        self.governor.retain_recent();
        self.governor.shrink_to_fit();
        let overflowed = self.table.overflowed.swap(0, Ordering::Relaxed);
        let after = self.table.states.len();
        if overflowed > 0 {
            tracing::warn!(
                overflowed,
                tracked = after,
                max_tracked_clients = self.table.max_keys,
                "rate-limit table was full: new clients shared one overflow budget; raise rate_limit.max_tracked_clients if this is not an attack"
            );
        }
        tracing::debug!(before, after, "rate-limit sweep");
    }

    /// Starts a sweep when one is due: every `sweep_interval`, or at once (at most
    /// once a second) when the table is full.
    fn maybe_sweep(self: &Arc<Self>) {
        let now = GovernorClock::now(self.governor.clock()).as_u64();
        let due = self.next_sweep.load(Ordering::Relaxed);
        let full = self.table.states.len() >= self.table.max_keys;
        let earliest_when_full =
            due.saturating_sub(nanos(self.sweep_interval)) + nanos(Duration::from_secs(1));
        if now < due && !(full && now >= earliest_when_full) {
            return;
        }
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let next = now.saturating_add(nanos(self.sweep_interval));
        self.next_sweep.store(next, Ordering::Relaxed);
        let run = {
            let limiter = Arc::clone(self);
            move || {
                limiter.sweep();
                limiter.sweeping.store(false, Ordering::Release);
            }
        };
        // A sweep walks the whole table: keep it off the async workers when there is a
        // runtime (production), inline otherwise (tests that drive the clock).
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(run);
            }
            Err(_) => run(),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rpm: u32, burst: u32, max_keys: usize) -> (Arc<LocalLimiter<u32>>, Clock) {
        let clock = Clock::manual(std::time::SystemTime::now());
        let fake = clock.clone();
        let rate = Rate::per_minute(rpm, burst);
        let limiter = LocalLimiter::new(rate, max_keys, Duration::from_secs(30), clock);
        (Arc::new(limiter), fake)
    }

    #[test]
    fn a_full_burst_is_admitted_then_the_next_request_waits_one_interval() {
        let (limiter, _clock) = limiter(30, 10, 100);
        for expected_remaining in (0..10).rev() {
            let decision = limiter.check(&1);
            assert!(decision.retry_after.is_none());
            assert_eq!(decision.remaining, expected_remaining);
            assert_eq!(decision.limit, 10);
        }
        let refused = limiter.check(&1);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.reset, Duration::from_secs(20));
    }

    #[test]
    fn the_budget_comes_back_as_the_clock_advances() {
        let (limiter, clock) = limiter(60, 2, 100);
        assert!(limiter.check(&1).is_admitted());
        assert!(limiter.check(&1).is_admitted());
        assert!(!limiter.check(&1).is_admitted());
        clock.advance(Duration::from_millis(999));
        assert!(!limiter.check(&1).is_admitted());
        clock.advance(Duration::from_millis(1));
        assert!(limiter.check(&1).is_admitted());
    }

    #[test]
    fn keys_have_separate_budgets() {
        let (limiter, _clock) = limiter(60, 1, 100);
        assert!(limiter.check(&1).is_admitted());
        assert!(!limiter.check(&1).is_admitted());
        assert!(limiter.check(&2).is_admitted());
    }

    #[test]
    fn driving_four_times_the_rate_for_a_minute_admits_burst_plus_rate_times_time() {
        let (rpm, burst) = (30, 10);
        let (limiter, clock) = limiter(rpm, burst, 100);
        // 4 × 30/min = one attempt every 500 ms for 60 s of simulated time.
        let mut admitted = 0u32;
        for _ in 0..(4 * rpm) {
            if limiter.check(&7).is_admitted() {
                admitted += 1;
            }
            clock.advance(Duration::from_millis(500));
        }
        let expected = burst + rpm; // burst + rate × 1 minute
        assert!(
            admitted.abs_diff(expected) <= 1,
            "admitted {admitted}, expected {expected} ± 1"
        );
    }

    #[test]
    fn idle_keys_are_evicted_and_active_ones_kept() {
        let (limiter, clock) = limiter(60, 5, 10_000);
        for key in 0..1_000 {
            limiter.check(&key);
        }
        assert_eq!(limiter.tracked(), 1_000);
        // Key 0 spends its whole burst: its budget is refilled only after 5 s.
        for _ in 0..5 {
            limiter.check(&0);
        }
        clock.advance(Duration::from_secs(3));
        limiter.sweep();
        assert_eq!(limiter.tracked(), 1, "only the busy key is still tracked");
        clock.advance(Duration::from_secs(10));
        limiter.sweep();
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn sweeps_run_by_themselves_every_interval() {
        let (limiter, clock) = limiter(60, 1, 10_000);
        for key in 0..100 {
            limiter.check(&key);
        }
        clock.advance(Duration::from_secs(29));
        limiter.check(&1_000);
        assert_eq!(limiter.tracked(), 101, "no sweep before the interval");
        clock.advance(Duration::from_secs(1));
        limiter.check(&1_001);
        assert_eq!(
            limiter.tracked(),
            2,
            "the sweep dropped the 100 idle keys and kept the one active a second ago"
        );
    }

    #[test]
    fn a_full_table_never_grows_and_sends_new_keys_to_one_shared_budget() {
        let (limiter, clock) = limiter(60, 2, 100);
        for key in 0..100 {
            assert!(limiter.check(&key).is_admitted());
        }
        // Newcomers share the overflow budget (burst 2): the third one is refused.
        assert!(limiter.check(&1_000).is_admitted());
        assert!(limiter.check(&1_001).is_admitted());
        assert!(!limiter.check(&1_002).is_admitted());
        assert_eq!(limiter.tracked(), 100);
        // Known keys keep their own budget.
        assert!(limiter.check(&5).is_admitted());
        // Once idle keys can go, the full table sweeps and makes room.
        clock.advance(Duration::from_secs(5));
        assert!(limiter.check(&2_000).is_admitted());
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn memory_stays_bounded_under_a_stream_of_distinct_clients() {
        let (limiter, clock) = limiter(60, 1, 1_000);
        for key in 0..50_000u32 {
            limiter.check(&key);
            clock.advance(Duration::from_millis(1));
            assert!(limiter.tracked() <= 1_000);
        }
    }
}

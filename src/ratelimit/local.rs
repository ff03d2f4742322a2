//! The in-memory backend: governor's keyed GCRA over a bounded table, on an injected
//! clock. Idle keys (whose budget is full again, so forgetting them changes nothing)
//! are swept out every `sweep_interval`.
//!
//! The table holds at most `max_tracked_clients` keys. A new key that finds it full
//! replaces the entry closest to a full budget (the earliest theoretical arrival time)
//! among a few picked at random ([`crate::evict`]), as Redis approximates LRU. Forgetting a key hands
//! back exactly the budget it has not yet regained, so this gives away the least there
//! is: nothing for a key already full again, one request for a spray address that sent
//! one, while a limited client (budget spent) goes last, and early only once it owes
//! less than every sampled entry. A spray thus evicts its own keys and each newcomer
//! gets a budget of its own; a sprayer regains budget only by replacing the whole table
//! faster than budgets refill, and then the least owed. LRU (nginx) would forget a
//! spent client that pauses during a spray, handing its whole burst back.
//!
//! The table is a governor `StateStore` of our own: governor's `DashMapStateStore`
//! can be swept but not bounded, and no cache crate evicts by the budget owed.

use super::Decision;
use crate::clock::Clock;
use crate::evict::evict_cheapest;
use governor::clock::Clock as GovernorClock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{Quota, RateLimiter};
use indexmap::IndexMap;
use metrics::Counter;
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Shards of the table: each has its own lock, so request tasks on different workers
/// rarely wait for each other. A fixed number, so eviction behaves the same on every
/// machine; fewer when `max_tracked_clients` is small (see [`MIN_PER_SHARD`]).
const SHARDS: usize = 32;
/// Fewest keys a shard holds when full: eviction picks among a shard's keys, so a
/// shard must hold enough for a limited client always to sit among cheaper ones.
const MIN_PER_SHARD: usize = 64;

/// Keys forgotten to make room, for `/metrics`. Resolved on first use, by then the
/// recorder is installed (`crate::app` does it first).
static EVICTIONS: LazyLock<Counter> =
    LazyLock::new(|| metrics::counter!(crate::metrics::RATELIMIT_EVICTIONS));

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

/// The state table: each key's theoretical arrival time, in shards of bounded size.
struct Table<K> {
    /// Chosen by a key's hash; each holds at most its share of `max_keys`.
    shards: Box<[Mutex<Shard<K>>]>,
    /// Picks a key's shard (and where eviction starts sampling in it). Keyed at random,
    /// so a sprayer cannot aim its keys at one shard.
    hasher: RandomState,
    /// `rate_limit.max_tracked_clients`.
    max_keys: usize,
    /// Keys evicted to make room since the last sweep, for its warning.
    evicted: AtomicU64,
}

/// One shard: a map that can also be read by position, which makes random sampling O(1).
struct Shard<K> {
    /// Each key's theoretical arrival time (governor's GCRA state, ns since the limiter
    /// started): the budget is full again once the clock passes it.
    states: IndexMap<K, u64>,
    /// This shard's share of `max_keys`.
    cap: usize,
}

impl<K: Hash + Eq> Shard<K> {
    /// Evicts, while the shard is full, the sampled entry closest to a full budget;
    /// returns how many went. `seed`, the new key's hash under the table's random keys
    /// (so no client can aim it), says where sampling starts.
    fn make_room(&mut self, seed: u64) -> u64 {
        let mut evicted = 0;
        // The earliest theoretical arrival time is the budget closest to full.
        while self.states.len() >= self.cap && evict_cheapest(&mut self.states, seed, |tat| *tat) {
            evicted += 1;
        }
        evicted
    }
}

impl<K: Hash + Eq> Table<K> {
    fn new(max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        let count = SHARDS.min(max_keys / MIN_PER_SHARD).max(1);
        // Shares that add up to exactly max_keys.
        let shards = (0..count)
            .map(|i| {
                Mutex::new(Shard {
                    states: IndexMap::new(),
                    cap: max_keys / count + usize::from(i < max_keys % count),
                })
            })
            .collect();
        Self {
            shards,
            hasher: RandomState::new(),
            max_keys,
            evicted: AtomicU64::new(0),
        }
    }

    /// `key`'s shard, locked, and the key's hash.
    fn shard(&self, key: &K) -> (MutexGuard<'_, Shard<K>>, u64) {
        let hash = self.hasher.hash_one(key);
        let index = usize::try_from(hash % self.shards.len() as u64).unwrap_or(0);
        (lock(&self.shards[index]), hash)
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).states.len()).sum()
    }
}

/// Locks a shard. A panic while one was held (none is expected: the only code run under
/// the lock is map access and governor's arithmetic) leaves consistent entries, so the
/// poison is ignored rather than passed on to every later request.
fn lock<K>(shard: &Mutex<Shard<K>>) -> MutexGuard<'_, Shard<K>> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts only: a derived `Debug` would print every tracked client address.
impl<K: Hash + Eq> fmt::Debug for Table<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("shards", &self.shards.len())
            .field("tracked", &self.len())
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

/// governor's view of the table (a local newtype so the table can also be shared
/// with the sweeper).
#[derive(Debug)]
struct Store<K: Hash + Eq>(Arc<Table<K>>);

impl<K: Hash + Eq + Clone> StateStore for Store<K> {
    type Key = K;

    /// governor's update runs under the shard's lock, so a key's check, a newcomer's
    /// insertion and the eviction that makes room for it are each one step.
    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let (mut shard, hash) = self.0.shard(key);
        if let Some(tat) = shard.states.get_mut(key) {
            let (outcome, next) = f(Some(Nanos::from(*tat)))?;
            *tat = next.as_u64();
            return Ok(outcome);
        }
        let (outcome, next) = f(None)?;
        let evicted = shard.make_room(hash);
        shard.states.insert(key.clone(), next.as_u64());
        drop(shard);
        if evicted > 0 {
            self.0.evicted.fetch_add(evicted, Ordering::Relaxed);
            EVICTIONS.increment(evicted);
        }
        Ok(outcome)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for Store<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64();
        for shard in &self.0.shards {
            lock(shard).states.retain(|_, tat| *tat > drop_below);
        }
    }

    /// Only shards using under half their capacity: a full one (a spray going on) would
    /// just grow back.
    fn shrink_to_fit(&self) {
        for shard in &self.0.shards {
            let mut shard = lock(shard);
            if shard.states.len() < shard.states.capacity() / 2 {
                shard.states.shrink_to_fit();
            }
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
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
        let table = Arc::new(Table::new(max_keys));
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

    /// Number of keys tracked now (never more than `max_keys`).
    pub fn tracked(&self) -> usize {
        self.table.len()
    }

    /// Evicts every key whose budget is full again and returns the memory to the
    /// allocator; warns if keys had to be evicted early since the last sweep. Runs on a
    /// blocking thread when called from the runtime.
    pub fn sweep(&self) {
        let before = self.tracked();
        self.governor.retain_recent();
        self.governor.shrink_to_fit();
        let evicted = self.table.evicted.swap(0, Ordering::Relaxed);
        let after = self.tracked();
        if evicted > 0 {
            tracing::warn!(
                evicted,
                tracked = after,
                max_tracked_clients = self.table.max_keys,
                "rate-limit table was full: clients closest to a full budget were forgotten to make room for new ones; raise rate_limit.max_tracked_clients if this is not an attack"
            );
        }
        tracing::debug!(before, after, "rate-limit sweep");
    }

    /// Starts a sweep every `sweep_interval`. A full table needs none to take new keys
    /// (they make their own room), so this is only about memory and the warning.
    fn maybe_sweep(self: &Arc<Self>) {
        let now = GovernorClock::now(self.governor.clock()).as_u64();
        if now < self.next_sweep.load(Ordering::Relaxed) {
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
    fn a_full_table_never_grows_and_each_new_key_gets_a_budget_of_its_own() {
        let (limiter, _clock) = limiter(60, 2, 100);
        for key in 0..100 {
            assert!(limiter.check(&key).is_admitted());
        }
        for key in 1_000..1_010 {
            assert!(limiter.check(&key).is_admitted(), "key {key}: first");
            assert!(limiter.check(&key).is_admitted(), "key {key}: second");
            // Its own budget, spent: tracked like any other key, not let through forever.
            assert!(!limiter.check(&key).is_admitted(), "key {key}: third");
            assert_eq!(limiter.tracked(), 100);
        }
        assert_eq!(limiter.table.evicted.load(Ordering::Relaxed), 10);
    }

    /// The review's attack: distinct addresses at several times the table's size, faster
    /// than budgets refill, and real clients arriving while it goes on.
    #[test]
    fn newcomers_during_a_sustained_spray_each_get_their_own_full_budget() {
        let (rpm, burst, max) = (60, 5, 1_000);
        let (limiter, clock) = limiter(rpm, burst, max);
        let mut spray = 0u32..;
        // 10,000 new keys a simulated second: ten times the table per refill interval.
        let mut spray_one = || {
            limiter.check(&spray.next().unwrap_or_default());
            clock.advance(Duration::from_micros(100));
            assert!(limiter.tracked() <= max);
        };
        for newcomer in 1_000_000..1_000_020 {
            for _ in 0..250 {
                spray_one();
            }
            for n in 0..burst {
                assert!(
                    limiter.check(&newcomer).is_admitted(),
                    "newcomer {newcomer}, request {n}"
                );
                spray_one(); // the spray does not wait for it
            }
            assert!(
                !limiter.check(&newcomer).is_admitted(),
                "newcomer {newcomer} has a budget of its own, spent like any other"
            );
        }
        let sprayed = spray.next().unwrap_or_default();
        assert!(sprayed >= 5 * max as u32, "sprayed {sprayed}");
        assert_eq!(limiter.tracked(), max);
    }

    /// How often `limited` is admitted, attempting every 10 ms for 5 s from its first
    /// full burst on, with `spray_per_step` distinct keys between attempts.
    fn admissions_of_a_client_over_its_limit(spray_per_step: u32) -> u32 {
        let (limiter, clock) = limiter(60, 5, 1_000);
        let limited = u32::MAX;
        let mut admitted = 0;
        let mut spray = 0u32..;
        for _ in 0..500 {
            admitted += u32::from(limiter.check(&limited).is_admitted());
            for key in spray.by_ref().take(spray_per_step as usize) {
                limiter.check(&key);
            }
            clock.advance(Duration::from_millis(10));
        }
        admitted
    }

    #[test]
    fn a_client_over_its_limit_keeps_its_debt_through_a_spray() {
        let alone = admissions_of_a_client_over_its_limit(0);
        // The burst, then one a second as it comes back.
        assert!((9..=10).contains(&alone), "alone: {alone}");
        // 20 keys every 10 ms: 10,000 in all, ten times the table, 2 per ms.
        assert_eq!(admissions_of_a_client_over_its_limit(20), alone);
    }

    /// What LRU gets wrong: the client sends nothing while the spray goes on, so it is the
    /// least recently used; with its budget spent, it is still the most valuable to keep.
    #[test]
    fn a_client_that_spent_its_budget_and_pauses_during_a_spray_regains_only_what_refilled() {
        let (limiter, clock) = limiter(60, 5, 1_000);
        let limited = u32::MAX;
        for _ in 0..5 {
            assert!(limiter.check(&limited).is_admitted());
        }
        assert!(!limiter.check(&limited).is_admitted());
        for key in 0..5_000 {
            limiter.check(&key);
            clock.advance(Duration::from_micros(400));
        }
        // 2 s later: two requests' worth came back, not the burst.
        assert!(limiter.check(&limited).is_admitted());
        assert!(limiter.check(&limited).is_admitted());
        assert!(!limiter.check(&limited).is_admitted());
    }

    #[test]
    fn concurrent_new_keys_never_overfill_the_table_and_every_eviction_is_counted() {
        let (limiter, _clock) = limiter(60, 1, 1_000);
        std::thread::scope(|scope| {
            for thread in 0..4u32 {
                let limiter = &limiter;
                scope.spawn(move || {
                    for n in 0..20_000 {
                        assert!(limiter.check(&(thread * 1_000_000 + n)).is_admitted());
                        if n % 500 == 0 {
                            assert!(limiter.tracked() <= 1_000);
                        }
                    }
                });
            }
        });
        assert_eq!(limiter.tracked(), 1_000);
        // Each new key either found room or evicted exactly one.
        assert_eq!(
            limiter.table.evicted.load(Ordering::Relaxed),
            80_000 - 1_000
        );
    }

    #[test]
    fn the_next_sweep_warns_once_with_the_number_of_evictions() {
        let (limiter, _clock) = limiter(60, 1, 100);
        for key in 0..150 {
            limiter.check(&key);
        }
        let logs = captured_logs(|| {
            limiter.sweep();
            limiter.sweep();
        });
        assert_eq!(
            logs.matches("rate-limit table was full").count(),
            1,
            "{logs}"
        );
        assert!(logs.contains("evicted=50"), "{logs}");
    }

    /// What `emit` logs at warn level and above, as plain text.
    fn captured_logs(emit: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                lock_buffer(&self.0).extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        fn lock_buffer(buffer: &std::sync::Mutex<Vec<u8>>) -> MutexGuard<'_, Vec<u8>> {
            buffer.lock().unwrap_or_else(PoisonError::into_inner)
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8_lossy(&lock_buffer(&buffer.0)).into_owned()
    }

    #[test]
    fn memory_stays_bounded_under_a_stream_of_distinct_clients() {
        let (limiter, clock) = limiter(60, 1, 1_000);
        for key in 0..50_000u32 {
            limiter.check(&key);
            clock.advance(Duration::from_millis(1));
            assert!(limiter.tracked() <= 1_000);
        }
        assert_eq!(limiter.tracked(), 1_000, "full, and still taking new keys");
    }
}

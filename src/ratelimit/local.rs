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
#[path = "local_tests.rs"]
mod tests;

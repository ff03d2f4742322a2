//! The opt-in prefetch pool: credentials minted ahead of demand so a caller gets one
//! without waiting for two upstream round trips.
//!
//! Each credential is handed out exactly once (popped under a lock), none older than
//! `pool.max_age` is ever handed out (stale ones are discarded and counted), and a
//! background task keeps the credentials ready plus those being minted at the target:
//! `pool.size`, or with `"auto"` what demand needs ([`sizing`]). It replaces each one
//! as it is taken, and backs off while the upstream fails. An empty pool is a miss: the
//! caller mints live.

mod sizing;
#[cfg(test)]
mod tests;

use crate::clock::Clock;
use crate::config::{PoolConfig, PoolSize};
use crate::metrics::{POOL_DISCARDS, POOL_HITS, POOL_MISSES, POOL_READY, POOL_TARGET};
use crate::orga::{Expiry, OrgaError, SessionCredentials};
use sizing::Sizing;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::{JoinError, JoinSet};

/// A credential whose own upstream expiry is closer than this is never handed out, so
/// a client always has time to open its call even if `max_age` is set too long.
const MIN_REMAINING_LIFETIME: Duration = Duration::from_secs(15);

/// First pause after a failed refill; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// While an automatic pool aims to hold anything, how often its target is looked at
/// again without a take, so it (and its gauge) follows demand down.
const RESIZE_INTERVAL: Duration = Duration::from_secs(1);

/// A future minting one credential.
pub type MintFuture = Pin<Box<dyn Future<Output = Result<SessionCredentials, OrgaError>> + Send>>;
/// Mints credentials; the upstream client in production, a fake in tests.
pub type Mint = Arc<dyn Fn() -> MintFuture + Send + Sync>;
/// True while refills must wait (the global daily quota is used up); checked before each
/// round of mints, and again every [`HELD_BACK_RECHECK`] while it holds.
pub type HeldBack = Arc<dyn Fn() -> bool + Send + Sync>;
/// How often a held-back pool asks again: a new UTC day resumes it within this.
const HELD_BACK_RECHECK: Duration = Duration::from_secs(1);

/// A cheap handle on the pool; the refill task stops when the last handle is dropped.
#[derive(Clone)]
pub struct CredentialPool {
    inner: Arc<Inner>,
}

struct Inner {
    /// Ready credentials, oldest first, and the demand estimate.
    state: Mutex<State>,
    /// Wakes the refill task when a credential is taken or the pool is dropped.
    wake: Arc<Notify>,
    /// `pool.size`.
    size: PoolSize,
    /// `pool.max_size`: the most an automatic pool keeps ready or being minted.
    max_size: usize,
    /// Older than this is never handed out.
    max_age: Duration,
    /// Upstream mints in flight at most, with a fixed size.
    concurrency: usize,
    /// Ages and expiries are read from it.
    clock: Clock,
    stats: PoolStats,
}

struct State {
    /// Ready credentials, oldest first, each with the instant its minting began.
    ready: VecDeque<(Instant, SessionCredentials)>,
    /// Demand and refill time, for an automatic size.
    sizing: Sizing,
}

/// Counters, also exported as metrics.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Credentials served from the pool.
    pub hits: AtomicU64,
    /// Requests that found the pool empty and minted live.
    pub misses: AtomicU64,
    /// Credentials thrown away unused because they reached `max_age`.
    pub discards: AtomicU64,
    /// Refill mints that failed.
    pub refill_failures: AtomicU64,
    /// Refill mints that landed in the pool.
    pub refilled: AtomicU64,
    /// The target last set: ready plus being minted.
    pub target: AtomicUsize,
}

impl CredentialPool {
    /// Creates the pool and starts its refill task on the current runtime; no refill
    /// starts while `held_back` says so.
    pub fn start(config: &PoolConfig, mint: Mint, held_back: HeldBack, clock: Clock) -> Self {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                ready: VecDeque::new(),
                sizing: Sizing::default(),
            }),
            wake: Arc::new(Notify::new()),
            size: config.size,
            max_size: config.max_size,
            max_age: config.max_age,
            concurrency: config.refill_concurrency.max(1),
            clock,
            stats: PoolStats::default(),
        });
        tokio::spawn(refill(
            Arc::downgrade(&inner),
            inner.wake.clone(),
            mint,
            held_back,
        ));
        Self { inner }
    }

    /// Takes one fresh credential, or `None` when the pool is empty (a miss).
    pub fn take(&self) -> Option<SessionCredentials> {
        let now = self.inner.clock.now();
        let (found, discarded) = {
            let mut state = self.inner.lock();
            // Demand is followed only to size an automatic pool.
            if self.inner.size == PoolSize::Auto {
                state.sizing.took(now);
            }
            let mut discarded = 0;
            let mut found = None;
            while let Some((minted, credentials)) = state.ready.pop_front() {
                if self.inner.usable(minted, &credentials, now) {
                    found = Some(credentials);
                    break;
                }
                discarded += 1;
            }
            (found, discarded)
        };
        self.inner.discarded(discarded);
        self.inner.wake.notify_one();
        let (counter, name) = match found {
            Some(_) => (&self.inner.stats.hits, POOL_HITS),
            None => (&self.inner.stats.misses, POOL_MISSES),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(name).increment(1);
        found
    }

    /// Credentials ready right now (stale ones included until the next prune).
    pub fn len(&self) -> usize {
        self.inner.lock().ready.len()
    }

    /// True when nothing is ready.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The counters.
    pub fn stats(&self) -> &PoolStats {
        &self.inner.stats
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Wake the idle refill task so it sees the pool is gone and stops.
        self.wake.notify_one();
    }
}

/// What the refill task should do next.
struct Plan {
    /// Mints to start now.
    start: usize,
    /// When to look again without a take: the oldest ready credential goes stale, or
    /// an automatic target may have shrunk.
    next_look: Option<Instant>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn discarded(&self, n: u64) {
        if n > 0 {
            self.stats.discards.fetch_add(n, Ordering::Relaxed);
            metrics::counter!(POOL_DISCARDS).increment(n);
        }
    }

    /// Younger than `max_age`, and not about to expire by upstream's own clock.
    fn usable(&self, minted: Instant, credentials: &SessionCredentials, now: Instant) -> bool {
        let expires_soon = match credentials.expires_at {
            // Upstream's number: one too far out to represent is not "soon", and must
            // not panic the way `+` would.
            Some(Expiry::Unix(at)) => std::time::UNIX_EPOCH
                .checked_add(Duration::from_secs(at))
                .is_some_and(|at| at <= self.clock.wall() + MIN_REMAINING_LIFETIME),
            _ => false,
        };
        now.saturating_duration_since(minted) < self.max_age && !expires_soon
    }

    /// Drops stale credentials and decides how many mints to start, given `minting`
    /// already in flight.
    fn plan(&self, minting: usize) -> Plan {
        let now = self.clock.now();
        let mut state = self.lock();
        let before = state.ready.len();
        state
            .ready
            .retain(|(minted, credentials)| self.usable(*minted, credentials, now));
        let dropped = before - state.ready.len();
        let (target, in_flight_cap) = match self.size {
            PoolSize::Fixed(size) => (size, self.concurrency),
            // Each mint replaces a credential demand took, as a live mint would have:
            // the target itself bounds them.
            PoolSize::Auto => (
                state.sizing.target(now, self.max_age, self.max_size),
                usize::MAX,
            ),
        };
        let ready = state.ready.len();
        let next_stale = state
            .ready
            .front()
            .map(|(minted, _)| *minted + self.max_age);
        let resize = (self.size == PoolSize::Auto && target > 0).then(|| now + RESIZE_INTERVAL);
        let next_look = earliest(next_stale, resize);
        drop(state);
        self.discarded(dropped as u64);
        self.stats.target.store(target, Ordering::Relaxed);
        metrics::gauge!(POOL_TARGET).set(target as f64);
        metrics::gauge!(POOL_READY).set(ready as f64);
        let start = target
            .saturating_sub(ready + minting)
            .min(in_flight_cap.saturating_sub(minting));
        Plan { start, next_look }
    }

    /// A mint started at `started` finished; true if it landed in the pool.
    fn landed(&self, joined: Result<(Instant, MintResult), JoinError>) -> bool {
        match joined {
            Ok((started, Ok(credentials))) => {
                let now = self.clock.now();
                if !self.usable(started, &credentials, now) {
                    // Stale on arrival (an upstream expiry too short for the pool):
                    // treat it as a failure so the refill backs off, not spins.
                    self.discarded(1);
                    return false;
                }
                let mut state = self.lock();
                state.ready.push_back((started, credentials));
                if self.size == PoolSize::Auto {
                    state
                        .sizing
                        .refilled_in(now.saturating_duration_since(started));
                }
                drop(state);
                self.stats.refilled.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok((_, Err(error))) => {
                self.stats.refill_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %error, "pool refill failed");
                false
            }
            Err(_) => false,
        }
    }
}

type MintResult = Result<SessionCredentials, OrgaError>;

/// Keeps the pool at its target until every handle is gone.
async fn refill(pool: Weak<Inner>, wake: Arc<Notify>, mint: Mint, held_back: HeldBack) {
    let mut minting = JoinSet::new();
    let mut backoff = MIN_BACKOFF;
    let mut paused_until: Option<Instant> = None;
    let mut was_held = false;
    loop {
        // Hold only a weak reference while waiting, so dropping the pool stops the task.
        let Some(inner) = pool.upgrade() else { return };
        let now = inner.clock.now();
        if paused_until.is_some_and(|until| now >= until) {
            paused_until = None;
        }
        let plan = inner.plan(minting.len());
        let held = held_back();
        if held != was_held {
            was_held = held;
            match held {
                true => tracing::info!("pool refills stop: the global daily quota is used up"),
                false => tracing::info!("pool refills resume"),
            }
        }
        if paused_until.is_none() && !held {
            for _ in 0..plan.start {
                let (mint, clock) = (mint.clone(), inner.clock.clone());
                minting.spawn(async move { (clock.now(), mint().await) });
            }
        }
        let recheck = held.then(|| now + HELD_BACK_RECHECK);
        let wake_at = earliest(earliest(plan.next_look, paused_until), recheck);
        drop(inner);
        tokio::select! {
            Some(joined) = minting.join_next(), if !minting.is_empty() => {
                let Some(inner) = pool.upgrade() else { return };
                if inner.landed(joined) {
                    backoff = MIN_BACKOFF;
                } else {
                    paused_until = Some(inner.clock.now() + backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            () = wake.notified() => {}
            () = sleep_until(wake_at) => {}
        }
    }
}

/// The earlier of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

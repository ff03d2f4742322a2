//! The opt-in prefetch pool: credentials minted ahead of demand so a caller gets one
//! without waiting for two upstream round trips.
//!
//! Each credential is handed out exactly once (popped under a lock), none older than
//! `pool.max_age` is ever handed out (stale ones are discarded and counted), and a
//! background task refills the pool with bounded concurrency, backing off while the
//! upstream fails. An empty pool is a miss: the caller mints live.

use crate::config::PoolConfig;
use crate::orga::{Expiry, OrgaError, SessionCredentials};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A credential whose own upstream expiry is closer than this is never handed out, so
/// a client always has time to open its call even if `max_age` is set too long.
const MIN_REMAINING_LIFETIME: Duration = Duration::from_secs(15);

/// First pause after a failed refill; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A future minting one credential.
pub type MintFuture = Pin<Box<dyn Future<Output = Result<SessionCredentials, OrgaError>> + Send>>;
/// Mints credentials; the upstream client in production, a fake in tests.
pub type Mint = Arc<dyn Fn() -> MintFuture + Send + Sync>;

/// A cheap handle on the pool; the refill task stops when the last handle is dropped.
#[derive(Clone)]
pub struct CredentialPool {
    inner: Arc<Inner>,
}

struct Inner {
    /// Ready credentials, oldest first, with the instant their minting began.
    ready: Mutex<VecDeque<(Instant, SessionCredentials)>>,
    /// Wakes the refill task when a credential is taken or the pool is dropped.
    taken: Arc<Notify>,
    /// How many to keep ready.
    size: usize,
    /// Older than this is never handed out.
    max_age: Duration,
    /// Upstream mints in flight at most.
    concurrency: usize,
    stats: PoolStats,
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
}

impl CredentialPool {
    /// Creates the pool and starts its refill task on the current runtime.
    pub fn start(config: &PoolConfig, mint: Mint) -> Self {
        let inner = Arc::new(Inner {
            ready: Mutex::new(VecDeque::with_capacity(config.size)),
            taken: Arc::new(Notify::new()),
            size: config.size,
            max_age: config.max_age,
            concurrency: config.refill_concurrency.max(1),
            stats: PoolStats::default(),
        });
        tokio::spawn(refill(Arc::downgrade(&inner), inner.taken.clone(), mint));
        Self { inner }
    }

    /// Takes one fresh credential, or `None` when the pool is empty (a miss).
    pub fn take(&self) -> Option<SessionCredentials> {
        let now = Instant::now();
        let found = {
            let mut ready = self.inner.lock();
            let mut found = None;
            while let Some((minted, credentials)) = ready.pop_front() {
                if self.inner.usable(minted, &credentials, now) {
                    found = Some(credentials);
                    break;
                }
                self.inner.discarded(1);
            }
            found
        };
        self.inner.taken.notify_one();
        match found {
            Some(credentials) => {
                self.inner.stats.hits.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("orga_proxy_pool_hits_total").increment(1);
                Some(credentials)
            }
            None => {
                self.inner.stats.misses.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("orga_proxy_pool_misses_total").increment(1);
                None
            }
        }
    }

    /// Credentials ready right now (stale ones included until the next prune).
    pub fn len(&self) -> usize {
        self.inner.lock().len()
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
        self.taken.notify_one();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, SessionCredentials)>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn discarded(&self, n: u64) {
        self.stats.discards.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("orga_proxy_pool_discards_total").increment(n);
    }

    /// Younger than `max_age`, and not about to expire by upstream's own clock.
    fn usable(&self, minted: Instant, credentials: &SessionCredentials, now: Instant) -> bool {
        let expires_soon = match credentials.expires_at {
            Some(Expiry::Unix(at)) => {
                let deadline = std::time::SystemTime::now() + MIN_REMAINING_LIFETIME;
                // Upstream's number: one too far out to represent is not "soon", and
                // must not panic the way `+` would.
                std::time::UNIX_EPOCH
                    .checked_add(Duration::from_secs(at))
                    .is_some_and(|at| at <= deadline)
            }
            _ => false,
        };
        now.duration_since(minted) < self.max_age && !expires_soon
    }

    /// Drops stale credentials; returns how many are missing and when the oldest
    /// remaining one goes stale.
    fn prune(&self) -> (usize, Option<Instant>) {
        let now = Instant::now();
        let mut ready = self.lock();
        let before = ready.len();
        ready.retain(|(minted, credentials)| self.usable(*minted, credentials, now));
        let dropped = before - ready.len();
        let next_stale = ready.front().map(|(minted, _)| *minted + self.max_age);
        let missing = self.size.saturating_sub(ready.len());
        drop(ready);
        if dropped > 0 {
            self.discarded(dropped as u64);
        }
        (missing, next_stale)
    }
}

/// Keeps the pool full until every handle is gone.
async fn refill(pool: std::sync::Weak<Inner>, taken: Arc<Notify>, mint: Mint) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(inner) = pool.upgrade() else { return };
        let (missing, next_stale) = inner.prune();
        if missing == 0 {
            let wake_at = next_stale.unwrap_or_else(|| Instant::now() + inner.max_age);
            // Hold only a weak reference while idle, so dropping the pool stops the task.
            drop(inner);
            tokio::select! {
                () = taken.notified() => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
            continue;
        }
        let mut batch = JoinSet::new();
        for _ in 0..missing.min(inner.concurrency) {
            let mint = mint.clone();
            batch.spawn(async move { (Instant::now(), mint().await) });
        }
        let mut failed = false;
        while let Some(joined) = batch.join_next().await {
            match joined {
                Ok((minted, Ok(credentials))) => {
                    if inner.usable(minted, &credentials, Instant::now()) {
                        inner.lock().push_back((minted, credentials));
                    } else {
                        // Stale on arrival (an upstream expiry too short for the pool):
                        // treat it as a failure so the refill backs off, not spins.
                        failed = true;
                        inner.discarded(1);
                    }
                }
                Ok((_, Err(error))) => {
                    failed = true;
                    inner.stats.refill_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %error, "pool refill failed");
                }
                Err(_) => failed = true,
            }
        }
        drop(inner);
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else {
            backoff = MIN_BACKOFF;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orga::{Call, EphemeralToken};
    use std::collections::HashSet;
    use std::sync::atomic::AtomicBool;

    fn config(size: usize) -> PoolConfig {
        PoolConfig {
            enabled: true,
            size,
            max_age: Duration::from_secs(30),
            refill_concurrency: 2,
        }
    }

    /// A fake upstream: numbered tokens, 50 ms per mint, failing while `down` is set.
    fn fake_mint(minted: Arc<AtomicU64>, down: Arc<AtomicBool>) -> Mint {
        Arc::new(move || {
            let (minted, down) = (minted.clone(), down.clone());
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if down.load(Ordering::SeqCst) {
                    return Err(OrgaError::Status {
                        call: Call::ClientSecret,
                        status: 503,
                    });
                }
                let n = minted.fetch_add(1, Ordering::SeqCst);
                Ok(SessionCredentials {
                    ephemeral_token: EphemeralToken::new(format!("ek_{n}")),
                    ice_servers: Vec::new(),
                    expires_at: None,
                })
            })
        })
    }

    async fn settle() {
        // Lets the refill task run its mints on the paused clock.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn it_fills_up_to_its_size_and_no_further() {
        let minted = Arc::new(AtomicU64::new(0));
        let pool = CredentialPool::start(&config(5), fake_mint(minted.clone(), Default::default()));
        settle().await;
        assert_eq!(pool.len(), 5);
        assert_eq!(minted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn no_credential_is_handed_out_twice() {
        let minted = Arc::new(AtomicU64::new(0));
        let pool = CredentialPool::start(&config(8), fake_mint(minted, Default::default()));
        let mut seen = HashSet::new();
        let mut hits = 0;
        for _ in 0..10 {
            settle().await;
            // Many concurrent takers racing for the same pool.
            let takers: Vec<_> = (0..6)
                .map(|_| {
                    let pool = pool.clone();
                    tokio::spawn(async move { pool.take() })
                })
                .collect();
            for taker in takers {
                if let Some(c) = taker.await.unwrap() {
                    hits += 1;
                    assert!(
                        seen.insert(c.ephemeral_token.expose().to_owned()),
                        "handed out twice"
                    );
                }
            }
        }
        assert!(hits >= 50, "the pool served most requests ({hits})");
        assert_eq!(pool.stats().hits.load(Ordering::Relaxed), hits);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_older_than_max_age_is_handed_out() {
        let minted = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let pool = CredentialPool::start(&config(4), fake_mint(minted.clone(), down.clone()));
        settle().await;
        assert_eq!(pool.len(), 4);
        // Upstream goes down, so nothing fresh replaces what ages out.
        down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(pool.take().is_none(), "a stale credential was handed out");
        assert_eq!(pool.stats().discards.load(Ordering::Relaxed), 4);
        assert!(pool.stats().refill_failures.load(Ordering::Relaxed) > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_credential_near_its_upstream_expiry_is_never_handed_out() {
        let soon = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 5;
        let mint: Mint = Arc::new(move || {
            Box::pin(async move {
                Ok(SessionCredentials {
                    ephemeral_token: EphemeralToken::new("ek_short_lived"),
                    ice_servers: Vec::new(),
                    expires_at: Some(Expiry::Unix(soon)),
                })
            })
        });
        let pool = CredentialPool::start(&config(2), mint);
        settle().await;
        assert!(
            pool.take().is_none(),
            "a token with 5 s left was handed out"
        );
        assert!(pool.stats().discards.load(Ordering::Relaxed) > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expiry_too_far_out_to_represent_is_kept_not_a_panic() {
        let mint: Mint = Arc::new(|| {
            Box::pin(async {
                Ok(SessionCredentials {
                    ephemeral_token: EphemeralToken::new("ek_far"),
                    ice_servers: Vec::new(),
                    expires_at: Some(Expiry::Unix(u64::MAX)),
                })
            })
        });
        let pool = CredentialPool::start(&config(1), mint);
        settle().await;
        assert!(pool.take().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_pool_refills_after_being_drained() {
        let minted = Arc::new(AtomicU64::new(0));
        let pool = CredentialPool::start(&config(3), fake_mint(minted, Default::default()));
        settle().await;
        while pool.take().is_some() {}
        assert_eq!(pool.stats().misses.load(Ordering::Relaxed), 1);
        settle().await;
        assert_eq!(pool.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn refills_back_off_while_the_upstream_fails() {
        let minted = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicBool::new(true));
        let pool = CredentialPool::start(&config(4), fake_mint(minted, down));
        tokio::time::sleep(Duration::from_secs(60)).await;
        let failures = pool.stats().refill_failures.load(Ordering::Relaxed);
        // At most 2 per batch, batches at least 100 ms apart, growing to 5 s.
        assert!(
            failures < 40,
            "{failures} refill attempts in a minute: no backoff"
        );
        assert!(pool.is_empty());
    }
}

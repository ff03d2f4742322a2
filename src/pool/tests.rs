//! The pool's behaviour on Tokio's paused clock: a fixed size, an automatic size that
//! follows random demand, nothing past `max_age`, each credential out once.

use super::*;
use crate::orga::{Call, EphemeralToken};
use std::collections::HashSet;
use std::sync::atomic::AtomicBool;

/// What one mint takes upstream: two calls of 150 ms.
const MINT_TIME: Duration = Duration::from_millis(300);

fn fixed(size: usize) -> PoolConfig {
    PoolConfig {
        enabled: true,
        size: PoolSize::Fixed(size),
        max_age: Duration::from_secs(30),
        refill_concurrency: 2,
        ..PoolConfig::default()
    }
}

fn auto() -> PoolConfig {
    PoolConfig {
        size: PoolSize::Auto,
        ..fixed(1)
    }
}

/// A fake upstream: tokens named `ek_<n>_<ms>` (their number and the paused clock's
/// reading, in ms since `epoch`, when minting began), [`MINT_TIME`] per mint, failing
/// while `down` is set.
#[derive(Clone)]
struct Upstream {
    minted: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    epoch: tokio::time::Instant,
}

impl Upstream {
    fn new() -> Self {
        Self {
            minted: Arc::default(),
            down: Arc::default(),
            epoch: tokio::time::Instant::now(),
        }
    }

    fn mint(&self) -> Mint {
        let upstream = self.clone();
        Arc::new(move || {
            let upstream = upstream.clone();
            Box::pin(async move {
                let began = upstream.epoch.elapsed().as_millis();
                tokio::time::sleep(MINT_TIME).await;
                if upstream.down.load(Ordering::SeqCst) {
                    return Err(OrgaError::Status {
                        call: Call::ClientSecret,
                        status: 503,
                    });
                }
                let n = upstream.minted.fetch_add(1, Ordering::SeqCst);
                Ok(SessionCredentials {
                    ephemeral_token: EphemeralToken::new(format!("ek_{n}_{began}")),
                    ice_servers: Vec::new(),
                    expires_at: None,
                })
            })
        })
    }

    fn minted(&self) -> u64 {
        self.minted.load(Ordering::SeqCst)
    }

    /// How old a token this upstream minted is now.
    fn age(&self, credentials: &SessionCredentials) -> Duration {
        let began: u64 = credentials
            .ephemeral_token
            .expose()
            .rsplit('_')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        self.epoch.elapsed() - Duration::from_millis(began)
    }
}

/// Refills never held back.
fn never_held() -> HeldBack {
    Arc::new(|| false)
}

fn start(config: &PoolConfig, upstream: &Upstream) -> CredentialPool {
    CredentialPool::start(config, upstream.mint(), never_held(), Clock::system())
}

/// Random (Poisson) arrivals at `per_second` for `seconds`: the pool is asked at each,
/// and every credential handed out is checked for age and uniqueness.
async fn demand(
    pool: &CredentialPool,
    upstream: &Upstream,
    per_second: f64,
    seconds: u64,
    seen: &mut HashSet<String>,
) -> Served {
    // A fixed-seed generator, so every run sees the same arrivals (splitmix64: a
    // few lines here rather than a dependency for one distribution in one test).
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ per_second.to_bits();
    let mut uniform = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let end = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let started = tokio::time::Instant::now();
    let mut served = Served::default();
    loop {
        let gap = -(1.0 - uniform()).ln() / per_second;
        tokio::time::sleep(Duration::from_secs_f64(gap)).await;
        if tokio::time::Instant::now() >= end {
            return served;
        }
        match pool.take() {
            Some(credentials) => {
                assert!(
                    upstream.age(&credentials) < Duration::from_secs(30),
                    "handed out past max_age"
                );
                assert!(
                    seen.insert(credentials.ephemeral_token.expose().to_owned()),
                    "handed out twice"
                );
                served.hits += 1;
            }
            None => served.misses.push(started.elapsed()),
        }
    }
}

/// What [`demand`] saw.
#[derive(Debug, Default)]
struct Served {
    hits: u64,
    /// When each miss happened, from the start of the demand.
    misses: Vec<Duration>,
}

impl Served {
    fn hit_ratio(&self) -> f64 {
        self.hits as f64 / (self.hits + self.misses.len() as u64) as f64
    }
}

async fn settle() {
    // Lets the refill task run its mints on the paused clock.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

#[tokio::test(start_paused = true)]
async fn a_fixed_pool_fills_up_to_its_size_and_no_further() {
    let upstream = Upstream::new();
    let pool = start(&fixed(5), &upstream);
    settle().await;
    assert_eq!(pool.len(), 5);
    assert_eq!(upstream.minted(), 5);
    assert_eq!(pool.stats().target.load(Ordering::Relaxed), 5);
}

#[tokio::test(start_paused = true)]
async fn no_credential_is_handed_out_twice_to_racing_takers() {
    let upstream = Upstream::new();
    let pool = start(&fixed(8), &upstream);
    let mut seen = HashSet::new();
    let mut hits = 0;
    for _ in 0..10 {
        settle().await;
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
    let upstream = Upstream::new();
    let pool = start(&fixed(4), &upstream);
    settle().await;
    assert_eq!(pool.len(), 4);
    // Upstream goes down, so nothing fresh replaces what ages out.
    upstream.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(pool.take().is_none(), "a stale credential was handed out");
    assert_eq!(pool.stats().discards.load(Ordering::Relaxed), 4);
    assert!(pool.stats().refill_failures.load(Ordering::Relaxed) > 0);
}

#[tokio::test(start_paused = true)]
async fn a_credential_near_its_upstream_expiry_is_never_handed_out() {
    let clock = Clock::system();
    let soon = clock
        .wall()
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
    let pool = CredentialPool::start(&fixed(2), mint, never_held(), clock);
    settle().await;
    assert!(
        pool.take().is_none(),
        "a token with 5 s left was handed out"
    );
    assert!(pool.stats().discards.load(Ordering::Relaxed) > 0);
}

#[tokio::test(start_paused = true)]
async fn a_fixed_pool_refills_after_being_drained() {
    let upstream = Upstream::new();
    let pool = start(&fixed(3), &upstream);
    settle().await;
    while pool.take().is_some() {}
    assert_eq!(pool.stats().misses.load(Ordering::Relaxed), 1);
    settle().await;
    assert_eq!(pool.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn nothing_is_minted_while_refills_are_held_back_and_they_resume_after() {
    let upstream = Upstream::new();
    let held = Arc::new(AtomicBool::new(true));
    let flag = held.clone();
    let held_back: HeldBack = Arc::new(move || flag.load(Ordering::SeqCst));
    let pool = CredentialPool::start(&fixed(3), upstream.mint(), held_back, Clock::system());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        upstream.minted(),
        0,
        "the global quota is used up: no spend"
    );
    held.store(false, Ordering::SeqCst);
    tokio::time::sleep(HELD_BACK_RECHECK + MINT_TIME * 2).await;
    assert_eq!(pool.len(), 3, "a new day: the pool fills again");
}

#[tokio::test(start_paused = true)]
async fn refills_back_off_while_the_upstream_fails() {
    let upstream = Upstream::new();
    upstream.down.store(true, Ordering::SeqCst);
    let pool = start(&fixed(4), &upstream);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let failures = pool.stats().refill_failures.load(Ordering::Relaxed);
    // Pauses from 100 ms doubling to 5 s: a few dozen attempts a minute at most.
    assert!(
        failures < 40,
        "{failures} refill attempts in a minute: no backoff"
    );
    assert!(pool.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_automatic_pool_mints_nothing_without_demand() {
    let upstream = Upstream::new();
    let pool = start(&auto(), &upstream);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(upstream.minted(), 0);
    assert!(pool.is_empty());
    assert_eq!(pool.stats().target.load(Ordering::Relaxed), 0);
}

/// Steady random demand at `per_second`: after a warm-up, at least 99% hits, and of
/// what the pool minted at most 5% never handed out (aged out, or still in the pool
/// at the end).
async fn steady_demand_is_served_from_the_pool(per_second: f64, seconds: u64) {
    let upstream = Upstream::new();
    let pool = start(&auto(), &upstream);
    let mut seen = HashSet::new();
    demand(&pool, &upstream, per_second, 10, &mut seen).await;
    let (hits_before, discards_before) = (
        pool.stats().hits.load(Ordering::Relaxed),
        pool.stats().discards.load(Ordering::Relaxed),
    );
    let refilled_before = pool.stats().refilled.load(Ordering::Relaxed);
    let served = demand(&pool, &upstream, per_second, seconds, &mut seen).await;
    assert!(
        served.hit_ratio() >= 0.99,
        "{per_second}/s: hits {:.4} ({served:?})",
        served.hit_ratio()
    );
    // Let the mints in flight land, so they count as minted and unused.
    tokio::time::sleep(MINT_TIME * 2).await;
    let stats = pool.stats();
    let minted = stats.refilled.load(Ordering::Relaxed) - refilled_before + pool.len() as u64;
    let handed_out = stats.hits.load(Ordering::Relaxed) - hits_before;
    let wasted = minted.saturating_sub(handed_out);
    assert_eq!(
        stats.discards.load(Ordering::Relaxed),
        discards_before,
        "nothing aged out"
    );
    assert!(
        wasted * 20 <= minted,
        "{per_second}/s: {wasted} of {minted} minted never handed out"
    );
    let target = stats.target.load(Ordering::Relaxed) as f64;
    let during_refill = per_second * MINT_TIME.as_secs_f64();
    assert!(
        target > during_refill && target < 3.0 * during_refill + 10.0,
        "{per_second}/s: target {target}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_automatic_pool_serves_a_steady_5_per_second() {
    steady_demand_is_served_from_the_pool(5.0, 120).await;
}

#[tokio::test(start_paused = true)]
async fn an_automatic_pool_serves_a_steady_50_per_second() {
    steady_demand_is_served_from_the_pool(50.0, 60).await;
}

#[tokio::test(start_paused = true)]
async fn an_automatic_pool_catches_up_with_a_jump_in_demand_within_two_seconds() {
    let upstream = Upstream::new();
    let pool = start(&auto(), &upstream);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let served = demand(&pool, &upstream, 50.0, 10, &mut HashSet::new()).await;
    let late: Vec<_> = served
        .misses
        .iter()
        .filter(|at| **at > Duration::from_secs(2))
        .collect();
    assert!(late.is_empty(), "misses after two seconds: {late:?}");
    assert!(served.hit_ratio() > 0.9, "{served:?}");
}

#[tokio::test(start_paused = true)]
async fn when_demand_stops_an_automatic_pool_shrinks_to_nothing() {
    let upstream = Upstream::new();
    let pool = start(&auto(), &upstream);
    let mut seen = HashSet::new();
    demand(&pool, &upstream, 50.0, 20, &mut seen).await;
    // The mints in flight when demand stopped land; then nothing more is minted.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (held, minted) = (pool.len() as u64, upstream.minted());
    assert_eq!(pool.stats().target.load(Ordering::Relaxed), 0);
    tokio::time::sleep(Duration::from_secs(180)).await;
    assert_eq!(upstream.minted(), minted, "minted with no demand");
    // What was held ages out, unused.
    assert!(pool.is_empty());
    assert_eq!(pool.stats().discards.load(Ordering::Relaxed), held);
    assert!(
        pool.take().is_none(),
        "nothing stale is handed out after the lull"
    );
}

#[tokio::test(start_paused = true)]
async fn an_automatic_pool_never_holds_more_than_max_size() {
    let upstream = Upstream::new();
    let config = PoolConfig {
        max_size: 10,
        ..auto()
    };
    let pool = start(&config, &upstream);
    demand(&pool, &upstream, 500.0, 5, &mut HashSet::new()).await;
    let stats = pool.stats();
    assert_eq!(stats.target.load(Ordering::Relaxed), 10);
    // Ready plus minting never exceeds the maximum: what was minted is what was taken
    // plus at most the maximum.
    let minted = stats.refilled.load(Ordering::Relaxed);
    assert!(
        minted <= stats.hits.load(Ordering::Relaxed) + 10,
        "{minted} minted"
    );
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
    let pool = CredentialPool::start(&fixed(1), mint, never_held(), Clock::system());
    settle().await;
    assert!(pool.take().is_some());
}

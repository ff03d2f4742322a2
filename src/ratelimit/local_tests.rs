//! Unit tests of `local`.

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

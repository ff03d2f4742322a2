//! Time, as every component reads it: one [`Clock`] for the rate limiters, the circuit
//! breaker, JWT expiry and the JWKS cache, the quotas' UTC day, the prefetch pool and
//! the fake Orga Cloud's token expiry.
//!
//! Production reads the system clocks. Tests either hold a [`Clock::manual`] and
//! advance it, or run on Tokio's paused clock: the monotonic reading is Tokio's
//! `Instant`, which is the system's outside tests and follows `tokio::time::pause`
//! inside them, so timers and readings move together.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A cheap handle on the time source. The default is the system clock.
#[derive(Debug, Clone)]
pub struct Clock {
    /// The reading governor's nanosecond instants count from.
    origin: Instant,
    /// `Some` for a clock that moves only when advanced.
    manual: Option<Arc<Mutex<Manual>>>,
}

/// A manual clock's two readings, which advance together.
#[derive(Debug)]
struct Manual {
    monotonic: Instant,
    wall: SystemTime,
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The system clock (Tokio's monotonic clock, the system wall clock).
    pub fn system() -> Self {
        Self {
            origin: tokio::time::Instant::now().into_std(),
            manual: None,
        }
    }

    /// A clock stopped at the wall time `wall`, moved only by [`Clock::advance`].
    pub fn manual(wall: SystemTime) -> Self {
        let monotonic = Instant::now();
        Self {
            origin: monotonic,
            manual: Some(Arc::new(Mutex::new(Manual { monotonic, wall }))),
        }
    }

    /// The monotonic reading: for intervals, budgets and ages.
    pub fn now(&self) -> Instant {
        match &self.manual {
            Some(manual) => lock(manual).monotonic,
            None => tokio::time::Instant::now().into_std(),
        }
    }

    /// The wall-clock reading: for token expiry and the UTC day.
    pub fn wall(&self) -> SystemTime {
        match &self.manual {
            Some(manual) => lock(manual).wall,
            None => SystemTime::now(),
        }
    }

    /// Moves a manual clock forward; the system clock moves by itself and ignores this.
    pub fn advance(&self, by: Duration) {
        if let Some(manual) = &self.manual {
            let mut manual = lock(manual);
            manual.monotonic += by;
            manual.wall += by;
        }
    }

    /// Time since this clock was made, for counters kept as plain integers.
    pub fn elapsed(&self) -> Duration {
        self.now().saturating_duration_since(self.origin)
    }
}

fn lock(manual: &Mutex<Manual>) -> std::sync::MutexGuard<'_, Manual> {
    manual
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// governor reads the same clock, as nanoseconds since the clock was made.
impl governor::clock::Clock for Clock {
    type Instant = governor::nanos::Nanos;

    fn now(&self) -> Self::Instant {
        governor::nanos::Nanos::from(u64::try_from(self.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_both_readings_only_when_advanced() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400);
        let clock = Clock::manual(start);
        let before = clock.now();
        assert_eq!(clock.wall(), start);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now() - before, Duration::from_secs(90));
        assert_eq!(clock.wall(), start + Duration::from_secs(90));
        assert_eq!(clock.elapsed(), Duration::from_secs(90));
    }

    #[tokio::test(start_paused = true)]
    async fn the_system_clock_follows_tokios_paused_time() {
        let clock = Clock::system();
        let before = clock.now();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(clock.now() - before >= Duration::from_secs(5));
    }
}

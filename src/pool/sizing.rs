//! How many credentials an automatic pool (`pool.size = "auto"`) keeps ready or
//! being minted: what callers take while one credential is minted, plus a margin for
//! the randomness of arrivals.
//!
//! Demand is a decaying count of takes: each take adds `1 / FAST` to a rate that decays
//! with time constant `FAST`, so a jump in demand shows within about a refill. The
//! pool sizes itself on the peak of that rate, which lets go only over `HOLD`, so a
//! lull between callers does not shrink it and the next burst find it empty. Once
//! recent demand would not take even one credential within `max_age`, the target is
//! none: what is ready would only age out. The refill time is a moving average of how
//! long the pool's own mints took.

use std::time::{Duration, Instant};

/// Time constant of the demand estimate, in seconds: short, so a ramp is seen at once.
const FAST: f64 = 0.5;
/// Time constant with which the sizing forgets a past peak of demand, in seconds.
const HOLD: f64 = 10.0;
/// The margin, in standard deviations of the arrivals during one refill (random
/// arrivals: the deviation is the square root of the mean), so bursts seldom empty it.
const MARGIN_SDS: f64 = 3.0;
/// The refill time assumed before the pool's first mint has landed: on the long side,
/// so the first burst over-fills (what demand then uses) rather than misses.
const FIRST_REFILL_GUESS: Duration = Duration::from_secs(1);
/// Weight of the newest mint in the refill-time average.
const REFILL_WEIGHT: f64 = 0.2;

/// The demand estimate and the refill time.
#[derive(Debug, Default)]
pub(super) struct Sizing {
    /// Takes per second, decaying with `FAST`.
    rate: f64,
    /// The peak of `rate`, decaying with `HOLD`.
    peak: f64,
    /// When both were last brought up to date.
    at: Option<Instant>,
    /// Moving average of the pool's own mints, once one has landed.
    refill_time: Option<Duration>,
}

impl Sizing {
    /// A caller asked for a credential at `now` (hit or miss alike).
    pub(super) fn took(&mut self, now: Instant) {
        self.decay(now);
        self.rate += 1.0 / FAST;
        self.peak = self.peak.max(self.rate);
    }

    /// One of the pool's mints landed after `took`.
    pub(super) fn refilled_in(&mut self, took: Duration) {
        self.refill_time = Some(match self.refill_time {
            None => took,
            Some(average) => average.mul_f64(1.0 - REFILL_WEIGHT) + took.mul_f64(REFILL_WEIGHT),
        });
    }

    /// Takes per second the pool is sized for, at `now`.
    pub(super) fn rate(&mut self, now: Instant) -> f64 {
        self.decay(now);
        self.peak
    }

    /// Credentials to keep ready or being minted at `now`: none while recent demand
    /// would not take one before it reaches `max_age`, never more than `max`.
    pub(super) fn target(&mut self, now: Instant, max_age: Duration, max: usize) -> usize {
        let rate = self.rate(now);
        if self.rate * max_age.as_secs_f64() < 1.0 {
            return 0;
        }
        let refill = self.refill_time.unwrap_or(FIRST_REFILL_GUESS).as_secs_f64();
        let during_refill = rate * refill;
        let wanted = (during_refill + MARGIN_SDS * during_refill.sqrt()).ceil();
        // `wanted` is finite and non-negative; the cast saturates anyway.
        (wanted as usize).min(max)
    }

    fn decay(&mut self, now: Instant) {
        if let Some(at) = self.at {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            self.rate *= (-elapsed / FAST).exp();
            self.peak *= (-elapsed / HOLD).exp();
        }
        self.at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_AGE: Duration = Duration::from_secs(30);

    /// `per_second` evenly spaced takes for `seconds`, from `start`; returns the end.
    fn steady(sizing: &mut Sizing, start: Instant, per_second: u32, seconds: u32) -> Instant {
        let gap = Duration::from_secs(1) / per_second;
        let mut now = start;
        for _ in 0..per_second * seconds {
            now += gap;
            sizing.took(now);
        }
        now
    }

    #[test]
    fn without_demand_it_keeps_nothing() {
        let mut sizing = Sizing::default();
        assert_eq!(sizing.target(Instant::now(), MAX_AGE, 64), 0);
    }

    #[test]
    fn steady_demand_sizes_it_to_a_refill_of_takes_plus_a_margin() {
        let mut sizing = Sizing::default();
        sizing.refilled_in(Duration::from_millis(300));
        let now = steady(&mut sizing, Instant::now(), 50, 20);
        let rate = sizing.rate(now);
        assert!((45.0..60.0).contains(&rate), "rate {rate}");
        // 15 taken during a refill, and a margin of three deviations of that.
        let target = sizing.target(now, MAX_AGE, 64);
        assert!((25..=35).contains(&target), "target {target}");
    }

    #[test]
    fn a_jump_in_demand_shows_within_a_second() {
        let mut sizing = Sizing::default();
        sizing.refilled_in(Duration::from_millis(300));
        let now = steady(&mut sizing, Instant::now(), 50, 1);
        let rate = sizing.rate(now);
        assert!(rate > 40.0, "rate after one second at 50/s: {rate}");
    }

    #[test]
    fn a_lull_keeps_the_size_and_an_end_of_demand_drops_it() {
        let mut sizing = Sizing::default();
        sizing.refilled_in(Duration::from_millis(300));
        let end = steady(&mut sizing, Instant::now(), 50, 10);
        let busy = sizing.target(end, MAX_AGE, 64);
        let lull = sizing.target(end + Duration::from_secs(1), MAX_AGE, 64);
        assert!(lull * 10 >= busy * 8, "a one-second lull: {busy} -> {lull}");
        let idle = sizing.target(end + Duration::from_secs(5), MAX_AGE, 64);
        assert_eq!(
            idle, 0,
            "five idle seconds: nothing would be taken before max_age"
        );
    }

    #[test]
    fn it_never_asks_for_more_than_the_maximum() {
        let mut sizing = Sizing::default();
        let now = steady(&mut sizing, Instant::now(), 1000, 5);
        assert_eq!(sizing.target(now, MAX_AGE, 64), 64);
    }

    #[test]
    fn the_refill_time_follows_the_mints() {
        let mut sizing = Sizing::default();
        sizing.refilled_in(Duration::from_millis(300));
        assert_eq!(sizing.refill_time, Some(Duration::from_millis(300)));
        for _ in 0..30 {
            sizing.refilled_in(Duration::from_millis(100));
        }
        let average = sizing.refill_time.unwrap();
        assert!(average < Duration::from_millis(101), "{average:?}");
    }
}

//! The upstream circuit breaker. After `orga.circuit_breaker_threshold` consecutive
//! failed credential requests it opens: requests are answered 503 `unavailable` with
//! `Retry-After` without calling Orga, so a struggling Orga Cloud is not hammered and
//! clients are not kept waiting for timeouts. After `orga.circuit_breaker_cooldown` it
//! lets exactly one probe through (half-open): its success closes the circuit, its
//! failure opens it for another cool-down.
//!
//! Time comes from the crate's [`Clock`], so tests advance it instead of sleeping.

use crate::clock::Clock;
use crate::metrics::{CIRCUIT_OPENED, CIRCUIT_STATE};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What a request refused while a probe is in flight is told to wait.
const PROBE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The breaker's state, as `/readyz` and the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// The cool-down is over: one probe call may go through.
    HalfOpen,
    /// Calls are refused without reaching Orga.
    Open,
}

impl CircuitState {
    /// The label used in `/readyz` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }

    fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// Shared by every request of one upstream client.
pub struct CircuitBreaker {
    /// Consecutive failures that open the circuit; 0 never opens it.
    threshold: u32,
    /// How long the circuit stays open before a probe.
    cooldown: Duration,
    clock: Clock,
    state: Mutex<State>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("threshold", &self.threshold)
            .field("cooldown", &self.cooldown)
            .field("state", &self.state())
            .finish()
    }
}

/// Leave to call upstream. Report the outcome with [`Permit::record`]; a permit dropped
/// without an outcome (the request was cancelled) frees the probe slot and changes
/// nothing else.
#[must_use = "report the outcome of the call with Permit::record"]
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    recorded: bool,
}

impl Permit {
    /// Reports whether the upstream call failed in a way that says Orga is unhealthy.
    pub fn record(mut self, failed: bool) {
        self.recorded = true;
        if failed {
            self.breaker.on_failure();
        } else {
            self.breaker.on_success();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            let mut state = self.breaker.lock();
            if let State::HalfOpen { probing } = &mut *state {
                *probing = false;
            }
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cooldown: Duration, clock: Clock) -> Arc<Self> {
        Arc::new(Self {
            threshold,
            cooldown,
            clock,
            state: Mutex::new(State::Closed { failures: 0 }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state. An open circuit whose cool-down is over reads as half-open.
    pub fn state(&self) -> CircuitState {
        match &*self.lock() {
            State::Closed { .. } => CircuitState::Closed,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
            State::Open { until } if self.clock.now() >= *until => CircuitState::HalfOpen,
            State::Open { .. } => CircuitState::Open,
        }
    }

    /// Unless the circuit is closed, how long to wait before asking again: the rest of
    /// the cool-down, or a moment while it is half-open. For calls that can never close
    /// the circuit (a call start proves nothing about minting), which therefore must
    /// not take a half-open circuit's probe either. Takes nothing.
    pub fn not_closed_for(&self) -> Option<Duration> {
        if self.threshold == 0 {
            return None;
        }
        match &*self.lock() {
            State::Closed { .. } => None,
            State::Open { until } => Some(
                until
                    .checked_duration_since(self.clock.now())
                    .filter(|left| !left.is_zero())
                    .unwrap_or(PROBE_RETRY_AFTER),
            ),
            State::HalfOpen { .. } => Some(PROBE_RETRY_AFTER),
        }
    }

    /// Leave to call upstream while the circuit is closed, for calls that must not take
    /// the probe (see [`Self::not_closed_for`]), or how long to wait.
    pub fn admit_while_closed(self: &Arc<Self>) -> Result<Permit, Duration> {
        match self.not_closed_for() {
            None => Ok(Permit {
                breaker: self.clone(),
                probe: false,
                recorded: false,
            }),
            Some(wait) => Err(wait),
        }
    }

    /// Leave to call upstream, or how long to wait before trying again.
    pub fn admit(self: &Arc<Self>) -> Result<Permit, Duration> {
        let permit = |probe| Permit {
            breaker: self.clone(),
            probe,
            recorded: false,
        };
        if self.threshold == 0 {
            return Ok(permit(false));
        }
        let mut state = self.lock();
        match &mut *state {
            State::Closed { .. } => Ok(permit(false)),
            State::Open { until } => {
                let now = self.clock.now();
                if now < *until {
                    return Err(*until - now);
                }
                *state = State::HalfOpen { probing: true };
                set_gauge(CircuitState::HalfOpen);
                tracing::info!("upstream circuit half-open: letting one probe request through");
                Ok(permit(true))
            }
            State::HalfOpen { probing: true } => Err(PROBE_RETRY_AFTER),
            State::HalfOpen { probing } => {
                *probing = true;
                Ok(permit(true))
            }
        }
    }

    fn on_success(&self) {
        let mut state = self.lock();
        if !matches!(*state, State::Closed { .. }) {
            tracing::info!("upstream circuit closed: Orga Cloud answered again");
            set_gauge(CircuitState::Closed);
        }
        *state = State::Closed { failures: 0 };
    }

    fn on_failure(&self) {
        if self.threshold == 0 {
            return;
        }
        let mut state = self.lock();
        let open = match &mut *state {
            State::Closed { failures } => {
                *failures += 1;
                *failures >= self.threshold
            }
            State::HalfOpen { .. } => true,
            // A request admitted before the circuit opened finished late: the
            // cool-down already runs.
            State::Open { .. } => false,
        };
        if open {
            *state = State::Open {
                until: self.clock.now() + self.cooldown,
            };
            set_gauge(CircuitState::Open);
            metrics::counter!(CIRCUIT_OPENED).increment(1);
            tracing::warn!(
                cooldown = ?self.cooldown,
                threshold = self.threshold,
                "upstream circuit open: Orga Cloud keeps failing; answering 503 without calling it"
            );
        }
    }
}

fn set_gauge(state: CircuitState) {
    metrics::gauge!(CIRCUIT_STATE).set(state.gauge());
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(10);

    fn breaker(threshold: u32) -> (Arc<CircuitBreaker>, Clock) {
        let clock = Clock::manual(std::time::SystemTime::now());
        (
            CircuitBreaker::new(threshold, COOLDOWN, clock.clone()),
            clock,
        )
    }

    fn fail(b: &Arc<CircuitBreaker>, times: u32) {
        for _ in 0..times {
            b.admit().expect("admitted").record(true);
        }
    }

    #[test]
    fn the_circuit_opens_after_the_threshold_of_consecutive_failures() {
        let (b, _) = breaker(3);
        fail(&b, 2);
        assert_eq!(b.state(), CircuitState::Closed);
        fail(&b, 1);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.admit().err(), Some(COOLDOWN));
    }

    #[test]
    fn a_success_resets_the_count_of_failures() {
        let (b, _) = breaker(3);
        fail(&b, 2);
        b.admit().unwrap().record(false);
        fail(&b, 2);
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn retry_after_counts_down_with_the_clock() {
        let (b, clock) = breaker(1);
        fail(&b, 1);
        clock.advance(Duration::from_secs(4));
        assert_eq!(b.admit().err(), Some(Duration::from_secs(6)));
    }

    #[test]
    fn calls_that_cannot_close_the_circuit_pass_only_while_closed_and_never_take_the_probe() {
        let (b, clock) = breaker(1);
        assert!(b.admit_while_closed().is_ok());
        fail(&b, 1);
        clock.advance(Duration::from_secs(4));
        assert_eq!(b.not_closed_for(), Some(Duration::from_secs(6)));
        clock.advance(Duration::from_secs(6));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(b.admit_while_closed().err(), Some(PROBE_RETRY_AFTER));
        let probe = b
            .admit()
            .expect("the probe is still there for a credentials request");
        probe.record(false);
        assert_eq!(b.not_closed_for(), None);
        let (off, _) = breaker(0);
        fail(&off, 10);
        assert!(
            off.admit_while_closed().is_ok(),
            "threshold 0: never refused"
        );
    }

    #[test]
    fn after_the_cooldown_exactly_one_probe_goes_through() {
        let (b, clock) = breaker(1);
        fail(&b, 1);
        clock.advance(COOLDOWN);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        let probe = b.admit().expect("the probe is admitted");
        assert_eq!(b.admit().err(), Some(PROBE_RETRY_AFTER));
        probe.record(false);
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(b.admit().is_ok());
    }

    #[test]
    fn a_failed_probe_opens_the_circuit_for_another_cooldown() {
        let (b, clock) = breaker(1);
        fail(&b, 1);
        clock.advance(COOLDOWN);
        b.admit().expect("probe").record(true);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.admit().err(), Some(COOLDOWN));
    }

    #[test]
    fn a_cancelled_probe_frees_the_probe_slot() {
        let (b, clock) = breaker(1);
        fail(&b, 1);
        clock.advance(COOLDOWN);
        drop(b.admit().expect("probe"));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(b.admit().is_ok(), "another probe may go");
    }

    #[test]
    fn a_zero_threshold_never_opens() {
        let (b, _) = breaker(0);
        fail(&b, 100);
        assert_eq!(b.state(), CircuitState::Closed);
    }
}

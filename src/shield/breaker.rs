//! A circuit breaker for the upstream: after `failures` consecutive failures it opens for
//! `open_for`, during which no upstream call is made; then one probe decides whether it closes.
//!
//! Failures are what says the upstream itself is unwell (connection refused, timeouts, broken
//! bodies, 5xx). 4xx answers, 429 included, are the upstream working as designed; 429s are handled
//! per credential by the cool-down instead.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How a call was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The breaker is closed.
    Normal,
    /// The breaker was open and this call is the one probe.
    Probe,
}

/// The breaker's state, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused.
    Open,
    /// One probe is in flight.
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { since: Instant },
}

/// The upstream's circuit breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: Mutex<State>,
    failures_to_open: u32,
    open_for: Duration,
}

impl Breaker {
    /// Opens after `failures_to_open` consecutive failures, for `open_for`.
    pub(crate) fn new(failures_to_open: u32, open_for: Duration) -> Self {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            failures_to_open: failures_to_open.max(1),
            open_for,
        }
    }

    /// Lets a call through, or says how long until the breaker may let one through.
    pub(crate) fn admit(&self, now: Instant) -> Result<Admission, Duration> {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Ok(Admission::Normal),
            State::Open { until } if now < until => Err(until - now),
            State::Open { .. } => {
                *state = State::HalfOpen { since: now };
                Ok(Admission::Probe)
            }
            // A probe that never reported back (its task died) must not wedge the breaker half
            // open forever: after another open period, allow a new probe.
            State::HalfOpen { since } if now.saturating_duration_since(since) >= self.open_for => {
                *state = State::HalfOpen { since: now };
                Ok(Admission::Probe)
            }
            State::HalfOpen { since } => Err(self.open_for.saturating_sub(now - since)),
        }
    }

    /// Records the outcome of a call let through by [`Breaker::admit`].
    pub(crate) fn record(&self, admission: Admission, success: bool, now: Instant) {
        let mut state = self.lock();
        *state = match (*state, admission, success) {
            (State::HalfOpen { .. }, Admission::Probe, true) => State::Closed { failures: 0 },
            (State::HalfOpen { .. }, Admission::Probe, false) => State::Open {
                until: now + self.open_for,
            },
            (State::Closed { .. }, _, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, _, false) if failures + 1 >= self.failures_to_open => {
                State::Open {
                    until: now + self.open_for,
                }
            }
            (State::Closed { failures }, _, false) => State::Closed {
                failures: failures + 1,
            },
            // Late results of calls admitted before the breaker opened change nothing: the
            // probe decides.
            (other, _, _) => other,
        };
    }

    /// Hands a probe back without a verdict (its call never happened): open again, with the
    /// next probe allowed at once.
    pub(crate) fn release_probe(&self) {
        let mut state = self.lock();
        if let State::HalfOpen { since } = *state {
            *state = State::Open { until: since };
        }
    }

    /// The current state.
    pub(crate) fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update writes a whole valid state, so a poisoned lock still holds a valid one.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Duration = Duration::from_secs(10);

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = Breaker::new(3, OPEN);
        let t = Instant::now();
        for _ in 0..2 {
            assert_eq!(b.admit(t), Ok(Admission::Normal));
            b.record(Admission::Normal, false, t);
        }
        b.record(Admission::Normal, true, t);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a success resets the count"
        );
        for _ in 0..3 {
            b.record(Admission::Normal, false, t);
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.admit(t + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
    }

    #[test]
    fn one_probe_after_the_open_period_decides() {
        let b = Breaker::new(1, OPEN);
        let t = Instant::now();
        b.record(Admission::Normal, false, t);
        let later = t + OPEN;
        assert_eq!(b.admit(later), Ok(Admission::Probe));
        assert!(b.admit(later).is_err(), "only one probe at a time");
        b.record(Admission::Probe, false, later);
        assert_eq!(b.state(), BreakerState::Open, "a failed probe reopens");
        let again = later + OPEN;
        assert_eq!(b.admit(again), Ok(Admission::Probe));
        b.record(Admission::Probe, true, again);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(again), Ok(Admission::Normal));
    }

    #[test]
    fn a_vanished_probe_does_not_wedge_the_breaker() {
        let b = Breaker::new(1, OPEN);
        let t = Instant::now();
        b.record(Admission::Normal, false, t);
        assert_eq!(b.admit(t + OPEN), Ok(Admission::Probe));
        // The probe never reports; after another period a new probe is allowed.
        assert_eq!(b.admit(t + OPEN + OPEN), Ok(Admission::Probe));
    }

    #[test]
    fn late_results_do_not_close_an_open_breaker() {
        let b = Breaker::new(1, OPEN);
        let t = Instant::now();
        b.record(Admission::Normal, false, t);
        b.record(Admission::Normal, true, t);
        assert_eq!(b.state(), BreakerState::Open);
    }
}

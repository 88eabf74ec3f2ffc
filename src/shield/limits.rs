//! Per-credential rate limits with memory bounded no matter how many credentials are seen.
//!
//! The GCRA arithmetic is governor's; only the state store is ours: governor's keyed store is a
//! map that grows with every distinct key until someone prunes it, so a caller cycling random
//! tokens would grow it without bound. Here each key's state (one `u64`) lives in a moka cache
//! with a capacity and an idle expiry. Evicting a key only resets it to a fresh budget, which is
//! what an unseen credential gets anyway.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use moka::sync::Cache;

use crate::credential::Fingerprint;

/// The bounded per-key state store.
struct BoundedStore {
    states: Cache<Fingerprint, Arc<InMemoryState>>,
}

impl StateStore for BoundedStore {
    type Key = Fingerprint;

    fn measure_and_replace<T, F, E>(&self, key: &Fingerprint, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let state = self.states.get_with(*key, Default::default);
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

/// What is left of a budget after a unit was taken: what the `RateLimit` header reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    /// Units that may still be taken at once.
    pub units: u32,
    /// How long until the whole burst is available again.
    pub full_in: Duration,
}

impl Remaining {
    /// `units` left of a `burst` refilled at `per_sec` a second.
    pub(crate) fn of(units: u32, burst: u32, per_sec: u32) -> Self {
        let missing = burst.saturating_sub(units);
        Remaining {
            units,
            full_in: Duration::from_secs_f64(f64::from(missing) / f64::from(per_sec.max(1))),
        }
    }
}

/// A rate limit per credential.
pub(crate) struct KeyedLimiter {
    per_sec: u32,
    burst: u32,
    limiter: RateLimiter<Fingerprint, BoundedStore, DefaultClock, StateInformationMiddleware>,
    clock: DefaultClock,
    #[cfg(test)]
    states: Cache<Fingerprint, Arc<InMemoryState>>,
}

impl KeyedLimiter {
    /// `per_sec` requests a second with bursts of `burst`, tracking at most `max_keys`
    /// credentials. `None` when `per_sec` is 0 (the limit is off).
    pub(crate) fn new(per_sec: u32, burst: u32, max_keys: u64) -> Option<Self> {
        let rate = NonZeroU32::new(per_sec)?;
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(rate);
        let quota = Quota::per_second(rate).allow_burst(burst);
        // Once a key has been idle for the time it takes to refill its burst, its state equals a
        // fresh one, so dropping it loses nothing.
        let refill = Duration::from_secs_f64(f64::from(burst.get()) / f64::from(rate.get()));
        let states = Cache::builder()
            .max_capacity(max_keys)
            .time_to_idle(refill.max(Duration::from_secs(1)))
            .build();
        let clock = DefaultClock::default();
        let limiter = RateLimiter::new(
            quota,
            BoundedStore {
                states: states.clone(),
            },
            clock.clone(),
        );
        Some(KeyedLimiter {
            per_sec: rate.get(),
            burst: burst.get(),
            limiter,
            clock,
            #[cfg(test)]
            states,
        })
    }

    /// The rate, units a second.
    pub(crate) fn per_sec(&self) -> u32 {
        self.per_sec
    }

    /// The burst.
    pub(crate) fn burst(&self) -> u32 {
        self.burst
    }

    /// Takes one unit of `key`'s budget and says what is left, or how long until one is
    /// available.
    pub(crate) fn check(&self, key: &Fingerprint) -> Result<Remaining, Duration> {
        self.limiter
            .check_key(key)
            .map(|state| Remaining::of(state.remaining_burst_capacity(), self.burst, self.per_sec))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Number of credentials currently tracked (after pending maintenance).
    #[cfg(test)]
    pub(crate) fn tracked_keys(&self) -> u64 {
        self.states.run_pending_tasks();
        self.states.entry_count()
    }
}

/// One rate limit for everything (all upstream requests together).
pub(crate) struct DirectLimiter {
    per_sec: u32,
    burst: u32,
    limiter: RateLimiter<NotKeyed, InMemoryState, DefaultClock>,
    clock: DefaultClock,
}

impl DirectLimiter {
    /// `per_sec` a second with bursts of `burst`; `None` when `per_sec` is 0 (off).
    pub(crate) fn new(per_sec: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_sec)?;
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(rate);
        let clock = DefaultClock::default();
        Some(DirectLimiter {
            per_sec: rate.get(),
            burst: burst.get(),
            limiter: RateLimiter::direct_with_clock(
                Quota::per_second(rate).allow_burst(burst),
                clock.clone(),
            ),
            clock,
        })
    }

    /// The rate, units a second.
    pub(crate) fn per_sec(&self) -> u32 {
        self.per_sec
    }

    /// The burst.
    pub(crate) fn burst(&self) -> u32 {
        self.burst
    }

    /// Takes one unit, or says how long until one is available.
    pub(crate) fn check(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Fingerprinter;

    fn key(f: &Fingerprinter, i: u64) -> Fingerprint {
        f.fingerprint(&i.to_le_bytes())
    }

    #[test]
    fn zero_rate_means_off() {
        assert!(KeyedLimiter::new(0, 10, 100).is_none());
        assert!(DirectLimiter::new(0, 10).is_none());
    }

    #[test]
    fn the_direct_limit_is_shared_by_everyone() {
        let limiter = DirectLimiter::new(1, 3).unwrap();
        for _ in 0..3 {
            assert!(limiter.check().is_ok());
        }
        assert!(limiter.check().is_err());
    }

    #[test]
    fn a_burst_then_refusal_with_a_wait_per_key() {
        let f = Fingerprinter::new(None).unwrap();
        let limiter = KeyedLimiter::new(1, 3, 1000).unwrap();
        let a = key(&f, 1);
        for _ in 0..3 {
            assert!(limiter.check(&a).is_ok());
        }
        let wait = limiter.check(&a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(
            limiter.check(&key(&f, 2)).is_ok(),
            "another credential has its own budget"
        );
    }

    #[test]
    fn twenty_times_the_cap_in_random_credentials_keeps_memory_bounded() {
        let f = Fingerprinter::new(None).unwrap();
        let cap = 10_000;
        let limiter = KeyedLimiter::new(20, 40, cap).unwrap();
        for i in 0..20 * cap {
            let _ = limiter.check(&key(&f, i));
        }
        let tracked = limiter.tracked_keys();
        assert!(tracked <= cap, "{tracked} keys tracked, cap {cap}");
        assert!(tracked > 0);
    }
}

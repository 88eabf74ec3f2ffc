//! The clock the request path reads: real monotonic time plus an offset that only tests move.
//!
//! Freshness, stale windows, cool-downs, the breaker's open period and the memory of refused keys
//! are all measured on it, so a test can step past a one-second TTL with [`Clock::advance`]
//! instead of sleeping through it. In production nothing advances it and `now()` is
//! `Instant::now()`. Timers that must really wait (deadlines, queue waits) stay on tokio's clock,
//! and the per-credential rate limits keep governor's own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A cheap-to-clone handle on the shared clock.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    skew_nanos: Arc<AtomicU64>,
}

impl Clock {
    /// Now, on this clock.
    pub fn now(&self) -> Instant {
        let skew = self.skew_nanos.load(Ordering::Relaxed);
        let now = Instant::now();
        if skew == 0 {
            now
        } else {
            now + Duration::from_nanos(skew)
        }
    }

    /// Moves the clock forward by `by` (tests: step past a TTL or a cool-down without sleeping).
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.skew_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_now_and_clones_share_it() {
        let clock = Clock::default();
        let other = clock.clone();
        let before = clock.now();
        other.advance(Duration::from_secs(30));
        assert!(clock.now() >= before + Duration::from_secs(30));
    }
}

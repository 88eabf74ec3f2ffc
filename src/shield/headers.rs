//! The IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy`
//! describes the budgets a credential has, `RateLimit` what is left of those a request used, so
//! clients can pace themselves instead of learning the limits from 429s.
//!
//! The budgets are GCRA token buckets (a burst refilled at a rate); a policy states the burst as
//! its quota (`q`) and the time one burst takes to refill as its window (`w`). Policies are named
//! `"requests"` (`limits.requests_per_sec_per_key`, every request) and `"misses"`
//! (`limits.misses_per_sec_per_key`, requests that go upstream).

use std::fmt::Write as _;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::{Refusal, Remaining};
use crate::config::LimitsConfig;

/// The `RateLimit-Policy` response header.
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` response header.
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// What a request learnt of the budgets it used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BudgetReport {
    /// The all-requests budget, when it is on.
    pub(crate) requests: Option<Remaining>,
    /// The miss budget, when this request was charged to it.
    pub(crate) misses: Option<Remaining>,
}

impl BudgetReport {
    /// Notes a refusal: one by a budget empties it, with the wait until it has a unit again;
    /// any other leaves the report as it is.
    pub(crate) fn refused(&mut self, refusal: &Refusal) {
        let empty = |wait: Duration| {
            Some(Remaining {
                units: 0,
                full_in: wait,
            })
        };
        match *refusal {
            Refusal::RequestLimit(wait) => self.requests = empty(wait),
            Refusal::MissLimit(wait) => self.misses = empty(wait),
            _ => {}
        }
    }

    /// The `RateLimit` value: `"requests";r=4;t=1, "misses";r=39;t=1` (`r`: units left, `t`:
    /// seconds until a refused budget has a unit again, or until a used one is full again).
    /// `None` when the request used no budget.
    pub(crate) fn header(&self) -> Option<HeaderValue> {
        let mut value = String::new();
        for (name, remaining) in [("requests", self.requests), ("misses", self.misses)] {
            if let Some(r) = remaining {
                if !value.is_empty() {
                    value.push_str(", ");
                }
                let _ = write!(value, "\"{name}\";r={};t={}", r.units, ceil_secs(r.full_in));
            }
        }
        if value.is_empty() {
            return None;
        }
        HeaderValue::try_from(value).ok()
    }
}

/// The `RateLimit-Policy` value for `limits`: `"requests";q=10;w=1, "misses";q=40;w=2`. `None`
/// when neither per-credential budget is on.
pub(crate) fn policy(limits: &LimitsConfig) -> Option<HeaderValue> {
    let mut value = String::new();
    for (name, rate, burst) in [
        (
            "requests",
            limits.requests_per_sec_per_key,
            limits.request_burst,
        ),
        ("misses", limits.misses_per_sec_per_key, limits.miss_burst),
    ] {
        if rate == 0 {
            continue;
        }
        let burst = burst.max(1);
        if !value.is_empty() {
            value.push_str(", ");
        }
        let window = u64::from(burst).div_ceil(u64::from(rate)).max(1);
        let _ = write!(value, "\"{name}\";q={burst};w={window}");
    }
    if value.is_empty() {
        return None;
    }
    HeaderValue::try_from(value).ok()
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(requests: (u32, u32), misses: (u32, u32)) -> LimitsConfig {
        LimitsConfig {
            requests_per_sec_per_key: requests.0,
            request_burst: requests.1,
            misses_per_sec_per_key: misses.0,
            miss_burst: misses.1,
            upstream_requests_per_sec: 0,
            upstream_burst: 0,
        }
    }

    #[test]
    fn the_policy_names_each_budget_that_is_on() {
        let both = policy(&limits((10, 10), (20, 40))).unwrap();
        assert_eq!(both, "\"requests\";q=10;w=1, \"misses\";q=40;w=2");
        let misses = policy(&limits((0, 0), (3, 10))).unwrap();
        assert_eq!(
            misses, "\"misses\";q=10;w=4",
            "10 units at 3/s refill in 4 s"
        );
        assert_eq!(policy(&limits((0, 0), (0, 40))), None);
    }

    #[test]
    fn the_report_says_what_is_left_and_when() {
        let mut report = BudgetReport {
            requests: Some(Remaining {
                units: 4,
                full_in: Duration::from_millis(600),
            }),
            misses: None,
        };
        assert_eq!(report.header().unwrap(), "\"requests\";r=4;t=1");
        report.refused(&Refusal::MissLimit(Duration::from_millis(2_100)));
        report.refused(&Refusal::QueueFull);
        assert_eq!(
            report.header().unwrap(),
            "\"requests\";r=4;t=1, \"misses\";r=0;t=3"
        );
        assert_eq!(BudgetReport::default().header(), None);
    }
}

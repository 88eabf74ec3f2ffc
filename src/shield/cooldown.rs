//! Per-credential cool-downs after an upstream 429.
//!
//! Vapi rate-limits per org (that is, per key). When it answers 429 for a key, phonegate stops
//! calling the upstream with that key until `Retry-After` has passed, instead of forwarding every
//! caller's retry and deepening the hole (the nginx behaviour this is built to beat). When the
//! cool-down ends, exactly one request is let through as a probe; a 429 on it starts a new
//! cool-down, anything else ends it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;
use moka::sync::Cache;

use crate::credential::Fingerprint;

/// The cool-down when a 429 carries no usable `Retry-After`.
pub(crate) const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What a credential may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// No cool-down: call the upstream.
    Open,
    /// The cool-down has passed; this caller is the one probe.
    Probe,
    /// Cooling down for this long yet.
    Cooling(Duration),
}

#[derive(Debug)]
struct Cooldown {
    until: Instant,
    probe_since: Option<Instant>,
}

/// Cool-downs by credential, bounded in number.
pub(crate) struct Cooldowns {
    map: Cache<Fingerprint, Arc<Mutex<Cooldown>>>,
    max: Duration,
}

impl Cooldowns {
    /// Cool-downs last at most `max` whatever `Retry-After` says; at most `max_keys` are tracked.
    pub(crate) fn new(max: Duration, max_keys: u64) -> Self {
        let map = Cache::builder()
            .max_capacity(max_keys)
            // An entry outliving its cool-down by this much has a probe that never reported.
            .time_to_live(max + Duration::from_secs(60))
            .build();
        Cooldowns { map, max }
    }

    /// Whether `key` may call the upstream now.
    pub(crate) fn check(&self, key: &Fingerprint, now: Instant) -> Gate {
        let Some(entry) = self.map.get(key) else {
            return Gate::Open;
        };
        let mut c = entry.lock().unwrap_or_else(PoisonError::into_inner);
        if now < c.until {
            return Gate::Cooling(c.until - now);
        }
        match c.probe_since {
            // One probe at a time; a probe that has been out longer than the cap has vanished.
            Some(since) if now.saturating_duration_since(since) < self.max => {
                Gate::Cooling(DEFAULT_RETRY_AFTER)
            }
            _ => {
                c.probe_since = Some(now);
                Gate::Probe
            }
        }
    }

    /// Starts (or extends) a cool-down of `retry_after`, capped.
    pub(crate) fn start(&self, key: Fingerprint, retry_after: Duration, now: Instant) {
        let until = now + retry_after.min(self.max);
        let entry = self.map.get_with(key, || {
            Arc::new(Mutex::new(Cooldown {
                until,
                probe_since: None,
            }))
        });
        let mut c = entry.lock().unwrap_or_else(PoisonError::into_inner);
        c.until = c.until.max(until);
        c.probe_since = None;
    }

    /// Hands the probe back without a verdict (the probe's call never happened).
    pub(crate) fn release_probe(&self, key: &Fingerprint) {
        if let Some(entry) = self.map.get(key) {
            entry
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .probe_since = None;
        }
    }

    /// Ends the cool-down of `key` (its probe got a non-429 answer).
    pub(crate) fn end(&self, key: &Fingerprint) {
        self.map.invalidate(key);
    }
}

/// The cool-down a 429 asks for: `Retry-After` in seconds or as an HTTP date, 1 s when absent or
/// unreadable.
pub(crate) fn retry_after(value: Option<&HeaderValue>, now: SystemTime) -> Duration {
    let Some(text) = value.and_then(|v| v.to_str().ok()).map(str::trim) else {
        return DEFAULT_RETRY_AFTER;
    };
    if let Ok(secs) = text.parse::<u64>() {
        return Duration::from_secs(secs);
    }
    match httpdate::parse_http_date(text) {
        Ok(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
        Err(_) => DEFAULT_RETRY_AFTER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Fingerprinter;

    fn keys() -> (Fingerprint, Fingerprint) {
        let f = Fingerprinter::new(None).unwrap();
        (f.fingerprint(b"a"), f.fingerprint(b"b"))
    }

    #[test]
    fn a_cooldown_blocks_one_key_then_allows_one_probe() {
        let (a, b) = keys();
        let c = Cooldowns::new(Duration::from_secs(60), 100);
        let t = Instant::now();
        assert_eq!(c.check(&a, t), Gate::Open);
        c.start(a, Duration::from_secs(2), t);
        assert_eq!(
            c.check(&a, t + Duration::from_millis(500)),
            Gate::Cooling(Duration::from_millis(1500))
        );
        assert_eq!(
            c.check(&b, t),
            Gate::Open,
            "other credentials are unaffected"
        );
        let after = t + Duration::from_secs(2);
        assert_eq!(c.check(&a, after), Gate::Probe);
        assert!(
            matches!(c.check(&a, after), Gate::Cooling(_)),
            "one probe at a time"
        );
        c.end(&a);
        assert_eq!(c.check(&a, after), Gate::Open);
    }

    #[test]
    fn a_429_on_the_probe_extends_the_cooldown() {
        let (a, _) = keys();
        let c = Cooldowns::new(Duration::from_secs(60), 100);
        let t = Instant::now();
        c.start(a, Duration::from_secs(1), t);
        let after = t + Duration::from_secs(1);
        assert_eq!(c.check(&a, after), Gate::Probe);
        c.start(a, Duration::from_secs(3), after);
        assert_eq!(
            c.check(&a, after + Duration::from_secs(1)),
            Gate::Cooling(Duration::from_secs(2))
        );
    }

    #[test]
    fn retry_after_is_capped() {
        let (a, _) = keys();
        let c = Cooldowns::new(Duration::from_secs(5), 100);
        let t = Instant::now();
        c.start(a, Duration::from_secs(3600), t);
        assert_eq!(c.check(&a, t), Gate::Cooling(Duration::from_secs(5)));
    }

    #[test]
    fn parses_retry_after_forms() {
        let now = SystemTime::now();
        assert_eq!(retry_after(None, now), DEFAULT_RETRY_AFTER);
        assert_eq!(
            retry_after(Some(&HeaderValue::from_static("7")), now),
            Duration::from_secs(7)
        );
        assert_eq!(
            retry_after(Some(&HeaderValue::from_static("soon")), now),
            DEFAULT_RETRY_AFTER
        );
        let at = now + Duration::from_secs(30);
        let date = HeaderValue::from_str(&httpdate::fmt_http_date(at)).unwrap();
        let d = retry_after(Some(&date), now);
        assert!(
            d >= Duration::from_secs(28) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        let past = HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
        assert_eq!(retry_after(Some(&past), now), Duration::ZERO);
    }
}

//! The response cache: typed keys, redacted entries, a byte bound and per-entry freshness.
//!
//! Entries hold the redacted body bytes and the ready-made header values, so a hit only clones
//! `Bytes` and a few `HeaderValue`s: nothing is parsed, redacted or serialised twice.

pub mod coalesce;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use moka::sync::Cache;
use uuid::Uuid;

use crate::credential::Fingerprint;

/// What a cached answer is filed under.
///
/// Getting this wrong leads to cache poisoning or to one caller reading another's data, so each
/// part is here on purpose:
/// - `id`: the phone number, parsed, so `ABC...` and `abc...` are one entry and nothing that is
///   not a UUID (a query string, a trailing slash) can ever be part of a key;
/// - `credential`: the keyed fingerprint of the caller's token. Answers depend on the credential
///   (its org, or a 401), so an answer fetched with one credential is never served to another.
///
/// The query string is deliberately absent: it is not forwarded, so it cannot change the answer,
/// and leaving it out stops `?x=random` from busting the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The phone number id.
    pub id: Uuid,
    /// The caller's credential fingerprint.
    pub credential: Fingerprint,
}

/// An answer ready to send: the redacted body and its precomputed headers.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The upstream status (200, 404, or a relayed error).
    pub status: StatusCode,
    /// The redacted JSON body.
    pub body: Bytes,
    /// Strong validator over `body`; set on 200s only.
    pub etag: Option<HeaderValue>,
    /// The upstream's `Retry-After`, relayed on 429 and 503.
    pub retry_after: Option<HeaderValue>,
    /// When the answer arrived from the upstream.
    pub stored_at: Instant,
    /// How long it may be served from the cache; zero means never cached.
    pub fresh_for: Duration,
}

impl Entry {
    /// Whether this answer may be stored.
    pub fn is_cacheable(&self) -> bool {
        !self.fresh_for.is_zero()
    }

    /// Whether it may still be served at `now`.
    pub fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored_at) < self.fresh_for
    }

    /// Bytes this entry is charged against `cache.max_bytes`: the body plus the fixed parts, so a
    /// flood of tiny entries (404s) is bounded too.
    fn weight(&self) -> u32 {
        // Per-entry overhead moka and the Arc add on top of the structs, measured roughly.
        const OVERHEAD: usize = 128;
        let headers = self.etag.as_ref().map_or(0, HeaderValue::len)
            + self.retry_after.as_ref().map_or(0, HeaderValue::len);
        let total = self.body.len()
            + headers
            + std::mem::size_of::<Entry>()
            + std::mem::size_of::<CacheKey>()
            + OVERHEAD;
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

/// Gives each entry its own lifetime: a 200 lives `ttl_secs`, a 404 `negative_ttl_secs`.
struct EntryExpiry;

impl moka::Expiry<CacheKey, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.fresh_for)
    }
}

/// The bounded, shared response cache. Cheap to clone.
#[derive(Clone)]
pub struct ResponseCache {
    inner: Cache<CacheKey, Arc<Entry>>,
}

impl ResponseCache {
    /// A cache holding at most `max_bytes`, counted by [`Entry`] weight.
    pub fn new(max_bytes: u64) -> Self {
        let inner = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_key: &CacheKey, entry: &Arc<Entry>| entry.weight())
            .expire_after(EntryExpiry)
            .build();
        ResponseCache { inner }
    }

    /// A fresh entry for `key`, if there is one.
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<Arc<Entry>> {
        self.inner.get(key).filter(|e| e.is_fresh(now))
    }

    /// Stores `entry` if it is cacheable.
    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        if entry.is_cacheable() {
            self.inner.insert(key, entry);
        }
    }

    /// Number of entries (approximate until pending maintenance has run).
    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }

    /// Total weight in bytes (approximate until pending maintenance has run).
    pub fn weighted_size(&self) -> u64 {
        self.inner.weighted_size()
    }

    /// Runs pending evictions now; for tests and size reports.
    pub fn run_pending_tasks(&self) {
        self.inner.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Fingerprinter;

    fn key(id: u128, token: &[u8]) -> CacheKey {
        let f = Fingerprinter::new(Some("0123456789abcdef")).unwrap();
        CacheKey {
            id: Uuid::from_u128(id),
            credential: f.fingerprint(token),
        }
    }

    fn entry(body: &str, fresh_for: Duration) -> Arc<Entry> {
        Arc::new(Entry {
            status: StatusCode::OK,
            body: Bytes::from(body.to_owned()),
            etag: None,
            retry_after: None,
            stored_at: Instant::now(),
            fresh_for,
        })
    }

    #[test]
    fn keys_differ_by_credential_and_id() {
        let cache = ResponseCache::new(1 << 20);
        let now = Instant::now();
        cache.insert(key(1, b"alice"), entry("a", Duration::from_secs(60)));
        assert!(cache.get(&key(1, b"alice"), now).is_some());
        assert!(
            cache.get(&key(1, b"bob"), now).is_none(),
            "other credential"
        );
        assert!(cache.get(&key(2, b"alice"), now).is_none(), "other id");
    }

    #[test]
    fn uncacheable_entries_are_not_stored() {
        let cache = ResponseCache::new(1 << 20);
        cache.insert(key(1, b"alice"), entry("a", Duration::ZERO));
        assert!(cache.get(&key(1, b"alice"), Instant::now()).is_none());
    }

    #[test]
    fn stale_entries_are_not_served() {
        let cache = ResponseCache::new(1 << 20);
        cache.insert(key(1, b"alice"), entry("a", Duration::from_secs(1)));
        let later = Instant::now() + Duration::from_secs(2);
        assert!(cache.get(&key(1, b"alice"), later).is_none());
    }

    #[test]
    fn the_byte_bound_holds() {
        let max = 256 * 1024;
        let cache = ResponseCache::new(max);
        let body = "x".repeat(1400);
        for i in 0..2000 {
            cache.insert(key(i, b"alice"), entry(&body, Duration::from_secs(60)));
        }
        cache.run_pending_tasks();
        assert!(
            cache.weighted_size() <= max,
            "{} > {max}",
            cache.weighted_size()
        );
        assert!(cache.entry_count() > 0);
    }
}

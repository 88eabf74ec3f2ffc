//! The response cache: typed keys, redacted entries, a byte bound and per-entry freshness.
//!
//! Entries hold the redacted body bytes and the ready-made header values, so a hit only clones
//! `Bytes` and a few `HeaderValue`s: nothing is parsed, redacted or serialised twice.

pub mod coalesce;
pub mod generation;
pub mod store;

pub use generation::{Scope, Stamp};
pub use store::{Fetched, Fill, Store};

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use moka::sync::Cache;
use uuid::Uuid;

use crate::credential::Fingerprint;
use crate::query::ListKind;

/// What a cached answer is filed under.
///
/// Getting this wrong leads to cache poisoning or to one caller reading another's data, so each
/// part is here on purpose:
/// - `resource`: what was asked for, parsed: a phone number by its UUID (so `ABC...` and `abc...`
///   are one entry), or a list by its canonical query. Nothing the upstream does not see is part
///   of it: on the single-number route the query string is not forwarded, so it cannot change the
///   answer, and leaving it out stops `?x=random` from busting the cache;
/// - `credential`: the keyed fingerprint of the credential sent upstream. Answers depend on it
///   (its org, or a 401), so an answer fetched with one credential is never served to another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// What was asked for.
    pub resource: Resource,
    /// Fingerprint of the credential sent upstream.
    pub credential: Fingerprint,
}

/// A cacheable upstream resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    /// `GET /phone-number/{id}`.
    PhoneNumber(Uuid),
    /// `GET /phone-number` or `/v2/phone-number` with a canonical query string.
    List(ListKind, Arc<str>),
}

impl Resource {
    /// The upstream path and query for this resource.
    pub fn upstream_path(&self) -> String {
        match self {
            Resource::PhoneNumber(id) => format!("/phone-number/{}", id.hyphenated()),
            Resource::List(kind, query) => {
                let path = match kind {
                    ListKind::V1 => "/phone-number",
                    ListKind::V2 => "/v2/phone-number",
                };
                if query.is_empty() {
                    path.to_owned()
                } else {
                    format!("{path}?{query}")
                }
            }
        }
    }
}

/// How long answers live: the fresh TTLs, then the two stale windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Freshness of a 200 (`cache.ttl_secs`).
    pub ok: Duration,
    /// Freshness of a 404 (`cache.negative_ttl_secs`).
    pub not_found: Duration,
    /// Freshness of a list's 200 (`cache.list_ttl_secs`).
    pub list: Duration,
    /// After freshness, served stale while one refresh runs (`cache.stale_while_revalidate_secs`).
    pub stale_while_revalidate: Duration,
    /// After freshness, served stale when the upstream fails (`cache.stale_if_error_secs`).
    pub stale_if_error: Duration,
}

impl Lifetimes {
    /// Freshness of a 200 for `resource`.
    pub fn ok_for(&self, resource: &Resource) -> Duration {
        match resource {
            Resource::PhoneNumber(_) => self.ok,
            Resource::List(..) => self.list,
        }
    }

    /// How long past freshness an entry is kept at all.
    pub fn stale_window(&self) -> Duration {
        self.stale_while_revalidate.max(self.stale_if_error)
    }
}

/// Where an entry stands at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staleness {
    /// Within its TTL, for this much longer: a hit.
    Fresh(Duration),
    /// Past its TTL but within stale-while-revalidate: serve it and refresh in the background.
    Revalidate,
    /// Past that, but within stale-if-error: only a stand-in when the upstream fails.
    IfError,
    /// Past every window.
    Expired,
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
    /// The redaction policy generation that produced `body`; entries of an older generation are
    /// never served (a reload changed the policy).
    pub policy_generation: u64,
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

    /// Where the entry, cached for `resource`, stands at `now` under `lifetimes`. The current TTL
    /// caps the one the entry was stored with, so a reload that shortens a TTL applies to entries
    /// already cached too.
    pub fn staleness(&self, now: Instant, lifetimes: &Lifetimes, resource: &Resource) -> Staleness {
        let current = match self.status {
            StatusCode::OK => lifetimes.ok_for(resource),
            StatusCode::NOT_FOUND => lifetimes.not_found,
            _ => Duration::ZERO,
        };
        let fresh = self.fresh_for.min(current);
        let age = now.saturating_duration_since(self.stored_at);
        if age < fresh {
            Staleness::Fresh(fresh - age)
        } else if age < fresh.saturating_add(lifetimes.stale_while_revalidate) {
            Staleness::Revalidate
        } else if age < fresh.saturating_add(lifetimes.stale_if_error) {
            Staleness::IfError
        } else {
            Staleness::Expired
        }
    }

    /// Bytes this entry is charged against `cache.max_bytes`: the body plus the fixed parts, so a
    /// flood of tiny entries (404s) is bounded too.
    fn weight(&self) -> u32 {
        // What an entry costs beyond the body, the key and the entry struct: moka's node, its
        // timer and frequency bookkeeping, the Arc, the etag's allocation. benches/memory.rs
        // measured ~660 B beyond the body per entry, of which the structs counted here are ~250.
        const OVERHEAD: usize = 416;
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

/// Gives each entry its own lifetime: its freshness (a 200's `ttl_secs`, a 404's
/// `negative_ttl_secs`) plus the stale window, during which it may still stand in.
struct EntryExpiry {
    stale_window: Duration,
}

impl moka::Expiry<CacheKey, Cached> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Cached,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.entry.fresh_for.saturating_add(self.stale_window))
    }
}

/// An entry as this replica's memory holds it: with the stamp of the fill that produced it, so an
/// invalidation since then hides it (see [`generation`]).
#[derive(Debug, Clone)]
pub struct Cached {
    /// The answer.
    pub entry: Arc<Entry>,
    /// When its fill began, in invalidation order.
    pub stamp: Stamp,
}

/// The bounded response cache of this replica (L1). Cheap to clone.
#[derive(Clone)]
pub struct ResponseCache {
    inner: Cache<CacheKey, Cached>,
}

impl ResponseCache {
    /// A cache holding at most `max_bytes`, counted by [`Entry`] weight, keeping entries for
    /// `stale_window` past their freshness.
    pub fn new(max_bytes: u64, stale_window: Duration) -> Self {
        let inner = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_key: &CacheKey, cached: &Cached| cached.entry.weight())
            .expire_after(EntryExpiry { stale_window })
            .build();
        ResponseCache { inner }
    }

    /// The entry for `key`, fresh or stale, current or not, if one is still kept.
    pub fn get(&self, key: &CacheKey) -> Option<Cached> {
        self.inner.get(key)
    }

    /// Drops the entry for `key`.
    pub fn invalidate(&self, key: &CacheKey) {
        self.inner.invalidate(key);
    }

    /// Drops every entry whose key matches, and says how many went. Walks the whole cache, so it
    /// is for writes and admin calls, not for the read path.
    pub fn invalidate_where(&self, matches: impl Fn(&CacheKey) -> bool) -> u64 {
        let mut removed = 0;
        for (key, _) in self.inner.iter() {
            if matches(&key) && self.inner.remove(&*key).is_some() {
                removed += 1;
            }
        }
        removed
    }

    /// Stores `entry`, filled from `stamp` on, if it is cacheable.
    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>, stamp: Stamp) {
        if entry.is_cacheable() {
            self.inner.insert(key, Cached { entry, stamp });
        }
    }

    /// Drops every entry.
    pub fn invalidate_all(&self) {
        self.inner.invalidate_all();
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
            resource: Resource::PhoneNumber(Uuid::from_u128(id)),
            credential: f.fingerprint(token),
        }
    }

    fn get_fresh(cache: &ResponseCache, key: &CacheKey, now: Instant) -> Option<Arc<Entry>> {
        cache.get(key).map(|c| c.entry).filter(|e| e.is_fresh(now))
    }

    fn entry(body: &str, fresh_for: Duration) -> Arc<Entry> {
        Arc::new(Entry {
            status: StatusCode::OK,
            body: Bytes::from(body.to_owned()),
            etag: None,
            retry_after: None,
            stored_at: Instant::now(),
            fresh_for,
            policy_generation: 0,
        })
    }

    #[test]
    fn keys_differ_by_credential_and_id() {
        let cache = ResponseCache::new(1 << 20, Duration::ZERO);
        let now = Instant::now();
        cache.insert(
            key(1, b"alice"),
            entry("a", Duration::from_secs(60)),
            Stamp::default(),
        );
        assert!(get_fresh(&cache, &key(1, b"alice"), now).is_some());
        assert!(
            get_fresh(&cache, &key(1, b"bob"), now).is_none(),
            "other credential"
        );
        assert!(
            get_fresh(&cache, &key(2, b"alice"), now).is_none(),
            "other id"
        );
    }

    #[test]
    fn uncacheable_entries_are_not_stored() {
        let cache = ResponseCache::new(1 << 20, Duration::ZERO);
        cache.insert(
            key(1, b"alice"),
            entry("a", Duration::ZERO),
            Stamp::default(),
        );
        assert!(get_fresh(&cache, &key(1, b"alice"), Instant::now()).is_none());
    }

    #[test]
    fn stale_entries_are_not_served() {
        let cache = ResponseCache::new(1 << 20, Duration::ZERO);
        cache.insert(
            key(1, b"alice"),
            entry("a", Duration::from_secs(1)),
            Stamp::default(),
        );
        let later = Instant::now() + Duration::from_secs(2);
        assert!(get_fresh(&cache, &key(1, b"alice"), later).is_none());
    }

    #[test]
    fn staleness_follows_the_two_windows() {
        let lifetimes = Lifetimes {
            ok: Duration::from_secs(10),
            not_found: Duration::from_secs(5),
            list: Duration::from_secs(10),
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(300),
        };
        let e = entry("a", Duration::from_secs(10));
        let r = Resource::PhoneNumber(Uuid::from_u128(1));
        let at = |s: u64| e.stored_at + Duration::from_secs(s);
        assert_eq!(
            e.staleness(at(9), &lifetimes, &r),
            Staleness::Fresh(Duration::from_secs(1))
        );
        assert_eq!(e.staleness(at(10), &lifetimes, &r), Staleness::Revalidate);
        assert_eq!(e.staleness(at(39), &lifetimes, &r), Staleness::Revalidate);
        assert_eq!(e.staleness(at(40), &lifetimes, &r), Staleness::IfError);
        assert_eq!(e.staleness(at(309), &lifetimes, &r), Staleness::IfError);
        assert_eq!(e.staleness(at(310), &lifetimes, &r), Staleness::Expired);
        // A shorter current TTL (a reload) caps the stored one.
        let shorter = Lifetimes {
            ok: Duration::from_secs(2),
            ..lifetimes
        };
        assert_eq!(e.staleness(at(3), &shorter, &r), Staleness::Revalidate);
        assert_eq!(lifetimes.stale_window(), Duration::from_secs(300));
    }

    #[test]
    fn stale_entries_are_kept_for_the_stale_window() {
        let cache = ResponseCache::new(1 << 20, Duration::from_secs(60));
        let mut e = (*entry("a", Duration::from_millis(1))).clone();
        e.stored_at = Instant::now();
        cache.insert(key(1, b"alice"), Arc::new(e), Stamp::default());
        std::thread::sleep(Duration::from_millis(5));
        assert!(get_fresh(&cache, &key(1, b"alice"), Instant::now()).is_none());
        assert!(
            cache.get(&key(1, b"alice")).is_some(),
            "kept as a stale stand-in"
        );
    }

    #[test]
    fn invalidate_where_counts_what_went() {
        let cache = ResponseCache::new(1 << 20, Duration::ZERO);
        for i in 0..4 {
            cache.insert(
                key(i, b"alice"),
                entry("a", Duration::from_secs(60)),
                Stamp::default(),
            );
            cache.insert(
                key(i, b"bob"),
                entry("b", Duration::from_secs(60)),
                Stamp::default(),
            );
        }
        let target = Resource::PhoneNumber(Uuid::from_u128(2));
        assert_eq!(cache.invalidate_where(|k| k.resource == target), 2);
        assert!(cache.get(&key(2, b"alice")).is_none());
        assert!(cache.get(&key(1, b"alice")).is_some());
    }

    #[test]
    fn upstream_paths_follow_the_resource() {
        let id = Uuid::from_u128(1);
        assert_eq!(
            Resource::PhoneNumber(id).upstream_path(),
            "/phone-number/00000000-0000-0000-0000-000000000001"
        );
        assert_eq!(
            Resource::List(ListKind::V1, "".into()).upstream_path(),
            "/phone-number"
        );
        assert_eq!(
            Resource::List(ListKind::V2, "limit=5".into()).upstream_path(),
            "/v2/phone-number?limit=5"
        );
    }

    #[test]
    fn the_byte_bound_holds() {
        let max = 256 * 1024;
        let cache = ResponseCache::new(max, Duration::ZERO);
        let body = "x".repeat(1400);
        for i in 0..2000 {
            cache.insert(
                key(i, b"alice"),
                entry(&body, Duration::from_secs(60)),
                Stamp::default(),
            );
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

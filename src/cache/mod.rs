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
    /// The upstream's `Retry-After`, relayed on 429 and 503; boxed, since only those answers
    /// have one and the box keeps every other entry 32 bytes smaller.
    pub retry_after: Option<Box<HeaderValue>>,
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
        // What an entry costs beyond the body, the key and the entry struct: its slot in the
        // cache's slab and index (which hold the key), the Arc's counts, allocator headers and
        // rounding, the etag's allocation. benches/memory.rs measured 320-340 B beyond the body
        // per entry (fixture-sized and 600 B bodies), of which the structs counted here are ~200.
        const OVERHEAD: usize = 128;
        let headers = self.etag.as_ref().map_or(0, HeaderValue::len)
            + self.retry_after.as_ref().map_or(0, |value| value.len());
        let total = self.body.len()
            + headers
            + std::mem::size_of::<Entry>()
            + std::mem::size_of::<CacheKey>()
            + OVERHEAD;
        u32::try_from(total).unwrap_or(u32::MAX)
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

/// Charges each entry its [`Entry::weight`] against `cache.max_bytes`.
#[derive(Clone)]
struct ByWeight;

impl quick_cache::Weighter<CacheKey, Cached> for ByWeight {
    fn weight(&self, _key: &CacheKey, cached: &Cached) -> u64 {
        u64::from(cached.entry.weight())
    }
}

/// How often expired entries are swept out (they are never served meanwhile: every lookup checks
/// the entry's staleness).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Entry weight the cache's shards and bookkeeping are sized for (a number with a fixture-sized
/// body weighs about 2 KiB); it only sizes the ghost list, not the bound.
const TYPICAL_WEIGHT: u64 = 2048;

/// Shards never hold less than this much weight: the largest answer (a long list) must fit in
/// one shard to be cached at all.
const MIN_SHARD_BYTES: u64 = 16 * 1024 * 1024;

struct Memory {
    map: quick_cache::sync::Cache<CacheKey, Cached, ByWeight>,
    stale_window: Duration,
}

/// The bounded response cache of this replica (L1): a sharded CLOCK-PRO cache (quick_cache)
/// bounded by entry weight in bytes. A lookup takes a shard's read lock and sets a reference
/// bit; there is no per-read bookkeeping queue. Cheap to clone.
#[derive(Clone)]
pub struct ResponseCache {
    inner: Arc<Memory>,
}

impl ResponseCache {
    /// A cache holding at most `max_bytes`, counted by [`Entry`] weight, keeping entries for
    /// `stale_window` past their freshness. Under a tokio runtime a task sweeps out expired
    /// entries every few seconds, for as long as the cache lives.
    pub fn new(max_bytes: u64, stale_window: Duration) -> Self {
        let shards = (max_bytes / MIN_SHARD_BYTES).clamp(1, 16);
        let options = quick_cache::OptionsBuilder::new()
            .weight_capacity(max_bytes)
            .estimated_items_capacity(
                usize::try_from(max_bytes / TYPICAL_WEIGHT)
                    .unwrap_or(1)
                    .max(1),
            )
            .shards(usize::try_from(shards).unwrap_or(1))
            .build();
        let map = match options {
            Ok(options) => quick_cache::sync::Cache::with_options(
                options,
                ByWeight,
                Default::default(),
                Default::default(),
            ),
            // Only a missing weight capacity fails, and it is always set.
            Err(_) => quick_cache::sync::Cache::with_weighter(1, max_bytes, ByWeight),
        };
        let inner = Arc::new(Memory { map, stale_window });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let memory = Arc::downgrade(&inner);
            runtime.spawn(async move {
                let mut every = tokio::time::interval(SWEEP_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                every.tick().await;
                loop {
                    every.tick().await;
                    let Some(memory) = memory.upgrade() else {
                        return;
                    };
                    // A walk of every entry (milliseconds at a million) under each shard's
                    // lock in turn: off the request workers.
                    let _ = tokio::task::spawn_blocking(move || memory.sweep()).await;
                }
            });
        }
        ResponseCache { inner }
    }

    /// The entry for `key`, fresh or stale, current or not, if one is still kept. Whether it may
    /// be served is the caller's to decide ([`Entry::staleness`]).
    pub fn get(&self, key: &CacheKey) -> Option<Cached> {
        self.inner.map.get(key)
    }

    /// Drops the entry for `key`.
    pub fn invalidate(&self, key: &CacheKey) {
        self.inner.map.remove(key);
    }

    /// Drops every entry whose key matches, and says how many went. Walks the whole cache, so it
    /// is for writes and admin calls, not for the read path.
    pub fn invalidate_where(&self, matches: impl Fn(&CacheKey) -> bool) -> u64 {
        let removed = std::cell::Cell::new(0);
        self.inner.map.retain(|key, _| {
            let drop = matches(key);
            removed.set(removed.get() + u64::from(drop));
            !drop
        });
        removed.get()
    }

    /// Stores `entry`, filled from `stamp` on, if it is cacheable.
    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>, stamp: Stamp) {
        if entry.is_cacheable() {
            self.inner.map.insert(key, Cached { entry, stamp });
        }
    }

    /// Drops every entry.
    pub fn invalidate_all(&self) {
        self.inner.map.clear();
    }

    /// Number of entries.
    pub fn entry_count(&self) -> u64 {
        self.inner.map.len() as u64
    }

    /// Total weight in bytes.
    pub fn weighted_size(&self) -> u64 {
        self.inner.map.weight()
    }

    /// Sweeps out expired entries now, instead of at the next periodic sweep; for tests and size
    /// reports.
    pub fn run_pending_tasks(&self) {
        self.inner.sweep();
    }
}

impl Memory {
    /// Drops the entries past every window: their freshness plus the stale window.
    fn sweep(&self) {
        let now = Instant::now();
        self.map.retain(|_, cached| {
            let entry = &cached.entry;
            let kept_for = entry.fresh_for.saturating_add(self.stale_window);
            now.saturating_duration_since(entry.stored_at) < kept_for
        });
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
    fn a_sweep_drops_only_what_is_past_every_window() {
        let cache = ResponseCache::new(1 << 20, Duration::from_millis(1));
        cache.insert(
            key(1, b"alice"),
            entry("a", Duration::from_millis(1)),
            Stamp::default(),
        );
        cache.insert(
            key(2, b"alice"),
            entry("b", Duration::from_secs(60)),
            Stamp::default(),
        );
        assert_eq!(cache.entry_count(), 2);
        std::thread::sleep(Duration::from_millis(5));
        cache.run_pending_tasks();
        assert_eq!(cache.entry_count(), 1);
        assert!(cache.get(&key(1, b"alice")).is_none(), "expired, swept");
        assert!(cache.get(&key(2, b"alice")).is_some(), "still fresh, kept");
        assert_eq!(
            cache.weighted_size(),
            u64::from(entry("b", Duration::from_secs(60)).weight())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_runs_on_its_own_and_stops_with_the_cache() {
        let cache = ResponseCache::new(1 << 20, Duration::ZERO);
        cache.insert(
            key(1, b"alice"),
            entry("a", Duration::from_millis(1)),
            Stamp::default(),
        );
        // The entry expires by the real clock; the sweeper's ticks follow tokio's (paused) one.
        std::thread::sleep(Duration::from_millis(5));
        tokio::time::sleep(SWEEP_EVERY * 2).await;
        assert_eq!(cache.entry_count(), 0);
        let weak = Arc::downgrade(&cache.inner);
        drop(cache);
        tokio::time::sleep(SWEEP_EVERY * 2).await;
        assert!(
            weak.upgrade().is_none(),
            "the sweeper holds no strong reference"
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

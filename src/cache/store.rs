//! The cache store: the one type that owns lookup, join-or-fetch, store-if-current and purge,
//! with this replica's memory (L1) and the optional shared tier (L2, [`crate::tier`]) behind it.
//!
//! The rules it keeps, so no caller has to:
//! - an answer is served only while no invalidation covering it happened since its fill began
//!   ([`super::generation`] for L1, a generation checked inside Redis for L2);
//! - a request joins only a fetch of the current generation: after a write, nobody joins a fetch
//!   that began before it; and once a fetch has answered, nobody new joins it
//!   ([`super::coalesce`]);
//! - a fill that began before an invalidation stores nothing, in L1 or L2 ([`Fill::finish`]);
//! - with the tier, one replica fetches for all: the others wait (boundedly) for its fill
//!   ([`Fill::coordinate`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;

use super::coalesce::{Coalescer, Flight, InFlight};
use super::generation::{Generations, Scope, Stamp};
use super::{CacheKey, Entry, Lifetimes, Resource, ResponseCache};
use crate::clock::Clock;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::tier::keys::EntryKeys;
use crate::tier::{self, Claim, Tier, Token, Waited, codec};

/// The outcome of one upstream fetch, shared by every request that waited for it.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The answer to send, or why there is none.
    pub result: Result<Arc<Entry>, ProxyError>,
    /// How long the upstream exchange took; `None` when no upstream call was made.
    pub upstream: Option<Duration>,
    /// Whether the answer came from another replica's fill (no upstream call here).
    pub shared: bool,
    /// Whose miss budget the fetch was charged to (a refusal by it is that caller's only).
    pub charged: Option<crate::credential::Fingerprint>,
    /// Whether the answer was stored in the cache (RFC 9211 `stored`).
    pub stored: bool,
    /// What was left of `charged`'s miss budget after this fetch took its unit.
    pub misses: Option<crate::shield::Remaining>,
}

/// This replica's memory and its invalidation record; what the tier's listener invalidates.
struct Memory {
    l1: ResponseCache,
    generations: Generations,
}

impl tier::Local for Memory {
    fn invalidate_local(&self, scope: Scope) {
        self.generations.invalidate(scope);
        if scope == Scope::All {
            self.l1.invalidate_all();
        }
    }
}

/// In-flight work by key, the invalidation generation it began in, and the redaction policy
/// generation it redacts under: a request joins only work of the current generations, so a
/// request made after a write or a policy reload never gets an answer from before it.
type Flights<V> = Arc<Coalescer<(CacheKey, u64, u64), V>>;

/// The cache: L1, in-flight fetches, and the optional shared tier.
pub struct Store {
    memory: Arc<Memory>,
    flights: Flights<Fetched>,
    shared_lookups: Flights<Option<Arc<Entry>>>,
    tier: Option<Arc<Tier>>,
    metrics: Arc<Metrics>,
    clock: Clock,
}

impl Store {
    /// A store holding at most `max_bytes` in memory, keeping entries `stale_window` past their
    /// freshness, whose entries live at most `horizon`; with `tier`, shared with other replicas.
    pub fn new(
        max_bytes: u64,
        stale_window: Duration,
        horizon: Duration,
        tier: Option<Arc<Tier>>,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Arc<Self> {
        let memory = Arc::new(Memory {
            l1: ResponseCache::new(max_bytes, stale_window),
            generations: Generations::new(horizon),
        });
        if let Some(tier) = &tier {
            tier.start(Arc::clone(&memory) as Arc<dyn tier::Local>);
        }
        Arc::new(Store {
            memory,
            flights: Arc::default(),
            shared_lookups: Arc::default(),
            tier,
            metrics,
            clock,
        })
    }

    /// Whether a shared tier is configured.
    pub fn is_shared(&self) -> bool {
        self.tier.is_some()
    }

    /// The shared tier, if configured.
    pub fn tier(&self) -> Option<&Arc<Tier>> {
        self.tier.as_ref()
    }

    /// Raises how long entries may live (a reload lengthened a TTL).
    pub fn extend_horizon(&self, horizon: Duration) {
        self.memory.generations.extend_horizon(horizon);
    }

    /// This replica's current entry for `key` redacted under `policy_generation`, fresh or stale.
    pub fn lookup(&self, key: &CacheKey, policy_generation: u64) -> Option<Arc<Entry>> {
        let cached = self.memory.l1.get(key)?;
        if cached.entry.policy_generation != policy_generation
            || !self.memory.generations.is_current(key, cached.stamp)
        {
            return None;
        }
        Some(cached.entry)
    }

    /// The shared tier's current entry for `key`, copied into memory; `None` without a tier, on
    /// a miss, or when Redis does not answer in time. Concurrent lookups of one key share one
    /// Redis call.
    pub async fn lookup_shared(&self, key: &CacheKey, view: &View<'_>) -> Option<Arc<Entry>> {
        let tier = Arc::clone(self.tier.as_ref()?);
        let generation = self.memory.generations.current(key);
        let stamp = self.memory.generations.stamp();
        let keys = tier.keys().entry(
            key,
            view.policy_id,
            &tier.namespace(key.credential.key_id()),
        );
        let memory = Arc::clone(&self.memory);
        let owned_key = key.clone();
        let policy_generation = view.policy_generation;
        let clock = self.clock.clone();
        let found = self.shared_lookups.join_or_start(
            (key.clone(), generation, policy_generation),
            async move {
                let record = tier.lookup(&keys).await?;
                let decoded = codec::decode(&record, clock.now(), SystemTime::now()).ok()?;
                let mut entry = decoded.entry;
                entry.policy_generation = policy_generation;
                let entry = Arc::new(entry);
                memory.l1.insert(owned_key, Arc::clone(&entry), stamp);
                Some(entry)
            },
        );
        found.await.flatten()
    }

    /// The fetch in flight for `key` in the current generation, if any.
    pub fn flight(&self, key: &CacheKey, policy_generation: u64) -> Option<InFlight<Fetched>> {
        let generation = self.memory.generations.current(key);
        self.flights
            .get(&(key.clone(), generation, policy_generation))
    }

    /// Joins the fetch in flight for `key`, or leads `fetch` with a [`Fill`] permit: the caller
    /// runs it, and if the caller goes away first it finishes in a task of its own (so it still
    /// fills the cache).
    pub fn join_or_start<F, Fut>(
        self: &Arc<Self>,
        key: &CacheKey,
        view: &View<'_>,
        fetch: F,
    ) -> Flight<Fetched>
    where
        F: FnOnce(Fill) -> Fut,
        Fut: Future<Output = Fetched> + Send + 'static,
    {
        let generation = self.memory.generations.current(key);
        let fill = Fill {
            store: Arc::clone(self),
            key: key.clone(),
            stamp: self.memory.generations.stamp(),
            shared: self.tier.as_ref().map(|tier| SharedFill {
                tier: Arc::clone(tier),
                keys: tier.keys().entry(
                    key,
                    view.policy_id,
                    &tier.namespace(key.credential.key_id()),
                ),
                token: tier::Token::new_random(),
                generation: None,
                lifetimes: view.lifetimes,
            }),
        };
        self.flights.join_or_start(
            (key.clone(), generation, view.policy_generation),
            fetch(fill),
        )
    }

    /// Makes everything in `scope` unreachable on this replica, then in the shared tier and on
    /// every other replica. Waits for Redis (boundedly); what Redis cannot take now is replayed
    /// when it is back.
    pub async fn invalidate(&self, scope: Scope) {
        tier::Local::invalidate_local(&*self.memory, scope);
        if let Some(tier) = &self.tier {
            tier.invalidate(scope).await;
            // Again: a lookup here may have copied the old record from Redis into memory between
            // the first pass and the generation moving in Redis; this replica skips its own
            // messages, so nothing else would hide that copy.
            self.memory.generations.invalidate(scope);
        }
    }

    /// Makes everything in `scope` unreachable on this replica only (a reload changed the
    /// redaction policy, which is part of every shared-tier name already).
    pub fn invalidate_local(&self, scope: Scope) {
        tier::Local::invalidate_local(&*self.memory, scope);
    }

    /// Like [`Store::invalidate`], and also frees the memory of the entries it hid, counting them
    /// (for admin purges: this walks the whole of L1).
    pub async fn purge(&self, scope: Scope) -> u64 {
        // Generations first, so a fill storing while the walk runs is not served; then the walk
        // frees (and counts) what was hidden; then the other replicas.
        self.memory.generations.invalidate(scope);
        let removed = self.memory.l1.invalidate_where(|key| match scope {
            Scope::Number(id) => key.resource == Resource::PhoneNumber(id),
            Scope::Lists(credential) => {
                matches!(key.resource, Resource::List(..)) && key.credential == credential
            }
            Scope::Credential(key_id) => key.credential.key_id() == key_id,
            Scope::All => true,
        });
        if let Some(tier) = &self.tier {
            tier.invalidate(scope).await;
            // As in `invalidate`: hide what a lookup copied from Redis in between.
            self.memory.generations.invalidate(scope);
        }
        removed
    }

    /// Drops `key`'s entry here and in the shared tier (its credential lost access).
    pub async fn forget(&self, key: &CacheKey, view: &View<'_>) {
        self.memory.l1.invalidate(key);
        if let Some(tier) = &self.tier {
            let keys = tier.keys().entry(
                key,
                view.policy_id,
                &tier.namespace(key.credential.key_id()),
            );
            tier.forget(&keys).await;
        }
    }

    /// Drops `key`'s entry from memory only, as an eviction would: nothing is invalidated, so a
    /// fetch in flight for it can still be joined (tests, benchmarks).
    pub fn evict(&self, key: &CacheKey) {
        self.memory.l1.invalidate(key);
    }

    /// Puts `entry` in memory as a fill beginning now would (benchmarks, warm-up).
    pub fn prime(&self, key: CacheKey, entry: Arc<Entry>) {
        let stamp = self.memory.generations.stamp();
        self.memory.l1.insert(key, entry, stamp);
    }

    /// Entries in memory (approximate until pending maintenance has run).
    pub fn entry_count(&self) -> u64 {
        self.memory.l1.entry_count()
    }

    /// Bytes in memory (approximate until pending maintenance has run).
    pub fn weighted_size(&self) -> u64 {
        self.memory.l1.weighted_size()
    }

    /// Runs pending evictions now; for metrics and tests.
    pub fn run_pending_tasks(&self) {
        self.memory.l1.run_pending_tasks();
    }
}

/// What the store needs to know of the live settings for one request.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// [`crate::redact::Policy::identity`] of the policy in force.
    pub policy_id: &'a str,
    /// Its generation on this replica.
    pub policy_generation: u64,
    /// Freshness and stale windows in force.
    pub lifetimes: Lifetimes,
}

/// Permission to fill one entry: it remembers when the fill began, so its answer is stored only
/// if no invalidation covering the entry happened since (in L1 and, with the tier, in L2).
pub struct Fill {
    store: Arc<Store>,
    key: CacheKey,
    stamp: Stamp,
    shared: Option<SharedFill>,
}

struct SharedFill {
    tier: Arc<Tier>,
    keys: EntryKeys,
    token: Token,
    /// The L2 generation the fill began in; unknown (nothing stored in L2) when Redis did not
    /// answer.
    generation: Option<String>,
    lifetimes: Lifetimes,
}

impl Fill {
    /// With the shared tier: takes the entry's fill lock, or waits (boundedly) for the replica
    /// that holds it and returns that replica's answer. `None`: this replica fetches (it holds
    /// the lock, the wait ran out, or Redis did not answer).
    pub async fn coordinate(&mut self, policy_generation: u64) -> Option<Arc<Entry>> {
        let shared = self.shared.as_mut()?;
        let record = match shared.tier.claim(&shared.keys, &shared.token).await {
            Claim::Filled(record) => record,
            Claim::Claimed(generation) => {
                shared.generation = Some(generation);
                return None;
            }
            Claim::Unavailable => return None,
            Claim::Busy(generation) => {
                shared.generation = Some(generation);
                match shared.tier.wait_for_fill(&shared.keys, &shared.token).await {
                    Waited::Filled(record) => record,
                    Waited::Claimed(generation) => {
                        shared.generation = Some(generation);
                        return None;
                    }
                    Waited::GaveUp => return None,
                }
            }
        };
        let decoded = codec::decode(&record, self.store.clock.now(), SystemTime::now()).ok()?;
        let mut entry = decoded.entry;
        entry.policy_generation = policy_generation;
        let entry = Arc::new(entry);
        self.store_local(&entry);
        Some(entry)
    }

    /// Stores the answer (when cacheable) if the entry was not invalidated since the fill
    /// began, and releases the fill lock. A 401 or 403 drops what the credential could read
    /// before, here and in the shared tier.
    /// Returns whether it was stored in this replica's memory.
    pub async fn finish(mut self, result: &Result<Arc<Entry>, ProxyError>) -> bool {
        let entry = match result {
            Ok(entry) if entry.is_cacheable() => entry,
            Ok(entry)
                if entry.status == StatusCode::UNAUTHORIZED
                    || entry.status == StatusCode::FORBIDDEN =>
            {
                self.store.memory.l1.invalidate(&self.key);
                if let Some(shared) = self.shared.take() {
                    shared.tier.forget(&shared.keys).await;
                    shared.tier.release(&shared.keys, &shared.token).await;
                }
                return false;
            }
            _ => {
                if let Some(shared) = self.shared.take() {
                    shared.tier.release(&shared.keys, &shared.token).await;
                }
                return false;
            }
        };
        let stored = self.store_local(entry);
        if let Some(shared) = self.shared.take() {
            self.store_shared(shared, entry).await;
        }
        stored
    }

    /// Files `entry` in Redis if this replica saw no invalidation since the fill began, and
    /// releases the fill lock either way.
    async fn store_shared(&self, shared: SharedFill, entry: &Arc<Entry>) {
        let current = self
            .store
            .memory
            .generations
            .is_current(&self.key, self.stamp);
        let Some(generation) = shared.generation.as_ref().filter(|_| current) else {
            // Redis did not answer when the fill began (the generation it began in is unknown),
            // or this replica knows of an invalidation since: store nothing there. The lock may
            // have been taken by a claim whose answer was lost: release it by its token.
            shared.tier.release(&shared.keys, &shared.token).await;
            return;
        };
        let now = self.store.clock.now();
        let wall = SystemTime::now();
        let stored = codec::unix_time_of(entry, now, wall);
        match codec::redis_ttl(entry.fresh_for, &shared.lifetimes, stored, wall) {
            Some(ttl) => {
                let record = codec::encode(entry, stored, &shared.lifetimes);
                let fresh_until = stored + entry.fresh_for;
                let _ = shared
                    .tier
                    .store(
                        &shared.keys,
                        generation,
                        fresh_until,
                        record,
                        ttl,
                        &shared.token,
                    )
                    .await;
            }
            None => shared.tier.release(&shared.keys, &shared.token).await,
        }
    }

    /// Check, insert, check again: an invalidation landing between the first check and the
    /// insert takes the entry back out (and lookups would not serve it anyway).
    /// Stores `entry` in this replica's memory unless it was invalidated since the fill began;
    /// returns whether it stayed stored.
    fn store_local(&self, entry: &Arc<Entry>) -> bool {
        let memory = &self.store.memory;
        if !memory.generations.is_current(&self.key, self.stamp) {
            self.store.metrics.tier.fill_refused("l1");
            return false;
        }
        memory
            .l1
            .insert(self.key.clone(), Arc::clone(entry), self.stamp);
        if !memory.generations.is_current(&self.key, self.stamp) {
            memory.l1.invalidate(&self.key);
            return false;
        }
        true
    }
}

//! Invalidation by generation, for this replica's memory (L1).
//!
//! A write to a phone number must make every cached copy of it unreachable (whichever credential
//! fetched it), and a fetch that began before the write must not store its older answer. Walking
//! the cache on every write does the first in O(entries) and not the second. Instead:
//!
//! - one counter, `seq`, moves on every invalidation; a fill takes a [`Stamp`] (the counter's value)
//!   before it asks the upstream;
//! - an invalidation of a [`Scope`] (a number, a credential's lists, a credential, everything)
//!   records the new counter value for that group;
//! - an entry is current while its stamp is at least the value recorded for each group it belongs
//!   to. A fill that started before the invalidation holds a smaller stamp, so its answer is never
//!   served even if it lands in the cache after the invalidation.
//!
//! While nothing was invalidated since a stamp was taken, the check is one atomic load. Recorded
//! values are kept as long as any entry they could invalidate may live (the horizon); if more
//! groups are invalidated at once than can be tracked, the oldest is forgotten and `floor` rises to
//! its value, which only makes more entries look old (a miss), never an old one current.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::sync::Cache;
use uuid::Uuid;

use super::{CacheKey, Resource};
use crate::credential::{Fingerprint, KeyId};

/// Invalidated groups tracked at once; beyond it the floor rises (more misses, never a wrong hit).
const MAX_GROUPS: u64 = 100_000;

/// What one invalidation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One phone number, for every credential (a PATCH, DELETE, or purge by id).
    Number(Uuid),
    /// The lists fetched with one credential (any write made with it).
    Lists(Fingerprint),
    /// Everything fetched with a credential of this `key_id` (purge by key_id).
    Credential(KeyId),
    /// Everything (purge all, a new redaction policy, a lost subscription).
    All,
}

/// A scope with its own recorded value (all but [`Scope::All`], which is the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Group {
    Number(Uuid),
    Lists(Fingerprint),
    Credential(KeyId),
}

/// The moment a fill began, in invalidation order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

/// The invalidation record of one replica. Cheap to share behind the store.
pub struct Generations {
    seq: AtomicU64,
    epoch: AtomicU64,
    groups: Cache<Group, u64>,
    floor: Arc<AtomicU64>,
    horizon_ms: Arc<AtomicU64>,
}

/// Keeps each recorded value for the horizon: the longest an entry it could invalidate may live.
struct Horizon(Arc<AtomicU64>);

impl moka::Expiry<Group, u64> for Horizon {
    fn expire_after_create(&self, _: &Group, _: &u64, _: Instant) -> Option<Duration> {
        Some(Duration::from_millis(self.0.load(Ordering::Relaxed)))
    }

    fn expire_after_update(
        &self,
        _: &Group,
        _: &u64,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_millis(self.0.load(Ordering::Relaxed)))
    }
}

impl Generations {
    /// A record whose values live for `horizon`: at least the longest life of a cache entry
    /// (freshness plus stale window). [`Generations::extend_horizon`] raises it on reload.
    pub fn new(horizon: Duration) -> Self {
        let floor = Arc::new(AtomicU64::new(0));
        let raised = Arc::clone(&floor);
        let horizon_ms = Arc::new(AtomicU64::new(millis(horizon)));
        let groups = Cache::builder()
            .max_capacity(MAX_GROUPS)
            .expire_after(Horizon(Arc::clone(&horizon_ms)))
            .eviction_listener(move |_group, value: u64, cause| {
                // Expiry is harmless: every entry older than the value has expired by then. A
                // value evicted for room is not, so everything up to it counts as invalidated.
                if cause == RemovalCause::Size {
                    raised.fetch_max(value, Ordering::AcqRel);
                }
            })
            .build();
        Generations {
            seq: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            groups,
            floor,
            horizon_ms,
        }
    }

    /// Raises the horizon (a reload made entries live longer); never lowers it, since entries
    /// stored under the longer lifetime are still in the cache.
    pub fn extend_horizon(&self, horizon: Duration) {
        self.horizon_ms.fetch_max(millis(horizon), Ordering::AcqRel);
    }

    /// The stamp a fill starting now carries.
    pub fn stamp(&self) -> Stamp {
        Stamp(self.seq.load(Ordering::Acquire))
    }

    /// Invalidates `scope`: entries in it stamped before now are no longer current.
    pub fn invalidate(&self, scope: Scope) {
        let value = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        let group = match scope {
            Scope::Number(id) => Group::Number(id),
            Scope::Lists(credential) => Group::Lists(credential),
            Scope::Credential(key_id) => Group::Credential(key_id),
            Scope::All => {
                self.epoch.fetch_max(value, Ordering::AcqRel);
                return;
            }
        };
        self.groups.insert(group, value);
    }

    /// Whether an entry for `key` stamped `stamp` is still current.
    pub fn is_current(&self, key: &CacheKey, stamp: Stamp) -> bool {
        if stamp.0 >= self.seq.load(Ordering::Acquire) {
            // Nothing at all was invalidated since the stamp was taken.
            return true;
        }
        stamp.0 >= self.current(key)
    }

    /// The latest invalidation that covers `key`: fetches for the key that began before it are
    /// a different flight from those that begin after.
    pub fn current(&self, key: &CacheKey) -> u64 {
        let floor = self.floor.load(Ordering::Acquire);
        let recorded = |group: Group| self.groups.get(&group).unwrap_or(floor);
        let own = match &key.resource {
            Resource::PhoneNumber(id) => recorded(Group::Number(*id)),
            Resource::List(..) => recorded(Group::Lists(key.credential)),
        };
        self.epoch
            .load(Ordering::Acquire)
            .max(own)
            .max(recorded(Group::Credential(key.credential.key_id())))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Fingerprinter;
    use crate::query::ListKind;

    fn keys() -> (CacheKey, CacheKey, CacheKey) {
        let f = Fingerprinter::new(Some("0123456789abcdef")).unwrap();
        let a = f.fingerprint(b"alice");
        let b = f.fingerprint(b"bob");
        let id = Resource::PhoneNumber(Uuid::from_u128(1));
        (
            CacheKey {
                resource: id.clone(),
                credential: a,
            },
            CacheKey {
                resource: id,
                credential: b,
            },
            CacheKey {
                resource: Resource::List(ListKind::V1, "".into()),
                credential: a,
            },
        )
    }

    #[test]
    fn a_fill_stamped_before_an_invalidation_is_not_current() {
        let g = Generations::new(Duration::from_secs(60));
        let (alice, bob, list) = keys();
        let before = g.stamp();
        assert!(g.is_current(&alice, before));
        g.invalidate(Scope::Number(Uuid::from_u128(1)));
        assert!(
            !g.is_current(&alice, before),
            "every credential's copy of the number"
        );
        assert!(!g.is_current(&bob, before));
        assert!(g.is_current(&list, before), "other groups are untouched");
        let after = g.stamp();
        assert!(
            g.is_current(&alice, after),
            "fills after the write are current"
        );
    }

    #[test]
    fn lists_credentials_and_everything() {
        let g = Generations::new(Duration::from_secs(60));
        let (alice, bob, list) = keys();
        let s = g.stamp();
        g.invalidate(Scope::Lists(list.credential));
        assert!(!g.is_current(&list, s));
        assert!(g.is_current(&alice, s));
        let s = g.stamp();
        g.invalidate(Scope::Credential(alice.credential.key_id()));
        assert!(!g.is_current(&alice, s));
        assert!(g.is_current(&bob, s), "another credential");
        let s = g.stamp();
        g.invalidate(Scope::All);
        assert!(!g.is_current(&bob, s));
        assert!(g.current(&bob) > s.0, "a new flight generation");
    }

    #[test]
    fn forgetting_a_group_for_room_never_revives_an_entry() {
        let g = Generations::new(Duration::from_secs(60));
        let (alice, ..) = keys();
        let s = g.stamp();
        g.invalidate(Scope::Number(Uuid::from_u128(1)));
        for i in 2..(MAX_GROUPS as u128 + 5_000) {
            g.invalidate(Scope::Number(Uuid::from_u128(i)));
        }
        g.groups.run_pending_tasks();
        assert!(!g.is_current(&alice, s));
    }
}

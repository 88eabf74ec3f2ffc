//! Folds concurrent misses for one key into one fetch.
//!
//! The first caller for a key (the leader) starts the fetch as its own task, so the fetch finishes
//! and fills the cache even if that caller hangs up; later callers for the same key (followers)
//! wait on the same task. The task removes its key from the in-flight map when it ends, normally or
//! by panic, so a fetch that vanished never leaves callers waiting on a dead entry: they see
//! [`None`] ("the fetcher vanished") and the next request starts a new fetch.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::sync::oneshot;

/// Whether this caller started the fetch or joined one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Started the fetch.
    Leader,
    /// Joined a fetch already in flight.
    Follower,
}

/// A fetch in flight; resolves to `None` if its task ended without a value (panicked, or was
/// dropped by a runtime shutting down).
pub type InFlight<V> = Shared<BoxFuture<'static, Option<V>>>;

/// The in-flight fetches, by key.
pub struct Coalescer<K, V> {
    inflight: Mutex<HashMap<K, InFlight<V>>>,
}

impl<K, V> Default for Coalescer<K, V> {
    fn default() -> Self {
        Coalescer {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Joins the fetch for `key`, or starts `fetch` as a new task if there is none.
    ///
    /// `fetch` should store its result in the cache before returning, so that no caller can find
    /// neither the in-flight fetch nor the cached answer.
    pub fn join_or_start<F>(self: &Arc<Self>, key: K, fetch: F) -> (InFlight<V>, Role)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (done, result) = oneshot::channel::<V>();
        let shared = async move { result.await.ok() }.boxed().shared();
        {
            let mut map = self.lock();
            if let Some(existing) = map.get(&key) {
                return (existing.clone(), Role::Follower);
            }
            map.insert(key.clone(), shared.clone());
        }
        // Spawned after the lock is released: a runtime that is shutting down drops the future
        // on the spot, and its guard then takes the lock to remove the key.
        let guard = RemoveOnDrop {
            coalescer: Arc::clone(self),
            key: Some(key),
        };
        tokio::spawn(async move {
            let value = fetch.await;
            // The key goes before anyone sees the value: a request that starts once an answer
            // exists must never join the fetch that produced it (with a TTL of 0 it would
            // otherwise share an answer older than itself). Those already joined still get it.
            drop(guard);
            let _ = done.send(value);
        });
        (shared, Role::Leader)
    }

    /// The fetch in flight for `key`, if any.
    pub fn get(&self, key: &K) -> Option<InFlight<V>> {
        self.lock().get(key).cloned()
    }

    /// Number of fetches in flight.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no fetch is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, InFlight<V>>> {
        // The map stays consistent even if a holder panicked: every operation is one insert or
        // remove. So a poisoned lock is safe to keep using.
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes the key when the fetch task ends, including by panic or abort.
struct RemoveOnDrop<K: Hash + Eq, V> {
    coalescer: Arc<Coalescer<K, V>>,
    key: Option<K>,
}

impl<K: Hash + Eq, V> Drop for RemoveOnDrop<K, V> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.coalescer
                .inflight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let c: Arc<Coalescer<u32, u32>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let mut waiters = Vec::new();
        let mut leaders = 0;
        for _ in 0..50 {
            let runs = runs.clone();
            let (fut, role) = c.join_or_start(7, async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                42
            });
            if role == Role::Leader {
                leaders += 1;
            }
            waiters.push(fut);
        }
        for w in waiters {
            assert_eq!(w.await, Some(42));
        }
        assert_eq!(leaders, 1);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(c.is_empty(), "the key is removed once the fetch ends");
    }

    #[tokio::test]
    async fn a_request_after_the_answer_never_joins_the_finished_fetch() {
        let c: Arc<Coalescer<u32, u32>> = Arc::default();
        let (fut, _) = c.join_or_start(1, async { 5 });
        assert_eq!(fut.await, Some(5));
        assert!(c.get(&1).is_none(), "gone before the answer was visible");
        let (fut, role) = c.join_or_start(1, async { 6 });
        assert_eq!(role, Role::Leader);
        assert_eq!(fut.await, Some(6));
    }

    #[tokio::test]
    async fn a_panicking_fetch_releases_its_key() {
        let c: Arc<Coalescer<u32, u32>> = Arc::default();
        let (fut, _) = c.join_or_start(1, async { panic!("fetch blew up") });
        assert_eq!(fut.await, None, "followers learn the fetcher vanished");
        assert!(c.is_empty());
        let (fut, role) = c.join_or_start(1, async { 5 });
        assert_eq!(role, Role::Leader, "the next caller starts afresh");
        assert_eq!(fut.await, Some(5));
    }

    #[tokio::test]
    async fn the_fetch_survives_its_leader_going_away() {
        let c: Arc<Coalescer<u32, u32>> = Arc::default();
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let (fut, _) = c.join_or_start(3, async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            d.fetch_add(1, Ordering::SeqCst);
            1
        });
        drop(fut);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert!(c.is_empty());
    }
}

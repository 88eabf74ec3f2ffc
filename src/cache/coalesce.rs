//! Folds concurrent misses for one key into one fetch.
//!
//! The first caller for a key (the leader) runs the fetch inside its own task, so a miss costs no
//! extra task and no wake-up between tasks; later callers for the same key (followers) wait for
//! the value the leader hands on. If the leader goes away before the fetch is done (its caller
//! hung up, or timed out), the rest of the fetch moves to a task of its own, so it still finishes
//! and fills the cache. The fetch removes its key from the in-flight map when it ends, normally,
//! by panic or by being dropped, so a fetch that vanished never leaves callers waiting on a dead
//! entry: they see [`None`] ("the fetcher vanished") and the next request starts a new fetch.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

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

/// A fetch in flight as its followers see it; resolves to `None` if the fetch ended without a
/// value (panicked, or was dropped by a runtime shutting down).
pub type InFlight<V> = Shared<BoxFuture<'static, Option<V>>>;

/// One caller's wait for a fetch: the leader drives the fetch itself, a follower waits for the
/// leader's value. Resolves to `None` if the fetch ended without a value.
pub enum Flight<V: Send + 'static> {
    /// The caller that started the fetch, running it.
    Lead(Lead<V>),
    /// A caller that joined a fetch already in flight.
    Follow(InFlight<V>),
}

impl<V: Send + 'static> Flight<V> {
    /// Whether this caller started the fetch or joined one.
    pub fn role(&self) -> Role {
        match self {
            Flight::Lead(_) => Role::Leader,
            Flight::Follow(_) => Role::Follower,
        }
    }
}

impl<V: Clone + Send + 'static> Future for Flight<V> {
    type Output = Option<V>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<V>> {
        match self.get_mut() {
            Flight::Lead(lead) => Pin::new(lead).poll(cx),
            Flight::Follow(follow) => Pin::new(follow).poll(cx),
        }
    }
}

/// The leader's side of a fetch: the fetch itself (which removes its key and hands its value to
/// the followers when it ends), polled in the leader's task until the leader goes away.
pub struct Lead<V: Send + 'static> {
    fetch: Option<BoxFuture<'static, V>>,
}

impl<V: Send + 'static> Future for Lead<V> {
    type Output = Option<V>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<V>> {
        let Some(fetch) = self.fetch.as_mut() else {
            return Poll::Ready(None);
        };
        // A panic in the fetch ends this fetch only, as it would in a task of its own: dropping
        // it releases the key and tells the followers it vanished.
        match std::panic::catch_unwind(AssertUnwindSafe(|| fetch.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => {
                self.fetch = None;
                Poll::Ready(Some(value))
            }
            Err(_) => {
                self.fetch = None;
                Poll::Ready(None)
            }
        }
    }
}

impl<V: Send + 'static> Drop for Lead<V> {
    /// The leader went away mid-fetch: the fetch finishes in a task of its own. Without a runtime
    /// (one shutting down) it is dropped, which releases its key.
    fn drop(&mut self) {
        if let Some(fetch) = self.fetch.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    fetch.await;
                });
            }
        }
    }
}

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
    /// Joins the fetch for `key`, or leads `fetch` if there is none.
    ///
    /// `fetch` should store its result in the cache before returning, so that no caller can find
    /// neither the in-flight fetch nor the cached answer. A leader's [`Flight`] dropped before it
    /// is done (never polled, even) hands the fetch to a task of its own.
    pub fn join_or_start<F>(self: &Arc<Self>, key: K, fetch: F) -> Flight<V>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (done, result) = oneshot::channel::<V>();
        let shared = async move { result.await.ok() }.boxed().shared();
        {
            let mut map = self.lock();
            if let Some(existing) = map.get(&key) {
                return Flight::Follow(existing.clone());
            }
            map.insert(key.clone(), shared);
        }
        let guard = RemoveOnDrop {
            coalescer: Arc::clone(self),
            key: Some(key),
        };
        let fetch = async move {
            let value = fetch.await;
            // The key goes before anyone sees the value: a request that starts once an answer
            // exists must never join the fetch that produced it (with a TTL of 0 it would
            // otherwise share an answer older than itself). Those already joined still get it;
            // with none, the map held the only receiver and the value is not cloned.
            drop(guard);
            if !done.is_closed() {
                let _ = done.send(value.clone());
            }
            value
        };
        Flight::Lead(Lead {
            fetch: Some(fetch.boxed()),
        })
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
            let fut = c.join_or_start(7, async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                42
            });
            if fut.role() == Role::Leader {
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
        let fut = c.join_or_start(1, async { 5 });
        assert_eq!(fut.await, Some(5));
        assert!(c.get(&1).is_none(), "gone before the answer was visible");
        let fut = c.join_or_start(1, async { 6 });
        assert_eq!(fut.role(), Role::Leader);
        assert_eq!(fut.await, Some(6));
    }

    #[tokio::test]
    async fn a_panicking_fetch_releases_its_key() {
        let c: Arc<Coalescer<u32, u32>> = Arc::default();
        let fut = c.join_or_start(1, async {
            tokio::task::yield_now().await;
            panic!("fetch blew up")
        });
        let follower = c.get(&1).expect("in flight");
        assert_eq!(fut.await, None, "the leader learns the fetch vanished");
        assert_eq!(follower.await, None, "so do its followers");
        assert!(c.is_empty());
        let fut = c.join_or_start(1, async { 5 });
        assert_eq!(fut.role(), Role::Leader, "the next caller starts afresh");
        assert_eq!(fut.await, Some(5));
    }

    #[tokio::test]
    async fn the_fetch_survives_its_leader_going_away() {
        let c: Arc<Coalescer<u32, u32>> = Arc::default();
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let fut = c.join_or_start(3, async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            d.fetch_add(1, Ordering::SeqCst);
            1
        });
        drop(fut);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert!(c.is_empty());
    }

    #[tokio::test]
    async fn the_leader_runs_the_fetch_in_its_own_task() {
        let c: Arc<Coalescer<u32, Option<tokio::task::Id>>> = Arc::default();
        let leader = tokio::spawn({
            let c = Arc::clone(&c);
            async move {
                let fut = c.join_or_start(1, async { tokio::task::try_id() });
                (tokio::task::id(), fut.await)
            }
        });
        let (leader_task, fetched_in) = leader.await.expect("the leader task ends");
        assert_eq!(fetched_in, Some(Some(leader_task)), "no task of its own");
    }

    #[tokio::test]
    async fn a_leader_dropped_midway_hands_the_fetch_on_and_followers_get_it() {
        let c: Arc<Coalescer<u32, u32>> = Arc::default();
        let (release, gate) = oneshot::channel::<()>();
        let mut lead = c.join_or_start(9, async move {
            let _ = gate.await;
            11
        });
        // Polled once (the fetch is under way in the leader's task), then dropped.
        assert!(futures_util::poll!(&mut lead).is_pending());
        let follower = c.get(&9).expect("in flight");
        drop(lead);
        assert!(c.get(&9).is_some(), "still in flight after the leader left");
        let _ = release.send(());
        assert_eq!(follower.await, Some(11));
        assert!(c.is_empty());
    }

    #[tokio::test]
    async fn a_leader_never_polled_still_fetches() {
        let c: Arc<Coalescer<u32, u32>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&runs);
        drop(c.join_or_start(4, async move {
            r.fetch_add(1, Ordering::SeqCst);
            4
        }));
        let follower = c.get(&4).expect("in flight");
        assert_eq!(follower.await, Some(4));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(c.is_empty());
    }
}

//! An HTTP/2 connection's streams run inside the connection's own task.
//!
//! hyper's HTTP/2 server hands each stream (the request's service future and the sending of its
//! answer) to an executor. With tokio's, every stream is a task of its own, which a work-stealing
//! runtime moves to whichever worker is idle: a hit then wakes another thread to run the stream
//! and again to hand the frames back to the connection's task. [`StreamTasks`] keeps the streams
//! with the connection instead: [`StreamTasks::run`] polls the connection and its streams
//! together, so a stream is polled on the thread that reads and writes its frames.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;

/// The executor given to one connection's HTTP/2 server: what it starts waits in a queue for
/// [`StreamTasks::run`] to pick it up.
#[derive(Clone, Default)]
pub struct StreamTasks {
    shared: Arc<Started>,
}

#[derive(Default)]
struct Started {
    queue: Mutex<Vec<BoxFuture<'static, ()>>>,
    /// The task running the connection, woken when a stream starts.
    waker: AtomicWaker,
}

impl Started {
    /// The streams started since the last call.
    fn take_queued(&self) -> Vec<BoxFuture<'static, ()>> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl<F> hyper::rt::Executor<F> for StreamTasks
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::pin(stream));
        self.shared.waker.wake();
    }
}

impl StreamTasks {
    /// Runs `connection` and the streams it starts until the connection ends. An HTTP/2
    /// connection ends once its streams are done (or the connection failed, when what is left of
    /// them is dropped).
    pub async fn run<C: Future>(&self, connection: C) -> C::Output {
        let streams = Streams {
            started: Arc::clone(&self.shared),
            running: FuturesUnordered::new(),
        };
        // In tokio's random order: polled always first, a connection flooded with frames could
        // spend the task's budget before its streams got theirs.
        tokio::select! {
            output = connection => output,
            never = streams => match never {},
        }
    }
}

/// The streams of one connection, polled as one future that never ends.
struct Streams {
    started: Arc<Started>,
    running: FuturesUnordered<BoxFuture<'static, ()>>,
}

/// What [`Streams`] resolves to: nothing, ever.
enum Never {}

impl Drop for Streams {
    /// Streams queued but never picked up go too: each holds a clone of the executor, and so of
    /// the queue holding it, a cycle that would otherwise keep them (and their requests) alive.
    fn drop(&mut self) {
        // Taken under the lock, dropped outside it.
        drop(self.started.take_queued());
    }
}

impl Future for Streams {
    type Output = Never;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Never> {
        // Registered before the queue is read, so a stream queued after the read wakes us.
        self.started.waker.register(cx.waker());
        loop {
            let started = self.started.take_queued();
            let fresh = !started.is_empty();
            self.running.extend(started);
            // Ready(None) is an empty set; Pending means each stream waits on something.
            while let Poll::Ready(Some(())) = self.running.poll_next_unpin(cx) {}
            if !fresh {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn streams_run_in_the_connection_task_until_it_ends() {
        let tasks = StreamTasks::default();
        let ran = Arc::new(AtomicUsize::new(0));
        let (release, gate) = oneshot::channel::<()>();
        let connection = {
            let tasks = tasks.clone();
            let ran = Arc::clone(&ran);
            async move {
                let here = tokio::task::try_id();
                let (done, finished) = oneshot::channel::<Option<tokio::task::Id>>();
                // A stream that waits for a gate, then says which task polled it.
                tasks.execute(async move {
                    let _ = gate.await;
                    ran.fetch_add(1, Ordering::SeqCst);
                    let _ = done.send(tokio::task::try_id());
                });
                let _ = release.send(());
                (here, finished.await.ok().flatten())
            }
        };
        let runner = tokio::spawn(async move { tasks.run(connection).await });
        let (connection_task, stream_task) = runner.await.expect("the connection ends");
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert!(connection_task.is_some());
        assert_eq!(
            stream_task, connection_task,
            "polled by the connection's task"
        );
    }

    #[tokio::test]
    async fn many_streams_all_finish() {
        let tasks = StreamTasks::default();
        let finished = Arc::new(AtomicUsize::new(0));
        let connection = {
            let tasks = tasks.clone();
            let finished = Arc::clone(&finished);
            async move {
                let mut waits = Vec::new();
                for i in 0..100u64 {
                    let (done, wait) = oneshot::channel::<()>();
                    let finished = Arc::clone(&finished);
                    tasks.execute(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(i % 7)).await;
                        finished.fetch_add(1, Ordering::SeqCst);
                        let _ = done.send(());
                    });
                    waits.push(wait);
                }
                for wait in waits {
                    wait.await.expect("each stream runs");
                }
            }
        };
        tasks.run(connection).await;
        assert_eq!(finished.load(Ordering::SeqCst), 100);
    }

    #[tokio::test]
    async fn streams_still_queued_when_the_connection_ends_are_dropped() {
        let tasks = StreamTasks::default();
        let dropped = Arc::new(AtomicUsize::new(0));
        struct CountDrop(Arc<AtomicUsize>);
        impl Drop for CountDrop {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let connection = {
            let tasks = tasks.clone();
            let guard = CountDrop(Arc::clone(&dropped));
            // Starts a stream holding the executor (as hyper's do), then ends at once.
            async move {
                let executor = tasks.clone();
                tasks.execute(async move {
                    let _guard = guard;
                    let _executor = executor;
                    std::future::pending::<()>().await;
                });
            }
        };
        tasks.run(connection).await;
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "not kept by a cycle");
        assert_eq!(
            Arc::strong_count(&tasks.shared),
            1,
            "nothing else holds the queue"
        );
    }

    #[tokio::test]
    async fn streams_left_when_the_connection_ends_are_dropped() {
        let tasks = StreamTasks::default();
        let (_keep, never) = oneshot::channel::<()>();
        let dropped = Arc::new(AtomicUsize::new(0));
        struct CountDrop(Arc<AtomicUsize>);
        impl Drop for CountDrop {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let guard = CountDrop(Arc::clone(&dropped));
        tasks.execute(async move {
            let _guard = guard;
            let _ = never.await;
        });
        tasks.run(tokio::task::yield_now()).await;
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "the stream went with the run"
        );
    }
}

//! A batching stdout writer for log lines.
//!
//! Writing each access-log line to stdout costs a syscall, and handing it to a writer thread costs
//! a wake-up per line; at tens of thousands of requests a second on two cores either shows up as a
//! large share of the CPU. Lines are instead appended to a shared buffer (one short lock per line)
//! and written in batches: when the buffer passes [`FLUSH_BYTES`], and by a flusher thread every
//! [`FLUSH_EVERY`], so a quiet proxy's lines still appear promptly. This is the trade nginx makes
//! with `access_log ... buffer= flush=`: a crash can lose the last [`FLUSH_EVERY`] of lines.
//! Whole lines are appended under the lock, so lines from different threads never interleave.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Buffered bytes that trigger a write at once.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Buffered bytes past which writers wait for the flusher: memory stays bounded if stdout stalls,
/// and lines are delayed rather than lost.
const MAX_BUFFERED: usize = 16 * 1024 * 1024;

struct Shared {
    buf: Mutex<Buffer>,
    /// Wakes the flusher early (buffer past FLUSH_BYTES, or closing).
    wake: Condvar,
    /// Wakes writers waiting for room.
    room: Condvar,
}

struct Buffer {
    bytes: Vec<u8>,
    closed: bool,
}

/// The writer handed to tracing layers. Cheap to clone.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Flushes what is buffered and stops the flusher when dropped; keep it alive until exit.
pub struct FlushGuard {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl BatchWriter {
    /// A writer batching into `out`, written only by its own flusher thread, so batches reach
    /// `out` in order and no request thread ever waits on a slow stdout (until the bound).
    pub fn new<W: Write + Send + 'static>(mut out: W) -> io::Result<(Self, FlushGuard)> {
        let shared = Arc::new(Shared {
            buf: Mutex::new(Buffer {
                bytes: Vec::with_capacity(FLUSH_BYTES * 2),
                closed: false,
            }),
            wake: Condvar::new(),
            room: Condvar::new(),
        });
        let for_thread = Arc::clone(&shared);
        let flusher = std::thread::Builder::new()
            .name("phonegate-log".into())
            .spawn(move || {
                let mut spare = Vec::with_capacity(FLUSH_BYTES * 2);
                loop {
                    let closed = {
                        let mut buf = for_thread
                            .buf
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner);
                        if !buf.closed && buf.bytes.len() < FLUSH_BYTES {
                            buf = for_thread
                                .wake
                                .wait_timeout(buf, FLUSH_EVERY)
                                .unwrap_or_else(PoisonError::into_inner)
                                .0;
                        }
                        std::mem::swap(&mut buf.bytes, &mut spare);
                        buf.closed
                    };
                    for_thread.room.notify_all();
                    if !spare.is_empty() {
                        // Nowhere to report a failed log write; carry on with the next batch.
                        let _ = out.write_all(&spare);
                        let _ = out.flush();
                        spare.clear();
                    }
                    if closed {
                        // Catch lines appended between the swap and the close.
                        let mut buf = for_thread
                            .buf
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner);
                        let _ = out.write_all(&buf.bytes);
                        let _ = out.flush();
                        buf.bytes.clear();
                        return;
                    }
                }
            })?;
        Ok((
            BatchWriter {
                shared: Arc::clone(&shared),
            },
            FlushGuard {
                shared,
                flusher: Some(flusher),
            },
        ))
    }
}

impl Write for BatchWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut buf = self
            .shared
            .buf
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while buf.bytes.len() >= MAX_BUFFERED && !buf.closed {
            buf = self
                .shared
                .room
                .wait_timeout(buf, FLUSH_EVERY)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        buf.bytes.extend_from_slice(bytes);
        if buf.bytes.len() >= FLUSH_BYTES {
            self.shared.wake.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Lines are flushed in batches; an explicit flush per line would defeat the purpose.
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared
            .buf
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.shared.wake.notify_all();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_whole_within_the_flush_interval_and_at_drop() {
        let sink = Sink::default();
        let (writer, guard) = BatchWriter::new(sink.clone()).unwrap();
        let mut w = writer.clone();
        w.write_all(b"one\n").unwrap();
        std::thread::sleep(FLUSH_EVERY * 4);
        assert_eq!(&*sink.0.lock().unwrap(), b"one\n", "flushed by the timer");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        w.write_all(format!("t{t}-{i}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4001, "nothing lost at drop");
        assert!(
            lines.iter().all(|l| l == &"one" || l.starts_with('t')),
            "no torn lines"
        );
    }

    #[test]
    fn a_full_buffer_wakes_the_flusher_early() {
        let sink = Sink::default();
        let (mut writer, _guard) = BatchWriter::new(sink.clone()).unwrap();
        writer.write_all(&vec![b'x'; FLUSH_BYTES + 1]).unwrap();
        // Well before the periodic flush would run.
        let deadline = std::time::Instant::now() + FLUSH_EVERY / 2;
        while sink.0.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(sink.0.lock().unwrap().len(), FLUSH_BYTES + 1);
    }
}

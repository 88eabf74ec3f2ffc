//! A batching stdout writer for log lines.
//!
//! Writing each access-log line to stdout costs a syscall, and handing it to a writer thread costs
//! a wake-up per line; at tens of thousands of requests a second on two cores either shows up as a
//! large share of the CPU. Lines are instead appended to a shared buffer (one short lock per line)
//! and written in batches: when the buffer passes [`FLUSH_BYTES`], and by a flusher thread every
//! [`FLUSH_EVERY`], so a quiet proxy's lines still appear promptly. This is the trade nginx makes
//! with `access_log ... buffer= flush=`: a crash can lose the last [`FLUSH_EVERY`] of lines.
//! Whole lines are appended under the lock, so lines from different threads never interleave.
//!
//! A request never waits on stdout. When the output stalls (a full pipe, a stuck log shipper) and
//! the buffer reaches [`MAX_BUFFERED`], further lines are dropped and counted
//! (`phonegate_log_lines_dropped_total`); once output flows again the flusher writes one line
//! saying how many were lost. Shutdown waits for the last batch at most [`CLOSE_WAIT`], so a
//! stalled stdout cannot keep the process alive.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// Buffered bytes that trigger a write at once.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Buffered bytes past which lines are dropped: memory stays bounded if stdout stalls, and no
/// request waits. A healthy stdout drains far faster than lines arrive (the flusher is woken at
/// [`FLUSH_BYTES`]), so only a stalled one ever fills this.
pub const MAX_BUFFERED: usize = 1024 * 1024;

/// Longest shutdown waits for the flusher to write what is left.
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);

struct Shared {
    buf: Mutex<Buffer>,
    /// Wakes the flusher early (buffer past FLUSH_BYTES, or closing).
    wake: Condvar,
    /// Lines dropped since start (for the metric).
    dropped: Arc<AtomicU64>,
    /// Lines dropped and not yet reported in the output.
    unreported: AtomicU64,
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
    /// Appends `bytes` (whole lines) to the buffer, or drops and counts them when the buffer is
    /// full. Never blocks on the output.
    pub fn write_line(&self, bytes: &[u8]) {
        let mut buf = self
            .shared
            .buf
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if buf.bytes.len() + bytes.len() > MAX_BUFFERED {
            drop(buf);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            self.shared.unreported.fetch_add(1, Ordering::Relaxed);
            // A log line is never worth an error, or a wait, in the request path.
            return;
        }
        buf.bytes.extend_from_slice(bytes);
        if buf.bytes.len() >= FLUSH_BYTES {
            self.shared.wake.notify_one();
        }
    }

    /// A writer batching into `out`, written only by its own flusher thread, so batches reach
    /// `out` in order and no request thread ever waits on a slow stdout (until the bound).
    pub fn new<W: Write + Send + 'static>(mut out: W) -> io::Result<(Self, FlushGuard)> {
        let shared = Arc::new(Shared {
            buf: Mutex::new(Buffer {
                bytes: Vec::with_capacity(FLUSH_BYTES * 2),
                closed: false,
            }),
            wake: Condvar::new(),
            dropped: Arc::new(AtomicU64::new(0)),
            unreported: AtomicU64::new(0),
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
                    if !spare.is_empty() {
                        // Nowhere to report a failed log write; carry on with the next batch.
                        let written = out.write_all(&spare).and_then(|()| out.flush());
                        spare.clear();
                        if written.is_ok() {
                            report_drops(&for_thread, &mut out);
                        }
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

/// Output flows again: say how many lines it lost, as a log line of its own.
fn report_drops<W: Write>(shared: &Shared, out: &mut W) {
    let lost = shared.unreported.swap(0, Ordering::AcqRel);
    if lost == 0 {
        return;
    }
    let line = serde_json::json!({
        "timestamp": rfc3339_now(),
        "level": "WARN",
        "target": "phonegate::log",
        "message": "log lines were dropped while the output was stalled",
        "dropped": lost,
    });
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// RFC 3339 like the other lines, to the second: this line is rare.
fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl BatchWriter {
    /// Lines dropped so far because the output stalled.
    pub fn dropped(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.shared.dropped)
    }
}

impl Write for BatchWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_line(bytes);
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
        let Some(flusher) = self.flusher.take() else {
            return;
        };
        // The flusher may be stuck writing to a stalled stdout; it is not waited for past
        // CLOSE_WAIT (the process exit ends it).
        let deadline = Instant::now() + CLOSE_WAIT;
        while !flusher.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if flusher.is_finished() {
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

    /// An output that blocks until released, like a full pipe.
    #[derive(Clone, Default)]
    struct Stalled {
        open: Arc<(Mutex<bool>, Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Stalled {
        fn release(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }
    }

    impl Write for Stalled {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let mut open = self.open.0.lock().unwrap();
            while !*open {
                open = self.open.1.wait(open).unwrap();
            }
            self.got.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_output_drops_and_counts_lines_and_never_blocks_a_writer() {
        let out = Stalled::default();
        let (writer, guard) = BatchWriter::new(out.clone()).unwrap();
        // One write per line, as the log layers do.
        let mut line = vec![b'x'; 399];
        line.push(b'\n');
        let started = Instant::now();
        let mut w = writer.clone();
        for _ in 0..(3 * MAX_BUFFERED / 400) {
            w.write_all(&line).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "writers never wait for the output"
        );
        let dropped = writer.dropped().load(Ordering::Relaxed);
        assert!(dropped > 0, "lines past the bound are dropped");
        // Output flows again: the backlog arrives, then one line says how many were lost.
        out.release();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !String::from_utf8_lossy(&out.got.lock().unwrap()).contains("\"dropped\"") {
            assert!(Instant::now() < deadline, "the drop report never came");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(guard);
        let text = String::from_utf8_lossy(&out.got.lock().unwrap()).into_owned();
        let report = text.lines().find(|l| l.contains("\"dropped\"")).unwrap();
        let v: serde_json::Value = serde_json::from_str(report).unwrap();
        assert!(v["dropped"].as_u64().unwrap() >= 1);
        assert_eq!(v["level"], "WARN");
    }

    #[test]
    fn closing_never_waits_long_for_a_stalled_output() {
        let out = Stalled::default();
        let (mut writer, guard) = BatchWriter::new(out.clone()).unwrap();
        writer.write_all(&vec![b'x'; FLUSH_BYTES + 1]).unwrap();
        std::thread::sleep(FLUSH_EVERY * 2);
        let started = Instant::now();
        drop(guard);
        assert!(started.elapsed() < CLOSE_WAIT + Duration::from_secs(1));
        out.release();
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

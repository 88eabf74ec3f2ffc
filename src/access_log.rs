//! Logging: the access log, one JSON object per request on stdout, and the operational logs that
//! share the stream.
//!
//! In JSON format (the default) an access-log line is formatted straight from the
//! [`AccessRecord`] into a per-thread buffer and appended to the batching writer: no tracing
//! dispatch, no field visitor, no allocation. Its schema is a contract: every field is always
//! present, `null` when it has no value (`upstream_ms` on a hit, `key_id` without a credential),
//! and fields sit at the top level. In pretty format (and in a process that never called [`init`],
//! such as a test harness with its own subscriber) the same record is a tracing event on its own
//! target ([`TARGET`]), formatted by tracing-subscriber.
//!
//! Nothing here ever sees a credential, a body or a redacted value: the call site passes only the
//! keyed fingerprint and fixed strings.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, filter, reload};

use crate::config::LogFormat;
use crate::credential::KeyId;
use crate::log_writer::{BatchWriter, FlushGuard};

/// The tracing target of access-log events.
pub const TARGET: &str = "phonegate::access";

/// Everything the access log says about one request.
#[derive(Debug, Clone)]
pub struct AccessRecord<'a> {
    /// `x-request-id` as answered.
    pub request_id: &'a str,
    /// Request method.
    pub method: &'a str,
    /// Request path, without the query string (which may carry anything).
    pub path: &'a str,
    /// Route name (`get`, `list`, `list_v2`, `create`, `update`, `delete`), when one matched.
    pub route: Option<&'static str>,
    /// The managed-mode client's name.
    pub client: Option<&'a str>,
    /// Response status.
    pub status: u16,
    /// `hit`, `miss` or `none`.
    pub cache: &'static str,
    /// Time from request head to response head.
    pub duration: Duration,
    /// Time the upstream took, when this request waited for an upstream answer.
    pub upstream: Option<Duration>,
    /// Fingerprint of the credential, when there was a well-formed one.
    pub key_id: Option<KeyId>,
    /// Why phonegate answered itself (`bad_id`, `upstream_timeout`, ...).
    pub reason: Option<&'static str>,
    /// Whether the request waited for another request's upstream fetch.
    pub coalesced: bool,
    /// Which cache tier answered a hit or stale answer: `l1` (this replica's memory) or `l2`
    /// (the shared Redis tier); `None` otherwise.
    pub tier: Option<&'static str>,
    /// Response body bytes.
    pub bytes: u64,
}

/// Longest path written to the log; the rest is cut so one request cannot write megabytes.
pub const MAX_LOGGED_PATH: usize = 256;
/// Longest method written (real ones are under 10 bytes; hyper accepts any token up to the head
/// size, 64 KiB).
pub const MAX_LOGGED_METHOD: usize = 32;
/// Longest request id written (phonegate only reuses sane ids of at most 128 bytes anyway).
pub const MAX_LOGGED_REQUEST_ID: usize = 128;
/// Longest managed-mode client name written.
pub const MAX_LOGGED_CLIENT: usize = 64;
/// No access-log line is longer than this, whatever a caller sends: every caller-controlled field
/// is cut before it is escaped, and the rest are fixed-size.
pub const MAX_LINE_BYTES: usize = 4096;

/// Where JSON access-log lines go once [`init`] has run in JSON format.
static JSON_SINK: OnceLock<BatchWriter> = OnceLock::new();

/// Sends JSON access-log lines to `writer` from now on, for the whole process; what [`init`] does
/// in JSON format. Fails if a writer was installed already.
pub fn install(writer: BatchWriter) -> Result<(), String> {
    JSON_SINK
        .set(writer)
        .map_err(|_| "an access-log writer was already installed".to_owned())
}

/// Writes one access-log line for `record`.
pub fn emit(record: &AccessRecord<'_>) {
    let Some(sink) = JSON_SINK.get() else {
        emit_event(record);
        return;
    };
    LINE.with(|line| {
        let Ok(mut buf) = line.try_borrow_mut() else {
            return;
        };
        buf.clear();
        format_record(record, SystemTime::now(), &mut buf);
        sink.write_line(&buf);
    });
}

/// The record as a tracing event on [`TARGET`] (pretty format, or no JSON sink installed).
fn emit_event(record: &AccessRecord<'_>) {
    tracing::info!(
        target: TARGET,
        request_id = truncate(record.request_id, MAX_LOGGED_REQUEST_ID),
        method = truncate(record.method, MAX_LOGGED_METHOD),
        path = truncate(record.path, MAX_LOGGED_PATH),
        route = record.route,
        client = record.client.map(|c| truncate(c, MAX_LOGGED_CLIENT)),
        status = record.status,
        cache = record.cache,
        duration_ms = millis(record.duration),
        upstream_ms = record.upstream.map(millis),
        key_id = record.key_id.as_ref().map(KeyId::hex).as_deref(),
        reason = record.reason,
        coalesced = record.coalesced,
        tier = record.tier,
        bytes = record.bytes,
        "request"
    );
}

/// Formats `record`, logged at `now`, as one JSON line (with its newline) into `buf`.
pub fn format_record(record: &AccessRecord<'_>, now: SystemTime, buf: &mut Vec<u8>) {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    write_timestamp(buf, now);
    buf.extend_from_slice(b"\",\"level\":\"INFO\",\"target\":\"");
    buf.extend_from_slice(TARGET.as_bytes());
    buf.extend_from_slice(b"\",\"message\":\"request\",\"request_id\":");
    json_str(buf, truncate(record.request_id, MAX_LOGGED_REQUEST_ID));
    buf.extend_from_slice(b",\"method\":");
    json_str(buf, truncate(record.method, MAX_LOGGED_METHOD));
    buf.extend_from_slice(b",\"path\":");
    json_str(buf, truncate(record.path, MAX_LOGGED_PATH));
    buf.extend_from_slice(b",\"route\":");
    json_opt_str(buf, record.route);
    buf.extend_from_slice(b",\"client\":");
    json_opt_str(buf, record.client.map(|c| truncate(c, MAX_LOGGED_CLIENT)));
    buf.extend_from_slice(b",\"status\":");
    write_u64(buf, u64::from(record.status));
    buf.extend_from_slice(b",\"cache\":");
    json_str(buf, record.cache);
    buf.extend_from_slice(b",\"duration_ms\":");
    write_millis(buf, record.duration);
    buf.extend_from_slice(b",\"upstream_ms\":");
    match record.upstream {
        Some(upstream) => write_millis(buf, upstream),
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"key_id\":");
    json_opt_str(buf, record.key_id.as_ref().map(KeyId::hex).as_deref());
    buf.extend_from_slice(b",\"reason\":");
    json_opt_str(buf, record.reason);
    buf.extend_from_slice(b",\"coalesced\":");
    buf.extend_from_slice(if record.coalesced { b"true" } else { b"false" });
    buf.extend_from_slice(b",\"tier\":");
    json_opt_str(buf, record.tier);
    buf.extend_from_slice(b",\"bytes\":");
    write_u64(buf, record.bytes);
    buf.extend_from_slice(b"}\n");
}

fn json_opt_str(buf: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => json_str(buf, value),
        None => buf.extend_from_slice(b"null"),
    }
}

fn write_u64(buf: &mut Vec<u8>, value: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// `d` in milliseconds rounded to the microsecond, as the shortest JSON number that says it
/// (`1.234`, `12.0`): what serde_json prints for [`millis`].
fn write_millis(buf: &mut Vec<u8>, d: Duration) {
    let micros = d.as_nanos().saturating_add(500) / 1000;
    let micros = u64::try_from(micros).unwrap_or(u64::MAX);
    write_u64(buf, micros / 1000);
    buf.push(b'.');
    let frac = micros % 1000;
    let digits = [
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let keep = match digits {
        [_, b'0', b'0'] => 1,
        [_, _, b'0'] => 2,
        _ => 3,
    };
    buf.extend_from_slice(&digits[..keep]);
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

thread_local! {
    // One buffer per thread, reused: the access log runs on every request.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

thread_local! {
    // The formatted date and time of the last second seen on this thread: lines within one
    // second share it, and only the microseconds are formatted per line.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// RFC 3339 UTC with microseconds (`2026-11-29T05:40:32.827074Z`).
fn write_timestamp(buf: &mut Vec<u8>, now: SystemTime) {
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_epoch.as_secs();
    SECOND.with(|cell| {
        let Ok(mut cached) = cell.try_borrow_mut() else {
            let _ = write!(buf, "{}", humantime::format_rfc3339_micros(now));
            return;
        };
        if cached.0 != secs {
            // humantime prints `YYYY-MM-DDTHH:MM:SSZ` for whole seconds; keep the first 19 bytes.
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            if text.len() >= 19 {
                cached.1.copy_from_slice(&text.as_bytes()[..19]);
                cached.0 = secs;
            }
        }
        buf.extend_from_slice(&cached.1);
        let _ = write!(buf, ".{:06}Z", since_epoch.subsec_micros());
    });
}

fn json_str(buf: &mut Vec<u8>, s: &str) {
    // Most values (ids, routes, hex, fixed reasons) need no escaping: copy them straight.
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
        return;
    }
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Changes the operational log filter of a running process (a reload's `log.level`).
pub struct LogControl {
    set: SetLevel,
    from_env: bool,
    dropped: Arc<AtomicU64>,
}

impl LogControl {
    /// Applies a new `log.level`. Ignored (with `Ok(false)`) when `RUST_LOG` set the filter at
    /// start, since the environment wins over the file.
    pub fn set_level(&self, level: &str) -> Result<bool, String> {
        if self.from_env {
            return Ok(false);
        }
        (self.set)(level).map(|()| true)
    }

    /// Lines dropped so far because stdout stalled (`phonegate_log_lines_dropped_total`).
    pub fn dropped(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.dropped)
    }
}

type Base = tracing_subscriber::Registry;
type WithAccess = tracing_subscriber::layer::Layered<Box<dyn Layer<Base> + Send + Sync>, Base>;
type OpsFilter = reload::Layer<EnvFilter, WithAccess>;

/// The process's subscriber: operational logs through `ops_filter` (the `log.level` a reload
/// changes), in `format`, to `writer`; in pretty format, access events too.
fn subscriber(
    format: LogFormat,
    ops_filter: OpsFilter,
    writer: BatchWriter,
) -> impl tracing::Subscriber + Send + Sync {
    let is_access = filter::filter_fn(|meta| meta.target() == TARGET);
    let not_access = filter::filter_fn(|meta| meta.target() != TARGET);
    // Boxed so both formats build the same subscriber type, which the reload handle names.
    let (access, ops): (
        Box<dyn Layer<Base> + Send + Sync>,
        Box<dyn Layer<WithAccess> + Send + Sync>,
    ) = match format {
        LogFormat::Json => (
            // No layer for access events here (they bypass tracing). It must still be filtered,
            // to nothing: an unfiltered no-op layer makes every callsite "interesting", and every
            // `trace!` in hyper and h2 is then built and dispatched on the request path (that
            // halved HTTP/2 hit throughput until a benchmark caught it).
            Box::new(
                tracing_subscriber::layer::Identity::new().with_filter(filter::LevelFilter::OFF),
            ),
            Box::new(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(writer),
            ),
        ),
        LogFormat::Pretty => (
            Box::new(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer.clone())
                    .with_filter(is_access),
            ),
            Box::new(tracing_subscriber::fmt::layer().with_writer(writer)),
        ),
    };
    tracing_subscriber::registry()
        .with(access)
        .with(ops.with_filter(not_access).with_filter(ops_filter))
}

/// Sets up logging to stdout for the whole process; keep the guard alive until exit so buffered
/// lines are flushed.
///
/// Lines go through [`BatchWriter`], which writes them in batches from its own thread, so a
/// request never waits on stdout; when stdout stalls long enough to fill its buffer, lines are
/// dropped and counted rather than requests held up.
/// `RUST_LOG`, when set, overrides `log.level` for operational logs; the access log is always on.
pub fn init(format: LogFormat, level: &str) -> Result<(FlushGuard, LogControl), String> {
    let (writer, guard) =
        BatchWriter::new(std::io::stdout()).map_err(|e| format!("cannot start logging: {e}"))?;
    let writer_dropped = writer.dropped();
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let ops_filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .map_err(|e| format!("invalid log filter: {e}"))?;
    let (ops_filter, handle) = reload::Layer::new(ops_filter);
    let set = Box::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| format!("invalid log.level: {e}"))?;
        handle
            .reload(filter)
            .map_err(|e| format!("cannot change the log level: {e}"))
    });
    if format == LogFormat::Json {
        // Access lines bypass tracing (see `emit`).
        install(writer.clone())?;
    }
    subscriber(format, ops_filter, writer)
        .try_init()
        .map_err(|e| format!("logging was already set up: {e}"))?;
    let dropped = writer_dropped;
    Ok((
        guard,
        LogControl {
            set,
            from_env,
            dropped,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(record: &AccessRecord<'_>) -> serde_json::Value {
        let mut buf = Vec::new();
        format_record(record, SystemTime::now(), &mut buf);
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "exactly one line: {text}");
        assert!(text.ends_with('\n'));
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn no_line_exceeds_the_bound_whatever_the_caller_sends() {
        // Every caller-controlled field at its worst: huge, and made of characters that escape
        // to six bytes each.
        let huge = "\u{1}\"".repeat(30_000);
        let rec = AccessRecord {
            request_id: &huge,
            method: &huge,
            path: &huge,
            client: Some(&huge),
            reason: Some("bad_path"),
            upstream: Some(Duration::from_secs(1_000_000)),
            duration: Duration::from_secs(1_000_000),
            bytes: u64::MAX,
            ..record()
        };
        let mut line = Vec::new();
        format_record(&rec, SystemTime::now(), &mut line);
        assert!(line.len() <= MAX_LINE_BYTES, "{} bytes", line.len());
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert!(v["method"].as_str().unwrap().len() <= MAX_LOGGED_METHOD);
    }

    fn record() -> AccessRecord<'static> {
        AccessRecord {
            request_id: "req-1",
            method: "GET",
            path: "/phone-number/x",
            route: Some("get"),
            client: None,
            status: 200,
            cache: "hit",
            duration: Duration::from_micros(1234),
            upstream: None,
            key_id: None,
            reason: None,
            coalesced: false,
            tier: Some("l1"),
            bytes: 42,
        }
    }

    #[test]
    fn a_hit_logs_null_upstream_ms_and_all_contract_fields() {
        let v = capture(&record());
        for field in [
            "status",
            "cache",
            "method",
            "path",
            "duration_ms",
            "upstream_ms",
            "request_id",
            "key_id",
        ] {
            assert!(v.get(field).is_some(), "{field} missing in {v}");
        }
        assert_eq!(v["upstream_ms"], serde_json::Value::Null);
        assert_eq!(v["key_id"], serde_json::Value::Null);
        assert_eq!(v["status"], 200);
        assert_eq!(v["cache"], "hit");
        assert_eq!(v["duration_ms"], 1.234);
        assert_eq!(v["target"], TARGET);
    }

    #[test]
    fn a_miss_logs_upstream_ms_and_key_id() {
        let f = crate::credential::Fingerprinter::new(Some("0123456789abcdef")).unwrap();
        let key_id = f.fingerprint(b"tok").key_id();
        let v = capture(&AccessRecord {
            upstream: Some(Duration::from_millis(12)),
            key_id: Some(key_id),
            cache: "miss",
            ..record()
        });
        assert_eq!(v["upstream_ms"], 12.0);
        assert_eq!(v["key_id"], key_id.to_string());
    }

    #[test]
    fn every_field_is_present_in_every_line() {
        let v = capture(&record());
        let fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec![
            "timestamp",
            "level",
            "target",
            "message",
            "request_id",
            "method",
            "path",
            "route",
            "client",
            "status",
            "cache",
            "duration_ms",
            "upstream_ms",
            "key_id",
            "reason",
            "coalesced",
            "tier",
            "bytes",
        ];
        let mut got = fields.clone();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "request");
        assert_eq!(v["client"], serde_json::Value::Null);
        assert_eq!(v["reason"], serde_json::Value::Null);
        assert_eq!(v["coalesced"], false);
        assert_eq!(v["tier"], "l1");
        assert_eq!(v["bytes"], 42);
    }

    #[test]
    fn milliseconds_are_written_as_serde_json_writes_them() {
        for nanos in [
            0,
            499,
            500,
            1_000,
            1_234_000,
            1_234_567,
            12_000_000,
            12_300_000,
            999_999_999,
            86_400_000_000_000,
            1_000_000_000_000_000,
        ] {
            let d = Duration::from_nanos(nanos);
            let mut ours = Vec::new();
            write_millis(&mut ours, d);
            let theirs = serde_json::to_vec(&millis(d)).unwrap();
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(theirs).unwrap(),
                "{d:?}"
            );
        }
    }

    #[test]
    fn library_trace_events_stay_off_at_the_default_level() {
        // hyper and h2 have `trace!` calls on every frame: at `info` they must cost a disabled
        // callsite, not an event built and dispatched.
        for format in [LogFormat::Json, LogFormat::Pretty] {
            let (writer, _flush) = BatchWriter::new(std::io::sink()).unwrap();
            let (ops_filter, _handle) = reload::Layer::new(EnvFilter::new("info"));
            let subscriber = subscriber(format, ops_filter, writer);
            tracing::subscriber::with_default(subscriber, || {
                assert!(!tracing::enabled!(target: "h2::proto", tracing::Level::TRACE));
                assert!(!tracing::enabled!(target: "hyper::proto", tracing::Level::DEBUG));
                assert!(tracing::enabled!(target: "phonegate::server", tracing::Level::INFO));
            });
        }
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_394_832_827_074);
        let mut buf = Vec::new();
        write_timestamp(&mut buf, t);
        write_timestamp(&mut buf, t + Duration::from_micros(5));
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "2025-11-29T05:40:32.827074Z2025-11-29T05:40:32.827079Z"
        );
    }

    #[test]
    fn strange_paths_are_escaped_and_cut() {
        let path = format!("/\"quoted\"\n{}", "a".repeat(1000));
        let v = capture(&AccessRecord {
            path: &path,
            ..record()
        });
        let logged = v["path"].as_str().unwrap();
        assert!(logged.starts_with("/\"quoted\"\n"));
        assert_eq!(logged.len(), MAX_LOGGED_PATH);
    }
}

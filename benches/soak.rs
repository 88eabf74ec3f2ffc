//! Soak (issue 10): the release `phonegate` binary under a bounded run of mixed traffic, with its
//! resident memory, open file descriptors, threads and runtime tasks sampled; reports the slope of
//! each series over the second half of the run and whether it is flat. Prints markdown.
//!
//!   cargo bench --bench soak                  # 600 s of traffic (about 11.5 minutes in all)
//!   SOAK_SECS=60 cargo bench --bench soak     # a short check (30..=3600 s accepted)
//!
//! A run of a minute or two ends inside the warm-up (the cache takes about 70 s to reach its
//! steady size, the allocator longer) and reports RISING: it checks the machinery, not flatness.
//!
//! `cargo test --benches` runs nothing (it does not pass `--bench`).
//!
//! Set-up, all on loopback:
//! - the mock upstream (the `mock-vapi` crate, `tests/mock-vapi/`) in this process;
//! - the `phonegate` binary cargo built for this bench (`target/release/phonegate`, the bench
//!   profile inherits `release`), copied to a temporary file first so a concurrent rebuild cannot
//!   touch the running executable, started as a child process configured by environment variables
//!   only, stdout (the JSON access log) to /dev/null, stderr to a temporary file;
//! - the load generator: tokio tasks in this process, each pacing itself to a fixed rate, over
//!   keep-alive connections (hyper-util's pooled client, HTTP/1.1 and h2c) and raw sockets.
//!
//! Traffic (about 1,100 requests/s offered in all; see [`CLASSES`]): hits on the five fixture ids
//! with four fixed credentials; misses (random ids, answered 404, and list queries) with eight
//! fixed credentials; many credentials (a new random token every [`REQUESTS_PER_CREDENTIAL`]
//! requests, about 20 new ones a second); bad input (bad ids and paths, malformed or missing
//! `Authorization`, a 70 KiB header, bad list parameters, wrong methods, PATCH bodies with a
//! duplicate key or the redaction placeholder, a GET with a body, an over-long path, the key the
//! upstream refuses); raw garbage on a TCP socket; connections dropped abruptly (at once, mid-head,
//! before reading the answer, during an upstream fetch, after holding a partial head for seconds);
//! a valid PATCH now and then. Upstream faults: every [`NORMAL_PHASE`] of normal service is
//! followed by [`FAULT_PHASE`] of one fault, in turn: 500, 503, an HTML 502, 300 ms delays, 7 s
//! delays (past `upstream.timeout_ms`), 429 with `Retry-After: 3`, a body cut mid-way, garbage.
//!
//! Sampled every [`SAMPLE_EVERY`]: VmRSS and Threads from `/proc/<pid>/status`, the entries of
//! `/proc/<pid>/fd`, and from the admin `/metrics`: `phonegate_tasks_alive`,
//! `phonegate_open_connections`, `phonegate_cache_entries`, `phonegate_cache_bytes`; the socket
//! fds are split into connections accepted on the proxy port and connections to the upstream
//! (from `/proc/<pid>/net/tcp`). After the traffic stops (and the load generator's connections
//! are closed), the process is sampled again at [`IDLE_AFTER`] and after one more miss, and
//! compared with the sample taken before any traffic. Then SIGTERM, which must end it with exit
//! status 0.
//!
//! Verdicts (see [`Series`]): a least-squares line through the samples of the second half of the
//! run (the first half is warm-up: allocator arenas, connection pools, the cache reaching the size
//! its TTLs allow). "flat" when the slope is within the series' limit. A slope above the limit
//! but within two standard errors of zero is reported as "noisy" (not distinguishable from flat,
//! not proven flat); one above both is "RISING"/"FALLING" and fails the bench. Limits: RSS and the
//! cache 1% of their second-half mean per minute (at ~40 MiB, 0.4 MiB a minute, which would be
//! ~0.6 GiB a day; at ~63,000 requests and ~1,100 new credentials a minute that is ~6 bytes per
//! request or ~360 bytes per credential: smaller leaks are below what a 10-minute run can see, and
//! the report prints the measured slope per request and per credential as a bound); fds, threads,
//! tasks and connections 1 a minute (one per ~60,000 requests). fds and tasks are also reported
//! without the upstream pool's sockets and their connection tasks, which follow upstream latency
//! (a 300 ms delay phase opens a dozen more; the pool drops them only when next used). A watchdog
//! kills the child and exits if the run overstays its time by [`WATCHDOG_SLACK`].

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mock_vapi::{Behavior, FIXTURE_IDS, MockVapi};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use uuid::Uuid;

/// Seconds of traffic without `SOAK_SECS`, and the range it may take.
const DEFAULT_SECS: u64 = 600;
const MIN_SECS: u64 = 30;
const MAX_SECS: u64 = 3600;
/// How often the process is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// After the traffic stops: when the idle samples are taken. The first is past
/// `server.idle_timeout_ms` (10 s); the second past the longest life of a cache entry
/// (TTL 2 s + stale window 60 s), past the 50 s idle timeout of phonegate's upstream pool too.
/// Then one more miss is sent (on a connection closed right after) and a last sample taken: the
/// upstream pool drops expired connections when it is next used (see [`Report::print`]).
const IDLE_AFTER: [u64; 2] = [15, 65];
/// Deadline of one request of the load generator.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the run may overstay before the watchdog ends it.
const WATCHDOG_SLACK: Duration = Duration::from_secs(300);
/// Upstream fault schedule: this long normal, then this long one fault.
const NORMAL_PHASE: Duration = Duration::from_secs(20);
const FAULT_PHASE: Duration = Duration::from_secs(5);
/// Requests made with each random credential of the `credentials` class.
const REQUESTS_PER_CREDENTIAL: u64 = 5;
/// Credentials of the `hits` classes, and of the `misses` class.
const HIT_TOKENS: [&str; 4] = [
    "soak-hit-token-a",
    "soak-hit-token-b",
    "soak-hit-token-c",
    "soak-hit-token-d",
];
const MISS_TOKENS: usize = 8;

/// phonegate's settings (environment variables) besides the ports and the upstream URL.
const SETTINGS: &[(&str, &str)] = &[
    // Short freshness so misses keep happening for the fixed credentials too.
    ("PHONEGATE__CACHE__TTL_SECS", "2"),
    ("PHONEGATE__CACHE__LIST_TTL_SECS", "2"),
    ("PHONEGATE__CACHE__NEGATIVE_TTL_SECS", "2"),
    // Default 300: an entry would live 302 s, so with a steady stream of new credentials the
    // cache would still be growing towards its plateau at the middle of a 10-minute run. 60 s
    // keeps the stale-if-error path busy and lets the cache settle within the warm-up.
    ("PHONEGATE__CACHE__STALE_IF_ERROR_SECS", "60"),
    // The default per-credential miss budget, stated: realistic, and refusals are part of the mix.
    ("PHONEGATE__LIMITS__MISSES_PER_SEC_PER_KEY", "20"),
    ("PHONEGATE__LIMITS__MISS_BURST", "40"),
    ("PHONEGATE__LOG__FORMAT", "json"),
    ("PHONEGATE__LOG__LEVEL", "info"),
];

/// A traffic class: its name, how many tasks run it, and each task's rate (requests/s).
struct Class {
    name: &'static str,
    tasks: usize,
    rate: f64,
}

const CLASSES: &[Class] = &[
    Class {
        name: "hits-h1",
        tasks: 4,
        rate: 175.0,
    },
    Class {
        name: "hits-h2",
        tasks: 1,
        rate: 100.0,
    },
    Class {
        name: "misses",
        tasks: 2,
        rate: 50.0,
    },
    Class {
        name: "credentials",
        tasks: 2,
        rate: 50.0,
    },
    Class {
        name: "bad-input",
        tasks: 1,
        rate: 60.0,
    },
    Class {
        name: "raw-garbage",
        tasks: 1,
        rate: 10.0,
    },
    Class {
        name: "dropped",
        tasks: 1,
        rate: 10.0,
    },
    Class {
        name: "writes",
        tasks: 1,
        rate: 1.0,
    },
];

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and must stay quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("soak: skipped (run it with `cargo bench --bench soak`)");
        return ExitCode::SUCCESS;
    }
    let secs = match soak_secs() {
        Ok(secs) => secs,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("soak")
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(Duration::from_secs(secs)))
}

/// `SOAK_SECS`, default [`DEFAULT_SECS`], clamped to [`MIN_SECS`]..=[`MAX_SECS`].
fn soak_secs() -> Result<u64, String> {
    let Ok(raw) = std::env::var("SOAK_SECS") else {
        return Ok(DEFAULT_SECS);
    };
    let secs: u64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("SOAK_SECS={raw:?} is not a whole number of seconds"))?;
    let clamped = secs.clamp(MIN_SECS, MAX_SECS);
    if clamped != secs {
        eprintln!("soak: SOAK_SECS={secs} clamped to {clamped} ({MIN_SECS}..={MAX_SECS})");
    }
    Ok(clamped)
}

async fn run(duration: Duration) -> ExitCode {
    let started = Instant::now();
    let binary = match phonegate_binary() {
        Ok(path) => path,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mock = MockVapi::builder().record_limit(100).start().await;
    let (listen, admin) = free_ports();
    let stderr_path =
        std::env::temp_dir().join(format!("phonegate-soak-{}.stderr", std::process::id()));
    let mut child = match spawn(&binary, listen, admin, &mock.url(), &stderr_path) {
        Ok(child) => ChildGuard(child),
        Err(e) => {
            eprintln!("soak: cannot start {}: {e}", binary.display());
            return ExitCode::FAILURE;
        }
    };
    let pid = child.0.id();
    watchdog(
        pid,
        duration + Duration::from_secs(IDLE_AFTER[IDLE_AFTER.len() - 1]) + WATCHDOG_SLACK,
    );

    let target = Target {
        pid,
        admin,
        client: http1_client(),
        listen_port: listen.port(),
        upstream_port: mock.addr().port(),
    };
    if let Err(e) = wait_ready(&mut child.0, &target.client, admin).await {
        eprintln!("soak: {e}; stderr: {}", read_lossy(&stderr_path));
        return ExitCode::FAILURE;
    }

    println!(
        "# phonegate soak: {} s of mixed traffic\n",
        duration.as_secs()
    );
    print_setup(&binary, pid, duration);

    let baseline = match sample(&target, 0.0, 0, &[], "-").await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("soak: first sample failed: {e}");
            return ExitCode::FAILURE;
        }
    };

    // Traffic.
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(Mutex::new("normal".to_owned()));
    let mut tasks = JoinSet::new();
    let clients = Clients {
        h1: http1_client(),
        h2: http2_client(),
        bad: http1_client(),
        misses: http1_client(),
        credentials: http1_client(),
        writes: http1_client(),
    };
    for class in CLASSES {
        for i in 0..class.tasks {
            let ctx = Ctx {
                class: class.name,
                addr: listen,
                stats: Arc::clone(&stats),
                stop: Arc::clone(&stop),
                clients: clients.clone(),
            };
            let period = Duration::from_secs_f64(1.0 / class.rate);
            tasks.spawn(drive(ctx, period, i));
        }
    }
    tasks.spawn(faults(
        mock.clone(),
        Arc::clone(&stop),
        Arc::clone(&phase),
        Arc::clone(&stats),
    ));
    let traffic_start = Instant::now();

    let mut samples = vec![baseline.clone()];
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::from_std(traffic_start + SAMPLE_EVERY),
        SAMPLE_EVERY,
    );
    let mut sample_failures = 0;
    let mut died = None;
    loop {
        ticks.tick().await;
        let t = traffic_start.elapsed().as_secs_f64();
        if let Ok(Some(status)) = child.0.try_wait() {
            died = Some(status);
            break;
        }
        let latencies = stats.take_latencies();
        let fault = phase.lock().expect("phase lock").clone();
        match sample(&target, t, stats.total(), &latencies, &fault).await {
            Ok(s) => {
                eprintln!(
                    "soak: t={:>4.0}s rss={:.1}MiB fds={} threads={} tasks={} conns={} cache={} rps={:.0} [{fault}]",
                    s.t,
                    s.rss_kib as f64 / 1024.0,
                    s.fds,
                    s.threads,
                    s.tasks,
                    s.conns,
                    s.cache_entries,
                    rate(samples.last(), &s),
                );
                samples.push(s);
            }
            Err(e) => {
                sample_failures += 1;
                eprintln!("soak: sample at {t:.0} s failed: {e}");
            }
        }
        if traffic_start.elapsed() + Duration::from_millis(500) >= duration {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let traffic_secs = traffic_start.elapsed().as_secs_f64();
    let joined = tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if joined.is_err() {
        eprintln!("soak: some load tasks did not finish in time; aborted");
        tasks.abort_all();
    }
    mock.set_behavior(Behavior::Normal);
    // Closes the load generator's pooled keep-alive connections.
    drop(clients);
    let stopped = Instant::now();

    // Idle samples, compared with the one before any traffic.
    let mut idle = Vec::new();
    if died.is_none() {
        for after in IDLE_AFTER {
            let at = stopped + Duration::from_secs(after);
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            if let Ok(Some(status)) = child.0.try_wait() {
                died = Some(status);
                break;
            }
            let t = traffic_start.elapsed().as_secs_f64();
            match sample(&target, t, stats.total(), &[], "stopped").await {
                Ok(s) => idle.push((format!("{after} s after it stopped"), s)),
                Err(e) => {
                    sample_failures += 1;
                    eprintln!("soak: idle sample failed: {e}");
                }
            }
        }
        if died.is_none() {
            let client = http1_client();
            let path = format!("/phone-number/{}", Uuid::new_v4());
            let r = send(&client, get(listen, &path, Some("soak-last-token"))).await;
            drop(client);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let t = traffic_start.elapsed().as_secs_f64();
            match sample(&target, t, stats.total(), &[], "normal").await {
                Ok(s) => idle.push((format!("then one more miss ({})", outcome(r)), s)),
                Err(e) => {
                    sample_failures += 1;
                    eprintln!("soak: idle sample failed: {e}");
                }
            }
        }
    }

    let counters = match metrics(&target.client, admin).await {
        Ok(text) => counters(&text),
        Err(_) => Vec::new(),
    };

    // Shutdown.
    let exit = match died {
        Some(status) => Err(format!("phonegate DIED during the run: {status}")),
        None => terminate(&mut child.0).await,
    };

    let report = Report {
        duration,
        traffic_secs,
        samples,
        idle,
        baseline,
        outcomes: stats.outcomes(),
        phases: stats.phases.load(Ordering::Relaxed),
        credentials: stats.credentials.load(Ordering::Relaxed),
        sample_failures,
        counters,
        exit,
        stderr: read_lossy(&stderr_path),
    };
    let ok = report.print();
    let _ = std::fs::remove_file(&stderr_path);
    let _ = std::fs::remove_file(&binary);
    println!(
        "\nWall time: {:.0} s. Load average at the end (/proc/loadavg): {}.",
        started.elapsed().as_secs_f64(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The release binary cargo built for this bench, copied to a temporary path.
fn phonegate_binary() -> Result<PathBuf, String> {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_phonegate"));
    if !built.is_file() {
        return Err(format!(
            "{} is missing: build it with `cargo build --release` (or run this through \
             `cargo bench --bench soak`, which builds it)",
            built.display()
        ));
    }
    let copy = std::env::temp_dir().join(format!("phonegate-soak-{}", std::process::id()));
    std::fs::copy(&built, &copy).map_err(|e| format!("cannot copy {}: {e}", built.display()))?;
    eprintln!("soak: running a copy of {}", built.display());
    Ok(copy)
}

/// Two free loopback ports (bound together, then released: a small race, acceptable).
fn free_ports() -> (SocketAddr, SocketAddr) {
    let a = StdTcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let b = StdTcpListener::bind("127.0.0.1:0").expect("bind a free port");
    (a.local_addr().expect("addr"), b.local_addr().expect("addr"))
}

fn spawn(
    binary: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: &str,
    stderr_path: &Path,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(binary);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("PHONEGATE") || k == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    cmd.env("PHONEGATE__LISTEN", listen.to_string())
        .env("PHONEGATE__ADMIN__LISTEN", admin.to_string())
        .env("PHONEGATE__UPSTREAM__URL", upstream)
        .envs(SETTINGS.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(stderr_path)?);
    cmd.spawn()
}

/// Kills the child if the bench ends (or panics) while it still runs.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Ends everything if the run overstays `limit`.
fn watchdog(pid: u32, limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("soak: watchdog: still running after {limit:?}; killing phonegate and exiting");
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
        std::process::exit(2);
    });
}

async fn wait_ready(
    child: &mut Child,
    client: &HttpClient,
    admin: SocketAddr,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("phonegate exited before becoming ready ({status})"));
        }
        let req = get(admin, "/readyz", None);
        if let Ok((StatusCode::OK, _)) = send(client, req).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("phonegate did not answer GET /readyz with 200 within 15 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, then a bounded wait for the exit; Ok(description) when it exits 0.
async fn terminate(child: &mut Child) -> Result<String, String> {
    let sent = Instant::now();
    let kill = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    if !matches!(kill, Ok(s) if s.success()) {
        return Err(format!("kill -TERM failed: {kill:?}"));
    }
    let deadline = sent + Duration::from_secs(30);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => {
                return Ok(format!(
                    "exit status 0, {:.2} s after SIGTERM",
                    sent.elapsed().as_secs_f64()
                ));
            }
            Ok(Some(status)) => return Err(format!("exited with {status} after SIGTERM")),
            Ok(None) if Instant::now() > deadline => {
                return Err("still running 30 s after SIGTERM".into());
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => return Err(format!("wait failed: {e}")),
        }
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn print_setup(binary: &Path, pid: u32, duration: Duration) {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let head = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = git(&[
        "status",
        "--porcelain",
        "--",
        "src",
        "Cargo.toml",
        "Cargo.lock",
    ]);
    let dirty: Vec<&str> = dirty
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    println!(
        "Binary: `target/release/phonegate` (copied to {}), pid {pid}, built from {head}{}.",
        binary.display(),
        if dirty.is_empty() {
            String::new()
        } else {
            format!(" with uncommitted changes in {}", dirty.join(", "))
        }
    );
    println!(
        "Config: defaults plus {}.",
        SETTINGS
            .iter()
            .map(|(k, v)| format!("`{k}={v}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let offered: f64 = CLASSES.iter().map(|c| c.tasks as f64 * c.rate).sum();
    println!(
        "Traffic: {} s, {:.0} requests/s offered: {}.",
        duration.as_secs(),
        offered,
        CLASSES
            .iter()
            .map(|c| format!("{} {:.0}/s", c.name, c.tasks as f64 * c.rate))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "Upstream faults: {} s normal, then {} s of one of: {}, in turn.\n",
        NORMAL_PHASE.as_secs(),
        FAULT_PHASE.as_secs(),
        fault_list()
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    );
}

// ---------------------------------------------------------------------------------------------
// Load generation

#[derive(Clone)]
struct Clients {
    h1: HttpClient,
    h2: HttpClient,
    bad: HttpClient,
    misses: HttpClient,
    credentials: HttpClient,
    writes: HttpClient,
}

struct Ctx {
    class: &'static str,
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    clients: Clients,
}

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c
}

fn http1_client() -> HttpClient {
    // Idle pooled connections are dropped before phonegate's 10 s idle timeout closes them.
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(16)
        .build(connector())
}

fn http2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .pool_idle_timeout(Duration::from_secs(5))
        .build(connector())
}

#[derive(Default)]
struct Stats {
    outcomes: Mutex<BTreeMap<(String, String), u64>>,
    total: AtomicU64,
    /// Latencies of `hits-h1` requests since the last sample, in microseconds.
    latencies: Mutex<Vec<u32>>,
    phases: AtomicU64,
    credentials: AtomicU64,
}

impl Stats {
    fn record(&self, class: &str, outcome: String) {
        self.total.fetch_add(1, Ordering::Relaxed);
        *self
            .outcomes
            .lock()
            .expect("outcomes lock")
            .entry((class.to_owned(), outcome))
            .or_default() += 1;
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn take_latencies(&self) -> Vec<u32> {
        std::mem::take(&mut *self.latencies.lock().expect("latency lock"))
    }

    fn outcomes(&self) -> BTreeMap<(String, String), u64> {
        self.outcomes.lock().expect("outcomes lock").clone()
    }
}

/// xorshift64*, seeded from a random UUID.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        Rng((Uuid::new_v4().as_u128() as u64) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fixture(&mut self) -> &'static str {
        FIXTURE_IDS[self.below(FIXTURE_IDS.len() as u64) as usize].1
    }
}

fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{addr}{path}"));
    if let Some(token) = token {
        b = b.header("authorization", format!("Bearer {token}"));
    }
    b.body(Full::new(Bytes::new())).expect("request")
}

fn patch(addr: SocketAddr, id: &str, token: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::PATCH)
        .uri(format!("http://{addr}/phone-number/{id}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request")
}

/// Sends `req` and reads the whole answer: (status, `x-cache`), or what went wrong.
async fn send(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Option<String>), &'static str> {
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            if e.is_connect() {
                "connect error"
            } else {
                "request error"
            }
        })?;
        let status = resp.status();
        let cache = resp
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        resp.into_body().collect().await.map_err(|_| "body error")?;
        Ok((status, cache))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or(Err("timeout"))
}

fn outcome(result: Result<(StatusCode, Option<String>), &'static str>) -> String {
    match result {
        Ok((status, Some(cache))) => format!("{} {cache}", status.as_u16()),
        Ok((status, None)) => status.as_u16().to_string(),
        Err(e) => e.to_owned(),
    }
}

/// One load task: `ctx.class` at one request per `period` until told to stop.
async fn drive(ctx: Ctx, period: Duration, index: usize) {
    let mut rng = Rng::new();
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut token = String::new();
    let mut held = JoinSet::new();
    let mut n: u64 = 0;
    while !ctx.stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        n += 1;
        let addr = ctx.addr;
        let result = match ctx.class {
            "hits-h1" | "hits-h2" => {
                let client = if ctx.class == "hits-h1" {
                    &ctx.clients.h1
                } else {
                    &ctx.clients.h2
                };
                let tok = HIT_TOKENS[rng.below(HIT_TOKENS.len() as u64) as usize];
                let req = get(addr, &format!("/phone-number/{}", rng.fixture()), Some(tok));
                let t0 = Instant::now();
                let r = send(client, req).await;
                if ctx.class == "hits-h1" {
                    let us = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
                    ctx.stats.latencies.lock().expect("latency lock").push(us);
                }
                outcome(r)
            }
            "misses" => {
                let tok = format!("soak-miss-token-{}", rng.below(MISS_TOKENS as u64));
                let path = match rng.below(10) {
                    0..=6 => format!("/phone-number/{}", Uuid::new_v4()),
                    7 | 8 => format!("/phone-number?limit={}", rng.below(50)),
                    _ => format!(
                        "/v2/phone-number?page={}&limit={}",
                        1 + rng.below(5),
                        rng.below(20)
                    ),
                };
                outcome(send(&ctx.clients.misses, get(addr, &path, Some(&tok))).await)
            }
            "credentials" => {
                if (n - 1) % REQUESTS_PER_CREDENTIAL == 0 {
                    token = format!("soak-cred-{}", Uuid::new_v4().simple());
                    ctx.stats.credentials.fetch_add(1, Ordering::Relaxed);
                }
                let path = if rng.below(5) == 0 {
                    format!("/phone-number/{}", Uuid::new_v4())
                } else {
                    format!("/phone-number/{}", rng.fixture())
                };
                outcome(send(&ctx.clients.credentials, get(addr, &path, Some(&token))).await)
            }
            "bad-input" => bad_input(&ctx, &mut rng).await,
            "raw-garbage" => raw_garbage(addr, &mut rng).await,
            "dropped" => dropped(addr, &mut rng, &mut held).await,
            "writes" => {
                let id = rng.fixture();
                let body = if n % 2 == 0 {
                    r#"{"name":"soak even"}"#
                } else {
                    r#"{"name":"soak odd"}"#
                };
                let req = patch(addr, id, HIT_TOKENS[index % HIT_TOKENS.len()], body);
                outcome(send(&ctx.clients.writes, req).await)
            }
            other => unreachable!("unknown class {other}"),
        };
        ctx.stats.record(ctx.class, result);
        while held.try_join_next().is_some() {}
    }
    while held.join_next().await.is_some() {}
}

/// Requests phonegate must refuse (or relay a refusal for), over a pooled keep-alive client.
async fn bad_input(ctx: &Ctx, rng: &mut Rng) -> String {
    let addr = ctx.addr;
    let client = &ctx.clients.bad;
    let id = rng.fixture();
    let tok = Some(HIT_TOKENS[0]);
    let with_auth = |value: &str| {
        Request::builder()
            .uri(format!("http://{addr}/phone-number/{id}"))
            .header("authorization", value)
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let (label, req) = match rng.below(13) {
        0 => ("bad id", get(addr, "/phone-number/not-a-uuid", tok)),
        1 => ("basic auth", with_auth("Basic dXNlcjpwYXNzd29yZA==")),
        2 => ("malformed bearer", with_auth("Bearer bad token!")),
        3 => ("no auth", get(addr, &format!("/phone-number/{id}"), None)),
        4 => {
            let mut req = get(addr, &format!("/phone-number/{id}"), tok);
            let pad = "a".repeat(70 * 1024);
            req.headers_mut()
                .insert("x-pad", pad.parse().expect("header value"));
            ("70 KiB header", req)
        }
        5 => ("bad list limit", get(addr, "/phone-number?limit=5000", tok)),
        6 => {
            let mut req = get(addr, &format!("/phone-number/{id}"), tok);
            *req.method_mut() = Method::PUT;
            ("PUT", req)
        }
        7 => (
            "PATCH duplicate key",
            patch(addr, id, HIT_TOKENS[0], r#"{"name":"a","name":"b"}"#),
        ),
        8 => (
            "PATCH placeholder",
            patch(
                addr,
                id,
                HIT_TOKENS[0],
                r#"{"twilioAuthToken":"[REDACTED]"}"#,
            ),
        ),
        9 => (
            "encoded dot segments",
            get(addr, "/phone-number/%2e%2e%2Fadmin", tok),
        ),
        10 => (
            "refused key",
            get(
                addr,
                &format!("/phone-number/{id}"),
                Some(mock_vapi::INVALID_TOKEN),
            ),
        ),
        11 => {
            let mut req = get(addr, &format!("/phone-number/{id}"), tok);
            *req.body_mut() = Full::new(Bytes::from_static(b"{\"a\":1}"));
            ("GET with body", req)
        }
        _ => {
            let long = format!("/phone-number/{}", "a".repeat(1100));
            ("long path", get(addr, &long, tok))
        }
    };
    format!("{label}: {}", outcome(send(client, req).await))
}

/// Bytes that are not (valid) HTTP on a fresh socket; the answer's status or what happened.
async fn raw_garbage(addr: SocketAddr, rng: &mut Rng) -> String {
    let (label, bytes): (&str, Vec<u8>) = match rng.below(4) {
        0 => {
            let len = 1 + rng.below(512) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            b.extend_from_slice(b"\r\n\r\n");
            ("random bytes", b)
        }
        1 => (
            "TE+CL",
            b"GET /phone-number HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
              Content-Length: 5\r\n\r\n0\r\n\r\n"
                .to_vec(),
        ),
        2 => ("not HTTP", b"HELLO phonegate\r\n\r\n".to_vec()),
        _ => (
            "bad version",
            b"GET /phone-number HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
        ),
    };
    let exchange = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|_| "connect error".to_owned())?;
        s.write_all(&bytes)
            .await
            .map_err(|_| "write error".to_owned())?;
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        loop {
            match s.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.len() >= 12 {
                        break;
                    }
                }
                Err(_) if !got.is_empty() => break,
                Err(_) => return Ok("reset".to_owned()),
            }
        }
        Ok(match got.get(9..12) {
            Some(code) if got.starts_with(b"HTTP/1.") => String::from_utf8_lossy(code).into_owned(),
            _ if got.is_empty() => "closed without answer".to_owned(),
            _ => "non-HTTP answer".to_owned(),
        })
    };
    let r = tokio::time::timeout(Duration::from_secs(3), exchange)
        .await
        .unwrap_or_else(|_| Err("no answer in 3 s".to_owned()));
    format!("{label}: {}", r.unwrap_or_else(|e| e))
}

/// Connections that end abruptly, in various states.
async fn dropped(addr: SocketAddr, rng: &mut Rng, held: &mut JoinSet<()>) -> String {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await
    else {
        return "connect error".into();
    };
    let id = rng.fixture();
    match rng.below(5) {
        0 => "dropped at once".into(),
        1 => {
            let _ = s.write_all(b"GET /phone-number/").await;
            "dropped mid-head".into()
        }
        2 => {
            let req = format!(
                "GET /phone-number/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
                HIT_TOKENS[1]
            );
            let _ = s.write_all(req.as_bytes()).await;
            "dropped before reading (hit)".into()
        }
        3 => {
            // A miss with a fresh credential (its own budget): the upstream fetch is under way
            // when the client goes.
            let req = format!(
                "GET /phone-number/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer soak-drop-{}\r\n\r\n",
                Uuid::new_v4(),
                Uuid::new_v4().simple()
            );
            let _ = s.write_all(req.as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            "dropped during upstream fetch".into()
        }
        _ => {
            let hold = Duration::from_millis(1000 + rng.below(2000));
            held.spawn(async move {
                let _ = s
                    .write_all(b"GET /phone-number/ HTTP/1.1\r\nHost: x\r\n")
                    .await;
                tokio::time::sleep(hold).await;
                drop(s);
            });
            "partial head held 1-3 s, then dropped".into()
        }
    }
}

fn fault_list() -> Vec<(&'static str, Behavior)> {
    vec![
        ("500", Behavior::Status(500)),
        ("503", Behavior::Status(503)),
        ("HTML 502", Behavior::HtmlError(502)),
        ("300 ms delay", Behavior::Delay(Duration::from_millis(300))),
        ("7 s delay", Behavior::Delay(Duration::from_secs(7))),
        (
            "429 Retry-After: 3",
            Behavior::RateLimited {
                retry_after: Some("3".into()),
            },
        ),
        ("close mid-body", Behavior::CloseMidBody),
        ("garbage", Behavior::Garbage),
    ]
}

/// Toggles the upstream between normal service and one fault at a time until told to stop.
async fn faults(
    mock: MockVapi,
    stop: Arc<AtomicBool>,
    phase: Arc<Mutex<String>>,
    stats: Arc<Stats>,
) {
    let list = fault_list();
    let sleep_unless_stopped = |d: Duration| {
        let stop = Arc::clone(&stop);
        async move {
            let until = Instant::now() + d;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) {
        sleep_unless_stopped(NORMAL_PHASE).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (name, behavior) = &list[k % list.len()];
        k += 1;
        stats.phases.fetch_add(1, Ordering::Relaxed);
        *phase.lock().expect("phase lock") = (*name).to_owned();
        mock.set_behavior(behavior.clone());
        sleep_unless_stopped(FAULT_PHASE).await;
        mock.set_behavior(Behavior::Normal);
        *phase.lock().expect("phase lock") = "normal".to_owned();
    }
}

// ---------------------------------------------------------------------------------------------
// Sampling

/// The process under test and how to reach it.
struct Target {
    pid: u32,
    admin: SocketAddr,
    client: HttpClient,
    listen_port: u16,
    upstream_port: u16,
}

#[derive(Debug, Clone)]
struct Sample {
    /// Seconds since the traffic started (0 for the sample before it).
    t: f64,
    rss_kib: u64,
    fds: u64,
    /// Of the fds: TCP connections accepted on the proxy port, and to the upstream.
    client_socks: u64,
    upstream_socks: u64,
    threads: u64,
    tasks: f64,
    conns: f64,
    cache_entries: f64,
    cache_bytes: f64,
    /// Requests the load generator had completed (all classes).
    requests: u64,
    /// `hits-h1` latency percentiles since the previous sample, microseconds.
    hit_p50: Option<u32>,
    hit_p99: Option<u32>,
    fault: String,
}

async fn sample(
    target: &Target,
    t: f64,
    requests: u64,
    latencies: &[u32],
    fault: &str,
) -> Result<Sample, String> {
    let pid = target.pid;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    let field = |name: &str| -> Result<u64, String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))
    };
    let rss_kib = field("VmRSS:")?;
    let threads = field("Threads:")?;
    let fd_links: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("read /proc/{pid}/fd: {e}"))?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    let fds = fd_links.len() as u64;
    let (client_socks, upstream_socks) = sockets(target, &fd_links);
    let text = metrics(&target.client, target.admin).await?;
    let gauge = |name: &str| -> Result<f64, String> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no {name} in /metrics"))
    };
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let pct = |p: f64| {
        (!sorted.is_empty()).then(|| sorted[((sorted.len() - 1) as f64 * p).round() as usize])
    };
    Ok(Sample {
        t,
        rss_kib,
        fds,
        client_socks,
        upstream_socks,
        threads,
        tasks: gauge("phonegate_tasks_alive")?,
        conns: gauge("phonegate_open_connections")?,
        cache_entries: gauge("phonegate_cache_entries")?,
        cache_bytes: gauge("phonegate_cache_bytes")?,
        requests,
        hit_p50: pct(0.50),
        hit_p99: pct(0.99),
        fault: fault.to_owned(),
    })
}

/// Of the process's socket fds: (connections accepted on the proxy port, connections to the
/// upstream), from `/proc/<pid>/net/tcp{,6}`.
fn sockets(target: &Target, fd_links: &[String]) -> (u64, u64) {
    let inodes: std::collections::HashSet<&str> = fd_links
        .iter()
        .filter_map(|l| l.strip_prefix("socket:[")?.strip_suffix(']'))
        .collect();
    let port = |field: &str| {
        field
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let (mut client, mut upstream) = (0, 0);
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{}/net/{table}", target.pid)) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || !inodes.contains(f[9]) {
                continue;
            }
            // 0A: LISTEN
            if f[3] == "0A" {
                continue;
            }
            if port(f[1]) == Some(target.listen_port) {
                client += 1;
            } else if port(f[2]) == Some(target.upstream_port) {
                upstream += 1;
            }
        }
    }
    (client, upstream)
}

async fn metrics(client: &HttpClient, admin: SocketAddr) -> Result<String, String> {
    let req = get(admin, "/metrics", None);
    let fetch = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("GET /metrics: {e}"))?;
        if resp.status() != StatusCode::OK {
            return Err(format!("GET /metrics: {}", resp.status()));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("GET /metrics body: {e}"))?
            .to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .unwrap_or_else(|_| Err("GET /metrics timed out".into()))
}

/// The counters worth reporting from a `/metrics` text: refusals, stale answers, upstream answers
/// and failures, coalesced waits, dropped log lines (histograms and gauges left out).
fn counters(text: &str) -> Vec<(String, String)> {
    const WANTED: &[&str] = &[
        "phonegate_refusals_total",
        "phonegate_stale_served_total",
        "phonegate_upstream_responses_total",
        "phonegate_upstream_failures_total",
        "phonegate_coalesced_waits_total",
        "phonegate_log_lines_dropped_total",
    ];
    text.lines()
        .filter(|l| WANTED.iter().any(|w| l.starts_with(w)))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Requests/s between two samples.
fn rate(prev: Option<&Sample>, s: &Sample) -> f64 {
    match prev {
        Some(p) if s.t > p.t => (s.requests - p.requests) as f64 / (s.t - p.t),
        _ => 0.0,
    }
}

// ---------------------------------------------------------------------------------------------
// Report

/// A sampled series and its flatness criterion.
struct Series {
    name: &'static str,
    unit: &'static str,
    value: fn(&Sample) -> f64,
    /// Largest |slope| per minute called flat: `Relative(f)` is f times the second-half mean,
    /// `Absolute(x)` is x units.
    limit: Limit,
}

#[derive(Clone, Copy)]
enum Limit {
    Relative(f64),
    Absolute(f64),
}

const SERIES: &[Series] = &[
    Series {
        name: "RSS",
        unit: "MiB",
        value: |s| s.rss_kib as f64 / 1024.0,
        limit: Limit::Relative(0.01),
    },
    Series {
        name: "open fds",
        unit: "",
        value: |s| s.fds as f64,
        limit: Limit::Absolute(1.0),
    },
    Series {
        name: "open fds, upstream sockets excluded",
        unit: "",
        value: |s| s.fds.saturating_sub(s.upstream_socks) as f64,
        limit: Limit::Absolute(1.0),
    },
    Series {
        name: "threads",
        unit: "",
        value: |s| s.threads as f64,
        limit: Limit::Absolute(1.0),
    },
    Series {
        name: "tasks alive",
        unit: "",
        value: |s| s.tasks,
        limit: Limit::Absolute(1.0),
    },
    Series {
        name: "tasks alive, upstream connections excluded",
        unit: "",
        // One connection task per pooled upstream connection (HTTP/1.1 to the mock).
        value: |s| s.tasks - s.upstream_socks as f64,
        limit: Limit::Absolute(1.0),
    },
    Series {
        name: "open connections",
        unit: "",
        value: |s| s.conns,
        limit: Limit::Absolute(1.0),
    },
    Series {
        name: "cache entries",
        unit: "",
        value: |s| s.cache_entries,
        limit: Limit::Relative(0.01),
    },
    Series {
        name: "cache bytes",
        unit: "MiB",
        value: |s| s.cache_bytes / (1024.0 * 1024.0),
        limit: Limit::Relative(0.01),
    },
];

/// Least-squares fit of y over x: (slope, standard error of the slope).
fn fit(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    if points.len() < 3 {
        return (f64::NAN, f64::NAN);
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let ss: f64 = points
        .iter()
        .map(|p| (p.1 - my - slope * (p.0 - mx)).powi(2))
        .sum();
    let se = (ss / (n - 2.0) / sxx).sqrt();
    (slope, se)
}

struct Report {
    duration: Duration,
    traffic_secs: f64,
    samples: Vec<Sample>,
    idle: Vec<(String, Sample)>,
    baseline: Sample,
    outcomes: BTreeMap<(String, String), u64>,
    phases: u64,
    credentials: u64,
    sample_failures: u32,
    /// Counters of the last `/metrics` scrape (refusals, stale answers, upstream failures, ...).
    counters: Vec<(String, String)>,
    exit: Result<String, String>,
    stderr: String,
}

impl Report {
    /// Prints the report; true when every series is flat or noisy and the exit was clean.
    fn print(&self) -> bool {
        let mut ok = true;
        let total: u64 = self.outcomes.values().sum();
        println!(
            "Completed {} requests in {:.0} s ({:.0}/s), {} random credentials, {} fault phases; \
             {} failed samples.\n",
            total,
            self.traffic_secs,
            total as f64 / self.traffic_secs,
            self.credentials,
            self.phases,
            self.sample_failures
        );

        println!("## Samples\n");
        println!(
            "| t s | req/s | RSS MiB | fds (client / upstream sockets) | threads | tasks | conns | cache entries | cache MiB | hit p50 / p99 ms | upstream |"
        );
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
        let mut prev: Option<&Sample> = None;
        for s in &self.samples {
            let lat = match (s.hit_p50, s.hit_p99) {
                (Some(a), Some(b)) => format!("{:.2} / {:.2}", a as f64 / 1e3, b as f64 / 1e3),
                _ => "-".into(),
            };
            println!(
                "| {:.0} | {:.0} | {:.1} | {} ({} / {}) | {} | {} | {} | {} | {:.2} | {} | {} |",
                s.t,
                rate(prev, s),
                s.rss_kib as f64 / 1024.0,
                s.fds,
                s.client_socks,
                s.upstream_socks,
                s.threads,
                s.tasks,
                s.conns,
                s.cache_entries,
                s.cache_bytes / (1024.0 * 1024.0),
                lat,
                s.fault
            );
            prev = Some(s);
        }

        let half = self.duration.as_secs_f64() / 2.0;
        let second: Vec<&Sample> = self.samples.iter().filter(|s| s.t >= half).collect();
        let warm: Vec<&Sample> = self.samples.iter().filter(|s| s.t > 0.0).collect();
        println!(
            "\n## Slopes: least squares over the second half ({} samples, t ≥ {half:.0} s), per minute\n",
            second.len()
        );
        println!(
            "| series | slope / min | ± SE | limit / min | second-half mean | second-half range | whole-run range (after start) | verdict |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | --- | --- | --- |");
        for series in SERIES {
            let pts: Vec<(f64, f64)> = second
                .iter()
                .map(|s| (s.t / 60.0, (series.value)(s)))
                .collect();
            let (slope, se) = fit(&pts);
            let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
            let mean = ys.iter().sum::<f64>() / ys.len().max(1) as f64;
            let range = |v: &[f64]| {
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!("{} – {}", num(lo), num(hi))
            };
            let all: Vec<f64> = warm.iter().map(|s| (series.value)(s)).collect();
            let limit = match series.limit {
                Limit::Relative(f) => f * mean.abs(),
                Limit::Absolute(x) => x,
            };
            let verdict = if !slope.is_finite() {
                ok = false;
                "too few samples".to_owned()
            } else if slope.abs() <= limit {
                "flat".to_owned()
            } else if slope.abs() <= 2.0 * se {
                "noisy (within 2 SE of 0)".to_owned()
            } else {
                ok = false;
                if slope > 0.0 {
                    "**RISING**"
                } else {
                    "**FALLING**"
                }
                .to_owned()
            };
            let unit = if series.unit.is_empty() {
                String::new()
            } else {
                format!(" {}", series.unit)
            };
            let limit_text = match series.limit {
                Limit::Relative(f) => format!("{} ({:.0}% of mean)", num(limit), f * 100.0),
                Limit::Absolute(_) => num(limit),
            };
            println!(
                "| {}{unit} | {} | {} | {limit_text} | {} | {} | {} | {verdict} |",
                series.name,
                num(slope),
                num(se),
                num(mean),
                range(&ys),
                range(&all),
            );
        }
        // The RSS slope per unit of work, to put a leak size on it.
        if second.len() >= 3 {
            let pts: Vec<(f64, f64)> = second
                .iter()
                .map(|s| (s.t / 60.0, s.rss_kib as f64 * 1024.0))
                .collect();
            let (slope, _) = fit(&pts);
            let (first, last) = (second[0], second[second.len() - 1]);
            let per_min = (last.requests - first.requests) as f64 / ((last.t - first.t) / 60.0);
            let creds_per_min = self.credentials as f64 / (self.traffic_secs / 60.0);
            println!(
                "\nRSS slope per unit of work: {:.1} bytes per request ({per_min:.0} requests/min), \
                 {:.0} bytes per new credential ({creds_per_min:.0}/min).",
                slope / per_min,
                slope / creds_per_min
            );
        }

        println!("\n## Idle: after the traffic stopped, against the sample before it started\n");
        println!(
            "| when | RSS MiB | fds (client / upstream sockets) | threads | tasks | conns | cache entries | cache MiB |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        let row = |label: String, s: &Sample| {
            println!(
                "| {label} | {:.1} | {} ({} / {}) | {} | {} | {} | {} | {:.2} |",
                s.rss_kib as f64 / 1024.0,
                s.fds,
                s.client_socks,
                s.upstream_socks,
                s.threads,
                s.tasks,
                s.conns,
                s.cache_entries,
                s.cache_bytes / (1024.0 * 1024.0)
            );
        };
        row("before traffic".into(), &self.baseline);
        for (label, s) in &self.idle {
            row(label.clone(), s);
        }
        if let Some((label, s)) = self.idle.last() {
            // Back to where it started: no client connection, and beyond the start at most the
            // one upstream connection the last miss opened (kept in phonegate's pool) and its
            // connection task, plus one of each in passing.
            let back = s.fds <= self.baseline.fds + 2
                && s.tasks <= self.baseline.tasks + 2.0
                && s.conns <= self.baseline.conns;
            println!(
                "\nfds, tasks and connections at the last row ({label}): {}",
                if back {
                    "back to the start (within 2)"
                } else {
                    "**NOT back to the start**"
                }
            );
            ok &= back;
        } else {
            ok = false;
            println!("\nNo idle sample.");
        }

        if !self.counters.is_empty() {
            println!("\n## phonegate's own counters at the end (from `/metrics`)\n");
            println!("| counter | value |");
            println!("| --- | ---: |");
            for (name, value) in &self.counters {
                println!("| `{name}` | {value} |");
            }
        }

        println!("\n## Outcomes (status and x-cache, or what happened)\n");
        println!("| class | outcome | count |");
        println!("| --- | --- | ---: |");
        for ((class, outcome), count) in &self.outcomes {
            println!("| {class} | {outcome} | {count} |");
        }

        match &self.exit {
            Ok(text) => println!("\nShutdown: {text}."),
            Err(text) => {
                ok = false;
                println!("\nShutdown: **{text}**.");
            }
        }
        let stderr = self.stderr.trim();
        if !stderr.is_empty() {
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            println!("\nphonegate's stderr (last lines):\n");
            for line in tail.iter().rev() {
                println!("    {line}");
            }
        }
        println!(
            "\nVerdict: {}",
            if ok {
                "PASS (every series flat or within noise, idle back to start, clean exit)"
            } else {
                "FAIL"
            }
        );
        ok
    }
}

fn num(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x.abs() >= 100.0 || x == x.trunc() {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

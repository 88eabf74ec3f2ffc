//! Shared tier (issue 9): what an L2 hit (Redis) costs over an L1 hit (memory), whether an L1 hit
//! gets slower because the tier exists, and the hit throughput of one instance with the tier on
//! and off. Prints markdown.
//!
//!   cargo bench --bench tier
//!
//! Everything runs in this process, over real HTTP/1.1 keep-alive connections on loopback: a mock
//! upstream, a `redis-server` started here on a free 127.0.0.1 port (Debian's package; without it
//! the bench panics with install instructions), and three phonegates:
//!
//! - `off`: no tier (memory only);
//! - `on`: replica 1 with the tier, the one measured;
//! - `filler`: replica 2 on the same Redis with the same `cache.key_secret`, which only fills
//!   entries, so that replica 1 finds them in Redis and not in its own memory.
//!
//! Measured, interleaved over [`ROUNDS`] rounds, medians over the rounds reported with their
//! spread; within a round the three latency measurements alternate in [`BLOCKS`] short blocks
//! each (the order rotating), and the two throughput runs alternate which goes first:
//!
//! - (a) L1 hit latency without the tier, (b) L1 hit latency with it (the same request, the entry
//!   in memory), over one keep-alive connection, one request at a time;
//! - (c) L2 hit latency: the first request on replica 1 for a credential that replica 2 filled
//!   (each `bench-token-{i}` is its own cache key); each must answer `x-cache: hit` without an
//!   upstream request;
//! - (d) hit throughput: [`CONNECTIONS`] keep-alive connections, [`TOTAL_REQUESTS`] L1 hits in
//!   all, tier off and on.
//!
//! The proxies and Redis client run on their own tokio runtime (two workers, as phonegate on this
//! machine), the load generator on another: two processes' worth of threads sharing the cores.
//! The access log is formatted (to a sink), as in production. The whole run takes about a minute
//! on a 2-core machine (3 minutes at most, or something is wrong).

use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use mock_vapi::{MockVapi, TWILIO_ID};
use phonegate::config::Config;
use phonegate::server::Server;
use phonegate::state::AppState;
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

const KEY_SECRET: &str = "bench-tier-key-secret-0123456789";
/// Measurement rounds; each round runs every measurement once.
const ROUNDS: usize = 7;
/// Requests on each latency connection before it is timed (not measured).
const WARMUP: usize = 500;
/// L1 hits timed per round, with the tier off and on.
const L1_REQUESTS: usize = 20_000;
/// L2 hits timed per round (each a credential replica 1 has not seen).
const L2_REQUESTS: usize = 5_000;
/// Redis `PING` round trips timed per round (a baseline for the L2 hit: loopback and Redis only).
const PINGS: usize = 5_000;
/// Blocks each round's latency measurements are cut into, alternating between them.
const BLOCKS: usize = 10;
/// Connections of the throughput measurement ...
const CONNECTIONS: usize = 8;
/// ... and the requests they make in all (each makes its share, one at a time).
const TOTAL_REQUESTS: usize = 160_000;
/// Connections filling Redis through replica 2 before the rounds.
const FILL_CONNECTIONS: usize = 8;

const INSTALL_HINT: &str = "redis-server not found: install Debian's package with \
    `apt-get install redis-server` (the bench starts its own server on a free 127.0.0.1 port)";

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and must stay quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("tier: skipped (run it with `cargo bench --bench tier`)");
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();

    // The access log, formatted and batched as in the binary, then thrown away.
    let (writer, _flush) =
        phonegate::log_writer::BatchWriter::new(std::io::sink()).expect("log writer");
    phonegate::access_log::install(writer).expect("first writer");

    let redis = RedisProcess::start();
    let servers = runtime("phonegate");
    let client = runtime("loadgen");

    let setup = servers.block_on(async {
        let mock = MockVapi::start().await;
        let off = Proxy::start(&mock.url(), None).await;
        let on = Proxy::start(&mock.url(), Some(&redis.url())).await;
        let filler = Proxy::start(&mock.url(), Some(&redis.url())).await;
        for proxy in [&on, &filler] {
            proxy.subscribed().await;
        }
        (mock, off, on, filler)
    });
    let (mock, off, on, filler) = setup;

    let report = client.block_on(measure(&mock, redis.addr(), &off, &on, &filler));

    servers.block_on(async {
        for proxy in [off, on, filler] {
            proxy.stop().await;
        }
    });
    drop(mock);
    drop(servers);
    drop(redis);

    report.print(started.elapsed());
    ExitCode::SUCCESS
}

fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The hot credential: its entry is in the memory of `off` and `on` before the rounds.
const HOT_TOKEN: &str = "bench-token-hot";

fn hit_path() -> String {
    format!("/phone-number/{TWILIO_ID}")
}

async fn measure(
    mock: &MockVapi,
    redis: SocketAddr,
    off: &Proxy,
    on: &Proxy,
    filler: &Proxy,
) -> Report {
    let path = hit_path();
    let throughput_tokens: Vec<String> = (0..CONNECTIONS)
        .map(|c| format!("bench-token-conn-{c}"))
        .collect();

    // Warm the entries into memory: the hot one, one per throughput connection, on both.
    for proxy in [off, on] {
        let mut conn = Conn::open(proxy.addr).await;
        for token in std::iter::once(HOT_TOKEN).chain(throughput_tokens.iter().map(String::as_str))
        {
            let first = conn.get(&path, token).await;
            assert_eq!(first.status, StatusCode::OK, "warm-up answered");
            let again = conn.get(&path, token).await;
            assert_eq!(
                again.cache.as_deref(),
                Some("hit"),
                "warm entry is in memory"
            );
        }
    }

    // Fill Redis through replica 2: one distinct credential per L2 lookup of every round.
    let fill_started = Instant::now();
    let upstream_before = mock.hits();
    let fills = ROUNDS * L2_REQUESTS;
    let mut tasks = Vec::new();
    for c in 0..FILL_CONNECTIONS {
        let addr = filler.addr;
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            for i in (c..fills).step_by(FILL_CONNECTIONS) {
                let answer = conn.get(&path, &l2_token(i)).await;
                assert_eq!(answer.status, StatusCode::OK, "fill {i} answered");
                assert_eq!(
                    answer.cache.as_deref(),
                    Some("miss"),
                    "fill {i} was fetched"
                );
            }
        }));
    }
    for task in tasks {
        task.await.expect("fill task");
    }
    assert_eq!(
        mock.hits() - upstream_before,
        fills,
        "every fill went upstream once"
    );
    let fill_time = fill_started.elapsed();

    let mut report = Report {
        fill_time,
        fills,
        ..Report::default()
    };
    let mut redis_calls_during_l1 = 0.0;
    let mut l2_lookups_during_l1 = 0.0;
    let mut l1_on_time = Duration::ZERO;
    for round in 0..ROUNDS {
        // Latency: the three measurements alternate in short blocks (the order rotating), so a
        // change in the shared machine's load between them lands on all three alike.
        let mut off_conn = warm_connection(off.addr, &path).await;
        let mut on_conn = warm_connection(on.addr, &path).await;
        let mut l2_conn = warm_connection(on.addr, &path).await;
        let mut off_samples = Vec::with_capacity(L1_REQUESTS);
        let mut on_samples = Vec::with_capacity(L1_REQUESTS);
        let mut l2_samples = Vec::with_capacity(L2_REQUESTS);
        let mut ping_samples = Vec::with_capacity(PINGS);
        let mut redis_conn = RedisConn::open(redis).await;
        let upstream = mock.hits();
        let l2_hits = on.l2_hits().await;
        for block in 0..BLOCKS {
            for step in 0..4 {
                match (round + block + step) % 4 {
                    0 => l1_block(&mut off_conn, &path, &mut off_samples).await,
                    1 => {
                        let calls = on.redis_calls().await;
                        let lookups = on.l2_lookups().await;
                        let begun = Instant::now();
                        l1_block(&mut on_conn, &path, &mut on_samples).await;
                        l1_on_time += begun.elapsed();
                        redis_calls_during_l1 += on.redis_calls().await - calls;
                        l2_lookups_during_l1 += on.l2_lookups().await - lookups;
                    }
                    2 => redis_conn.ping_block(&mut ping_samples).await,
                    _ => {
                        let first = (round * BLOCKS + block) * (L2_REQUESTS / BLOCKS);
                        let tokens = (first..first + L2_REQUESTS / BLOCKS).map(l2_token);
                        l2_block(&mut l2_conn, &path, tokens, &mut l2_samples).await;
                    }
                }
            }
        }
        assert_eq!(mock.hits(), upstream, "no L2 lookup went upstream");
        assert_eq!(
            on.l2_hits().await - l2_hits,
            (L2_REQUESTS / BLOCKS * BLOCKS) as f64,
            "each lookup was an L2 hit on replica 1"
        );
        report.l1_off.push(Percentiles::of(off_samples));
        report.l1_on.push(Percentiles::of(on_samples));
        report.l2_on.push(Percentiles::of(l2_samples));
        report.pings.push(Percentiles::of(ping_samples));

        let order: [(&Proxy, &mut Vec<f64>); 2] = if round % 2 == 0 {
            [(off, &mut report.rps_off), (on, &mut report.rps_on)]
        } else {
            [(on, &mut report.rps_on), (off, &mut report.rps_off)]
        };
        for (proxy, out) in order {
            out.push(throughput(proxy.addr, &path, &throughput_tokens).await);
        }
        eprintln!("tier: round {}/{ROUNDS} done", round + 1);
    }
    report.redis_calls_during_l1 = redis_calls_during_l1;
    report.l2_lookups_during_l1 = l2_lookups_during_l1;
    report.l1_on_time = l1_on_time;
    report
}

fn l2_token(i: usize) -> String {
    format!("bench-token-{i}")
}

/// A new keep-alive connection (phonegate closes idle ones), warmed with hits of the hot entry.
async fn warm_connection(addr: SocketAddr, path: &str) -> Conn {
    let mut conn = Conn::open(addr).await;
    for _ in 0..WARMUP {
        let answer = conn.get(path, HOT_TOKEN).await;
        assert_eq!(answer.cache.as_deref(), Some("hit"), "an L1 hit");
    }
    conn
}

/// `L1_REQUESTS / BLOCKS` hits of the hot entry, one at a time.
async fn l1_block(conn: &mut Conn, path: &str, samples: &mut Vec<Duration>) {
    for _ in 0..L1_REQUESTS / BLOCKS {
        let begun = Instant::now();
        let answer = conn.get(path, HOT_TOKEN).await;
        samples.push(begun.elapsed());
        assert_eq!(answer.cache.as_deref(), Some("hit"), "an L1 hit");
    }
}

/// One lookup per token, each the first for that credential on this replica.
async fn l2_block(
    conn: &mut Conn,
    path: &str,
    tokens: impl Iterator<Item = String>,
    samples: &mut Vec<Duration>,
) {
    for token in tokens {
        let begun = Instant::now();
        let answer = conn.get(path, &token).await;
        samples.push(begun.elapsed());
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.cache.as_deref(), Some("hit"), "{token}: a hit");
    }
}

/// Requests per second of `CONNECTIONS` keep-alive connections making `TOTAL_REQUESTS` L1 hits.
async fn throughput(addr: SocketAddr, path: &str, tokens: &[String]) -> f64 {
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        conns.push(Conn::open(addr).await);
    }
    let gate = Arc::new(tokio::sync::Barrier::new(CONNECTIONS + 1));
    let mut tasks = Vec::new();
    for (mut conn, token) in conns.into_iter().zip(tokens.iter().cloned()) {
        let gate = Arc::clone(&gate);
        let path = path.to_owned();
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            for _ in 0..TOTAL_REQUESTS / CONNECTIONS {
                let answer = conn.get(&path, &token).await;
                assert_eq!(answer.cache.as_deref(), Some("hit"), "an L1 hit");
            }
        }));
    }
    gate.wait().await;
    let begun = Instant::now();
    for task in tasks {
        task.await.expect("load task");
    }
    let elapsed = begun.elapsed();
    (TOTAL_REQUESTS / CONNECTIONS * CONNECTIONS) as f64 / elapsed.as_secs_f64()
}

/// A plain TCP connection to Redis for the round-trip baseline.
struct RedisConn(TcpStream);

impl RedisConn {
    async fn open(addr: SocketAddr) -> RedisConn {
        let stream = TcpStream::connect(addr).await.expect("connect to redis");
        stream.set_nodelay(true).expect("nodelay");
        let mut conn = RedisConn(stream);
        let mut warm = Vec::new();
        for _ in 0..WARMUP {
            conn.ping(&mut warm).await;
        }
        conn
    }

    async fn ping(&mut self, samples: &mut Vec<Duration>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let begun = Instant::now();
        self.0.write_all(b"PING\r\n").await.expect("write PING");
        let mut pong = [0u8; 7];
        self.0.read_exact(&mut pong).await.expect("read PONG");
        samples.push(begun.elapsed());
        assert_eq!(&pong, b"+PONG\r\n");
    }

    /// `PINGS / BLOCKS` round trips, one at a time.
    async fn ping_block(&mut self, samples: &mut Vec<Duration>) {
        for _ in 0..PINGS / BLOCKS {
            self.ping(samples).await;
        }
    }
}

/// One HTTP/1.1 keep-alive connection.
struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    host: HeaderValue,
}

struct Answer {
    status: StatusCode,
    cache: Option<String>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Conn {
            sender,
            host: HeaderValue::from_str(&addr.to_string()).expect("host"),
        }
    }

    /// `GET path` with `Authorization: Bearer token`, the body read in full.
    async fn get(&mut self, path: &str, token: &str) -> Answer {
        self.sender.ready().await.expect("connection open");
        let request = Request::get(path)
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(Empty::new())
            .expect("request");
        let response = self.sender.send_request(request).await.expect("response");
        let status = response.status();
        let cache = response
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert!(!body.is_empty(), "a body");
        Answer { status, cache }
    }
}

/// A phonegate started in-process on 127.0.0.1:0.
struct Proxy {
    addr: SocketAddr,
    admin: SocketAddr,
    state: Arc<AppState>,
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// In front of `upstream`; with the shared tier on `redis` when given.
    async fn start(upstream: &str, redis: Option<&str>) -> Proxy {
        let mut toml = format!(
            "listen = \"127.0.0.1:0\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"{upstream}\"\ntimeout_ms = 5000\n\
             [cache]\nttl_secs = 86400\nkey_secret = \"{KEY_SECRET}\"\n\
             [limits]\nmisses_per_sec_per_key = 0\n"
        );
        if let Some(url) = redis {
            // A generous command deadline: a stall of the shared VM must not turn a lookup
            // into a miss (a successful call's latency does not depend on it).
            toml.push_str(&format!("[redis]\nurl = \"{url}\"\ntimeout_ms = 250\n"));
        }
        let config = Config::from_toml(&toml).expect("bench config is valid");
        let server = Server::bind(config).await.expect("bind");
        let addr = server.local_addr().expect("addr");
        let admin = server.admin_addr().expect("admin addr");
        let state = Arc::clone(server.state());
        let (shutdown, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Proxy {
            addr,
            admin,
            state,
            shutdown,
            task,
        }
    }

    /// Waits until the replica listens for other replicas' invalidations.
    async fn subscribed(&self) {
        let tier = Arc::clone(self.state.store.tier().expect("the tier is configured"));
        let deadline = Instant::now() + Duration::from_secs(15);
        while !tier.is_subscribed() {
            assert!(
                Instant::now() < deadline,
                "never subscribed to invalidations"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A series' value on `/metrics` (0 when absent).
    async fn metric(&self, series: &str) -> f64 {
        let mut conn = Conn::open(self.admin).await;
        conn.sender.ready().await.expect("admin connection");
        let request = Request::get("/metrics")
            .header(HOST, conn.host.clone())
            .body(Empty::new())
            .expect("request");
        let response = conn.sender.send_request(request).await.expect("metrics");
        let body = response.into_body().collect().await.expect("body");
        let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Redis calls this replica has made (lookups, claims, stores).
    async fn redis_calls(&self) -> f64 {
        self.metric("phonegate_redis_command_duration_seconds_count")
            .await
    }

    /// L2 lookups, whatever their result.
    async fn l2_lookups(&self) -> f64 {
        let mut total = 0.0;
        for result in ["hit", "miss", "error"] {
            total += self
                .metric(&format!(
                    "phonegate_l2_lookups_total{{result=\"{result}\"}}"
                ))
                .await;
        }
        total
    }

    /// L2 lookups that found an entry.
    async fn l2_hits(&self) -> f64 {
        self.metric("phonegate_l2_lookups_total{result=\"hit\"}")
            .await
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

/// `redis-server` on a free 127.0.0.1 port, persisting nothing; killed when dropped.
struct RedisProcess {
    child: Child,
    port: u16,
}

impl RedisProcess {
    fn start() -> RedisProcess {
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).is_file())
            .unwrap_or("redis-server");
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = StdTcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let child = Command::new(binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(std::env::temp_dir())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let child = match child {
                Ok(child) => child,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
                Err(e) => panic!("cannot start {binary}: {e}"),
            };
            let mut redis = RedisProcess { child, port };
            match redis.wait_ready() {
                Ok(()) => return redis,
                Err(why) => failures.push(format!("port {port}: {why}")),
            }
        }
        panic!("redis-server did not start: {}", failures.join("; "));
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Waits (10 s at most) until the server answers `PING`.
    fn wait_ready(&mut self) -> Result<(), String> {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited: {status}"));
            }
            let answered = StdTcpStream::connect(("127.0.0.1", self.port))
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(1)))?;
                    s.write_all(b"PING\r\n")?;
                    let mut buf = [0u8; 7];
                    s.read_exact(&mut buf)?;
                    Ok(&buf == b"+PONG\r\n")
                })
                .unwrap_or(false);
            if answered {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err("no PONG within 10 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// p50 and p99 of one round, in microseconds.
#[derive(Debug, Clone, Copy)]
struct Percentiles {
    p50: f64,
    p99: f64,
}

impl Percentiles {
    fn of(mut samples: Vec<Duration>) -> Percentiles {
        samples.sort_unstable();
        // Nearest rank.
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1].as_secs_f64() * 1e6
        };
        Percentiles {
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

#[derive(Default)]
struct Report {
    l1_off: Vec<Percentiles>,
    l1_on: Vec<Percentiles>,
    l2_on: Vec<Percentiles>,
    pings: Vec<Percentiles>,
    rps_off: Vec<f64>,
    rps_on: Vec<f64>,
    redis_calls_during_l1: f64,
    l2_lookups_during_l1: f64,
    l1_on_time: Duration,
    fill_time: Duration,
    fills: usize,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn spread(values: &[f64], digits: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.digits$}-{max:.digits$}")
}

impl Report {
    fn print(&self, elapsed: Duration) {
        let p50 = |v: &[Percentiles]| v.iter().map(|p| p.p50).collect::<Vec<_>>();
        let p99 = |v: &[Percentiles]| v.iter().map(|p| p.p99).collect::<Vec<_>>();
        println!("# phonegate shared tier: L1 vs L2 hits, tier off vs on\n");
        println!(
            "{ROUNDS} interleaved rounds; medians over rounds, min-max across rounds in brackets. \
             Latency: one keep-alive HTTP/1.1 connection each, one request at a time, {L1_REQUESTS} \
             L1 hits (tier off, tier on) and {L2_REQUESTS} L2 hits per round, alternating in \
             {BLOCKS} blocks. Throughput: {CONNECTIONS} keep-alive connections, {TOTAL_REQUESTS} \
             L1 hits per round.\n"
        );
        println!("| measurement | p50 µs | p99 µs |");
        println!("| --- | ---: | ---: |");
        for (name, rounds) in [
            ("(a) L1 hit, tier off", &self.l1_off),
            ("(b) L1 hit, tier on", &self.l1_on),
            (
                "(c) L2 hit, tier on (entry in Redis, not in memory)",
                &self.l2_on,
            ),
            ("baseline: Redis `PING` round trip, raw TCP", &self.pings),
        ] {
            println!(
                "| {name} | {:.1} [{}] | {:.1} [{}] |",
                median(&p50(rounds)),
                spread(&p50(rounds), 1),
                median(&p99(rounds)),
                spread(&p99(rounds), 1),
            );
        }
        let per_round = |f: &dyn Fn(usize) -> f64| (0..ROUNDS).map(f).collect::<Vec<f64>>();
        let l2_cost = per_round(&|r| self.l2_on[r].p50 - self.l1_on[r].p50);
        let l2_work = per_round(&|r| self.l2_on[r].p50 - self.l1_on[r].p50 - self.pings[r].p50);
        let l1_ratio = per_round(&|r| self.l1_on[r].p50 / self.l1_off[r].p50);
        let l1_ratio_p99 = per_round(&|r| self.l1_on[r].p99 / self.l1_off[r].p99);
        let rps_ratio = per_round(&|r| self.rps_on[r] / self.rps_off[r]);
        println!();
        println!("| throughput | requests/s |");
        println!("| --- | ---: |");
        println!(
            "| (d) L1 hits, tier off | {:.0} [{}] |",
            median(&self.rps_off),
            spread(&self.rps_off, 0)
        );
        println!(
            "| (d) L1 hits, tier on | {:.0} [{}] |",
            median(&self.rps_on),
            spread(&self.rps_on, 0)
        );
        println!();
        println!("| derived (per round, then median) | value |");
        println!("| --- | ---: |");
        println!(
            "| L2 hit p50 − L1 hit p50 (tier on) | +{:.1} µs [{}] |",
            median(&l2_cost),
            spread(&l2_cost, 1)
        );
        println!(
            "| the same less one bare Redis `PING` round trip (p50) | +{:.1} µs [{}] |",
            median(&l2_work),
            spread(&l2_work, 1)
        );
        println!(
            "| L1 hit p50, tier on / off | {:.3} [{}] |",
            median(&l1_ratio),
            spread(&l1_ratio, 3)
        );
        println!(
            "| L1 hit p99, tier on / off | {:.3} [{}] |",
            median(&l1_ratio_p99),
            spread(&l1_ratio_p99, 3)
        );
        println!(
            "| hit throughput, tier on / off | {:.3} [{}] |",
            median(&rps_ratio),
            spread(&rps_ratio, 3)
        );
        println!(
            "| L2 lookups by the tier-on replica during its L1 rounds ({} requests) | {} |",
            ROUNDS * L1_REQUESTS,
            self.l2_lookups_during_l1
        );
        println!(
            "| all its Redis calls meanwhile ({:.1} s; background: one purge-counter read a second) \
             | {} |",
            self.l1_on_time.as_secs_f64(),
            self.redis_calls_during_l1
        );
        println!();
        println!("Per round (p50 µs, L1 off / L1 on / L2 on / Redis PING; requests/s off / on):\n");
        for r in 0..ROUNDS {
            println!(
                "- round {}: {:.1} / {:.1} / {:.1} / {:.1}; {:.0} / {:.0}",
                r + 1,
                self.l1_off[r].p50,
                self.l1_on[r].p50,
                self.l2_on[r].p50,
                self.pings[r].p50,
                self.rps_off[r],
                self.rps_on[r]
            );
        }
        println!(
            "\nSet-up: {} entries filled into Redis through replica 2 in {:.1} s. Whole run: {:.1} s.",
            self.fills,
            self.fill_time.as_secs_f64(),
            elapsed.as_secs_f64()
        );
    }
}

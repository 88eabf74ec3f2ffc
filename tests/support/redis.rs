//! Real Redis servers for integration tests, started from Debian's `redis-server` package: a
//! standalone [`RedisServer`] (which a test can kill and restart on the same port, to simulate an
//! outage), a [`RedisCluster`] of primaries built with `redis-cli --cluster create`, and a
//! [`TlsRedisServer`] that speaks only TLS, with a self-signed certificate. Every
//! process listens on 127.0.0.1 only, on ephemeral ports, persists nothing (`--save ''`,
//! `--appendonly no`), keeps its files in a private temporary directory, and is SIGKILLed when its
//! handle is dropped (and by tokio's `kill_on_drop` as a second line), so no server outlives the
//! test that started it. [`RedisServer::all_keys_and_values`] and
//! [`RedisCluster::all_keys_and_values`] read back every value as raw bytes, for tests that scan
//! all of Redis for planted secrets. Without `redis-server` and `redis-cli` on PATH the harness
//! panics with install instructions rather than skipping: a skipped secrecy test proves nothing.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::{TempDir, TestCert, free_addrs, on_path};

/// How long a freshly spawned server may take to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new cluster may take to reach `cluster_state:ok` on every node.
const CLUSTER_OK_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `redis-cli --cluster create` may run (it waits for the nodes to agree on slots).
const CLUSTER_CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`RedisServer::restart`] keeps retrying its old port, which may linger briefly.
const RESTART_WINDOW: Duration = Duration::from_secs(5);
/// How many fresh ports a start tries: a port found free can be taken by a parallel test before
/// redis-server binds it.
const START_ATTEMPTS: usize = 5;
/// Bound on one protocol exchange, so a wedged server fails the test instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// What every server is started with: loopback only, nothing persisted.
const LOCAL_AND_EPHEMERAL: [&str; 6] = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];

const INSTALL_HINT: &str = "redis-server not found on PATH: install Debian's package with \
    `apt-get install redis-server` (or run .ci/run, which installs it)";

/// Panics, with install instructions, unless both `redis-server` and `redis-cli` are on PATH.
///
/// Called by [`RedisServer::start`] and [`RedisCluster::start`]; tests never skip silently, since
/// a skipped Redis test would hide exactly the failures it exists to catch.
pub fn require_redis() {
    for tool in ["redis-server", "redis-cli"] {
        assert!(on_path(tool), "{INSTALL_HINT} (missing: {tool})");
    }
}

/// A standalone Redis server on 127.0.0.1, killed and its directory removed when dropped.
pub struct RedisServer {
    // Declared before `dir` so the process is dead before its directory is removed.
    node: Node,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// Panics (with the end of the server's log) if no attempt starts within the timeout.
    pub async fn start() -> RedisServer {
        require_redis();
        let dir = TempDir::new("redis-standalone");
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let mut node = Node::new(dir.path(), free_port(), None, dir.path().join("redis.log"));
            match node.launch().await {
                Ok(()) => return RedisServer { node, dir },
                Err(why) => failures.push(format!("port {}: {why}", node.port)),
            }
        }
        panic!(
            "redis-server did not start after {START_ATTEMPTS} attempts: {}\n{}",
            failures.join("; "),
            logs_tail(dir.path())
        );
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.node.port)
    }

    /// SIGKILLs the server (no clean shutdown, as in a crash) and waits until it has exited.
    pub async fn kill(&mut self) {
        self.node.kill().await;
    }

    /// Starts the server again on the same port (killing it first if it still runs) and waits
    /// until it answers `PING`. It comes back empty: nothing is persisted.
    ///
    /// Retries for a few seconds, as the old socket may still hold the port.
    pub async fn restart(&mut self) {
        self.node.kill().await;
        let deadline = Instant::now() + RESTART_WINDOW;
        loop {
            match self.node.launch().await {
                Ok(()) => return,
                Err(why) if Instant::now() >= deadline => panic!(
                    "redis-server did not restart on port {} within {RESTART_WINDOW:?}: {why}\n{}",
                    self.node.port,
                    logs_tail(self.dir.path())
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Whether the server answers `PING` right now.
    pub async fn ping(&self) -> bool {
        ping(self.node.port).await
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS...` and returns its stdout exactly as printed
    /// (redis-cli's raw mode, as stdout is not a terminal: `GET` gives the value and a newline,
    /// so compare `.trim()`). Errors from the server, or a refused connection, are not panics:
    /// they show up as the output (or its absence). Panics only if redis-cli cannot be run.
    pub async fn cli(&self, args: &[&str]) -> String {
        cli(self.node.port, args).await
    }

    /// Every key with its value as raw bytes, sorted by key. Strings are their bytes; hashes,
    /// lists, sets, sorted sets and streams are their fields/members/scores joined with `\n`;
    /// any other type is its `DUMP`. Keys are read with `SCAN`, so nothing is missed.
    pub async fn all_keys_and_values(&self) -> Vec<(String, Vec<u8>)> {
        let mut all = node_keys_and_values(self.node.port).await;
        all.sort();
        all
    }
}

/// A Redis Cluster of primaries (no replicas) on 127.0.0.1, every process killed and the
/// directory removed when dropped.
pub struct RedisCluster {
    // Declared before `dir` so the processes are dead before their directory is removed.
    nodes: Vec<Node>,
    dir: TempDir,
}

impl RedisCluster {
    /// Starts `primaries` cluster-enabled servers, joins them with `redis-cli --cluster create
    /// ... --cluster-replicas 0`, and waits until every node reports `cluster_state:ok`.
    ///
    /// Panics if `primaries < 3` (redis-cli refuses smaller clusters) or on any failure, with
    /// the nodes' logs.
    pub async fn start(primaries: usize) -> RedisCluster {
        require_redis();
        assert!(
            primaries >= 3,
            "a Redis Cluster needs at least 3 primaries (asked for {primaries})"
        );
        let dir = TempDir::new("redis-cluster");
        let mut cluster = RedisCluster {
            nodes: Vec::with_capacity(primaries),
            dir,
        };
        // All ports are found while every probe listener is held, so the nodes cannot be handed
        // each other's ports; a later collision with another test is handled by the retries.
        let first_ports = free_port_pairs(primaries);
        for (index, first) in first_ports.into_iter().enumerate() {
            let node = cluster.launch_cluster_node(index, first).await;
            cluster.nodes.push(node);
        }
        cluster.create().await;
        cluster.wait_ok().await;
        cluster
    }

    /// Starts one cluster node, on `first` or, if that fails, on fresh ports.
    async fn launch_cluster_node(&self, index: usize, first: (u16, u16)) -> Node {
        let mut failures = Vec::new();
        let mut ports = first;
        for _ in 0..START_ATTEMPTS {
            let (port, bus) = ports;
            let log = self.dir.path().join(format!("redis-{port}.log"));
            let mut node = Node::new(self.dir.path(), port, Some(bus), log);
            match node.launch().await {
                Ok(()) => return node,
                Err(why) => failures.push(format!("port {port}: {why}")),
            }
            ports = free_port_pairs(1)[0];
        }
        panic!(
            "cluster node {index} did not start after {START_ATTEMPTS} attempts: {}\n{}",
            failures.join("; "),
            logs_tail(self.dir.path())
        );
    }

    /// Assigns the slots and introduces the nodes to each other.
    async fn create(&self) {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for node in &self.nodes {
            cmd.arg(format!("127.0.0.1:{}", node.port));
        }
        cmd.args(["--cluster-replicas", "0", "--cluster-yes"])
            .env_remove("REDISCLI_AUTH")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(CLUSTER_CREATE_TIMEOUT, cmd.output())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "redis-cli --cluster create did not finish within {CLUSTER_CREATE_TIMEOUT:?}"
                )
            })
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed ({}): stdout: {}; stderr: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            logs_tail(self.dir.path())
        );
    }

    /// Waits until `CLUSTER INFO` says `cluster_state:ok` on every node: `--cluster create`
    /// returns once slots agree, but a node may still be settling its view of the others.
    async fn wait_ok(&self) {
        let deadline = Instant::now() + CLUSTER_OK_TIMEOUT;
        loop {
            let mut not_ok = Vec::new();
            for node in &self.nodes {
                let info = match command(node.port, &[b"CLUSTER", b"INFO"]).await {
                    Ok(Reply::Bulk(Some(text))) => String::from_utf8_lossy(&text).into_owned(),
                    other => format!("{other:?}"),
                };
                if !info.lines().any(|line| line.trim() == "cluster_state:ok") {
                    not_ok.push(format!("node {}: {info}", node.port));
                }
            }
            if not_ok.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok within {CLUSTER_OK_TIMEOUT:?}: {}\n{}",
                not_ok.join("\n"),
                logs_tail(self.dir.path())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The nodes as a comma-separated `redis://127.0.0.1:PORT` list, in node order.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}", node.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The nodes' client ports, in node order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|node| node.port).collect()
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS...` against node `node` (pass `-c` first to
    /// follow cluster redirects) and returns its stdout, as [`RedisServer::cli`] does.
    pub async fn cli(&self, node: usize, args: &[&str]) -> String {
        let port = self
            .nodes
            .get(node)
            .unwrap_or_else(|| panic!("no node {node} in a {}-node cluster", self.nodes.len()))
            .port;
        cli(port, args).await
    }

    /// Every key on every node with its value as raw bytes (as [`RedisServer::all_keys_and_values`]),
    /// sorted by key.
    pub async fn all_keys_and_values(&self) -> Vec<(String, Vec<u8>)> {
        let mut all = Vec::new();
        for node in &self.nodes {
            // SCAN is per node in a cluster: each node lists only the keys of its own slots.
            all.extend(node_keys_and_values(node.port).await);
        }
        all.sort();
        all
    }
}

/// A `redis-server` speaking only TLS on 127.0.0.1, with a self-signed certificate for
/// 127.0.0.1 and localhost ([`TestCert`]); killed, and its directory removed, when dropped.
///
/// Not waited for: clients that need it (replicas subscribing) retry until it answers.
pub struct TlsRedisServer {
    port: u16,
    child: std::process::Child,
    cert: TestCert,
}

impl TlsRedisServer {
    /// Starts the server on a free port, its files beside the certificate.
    pub fn start() -> TlsRedisServer {
        require_redis();
        let cert = TestCert::new("tls-redis");
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0"])
            .args(LOCAL_AND_EPHEMERAL)
            .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(&cert.cert_path)
            .arg("--tls-key-file")
            .arg(&cert.key_path)
            .arg("--tls-ca-cert-file")
            .arg(&cert.cert_path)
            .arg("--dir")
            .arg(cert.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server with TLS");
        TlsRedisServer { port, child, cert }
    }

    /// `rediss://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// The certificate to trust (`redis.ca_path`).
    pub fn ca_path(&self) -> &Path {
        &self.cert.cert_path
    }
}

impl Drop for TlsRedisServer {
    fn drop(&mut self) {
        // Before the fields drop: the process is dead before its directory is removed.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One redis-server process and how to (re)start it.
struct Node {
    port: u16,
    /// Cluster bus port, for cluster nodes. Set explicitly (`--cluster-port`) because the default,
    /// port + 10000, overflows 65535 for much of Linux's ephemeral range and is never checked free.
    bus_port: Option<u16>,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn new(dir: &Path, port: u16, bus_port: Option<u16>, log: PathBuf) -> Node {
        Node {
            port,
            bus_port,
            dir: dir.to_path_buf(),
            log,
            child: None,
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["--port", &self.port.to_string()]
            .into_iter()
            .chain(LOCAL_AND_EPHEMERAL)
            .chain([
                "--dir",
                &self.dir.to_string_lossy(),
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
                "--logfile",
                &self.log.to_string_lossy(),
            ])
            .map(|s| s.to_string())
            .collect();
        if let Some(bus) = self.bus_port {
            let conf = self.dir.join(format!("nodes-{}.conf", self.port));
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf.to_string_lossy(),
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-port",
                    &bus.to_string(),
                ]
                .iter()
                .map(|s| s.to_string()),
            );
        }
        args
    }

    /// Spawns the server and waits until this very process answers `PING`. On failure the
    /// process is gone and the reason is returned, for the caller to retry or report.
    async fn launch(&mut self) -> Result<(), String> {
        // Errors before the log file is open (a bad argument) only reach stderr: keep them too.
        let stderr = self.log.with_extension("stderr");
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr)
            .unwrap_or_else(|e| panic!("open {}: {e}", stderr.display()));
        let child = Command::new("redis-server")
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server (see require_redis for installing it)");
        let pid = child.id().expect("a just-spawned child has a pid");
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("child set above");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!("redis-server exited with {status}"));
            }
            // Another test's server may have won the race for this port: only our own pid counts
            // as ready (our process then fails to bind and exits, caught above).
            if ping(self.port).await && server_pid(self.port).await == Some(pid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill().await;
                return Err(format!("no PONG within {READY_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILLs the process (if running) and reaps it.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Err means it has already exited; wait() below reaps it either way.
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            // Reap it here (SIGKILL is near-instant) so that its directory, removed next, is no
            // longer being written to. Bounded, as a Drop must not hang.
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    free_port_pairs(1)[0].0
}

/// `count` pairs of distinct loopback ports, all bound at once so that none repeats, then
/// released for redis-server to take (a small race with other tests, covered by retries).
fn free_port_pairs(count: usize) -> Vec<(u16, u16)> {
    free_addrs(count * 2)
        .chunks(2)
        .map(|pair| (pair[0].port(), pair[1].port()))
        .collect()
}

/// The last lines of every log in `dir`, for failure messages.
fn logs_tail(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return format!("(no directory {})", dir.display());
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let is_log = path
            .extension()
            .is_some_and(|ext| ext == "log" || ext == "stderr");
        if !is_log {
            continue;
        }
        let mut text = String::new();
        if File::open(&path)
            .and_then(|mut f| std::io::Read::read_to_string(&mut f, &mut text))
            .is_err()
        {
            continue;
        }
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(30)..];
        out.push_str(&format!(
            "--- {} (last {} lines)\n",
            path.display(),
            tail.len()
        ));
        for line in tail {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `redis-cli -h 127.0.0.1 -p PORT ARGS...`, stdout as text.
async fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .arg("-h")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        // A password in the environment would make redis-cli AUTH against a server with none.
        .env_remove("REDISCLI_AUTH")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run redis-cli -p {port} {args:?}: {e}"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Whether something on `port` answers `PING` with `PONG`.
async fn ping(port: u16) -> bool {
    matches!(command(port, &[b"PING"]).await, Ok(Reply::Simple(s)) if s == b"PONG")
}

/// The `process_id` the server on `port` reports in `INFO server`.
async fn server_pid(port: u16) -> Option<u32> {
    let Ok(Reply::Bulk(Some(info))) = command(port, &[b"INFO", b"server"]).await else {
        return None;
    };
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|line| line.trim().strip_prefix("process_id:")?.parse().ok())
}

/// Every key on the server at `port` with its value as raw bytes (unsorted).
async fn node_keys_and_values(port: u16) -> Vec<(String, Vec<u8>)> {
    let mut conn = Conn::connect(port)
        .await
        .unwrap_or_else(|e| panic!("connect to redis on port {port}: {e}"));
    // SCAN may return a key more than once; the set keeps each once, in a stable order.
    let mut keys: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut cursor = b"0".to_vec();
    loop {
        let reply = conn
            .expect(port, &[b"SCAN", &cursor, b"COUNT", b"1000"])
            .await;
        let Reply::Array(Some(mut parts)) = reply else {
            panic!("SCAN on port {port} answered {reply:?}");
        };
        let (Some(Reply::Array(Some(batch))), Some(Reply::Bulk(Some(next)))) =
            (parts.pop(), parts.pop())
        else {
            panic!("SCAN on port {port}: unexpected reply shape");
        };
        for key in batch {
            if let Reply::Bulk(Some(key)) = key {
                keys.insert(key);
            }
        }
        cursor = next;
        if cursor == b"0" {
            break;
        }
    }
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let kind = match conn.expect(port, &[b"TYPE", &key]).await {
            Reply::Simple(kind) => kind,
            other => panic!("TYPE on port {port} answered {other:?}"),
        };
        // Read each type with its own command rather than DUMP, whose RDB encoding LZF-compresses
        // longer strings: a planted secret must appear in the bytes verbatim.
        let args: Vec<&[u8]> = match kind.as_slice() {
            b"none" => continue, // expired or deleted since the SCAN
            b"string" => vec![b"GET", &key],
            b"hash" => vec![b"HGETALL", &key],
            b"list" => vec![b"LRANGE", &key, b"0", b"-1"],
            b"set" => vec![b"SMEMBERS", &key],
            b"zset" => vec![b"ZRANGE", &key, b"0", b"-1", b"WITHSCORES"],
            b"stream" => vec![b"XRANGE", &key, b"-", b"+"],
            _ => vec![b"DUMP", &key],
        };
        let value = conn.expect(port, &args).await;
        if matches!(value, Reply::Bulk(None) | Reply::Array(None)) {
            continue; // gone between TYPE and the read
        }
        let mut bytes = Vec::new();
        flatten(&value, &mut bytes);
        out.push((String::from_utf8_lossy(&key).into_owned(), bytes));
    }
    out
}

/// A reply's payload as bytes: arrays (nested too) joined with `\n`.
fn flatten(reply: &Reply, out: &mut Vec<u8>) {
    match reply {
        Reply::Simple(bytes) | Reply::Bulk(Some(bytes)) => out.extend_from_slice(bytes),
        Reply::Error(text) => out.extend_from_slice(text.as_bytes()),
        Reply::Int(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Reply::Bulk(None) | Reply::Array(None) => {}
        Reply::Array(Some(items)) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b'\n');
                }
                flatten(item, out);
            }
        }
    }
}

/// One command on a fresh connection to `port`.
async fn command(port: u16, args: &[&[u8]]) -> std::io::Result<Reply> {
    Conn::connect(port).await?.command(args).await
}

/// A RESP2 reply.
#[derive(Debug)]
enum Reply {
    Simple(Vec<u8>),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// A minimal RESP2 client: binary-safe where redis-cli's text output is not (and no subprocess
/// per readiness probe). Every exchange is bounded by [`IO_TIMEOUT`].
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn connect(port: u16) -> std::io::Result<Conn> {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        Ok(Conn {
            stream: BufReader::new(stream),
        })
    }

    async fn command(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        let exchange = async {
            self.stream.get_mut().write_all(&request).await?;
            read_reply(&mut self.stream).await
        };
        tokio::time::timeout(IO_TIMEOUT, exchange)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "reply timed out"))?
    }

    /// A command that must succeed; panics with the server's error otherwise.
    async fn expect(&mut self, port: u16, args: &[&[u8]]) -> Reply {
        let shown: Vec<String> = args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        match self.command(args).await {
            Ok(Reply::Error(e)) => panic!("redis on port {port}: {shown:?} failed: {e}"),
            Ok(reply) => reply,
            Err(e) => panic!("redis on port {port}: {shown:?}: {e}"),
        }
    }
}

type ReplyFuture<'a> = Pin<Box<dyn Future<Output = std::io::Result<Reply>> + Send + 'a>>;

/// Reads one reply; boxed because arrays recurse.
fn read_reply(stream: &mut BufReader<TcpStream>) -> ReplyFuture<'_> {
    Box::pin(async move {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let mut line = Vec::new();
        stream.read_until(b'\n', &mut line).await?;
        if !line.ends_with(b"\r\n") {
            return Err(bad("connection closed mid-reply"));
        }
        line.truncate(line.len() - 2);
        let (kind, rest) = line.split_first().ok_or_else(|| bad("empty reply line"))?;
        let number = || -> std::io::Result<i64> {
            std::str::from_utf8(rest)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("bad length or integer"))
        };
        match kind {
            b'+' => Ok(Reply::Simple(rest.to_vec())),
            b'-' => Ok(Reply::Error(String::from_utf8_lossy(rest).into_owned())),
            b':' => Ok(Reply::Int(number()?)),
            b'$' => {
                let Ok(len) = usize::try_from(number()?) else {
                    return Ok(Reply::Bulk(None));
                };
                let mut data = vec![0; len + 2];
                stream.read_exact(&mut data).await?;
                data.truncate(len);
                Ok(Reply::Bulk(Some(data)))
            }
            b'*' => {
                let Ok(len) = usize::try_from(number()?) else {
                    return Ok(Reply::Array(None));
                };
                let mut items = Vec::with_capacity(len.min(1024));
                for _ in 0..len {
                    items.push(read_reply(stream).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            _ => Err(bad("unknown reply type")),
        }
    })
}

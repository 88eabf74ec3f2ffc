//! Shared test harness: a phonegate started in-process on ephemeral ports against a mock upstream
//! (the `mock-vapi` crate, tests/mock-vapi/, re-exported here as `mock_vapi`), and small clients (a
//! pooled HTTP/1.1 client and a raw-socket one for malformed requests).
//!
//! Also what the test modules assert and build with, so that each is written once: the cache state
//! of an answer ([`Resp::assert_cache`] checks `x-cache` and that RFC 9211 `Cache-Status` agrees),
//! requests ([`request`], [`get_request`], [`write`], [`admin`]) and many at once
//! ([`get_concurrently`], [`send_concurrently`]), managed-mode and CORS settings
//! ([`managed_toml`], [`cors_toml`]), `/metrics` values, cache keys, secret-leak checks,
//! temporary directories, files of the repository, programs on PATH, self-signed certificates
//! and free ports.
#![allow(dead_code, unused_imports)]

pub mod redis;
pub mod slow_read;

use std::fmt::Display;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::panic::Location;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use phonegate::cache::{CacheKey, Resource};
use phonegate::config::Config;
use phonegate::server::Server;
use phonegate::state::AppState;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use ::mock_vapi;
pub use mock_vapi::{Behavior, MockVapi};

/// A valid-looking caller key the mock accepts.
pub const TOKEN_A: &str = "test-key-alice-0001";
/// Another caller key (another org).
pub const TOKEN_B: &str = "test-key-bob-0002";

/// A running in-process phonegate.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts phonegate on 127.0.0.1:0 in front of `upstream_url`, with `extra` TOML (sections
    /// only) layered over the defaults.
    pub async fn start(upstream_url: &str, extra: &str) -> Proxy {
        let toml = format!(
            "listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"{upstream_url}\"\ntimeout_ms = 2000\n{extra}"
        );
        let config = Config::from_toml(&merge_sections(&toml)).expect("test config is valid");
        Self::start_with(config).await
    }

    /// Starts phonegate with a complete configuration.
    pub async fn start_with(config: Config) -> Proxy {
        let server = Server::bind(config).await.expect("bind");
        let addr = server.local_addr().expect("addr");
        let admin_addr = server.admin_addr().expect("admin addr");
        let state = Arc::clone(server.state());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Proxy {
            addr,
            admin_addr,
            state,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Begins shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and waits until the server has drained.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }

    /// The server task, to await after [`Proxy::begin_shutdown`].
    pub fn take_task(&mut self) -> JoinHandle<()> {
        self.task.take().expect("task not taken yet")
    }

    /// The cache key of phone number `id` looked up with `token`.
    pub fn cache_key(&self, id: &str, token: &str) -> CacheKey {
        CacheKey {
            resource: Resource::PhoneNumber(uuid::Uuid::parse_str(id).expect("a phone-number id")),
            credential: self.state.fingerprinter.fingerprint(token.as_bytes()),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// `[section]` headers may appear twice when a test's extra TOML names a section the harness
/// also sets (upstream); TOML forbids that, so fold repeated sections together. An array of
/// tables (`[[auth.clients]]`) is a list of its own tables: each `[[...]]` header starts a new
/// one, never folded into another.
fn merge_sections(toml: &str) -> String {
    // A section by its header and, for an array of tables, which occurrence of that header.
    type Section = (String, usize);
    let mut order: Vec<Section> = vec![(String::new(), 0)];
    let mut bodies: std::collections::HashMap<Section, Vec<String>> = Default::default();
    let mut current: Section = (String::new(), 0);
    let mut array_tables = 0;
    for line in toml.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && trimmed.ends_with(']') {
            let mut occurrence = 0;
            if trimmed.starts_with("[[") {
                array_tables += 1;
                occurrence = array_tables;
            }
            current = (trimmed.to_owned(), occurrence);
            if !order.contains(&current) {
                order.push(current.clone());
            }
            continue;
        }
        bodies
            .entry(current.clone())
            .or_default()
            .push(line.to_owned());
    }
    let mut out = String::new();
    for section in order {
        if !section.0.is_empty() {
            out.push_str(&section.0);
            out.push('\n');
        }
        if let Some(lines) = bodies.get(&section) {
            // Later assignments of the same key win, as a test's extra settings should.
            let mut seen = std::collections::HashSet::new();
            let mut kept: Vec<&String> = Vec::new();
            for line in lines.iter().rev() {
                let key = line.split('=').next().unwrap_or("").trim().to_owned();
                if key.is_empty() || seen.insert(key) {
                    kept.push(line);
                }
            }
            for line in kept.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// A client of managed-credentials mode: its name, the bearer token it calls with (configured
/// as its SHA-256) and its scopes (`read`, `write`).
pub struct ManagedClient<'a> {
    pub name: &'a str,
    pub token: &'a str,
    pub scopes: &'a [&'a str],
}

/// The sections that put [`Proxy::start`] in managed-credentials mode: phonegate calls the
/// upstream with `upstream_key`, and answers only `clients`, each with its own
/// `[[auth.clients]]` table. Append further sections (`[upstream]` included: its keys are
/// merged in) after it.
pub fn managed_toml(upstream_key: &str, clients: &[ManagedClient]) -> String {
    let mut toml =
        format!("[upstream]\napi_key = {upstream_key:?}\n\n[auth]\nmode = \"managed\"\n");
    for client in clients {
        toml.push_str(&format!(
            "\n[[auth.clients]]\nname = {:?}\ntoken_sha256 = {:?}\nscopes = {:?}\n",
            client.name,
            phonegate::auth::token_sha256_hex(client.token),
            client.scopes,
        ));
    }
    toml.push('\n');
    toml
}

/// A `[cors]` section allowing exactly `origins`.
pub fn cors_toml(origins: &[&str]) -> String {
    format!("[cors]\nallowed_origins = {origins:?}\n")
}

/// A response read in full.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// Reads `response` in full.
    pub async fn read(response: http::Response<Incoming>) -> Resp {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// How the cache took part, as `x-cache` says: `hit`, `miss`, `stale` or `bypass`; `None`
    /// when the request never reached the cache.
    pub fn cache(&self) -> Option<&str> {
        self.header("x-cache")
    }

    /// The RFC 9211 `Cache-Status` value.
    pub fn cache_status(&self) -> Option<&str> {
        self.header("cache-status")
    }

    /// Asserts `x-cache` is `expected` and `Cache-Status` says the same (see
    /// [`cache_status_agrees`]).
    #[track_caller]
    pub fn assert_cache(&self, expected: &str) {
        self.check_cache(expected, None);
    }

    /// [`Resp::assert_cache`], saying `why` the answer should have that cache state.
    #[track_caller]
    pub fn assert_cache_because(&self, expected: &str, why: impl Display) {
        self.check_cache(expected, Some(&why));
    }

    /// Asserts the request never reached the cache: neither `x-cache` nor `Cache-Status`.
    #[track_caller]
    pub fn assert_no_cache(&self, why: impl Display) {
        assert!(
            self.cache().is_none() && self.cache_status().is_none(),
            "{why}: {}",
            self.cache_state()
        );
    }

    #[track_caller]
    fn check_cache(&self, expected: &str, why: Option<&dyn Display>) {
        let why = why.map_or(String::new(), |why| format!("{why}: "));
        assert_eq!(
            self.cache(),
            Some(expected),
            "{why}x-cache is not {expected:?}; {}",
            self.cache_state()
        );
        assert!(
            cache_status_agrees(expected, self.cache_status()),
            "{why}cache-status does not agree with x-cache {expected:?}; {}",
            self.cache_state()
        );
    }

    /// Status, `x-cache` and `Cache-Status`, for failure messages.
    fn cache_state(&self) -> String {
        format!(
            "status {}, x-cache {:?}, cache-status {:?}",
            self.status,
            self.cache(),
            self.cache_status()
        )
    }

    /// Asserts the headers every JSON answer carries: `content-type: application/json`,
    /// `cache-control: private` and an `x-request-id`.
    #[track_caller]
    pub fn assert_json_headers(&self, what: &str) {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        assert_eq!(self.header("cache-control"), Some("private"), "{what}");
        assert!(self.header("x-request-id").is_some(), "{what}");
    }
}

/// Whether an RFC 9211 `Cache-Status` value says what `x-cache` value `x_cache` says: `hit` is
/// `phonegate; hit; ttl=N`, `miss` is `phonegate; fwd=uri-miss` (perhaps `; stored`,
/// `; collapsed`), `stale` is `phonegate; hit; fwd=stale` (perhaps `; detail=...`) and `bypass`
/// is `phonegate; fwd=bypass`.
pub fn cache_status_agrees(x_cache: &str, cache_status: Option<&str>) -> bool {
    let Some(value) = cache_status else {
        return false;
    };
    let is_or_extends = |base: &str| {
        value
            .strip_prefix(base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("; "))
    };
    match x_cache {
        "hit" => value
            .strip_prefix("phonegate; hit; ttl=")
            .is_some_and(|ttl| ttl.parse::<u64>().is_ok()),
        "miss" => is_or_extends("phonegate; fwd=uri-miss"),
        "stale" => is_or_extends("phonegate; hit; fwd=stale"),
        "bypass" => value == "phonegate; fwd=bypass",
        _ => false,
    }
}

/// A plain HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `req` and reads the whole response.
pub async fn send(req: Request<Full<Bytes>>) -> Resp {
    Resp::read(client().request(req).await.expect("request")).await
}

/// A request to `uri` with `Authorization: Bearer {token}` when a token is given, extra headers
/// and a body.
pub fn request(
    method: Method,
    uri: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(body.into())).expect("request")
}

/// The request [`get`] sends, to send later, elsewhere or many times over.
pub fn get_request(proxy: &Proxy, path: &str, token: Option<&str>) -> Request<Full<Bytes>> {
    request(Method::GET, &proxy.url(path), token, &[], Bytes::new())
}

/// Waits (up to 5 s) until `mock` has received a request for `path`: a request sent for it is
/// then in flight upstream.
pub async fn upstream_reached(mock: &MockVapi, path: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while mock.hits_for(path) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no request for {path} reached the mock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn get(proxy: &Proxy, path: &str, token: Option<&str>) -> Resp {
    send(get_request(proxy, path, token)).await
}

/// A request with a method, optional bearer token and extra headers.
pub async fn get_with(
    proxy: &Proxy,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> Resp {
    send(request(
        method,
        &proxy.url(path),
        token,
        headers,
        Bytes::new(),
    ))
    .await
}

/// [`get`], asserting the answer's cache state as [`Resp::assert_cache`] does; the answer.
///
/// Not an `async fn`, so that a failure names the caller's line.
#[track_caller]
pub fn get_and_assert_cache(
    proxy: &Proxy,
    path: &str,
    token: Option<&str>,
    expected: &'static str,
) -> impl Future<Output = Resp> + 'static {
    let caller = Location::caller();
    let req = get_request(proxy, path, token);
    async move {
        let resp = send(req).await;
        resp.check_cache(expected, Some(&format_args!("GET at {caller}")));
        resp
    }
}

/// A JSON write (`content-type: application/json`) with a bearer token.
pub async fn write(proxy: &Proxy, method: Method, path: &str, token: &str, body: &str) -> Resp {
    let json = [("content-type", "application/json")];
    send(request(
        method,
        &proxy.url(path),
        Some(token),
        &json,
        body.to_owned(),
    ))
    .await
}

/// Sends every request at once, each on its own task (and connection), and collects the
/// answers in the order of `requests`.
pub async fn send_concurrently(
    requests: impl IntoIterator<Item = Request<Full<Bytes>>>,
) -> Vec<Resp> {
    let tasks: Vec<JoinHandle<Resp>> = requests
        .into_iter()
        .map(|req| tokio::spawn(send(req)))
        .collect();
    let mut answers = Vec::with_capacity(tasks.len());
    for task in tasks {
        answers.push(task.await.expect("request task"));
    }
    answers
}

/// `n` identical [`get`]s, all in flight at once; the answers in order.
pub async fn get_concurrently(
    proxy: &Proxy,
    path: &str,
    token: Option<&str>,
    n: usize,
) -> Vec<Resp> {
    send_concurrently((0..n).map(|_| get_request(proxy, path, token))).await
}

/// A request to the admin listener at `addr` with a method, optional bearer token and body.
pub async fn admin(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Resp {
    let uri = format!("http://{addr}{path}");
    send(request(method, &uri, token, &[], body.to_owned())).await
}

/// `GET {path}` on the admin listener at `addr`, without a token.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Resp {
    admin(addr, Method::GET, path, None, "").await
}

/// `POST /cache/purge` with `body` on `proxy`'s admin listener, without a token.
pub async fn purge(proxy: &Proxy, body: &str) -> Resp {
    admin(proxy.admin_addr, Method::POST, "/cache/purge", None, body).await
}

/// The value of `series` (the name with its labels, exactly as exported) in a `/metrics` text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The value of `series` on the `/metrics` of the admin listener at `addr`.
pub async fn scrape_metric(addr: SocketAddr, series: &str) -> Option<f64> {
    metric(&admin_get(addr, "/metrics").await.text(), series)
}

/// Writes raw bytes to `addr` and reads until the server closes (send `Connection: close`).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw HTTP/1.1 response.
pub fn raw_status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

/// The body of a raw HTTP/1.1 response (after the blank line).
pub fn raw_body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Path of a phone number.
pub fn path(id: &str) -> String {
    format!("/phone-number/{id}")
}

/// Whether `bytes` carry the marker of a planted secret anywhere.
pub fn contains_planted(bytes: &[u8]) -> bool {
    bytes
        .windows(mock_vapi::PLANTED.len())
        .any(|w| w == mock_vapi::PLANTED.as_bytes())
}

/// Asserts no header value of `resp` carries a planted secret.
#[track_caller]
pub fn assert_headers_clean(resp: &Resp, what: &str) {
    for (name, value) in &resp.headers {
        assert!(
            !contains_planted(value.as_bytes()),
            "{what}: header {name} leaks a secret: {value:?}"
        );
    }
}

/// Asserts no part of the answer (body or headers) carries a planted secret.
#[track_caller]
pub fn assert_no_planted(resp: &Resp, what: &str) {
    assert!(
        !contains_planted(&resp.body),
        "{what}: body leaks a secret: {}",
        resp.text()
    );
    assert_headers_clean(resp, what);
}

/// Asserts `resp` is one of phonegate's (or the upstream's) NestJS-shaped JSON errors with
/// `status`; returns its message (an array of messages joined with "; ").
pub fn assert_json_error(resp: &Resp, status: u16, what: &str) -> String {
    assert_eq!(resp.status.as_u16(), status, "{what}: {}", resp.text());
    let body = resp.json();
    assert_eq!(body["statusCode"], status, "{what}: {body}");
    assert!(body["error"].is_string(), "{what}: {body}");
    let message = match &body["message"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(serde_json::Value::as_str)
            .collect::<Vec<_>>()
            .join("; "),
        other => panic!("{what}: no message in {other}"),
    };
    assert!(!message.trim().is_empty(), "{what}: {body}");
    message
}

/// Writes `contents` to a fresh file in the temporary directory (`tag` and `name` make it
/// recognisable) and returns its path.
pub fn temp_file(tag: &str, name: &str, contents: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let path =
        std::env::temp_dir().join(format!("phonegate-{tag}-{}-{n}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("write temp file");
    path
}

/// A uniquely named directory in the system temp dir (`tag` makes it recognisable), removed
/// with its contents when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "phonegate-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` in the directory; returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, written out as PEM files
/// (`cert.pem`, `key.pem`) in a directory of its own, removed when dropped.
pub struct TestCert {
    pub der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub dir: TempDir,
}

impl TestCert {
    pub fn new(tag: &str) -> TestCert {
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("rcgen");
        let cert_pem = cert.pem();
        let key_pem = signing_key.serialize_pem();
        let dir = TempDir::new(tag);
        let cert_path = dir.write("cert.pem", &cert_pem);
        let key_path = dir.write("key.pem", &key_pem);
        TestCert {
            der: cert.der().clone(),
            cert_pem,
            key_pem,
            cert_path,
            key_path,
            dir,
        }
    }
}

/// A TLS client configuration (ring, safe default versions, no client certificate) that trusts
/// exactly `cert`.
pub fn tls_client_config(cert: &CertificateDer<'static>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("trust the test certificate");
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Whether an executable file called `name` is in one of PATH's directories.
pub fn on_path(name: &str) -> bool {
    find_on_path(name).is_some()
}

/// The first executable file called `name` in PATH's directories.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// A TOML string literal naming `path` (for `cert_path = ...` and the like).
pub fn toml_path(path: &Path) -> String {
    format!("{:?}", path.to_str().expect("utf-8 temp path"))
}

/// The repository's root directory (where Cargo.toml is), which `deploy/`, `examples/` and the
/// other files the tests check are relative to.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The text of the file at `rel` from the repository's root.
pub fn read_repo_file(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel))
        .unwrap_or_else(|e| panic!("{rel}: cannot read: {e}"))
}

/// `n` distinct loopback addresses that were free a moment ago: bound all at once (so none
/// repeats), then released (a small race with other tests, which callers accept or retry).
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<StdTcpListener> = (0..n)
        .map(|_| StdTcpListener::bind("127.0.0.1:0").expect("bind a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound address"))
        .collect()
}

/// A loopback address nothing listens on (it was free a moment ago).
pub fn free_addr() -> SocketAddr {
    free_addrs(1)[0]
}

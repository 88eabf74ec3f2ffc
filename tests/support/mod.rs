//! Shared test harness: a phonegate started in-process on ephemeral ports against a mock upstream
//! (the `mock-vapi` crate, tests/mock-vapi/, re-exported here as `mock_vapi`), and small clients (a
//! pooled HTTP/1.1 client and a raw-socket one for malformed requests).
#![allow(dead_code, unused_imports)]

pub mod redis;
pub mod slow_read;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use phonegate::config::Config;
use phonegate::server::Server;
use phonegate::state::AppState;
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
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// `[section]` headers may appear twice when a test's extra TOML names a section the harness
/// also sets (upstream); TOML forbids that, so fold repeated sections together.
fn merge_sections(toml: &str) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut bodies: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut current = String::new();
    order.push(current.clone());
    for line in toml.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && trimmed.ends_with(']') {
            current = trimmed.to_owned();
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
        if !section.is_empty() {
            out.push_str(&section);
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

/// A response read in full.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
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
}

/// A plain HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `req` and reads the whole response.
pub async fn send(req: Request<Full<Bytes>>) -> Resp {
    let response = client().request(req).await.expect("request");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `GET {proxy}{path}` with `Authorization: Bearer {token}` when a token is given.
pub async fn get(proxy: &Proxy, path: &str, token: Option<&str>) -> Resp {
    get_with(proxy, Method::GET, path, token, &[]).await
}

/// A request with a method, optional bearer token and extra headers.
pub async fn get_with(
    proxy: &Proxy,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> Resp {
    let mut builder = Request::builder().method(method).uri(proxy.url(path));
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(builder.body(Full::new(Bytes::new())).expect("request")).await
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
pub fn temp_file(tag: &str, name: &str, contents: &str) -> std::path::PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path =
        std::env::temp_dir().join(format!("phonegate-{tag}-{}-{n}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("write temp file");
    path
}

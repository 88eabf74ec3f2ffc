//! Settings fixed for the life of the process: listeners, TLS files, the upstream client,
//! connection handling, the cache's size, key and stale windows, the shield's concurrency, breaker
//! and tracking bounds, the log format, the shared tier. A reload reads them, reports those that
//! changed as needing a restart, and never applies them: nothing in the running process can hold a
//! [`StartupConfig`] other than the one it started with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{OtelConfig, RedisConfig, Secret};

/// What only a restart changes.
#[derive(Debug, Clone, PartialEq)]
pub struct StartupConfig {
    /// Proxy listener address. Default is `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Admin listener address. Default is `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    /// Where lookups go.
    pub upstream: UpstreamConfig,
    /// The response cache's bounds and key.
    pub store: StoreConfig,
    /// The upstream's concurrency cap, breaker and cool-down bounds.
    pub shield: ShieldConfig,
    /// Log output format. Default is JSON.
    pub log_format: LogFormat,
    /// TLS on the proxy listener; `None` is plain HTTP. Default is `None`.
    pub tls: Option<TlsConfig>,
    /// Client-facing connection handling.
    pub server: ServerConfig,
    /// The shared Redis tier; `None` (the default) is one instance, in memory.
    pub redis: Option<RedisConfig>,
    /// Trace export.
    pub otel: OtelConfig,
}

/// Upstream settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Base URL without a trailing slash (`https://api.vapi.ai`). Default is `https://api.vapi.ai`.
    pub base_url: String,
    /// Deadline for one whole upstream exchange. Default is 5 s.
    pub timeout: Duration,
    /// Largest upstream body read. Default is 2 MiB.
    pub max_body_bytes: usize,
    /// Extra CA certificates (PEM) to trust; re-read on reload. Default is none.
    pub ca_path: Option<PathBuf>,
    /// Client certificate and key presented to the upstream (mutual TLS); re-read on reload.
    /// Default is none.
    pub client_cert: Option<TlsConfig>,
}

/// The cache's bounds, fingerprint key and stale windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// After the TTL, how long a stale answer is served while it is refreshed. Default is 30 s.
    pub stale_while_revalidate: Duration,
    /// After the TTL, how long a stale answer may stand in for a failing upstream. Default is
    /// 300 s.
    pub stale_if_error: Duration,
    /// Size bound in bytes. Default is 256 MiB.
    pub max_bytes: u64,
    /// Fingerprint key; `None` means a random key per process. Default is `None`.
    pub key_secret: Option<Secret>,
}

/// The shield's fixed parts (its budgets are live: [`super::LimitsConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShieldConfig {
    /// Upstream requests at once. Default is 64.
    pub max_in_flight: usize,
    /// Wait for an upstream slot. Default is 1 s.
    pub queue_timeout: Duration,
    /// Cap on a 429 cool-down. Default is 60 s.
    pub max_retry_after: Duration,
    /// Consecutive failures that open the breaker. Default is 5.
    pub breaker_failures: u32,
    /// How long the breaker stays open. Default is 10 s.
    pub breaker_open: Duration,
    /// Most credentials tracked by limits and cool-downs. Default is 100000.
    pub max_tracked_keys: u64,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line. The default.
    Json,
    /// Human-readable lines for development.
    Pretty,
}

/// A certificate chain and its key, PEM files (re-read on reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_path: PathBuf,
    /// PEM private key.
    pub key_path: PathBuf,
}

/// Client connection handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Time a client has to send a request's headers. Default is 10 s.
    pub header_timeout: Duration,
    /// How long a connection may stay open with no request in flight, HTTP/1.1 and HTTP/2.
    /// Default is 10 s.
    pub idle_timeout: Duration,
    /// Time in-flight requests get on shutdown. Default is 10 s.
    pub drain_timeout: Duration,
    /// Open client connections at most. Default is 10000.
    pub max_connections: usize,
    /// Worker threads of the async runtime; `None` (the default) is one per CPU core.
    pub worker_threads: Option<usize>,
}

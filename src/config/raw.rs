//! The raw settings: exactly the shape of the TOML file (and of the `PHONEGATE__...` environment
//! variables), as the `config` crate merges the layers. Nothing here is checked yet; see
//! [`super::validate`].

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSettings {
    pub(super) listen: String,
    pub(super) admin: RawAdmin,
    pub(super) upstream: RawUpstream,
    pub(super) cache: RawCache,
    pub(super) redact: RawRedact,
    pub(super) limits: RawLimits,
    pub(super) auth: RawAuth,
    pub(super) cors: RawCors,
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) tls: RawTls,
    pub(super) server: RawServer,
    pub(super) redis: super::redis::RawRedis,
    pub(super) otel: super::otel::RawOtel,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: String,
    #[serde(default)]
    pub(super) token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) url: String,
    pub(super) timeout_ms: u64,
    pub(super) max_body_bytes: u64,
    #[serde(default)]
    pub(super) ca_path: Option<String>,
    pub(super) max_in_flight: u64,
    pub(super) queue_timeout_ms: u64,
    pub(super) max_retry_after_secs: u64,
    pub(super) breaker: RawBreaker,
    #[serde(default)]
    pub(super) api_key: Option<String>,
    #[serde(default)]
    pub(super) api_key_file: Option<String>,
    #[serde(default)]
    pub(super) client_cert_path: Option<String>,
    #[serde(default)]
    pub(super) client_key_path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub(super) mode: String,
    #[serde(default)]
    pub(super) clients: Vec<RawClient>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    pub(super) name: String,
    pub(super) token_sha256: String,
    pub(super) scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCors {
    pub(super) allowed_origins: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    pub(super) failures: u64,
    pub(super) open_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) misses_per_sec_per_key: u32,
    pub(super) miss_burst: u32,
    pub(super) requests_per_sec_per_key: u32,
    pub(super) request_burst: u32,
    pub(super) max_tracked_keys: u64,
    pub(super) upstream_requests_per_sec: u32,
    pub(super) upstream_burst: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) ttl_secs: u64,
    pub(super) negative_ttl_secs: u64,
    pub(super) auth_failure_ttl_secs: u64,
    pub(super) list_ttl_secs: u64,
    pub(super) stale_while_revalidate_secs: u64,
    pub(super) stale_if_error_secs: u64,
    pub(super) max_bytes: u64,
    #[serde(default)]
    pub(super) key_secret: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedact {
    pub(super) mode: String,
    pub(super) extra_fields: Vec<String>,
    pub(super) allow_fields: Vec<String>,
    pub(super) max_depth: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: String,
    pub(super) level: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    #[serde(default)]
    pub(super) cert_path: Option<String>,
    #[serde(default)]
    pub(super) key_path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) header_timeout_ms: u64,
    pub(super) idle_timeout_ms: u64,
    pub(super) drain_timeout_ms: u64,
    pub(super) max_connections: u64,
    pub(super) request_timeout_ms: u64,
    pub(super) max_request_body_bytes: u64,
    pub(super) worker_threads: u64,
}

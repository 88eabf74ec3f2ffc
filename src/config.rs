//! Configuration: raw settings as layered by the `config` crate on one side, a validated runtime
//! [`Config`] on the other.
//!
//! Layers, later wins: the built-in defaults (`config/default.toml`, compiled in), an optional file,
//! then `PHONEGATE__<SECTION>__<KEY>` environment variables. Every check that can fail happens here,
//! at start-up, so the request path never meets a bad setting; each error names the key and the
//! offending value (masked for secrets) so an operator can fix it without reading code.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::redact;

mod redis;

pub use redis::RedisConfig;

/// The text of `config/default.toml`: every setting's default, compiled into the binary.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// Prefix of the environment variables that override settings (`PHONEGATE__CACHE__TTL_SECS`).
pub const ENV_PREFIX: &str = "PHONEGATE";

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: [&str; 3] = [
    "redact.extra_fields",
    "redact.allow_fields",
    "cors.allowed_origins",
];

/// Minimum length of `cache.key_secret`: a shorter key makes fingerprints guessable offline.
const MIN_KEY_SECRET_LEN: usize = 16;

/// serde_json refuses documents nested deeper than 128 levels, so a larger limit could never apply.
const MAX_REDACT_DEPTH: usize = 128;

/// A setting that stopped start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The layers could not be read or merged (unreadable file, TOML syntax, wrong type, unknown key).
    Load(String),
    /// A value was read but is not acceptable.
    Invalid {
        /// Dotted key, as in the TOML file (`cache.ttl_secs`).
        key: &'static str,
        /// The offending value as given, or `(hidden)` for secrets.
        value: String,
        /// What an acceptable value looks like.
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Load(msg) => write!(f, "invalid configuration: {msg}"),
            ConfigError::Invalid { key, value, reason } => {
                write!(f, "invalid setting {key} = {value:?}: {reason}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(key: &'static str, value: impl fmt::Display, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason: reason.into(),
    }
}

// ---- raw settings: exactly the shape of the TOML file ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    listen: String,
    admin: RawAdmin,
    upstream: RawUpstream,
    cache: RawCache,
    redact: RawRedact,
    limits: RawLimits,
    auth: RawAuth,
    cors: RawCors,
    log: RawLog,
    #[serde(default)]
    tls: RawTls,
    server: RawServer,
    redis: redis::RawRedis,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
    #[serde(default)]
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: String,
    timeout_ms: u64,
    max_body_bytes: u64,
    #[serde(default)]
    ca_path: Option<String>,
    max_in_flight: u64,
    queue_timeout_ms: u64,
    max_retry_after_secs: u64,
    breaker: RawBreaker,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    api_key_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    mode: String,
    #[serde(default)]
    clients: Vec<RawClient>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: String,
    token_sha256: String,
    scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCors {
    allowed_origins: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    failures: u64,
    open_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    misses_per_sec_per_key: u32,
    miss_burst: u32,
    requests_per_sec_per_key: u32,
    request_burst: u32,
    max_tracked_keys: u64,
    upstream_requests_per_sec: u32,
    upstream_burst: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    ttl_secs: u64,
    negative_ttl_secs: u64,
    auth_failure_ttl_secs: u64,
    list_ttl_secs: u64,
    stale_while_revalidate_secs: u64,
    stale_if_error_secs: u64,
    max_bytes: u64,
    #[serde(default)]
    key_secret: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedact {
    mode: String,
    extra_fields: Vec<String>,
    allow_fields: Vec<String>,
    max_depth: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: String,
    level: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    cert_path: Option<String>,
    #[serde(default)]
    key_path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    header_timeout_ms: u64,
    idle_timeout_ms: u64,
    drain_timeout_ms: u64,
    max_connections: u64,
    request_timeout_ms: u64,
    max_request_body_bytes: u64,
}

// ---- validated runtime configuration ----

/// The validated configuration the proxy runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Proxy listener address. Default is `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Admin listener address. Default is `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    /// Bearer token for mutating admin calls. Default is unset (loopback-only).
    pub admin_token: Option<Secret>,
    /// Where lookups go.
    pub upstream: UpstreamConfig,
    /// The response cache.
    pub cache: CacheConfig,
    /// The redaction policy.
    pub redact: RedactConfig,
    /// Upstream protection: concurrency, breaker, per-credential limits and cool-downs.
    pub shield: ShieldConfig,
    /// Whose credential goes upstream.
    pub auth: AuthConfig,
    /// Browser origins allowed by CORS; empty means no CORS headers. Default is empty.
    pub cors_allowed_origins: Vec<String>,
    /// Logging.
    pub log: LogConfig,
    /// TLS on the proxy listener; `None` is plain HTTP. Default is `None`.
    pub tls: Option<TlsConfig>,
    /// Client-facing connection handling.
    pub server: ServerConfig,
    /// The shared Redis tier; `None` (the default) is one instance, in memory.
    pub redis: Option<RedisConfig>,
}

/// A secret setting: compared and used, never shown by `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(set)")
    }
}

/// Upstream settings.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Base URL without a trailing slash (`https://api.vapi.ai`). Default is `https://api.vapi.ai`.
    pub base_url: String,
    /// Deadline for one whole upstream exchange. Default is 5 s.
    pub timeout: Duration,
    /// Largest upstream body read. Default is 2 MiB.
    pub max_body_bytes: usize,
    /// Extra CA certificates (PEM) to trust. Default is none.
    pub ca_path: Option<PathBuf>,
}

/// Cache settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Freshness of a 200. Default is 60 s; 0 disables caching of 200s.
    pub ttl: Duration,
    /// Freshness of a 404. Default is 5 s; 0 disables caching of 404s.
    pub negative_ttl: Duration,
    /// How long an upstream 401/403 for a credential answers that credential's requests from
    /// memory. Default is 2 s; 0 turns it off.
    pub auth_failure_ttl: Duration,
    /// Freshness of a list answer. Default is 10 s; 0 disables caching of lists.
    pub list_ttl: Duration,
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

/// Redaction settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactConfig {
    /// Mask or remove. Default is mask.
    pub mode: redact::Mode,
    /// Extra secret field names. Default is none.
    pub extra_fields: Vec<String>,
    /// Field names exempt from the name-based rules. Default is none.
    pub allow_fields: Vec<String>,
    /// Deepest nesting accepted. Default is 64.
    pub max_depth: usize,
}

impl RedactConfig {
    /// The redaction policy these settings describe.
    pub fn policy(&self) -> redact::Policy {
        redact::Policy::new(
            self.mode,
            &self.extra_fields,
            &self.allow_fields,
            self.max_depth,
        )
    }
}

/// Upstream protection settings.
#[derive(Debug, Clone)]
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
    /// Per-credential upstream-bound requests a second; 0 is off. Default is 20.
    pub misses_per_sec_per_key: u32,
    /// Burst of that budget. Default is 40.
    pub miss_burst: u32,
    /// Per-credential requests a second, hits included; 0 is off. Default is 0.
    pub requests_per_sec_per_key: u32,
    /// Burst of that budget. Default is the rate.
    pub request_burst: u32,
    /// Most credentials tracked by limits and cool-downs. Default is 100000.
    pub max_tracked_keys: u64,
    /// All upstream requests together, a second; 0 is off. Default is 0.
    pub upstream_requests_per_sec: u32,
    /// Burst of that budget. Default is the rate.
    pub upstream_burst: u32,
}

/// Whose credential goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// The caller's own bearer token goes upstream. The default.
    Passthrough,
    /// Callers present tokens phonegate issued; phonegate sends its own key upstream.
    Managed {
        /// The configured clients.
        clients: Vec<ClientConfig>,
        /// The upstream key (`upstream.api_key` or the contents of `upstream.api_key_file`).
        api_key: Secret,
    },
}

/// One managed-mode client.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Its name, logged as `client`.
    pub name: String,
    /// SHA-256 of its token.
    pub token_sha256: [u8; 32],
    /// May call the GET routes.
    pub read: bool,
    /// May call POST, PATCH and DELETE.
    pub write: bool,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("name", &self.name)
            .field("read", &self.read)
            .field("write", &self.write)
            .finish_non_exhaustive()
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line. The default.
    Json,
    /// Human-readable lines for development.
    Pretty,
}

/// Logging settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Default is JSON.
    pub format: LogFormat,
    /// EnvFilter directive for operational logs. Default is `info`.
    pub level: String,
}

/// Listener TLS files.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_path: PathBuf,
    /// PEM private key.
    pub key_path: PathBuf,
}

/// Client connection handling.
#[derive(Debug, Clone)]
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
    /// Deadline for one whole request. Default is 30 s.
    pub request_timeout: Duration,
    /// Largest request body accepted. Default is 256 KiB.
    pub max_request_body_bytes: usize,
}

impl Config {
    /// Loads defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// Like [`Config::load`] with an explicit environment instead of the process's (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Load(format!(
                    "configuration file {} does not exist or is not a file",
                    path.display()
                )));
            }
            builder = builder.add_source(
                config::File::from(path.to_path_buf()).format(config::FileFormat::Toml),
            );
        }
        let mut environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .try_parsing(true)
            .source(env);
        for key in LIST_KEYS {
            environment = environment.with_list_parse_key(key);
        }
        builder = builder.add_source(environment);
        Self::from_builder(builder)
    }

    /// Defaults overlaid with TOML text; no file, no environment. Handy for tests and embedding.
    pub fn from_toml(overrides: &str) -> Result<Config, ConfigError> {
        let builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::from_str(overrides, config::FileFormat::Toml));
        Self::from_builder(builder)
    }

    fn from_builder(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
    ) -> Result<Config, ConfigError> {
        let raw: RawSettings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        raw.validate()
    }
}

impl Config {
    /// The effective configuration as JSON, every secret masked: what `phonegate check-config`
    /// prints and the admin `/config` answers.
    pub fn to_masked_json(&self) -> serde_json::Value {
        use serde_json::json;
        let secs = |d: Duration| d.as_secs();
        let ms = |d: Duration| d.as_millis() as u64;
        let set = |present: bool| if present { json!("(set)") } else { json!(null) };
        let auth = match &self.auth {
            AuthConfig::Passthrough => json!({ "mode": "passthrough", "clients": [] }),
            AuthConfig::Managed { clients, .. } => json!({
                "mode": "managed",
                "clients": clients.iter().map(|c| {
                    let mut scopes = Vec::new();
                    if c.read { scopes.push("read"); }
                    if c.write { scopes.push("write"); }
                    json!({ "name": c.name, "token_sha256": "(set)", "scopes": scopes })
                }).collect::<Vec<_>>(),
            }),
        };
        let managed = matches!(self.auth, AuthConfig::Managed { .. });
        json!({
            "listen": self.listen.to_string(),
            "admin": {
                "listen": self.admin_listen.to_string(),
                "token": set(self.admin_token.is_some()),
            },
            "upstream": {
                "url": self.upstream.base_url,
                "timeout_ms": ms(self.upstream.timeout),
                "max_body_bytes": self.upstream.max_body_bytes,
                "ca_path": self.upstream.ca_path.as_ref().map(|p| p.display().to_string()),
                "max_in_flight": self.shield.max_in_flight,
                "queue_timeout_ms": ms(self.shield.queue_timeout),
                "max_retry_after_secs": secs(self.shield.max_retry_after),
                "breaker": {
                    "failures": self.shield.breaker_failures,
                    "open_secs": secs(self.shield.breaker_open),
                },
                "api_key": set(managed),
            },
            "cache": {
                "ttl_secs": secs(self.cache.ttl),
                "negative_ttl_secs": secs(self.cache.negative_ttl),
                "auth_failure_ttl_secs": secs(self.cache.auth_failure_ttl),
                "list_ttl_secs": secs(self.cache.list_ttl),
                "stale_while_revalidate_secs": secs(self.cache.stale_while_revalidate),
                "stale_if_error_secs": secs(self.cache.stale_if_error),
                "max_bytes": self.cache.max_bytes,
                "key_secret": set(self.cache.key_secret.is_some()),
            },
            "redact": {
                "mode": match self.redact.mode { redact::Mode::Mask => "mask", redact::Mode::Remove => "remove" },
                "extra_fields": self.redact.extra_fields,
                "allow_fields": self.redact.allow_fields,
                "max_depth": self.redact.max_depth,
            },
            "limits": {
                "misses_per_sec_per_key": self.shield.misses_per_sec_per_key,
                "miss_burst": self.shield.miss_burst,
                "requests_per_sec_per_key": self.shield.requests_per_sec_per_key,
                "request_burst": self.shield.request_burst,
                "max_tracked_keys": self.shield.max_tracked_keys,
                "upstream_requests_per_sec": self.shield.upstream_requests_per_sec,
                "upstream_burst": self.shield.upstream_burst,
            },
            "auth": auth,
            "cors": { "allowed_origins": self.cors_allowed_origins },
            "log": {
                "format": match self.log.format { LogFormat::Json => "json", LogFormat::Pretty => "pretty" },
                "level": self.log.level,
            },
            "tls": {
                "cert_path": self.tls.as_ref().map(|t| t.cert_path.display().to_string()),
                "key_path": self.tls.as_ref().map(|t| t.key_path.display().to_string()),
            },
            "server": {
                "header_timeout_ms": ms(self.server.header_timeout),
                "idle_timeout_ms": ms(self.server.idle_timeout),
                "drain_timeout_ms": ms(self.server.drain_timeout),
                "max_connections": self.server.max_connections,
                "request_timeout_ms": ms(self.server.request_timeout),
                "max_request_body_bytes": self.server.max_request_body_bytes,
            },
            "redis": RedisConfig::to_masked_json(self.redis.as_ref()),
        })
    }
}

impl RawSettings {
    fn validate(self) -> Result<Config, ConfigError> {
        let shield = validate_shield(&self.upstream, self.limits)?;
        let auth = validate_auth(self.auth, &self.upstream)?;
        let cors_allowed_origins = validate_origins(self.cors.allowed_origins)?;
        let cache = self.cache.validate()?;
        let redis = self.redis.validate(cache.key_secret.is_some())?;
        Ok(Config {
            redis,
            shield,
            auth,
            cors_allowed_origins,
            listen: parse_addr("listen", &self.listen)?,
            admin_listen: parse_addr("admin.listen", &self.admin.listen)?,
            admin_token: match non_empty(self.admin.token) {
                Some(token) if token.len() < MIN_KEY_SECRET_LEN => {
                    return Err(invalid(
                        "admin.token",
                        "(hidden)",
                        format!("must be at least {MIN_KEY_SECRET_LEN} bytes long"),
                    ));
                }
                token => token.map(Secret),
            },
            upstream: self.upstream.validate()?,
            cache,
            redact: self.redact.validate()?,
            log: self.log.validate()?,
            tls: self.tls.validate()?,
            server: ServerConfig {
                header_timeout: positive_ms(
                    "server.header_timeout_ms",
                    self.server.header_timeout_ms,
                )?,
                idle_timeout: positive_ms("server.idle_timeout_ms", self.server.idle_timeout_ms)?,
                drain_timeout: millis("server.drain_timeout_ms", self.server.drain_timeout_ms)?,
                max_connections: at_least_one(
                    "server.max_connections",
                    self.server.max_connections,
                )?,
                request_timeout: positive_ms(
                    "server.request_timeout_ms",
                    self.server.request_timeout_ms,
                )?,
                max_request_body_bytes: at_least_one(
                    "server.max_request_body_bytes",
                    self.server.max_request_body_bytes,
                )?,
            },
        })
    }
}

impl RawUpstream {
    fn validate(self) -> Result<UpstreamConfig, ConfigError> {
        let base_url = parse_base_url(&self.url)?;
        let max_body_bytes = usize::try_from(self.max_body_bytes)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                invalid(
                    "upstream.max_body_bytes",
                    self.max_body_bytes,
                    "must be a positive number of bytes",
                )
            })?;
        Ok(UpstreamConfig {
            base_url,
            timeout: positive_ms("upstream.timeout_ms", self.timeout_ms)?,
            max_body_bytes,
            ca_path: non_empty(self.ca_path).map(PathBuf::from),
        })
    }
}

impl RawCache {
    fn validate(self) -> Result<CacheConfig, ConfigError> {
        let key_secret = non_empty(self.key_secret);
        if let Some(secret) = &key_secret {
            if secret.len() < MIN_KEY_SECRET_LEN {
                return Err(invalid(
                    "cache.key_secret",
                    "(hidden)",
                    format!("must be at least {MIN_KEY_SECRET_LEN} bytes long"),
                ));
            }
        }
        Ok(CacheConfig {
            ttl: seconds("cache.ttl_secs", self.ttl_secs)?,
            negative_ttl: seconds("cache.negative_ttl_secs", self.negative_ttl_secs)?,
            auth_failure_ttl: seconds("cache.auth_failure_ttl_secs", self.auth_failure_ttl_secs)?,
            list_ttl: seconds("cache.list_ttl_secs", self.list_ttl_secs)?,
            stale_while_revalidate: seconds(
                "cache.stale_while_revalidate_secs",
                self.stale_while_revalidate_secs,
            )?,
            stale_if_error: seconds("cache.stale_if_error_secs", self.stale_if_error_secs)?,
            max_bytes: self.max_bytes,
            key_secret: key_secret.map(Secret),
        })
    }
}

impl RawRedact {
    fn validate(self) -> Result<RedactConfig, ConfigError> {
        let mode = match self.mode.to_ascii_lowercase().as_str() {
            "mask" => redact::Mode::Mask,
            "remove" => redact::Mode::Remove,
            _ => {
                return Err(invalid(
                    "redact.mode",
                    &self.mode,
                    "expected \"mask\" or \"remove\"",
                ));
            }
        };
        let max_depth = usize::try_from(self.max_depth)
            .ok()
            .filter(|d| (1..=MAX_REDACT_DEPTH).contains(d))
            .ok_or_else(|| {
                invalid(
                    "redact.max_depth",
                    self.max_depth,
                    format!("must be between 1 and {MAX_REDACT_DEPTH}"),
                )
            })?;
        Ok(RedactConfig {
            mode,
            extra_fields: clean_names("redact.extra_fields", self.extra_fields)?,
            allow_fields: clean_names("redact.allow_fields", self.allow_fields)?,
            max_depth,
        })
    }
}

impl RawLog {
    fn validate(self) -> Result<LogConfig, ConfigError> {
        let format = match self.format.to_ascii_lowercase().as_str() {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            _ => {
                return Err(invalid(
                    "log.format",
                    &self.format,
                    "expected \"json\" or \"pretty\"",
                ));
            }
        };
        if tracing_subscriber::EnvFilter::try_new(&self.level).is_err() {
            return Err(invalid(
                "log.level",
                &self.level,
                "expected a level such as \"info\" or a filter such as \"phonegate=debug\"",
            ));
        }
        Ok(LogConfig {
            format,
            level: self.level,
        })
    }
}

impl RawTls {
    fn validate(self) -> Result<Option<TlsConfig>, ConfigError> {
        match (non_empty(self.cert_path), non_empty(self.key_path)) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(TlsConfig {
                cert_path: cert.into(),
                key_path: key.into(),
            })),
            (Some(cert), None) => Err(invalid(
                "tls.key_path",
                "",
                format!("must be set when tls.cert_path is ({cert})"),
            )),
            (None, Some(key)) => Err(invalid(
                "tls.cert_path",
                "",
                format!("must be set when tls.key_path is ({key})"),
            )),
        }
    }
}

fn validate_shield(upstream: &RawUpstream, limits: RawLimits) -> Result<ShieldConfig, ConfigError> {
    let max_in_flight = at_least_one("upstream.max_in_flight", upstream.max_in_flight)?;
    if max_in_flight > tokio::sync::Semaphore::MAX_PERMITS {
        return Err(invalid(
            "upstream.max_in_flight",
            max_in_flight,
            "is too large",
        ));
    }
    if limits.misses_per_sec_per_key > 0 && limits.miss_burst == 0 {
        return Err(invalid(
            "limits.miss_burst",
            0,
            "must be at least 1 while limits.misses_per_sec_per_key is on",
        ));
    }
    let breaker_failures = u32::try_from(upstream.breaker.failures)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| {
            invalid(
                "upstream.breaker.failures",
                upstream.breaker.failures,
                "must be a whole number from 1 up",
            )
        })?;
    if upstream.breaker.open_secs == 0 {
        return Err(invalid(
            "upstream.breaker.open_secs",
            0,
            "must be at least 1 second",
        ));
    }
    Ok(ShieldConfig {
        max_in_flight,
        queue_timeout: positive_ms("upstream.queue_timeout_ms", upstream.queue_timeout_ms)?,
        max_retry_after: seconds(
            "upstream.max_retry_after_secs",
            upstream.max_retry_after_secs,
        )?,
        breaker_failures,
        breaker_open: seconds("upstream.breaker.open_secs", upstream.breaker.open_secs)?,
        misses_per_sec_per_key: limits.misses_per_sec_per_key,
        miss_burst: limits.miss_burst,
        requests_per_sec_per_key: limits.requests_per_sec_per_key,
        request_burst: if limits.request_burst == 0 {
            limits.requests_per_sec_per_key
        } else {
            limits.request_burst
        },
        max_tracked_keys: at_least_one("limits.max_tracked_keys", limits.max_tracked_keys)? as u64,
        upstream_requests_per_sec: limits.upstream_requests_per_sec,
        upstream_burst: if limits.upstream_burst == 0 {
            limits.upstream_requests_per_sec
        } else {
            limits.upstream_burst
        },
    })
}

fn validate_auth(auth: RawAuth, upstream: &RawUpstream) -> Result<AuthConfig, ConfigError> {
    match auth.mode.to_ascii_lowercase().as_str() {
        "passthrough" => Ok(AuthConfig::Passthrough),
        "managed" => {
            let api_key = match (
                non_empty(upstream.api_key.clone()),
                non_empty(upstream.api_key_file.clone()),
            ) {
                (Some(key), None) => key,
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .map_err(|e| {
                        invalid(
                            "upstream.api_key_file",
                            &path,
                            format!("cannot be read: {e}"),
                        )
                    })?
                    .trim()
                    .to_owned(),
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "upstream.api_key",
                        "(hidden)",
                        "set upstream.api_key or upstream.api_key_file, not both",
                    ));
                }
                (None, None) => {
                    return Err(invalid(
                        "upstream.api_key",
                        "",
                        "auth.mode = \"managed\" needs upstream.api_key or upstream.api_key_file",
                    ));
                }
            };
            if api_key.is_empty()
                || api_key
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || !b.is_ascii_graphic())
            {
                return Err(invalid(
                    "upstream.api_key",
                    "(hidden)",
                    "must be a non-empty key without spaces or control characters",
                ));
            }
            if auth.clients.is_empty() {
                return Err(invalid(
                    "auth.clients",
                    "[]",
                    "auth.mode = \"managed\" needs at least one [[auth.clients]] entry",
                ));
            }
            let mut clients: Vec<ClientConfig> = Vec::with_capacity(auth.clients.len());
            for raw in auth.clients {
                clients.push(validate_client(raw, &clients)?);
            }
            Ok(AuthConfig::Managed {
                clients,
                api_key: Secret(api_key),
            })
        }
        _ => Err(invalid(
            "auth.mode",
            &auth.mode,
            "expected \"passthrough\" or \"managed\"",
        )),
    }
}

fn validate_client(raw: RawClient, earlier: &[ClientConfig]) -> Result<ClientConfig, ConfigError> {
    let name = raw.name.trim().to_owned();
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid(
            "auth.clients.name",
            &raw.name,
            "must be 1 to 64 printable ASCII characters without spaces",
        ));
    }
    if earlier.iter().any(|c| c.name == name) {
        return Err(invalid(
            "auth.clients.name",
            &name,
            "is used by two clients",
        ));
    }
    let hex = raw.token_sha256.trim();
    let mut token_sha256 = [0u8; 32];
    let valid_hex = hex.len() == 64
        && hex
            .as_bytes()
            .chunks(2)
            .zip(token_sha256.iter_mut())
            .all(|(pair, out)| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|p| u8::from_str_radix(p, 16).ok())
                    .map(|b| *out = b)
                    .is_some()
            });
    if !valid_hex {
        return Err(invalid(
            "auth.clients.token_sha256",
            format!("(client {name})"),
            "must be 64 hex digits, as printed by `phonegate hash-token`",
        ));
    }
    if earlier.iter().any(|c| c.token_sha256 == token_sha256) {
        return Err(invalid(
            "auth.clients.token_sha256",
            format!("(client {name})"),
            "is used by two clients",
        ));
    }
    let (mut read, mut write) = (false, false);
    for scope in &raw.scopes {
        match scope.as_str() {
            "read" => read = true,
            "write" => write = true,
            other => {
                return Err(invalid(
                    "auth.clients.scopes",
                    other,
                    "scopes are \"read\" and \"write\"",
                ));
            }
        }
    }
    if !read && !write {
        return Err(invalid(
            "auth.clients.scopes",
            format!("(client {name})"),
            "needs \"read\", \"write\" or both",
        ));
    }
    Ok(ClientConfig {
        name,
        token_sha256,
        read,
        write,
    })
}

/// Origins as browsers send them: `scheme://host[:port]`, nothing else.
fn validate_origins(origins: Vec<String>) -> Result<Vec<String>, ConfigError> {
    origins
        .into_iter()
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .map(|o| {
            let ok = o
                .parse::<http::Uri>()
                .ok()
                .filter(|u| matches!(u.scheme_str(), Some("http") | Some("https")))
                .filter(|u| u.authority().is_some())
                .is_some_and(|u| u.path() == "/" && u.query().is_none() && !o.contains('@'))
                && !o.ends_with("/");
            if ok {
                Ok(o)
            } else {
                Err(invalid(
                    "cors.allowed_origins",
                    &o,
                    "expected an origin such as https://app.example.com (scheme, host, port only)",
                ))
            }
        })
        .collect()
}

fn at_least_one(key: &'static str, n: u64) -> Result<usize, ConfigError> {
    usize::try_from(n)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| invalid(key, n, "must be a whole number from 1 up"))
}

fn parse_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            value,
            "expected IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080",
        )
    })
}

/// Longest duration any setting may hold: far beyond any sensible TTL or timeout, and far from
/// the overflow that adding a larger one to a clock reading would cause.
const MAX_SECS: u64 = 365 * 24 * 60 * 60;

fn seconds(key: &'static str, secs: u64) -> Result<Duration, ConfigError> {
    if secs > MAX_SECS {
        return Err(invalid(
            key,
            secs,
            format!("must be at most {MAX_SECS} (one year)"),
        ));
    }
    Ok(Duration::from_secs(secs))
}

fn millis(key: &'static str, ms: u64) -> Result<Duration, ConfigError> {
    if ms / 1000 > MAX_SECS {
        return Err(invalid(key, ms, "must be at most one year"));
    }
    Ok(Duration::from_millis(ms))
}

fn positive_ms(key: &'static str, ms: u64) -> Result<Duration, ConfigError> {
    if ms == 0 {
        return Err(invalid(
            key,
            ms,
            "must be a positive number of milliseconds",
        ));
    }
    millis(key, ms)
}

/// The environment has no way to say "unset" but an empty string, so empty means unset.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

fn clean_names(key: &'static str, names: Vec<String>) -> Result<Vec<String>, ConfigError> {
    names
        .into_iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .map(|n| {
            if n.chars().all(|c| c.is_ascii_graphic()) {
                Ok(n)
            } else {
                Err(invalid(
                    key,
                    &n,
                    "field names must be printable ASCII without spaces",
                ))
            }
        })
        .collect()
}

/// Checks `upstream.url` and returns it without a trailing slash, ready for `{base}/phone-number/{id}`.
fn parse_base_url(raw: &str) -> Result<String, ConfigError> {
    const KEY: &str = "upstream.url";
    // An unusable URL may still carry a key in its query or userinfo: never echo those parts.
    let shown = if raw.contains('?') || raw.contains('@') || raw.contains('#') {
        "(hidden)"
    } else {
        raw
    };
    let value = shown;
    // A fragment would end every request target built on this base (`{base}/phone-number/{id}`
    // with a `#` in the base sends `GET {path before #}` for every id), so none is allowed.
    if raw.contains('#') {
        return Err(invalid(
            KEY,
            value,
            "the URL must not have a fragment (#...)",
        ));
    }
    let uri: http::Uri = raw
        .parse()
        .map_err(|_| invalid(KEY, value, "expected an absolute http:// or https:// URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(invalid(
                KEY,
                value,
                "expected an absolute http:// or https:// URL",
            ));
        }
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(invalid(KEY, value, "the URL has no host"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(invalid(
            KEY,
            "(hidden)",
            "credentials in the URL are not allowed; callers' keys are forwarded per request",
        ));
    }
    if uri.query().is_some() {
        return Err(invalid(KEY, value, "the URL must not have a query string"));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let c = Config::load_with_env(None, env(&[])).expect("defaults are valid");
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.upstream.base_url, "https://api.vapi.ai");
        assert_eq!(c.upstream.timeout, Duration::from_millis(5000));
        assert_eq!(c.cache.ttl, Duration::from_secs(60));
        assert_eq!(c.cache.negative_ttl, Duration::from_secs(5));
        assert_eq!(c.cache.max_bytes, 268_435_456);
        assert!(c.cache.key_secret.is_none());
        assert_eq!(c.redact.mode, redact::Mode::Mask);
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(c.tls.is_none());
        assert_eq!(c.server.header_timeout, Duration::from_secs(10));
    }

    #[test]
    fn environment_overrides_with_double_underscores() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("PHONEGATE__CACHE__TTL_SECS", "30"),
                ("PHONEGATE__LISTEN", "0.0.0.0:8000"),
                ("PHONEGATE__ADMIN__LISTEN", "[::1]:9999"),
                ("PHONEGATE__UPSTREAM__URL", "http://127.0.0.1:1234/"),
                ("PHONEGATE__REDACT__MODE", "remove"),
                ("PHONEGATE__REDACT__EXTRA_FIELDS", "mySecretThing,other"),
                ("PHONEGATE__CACHE__KEY_SECRET", "0123456789abcdef0123"),
                ("PHONEGATE_CONFIG", "/not/a/setting"),
            ]),
        )
        .expect("valid overrides");
        assert_eq!(c.cache.ttl, Duration::from_secs(30));
        assert_eq!(c.listen, "0.0.0.0:8000".parse().unwrap());
        assert_eq!(c.admin_listen, "[::1]:9999".parse().unwrap());
        assert_eq!(c.upstream.base_url, "http://127.0.0.1:1234");
        assert_eq!(c.redact.mode, redact::Mode::Remove);
        assert_eq!(c.redact.extra_fields, vec!["mySecretThing", "other"]);
        assert_eq!(
            c.cache.key_secret.as_ref().map(Secret::expose),
            Some("0123456789abcdef0123")
        );
    }

    #[test]
    fn a_file_layer_sits_between_defaults_and_environment() {
        let dir = std::env::temp_dir().join(format!("phonegate-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("layer.toml");
        std::fs::write(&path, "[cache]\nttl_secs = 7\nnegative_ttl_secs = 2\n").unwrap();
        let c = Config::load_with_env(Some(&path), env(&[("PHONEGATE__CACHE__TTL_SECS", "9")]))
            .unwrap();
        assert_eq!(
            c.cache.ttl,
            Duration::from_secs(9),
            "environment wins over file"
        );
        assert_eq!(
            c.cache.negative_ttl,
            Duration::from_secs(2),
            "file wins over defaults"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn errors_name_the_key_and_the_value() {
        let cases: &[(&str, &str, &str)] = &[
            ("PHONEGATE__CACHE__TTL_SECS", "soon", "ttl_secs"),
            ("PHONEGATE__LISTEN", "localhost", "listen"),
            ("PHONEGATE__REDACT__MODE", "scramble", "redact.mode"),
            ("PHONEGATE__LOG__FORMAT", "xml", "log.format"),
            ("PHONEGATE__UPSTREAM__URL", "ftp://x", "upstream.url"),
            (
                "PHONEGATE__UPSTREAM__TIMEOUT_MS",
                "0",
                "upstream.timeout_ms",
            ),
            ("PHONEGATE__REDACT__MAX_DEPTH", "500", "redact.max_depth"),
            ("PHONEGATE__CACHE__TTL", "5", "ttl"),
            (
                "PHONEGATE__CACHE__TTL_SECS",
                "99999999999",
                "cache.ttl_secs",
            ),
            (
                "PHONEGATE__SERVER__REQUEST_TIMEOUT_MS",
                "18446744073709551615",
                "request_timeout_ms",
            ),
        ];
        for (key, value, expect_key) in cases {
            let err = Config::load_with_env(None, env(&[(key, value)]))
                .err()
                .unwrap_or_else(|| panic!("{key}={value} must be rejected"));
            let msg = err.to_string();
            assert!(msg.contains(expect_key), "{msg} should name {expect_key}");
            if !matches!(*key, "PHONEGATE__CACHE__TTL") {
                assert!(msg.contains(value), "{msg} should show the value {value}");
            }
        }
    }

    #[test]
    fn a_short_key_secret_is_refused_without_echoing_it() {
        let err = Config::load_with_env(None, env(&[("PHONEGATE__CACHE__KEY_SECRET", "hunter2")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache.key_secret"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn tls_needs_both_files() {
        let err = Config::from_toml("[tls]\ncert_path = \"/a.pem\"\n").unwrap_err();
        assert!(err.to_string().contains("tls.key_path"), "{err}");
        let ok =
            Config::from_toml("[tls]\ncert_path = \"/a.pem\"\nkey_path = \"/k.pem\"\n").unwrap();
        assert!(ok.tls.is_some());
    }

    #[test]
    fn upstream_url_with_a_fragment_is_refused() {
        for url in [
            "http://upstream:8081/#x",
            "http://upstream:8081#x",
            "https://api.vapi.ai/#",
        ] {
            let err = Config::from_toml(&format!("[upstream]\nurl = \"{url}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("upstream.url") && err.contains("fragment"),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn upstream_url_with_credentials_or_query_is_refused() {
        for url in [
            "http://user:pw@host",
            "http://host/?a=1",
            "not a url",
            "/relative",
        ] {
            let toml = format!("[upstream]\nurl = {url:?}\n");
            let err = Config::from_toml(&toml).unwrap_err().to_string();
            assert!(err.contains("upstream.url"), "{url}: {err}");
            assert!(!err.contains("pw@"), "{err}");
            assert!(!err.contains("a=1"), "the query is not echoed: {err}");
        }
    }

    #[test]
    fn the_masked_view_hides_every_secret() {
        let c = Config::from_toml(
            "[cache]\nkey_secret = \"0123456789abcdef-very-secret\"\n\
             [upstream]\napi_key = \"sk-upstream-hidden\"\n\
             [auth]\nmode = \"managed\"\n\
             [[auth.clients]]\nname = \"web\"\n\
             token_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n\
             scopes = [\"read\"]\n",
        )
        .unwrap();
        let text = c.to_masked_json().to_string();
        for secret in ["very-secret", "sk-upstream-hidden", "9f86d081"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        let v = c.to_masked_json();
        assert_eq!(v["cache"]["key_secret"], "(set)");
        assert_eq!(v["auth"]["clients"][0]["name"], "web");
        assert_eq!(v["cache"]["ttl_secs"], 60);
        assert_eq!(v["upstream"]["breaker"]["failures"], 5);
    }

    #[test]
    fn managed_mode_needs_a_key_and_clients() {
        let err = Config::from_toml("[auth]\nmode = \"managed\"\n").unwrap_err();
        assert!(err.to_string().contains("upstream.api_key"), "{err}");
        let err = Config::from_toml("[upstream]\napi_key = \"k\"\n[auth]\nmode = \"managed\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("auth.clients"), "{err}");
        let err = Config::from_toml(
            "[upstream]\napi_key = \"k\"\n[auth]\nmode = \"managed\"\n\
             [[auth.clients]]\nname = \"x\"\ntoken_sha256 = \"abc\"\nscopes = [\"read\"]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("token_sha256"), "{err}");
    }

    #[test]
    fn cors_origins_are_checked() {
        assert!(
            Config::from_toml("[cors]\nallowed_origins = [\"https://app.example.com\"]\n").is_ok()
        );
        for bad in ["app.example.com", "https://app.example.com/path", "ftp://x"] {
            let err =
                Config::from_toml(&format!("[cors]\nallowed_origins = [{bad:?}]\n")).unwrap_err();
            assert!(
                err.to_string().contains("cors.allowed_origins"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn debug_output_hides_the_key_secret() {
        let c =
            Config::from_toml("[cache]\nkey_secret = \"0123456789abcdef-very-secret\"\n").unwrap();
        assert!(!format!("{:?}", c.cache).contains("very-secret"));
    }
}

//! Settings a reload (SIGHUP) applies to the running process: freshness, budgets, redaction,
//! callers and the upstream key, CORS origins, per-request bounds, the admin token, the log level.
//! They reach requests as one snapshot ([`crate::state::Live`]), so a request never sees some new
//! and some old.

use std::time::Duration;

use super::Secret;
use crate::redact;

/// What a reload may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    /// Bearer token for mutating admin calls. Default is unset (loopback-only).
    pub admin_token: Option<Secret>,
    /// How long answers stay fresh.
    pub freshness: FreshnessConfig,
    /// The redaction policy.
    pub redact: RedactConfig,
    /// Per-credential and whole-upstream budgets.
    pub limits: LimitsConfig,
    /// Whose credential goes upstream.
    pub auth: AuthConfig,
    /// Browser origins allowed by CORS; empty means no CORS headers. Default is empty.
    pub cors_allowed_origins: Vec<String>,
    /// Bounds on one request.
    pub requests: RequestConfig,
    /// EnvFilter directive for operational logs. Default is `info`.
    pub log_level: String,
}

/// Freshness of cached answers (their stale windows are fixed: [`super::StoreConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreshnessConfig {
    /// Freshness of a 200. Default is 60 s; 0 disables caching of 200s.
    pub ttl: Duration,
    /// Freshness of a 404. Default is 5 s; 0 disables caching of 404s.
    pub negative_ttl: Duration,
    /// How long an upstream 401/403 for a credential answers that credential's requests from
    /// memory. Default is 2 s; 0 turns it off.
    pub auth_failure_ttl: Duration,
    /// Freshness of a list answer. Default is 10 s; 0 disables caching of lists.
    pub list_ttl: Duration,
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

/// Budgets in front of the upstream. A reload that changes them starts them afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Per-credential upstream-bound requests a second; 0 is off. Default is 20.
    pub misses_per_sec_per_key: u32,
    /// Burst of that budget. Default is 40.
    pub miss_burst: u32,
    /// Per-credential requests a second, hits included; 0 is off. Default is 0.
    pub requests_per_sec_per_key: u32,
    /// Burst of that budget. Default is the rate.
    pub request_burst: u32,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Its name, logged as `client`.
    pub name: String,
    /// SHA-256 of its token.
    pub token_sha256: Secret<[u8; 32]>,
    /// May call the GET routes.
    pub read: bool,
    /// May call POST, PATCH and DELETE.
    pub write: bool,
}

/// Bounds on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestConfig {
    /// Deadline for one whole request. Default is 30 s.
    pub timeout: Duration,
    /// Largest request body accepted. Default is 256 KiB.
    pub max_body_bytes: usize,
}

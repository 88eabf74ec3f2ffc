//! The state shared by every request, built once at start-up and handed around as an `Arc`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::auth::Authenticator;
use crate::cache::coalesce::Coalescer;
use crate::cache::{CacheKey, Lifetimes, ResponseCache};
use crate::config::{AuthConfig, Config};
use crate::cors::Cors;
use crate::credential::Fingerprinter;
use crate::metrics::Metrics;
use crate::proxy::Fetched;
use crate::redact::Policy;
use crate::shield::Shield;
use crate::tls::TlsError;
use crate::upstream::Upstream;

/// Shared state: settings, cache, in-flight fetches, upstream client.
pub struct AppState {
    /// The validated settings.
    pub config: Config,
    /// Redacted answers by (id, credential).
    pub cache: ResponseCache,
    /// Upstream fetches in flight, by cache key.
    pub inflight: Arc<Coalescer<CacheKey, Fetched>>,
    /// The upstream client.
    pub upstream: Upstream,
    /// Keyed credential fingerprints.
    pub fingerprinter: Fingerprinter,
    /// The redaction policy.
    pub policy: Policy,
    /// Freshness and stale windows of cached answers.
    pub lifetimes: Lifetimes,
    /// Limits, cool-downs, breaker and concurrency cap in front of the upstream.
    pub shield: Shield,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Who callers are and which credential goes upstream.
    pub auth: Authenticator,
    /// CORS policy for browser callers.
    pub cors: Cors,
    /// A literal no answer may carry: managed mode's upstream key.
    pub scrub: Option<String>,
    /// Bumped by every successful write; a fetch that started before a write does not store its
    /// (possibly pre-write) answer.
    write_epoch: AtomicU64,
    draining: AtomicBool,
}

/// Why the state could not be built; start-up reports it as bad configuration.
#[derive(Debug)]
pub enum StateError {
    /// A TLS file or setting.
    Tls(TlsError),
    /// The OS random source failed (needed for a per-process fingerprint key).
    Random(String),
    /// The auth settings could not be used.
    Auth(String),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Tls(e) => e.fmt(f),
            StateError::Random(e) => write!(f, "cannot generate a random cache.key_secret: {e}"),
            StateError::Auth(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for StateError {}

impl AppState {
    /// Builds the shared state from validated settings.
    pub fn new(config: Config) -> Result<Arc<Self>, StateError> {
        let upstream = Upstream::new(&config.upstream).map_err(StateError::Tls)?;
        let fingerprinter = Fingerprinter::new(config.cache.key_secret.as_deref())
            .map_err(|e| StateError::Random(e.to_string()))?;
        let lifetimes = Lifetimes {
            ok: config.cache.ttl,
            not_found: config.cache.negative_ttl,
            list: config.cache.list_ttl,
            stale_while_revalidate: config.cache.stale_while_revalidate,
            stale_if_error: config.cache.stale_if_error,
        };
        let auth = Authenticator::new(&config.auth, &fingerprinter).map_err(StateError::Auth)?;
        let scrub = match &config.auth {
            AuthConfig::Managed { api_key, .. } => Some(api_key.clone()),
            AuthConfig::Passthrough => None,
        };
        Ok(Arc::new(AppState {
            auth,
            cors: Cors::new(&config.cors_allowed_origins),
            scrub,
            write_epoch: AtomicU64::new(0),
            cache: ResponseCache::new(config.cache.max_bytes, lifetimes.stale_window()),
            shield: Shield::new(&config.shield),
            metrics: Metrics::new(),
            lifetimes,
            inflight: Arc::default(),
            upstream,
            fingerprinter,
            policy: config.redact.policy(),
            config,
            draining: AtomicBool::new(false),
        }))
    }

    /// Whether shutdown has begun (readiness answers 503 from then on).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The current write epoch.
    pub fn write_epoch(&self) -> u64 {
        self.write_epoch.load(Ordering::Acquire)
    }

    /// Records a successful write (see `write_epoch`).
    pub fn bump_write_epoch(&self) {
        self.write_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Marks the start of shutdown.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

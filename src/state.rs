//! The state shared by every request, built once at start-up and handed around as an `Arc`.
//! Settings that may change on reload live in one swappable snapshot, [`Live`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;

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

/// Shared state: the live settings, cache, in-flight fetches, upstream client, shield, metrics.
pub struct AppState {
    /// Settings and what is derived from them; replaced whole by a reload.
    live: ArcSwap<Live>,
    /// Redacted answers by (resource, credential).
    pub cache: ResponseCache,
    /// Upstream fetches in flight, by cache key and the write epoch they started in.
    pub inflight: Arc<Coalescer<(CacheKey, u64), Fetched>>,
    /// The upstream client.
    pub upstream: Upstream,
    /// Keyed credential fingerprints.
    pub fingerprinter: Fingerprinter,
    /// Limits, cool-downs, breaker and concurrency cap in front of the upstream.
    pub shield: Shield,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Bumped by every successful write, purge and policy change; a fetch that started before
    /// one does not store its (possibly outdated) answer.
    write_epoch: AtomicU64,
    draining: AtomicBool,
}

/// The settings a request reads, and what is built from them, as one consistent snapshot: a
/// request loads it once, so a reload never shows it half old, half new.
pub struct Live {
    /// The validated settings.
    pub config: Config,
    /// The redaction policy.
    pub policy: Policy,
    /// Freshness and stale windows of cached answers.
    pub lifetimes: Lifetimes,
    /// Who callers are and which credential goes upstream.
    pub auth: Authenticator,
    /// CORS policy for browser callers.
    pub cors: Cors,
    /// A literal no answer may carry: managed mode's upstream key.
    pub scrub: Option<String>,
    /// Counts redaction policy changes; cache entries carry the generation that redacted them.
    pub policy_generation: u64,
}

impl Live {
    /// Builds the snapshot for `config`, whose redaction policy is generation `policy_generation`.
    pub fn new(
        config: Config,
        fingerprinter: &Fingerprinter,
        policy_generation: u64,
    ) -> Result<Self, StateError> {
        let lifetimes = Lifetimes {
            ok: config.cache.ttl,
            not_found: config.cache.negative_ttl,
            list: config.cache.list_ttl,
            stale_while_revalidate: config.cache.stale_while_revalidate,
            stale_if_error: config.cache.stale_if_error,
        };
        let auth = Authenticator::new(&config.auth, fingerprinter).map_err(StateError::Auth)?;
        let scrub = match &config.auth {
            AuthConfig::Managed { api_key, .. } => Some(api_key.clone()),
            AuthConfig::Passthrough => None,
        };
        Ok(Live {
            policy: config.redact.policy(),
            lifetimes,
            auth,
            cors: Cors::new(&config.cors_allowed_origins),
            scrub,
            policy_generation,
            config,
        })
    }
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
        let cache = ResponseCache::new(
            config.cache.max_bytes,
            config
                .cache
                .stale_while_revalidate
                .max(config.cache.stale_if_error),
        );
        let shield = Shield::new(&config.shield);
        let live = Live::new(config, &fingerprinter, 0)?;
        Ok(Arc::new(AppState {
            live: ArcSwap::from_pointee(live),
            cache,
            inflight: Arc::default(),
            upstream,
            fingerprinter,
            shield,
            metrics: Metrics::new(),
            write_epoch: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        }))
    }

    /// The current settings snapshot.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Replaces the settings snapshot (see [`crate::reload`]).
    pub fn set_live(&self, live: Live) {
        self.live.store(Arc::new(live));
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

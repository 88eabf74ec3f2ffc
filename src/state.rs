//! The state shared by every request, built once at start-up and handed around as an `Arc`.
//! Settings that may change on reload live in one swappable snapshot, [`Live`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::auth::Authenticator;
use crate::cache::store::View;
use crate::cache::{Lifetimes, Store};
use crate::clock::Clock;
use crate::config::{Config, LiveConfig, Secret, StartupConfig};
use crate::cors::Cors;
use crate::credential::Fingerprinter;
use crate::metrics::Metrics;
use crate::redact::Policy;
use crate::shield::{Budgets, Shield, headers};
use crate::telemetry::Telemetry;
use crate::tier::Tier;
use crate::tls::{Certificates, TlsError};
use crate::upstream::Upstream;

/// How much longer than a fetch may take (queue wait plus upstream exchange) a fill lock lives:
/// it should only ever expire when its holder vanished.
const FILL_LOCK_MARGIN: Duration = Duration::from_secs(1);

/// Shared state: the settings, cache, upstream client, shield, metrics.
pub struct AppState {
    /// The settings fixed at start-up; a reload never changes them.
    pub startup: StartupConfig,
    /// Settings and what is derived from them; replaced whole by a reload.
    live: ArcSwap<Live>,
    /// Redacted answers by (resource, credential), in memory and, optionally, in Redis; and the
    /// fetches in flight.
    pub store: Arc<Store>,
    /// The upstream client.
    pub upstream: Upstream,
    /// The listener's certificate and the upstream's trust store and client certificate, as
    /// last read from their files.
    pub certificates: Certificates,
    /// Keyed credential fingerprints.
    pub fingerprinter: Fingerprinter,
    /// Limits, cool-downs, breaker and concurrency cap in front of the upstream.
    pub shield: Shield,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The clock freshness, stale windows, cool-downs and the breaker are measured on.
    pub clock: Clock,
    /// Trace export; `None` when tracing is off.
    pub telemetry: Option<Telemetry>,
    draining: AtomicBool,
}

/// The settings a request reads, and what is built from them, as one consistent snapshot: a
/// request loads it once, so a reload never shows it half old, half new.
pub struct Live {
    /// The settings a reload applies.
    pub config: LiveConfig,
    /// The budgets `config.limits` describe.
    pub budgets: Arc<Budgets>,
    /// The `RateLimit-Policy` header for those budgets; `None` when no per-credential one is on.
    pub rate_policy: Option<HeaderValue>,
    /// The redaction policy.
    pub policy: Policy,
    /// Its [`Policy::identity`]: shared-tier entries are filed under it.
    pub policy_id: String,
    /// Freshness and stale windows of cached answers.
    pub lifetimes: Lifetimes,
    /// Who callers are and which credential goes upstream.
    pub auth: Authenticator,
    /// CORS policy for browser callers.
    pub cors: Cors,
    /// Counts redaction policy changes; cache entries carry the generation that redacted them.
    pub policy_generation: u64,
}

impl Live {
    /// What the cache store needs of this snapshot.
    pub fn view(&self) -> View<'_> {
        View {
            policy_id: &self.policy_id,
            policy_generation: self.policy_generation,
            lifetimes: self.lifetimes,
        }
    }

    /// The longest an entry can live under these settings: freshness plus stale window.
    pub fn horizon(&self) -> Duration {
        let l = &self.lifetimes;
        l.ok.max(l.not_found)
            .max(l.list)
            .saturating_add(l.stale_window())
    }

    /// Builds the snapshot for `config` running beside `startup`; its redaction policy is
    /// generation `policy_generation`, and its budgets are `budgets` (new ones unless a reload
    /// left `limits.*` as they were).
    pub fn new(
        config: LiveConfig,
        startup: &StartupConfig,
        fingerprinter: &Fingerprinter,
        policy_generation: u64,
        budgets: Option<Arc<Budgets>>,
    ) -> Result<Self, StateError> {
        let lifetimes = Lifetimes {
            ok: config.freshness.ttl,
            not_found: config.freshness.negative_ttl,
            list: config.freshness.list_ttl,
            stale_while_revalidate: startup.store.stale_while_revalidate,
            stale_if_error: startup.store.stale_if_error,
        };
        let budgets = budgets.unwrap_or_else(|| {
            Arc::new(Budgets::new(
                &config.limits,
                startup.shield.max_tracked_keys,
            ))
        });
        let auth = Authenticator::new(&config.auth, fingerprinter).map_err(StateError::Auth)?;
        let policy = config.redact.policy();
        Ok(Live {
            policy_id: policy.identity(),
            policy,
            lifetimes,
            auth,
            cors: Cors::new(&config.cors_allowed_origins),
            policy_generation,
            rate_policy: headers::policy(&config.limits),
            budgets,
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
    /// The shared tier's settings could not be used.
    Redis(String),
    /// The trace exporter could not be set up.
    Telemetry(String),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Tls(e) => e.fmt(f),
            StateError::Random(e) => write!(f, "cannot generate a random cache.key_secret: {e}"),
            StateError::Auth(e) => f.write_str(e),
            StateError::Redis(e) => f.write_str(e),
            StateError::Telemetry(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for StateError {}

impl AppState {
    /// Builds the shared state from validated settings.
    pub fn new(config: Config) -> Result<Arc<Self>, StateError> {
        let Config { startup, live } = config;
        let telemetry = Telemetry::new(&startup.otel).map_err(StateError::Telemetry)?;
        let certificates = Certificates::load(&startup).map_err(StateError::Tls)?;
        let upstream = Upstream::new(&startup.upstream, &certificates).map_err(StateError::Tls)?;
        let fingerprinter =
            Fingerprinter::new(startup.store.key_secret.as_ref().map(Secret::expose))
                .map_err(|e| StateError::Random(e.to_string()))?;
        let metrics = Arc::new(Metrics::new());
        metrics.cache_bound(startup.store.max_bytes);
        let clock = Clock::default();
        // Longer than one upstream call may take (queue wait plus exchange): fill locks and
        // the shared cool-down probe only expire when their holder vanished.
        let fill_lock = startup.shield.queue_timeout + startup.upstream.timeout + FILL_LOCK_MARGIN;
        let tier = match &startup.redis {
            Some(redis) => Some(Arc::new(
                Tier::new(redis, fill_lock, Arc::clone(&metrics)).map_err(StateError::Redis)?,
            )),
            None => None,
        };
        let shield = Shield::new(&startup.shield, tier.clone(), fill_lock);
        let stale_window = startup
            .store
            .stale_while_revalidate
            .max(startup.store.stale_if_error);
        let live = Live::new(live, &startup, &fingerprinter, 0, None)?;
        let store = Store::new(
            startup.store.max_bytes,
            stale_window,
            live.horizon(),
            tier,
            Arc::clone(&metrics),
            clock.clone(),
        );
        Ok(Arc::new(AppState {
            startup,
            live: ArcSwap::from_pointee(live),
            store,
            upstream,
            certificates,
            fingerprinter,
            shield,
            metrics,
            clock,
            telemetry,
            draining: AtomicBool::new(false),
        }))
    }

    /// The current settings snapshot.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// The configuration running now: the start-up part and the current live part.
    pub fn running_config(&self) -> Config {
        Config {
            startup: self.startup.clone(),
            live: self.live().config.clone(),
        }
    }

    /// Replaces the settings snapshot (see [`crate::reload`]).
    pub fn set_live(&self, live: Live) {
        self.live.store(Arc::new(live));
    }

    /// Whether shutdown has begun (readiness answers 503 from then on).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Marks the start of shutdown.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

//! Shielding the upstream: the gates every upstream call passes and the bookkeeping after it.
//!
//! In order, a call needing the upstream must get past: the caller's miss budget
//! ([`limits`]), the caller's 429 cool-down ([`cooldown`]), the circuit breaker ([`breaker`]),
//! and a concurrency slot (a semaphore with a bounded queue wait). Each refusal is a [`Refusal`]
//! that the request path turns into a stale answer when it has one, or a JSON error.
//!
//! With the shared tier ([`crate::tier`]) the budgets and the cool-downs hold per credential
//! across every replica: they are kept in Redis, and kept locally only while Redis does not
//! answer. The breaker and the concurrency cap stay per replica: they protect this replica.

pub(crate) mod breaker;
pub(crate) mod cooldown;
pub(crate) mod headers;
pub(crate) mod limits;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cache::Entry;
use crate::config::{LimitsConfig, ShieldConfig};
use crate::credential::Fingerprint;
use crate::error::ProxyError;
use crate::tier::Tier;
use breaker::{Admission, Breaker};
use cooldown::{Cooldowns, Gate};
use limits::KeyedLimiter;
pub(crate) use limits::Remaining;

/// Why the shield refused a call; each becomes a 429 or 503 with `Retry-After` (or stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The caller exceeded `limits.requests_per_sec_per_key`.
    RequestLimit(Duration),
    /// The caller exceeded its miss budget (`limits.misses_per_sec_per_key`).
    MissLimit(Duration),
    /// The caller's key is cooling down after an upstream 429.
    CoolingDown(Duration),
    /// The breaker is open.
    BreakerOpen(Duration),
    /// No upstream slot freed up within `upstream.queue_timeout_ms`.
    QueueFull,
    /// The budget for all upstream requests together (`limits.upstream_requests_per_sec`) is
    /// spent.
    UpstreamLimit(Duration),
    /// The upstream answered this credential 401 or 403 within `cache.auth_failure_ttl_secs`.
    RecentAuthFailure {
        /// The status it answered.
        status: StatusCode,
        /// How long until it is asked again.
        left: Duration,
    },
}

/// Permission for one upstream call; hand it back with [`Shield::record`].
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    breaker: Admission,
    cooldown_probe: bool,
    shared_probe: bool,
    misses: Option<Remaining>,
}

impl Pass {
    /// What is left of the miss budget this call was charged to; `None` when none was.
    pub fn misses(&self) -> Option<Remaining> {
        self.misses
    }
}

/// What an upstream call said about the upstream's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It answered as designed (2xx, 3xx, 4xx but 429).
    Healthy,
    /// It failed: refused, timed out, broke, sent garbage, or answered 5xx.
    Unhealthy,
    /// It answered 429 with this `Retry-After`.
    RateLimited(Duration),
}

impl Health {
    /// Classifies an upstream call's result.
    pub fn of(result: &Result<Arc<Entry>, ProxyError>) -> Health {
        match result {
            Ok(entry) if entry.status == StatusCode::TOO_MANY_REQUESTS => Health::RateLimited(
                cooldown::retry_after(entry.retry_after.as_deref(), SystemTime::now()),
            ),
            Ok(entry) if entry.status.is_server_error() => Health::Unhealthy,
            Ok(_) => Health::Healthy,
            Err(_) => Health::Unhealthy,
        }
    }
}

/// The budgets `limits.*` describe. They belong to the settings snapshot
/// ([`crate::state::Live`]), so a request checks the budgets of the settings it runs under; a
/// reload that changes `limits.*` builds new ones (starting afresh), any other reload keeps them.
pub struct Budgets {
    misses: Option<KeyedLimiter>,
    requests: Option<KeyedLimiter>,
    upstream: Option<limits::DirectLimiter>,
}

impl Budgets {
    /// Budgets for `config`, tracking at most `max_tracked_keys` credentials each.
    pub fn new(config: &LimitsConfig, max_tracked_keys: u64) -> Self {
        Budgets {
            misses: KeyedLimiter::new(
                config.misses_per_sec_per_key,
                config.miss_burst,
                max_tracked_keys,
            ),
            requests: KeyedLimiter::new(
                config.requests_per_sec_per_key,
                config.request_burst,
                max_tracked_keys,
            ),
            upstream: limits::DirectLimiter::new(
                config.upstream_requests_per_sec,
                config.upstream_burst,
            ),
        }
    }
}

/// The upstream's shield. One per process, in the shared state.
pub struct Shield {
    breaker: Breaker,
    cooldowns: Cooldowns,
    slots: Arc<Semaphore>,
    queue_timeout: Duration,
    max_retry_after: Duration,
    /// How long the shared cool-down probe is held: as long as one upstream call may take, so a
    /// probe whose replica died (or whose answer was lost) blocks the others no longer.
    probe_lease: Duration,
    auth_failures: moka::sync::Cache<Fingerprint, AuthFailure>,
    tier: Option<Arc<Tier>>,
}

/// An upstream 401/403 for a credential, answered from memory until `until`.
#[derive(Debug, Clone, Copy)]
struct AuthFailure {
    status: StatusCode,
    until: Instant,
}

impl Shield {
    /// Builds the shield from its settings; with `tier`, budgets and cool-downs are shared.
    pub fn new(config: &ShieldConfig, tier: Option<Arc<Tier>>, probe_lease: Duration) -> Self {
        Shield {
            breaker: Breaker::new(config.breaker_failures, config.breaker_open),
            cooldowns: Cooldowns::new(config.max_retry_after, config.max_tracked_keys),
            slots: Arc::new(Semaphore::new(config.max_in_flight)),
            queue_timeout: config.queue_timeout,
            max_retry_after: config.max_retry_after,
            probe_lease,
            // The TTL only bounds memory; each entry's own `until` decides, so a reload that
            // changes cache.auth_failure_ttl_secs applies to new entries at once.
            auth_failures: moka::sync::Cache::builder()
                .max_capacity(config.max_tracked_keys)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            tier,
        }
    }

    /// Remembers that the upstream answered `key` with `status` (401 or 403), for `ttl`.
    pub fn note_auth_failure(
        &self,
        key: Fingerprint,
        status: StatusCode,
        ttl: Duration,
        now: Instant,
    ) {
        if !ttl.is_zero() {
            self.auth_failures.insert(
                key,
                AuthFailure {
                    status,
                    until: now + ttl,
                },
            );
        }
    }

    /// Takes one unit of `limiter`'s budget for `key`: in Redis when the tier answers, else here.
    async fn take(
        &self,
        limiter: &KeyedLimiter,
        key: &Fingerprint,
        kind: char,
    ) -> Result<Remaining, Duration> {
        if let Some(tier) = &self.tier {
            if let Some(verdict) = tier
                .take(key, kind, limiter.per_sec(), limiter.burst())
                .await
            {
                return verdict;
            }
        }
        limiter.check(key)
    }

    /// The all-requests budget of the caller's limit key, checked for every request (hits
    /// included) when enabled.
    /// Returns what is left of it; `None` when it is off.
    pub async fn check_request(
        &self,
        budgets: &Budgets,
        key: &Fingerprint,
    ) -> Result<Option<Remaining>, Refusal> {
        match &budgets.requests {
            Some(limiter) => self
                .take(limiter, key, 'r')
                .await
                .map(Some)
                .map_err(Refusal::RequestLimit),
            None => Ok(None),
        }
    }

    /// Admits one upstream call: the caller's miss budget in `budgets` (keyed by `charge`, the caller's limit
    /// key; `None` charges nothing), then the cool-down of `upstream_key` (the credential the call
    /// will use upstream), then the breaker.
    ///
    /// Background refreshes pass `None`: they serve no caller and should not use up a caller's
    /// budget, but they still respect the cool-down and the breaker.
    pub async fn admit(
        &self,
        budgets: &Budgets,
        charge: Option<&Fingerprint>,
        upstream_key: &Fingerprint,
        now: Instant,
    ) -> Result<Pass, Refusal> {
        // A key the upstream refused moments ago is answered from memory, before it spends any
        // budget: a wrong or revoked key hammering phonegate never reaches the upstream.
        if let Some(failure) = self.auth_failures.get(upstream_key) {
            if now < failure.until {
                return Err(Refusal::RecentAuthFailure {
                    status: failure.status,
                    left: failure.until - now,
                });
            }
        }
        let mut misses = None;
        if let (Some(limiter), Some(key)) = (&budgets.misses, charge) {
            misses = Some(
                self.take(limiter, key, 'm')
                    .await
                    .map_err(Refusal::MissLimit)?,
            );
        }
        // A cool-down this replica saw itself holds even while Redis is away.
        let cooldown_probe = match self.cooldowns.check(upstream_key, now) {
            Gate::Open => false,
            Gate::Probe => true,
            Gate::Cooling(left) => return Err(Refusal::CoolingDown(left)),
        };
        if let Some(limiter) = &budgets.upstream {
            let verdict = match &self.tier {
                Some(tier) => tier
                    .take_upstream(limiter.per_sec(), limiter.burst())
                    .await
                    .unwrap_or_else(|| limiter.check()),
                None => limiter.check(),
            };
            if let Err(left) = verdict {
                if cooldown_probe {
                    self.cooldowns.release_probe(upstream_key);
                }
                return Err(Refusal::UpstreamLimit(left));
            }
        }
        let mut shared_probe = false;
        if let Some(tier) = &self.tier {
            match tier.cooldown(upstream_key, self.probe_lease).await {
                Some(Ok(probe)) => shared_probe = probe,
                Some(Err(left)) => {
                    if cooldown_probe {
                        self.cooldowns.release_probe(upstream_key);
                    }
                    return Err(Refusal::CoolingDown(left));
                }
                None => {}
            }
        }
        match self.breaker.admit(now) {
            Ok(breaker) => Ok(Pass {
                breaker,
                cooldown_probe,
                shared_probe,
                misses,
            }),
            Err(left) => {
                let pass = Pass {
                    breaker: Admission::Normal,
                    cooldown_probe,
                    shared_probe,
                    misses,
                };
                // Give the probes back so the next caller can take them when the breaker allows.
                self.release(upstream_key, pass).await;
                Err(Refusal::BreakerOpen(left))
            }
        }
    }

    /// Waits (boundedly) for one of the `upstream.max_in_flight` slots.
    pub async fn slot(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        match tokio::time::timeout(self.queue_timeout, Arc::clone(&self.slots).acquire_owned())
            .await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Refusal::QueueFull),
        }
    }

    /// Records what a call admitted with `pass` said about the upstream. A 429 starts the
    /// cool-down here and, with the tier, for every replica before this returns.
    pub async fn record(&self, key: Fingerprint, pass: Pass, health: Health, now: Instant) {
        self.breaker
            .record(pass.breaker, health != Health::Unhealthy, now);
        match health {
            Health::RateLimited(retry_after) => {
                self.cooldowns.start(key, retry_after, now);
                if let Some(tier) = &self.tier {
                    let capped = retry_after.min(self.max_retry_after);
                    tier.start_cooldown(
                        &key,
                        capped,
                        self.max_retry_after + Duration::from_secs(60),
                    )
                    .await;
                }
            }
            _ => {
                if pass.cooldown_probe {
                    self.cooldowns.end(&key);
                }
                if pass.shared_probe {
                    if let Some(tier) = &self.tier {
                        tier.end_cooldown(&key).await;
                    }
                }
            }
        }
    }

    /// Gives back a pass whose call never happened (no slot, or another replica's fill served
    /// it): the breaker and cool-down probes are released without a verdict.
    pub async fn release(&self, key: &Fingerprint, pass: Pass) {
        if pass.cooldown_probe {
            self.cooldowns.release_probe(key);
        }
        if pass.breaker == Admission::Probe {
            self.breaker.release_probe();
        }
        if pass.shared_probe {
            if let Some(tier) = &self.tier {
                tier.release_probe(key).await;
            }
        }
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> breaker::BreakerState {
        self.breaker.state()
    }
}

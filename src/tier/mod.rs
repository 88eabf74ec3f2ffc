//! The shared tier: Redis (standalone or Cluster) behind this replica's memory, so that several
//! replicas act as one cache and one shield.
//!
//! What lives here: redacted entries with the metadata a hit needs ([`codec`]), under names that
//! never hold a credential ([`keys`]); per-number and per-credential generations that writes and
//! purges move; short fill locks so one replica fetches for all; GCRA budgets and 429 cool-downs
//! per credential (`scripts`); and an invalidation channel every replica listens on
//! (`pubsub`).
//!
//! Redis is never a new way to fail. Every call has a deadline (`redis.timeout_ms`) and goes
//! through a breaker (`redis.breaker.*`) that stops waiting on a dead Redis and probes it; a call
//! that fails or is skipped is a miss, a local decision, or an invalidation queued for replay,
//! never an error for the caller. Connections are made lazily and re-made automatically.

pub mod codec;
pub mod keys;
mod pubsub;
mod scripts;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};

use crate::cache::Scope;
use crate::config::RedisConfig;
use crate::credential::{Fingerprint, KeyId};
use crate::metrics::Metrics;
use crate::shield::breaker::{Breaker, BreakerState};
use crate::shield::limits::Remaining;
use keys::{EntryKeys, Keys};
use scripts::Scripts;

pub use pubsub::Local;

/// Most invalidations kept for replay while Redis is unreachable; past it, the oldest are
/// replaced by one "everything" invalidation, which covers them.
const MAX_PENDING: usize = 1024;

/// How soon a waiting replica first looks for another replica's fill.
const FILL_POLL: Duration = Duration::from_millis(10);
/// The longest pause between two looks.
const MAX_FILL_POLL: Duration = Duration::from_millis(100);

/// The shared tier of one replica.
pub struct Tier {
    conn: Conn,
    pubsub_clients: Vec<redis::Client>,
    keys: Keys,
    scripts: Scripts,
    timeout: Duration,
    fill_wait: Duration,
    lock_ttl: Duration,
    breaker: Breaker,
    metrics: Arc<Metrics>,
    /// Names this replica on the channel, so it skips its own messages.
    instance: String,
    namespace: ArcSwap<Namespace>,
    pending: Mutex<Vec<Scope>>,
    subscribed: AtomicBool,
    /// Whether the purge counters have been read at least once (entry names depend on them).
    namespace_loaded: AtomicBool,
}

/// The purge counters every replica mirrors: part of every entry's name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Namespace {
    epoch: u64,
    credentials: HashMap<KeyId, u64>,
}

/// A standalone connection (auto-reconnecting) or a cluster connection (slot-aware).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What a fill coordinator found.
#[derive(Debug)]
pub enum Claim {
    /// Another replica filled the entry: its record.
    Filled(Vec<u8>),
    /// This replica holds the fill lock; the generation the fill began in.
    Claimed(String),
    /// Another replica holds the lock; wait for its fill (generation as above).
    Busy(String),
    /// Redis did not answer: fetch without it.
    Unavailable,
}

/// How a wait for another replica's fill ended.
#[derive(Debug)]
pub enum Waited {
    /// The entry appeared.
    Filled(Vec<u8>),
    /// The lock went away without an entry (the other replica's answer was not cacheable, or it
    /// died and the lock expired): this replica now holds the lock for generation `.0`.
    Claimed(String),
    /// Waited `redis.fill_wait_ms`, or Redis stopped answering: fetch without it.
    GaveUp,
}

/// A token proving a fill lock is ours.
#[derive(Debug, Clone)]
pub struct Token(String);

impl Token {
    /// A fresh random token.
    pub fn new_random() -> Self {
        Token(uuid::Uuid::new_v4().simple().to_string())
    }
}

impl Tier {
    /// Builds the tier from settings; connections are made lazily, so an unreachable Redis at
    /// start-up is only a tier that is down. `fill_lock` is how long a fill lock lives: longer
    /// than a fetch may take, so it only expires when its holder vanished.
    pub fn new(
        config: &RedisConfig,
        fill_lock: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        // redis-rs builds its TLS configuration with rustls' process-wide provider; install the
        // one phonegate is built with (a no-op if it is already installed).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let root_cert = match &config.ca_path {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("cannot read redis.ca_path {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let infos = config
            .urls
            .iter()
            .map(|url| {
                let info = url
                    .expose()
                    .into_connection_info()
                    .map_err(|e| format!("redis.url is not usable ({:?})", e.kind()))?;
                Ok(match &config.password {
                    Some(password) => {
                        let settings = info
                            .redis_settings()
                            .clone()
                            .set_password(password.expose());
                        info.set_redis_settings(settings)
                    }
                    None => info,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let client = |info: redis::ConnectionInfo| match &root_cert {
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(info),
        };
        let pubsub_clients = infos
            .iter()
            .map(|info| client(info.clone()).map_err(|e| format!("redis.url: {:?}", e.kind())))
            .collect::<Result<Vec<_>, String>>()?;
        // The client's own timeouts back up the per-call deadline; reconnects retry quickly and
        // forever, since the breaker, not the client, decides when to stop waiting.
        let conn = if config.cluster {
            let mut builder = redis::cluster::ClusterClientBuilder::new(infos.clone())
                .connection_timeout(Duration::from_secs(1))
                .response_timeout(Duration::from_secs(1))
                .retries(1);
            if let Some(pem) = &root_cert {
                builder = builder.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                });
            }
            let cluster = builder
                .build()
                .map_err(|e| format!("redis.url (cluster): {:?}", e.kind()))?;
            Conn::Cluster(
                cluster.get_pending_async_connection_with_config(
                    redis::cluster::ClusterConfig::new()
                        .set_connection_timeout(Duration::from_secs(1))
                        .set_response_timeout(Duration::from_secs(1)),
                ),
            )
        } else {
            let single = pubsub_clients
                .first()
                .cloned()
                .ok_or_else(|| "redis.url: no URL".to_owned())?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(Duration::from_secs(1)))
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_secs(1))
                .set_number_of_retries(1);
            Conn::Single(
                ConnectionManager::new_lazy_with_config(single, manager_config)
                    .map_err(|e| format!("redis.url: {:?}", e.kind()))?,
            )
        };
        tracing::info!(
            urls = ?config.masked_urls(),
            cluster = config.cluster,
            prefix = %config.prefix,
            "shared tier on: redis (connections are made lazily; redis trouble is a slower path, \
             not an error)"
        );
        Ok(Tier {
            conn,
            pubsub_clients,
            keys: Keys::new(&config.prefix),
            scripts: Scripts::default(),
            timeout: config.timeout,
            fill_wait: config.fill_wait,
            lock_ttl: fill_lock,
            breaker: Breaker::new(config.breaker_failures, config.breaker_open),
            metrics,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            namespace: ArcSwap::from_pointee(Namespace::default()),
            pending: Mutex::new(Vec::new()),
            subscribed: AtomicBool::new(false),
            namespace_loaded: AtomicBool::new(false),
        })
    }

    /// Starts listening for other replicas' invalidations, applying them to `local`. The
    /// listener ends when the tier is dropped.
    pub fn start(self: &Arc<Self>, local: Arc<dyn Local>) {
        tokio::spawn(pubsub::listen(Arc::downgrade(self), local));
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The namespace part of an entry name for a credential with `key_id`.
    pub fn namespace(&self, key_id: KeyId) -> String {
        let ns = self.namespace.load();
        let credential = ns.credentials.get(&key_id).copied().unwrap_or(0);
        format!("{}.{credential}", ns.epoch)
    }

    /// Whether invalidations from other replicas are arriving.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// Whether what Redis holds may be read: this replica hears invalidations, knows the current
    /// purge counters, and has no invalidation of its own that Redis has not taken yet. Otherwise
    /// lookups and fills go without Redis (a miss, and no cross-replica wait) until it is.
    pub fn is_trusted(&self) -> bool {
        self.is_subscribed()
            && self.namespace_loaded.load(Ordering::Acquire)
            && self
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
    }

    /// The Redis breaker's state (for `/metrics`).
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Runs one Redis call under the deadline and the breaker; `None` when it failed, timed out
    /// or was not attempted.
    async fn run<T>(&self, call: impl Future<Output = RedisResult<T>>) -> Option<T> {
        let metrics = &self.metrics.tier;
        let Ok(admission) = self.breaker.admit(Instant::now()) else {
            metrics.redis_failure("breaker_open");
            return None;
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, call).await;
        metrics.redis_call(started.elapsed().as_secs_f64());
        let (value, failure) = match outcome {
            Ok(Ok(value)) => (Some(value), None),
            Ok(Err(error)) => {
                tracing::debug!(kind = ?error.kind(), "redis call failed");
                (None, Some("error"))
            }
            Err(_) => (None, Some("timeout")),
        };
        if let Some(kind) = failure {
            metrics.redis_failure(kind);
        }
        self.breaker
            .record(admission, failure.is_none(), Instant::now());
        value
    }

    /// The record of a current entry, if Redis has one (`None` also when Redis did not answer).
    pub async fn lookup(&self, keys: &EntryKeys) -> Option<Vec<u8>> {
        if !self.is_trusted() {
            self.metrics.tier.l2_lookup("untrusted");
            return None;
        }
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.lookup.prepare_invoke();
        invocation.key(&keys.generation).key(&keys.entry);
        let found: Option<Option<Vec<u8>>> = self.run(invocation.invoke_async(&mut conn)).await;
        let metrics = &self.metrics.tier;
        match found {
            Some(Some(record)) => {
                metrics.l2_lookup("hit");
                Some(record)
            }
            Some(None) => {
                metrics.l2_lookup("miss");
                None
            }
            None => {
                metrics.l2_lookup("error");
                None
            }
        }
    }

    /// Looks for a fresh entry and, failing that, tries to take the fill lock.
    pub async fn claim(&self, keys: &EntryKeys, token: &Token) -> Claim {
        if !self.is_trusted() {
            return Claim::Unavailable;
        }
        let mut conn = self.conn.clone();
        let now = codec::unix_millis(SystemTime::now());
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(&keys.generation)
            .key(&keys.entry)
            .key(&keys.lock)
            .arg(now)
            .arg(&token.0)
            .arg(millis(self.lock_ttl));
        let answer: Option<(String, String, Vec<u8>)> =
            self.run(invocation.invoke_async(&mut conn)).await;
        match answer {
            Some((kind, _, record)) if kind == "filled" => Claim::Filled(record),
            Some((kind, generation, _)) if kind == "claimed" => Claim::Claimed(generation),
            Some((_, generation, _)) => Claim::Busy(generation),
            None => Claim::Unavailable,
        }
    }

    /// Waits, at most `redis.fill_wait_ms`, for another replica's fill of `keys`.
    pub async fn wait_for_fill(&self, keys: &EntryKeys, token: &Token) -> Waited {
        let deadline = tokio::time::Instant::now() + self.fill_wait;
        let metrics = &self.metrics.tier;
        // Polls back off (10, 20, 40, ... ms, at most MAX_FILL_POLL) so that many replicas
        // waiting on many keys cannot swamp Redis.
        let mut poll = FILL_POLL;
        loop {
            if tokio::time::Instant::now() + poll > deadline {
                metrics.fill_wait("timeout");
                return Waited::GaveUp;
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(MAX_FILL_POLL);
            match self.claim(keys, token).await {
                Claim::Filled(record) => {
                    metrics.fill_wait("filled");
                    return Waited::Filled(record);
                }
                Claim::Claimed(generation) => {
                    metrics.fill_wait("released");
                    return Waited::Claimed(generation);
                }
                Claim::Busy(_) => {}
                Claim::Unavailable => {
                    metrics.fill_wait("error");
                    return Waited::GaveUp;
                }
            }
        }
    }

    /// Stores `record` if the generation is still `generation`, and releases the lock if `token`
    /// holds it. `Some(false)`: refused by the generation check.
    pub async fn store(
        &self,
        keys: &EntryKeys,
        generation: &str,
        fresh_until: SystemTime,
        record: Vec<u8>,
        ttl: Duration,
        token: &Token,
    ) -> Option<bool> {
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.store.prepare_invoke();
        invocation
            .key(&keys.generation)
            .key(&keys.entry)
            .key(&keys.lock)
            .arg(generation)
            .arg(codec::unix_millis(fresh_until))
            .arg(record)
            .arg(millis(ttl).max(1))
            .arg(&token.0);
        let stored: Option<i64> = self.run(invocation.invoke_async(&mut conn)).await;
        let stored = stored.map(|n| n == 1);
        if stored == Some(false) {
            self.metrics.tier.fill_refused("l2");
        }
        stored
    }

    /// Deletes an entry (its credential lost access).
    pub async fn forget(&self, keys: &EntryKeys) {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("DEL").arg(&keys.entry).to_owned();
        let _: Option<i64> = self.run(cmd.query_async(&mut conn)).await;
    }

    /// Releases the fill lock if `token` still holds it.
    pub async fn release(&self, keys: &EntryKeys, token: &Token) {
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation.key(&keys.lock).arg(&token.0);
        let _: Option<i64> = self.run(invocation.invoke_async(&mut conn)).await;
    }

    /// Makes `scope` unreachable in Redis and tells the other replicas; what Redis does not take
    /// now is replayed when it is back.
    pub async fn invalidate(&self, scope: Scope) {
        if !(self.apply(&scope).await && self.publish(&scope).await) {
            self.queue(scope);
        }
    }

    /// Moves the generation or purge counter covering `scope`; false when Redis did not take it.
    async fn apply(&self, scope: &Scope) -> bool {
        let mut conn = self.conn.clone();
        let generation = match scope {
            Scope::Number(id) => self.keys.number_generation(*id),
            Scope::Lists(credential) => self.keys.lists_generation(credential),
            // Purges of a credential or of everything move a counter that is part of every entry
            // name, then re-read the counters so this replica uses the new names at once.
            Scope::Credential(key_id) => return self.bump_namespace(&format!("c:{key_id}")).await,
            Scope::All => return self.bump_namespace("epoch").await,
        };
        let mut invocation = self.scripts.bump.prepare_invoke();
        invocation.key(generation);
        let moved: Option<i64> = self.run(invocation.invoke_async(&mut conn)).await;
        moved.is_some()
    }

    async fn bump_namespace(&self, field: &str) -> bool {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("HINCRBY")
            .arg(self.keys.namespace())
            .arg(field)
            .arg(1)
            .to_owned();
        let moved: Option<i64> = self.run(cmd.query_async(&mut conn)).await;
        if moved.is_some() {
            let _ = self.refresh_namespace().await;
        }
        moved.is_some()
    }

    /// Tells the other replicas; false when Redis did not take the message.
    async fn publish(&self, scope: &Scope) -> bool {
        let mut conn = self.conn.clone();
        let message = pubsub::encode(&self.instance, scope);
        let cmd = redis::cmd("PUBLISH")
            .arg(self.keys.channel())
            .arg(message)
            .to_owned();
        let sent: Option<i64> = self.run(cmd.query_async(&mut conn)).await;
        if sent.is_some() {
            self.metrics.tier.invalidation("sent");
        }
        sent.is_some()
    }

    fn queue(&self, scope: Scope) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.len() >= MAX_PENDING {
            pending.clear();
            pending.push(Scope::All);
        } else if !pending.contains(&scope) {
            pending.push(scope);
        }
        tracing::warn!(
            pending = pending.len(),
            "redis did not take an invalidation; it is replayed when redis is back"
        );
    }

    /// Whether invalidations are waiting for Redis.
    fn has_pending(&self) -> bool {
        !self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Replays invalidations Redis missed; true when none is left.
    async fn replay(&self) -> bool {
        let queued =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        let mut left = Vec::new();
        for scope in queued {
            // Applying twice is harmless (one more generation), so a scope whose message failed
            // is simply applied again.
            if !(self.apply(&scope).await && self.publish(&scope).await) {
                left.push(scope);
            }
        }
        let done = left.is_empty();
        if !done {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            left.append(&mut pending);
            *pending = left;
        }
        done
    }

    /// Re-reads the purge counters; returns what moved since the last read (this replica's
    /// memory must drop it: entries read under the old names are not current any more), or
    /// `None` when Redis did not answer. Counters only ever grow, so a late answer never takes
    /// the mirror back.
    async fn refresh_namespace(&self) -> Option<Vec<Scope>> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("HGETALL").arg(self.keys.namespace()).to_owned();
        let fields: HashMap<String, u64> = self.run(cmd.query_async(&mut conn)).await?;
        let old = self.namespace.load_full();
        let mut ns = (*old).clone();
        let mut moved = Vec::new();
        for (field, value) in fields {
            if field == "epoch" {
                if value > ns.epoch {
                    ns.epoch = value;
                    moved.push(Scope::All);
                }
            } else if let Some(key_id) = field.strip_prefix("c:").and_then(KeyId::from_hex) {
                let known = ns.credentials.entry(key_id).or_insert(0);
                if value > *known {
                    *known = value;
                    moved.push(Scope::Credential(key_id));
                }
            }
        }
        let first = !self.namespace_loaded.swap(true, Ordering::AcqRel);
        if !moved.is_empty() {
            // Concurrent refreshes: merge into whatever is there now, never back.
            self.namespace.rcu(|current| {
                let mut merged = (**current).clone();
                merged.epoch = merged.epoch.max(ns.epoch);
                for (k, v) in &ns.credentials {
                    let slot = merged.credentials.entry(*k).or_insert(0);
                    *slot = (*slot).max(*v);
                }
                merged
            });
        }
        if first {
            // The first read is not a change: memory was distrusted at subscription anyway.
            moved.clear();
        }
        Some(moved)
    }

    /// One unit of `credential`'s shared budget (`kind`: `m` misses, `r` requests): `Ok` or how
    /// long until one is available; `None` when Redis did not answer (decide locally).
    pub async fn take(
        &self,
        credential: &Fingerprint,
        kind: char,
        per_sec: u32,
        burst: u32,
    ) -> Option<Result<Remaining, Duration>> {
        self.gcra(self.keys.budget(credential, kind), per_sec, burst)
            .await
    }

    /// One unit of the budget for all upstream requests together, shared by every replica.
    pub async fn take_upstream(&self, per_sec: u32, burst: u32) -> Option<Result<(), Duration>> {
        let verdict = self
            .gcra(self.keys.upstream_budget(), per_sec, burst)
            .await?;
        Some(verdict.map(|_| ()))
    }

    async fn gcra(
        &self,
        key: String,
        per_sec: u32,
        burst: u32,
    ) -> Option<Result<Remaining, Duration>> {
        if per_sec == 0 {
            return Some(Ok(Remaining::of(burst, burst, 1)));
        }
        let mut conn = self.conn.clone();
        let interval_ms = 1000.0 / f64::from(per_sec);
        let mut invocation = self.scripts.gcra.prepare_invoke();
        invocation
            .key(key)
            .arg(format!("{interval_ms:.6}"))
            .arg(burst.max(1));
        let (wait, left, full_ms): (i64, i64, i64) =
            self.run(invocation.invoke_async(&mut conn)).await?;
        Some(if wait <= 0 {
            Ok(Remaining {
                units: u32::try_from(left).unwrap_or(0),
                full_in: Duration::from_millis(u64::try_from(full_ms).unwrap_or(0)),
            })
        } else {
            Err(Duration::from_millis(u64::try_from(wait).unwrap_or(1)))
        })
    }

    /// The shared 429 cool-down of an upstream credential: `Some(Ok(probe))` when a call may go
    /// (`probe`: it is the one probe after a cool-down), `Some(Err(left))` while cooling down,
    /// `None` when Redis did not answer.
    pub async fn cooldown(
        &self,
        credential: &Fingerprint,
        probe_lease: Duration,
    ) -> Option<Result<bool, Duration>> {
        let mut conn = self.conn.clone();
        let (cooldown, probe) = self.keys.cooldown(credential);
        let mut invocation = self.scripts.cooldown_check.prepare_invoke();
        invocation
            .key(cooldown)
            .key(probe)
            .arg(millis(probe_lease).max(1));
        let (state, left): (i64, i64) = self.run(invocation.invoke_async(&mut conn)).await?;
        Some(match state {
            1 => Ok(false),
            2 => Ok(true),
            _ => Err(Duration::from_millis(u64::try_from(left).unwrap_or(1000))),
        })
    }

    /// Starts (or extends) the shared cool-down of `credential`.
    pub async fn start_cooldown(
        &self,
        credential: &Fingerprint,
        retry_after: Duration,
        remember: Duration,
    ) {
        let mut conn = self.conn.clone();
        let (cooldown, probe) = self.keys.cooldown(credential);
        let mut invocation = self.scripts.cooldown_start.prepare_invoke();
        invocation
            .key(cooldown)
            .key(probe)
            .arg(millis(retry_after))
            .arg(millis(remember).max(1));
        let _: Option<i64> = self.run(invocation.invoke_async(&mut conn)).await;
    }

    /// Gives back the shared cool-down probe of `credential` (its call never happened).
    pub async fn release_probe(&self, credential: &Fingerprint) {
        let mut conn = self.conn.clone();
        let (_, probe) = self.keys.cooldown(credential);
        let cmd = redis::cmd("DEL").arg(probe).to_owned();
        let _: Option<i64> = self.run(cmd.query_async(&mut conn)).await;
    }

    /// Ends the shared cool-down of `credential` (its probe got a non-429 answer).
    pub async fn end_cooldown(&self, credential: &Fingerprint) {
        let mut conn = self.conn.clone();
        let (cooldown, probe) = self.keys.cooldown(credential);
        let mut invocation = self.scripts.cooldown_end.prepare_invoke();
        invocation.key(cooldown).key(probe);
        let _: Option<i64> = self.run(invocation.invoke_async(&mut conn)).await;
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

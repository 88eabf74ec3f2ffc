//! Prometheus metrics, served as text on the admin listener's `/metrics`.
//!
//! prometheus-client rather than the `metrics` facade: its registry is a value owned by the shared
//! state, not a process-wide global, so each server (and each test) counts on its own.
//! Labels are `&'static str` and integers, so counting a request allocates nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `phonegate_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name (`get`), or `none` when no route matched.
    pub route: &'static str,
    /// Response status.
    pub status: u16,
    /// The `x-cache` value (`hit`, `miss`, `stale`), or `none`.
    pub cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabel {
    tier: &'static str,
}

/// Every metric phonegate exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabel, Histogram>,
    upstream_duration: Histogram,
    upstream_responses: Family<StatusLabel, Counter>,
    upstream_failures: Family<KindLabel, Counter>,
    coalesced_waits: Counter,
    refusals: Family<ReasonLabel, Counter>,
    stale_served: Family<ReasonLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
    open_connections: Gauge,
    cache_entries: Gauge,
    cache_bytes: Gauge,
    cache_max_bytes: Gauge,
    breaker_open: Gauge,
    log_lines_dropped: Counter,
    tasks_alive: Gauge,
    /// Where the log writer counts dropped lines (set once logging is up; see `main.rs`).
    log_drop_source: OnceLock<Arc<AtomicU64>>,
    /// The shared Redis tier's metrics (all zero while it is off).
    pub tier: TierMetrics,
}

/// Metrics of the shared Redis tier.
pub struct TierMetrics {
    l2_lookups: Family<ResultLabel, Counter>,
    redis_duration: Histogram,
    redis_failures: Family<KindLabel, Counter>,
    redis_breaker: Gauge,
    subscribed: Gauge,
    fill_waits: Family<OutcomeLabel, Counter>,
    invalidations: Family<DirectionLabel, Counter>,
    fills_refused: Family<TierLabel, Counter>,
}

impl TierMetrics {
    fn register(registry: &mut Registry) -> Self {
        let l2_lookups = Family::<ResultLabel, Counter>::default();
        registry.register(
            "l2_lookups",
            "Lookups in the shared Redis tier (L2), by result: hit, miss, error, untrusted (skipped \
             while the tier is not trusted: unsubscribed, or invalidations waiting for Redis)",
            l2_lookups.clone(),
        );
        // 50 µs to ~200 ms: loopback and same-zone Redis sit at the bottom, timeouts at the top.
        let redis_duration = Histogram::new(exponential_buckets(0.00005, 2.0, 13));
        registry.register(
            "redis_command_duration_seconds",
            "Redis command latency (each call phonegate makes, including scripts)",
            redis_duration.clone(),
        );
        let redis_failures = Family::<KindLabel, Counter>::default();
        registry.register(
            "redis_failures",
            "Redis calls that failed, by kind: timeout, error, breaker_open (not attempted)",
            redis_failures.clone(),
        );
        let redis_breaker = Gauge::default();
        registry.register(
            "redis_breaker_state",
            "Redis circuit breaker: 0 closed, 1 open, 2 half-open (probing)",
            redis_breaker.clone(),
        );
        let subscribed = Gauge::default();
        registry.register(
            "redis_subscribed",
            "1 while this replica hears other replicas' invalidations (the shared tier is used \
             only then), else 0",
            subscribed.clone(),
        );
        let fill_waits = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "fill_waits",
            "Waits for another replica's fetch of the same entry, by outcome: filled, \
             released (the other replica gave up), timeout, error",
            fill_waits.clone(),
        );
        let invalidations = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "invalidations",
            "Cross-replica invalidation messages, by direction: sent, received",
            invalidations.clone(),
        );
        let fills_refused = Family::<TierLabel, Counter>::default();
        registry.register(
            "fills_refused",
            "Answers not stored because an invalidation happened while they were fetched, by tier",
            fills_refused.clone(),
        );
        TierMetrics {
            l2_lookups,
            redis_duration,
            redis_failures,
            redis_breaker,
            subscribed,
            fill_waits,
            invalidations,
            fills_refused,
        }
    }

    /// Counts one L2 lookup (`hit`, `miss`, `error`).
    pub fn l2_lookup(&self, result: &'static str) {
        self.l2_lookups.get_or_create(&ResultLabel { result }).inc();
    }

    /// Times one Redis call.
    pub fn redis_call(&self, seconds: f64) {
        self.redis_duration.observe(seconds);
    }

    /// Counts one failed or skipped Redis call (`timeout`, `error`, `breaker_open`).
    pub fn redis_failure(&self, kind: &'static str) {
        self.redis_failures.get_or_create(&KindLabel { kind }).inc();
    }

    /// Sets the Redis breaker gauge (0 closed, 1 open, 2 half-open).
    pub fn redis_breaker(&self, state: i64) {
        self.redis_breaker.set(state);
    }

    /// Sets the subscription gauge.
    pub fn subscribed(&self, on: bool) {
        self.subscribed.set(i64::from(on));
    }

    /// Counts one wait for another replica's fetch (`filled`, `released`, `timeout`, `error`).
    pub fn fill_wait(&self, outcome: &'static str) {
        self.fill_waits
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts one invalidation message (`sent`, `received`).
    pub fn invalidation(&self, direction: &'static str) {
        self.invalidations
            .get_or_create(&DirectionLabel { direction })
            .inc();
    }

    /// Counts one fill refused by the generation check (`l1`, `l2`).
    pub fn fill_refused(&self, tier: &'static str) {
        self.fills_refused.get_or_create(&TierLabel { tier }).inc();
    }
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~13 s: hits sit at the bottom, upstream calls and timeouts at the top.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("phonegate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route, status and cache result",
            requests.clone(),
        );
        let request_duration =
            Family::<RouteLabel, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head",
            request_duration.clone(),
        );
        let upstream_duration = latency_histogram();
        registry.register(
            "upstream_duration_seconds",
            "Time of upstream exchanges, whole body included",
            upstream_duration.clone(),
        );
        let upstream_responses = Family::<StatusLabel, Counter>::default();
        registry.register(
            "upstream_responses",
            "Upstream answers, by status",
            upstream_responses.clone(),
        );
        let upstream_failures = Family::<KindLabel, Counter>::default();
        registry.register(
            "upstream_failures",
            "Upstream exchanges that failed, by kind",
            upstream_failures.clone(),
        );
        let coalesced_waits = Counter::default();
        registry.register(
            "coalesced_waits",
            "Requests that waited for another request's identical upstream fetch",
            coalesced_waits.clone(),
        );
        let refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "refusals",
            "Requests phonegate refused itself to protect the upstream, by reason",
            refusals.clone(),
        );
        let stale_served = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "stale_served",
            "Stale answers served, by reason",
            stale_served.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reloads",
            "SIGHUP reloads of the configuration and the certificates, by result",
            reloads.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Entries in the cache",
            cache_entries.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "cache_bytes",
            "Weighted size of the cache in bytes",
            cache_bytes.clone(),
        );
        let cache_max_bytes = Gauge::default();
        registry.register(
            "cache_max_bytes",
            "The cache's size bound in bytes (cache.max_bytes)",
            cache_max_bytes.clone(),
        );
        let breaker_open = Gauge::default();
        registry.register(
            "breaker_state",
            "Upstream circuit breaker: 0 closed, 1 open, 2 half-open (probing)",
            breaker_open.clone(),
        );
        let log_lines_dropped = Counter::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because stdout stalled and the log buffer was full",
            log_lines_dropped.clone(),
        );
        let tasks_alive = Gauge::default();
        registry.register(
            "tasks_alive",
            "Tasks alive in the async runtime (connections, fetches, background work)",
            tasks_alive.clone(),
        );
        let tier = TierMetrics::register(&mut registry);
        Metrics {
            tier,
            log_lines_dropped,
            tasks_alive,
            log_drop_source: OnceLock::new(),
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_responses,
            upstream_failures,
            coalesced_waits,
            refusals,
            stale_served,
            reloads,
            open_connections,
            cache_entries,
            cache_bytes,
            cache_max_bytes,
            breaker_open,
        }
    }

    /// Counts one answered request.
    pub fn request(&self, labels: RequestLabels, seconds: f64) {
        self.request_duration
            .get_or_create(&RouteLabel {
                route: labels.route,
            })
            .observe(seconds);
        self.requests.get_or_create(&labels).inc();
    }

    /// Times one upstream exchange, whatever its outcome.
    pub fn upstream_exchange(&self, seconds: f64) {
        self.upstream_duration.observe(seconds);
    }

    /// Counts one upstream answer by status.
    pub fn upstream_response(&self, status: u16) {
        self.upstream_responses
            .get_or_create(&StatusLabel { status })
            .inc();
    }

    /// Counts one failed upstream exchange (`unreachable`, `timeout`, `broken`, `bad_body`).
    pub fn upstream_failure(&self, kind: &'static str) {
        self.upstream_failures
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    /// Counts one request that joined another's fetch.
    pub fn coalesced_wait(&self) {
        self.coalesced_waits.inc();
    }

    /// Counts one refusal (`miss_limit`, `cooling_down`, `breaker_open`, `queue_full`, ...).
    pub fn refusal(&self, reason: &'static str) {
        self.refusals.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts one reload of the configuration or the certificates (`applied`, `rejected`).
    pub fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts one stale answer (`revalidating`, `upstream_5xx`, ...).
    pub fn stale(&self, reason: &'static str) {
        self.stale_served
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The open-connections gauge, raised and lowered by the server.
    pub fn open_connections(&self) -> &Gauge {
        &self.open_connections
    }

    /// Reports `phonegate_log_lines_dropped_total` from the log writer's count of dropped lines.
    pub fn count_log_drops_from(&self, source: Arc<AtomicU64>) {
        let _ = self.log_drop_source.set(source);
    }

    /// Records the cache's size bound (`cache.max_bytes`), for dashboards and alerts.
    pub fn cache_bound(&self, max_bytes: u64) {
        self.cache_max_bytes
            .set(i64::try_from(max_bytes).unwrap_or(i64::MAX));
    }

    /// Renders the Prometheus text format, after setting the gauges sampled at scrape time.
    pub fn render(&self, cache_entries: u64, cache_bytes: u64, breaker_state: i64) -> String {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let alive = runtime.metrics().num_alive_tasks();
            self.tasks_alive
                .set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
        if let Some(source) = self.log_drop_source.get() {
            let total = source.load(Ordering::Relaxed);
            let reported = self.log_lines_dropped.get();
            if total > reported {
                self.log_lines_dropped.inc_by(total - reported);
            }
        }
        self.cache_entries
            .set(i64::try_from(cache_entries).unwrap_or(i64::MAX));
        self.cache_bytes
            .set(i64::try_from(cache_bytes).unwrap_or(i64::MAX));
        self.breaker_open.set(breaker_state);
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The OpenMetrics text [`Metrics::render`] makes, in the Prometheus text format 0.0.4, for
/// scrapers that do not ask for OpenMetrics (older agents, `curl`, `promtool check metrics`): a
/// counter's `HELP` and `TYPE` name its `_total` series, and `UNIT` and `EOF` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + counters.len() * 16);
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| line.strip_prefix(prefix).map(|rest| (prefix, rest)));
        match meta {
            Some((prefix, rest)) => {
                let name = rest.split(' ').next().unwrap_or_default();
                let rest = &rest[name.len()..];
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(&name) {
                    out.push_str("_total");
                }
                out.push_str(rest);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prometheus_text_names_counter_series_in_help_and_type() {
        let open = "# HELP x_requests Requests.\n# TYPE x_requests counter\n\
                    x_requests_total{a=\"b\"} 1\n# HELP x_size Bytes.\n# TYPE x_size gauge\n\
                    # UNIT x_size bytes\nx_size 3\n# EOF\n";
        assert_eq!(
            to_prometheus_text(open),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\n\
             x_requests_total{a=\"b\"} 1\n# HELP x_size Bytes.\n# TYPE x_size gauge\nx_size 3\n"
        );
    }

    #[test]
    fn renders_counters_with_their_labels() {
        let m = Metrics::new();
        m.request(
            RequestLabels {
                route: "get",
                status: 200,
                cache: "hit",
            },
            0.001,
        );
        m.refusal("miss_limit");
        m.refusal("miss_limit");
        let text = m.render(3, 4096, 1);
        assert!(
            text.contains(r#"phonegate_requests_total{route="get",status="200",cache="hit"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"phonegate_refusals_total{reason="miss_limit"} 2"#),
            "{text}"
        );
        assert!(text.contains("phonegate_cache_entries 3"), "{text}");
        assert!(text.contains("phonegate_cache_bytes 4096"), "{text}");
        assert!(text.contains("phonegate_breaker_state 1"), "{text}");
        assert!(
            text.contains("phonegate_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}

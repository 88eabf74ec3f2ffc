//! Micro-benchmarks of the per-request work: redaction (the per-miss cost), credential
//! fingerprinting, cache-key construction and a cache hit.
//!
//!   cargo bench --bench micro
//!   cargo bench --bench micro -- redact      # one group
//!
//! Short measurement windows keep the whole run around a minute on a 2-core machine; numbers
//! from a shared machine are noisy, so compare runs made back to back.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderValue, Method, StatusCode};
use phonegate::cache::{CacheKey, Entry, Resource, ResponseCache, Stamp};
use phonegate::credential::{Fingerprinter, bearer_token};
use phonegate::redact::Policy;
use phonegate::response_filter::{Ttls, filter};
use phonegate::route::{Route, route};
use phonegate::upstream::UpstreamResponse;
use serde_json::Value;
use uuid::Uuid;

const FIXTURE: &str = include_str!("../tests/fixtures/example-twilio-phone-number.json");
const KEY_SECRET: &str = "bench-key-secret-0123456789abcdef";
/// A 36-character API key, the shape of a real Vapi key.
const API_KEY: &str = "3f6c2a1e-9b7d-4e58-a0c3-5d8f1b2e4a97";
const PHONE_ID: &str = "8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44";
/// Entries in the cache the hit benchmark reads from.
const HIT_ENTRIES: u32 = 10_000;
/// Elements of the list the list benchmark redacts.
const LIST_LEN: u32 = 1_000;

fn ttls() -> Ttls {
    Ttls {
        ok: Duration::from_secs(3600),
        not_found: Duration::from_secs(60),
    }
}

fn ok(body: Bytes) -> UpstreamResponse {
    UpstreamResponse {
        status: StatusCode::OK,
        body,
        retry_after: None,
    }
}

/// A deterministic, distinct phone-number id per `i`.
fn id(i: u32) -> Uuid {
    Uuid::from_u128(0x8f2b_6c1e_4d3a_4b7e_9c21_0000_0000_0000 | u128::from(i))
}

/// The fixture with its `id` replaced, as an upstream would send a different number.
fn fixture_with_id(parsed: &Value, i: u32) -> Value {
    let mut v = parsed.clone();
    v["id"] = Value::String(id(i).hyphenated().to_string());
    v
}

fn bench_redact(c: &mut Criterion) {
    let policy = Policy::default();
    let fixture = Bytes::from_static(FIXTURE.as_bytes());
    let parsed: Value = serde_json::from_str(FIXTURE).expect("fixture parses");

    let mut g = c.benchmark_group("redact");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50);

    // (a) The real per-miss cost: parse, redact, re-serialise and tag one answer.
    g.throughput(Throughput::Bytes(fixture.len() as u64));
    g.bench_function("filter_fixture", |b| {
        b.iter(|| {
            let entry = filter(ok(fixture.clone()), &policy, ttls(), None, Instant::now())
                .expect("fixture filters");
            black_box(entry)
        })
    });

    // (b) The redaction walk alone, on a fresh clone of the parsed fixture each time (the clone
    // is set-up, not measured); `clone_baseline` is what the clone itself costs.
    g.bench_function("policy_redact_only", |b| {
        b.iter_batched(
            || parsed.clone(),
            |mut v| {
                let n = policy.redact(&mut v).expect("fixture redacts");
                black_box(n);
                v
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("clone_baseline", |b| b.iter(|| black_box(parsed.clone())));

    // (c) A list answer: 1000 numbers (distinct ids) in one array, compact JSON.
    let list = Value::Array((0..LIST_LEN).map(|i| fixture_with_id(&parsed, i)).collect());
    let list = Bytes::from(serde_json::to_vec(&list).expect("list serialises"));
    g.throughput(Throughput::Bytes(list.len() as u64));
    g.bench_function("filter_list_1000", |b| {
        b.iter(|| {
            let entry = filter(ok(list.clone()), &policy, ttls(), None, Instant::now())
                .expect("list filters");
            black_box(entry)
        })
    });
    g.finish();
}

fn bench_credential(c: &mut Criterion) {
    let fp = Fingerprinter::new(Some(KEY_SECRET)).expect("fingerprinter");
    let header = HeaderValue::from_str(&format!("Bearer {API_KEY}")).expect("header value");
    assert_eq!(API_KEY.len(), 36);

    let mut g = c.benchmark_group("credential");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50);
    g.bench_function("bearer_token_and_fingerprint", |b| {
        b.iter(|| {
            let token = bearer_token(std::iter::once(black_box(&header))).expect("bearer");
            black_box(fp.fingerprint(token))
        })
    });
    let fingerprint = fp.fingerprint(API_KEY.as_bytes());
    g.bench_function("key_id_to_string", |b| {
        b.iter(|| black_box(black_box(&fingerprint).key_id().to_string()))
    });
    g.finish();
}

fn bench_cache_key(c: &mut Criterion) {
    let fp = Fingerprinter::new(Some(KEY_SECRET)).expect("fingerprinter");
    let path = format!("/phone-number/{PHONE_ID}");

    let mut g = c.benchmark_group("cache_key");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50);
    g.bench_function("route_fingerprint_key", |b| {
        b.iter(|| {
            let Ok(Route::Get(id)) = route(&Method::GET, black_box(&path), None) else {
                panic!("the path routes to a single number");
            };
            let key = CacheKey {
                resource: Resource::PhoneNumber(id),
                credential: fp.fingerprint(black_box(API_KEY.as_bytes())),
            };
            black_box(key)
        })
    });
    g.finish();
}

fn bench_cache_hit(c: &mut Criterion) {
    let policy = Policy::default();
    let fp = Fingerprinter::new(Some(KEY_SECRET)).expect("fingerprinter");
    let credential = fp.fingerprint(API_KEY.as_bytes());
    let parsed: Value = serde_json::from_str(FIXTURE).expect("fixture parses");

    // 10,000 realistic entries: each the redacted fixture with its own id, through the filter.
    let cache = ResponseCache::new(1 << 30, Duration::ZERO);
    let now = Instant::now();
    let keys: Vec<CacheKey> = (0..HIT_ENTRIES)
        .map(|i| {
            let body = serde_json::to_vec_pretty(&fixture_with_id(&parsed, i)).expect("json");
            let entry: Entry =
                filter(ok(Bytes::from(body)), &policy, ttls(), None, now).expect("filters");
            let key = CacheKey {
                resource: Resource::PhoneNumber(id(i)),
                credential,
            };
            cache.insert(key.clone(), Arc::new(entry), Stamp::default());
            key
        })
        .collect();
    cache.run_pending_tasks();
    assert_eq!(
        cache.entry_count(),
        u64::from(HIT_ENTRIES),
        "all entries kept"
    );

    let mut g = c.benchmark_group("cache_hit");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50);
    g.bench_function("get_10k_round_robin", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let key = &keys[i];
            i = (i + 1) % keys.len();
            black_box(cache.get(key).expect("hit"))
        })
    });
    g.finish();
}

/// The whole request handler on a cache hit (no sockets), and the share of it that metrics and
/// the access log take.
fn bench_hit_path(c: &mut Criterion) {
    use http_body_util::{BodyExt, Empty};
    use phonegate::access_log::AccessRecord;
    use phonegate::log_writer::BatchWriter;
    use phonegate::metrics::{Metrics, RequestLabels};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let token = "bench-key-0001";
    let the_id = id(1);
    // One state as shipped (tracing off) and one tracing every request (sample ratio 1.0) to an
    // OTLP endpoint nobody listens on: the request path's cost is the spans and the hand-off to
    // the batch exporter, whatever happens to the export.
    let primed = |extra: &str| {
        let config = phonegate::config::Config::from_toml(&format!(
            "[cache]\nkey_secret = \"bench-key-secret-0123456789\"\n{extra}"
        ))
        .expect("config");
        let state =
            runtime.block_on(async { phonegate::state::AppState::new(config).expect("state") });
        let answer = filter(
            ok(Bytes::from_static(FIXTURE.as_bytes())),
            &Policy::default(),
            ttls(),
            None,
            Instant::now(),
        )
        .expect("fixture filters");
        state.store.prime(
            CacheKey {
                resource: Resource::PhoneNumber(the_id),
                credential: state.fingerprinter.fingerprint(token.as_bytes()),
            },
            Arc::new(answer),
        );
        state
    };
    let untraced = primed("");
    let traced = primed("[otel]\nendpoint = \"http://127.0.0.1:9\"\n");
    assert!(traced.telemetry.is_some());
    let uri = format!("/phone-number/{the_id}");
    // The access log goes through the batching writer, as in the binary, to a sink.
    let (writer, _flush) = BatchWriter::new(std::io::sink()).expect("log writer");
    phonegate::access_log::install(writer).expect("first writer");

    let mut g = c.benchmark_group("hit_path");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50);
    for (name, state) in [
        ("handle_cache_hit", &untraced),
        ("handle_cache_hit_traced", &traced),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let req = http::Request::get(&uri)
                    .header("authorization", format!("Bearer {token}"))
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                let resp = runtime
                    .block_on(phonegate::proxy::handle(Arc::clone(state), req))
                    .expect("infallible");
                assert_eq!(resp.status(), StatusCode::OK);
                black_box(runtime.block_on(resp.into_body().collect()).is_ok())
            })
        });
    }
    let metrics = Metrics::new();
    g.bench_function("metrics_request", |b| {
        b.iter(|| {
            metrics.request(
                black_box(RequestLabels {
                    route: "get",
                    status: 200,
                    cache: "hit",
                }),
                black_box(0.0001),
            )
        })
    });
    g.bench_function("access_log_line", |b| {
        b.iter(|| {
            phonegate::access_log::emit(black_box(&AccessRecord {
                request_id: "8d2760c4-0dbc-43bf-a963-67e748b154af",
                method: "GET",
                path: "/phone-number/3b1f6a52-8c7e-4d19-a2f4-6e0b9c3d7a15",
                route: Some("get"),
                client: None,
                status: 200,
                cache: "hit",
                duration: Duration::from_micros(28),
                upstream: None,
                key_id: None,
                reason: None,
                coalesced: false,
                tier: Some("l1"),
                bytes: 2931,
            }))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = bench_redact, bench_credential, bench_cache_key, bench_cache_hit, bench_hit_path
}
criterion_main!(benches);

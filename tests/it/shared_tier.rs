//! Several phonegate replicas on one real Redis (standalone, and a three-primary Redis Cluster)
//! behave as one cache and one shield: counted by the upstream's request counts.
//!
//! Every test starts its own `redis-server` processes on ephemeral loopback ports (Debian's
//! `redis-server` package; without it the harness fails with install instructions) and its own
//! replicas in this process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::mock_vapi::{PLANTED, TWILIO_ID, VAPI_ID};
use crate::support::redis::{RedisCluster, RedisServer, TlsRedisServer};
use crate::support::{
    Behavior, MockVapi, Proxy, Resp, TOKEN_A, TOKEN_B, admin_get, free_addr, get,
    get_and_assert_cache, get_request, path, purge, scrape_metric, send, send_concurrently, write,
};
use http::{Method, StatusCode};

const KEY_SECRET: &str = "shared-tier-test-key-secret-0123";

/// `n` replicas in front of `upstream`, sharing `redis_url`.
async fn replicas(
    n: usize,
    upstream: &str,
    redis_url: &str,
    cluster: bool,
    extra: &str,
) -> Vec<Proxy> {
    let mut out = Vec::new();
    for _ in 0..n {
        let settings = format!(
            "[cache]\nkey_secret = \"{KEY_SECRET}\"\n\
             [redis]\nurl = \"{redis_url}\"\ncluster = {cluster}\ntimeout_ms = 250\n{extra}"
        );
        out.push(Proxy::start(upstream, &settings).await);
    }
    for proxy in &out {
        subscribed(proxy).await;
    }
    out
}

/// Waits until `proxy` listens for other replicas' invalidations.
async fn subscribed(proxy: &Proxy) {
    let tier = Arc::clone(proxy.state.store.tier().expect("the tier is configured"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !tier.is_subscribed() {
        assert!(
            Instant::now() < deadline,
            "the replica never subscribed to invalidations"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A metric's value on `proxy`'s `/metrics` (0 when absent).
async fn metric(proxy: &Proxy, series: &str) -> f64 {
    scrape_metric(proxy.admin_addr, series).await.unwrap_or(0.0)
}

/// `PATCH /phone-number/{id}` with a JSON body.
async fn patch(proxy: &Proxy, id: &str, token: &str, body: &str) -> Resp {
    write(proxy, Method::PATCH, &path(id), token, body).await
}

/// Polls `check` every 20 ms for up to `within`; true as soon as it holds.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `proxy`'s memory stops holding a current entry for (`id`, `token`) within a second.
async fn dropped_from_memory(proxy: &Proxy, id: &str, token: &str) -> bool {
    let key = proxy.cache_key(id, token);
    let generation = proxy.state.live().policy_generation;
    eventually(Duration::from_secs(1), || async {
        proxy.state.store.lookup(&key, generation).is_none()
    })
    .await
}

/// 300 concurrent cold lookups of one id, spread over the replicas: one upstream request.
async fn cold_lookups_fold_into_one_upstream_request(mock: &MockVapi, proxies: &[Proxy]) {
    mock.set_behavior(Behavior::Delay(Duration::from_millis(300)));
    let before = mock.hits_for(&path(VAPI_ID));
    let target = path(VAPI_ID);
    let lookups =
        (0..300).map(|i| get_request(&proxies[i % proxies.len()], &target, Some(TOKEN_A)));
    let answers = send_concurrently(lookups).await;
    mock.set_behavior(Behavior::Normal);
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert!(!answer.text().contains(PLANTED));
    }
    assert_eq!(
        mock.hits_for(&path(VAPI_ID)) - before,
        1,
        "300 concurrent cold lookups on {} replicas",
        proxies.len()
    );
}

/// A fill on one replica is a hit on the others, whose `age` counts from the original fetch;
/// another credential never shares it.
async fn a_fill_is_a_hit_everywhere_but_only_for_its_credential(
    mock: &MockVapi,
    proxies: &[Proxy],
) {
    let first = get(&proxies[0], &path(TWILIO_ID), Some(TOKEN_A)).await;
    first.assert_cache("miss");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for proxy in &proxies[1..] {
        let resp = get(proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
        assert_eq!(resp.status, StatusCode::OK);
        resp.assert_cache_because("hit", "filled on another replica");
        assert_eq!(resp.body, first.body, "the same redacted bytes");
        let age: u64 = resp.header("age").expect("age").parse().expect("seconds");
        assert!(age >= 1, "age counts from the original fetch, got {age}");
        assert_eq!(
            metric(proxy, "phonegate_l2_lookups_total{result=\"hit\"}").await,
            1.0
        );
    }
    assert_eq!(mock.hits_for(&path(TWILIO_ID)), 1);
    let other = get(&proxies[1], &path(TWILIO_ID), Some(TOKEN_B)).await;
    other.assert_cache_because("miss", "another credential's entry");
    assert_eq!(mock.hits_for(&path(TWILIO_ID)), 2);
}

/// A PATCH through one replica, and an admin purge through another, are seen on all within a
/// second.
async fn writes_and_purges_reach_every_replica(mock: &MockVapi, proxies: &[Proxy]) {
    for proxy in proxies {
        get(proxy, &path(VAPI_ID), Some(TOKEN_A)).await;
        let warm = get(proxy, &path(VAPI_ID), Some(TOKEN_A)).await;
        warm.assert_cache("hit");
    }
    let patched = patch(&proxies[0], VAPI_ID, TOKEN_A, r#"{"name":"Renamed line"}"#).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text());
    let started = Instant::now();
    for proxy in &proxies[1..] {
        let seen = eventually(Duration::from_secs(1), || async {
            get(proxy, &path(VAPI_ID), Some(TOKEN_A)).await.json()["name"] == "Renamed line"
        })
        .await;
        assert!(
            seen,
            "the PATCH was not seen on another replica within a second"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(2));

    for proxy in proxies {
        let warm = get(proxy, &path(VAPI_ID), Some(TOKEN_A)).await;
        warm.assert_cache("hit");
    }
    let purged = purge(&proxies[1], &format!(r#"{{"id":"{VAPI_ID}"}}"#)).await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.text());
    for proxy in [&proxies[0], &proxies[2]] {
        assert!(
            dropped_from_memory(proxy, VAPI_ID, TOKEN_A).await,
            "the purge did not reach another replica's memory within a second"
        );
    }
    // The shared copy went too: the next lookup anywhere fetches from the upstream.
    let hits = mock.hits_for(&path(VAPI_ID));
    let after = get(&proxies[0], &path(VAPI_ID), Some(TOKEN_A)).await;
    after.assert_cache("miss");
    assert_eq!(mock.hits_for(&path(VAPI_ID)), hits + 1);

    // Purges by key_id and of everything reach every replica's memory and Redis as well.
    let key_id = proxies[0]
        .state
        .fingerprinter
        .fingerprint(TOKEN_A.as_bytes())
        .key_id()
        .to_string();
    for body in [
        format!(r#"{{"key_id":"{key_id}"}}"#),
        r#"{"all":true}"#.to_owned(),
    ] {
        for proxy in proxies {
            get(proxy, &path(VAPI_ID), Some(TOKEN_A)).await;
        }
        let purged = purge(&proxies[2], &body).await;
        assert_eq!(purged.status, StatusCode::OK, "{body}: {}", purged.text());
        for proxy in &proxies[..2] {
            assert!(
                dropped_from_memory(proxy, VAPI_ID, TOKEN_A).await,
                "{body}: not seen on another replica within a second"
            );
        }
        let hits = mock.hits_for(&path(VAPI_ID));
        let after = get(&proxies[1], &path(VAPI_ID), Some(TOKEN_A)).await;
        after.assert_cache_because("miss", format_args!("{body}: Redis kept it"));
        assert_eq!(mock.hits_for(&path(VAPI_ID)), hits + 1);
    }
}

/// Everything in Redis: no credential, no key secret, no planted secret.
fn assert_nothing_secret(all: &[(String, Vec<u8>)]) {
    assert!(!all.is_empty(), "the replicas wrote to redis");
    for (key, value) in all {
        let value = String::from_utf8_lossy(value);
        for needle in [TOKEN_A, TOKEN_B, KEY_SECRET, PLANTED] {
            assert!(!key.contains(needle), "{needle} in the key {key}");
            assert!(
                !value.contains(needle),
                "{needle} in the value of {key}: {value}"
            );
        }
        assert!(
            key.starts_with("phonegate:"),
            "a key outside the prefix: {key}"
        );
    }
}

#[tokio::test]
async fn three_replicas_on_one_redis_act_as_one_cache() {
    let redis = RedisServer::start().await;
    let mock = MockVapi::start().await;
    let proxies = replicas(3, &mock.url(), &redis.url(), false, "").await;
    cold_lookups_fold_into_one_upstream_request(&mock, &proxies).await;
    a_fill_is_a_hit_everywhere_but_only_for_its_credential(&mock, &proxies).await;
    writes_and_purges_reach_every_replica(&mock, &proxies).await;
    // Lists too: a write by a credential drops its lists on every replica.
    get(&proxies[0], "/phone-number?limit=5", Some(TOKEN_A)).await;
    get_and_assert_cache(&proxies[1], "/phone-number?limit=5", Some(TOKEN_A), "hit").await;
    patch(
        &proxies[2],
        TWILIO_ID,
        TOKEN_A,
        r#"{"name":"List changer"}"#,
    )
    .await;
    let dropped = eventually(Duration::from_secs(1), || async {
        get(&proxies[1], "/phone-number?limit=5", Some(TOKEN_A))
            .await
            .cache()
            == Some("miss")
    })
    .await;
    assert!(
        dropped,
        "the caller's lists were not dropped on another replica"
    );
    let all = redis.all_keys_and_values().await;
    assert_nothing_secret(&all);
    // Entries expire when their last stale window ends: TTL 60 s + stale-if-error 300 s at most.
    let entries: Vec<&String> = all
        .iter()
        .map(|(k, _)| k)
        .filter(|k| k.contains("}:e"))
        .collect();
    assert!(!entries.is_empty());
    for key in entries {
        let ttl: i64 = redis
            .cli(&["PTTL", key])
            .await
            .trim()
            .parse()
            .expect("PTTL");
        assert!(ttl > 0 && ttl <= 360_000, "{key} expires in {ttl} ms");
    }
}

#[tokio::test]
async fn three_replicas_on_a_redis_cluster_act_as_one_cache() {
    let cluster = RedisCluster::start(3).await;
    let mock = MockVapi::start().await;
    let proxies = replicas(3, &mock.url(), &cluster.seeds(), true, "").await;
    cold_lookups_fold_into_one_upstream_request(&mock, &proxies).await;
    a_fill_is_a_hit_everywhere_but_only_for_its_credential(&mock, &proxies).await;
    writes_and_purges_reach_every_replica(&mock, &proxies).await;
    assert_nothing_secret(&cluster.all_keys_and_values().await);
}

#[tokio::test]
async fn a_fill_racing_a_write_on_another_replica_does_not_resurrect_old_data() {
    let redis = RedisServer::start().await;
    let upstream = crate::support::slow_read::start(Duration::from_millis(700)).await;
    let proxies = replicas(2, &upstream.url(), &redis.url(), false, "").await;
    // Replica 0 starts a lookup: the upstream has read the old name and is still answering...
    let slow = tokio::spawn(send(get_request(
        &proxies[0],
        &path(TWILIO_ID),
        Some(TOKEN_A),
    )));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.get_count(), 1);
    // ...when a PATCH through replica 1 succeeds.
    let patched = patch(&proxies[1], TWILIO_ID, TOKEN_A, r#"{"name":"New name"}"#).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text());
    let old = slow.await.expect("lookup task");
    assert_eq!(
        old.json()["name"],
        "Old name",
        "the lookup that began before the write"
    );
    // The older answer was stored nowhere: neither replica, nor Redis, serves it again.
    for proxy in &proxies {
        let now = get(proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
        assert_eq!(now.json()["name"], "New name", "x-cache {:?}", now.cache());
    }
    assert!(
        metric(&proxies[0], "phonegate_fills_refused_total{tier=\"l2\"}").await
            + metric(&proxies[0], "phonegate_fills_refused_total{tier=\"l1\"}").await
            >= 1.0,
        "the generation check refused the older fill"
    );
}

#[tokio::test]
async fn the_miss_budget_and_a_429_cool_down_hold_across_replicas() {
    let redis = RedisServer::start().await;
    let mock = MockVapi::start().await;
    let proxies = replicas(
        3,
        &mock.url(),
        &redis.url(),
        false,
        "[limits]\nmisses_per_sec_per_key = 1\nmiss_burst = 2\n",
    )
    .await;
    // Six cold lookups of different numbers with one credential, over three replicas: alone,
    // each replica would allow its own burst of two (six in all).
    let mut allowed = 0;
    let mut refused = 0;
    for i in 0..6u128 {
        let id = uuid::Uuid::from_u128(0x1000 + i).to_string();
        let resp = get(&proxies[i as usize % 3], &path(&id), Some(TOKEN_A)).await;
        match resp.status {
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(resp.header("retry-after").is_some());
                refused += 1;
            }
            StatusCode::NOT_FOUND => allowed += 1,
            other => panic!("unexpected {other}: {}", resp.text()),
        }
    }
    assert!(
        allowed <= 3,
        "one budget across replicas: {allowed} of 6 allowed"
    );
    assert!(refused >= 3, "{refused} refused");

    // An upstream 429 seen by one replica stops the others from calling upstream with that key.
    mock.set_behavior(Behavior::RateLimited {
        retry_after: Some("30".into()),
    });
    let limited = get(&proxies[0], &path(TWILIO_ID), Some(TOKEN_B)).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    mock.set_behavior(Behavior::Normal);
    let calls = mock.hits();
    for proxy in &proxies[1..] {
        let resp = get(proxy, &path(VAPI_ID), Some(TOKEN_B)).await;
        assert_eq!(
            resp.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            resp.text()
        );
        let wait: u64 = resp
            .header("retry-after")
            .expect("retry-after")
            .parse()
            .expect("secs");
        assert!(wait > 0 && wait <= 30, "{wait}");
    }
    assert_eq!(
        mock.hits(),
        calls,
        "no replica called upstream during the cool-down"
    );
    let other = get(&proxies[2], &path(VAPI_ID), Some(TOKEN_A)).await;
    assert_ne!(other.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn the_ratelimit_header_reports_a_request_budget_shared_across_replicas() {
    const REQUEST_LIMIT_REFUSALS: &str = "phonegate_refusals_total{reason=\"request_limit\"}";
    let redis = RedisServer::start().await;
    let mock = MockVapi::start().await;
    // Four requests, refilled at one a second; the miss budget is off, so the header names the
    // request budget alone.
    let proxies = replicas(
        2,
        &mock.url(),
        &redis.url(),
        false,
        "[limits]\nrequests_per_sec_per_key = 1\nrequest_burst = 4\nmisses_per_sec_per_key = 0\n",
    )
    .await;
    let policy = "\"requests\";q=4;w=4";
    // Five requests with one credential, alternating between the replicas. Alone, each replica
    // would allow its own four (r=3, 3, 2, 2, 1); one budget in Redis allows four in all. A run
    // slower than the refill could see a unit come back between two requests, so such a run is
    // tried again with a fresh credential (a fresh budget).
    for attempt in 0..5 {
        let token = format!("ratelimit-shared-{attempt:04}");
        let refused_before = metric(&proxies[0], REQUEST_LIMIT_REFUSALS).await;
        let started = Instant::now();
        let mut answers = Vec::new();
        for i in 0..5 {
            answers.push(get(&proxies[i % 2], &path(TWILIO_ID), Some(&token)).await);
        }
        if started.elapsed() >= Duration::from_millis(900) {
            continue;
        }
        for (i, (answer, r)) in answers.iter().zip([3, 2, 1, 0]).enumerate() {
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "request {i}: {}",
                answer.text()
            );
            assert_eq!(
                answer.header("ratelimit-policy"),
                Some(policy),
                "request {i}"
            );
            // t: seconds until the budget is full again, one per unit taken.
            let t = 4 - r;
            assert_eq!(
                answer.header("ratelimit"),
                Some(format!("\"requests\";r={r};t={t}").as_str()),
                "request {i}, on replica {}",
                i % 2
            );
        }
        let refused = &answers[4];
        assert_eq!(
            refused.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            refused.text()
        );
        assert_eq!(refused.header("ratelimit-policy"), Some(policy));
        // The next unit comes back within the second: t=1.
        assert_eq!(refused.header("ratelimit"), Some("\"requests\";r=0;t=1"));
        assert_eq!(refused.header("retry-after"), Some("1"));
        assert_eq!(
            metric(&proxies[0], REQUEST_LIMIT_REFUSALS).await - refused_before,
            1.0,
            "the refusal is counted where it happened"
        );
        return;
    }
    panic!("five requests never took under 900 ms");
}

#[tokio::test]
async fn redis_dying_fails_no_request_and_sharing_resumes_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let mock = MockVapi::start().await;
    let proxies = replicas(2, &mock.url(), &redis.url(), false, "").await;
    let ids = MockVapi::ids();
    let tokens = ["tok-one-000001", "tok-two-000002", "tok-three-0003"];
    let mut failures = Vec::new();
    let mut lookups = 0;
    for round in 0..30 {
        if round == 10 {
            redis.kill().await;
        }
        if round == 20 {
            // A slow Redis is a miss too, never an error.
            redis.restart().await;
            let _ = redis.cli(&["DEBUG", "SLEEP", "0.5"]).await;
        }
        for (i, (_, id)) in ids.iter().enumerate() {
            let proxy = &proxies[(round + i) % 2];
            let resp = get(proxy, &path(id), Some(tokens[(round + i) % 3])).await;
            lookups += 1;
            if resp.status != StatusCode::OK {
                failures.push(format!("round {round}: {} {}", resp.status, resp.text()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {lookups} failed: {failures:?}",
        failures.len()
    );
    assert_eq!(
        admin_get(proxies[0].admin_addr, "/readyz").await.status,
        StatusCode::OK
    );

    // Redis is back: the replicas resubscribe and share fills again.
    for proxy in &proxies {
        subscribed(proxy).await;
    }
    let mut attempt = 0u32;
    let shared = eventually(Duration::from_secs(10), || {
        attempt += 1;
        let token = format!("tok-after-{attempt:06}");
        let proxies = &proxies;
        async move {
            get(&proxies[0], &path(TWILIO_ID), Some(&token)).await;
            get(&proxies[1], &path(TWILIO_ID), Some(&token))
                .await
                .cache()
                == Some("hit")
        }
    })
    .await;
    assert!(
        shared,
        "after redis returned, a fill on one replica was not a hit on the other"
    );
    assert!(
        metric(
            &proxies[0],
            "phonegate_redis_failures_total{kind=\"error\"}"
        )
        .await
            + metric(
                &proxies[0],
                "phonegate_redis_failures_total{kind=\"timeout\"}"
            )
            .await
            + metric(
                &proxies[0],
                "phonegate_redis_failures_total{kind=\"breaker_open\"}"
            )
            .await
            > 0.0
    );
}

#[tokio::test]
async fn an_unreachable_redis_at_start_is_only_a_slower_path() {
    // A port nothing listens on.
    let port = free_addr().port();
    let mock = MockVapi::start().await;
    let settings = format!(
        "[cache]\nkey_secret = \"{KEY_SECRET}\"\n[redis]\nurl = \"redis://127.0.0.1:{port}\"\n"
    );
    let proxy = Proxy::start(&mock.url(), &settings).await;
    for _ in 0..3 {
        let resp = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    }
    get(&proxy, &path(TWILIO_ID), Some(TOKEN_A))
        .await
        .assert_cache_because("hit", "this replica's memory still works");
    assert_eq!(mock.hits(), 1);
}

#[tokio::test]
async fn replicas_with_different_redaction_policies_never_share_entries() {
    let redis = RedisServer::start().await;
    let mock = MockVapi::start().await;
    let old = replicas(1, &mock.url(), &redis.url(), false, "").await;
    let new = replicas(
        1,
        &mock.url(),
        &redis.url(),
        false,
        "[redact]\nextra_fields = [\"number\"]\n",
    )
    .await;
    let before = get(&old[0], &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_ne!(before.json()["number"], "[REDACTED]");
    let after = get(&new[0], &path(TWILIO_ID), Some(TOKEN_A)).await;
    after.assert_cache_because("miss", "not the old policy's entry");
    assert_eq!(after.json()["number"], "[REDACTED]");
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn replicas_share_a_redis_over_tls() {
    let redis = TlsRedisServer::start();
    let mock = MockVapi::start().await;
    let url = redis.url();
    let extra = format!("ca_path = \"{}\"\n", redis.ca_path().display());
    // Wait for the server: the replicas subscribe only once it answers over TLS.
    let proxies = replicas(2, &mock.url(), &url, false, &extra).await;
    get(&proxies[0], &path(TWILIO_ID), Some(TOKEN_A)).await;
    let second = get(&proxies[1], &path(TWILIO_ID), Some(TOKEN_A)).await;
    second.assert_cache_because("hit", "shared over rediss://");
    assert_eq!(mock.hits(), 1);
}

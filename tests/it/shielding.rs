//! Shielding the upstream: 429 cool-downs, stale-while-revalidate, stale-if-error across the
//! fault matrix, the circuit breaker, per-credential budgets, the concurrency cap and the request
//! deadline. Every test counts what the upstream saw.

use std::time::{Duration, Instant};

use crate::support::mock_vapi::{
    BYO_ID, FIXTURE_IDS, PLANTED, TELNYX_ID, TWILIO_ID, VAPI_ID, VONAGE_ID,
};
use crate::support::{
    Behavior, MockVapi, Proxy, Resp, TOKEN_A, TOKEN_B, get, get_request, path, scrape_metric, send,
};
use http::StatusCode;

/// Settings that switch the stale windows and limits off, so each test turns on only what it
/// exercises.
const QUIET: &str = "[cache]\nstale_while_revalidate_secs = 0\nstale_if_error_secs = 0\n\
                     [limits]\nmisses_per_sec_per_key = 0\n";

fn assert_refusal(resp: &Resp, status: u16) -> u64 {
    assert_eq!(resp.status.as_u16(), status, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["statusCode"], status);
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    let retry_after: u64 = resp
        .header("retry-after")
        .expect("refusals carry retry-after")
        .parse()
        .expect("retry-after in seconds");
    assert!(retry_after >= 1);
    retry_after
}

#[tokio::test]
async fn a_429_cools_down_that_credential_only() {
    let mock = MockVapi::builder()
        .behavior(Behavior::RateLimited {
            retry_after: Some("2".into()),
        })
        .start()
        .await;
    let proxy = Proxy::start(&mock.url(), QUIET).await;

    let first = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(first.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(first.header("retry-after"), Some("2"));
    assert_eq!(mock.hits(), 1);

    // The upstream recovers, but the credential is cooling down: 200 requests for it, across
    // every id, reach the upstream at most once (the first, above).
    mock.set_behavior(Behavior::Normal);
    let ids = [TWILIO_ID, VONAGE_ID, VAPI_ID, TELNYX_ID, BYO_ID];
    for i in 0..200 {
        let resp = get(&proxy, &path(ids[i % ids.len()]), Some(TOKEN_A)).await;
        let wait = assert_refusal(&resp, 429);
        assert!(wait <= 2, "remaining cool-down, not more: {wait}");
    }
    assert_eq!(mock.hits(), 1, "no upstream request during the cool-down");

    // Another credential is unaffected.
    let other = get(&proxy, &path(TWILIO_ID), Some(TOKEN_B)).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(mock.hits(), 2);

    // After the cool-down one probe goes through and, answered 200, ends it.
    proxy.state.clock.advance(Duration::from_millis(2100));
    let probe = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(probe.status, StatusCode::OK);
    assert_eq!(mock.hits(), 3);
    let after = get(&proxy, &path(VONAGE_ID), Some(TOKEN_A)).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(mock.hits(), 4);
}

#[tokio::test]
async fn a_429_on_the_probe_extends_the_cool_down_and_no_retry_after_means_one_second() {
    let mock = MockVapi::builder()
        .behavior(Behavior::RateLimited { retry_after: None })
        .start()
        .await;
    let proxy = Proxy::start(&mock.url(), QUIET).await;
    let first = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(first.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(first.header("retry-after"), None, "the upstream sent none");
    let cooling = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(assert_refusal(&cooling, 429), 1, "1 s when absent");
    assert_eq!(mock.hits(), 1);

    proxy.state.clock.advance(Duration::from_millis(1100));
    // The probe meets another 429: the cool-down starts again.
    let probe = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(probe.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(mock.hits(), 2);
    let cooling = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_refusal(&cooling, 429);
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn a_429_cool_down_serves_stale_answers_where_it_has_them() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        "[cache]\nttl_secs = 1\nstale_while_revalidate_secs = 0\nstale_if_error_secs = 300\n",
    )
    .await;
    let original = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(original.status, StatusCode::OK);
    proxy.state.clock.advance(Duration::from_millis(1100));
    mock.set_behavior(Behavior::RateLimited {
        retry_after: Some("30".into()),
    });
    let stale = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(stale.status, StatusCode::OK);
    stale.assert_cache("stale");
    assert_eq!(stale.body, original.body);
    assert_eq!(mock.hits(), 2);
    // During the cool-down: stale for the id it has, 429 for one it has not, no upstream call.
    for _ in 0..20 {
        let again = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
        again.assert_cache("stale");
    }
    let unknown = get(&proxy, &path(VAPI_ID), Some(TOKEN_A)).await;
    assert!(assert_refusal(&unknown, 429) <= 30);
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        "[cache]\nttl_secs = 1\nstale_while_revalidate_secs = 30\nstale_if_error_secs = 0\n",
    )
    .await;
    let original = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(mock.hits(), 1);
    proxy.state.clock.advance(Duration::from_millis(1100));

    // The refresh is slow; callers meanwhile get the old answer without waiting for it.
    mock.set_behavior(Behavior::Delay(Duration::from_millis(800)));
    let started = Instant::now();
    for _ in 0..20 {
        let stale = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
        assert_eq!(stale.status, StatusCode::OK);
        stale.assert_cache("stale");
        assert_eq!(stale.body, original.body);
    }
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "stale answers did not wait for the refresh: {:?}",
        started.elapsed()
    );
    // Real time: the refresh itself takes 800 ms. Until it lands every answer is the stale one
    // and starts no second refresh; then the refreshed entry is a hit.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
        if resp.cache() == Some("hit") {
            resp.assert_cache_because("hit", "the refresh replaced the entry");
            break;
        }
        resp.assert_cache_because("stale", "while the refresh is in flight");
        assert!(Instant::now() < deadline, "the refresh never landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mock.hits(), 2, "exactly one refresh");
}

#[tokio::test]
async fn a_background_refresh_is_coalesced_with_a_foreground_miss() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        "[cache]\nttl_secs = 1\nstale_while_revalidate_secs = 30\nstale_if_error_secs = 0\n",
    )
    .await;
    get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    proxy.state.clock.advance(Duration::from_millis(1100));
    mock.set_behavior(Behavior::Delay(Duration::from_millis(500)));
    let stale = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    stale.assert_cache("stale");
    // While the refresh runs, a caller that must wait (HEAD with no entry? no: same key) joins it:
    // evict the stale entry so the next caller is a foreground miss for the same key.
    proxy
        .state
        .store
        .evict(&proxy.cache_key(TWILIO_ID, TOKEN_A));
    let miss = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(miss.status, StatusCode::OK);
    miss.assert_cache("miss");
    assert_eq!(
        mock.hits(),
        2,
        "the foreground miss joined the background refresh"
    );
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_stale_entry() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        "[cache]\nttl_secs = 1\nstale_while_revalidate_secs = 30\nstale_if_error_secs = 0\n",
    )
    .await;
    let original = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    proxy.state.clock.advance(Duration::from_millis(1100));
    mock.set_behavior(Behavior::Status(500));
    for _ in 0..3 {
        let stale = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
        stale.assert_cache("stale");
        assert_eq!(stale.body, original.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mock.set_behavior(Behavior::Normal);
    let stale = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    stale.assert_cache_because("stale", "still there after failed refreshes");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    fresh.assert_cache("hit");
}

#[tokio::test]
async fn a_refresh_answered_401_drops_the_stale_entry() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        "[cache]\nttl_secs = 1\nstale_while_revalidate_secs = 30\nstale_if_error_secs = 300\n",
    )
    .await;
    get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    proxy.state.clock.advance(Duration::from_millis(1100));
    // The key was revoked upstream.
    mock.set_behavior(Behavior::Status(401));
    let stale = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    stale.assert_cache("stale");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let revoked = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(
        revoked.status,
        StatusCode::UNAUTHORIZED,
        "no more stale data for a revoked key"
    );
}

/// Every upstream failure serves the stale entry when one is within stale_if_error, caches
/// nothing bad, and leaves the good entry in place.
#[tokio::test]
async fn the_fault_matrix_serves_stale_where_one_exists() {
    let faults: Vec<(&str, Behavior)> = vec![
        (
            "slower than the timeout",
            Behavior::Delay(Duration::from_secs(3)),
        ),
        ("closed mid-body", Behavior::CloseMidBody),
        ("garbage body", Behavior::Garbage),
        ("oversized body", Behavior::Oversized(200_000)),
        ("500", Behavior::Status(500)),
        ("502", Behavior::Status(502)),
        ("503", Behavior::Status(503)),
        ("HTML 503", Behavior::HtmlError(503)),
        (
            "429 with Retry-After",
            Behavior::RateLimited {
                retry_after: Some("1".into()),
            },
        ),
        (
            "429 without Retry-After",
            Behavior::RateLimited { retry_after: None },
        ),
    ];
    for (name, fault) in faults {
        let mock = MockVapi::start().await;
        let proxy = Proxy::start(
            &mock.url(),
            "[upstream]\ntimeout_ms = 300\nmax_body_bytes = 65536\n\
             [cache]\nttl_secs = 1\nstale_while_revalidate_secs = 0\nstale_if_error_secs = 300\n",
        )
        .await;
        let original = get(&proxy, &path(VAPI_ID), Some(TOKEN_A)).await;
        assert_eq!(original.status, StatusCode::OK, "{name}");
        proxy.state.clock.advance(Duration::from_millis(1050));
        mock.set_behavior(fault);
        let stale = get(&proxy, &path(VAPI_ID), Some(TOKEN_A)).await;
        assert_eq!(stale.status, StatusCode::OK, "{name}: {}", stale.text());
        stale.assert_cache_because("stale", name);
        assert_eq!(stale.body, original.body, "{name}");
        assert!(!stale.text().contains(PLANTED), "{name}");
        assert_eq!(mock.hits(), 2, "{name}");
        // Without a stale entry (another id) the failure shows.
        let fresh_fail = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
        assert!(
            fresh_fail.status.is_client_error() || fresh_fail.status.is_server_error(),
            "{name}: {}",
            fresh_fail.status
        );
        assert!(!fresh_fail.text().contains(PLANTED), "{name}");
        // Nothing bad was cached: once the upstream is healthy the next answer is fetched.
        mock.set_behavior(Behavior::Normal);
        proxy.state.clock.advance(Duration::from_millis(1100)); // past any 429 cool-down
        let healed = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
        assert_eq!(healed.status, StatusCode::OK, "{name}");
        healed.assert_cache_because("miss", name);
    }
}

#[tokio::test]
async fn a_refused_upstream_serves_stale() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        "[cache]\nttl_secs = 1\nstale_while_revalidate_secs = 0\nstale_if_error_secs = 300\n",
    )
    .await;
    let original = get(&proxy, &path(BYO_ID), Some(TOKEN_A)).await;
    mock.shutdown().await;
    proxy.state.clock.advance(Duration::from_millis(1100));
    let stale = get(&proxy, &path(BYO_ID), Some(TOKEN_A)).await;
    assert_eq!(stale.status, StatusCode::OK);
    stale.assert_cache("stale");
    assert_eq!(stale.body, original.body);
    let none = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(none.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn the_breaker_opens_stops_upstream_calls_and_closes_after_a_good_probe() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Status(500))
        .start()
        .await;
    let proxy = Proxy::start(
        &mock.url(),
        &format!("{QUIET}[upstream.breaker]\nfailures = 3\nopen_secs = 1\n"),
    )
    .await;
    for id in [TWILIO_ID, VONAGE_ID, VAPI_ID] {
        let resp = get(&proxy, &path(id), Some(TOKEN_A)).await;
        assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(mock.hits(), 3);
    // Open: fast 503s, whatever the credential, and no upstream call.
    for token in [TOKEN_A, TOKEN_B] {
        for id in [TELNYX_ID, BYO_ID] {
            let resp = get(&proxy, &path(id), Some(token)).await;
            assert_refusal(&resp, 503);
        }
    }
    assert_eq!(mock.hits(), 3);
    // After open_secs, one probe. It fails: open again.
    proxy.state.clock.advance(Duration::from_millis(1100));
    let probe = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(probe.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(mock.hits(), 4);
    assert_refusal(&get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await, 503);
    assert_eq!(mock.hits(), 4);
    // Next probe succeeds: closed, traffic flows.
    mock.set_behavior(Behavior::Normal);
    proxy.state.clock.advance(Duration::from_millis(1100));
    let probe = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(probe.status, StatusCode::OK);
    for id in [VONAGE_ID, VAPI_ID] {
        assert_eq!(
            get(&proxy, &path(id), Some(TOKEN_B)).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(mock.hits(), 7);
}

#[tokio::test]
async fn the_miss_budget_refuses_misses_but_never_hits() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        "[cache]\nstale_while_revalidate_secs = 0\nstale_if_error_secs = 0\n\
         [limits]\nmisses_per_sec_per_key = 1\nmiss_burst = 2\n",
    )
    .await;
    assert_eq!(
        get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&proxy, &path(VONAGE_ID), Some(TOKEN_A)).await.status,
        StatusCode::OK
    );
    let refused = get(&proxy, &path(VAPI_ID), Some(TOKEN_A)).await;
    assert_refusal(&refused, 429);
    assert_eq!(mock.hits(), 2);
    // Hits for the same credential still succeed, many times over.
    for _ in 0..50 {
        let hit = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
        assert_eq!(hit.status, StatusCode::OK);
        hit.assert_cache("hit");
    }
    // Another credential has its own budget.
    assert_eq!(
        get(&proxy, &path(VAPI_ID), Some(TOKEN_B)).await.status,
        StatusCode::OK
    );
    assert_eq!(mock.hits(), 3);
}

#[tokio::test]
async fn the_request_budget_counts_hits_too_when_on() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        "[limits]\nrequests_per_sec_per_key = 1\nrequest_burst = 3\n",
    )
    .await;
    for _ in 0..3 {
        assert_eq!(
            get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await.status,
            StatusCode::OK
        );
    }
    assert_refusal(&get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await, 429);
    assert_eq!(
        get(&proxy, &path(TWILIO_ID), Some(TOKEN_B)).await.status,
        StatusCode::OK
    );
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn the_concurrency_cap_queues_boundedly_then_refuses() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Delay(Duration::from_millis(800)))
        .start()
        .await;
    let proxy = Proxy::start(
        &mock.url(),
        &format!("{QUIET}[upstream]\nmax_in_flight = 1\nqueue_timeout_ms = 100\n"),
    )
    .await;
    let mut tasks = Vec::new();
    for id in [TWILIO_ID, VONAGE_ID, VAPI_ID] {
        let lookup = get_request(&proxy, &path(id), Some(TOKEN_A));
        tasks.push(tokio::spawn(send(lookup)));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut statuses = Vec::new();
    for task in tasks {
        let resp = task.await.unwrap();
        if resp.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_refusal(&resp, 503);
            assert!(resp.json()["message"].as_str().unwrap().contains("waiting"));
        }
        statuses.push(resp.status.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 503, 503], "one slot, a 100 ms queue");
    assert_eq!(mock.hits(), 1);
}

#[tokio::test]
async fn the_request_deadline_answers_504() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Delay(Duration::from_millis(1500)))
        .start()
        .await;
    let proxy = Proxy::start(
        &mock.url(),
        &format!("{QUIET}[server]\nrequest_timeout_ms = 300\n"),
    )
    .await;
    let started = Instant::now();
    let resp = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        resp.json()["message"]
            .as_str()
            .unwrap()
            .contains("too long")
    );
    assert!(started.elapsed() < Duration::from_millis(1200));
}

#[tokio::test]
async fn stale_and_refusals_never_leak_secrets_for_any_variant() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        "[cache]\nttl_secs = 1\nstale_while_revalidate_secs = 0\nstale_if_error_secs = 300\n",
    )
    .await;
    for (_, id) in FIXTURE_IDS {
        get(&proxy, &path(id), Some(TOKEN_A)).await;
    }
    proxy.state.clock.advance(Duration::from_millis(1100));
    mock.set_behavior(Behavior::Status(503));
    for (provider, id) in FIXTURE_IDS {
        let resp = get(&proxy, &path(id), Some(TOKEN_A)).await;
        resp.assert_cache_because("stale", provider);
        assert!(!resp.text().contains(PLANTED), "{provider}");
    }
}

/// `phonegate_refusals_total{reason="<reason>"}` on `proxy`'s admin listener.
async fn refusals(proxy: &Proxy, reason: &str) -> u64 {
    let series = format!("phonegate_refusals_total{{reason=\"{reason}\"}}");
    scrape_metric(proxy.admin_addr, &series)
        .await
        .map_or(0, |n| n as u64)
}

#[tokio::test]
async fn made_up_credentials_share_one_budget_for_the_whole_upstream() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        &format!("{QUIET}upstream_requests_per_sec = 1\nupstream_burst = 3\n"),
    )
    .await;
    let mut answered = 0;
    for i in 0..12 {
        // A fresh credential each time: each would bring a fresh per-key budget.
        let token = format!("made-up-key-{i:04}");
        let resp = get(&proxy, &path(TWILIO_ID), Some(&token)).await;
        match resp.status {
            StatusCode::OK => answered += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_refusal(&resp, 503);
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        (3..=4).contains(&answered),
        "{answered} reached the upstream"
    );
    assert_eq!(mock.hits(), answered);
    assert_eq!(
        refusals(&proxy, "upstream_limit").await,
        12 - answered as u64
    );
}

#[tokio::test]
async fn a_key_the_upstream_refused_is_answered_from_memory_for_a_while() {
    let mock = MockVapi::builder().valid_tokens([TOKEN_A]).start().await;
    let proxy = Proxy::start(
        &mock.url(),
        &format!("{QUIET}[cache]\nauth_failure_ttl_secs = 1\n"),
    )
    .await;
    let first = get(&proxy, &path(TWILIO_ID), Some(TOKEN_B)).await;
    assert_eq!(first.status, StatusCode::UNAUTHORIZED);
    assert_eq!(mock.hits(), 1);
    // Other numbers and routes with the same wrong key: no upstream call.
    for target in [
        path(VAPI_ID),
        path(BYO_ID),
        "/phone-number?limit=5".to_owned(),
    ] {
        let resp = get(&proxy, &target, Some(TOKEN_B)).await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{target}");
        assert!(resp.header("retry-after").is_some());
    }
    assert_eq!(mock.hits(), 1, "answered from memory");
    assert_eq!(refusals(&proxy, "recent_auth_failure").await, 3);
    // Another key is unaffected.
    assert_eq!(
        get(&proxy, &path(VAPI_ID), Some(TOKEN_A)).await.status,
        StatusCode::OK
    );
    // Once the time has passed, the upstream is asked again.
    proxy.state.clock.advance(Duration::from_millis(1100));
    assert_eq!(
        get(&proxy, &path(VAPI_ID), Some(TOKEN_B)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(mock.hits(), 3);
}

//! Upstream failures end to end: each becomes the right status with phonegate's own JSON error (or
//! a relayed, redacted JSON error), nothing unusable is cached, no secret or HTML leaks, and the
//! proxy keeps serving once the upstream recovers.

use std::time::{Duration, Instant};

use crate::support::mock_vapi::{PLANTED, TWILIO_ID};
use crate::support::{
    Behavior, MockVapi, Proxy, Resp, TOKEN_A, TOKEN_B, free_addr, get, get_concurrently, path,
};
use http::StatusCode;

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// A JSON error answer with `status`: NestJS shape, the common headers, no leaks.
fn assert_json_error(resp: &Resp, status: u16, what: &str) {
    crate::support::assert_json_error(resp, status, what);
    resp.assert_json_headers(what);
    assert_no_leak(resp, what);
}

/// Neither the body nor any header value carries a planted secret or an HTML page.
fn assert_no_leak(resp: &Resp, what: &str) {
    for needle in [PLANTED, "<html", "<!DOCTYPE", "cloudflare"] {
        assert!(
            !contains(&resp.body, needle),
            "{what}: body leaks {needle}: {}",
            resp.text()
        );
        for (name, value) in &resp.headers {
            assert!(
                !contains(value.as_bytes(), needle),
                "{what}: header {name} leaks {needle}: {value:?}"
            );
        }
    }
    for name in ["server", "cf-ray", "set-cookie"] {
        assert!(
            resp.header(name).is_none(),
            "{what}: upstream header {name} relayed"
        );
    }
}

/// With the upstream back to normal, the next request is a fresh 200 miss that reaches it.
async fn assert_recovers(proxy: &Proxy, mock: &MockVapi) {
    mock.set_behavior(Behavior::Normal);
    let before = mock.hits_for(&path(TWILIO_ID));
    let resp = get(proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    resp.assert_cache_because("miss", "the failure was not cached");
    assert_eq!(
        mock.hits_for(&path(TWILIO_ID)),
        before + 1,
        "the request after a failure reaches the upstream"
    );
    assert_eq!(resp.json()["id"], TWILIO_ID);
    assert!(!contains(&resp.body, PLANTED), "{}", resp.text());
    // And it is served from the cache from then on.
    let hit = get(proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    hit.assert_cache("hit");
    assert_eq!(mock.hits_for(&path(TWILIO_ID)), before + 1);
}

/// One failure case: `behavior` gives `status` with phonegate's own error, twice (never cached),
/// then the upstream recovers.
async fn check_replaced(behavior: Behavior, extra: &str, status: u16) {
    let what = format!("{behavior:?}");
    let mock = MockVapi::builder().behavior(behavior).start().await;
    let proxy = Proxy::start(&mock.url(), extra).await;
    for round in 1..=2 {
        let resp = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
        assert_json_error(&resp, status, &what);
        assert_ne!(resp.cache(), Some("hit"), "{what}");
        assert_eq!(mock.hits_for(&path(TWILIO_ID)), round, "{what}: not cached");
    }
    assert_recovers(&proxy, &mock).await;
}

#[tokio::test]
async fn a_refused_connection_is_a_502() {
    let addr = free_addr();
    let proxy = Proxy::start(&format!("http://{addr}"), "").await;
    for _ in 0..2 {
        let started = Instant::now();
        let resp = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
        assert_json_error(&resp, 502, "refused");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "refusal is immediate"
        );
    }
    // Nothing was cached for the key.
    let key = proxy.cache_key(TWILIO_ID, TOKEN_A);
    assert!(proxy.state.store.lookup(&key, 0).is_none());
    // Bring an upstream up on that port: the proxy reaches it and serves normally.
    match MockVapi::builder().addr(addr).try_start().await {
        Ok(mock) => assert_recovers(&proxy, &mock).await,
        // Someone else took the port meanwhile; at least the proxy must still answer.
        Err(_) => assert_eq!(
            get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await.status,
            StatusCode::BAD_GATEWAY
        ),
    }
}

#[tokio::test]
async fn an_upstream_slower_than_the_timeout_is_a_504() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Delay(Duration::from_secs(3)))
        .start()
        .await;
    let proxy = Proxy::start(&mock.url(), "[upstream]\ntimeout_ms = 300\n").await;
    let started = Instant::now();
    let resp = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    let elapsed = started.elapsed();
    assert_json_error(&resp, 504, "timeout");
    assert!(elapsed < Duration::from_millis(2500), "took {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(250),
        "gave up too early: {elapsed:?}"
    );
    assert_eq!(mock.hits_for(&path(TWILIO_ID)), 1);
    assert_recovers(&proxy, &mock).await;
}

#[tokio::test]
async fn a_connection_closed_mid_body_is_a_502() {
    check_replaced(Behavior::CloseMidBody, "", 502).await;
}

#[tokio::test]
async fn a_garbage_body_is_a_502() {
    check_replaced(Behavior::Garbage, "", 502).await;
}

#[tokio::test]
async fn an_oversized_body_is_a_502() {
    check_replaced(
        Behavior::Oversized(100_000),
        "[upstream]\nmax_body_bytes = 4096\n",
        502,
    )
    .await;
}

#[tokio::test]
async fn a_body_under_the_size_limit_is_served() {
    // The limit is what refuses the body above, not its shape.
    let mock = MockVapi::builder()
        .behavior(Behavior::Oversized(100_000))
        .start()
        .await;
    let proxy = Proxy::start(&mock.url(), "[upstream]\nmax_body_bytes = 200000\n").await;
    let resp = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(!contains(&resp.body, PLANTED));
}

#[tokio::test]
async fn a_body_nested_too_deeply_is_a_502() {
    check_replaced(Behavior::Deep(100), "", 502).await;
}

#[tokio::test]
async fn upstream_5xx_are_relayed_and_never_cached() {
    for code in [500u16, 502, 503] {
        let mock = MockVapi::builder()
            .behavior(Behavior::Status(code))
            .start()
            .await;
        let proxy = Proxy::start(&mock.url(), "").await;
        for round in 1..=2 {
            let resp = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
            assert_json_error(&resp, code, &format!("Status({code})"));
            resp.assert_cache_because("miss", code);
            assert!(resp.header("etag").is_none(), "{code}");
            assert_eq!(
                mock.hits_for(&path(TWILIO_ID)),
                round,
                "{code}: never cached"
            );
        }
        assert_recovers(&proxy, &mock).await;
    }
}

#[tokio::test]
async fn html_error_pages_are_replaced_by_json() {
    for code in [403u16, 502] {
        let mock = MockVapi::builder()
            .behavior(Behavior::HtmlError(code))
            .start()
            .await;
        // Every round must reach the upstream: the memory of refused keys (a 403 is one) is off.
        let proxy = Proxy::start(&mock.url(), "[cache]\nauth_failure_ttl_secs = 0\n").await;
        for round in 1..=2 {
            let resp = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
            assert_json_error(&resp, code, &format!("HtmlError({code})"));
            assert!(!resp.text().contains("Ray ID"), "{}", resp.text());
            assert_eq!(
                mock.hits_for(&path(TWILIO_ID)),
                round,
                "{code}: never cached"
            );
        }
        assert_recovers(&proxy, &mock).await;
    }
}

#[tokio::test]
async fn a_429_relays_retry_after_and_is_not_cached() {
    let mock = MockVapi::builder()
        .behavior(Behavior::RateLimited {
            retry_after: Some("7".into()),
        })
        .start()
        .await;
    let proxy = Proxy::start(&mock.url(), "").await;
    let resp = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_json_error(&resp, 429, "429 with Retry-After");
    assert_eq!(resp.header("retry-after"), Some("7"));
    resp.assert_cache("miss");
    assert_eq!(mock.hits_for(&path(TWILIO_ID)), 1);
    // Not cached, and the credential now cools down: phonegate answers the next 429 itself,
    // with the remaining wait, without asking the upstream (tests/shielding.rs has the rest).
    let again = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_json_error(&again, 429, "cooling down");
    let wait: u64 = again.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=7).contains(&wait), "{wait}");
    assert_eq!(mock.hits_for(&path(TWILIO_ID)), 1);
    // Another credential recovers as soon as the upstream does, and nothing was cached.
    mock.set_behavior(Behavior::Normal);
    let other = get(&proxy, &path(TWILIO_ID), Some(TOKEN_B)).await;
    assert_eq!(other.status, StatusCode::OK);
    other.assert_cache("miss");
    assert!(
        other.header("retry-after").is_none(),
        "a 200 carries no retry-after"
    );
}

#[tokio::test]
async fn a_429_without_retry_after_has_none() {
    let mock = MockVapi::builder()
        .behavior(Behavior::RateLimited { retry_after: None })
        .start()
        .await;
    let proxy = Proxy::start(&mock.url(), "").await;
    let resp = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_json_error(&resp, 429, "429 without Retry-After");
    assert!(
        resp.header("retry-after").is_none(),
        "relayed as the upstream sent it"
    );
    assert_eq!(mock.hits_for(&path(TWILIO_ID)), 1);
    // The cool-down defaults to one second; after it the upstream is asked again.
    proxy.state.clock.advance(Duration::from_millis(1100));
    assert_recovers(&proxy, &mock).await;
}

#[tokio::test]
async fn concurrent_requests_share_one_failing_fetch() {
    // Every fetch times out; the 50 callers, all in flight before the first gives up, share it.
    let mock = MockVapi::builder()
        .behavior(Behavior::Delay(Duration::from_secs(3)))
        .start()
        .await;
    let proxy = Proxy::start(&mock.url(), "[upstream]\ntimeout_ms = 800\n").await;
    let started = Instant::now();
    for resp in get_concurrently(&proxy, &path(TWILIO_ID), Some(TOKEN_A), 50).await {
        assert_json_error(&resp, 504, "coalesced timeout");
    }
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        mock.hits_for(&path(TWILIO_ID)),
        1,
        "the 50 callers shared one upstream request"
    );
    assert_recovers(&proxy, &mock).await;
}

#[tokio::test]
async fn a_json_503_relays_retry_after_and_is_not_cached() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Raw {
            status: 503,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("retry-after".into(), "30".into()),
                ("server".into(), "cloudflare".into()),
            ],
            body: r#"{"message":"Service Unavailable","error":"Service Unavailable","statusCode":503}"#.into(),
        })
        .start()
        .await;
    let proxy = Proxy::start(&mock.url(), "").await;
    for round in 1..=2 {
        let resp = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
        assert_json_error(&resp, 503, "503 with Retry-After");
        assert_eq!(resp.header("retry-after"), Some("30"));
        resp.assert_cache("miss");
        assert_eq!(mock.hits_for(&path(TWILIO_ID)), round, "never cached");
    }
    assert_recovers(&proxy, &mock).await;
}

/// A CDN's HTML 429 page is replaced by phonegate's JSON error, keeping its `Retry-After`.
#[tokio::test]
async fn an_html_429_still_relays_retry_after() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Raw {
            status: 429,
            headers: vec![
                ("content-type".into(), "text/html; charset=UTF-8".into()),
                ("retry-after".into(), "7".into()),
            ],
            body: "<!DOCTYPE html><html><title>Access denied</title></html>".into(),
        })
        .start()
        .await;
    let proxy = Proxy::start(&mock.url(), "").await;
    let resp = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_json_error(&resp, 429, "HTML 429");
    assert_eq!(
        resp.header("retry-after"),
        Some("7"),
        "the upstream's Retry-After must survive the HTML page's replacement"
    );
}

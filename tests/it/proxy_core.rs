//! The core lookup path end to end: forwarding, caching per (id, credential), coalescing, TTLs,
//! conditional requests, HEAD, HTTP/2, and which headers cross the proxy.

use std::time::Duration;

use crate::support::mock_vapi::{NOT_FOUND_BODY, TWILIO_ID, UNAUTHORIZED_BODY, VAPI_ID};
use crate::support::{
    Behavior, MockVapi, Proxy, Resp, TOKEN_A, TOKEN_B, admin_get, get, get_and_assert_cache,
    get_concurrently, get_request, get_with, path,
};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;

#[tokio::test]
async fn a_miss_then_a_hit_makes_one_upstream_call() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;

    let first = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(first.status, StatusCode::OK);
    first.assert_cache("miss");
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.header("cache-control"), Some("private"));
    assert!(first.header("x-request-id").is_some());
    assert!(first.header("etag").is_some());
    assert!(first.header("age").is_none(), "a miss has no age");
    assert_eq!(first.json()["id"], TWILIO_ID);

    let second = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(second.status, StatusCode::OK);
    second.assert_cache("hit");
    assert!(second.header("age").is_some(), "a hit carries age");
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("etag"), first.header("etag"));
    assert_eq!(mock.hits_for(&path(TWILIO_ID)), 1);
}

#[tokio::test]
async fn the_callers_credential_goes_upstream_and_little_else() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;
    let resp = get_with(
        &proxy,
        Method::GET,
        &format!("{}?x=random&token=abc", path(TWILIO_ID)),
        Some(TOKEN_A),
        &[
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "must-not-pass"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("cookie", "session=abc"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-request-id", "trace-me-123"),
        ],
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-request-id"), Some("trace-me-123"));
    let seen = mock.last_request().expect("the upstream saw a request");
    assert_eq!(
        seen.path_and_query,
        path(TWILIO_ID),
        "the query string is not forwarded"
    );
    assert_eq!(
        seen.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {TOKEN_A}").as_str())
    );
    assert_eq!(
        seen.headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("trace-me-123")
    );
    for name in [
        "x-hop",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "cookie",
        "x-forwarded-for",
    ] {
        assert!(seen.headers.get(name).is_none(), "{name} leaked upstream");
    }
    // The answer carries nothing hop-by-hop or upstream-specific either.
    for name in ["keep-alive", "upgrade", "set-cookie", "server"] {
        assert!(resp.header(name).is_none(), "{name} leaked downstream");
    }
}

#[tokio::test]
async fn the_query_string_cannot_bust_the_cache() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;
    for i in 0..5 {
        let resp = get(&proxy, &format!("{}?x={i}", path(TWILIO_ID)), Some(TOKEN_A)).await;
        assert_eq!(resp.status, StatusCode::OK);
    }
    assert_eq!(mock.hits(), 1);
}

#[tokio::test]
async fn ids_are_compared_case_insensitively() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;
    let lower = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    let upper = get(&proxy, &path(&TWILIO_ID.to_uppercase()), Some(TOKEN_A)).await;
    assert_eq!(upper.status, StatusCode::OK);
    upper.assert_cache("hit");
    assert_eq!(upper.body, lower.body);
    assert_eq!(mock.hits(), 1);
}

#[tokio::test]
async fn two_credentials_never_share_an_entry() {
    let mock = MockVapi::builder()
        .valid_tokens([TOKEN_A, TOKEN_B])
        .start()
        .await;
    let proxy = Proxy::start(&mock.url(), "").await;

    let a = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    let b = get(&proxy, &path(TWILIO_ID), Some(TOKEN_B)).await;
    a.assert_cache("miss");
    b.assert_cache_because("miss", "B must not get A's entry");
    assert_eq!(mock.hits(), 2);

    // A credential the upstream refuses never sees the entry cached for another.
    let bad = get(&proxy, &path(TWILIO_ID), Some("someone-else-entirely")).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        bad.json(),
        serde_json::from_str::<serde_json::Value>(UNAUTHORIZED_BODY).unwrap()
    );
    assert_eq!(mock.hits(), 3);

    // Each credential now hits its own entry.
    get_and_assert_cache(&proxy, &path(TWILIO_ID), Some(TOKEN_A), "hit").await;
    get_and_assert_cache(&proxy, &path(TWILIO_ID), Some(TOKEN_B), "hit").await;
    assert_eq!(mock.hits(), 3);
}

#[tokio::test]
async fn upstream_401s_are_relayed_and_never_cached() {
    let mock = MockVapi::start().await;
    // With the short memory of refused keys off (tests/shielding.rs covers it), every 401 is
    // the upstream's own answer, relayed, never a cache entry.
    let proxy = Proxy::start(&mock.url(), "[cache]\nauth_failure_ttl_secs = 0\n").await;
    for _ in 0..3 {
        let resp = get(&proxy, &path(TWILIO_ID), Some("invalid-key")).await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
        resp.assert_cache("miss");
        assert!(
            resp.json()["message"]
                .as_str()
                .unwrap()
                .starts_with("Invalid Key")
        );
    }
    assert_eq!(mock.hits(), 3);
}

#[tokio::test]
async fn fifty_concurrent_misses_make_one_upstream_call() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Delay(Duration::from_millis(300)))
        .start()
        .await;
    let proxy = Proxy::start(&mock.url(), "").await;
    let mut bodies = Vec::new();
    for resp in get_concurrently(&proxy, &path(TWILIO_ID), Some(TOKEN_A), 50).await {
        assert_eq!(resp.status, StatusCode::OK);
        bodies.push(resp.body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "everyone got the same answer"
    );
    assert_eq!(mock.hits_for(&path(TWILIO_ID)), 1);
}

#[tokio::test]
async fn entries_expire_after_the_ttl() {
    let mock = MockVapi::start().await;
    // Stale windows off: this is about plain expiry (tests/shielding.rs covers stale serving).
    let proxy = Proxy::start(
        &mock.url(),
        "[cache]\nttl_secs = 1\nstale_while_revalidate_secs = 0\nstale_if_error_secs = 0\n",
    )
    .await;
    get_and_assert_cache(&proxy, &path(TWILIO_ID), Some(TOKEN_A), "miss").await;
    get_and_assert_cache(&proxy, &path(TWILIO_ID), Some(TOKEN_A), "hit").await;
    proxy.state.clock.advance(Duration::from_millis(1200));
    let after = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    after.assert_cache("miss");
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn a_zero_ttl_disables_caching() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "[cache]\nttl_secs = 0\n").await;
    for _ in 0..3 {
        get_and_assert_cache(&proxy, &path(TWILIO_ID), Some(TOKEN_A), "miss").await;
    }
    assert_eq!(mock.hits(), 3);
}

#[tokio::test]
async fn upstream_404s_are_cached_for_the_negative_ttl() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        "[cache]\nnegative_ttl_secs = 1\nstale_while_revalidate_secs = 0\nstale_if_error_secs = 0\n",
    )
    .await;
    let missing = "00000000-0000-4000-8000-000000000000";
    let first = get(&proxy, &path(missing), Some(TOKEN_A)).await;
    assert_eq!(first.status, StatusCode::NOT_FOUND);
    assert_eq!(
        first.json(),
        serde_json::from_str::<serde_json::Value>(NOT_FOUND_BODY).unwrap()
    );
    let second = get(&proxy, &path(missing), Some(TOKEN_A)).await;
    assert_eq!(second.status, StatusCode::NOT_FOUND);
    second.assert_cache("hit");
    assert_eq!(mock.hits(), 1);
    proxy.state.clock.advance(Duration::from_millis(1200));
    get_and_assert_cache(&proxy, &path(missing), Some(TOKEN_A), "miss").await;
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn if_none_match_gets_304_with_the_same_etag() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;
    let first = get(&proxy, &path(VAPI_ID), Some(TOKEN_A)).await;
    let etag = first.header("etag").unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong etag: {etag}"
    );
    let cond = get_with(
        &proxy,
        Method::GET,
        &path(VAPI_ID),
        Some(TOKEN_A),
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(cond.status, StatusCode::NOT_MODIFIED);
    assert!(cond.body.is_empty());
    assert_eq!(cond.header("etag"), Some(etag.as_str()));
    let other = get_with(
        &proxy,
        Method::GET,
        &path(VAPI_ID),
        Some(TOKEN_A),
        &[("if-none-match", "\"nope\"")],
    )
    .await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.body, first.body);
}

#[tokio::test]
async fn head_answers_headers_only_and_shares_the_cache() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;
    let head = get_with(&proxy, Method::HEAD, &path(TWILIO_ID), Some(TOKEN_A), &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    let len: usize = head.header("content-length").unwrap().parse().unwrap();
    let full = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    full.assert_cache("hit");
    assert_eq!(full.body.len(), len);
    assert_eq!(mock.hits(), 1);
    let seen = mock.last_request().unwrap();
    assert_eq!(
        seen.method,
        Method::GET,
        "HEAD is looked up with GET upstream"
    );
}

#[tokio::test]
async fn http2_without_tls_is_served() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    for expect in ["miss", "hit"] {
        let req = get_request(&proxy, &path(TWILIO_ID), Some(TOKEN_A));
        let resp = client.request(req).await.expect("h2c request");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let resp = Resp::read(resp).await;
        assert_eq!(resp.status, StatusCode::OK);
        resp.assert_cache(expect);
        assert!(!resp.body.is_empty());
    }
    assert_eq!(mock.hits(), 1);
}

#[tokio::test]
async fn admin_health_and_readiness() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;
    let health = admin_get(proxy.admin_addr, "/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = admin_get(proxy.admin_addr, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["status"], "ready");
    // The proxy listener does not serve admin paths.
    let resp = get(&proxy, "/healthz", Some(TOKEN_A)).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(mock.hits(), 0);
}

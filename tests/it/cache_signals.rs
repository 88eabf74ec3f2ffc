//! The standard signals on answers: RFC 9211 `Cache-Status` beside `x-cache`, and the IETF
//! RateLimit header fields (`RateLimit-Policy`, `RateLimit`) for credentials with a budget.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;

use crate::support::mock_vapi::{TWILIO_ID, VAPI_ID};
use crate::support::{Behavior, MockVapi, Proxy, Resp, TOKEN_A, TOKEN_B, get, path};

/// No per-credential budget: the cache's signals alone.
const NO_BUDGETS: &str = "[limits]\nmisses_per_sec_per_key = 0\n";

fn cache_status(resp: &Resp) -> &str {
    resp.header("cache-status").unwrap_or("(none)")
}

fn patch(proxy: &Proxy, id: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::PATCH)
        .uri(proxy.url(&path(id)))
        .header("authorization", format!("Bearer {TOKEN_A}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"name":"Renamed"}"#)))
        .expect("request")
}

#[tokio::test]
async fn a_miss_is_stored_and_a_hit_says_how_long_it_stays_fresh() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        &format!("{NO_BUDGETS}[cache]\nttl_secs = 60\n"),
    )
    .await;
    let miss = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(miss.header("x-cache"), Some("miss"));
    assert_eq!(cache_status(&miss), "phonegate; fwd=uri-miss; stored");

    let hit = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(hit.header("x-cache"), Some("hit"));
    let ttl: u64 = cache_status(&hit)
        .strip_prefix("phonegate; hit; ttl=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a hit with a ttl: {}", cache_status(&hit)));
    assert!((58..=60).contains(&ttl), "remaining freshness {ttl}");

    proxy.state.clock.advance(Duration::from_secs(45));
    let later = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(cache_status(&later), "phonegate; hit; ttl=14");
    for resp in [&miss, &hit, &later] {
        let value = cache_status(resp);
        for leak in [TOKEN_A, "key_id"] {
            assert!(!value.contains(leak), "{value}");
        }
    }
}

#[tokio::test]
async fn an_answer_not_cached_is_a_miss_without_stored() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Status(503))
        .start()
        .await;
    let proxy = Proxy::start(&mock.url(), NO_BUDGETS).await;
    let failed = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(cache_status(&failed), "phonegate; fwd=uri-miss");
}

#[tokio::test]
async fn stale_answers_say_why() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        &format!(
            "{NO_BUDGETS}[cache]\nttl_secs = 1\nstale_while_revalidate_secs = 5\n\
             stale_if_error_secs = 60\n"
        ),
    )
    .await;
    get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;

    proxy.state.clock.advance(Duration::from_secs(2));
    let revalidating = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(revalidating.header("x-cache"), Some("stale"));
    assert_eq!(
        cache_status(&revalidating),
        "phonegate; hit; fwd=stale; detail=revalidating"
    );

    get(&proxy, &path(VAPI_ID), Some(TOKEN_A)).await;
    mock.set_behavior(Behavior::Status(500));
    proxy.state.clock.advance(Duration::from_secs(10));
    let stand_in = get(&proxy, &path(VAPI_ID), Some(TOKEN_A)).await;
    assert_eq!(stand_in.status, StatusCode::OK);
    assert_eq!(
        cache_status(&stand_in),
        "phonegate; hit; fwd=stale; detail=upstream_5xx"
    );
}

#[tokio::test]
async fn writes_bypass_and_refusals_before_the_cache_have_no_cache_status() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), NO_BUDGETS).await;
    let written = crate::support::send(patch(&proxy, TWILIO_ID)).await;
    assert_eq!(written.status, StatusCode::OK);
    assert_eq!(written.header("x-cache"), Some("bypass"));
    assert_eq!(cache_status(&written), "phonegate; fwd=bypass");

    let unauthenticated = get(&proxy, &path(TWILIO_ID), None).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unauthenticated.header("cache-status"), None);
    assert_eq!(unauthenticated.header("ratelimit-policy"), None);
}

#[tokio::test]
async fn concurrent_misses_report_the_collapse() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Delay(Duration::from_millis(300)))
        .start()
        .await;
    let proxy = Proxy::start(&mock.url(), NO_BUDGETS).await;
    let twilio = path(TWILIO_ID);
    let answers =
        futures_util::future::join_all((0..8).map(|_| get(&proxy, &twilio, Some(TOKEN_A)))).await;
    assert_eq!(mock.hits(), 1);
    let collapsed = answers
        .iter()
        .filter(|r| cache_status(r) == "phonegate; fwd=uri-miss; stored; collapsed")
        .count();
    let leader = answers
        .iter()
        .filter(|r| cache_status(r) == "phonegate; fwd=uri-miss; stored")
        .count();
    assert_eq!((leader, collapsed), (1, 7), "one fetch, seven joined it");
}

#[tokio::test]
async fn budgets_are_announced_and_what_is_left_is_reported() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        "[limits]\nrequests_per_sec_per_key = 2\nrequest_burst = 3\n\
         misses_per_sec_per_key = 1\nmiss_burst = 2\n",
    )
    .await;
    let policy = "\"requests\";q=3;w=2, \"misses\";q=2;w=2";

    let miss = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(miss.header("ratelimit-policy"), Some(policy));
    assert_eq!(
        miss.header("ratelimit"),
        Some("\"requests\";r=2;t=1, \"misses\";r=1;t=1"),
        "one of each taken"
    );

    let hit = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(hit.header("x-cache"), Some("hit"));
    assert_eq!(hit.header("ratelimit-policy"), Some(policy));
    assert_eq!(
        hit.header("ratelimit"),
        Some("\"requests\";r=1;t=1"),
        "a hit spends no miss budget"
    );

    get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    let refused = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.header("retry-after").is_some(), "Retry-After stays");
    let header = refused.header("ratelimit").unwrap_or_default();
    assert!(header.starts_with("\"requests\";r=0;t="), "{header}");
    assert_eq!(refused.header("ratelimit-policy"), Some(policy));

    // Budgets are per credential.
    let other = get(&proxy, &path(TWILIO_ID), Some(TOKEN_B)).await;
    assert_eq!(
        other.header("ratelimit"),
        Some("\"requests\";r=2;t=1, \"misses\";r=1;t=1")
    );
}

#[tokio::test]
async fn without_a_per_credential_budget_there_are_no_ratelimit_fields() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), NO_BUDGETS).await;
    let resp = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("ratelimit-policy"), None);
    assert_eq!(resp.header("ratelimit"), None);
}

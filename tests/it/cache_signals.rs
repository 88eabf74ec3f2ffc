//! The standard signals on answers: RFC 9211 `Cache-Status` beside `x-cache`, and the IETF
//! RateLimit header fields (`RateLimit-Policy`, `RateLimit`) for credentials with a budget.

use std::time::Duration;

use http::{Method, StatusCode};

use crate::support::mock_vapi::{TWILIO_ID, VAPI_ID};
use crate::support::{
    Behavior, MockVapi, Proxy, TOKEN_A, TOKEN_B, get, get_concurrently, path, write,
};

/// No per-credential budget: the cache's signals alone.
const NO_BUDGETS: &str = "[limits]\nmisses_per_sec_per_key = 0\n";

#[tokio::test]
async fn a_miss_is_stored_and_a_hit_says_how_long_it_stays_fresh() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        &format!("{NO_BUDGETS}[cache]\nttl_secs = 60\n"),
    )
    .await;
    let miss = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    miss.assert_cache("miss");
    assert_eq!(miss.cache_status(), Some("phonegate; fwd=uri-miss; stored"));

    let hit = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    hit.assert_cache("hit");
    let ttl: u64 = hit
        .cache_status()
        .and_then(|v| v.strip_prefix("phonegate; hit; ttl="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a hit with a ttl: {:?}", hit.cache_status()));
    assert!((58..=60).contains(&ttl), "remaining freshness {ttl}");

    proxy.state.clock.advance(Duration::from_secs(45));
    let later = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(later.cache_status(), Some("phonegate; hit; ttl=14"));
    for resp in [&miss, &hit, &later] {
        let value = resp.cache_status().unwrap_or("(none)");
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
    assert_eq!(failed.cache_status(), Some("phonegate; fwd=uri-miss"));
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
    revalidating.assert_cache("stale");
    assert_eq!(
        revalidating.cache_status(),
        Some("phonegate; hit; fwd=stale; detail=revalidating")
    );

    get(&proxy, &path(VAPI_ID), Some(TOKEN_A)).await;
    mock.set_behavior(Behavior::Status(500));
    proxy.state.clock.advance(Duration::from_secs(10));
    let stand_in = get(&proxy, &path(VAPI_ID), Some(TOKEN_A)).await;
    assert_eq!(stand_in.status, StatusCode::OK);
    assert_eq!(
        stand_in.cache_status(),
        Some("phonegate; hit; fwd=stale; detail=upstream_5xx")
    );
}

#[tokio::test]
async fn writes_bypass_and_refusals_before_the_cache_have_no_cache_status() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), NO_BUDGETS).await;
    let body = r#"{"name":"Renamed"}"#;
    let written = write(&proxy, Method::PATCH, &path(TWILIO_ID), TOKEN_A, body).await;
    assert_eq!(written.status, StatusCode::OK);
    written.assert_cache("bypass");
    assert_eq!(written.cache_status(), Some("phonegate; fwd=bypass"));

    let unauthenticated = get(&proxy, &path(TWILIO_ID), None).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unauthenticated.cache_status(), None);
    assert_eq!(unauthenticated.header("ratelimit-policy"), None);
}

#[tokio::test]
async fn concurrent_misses_report_the_collapse() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Delay(Duration::from_millis(300)))
        .start()
        .await;
    let proxy = Proxy::start(&mock.url(), NO_BUDGETS).await;
    let answers = get_concurrently(&proxy, &path(TWILIO_ID), Some(TOKEN_A), 8).await;
    assert_eq!(mock.hits(), 1);
    let collapsed = answers
        .iter()
        .filter(|r| r.cache_status() == Some("phonegate; fwd=uri-miss; stored; collapsed"))
        .count();
    let leader = answers
        .iter()
        .filter(|r| r.cache_status() == Some("phonegate; fwd=uri-miss; stored"))
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
    hit.assert_cache("hit");
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

//! `/metrics` on the admin listener: exact counter values after a known sequence of requests.

use std::time::Duration;

use crate::support::mock_vapi::{TWILIO_ID, VAPI_ID, VONAGE_ID};
use crate::support::{
    Behavior, MockVapi, Proxy, TOKEN_A, TOKEN_B, admin_get, get, get_concurrently, metric, path,
};
use http::StatusCode;

/// `/metrics` on `proxy`'s admin listener as Prometheus asks for it: 200, in the OpenMetrics
/// text format.
async fn scrape(proxy: &Proxy) -> String {
    let req = http::Request::get(format!("http://{}/metrics", proxy.admin_addr))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let resp = crate::support::send(req).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(
        resp.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(resp.text().ends_with("# EOF\n"));
    resp.text()
}

#[tokio::test]
async fn scrapers_that_do_not_ask_for_openmetrics_get_the_prometheus_text_format() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;
    get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    let resp = admin_get(proxy.admin_addr, "/metrics").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = resp.text();
    assert!(
        text.contains("# TYPE phonegate_requests_total counter\n"),
        "{text}"
    );
    assert!(!text.contains("# EOF"));
    assert_eq!(
        crate::support::metric(
            &text,
            r#"phonegate_requests_total{route="get",status="200",cache="miss"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn counters_match_a_known_sequence() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        "[limits]\nmisses_per_sec_per_key = 1\nmiss_burst = 2\n\
         [upstream]\ntimeout_ms = 300\n",
    )
    .await;
    // 1 miss, 2 hits for A.
    for _ in 0..3 {
        assert_eq!(
            get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await.status,
            StatusCode::OK
        );
    }
    // A second miss for A, then its budget is gone: a refusal.
    assert_eq!(
        get(&proxy, &path(VONAGE_ID), Some(TOKEN_A)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&proxy, &path(VAPI_ID), Some(TOKEN_A)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Refused before the cache: no credential, and a bad id.
    assert_eq!(
        get(&proxy, &path(TWILIO_ID), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&proxy, "/phone-number/nope", Some(TOKEN_A))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    // An upstream timeout for B.
    mock.set_behavior(Behavior::Delay(Duration::from_secs(2)));
    assert_eq!(
        get(&proxy, &path(VAPI_ID), Some(TOKEN_B)).await.status,
        StatusCode::GATEWAY_TIMEOUT
    );

    let text = scrape(&proxy).await;
    let expect = [
        (
            r#"phonegate_requests_total{route="get",status="200",cache="miss"}"#,
            2.0,
        ),
        (
            r#"phonegate_requests_total{route="get",status="200",cache="hit"}"#,
            2.0,
        ),
        (
            r#"phonegate_requests_total{route="get",status="429",cache="none"}"#,
            1.0,
        ),
        (
            r#"phonegate_requests_total{route="get",status="401",cache="none"}"#,
            1.0,
        ),
        (
            r#"phonegate_requests_total{route="none",status="400",cache="none"}"#,
            1.0,
        ),
        (
            r#"phonegate_requests_total{route="get",status="504",cache="miss"}"#,
            1.0,
        ),
        (r#"phonegate_refusals_total{reason="miss_limit"}"#, 1.0),
        (r#"phonegate_upstream_responses_total{status="200"}"#, 2.0),
        (r#"phonegate_upstream_failures_total{kind="timeout"}"#, 1.0),
        ("phonegate_upstream_duration_seconds_count", 3.0),
        (
            r#"phonegate_request_duration_seconds_count{route="get"}"#,
            7.0,
        ),
        ("phonegate_cache_entries", 2.0),
        ("phonegate_breaker_state", 0.0),
    ];
    for (series, want) in expect {
        assert_eq!(metric(&text, series), Some(want), "{series} in\n{text}");
    }
    assert!(metric(&text, "phonegate_cache_bytes").is_some_and(|b| b > 0.0));
    assert!(metric(&text, "phonegate_open_connections").is_some_and(|c| c >= 0.0));
    assert!(!text.contains(TOKEN_A), "no credential in metrics");
}

#[tokio::test]
async fn coalesced_waits_and_stale_answers_are_counted() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Delay(Duration::from_millis(300)))
        .start()
        .await;
    let proxy = Proxy::start(
        &mock.url(),
        "[cache]\nttl_secs = 1\nstale_while_revalidate_secs = 30\n",
    )
    .await;
    for resp in get_concurrently(&proxy, &path(TWILIO_ID), Some(TOKEN_A), 10).await {
        assert_eq!(resp.status, StatusCode::OK);
    }
    proxy.state.clock.advance(Duration::from_millis(1100));
    let stale = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    stale.assert_cache("stale");
    let text = scrape(&proxy).await;
    assert_eq!(
        metric(&text, "phonegate_coalesced_waits_total"),
        Some(9.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"phonegate_stale_served_total{reason="revalidating"}"#
        ),
        Some(1.0),
        "{text}"
    );
    // The refresh runs in the background; give it time to reach the upstream.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(mock.hits(), 1 + 1, "one fetch for ten callers, one refresh");
}

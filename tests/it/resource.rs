//! The whole phone-number resource: both list routes (spec-checked, canonical, cached per
//! credential and query, redacted element by element, coalesced) and the writes (POST, PATCH,
//! DELETE forwarded byte for byte, checked, never cached, redacted, invalidating what they change).

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::mock_vapi::{
    FIXTURE_IDS, KEPT_POINTERS, NOT_FOUND_BODY, PLANTED, SECRET_POINTERS, SECRET_URL_POINTERS,
    TELNYX_ID, TWILIO_ID, VAPI_ID, VONAGE_ID, provider_secret_pointers,
};
use crate::support::{
    Behavior, MockVapi, Proxy, Resp, TOKEN_A, TOKEN_B, assert_json_error, assert_no_planted, get,
    get_and_assert_cache, get_concurrently, get_request, get_with, path, request, send,
    send_concurrently, write,
};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::Value;

const REDACTED: &str = "[REDACTED]";

/// A well-formed UUID that no fixture has.
const UNKNOWN_ID: &str = "00000000-0000-4000-8000-000000000000";

async fn setup(extra: &str) -> (MockVapi, Proxy) {
    let mock = MockVapi::builder()
        .valid_tokens([TOKEN_A, TOKEN_B])
        .start()
        .await;
    let proxy = Proxy::start(&mock.url(), extra).await;
    (mock, proxy)
}

/// `method {proxy}{path}` with a bearer token, an optional content type and a body.
async fn send_body(
    proxy: &Proxy,
    method: Method,
    path: &str,
    token: &str,
    content_type: Option<&str>,
    body: impl Into<Bytes>,
) -> Resp {
    let headers: Vec<(&str, &str)> = content_type
        .map(|ct| ("content-type", ct))
        .into_iter()
        .collect();
    send(request(
        method,
        &proxy.url(path),
        Some(token),
        &headers,
        body,
    ))
    .await
}

/// How many `method` requests the upstream received for exactly `path` (query ignored).
fn upstream_count(mock: &MockVapi, method: Method, path: &str) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.method == method && r.path == path)
        .count()
}

/// Asserts one phone-number object of a list (or a write's answer) is redacted against the
/// fixture of its provider: every secret masked, every URL cleaned, the rest intact.
fn assert_element_redacted(element: &Value, what: &str, check_kept: bool) {
    let provider = element["provider"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: element without provider: {element}"));
    let fixture = MockVapi::fixture(provider);
    for pointer in SECRET_POINTERS
        .iter()
        .chain(provider_secret_pointers(provider))
    {
        assert_eq!(
            element.pointer(pointer),
            Some(&Value::String(REDACTED.into())),
            "{what}: {provider} {pointer} is not masked"
        );
    }
    for pointer in SECRET_URL_POINTERS {
        let got = element
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{what}: {provider} URL {pointer} is missing"));
        assert!(!got.contains(PLANTED), "{what}: {pointer} leaks: {got}");
    }
    for pointer in KEPT_POINTERS.iter().filter(|_| check_kept) {
        assert_eq!(
            element.pointer(pointer),
            fixture.pointer(pointer),
            "{what}: {provider} {pointer} did not survive"
        );
    }
}

// ---- the list routes ----

#[tokio::test]
async fn list_v1_is_a_bare_array_redacted_element_by_element() {
    let (mock, proxy) = setup("").await;

    let all = get(&proxy, "/phone-number", Some(TOKEN_A)).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text());
    all.assert_cache("miss");
    assert_eq!(all.header("content-type"), Some("application/json"));
    assert_eq!(all.header("cache-control"), Some("private"));
    assert!(all.header("etag").is_some());
    assert_no_planted(&all, "GET /phone-number");
    let body = all.json();
    let items = body.as_array().expect("a bare JSON array");
    assert_eq!(items.len(), FIXTURE_IDS.len());
    for (item, (provider, id)) in items.iter().zip(FIXTURE_IDS) {
        assert_eq!(item["id"], *id);
        assert_eq!(item["provider"], *provider);
        assert_element_redacted(item, "list v1", true);
    }
    assert_eq!(mock.last_request().unwrap().path_and_query, "/phone-number");

    let two = get(&proxy, "/phone-number?limit=2", Some(TOKEN_A)).await;
    assert_eq!(two.status, StatusCode::OK);
    assert_no_planted(&two, "GET /phone-number?limit=2");
    let body = two.json();
    assert_eq!(body.as_array().map(Vec::len), Some(2));
    for item in body.as_array().unwrap() {
        assert_element_redacted(item, "list v1 limit=2", true);
    }
    assert_eq!(
        mock.last_request().unwrap().path_and_query,
        "/phone-number?limit=2"
    );

    // A hit is just as clean.
    let hit = get(&proxy, "/phone-number", Some(TOKEN_A)).await;
    hit.assert_cache("hit");
    assert_eq!(hit.body, all.body);
    assert_no_planted(&hit, "list hit");
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn list_v2_is_a_redacted_page_with_its_metadata() {
    let (mock, proxy) = setup("").await;
    let page = get(&proxy, "/v2/phone-number?page=2&limit=2", Some(TOKEN_A)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    page.assert_cache("miss");
    assert_no_planted(&page, "GET /v2/phone-number");
    let body = page.json();
    let results = body["results"].as_array().expect("results array");
    let ids: Vec<&str> = results.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, [VAPI_ID, TELNYX_ID], "page 2 of 2");
    for item in results {
        assert_element_redacted(item, "list v2", true);
    }
    let metadata = &body["metadata"];
    assert_eq!(metadata["totalItems"], 5, "{metadata}");
    assert_eq!(metadata["currentPage"], 2, "{metadata}");
    assert_eq!(metadata["itemsPerPage"], 2, "{metadata}");
    assert_eq!(metadata["hasNextPage"], true, "{metadata}");
    assert_eq!(
        mock.last_request().unwrap().path_and_query,
        "/v2/phone-number?limit=2&page=2"
    );

    // The whole collection in one page: all five variants redacted.
    let all = get(&proxy, "/v2/phone-number", Some(TOKEN_A)).await;
    assert_no_planted(&all, "GET /v2/phone-number (all)");
    let body = all.json();
    let results = body["results"].as_array().expect("results array");
    assert_eq!(results.len(), FIXTURE_IDS.len());
    for item in results {
        assert_element_redacted(item, "list v2 (all)", true);
    }
    assert_eq!(
        mock.last_request().unwrap().path_and_query,
        "/v2/phone-number"
    );
}

#[tokio::test]
async fn list_queries_are_forwarded_in_canonical_order() {
    let (mock, proxy) = setup("").await;

    // v1: the eight date filters (every RFC 3339 shape) and limit, in reverse order.
    let dates = [
        ("updatedAtLt", "2026-08-31T23:59:59Z"),
        ("updatedAtLe", "2026-08-31T23:59:59.999Z"),
        ("updatedAtGt", "2024-01-01T00:00:00%2B02:00"),
        ("updatedAtGe", "2024-01-01T00:00:00-05:00"),
        ("limit", "007"),
        ("createdAtLt", "2026-08-31T23:59:59Z"),
        ("createdAtLe", "2026-08-31t23:59:59z"),
        ("createdAtGt", "2020-02-29T12:00:00.5Z"),
        ("createdAtGe", "2020-01-01T00:00:00Z"),
    ];
    let query: Vec<String> = dates.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let resp = get(
        &proxy,
        &format!("/phone-number?{}", query.join("&")),
        Some(TOKEN_A),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let mut expected: Vec<(&str, String)> = dates
        .iter()
        .map(|(k, v)| {
            let canonical = match *k {
                "limit" => "7".to_owned(),
                _ => v.replace(':', "%3A"),
            };
            (*k, canonical)
        })
        .collect();
    expected.sort();
    let expected: Vec<String> = expected.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(
        mock.last_request().unwrap().path_and_query,
        format!("/phone-number?{}", expected.join("&"))
    );

    // v2: every v2 parameter, scrambled, with form-style spaces.
    let resp = get(
        &proxy,
        "/v2/phone-number?sortOrder=ASC&search=support+line&sortBy=createdAt&page=1&limit=05&",
        Some(TOKEN_A),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(
        mock.last_request().unwrap().path_and_query,
        "/v2/phone-number?limit=5&page=1&search=support%20line&sortBy=createdAt&sortOrder=ASC"
    );

    // The spec's bounds are accepted.
    for (route, query) in [
        ("/phone-number", "limit=0"),
        ("/phone-number", "limit=1000"),
        (
            "/v2/phone-number",
            "page=4294967295&sortBy=cost&sortOrder=DESC",
        ),
        ("/v2/phone-number", "sortBy=duration"),
    ] {
        let resp = get(&proxy, &format!("{route}?{query}"), Some(TOKEN_A)).await;
        assert_eq!(
            resp.status,
            StatusCode::OK,
            "{route}?{query}: {}",
            resp.text()
        );
        assert_eq!(
            mock.last_request().unwrap().path_and_query,
            format!("{route}?{query}")
        );
    }
    let search = format!("search={}", "a".repeat(100));
    let resp = get(&proxy, &format!("/v2/phone-number?{search}"), Some(TOKEN_A)).await;
    assert_eq!(resp.status, StatusCode::OK, "100 characters are allowed");
}

#[tokio::test]
async fn list_queries_outside_the_spec_get_400_without_an_upstream_call() {
    let (mock, proxy) = setup("").await;
    let long_search = format!("search={}", "a".repeat(101));
    let cases: Vec<(&str, String, &str)> = vec![
        ("/phone-number", "limit=1001".into(), "limit"),
        ("/phone-number", "limit=-1".into(), "limit"),
        ("/phone-number", "limit=ten".into(), "limit"),
        ("/phone-number", "limit=".into(), "limit"),
        ("/phone-number", "limit=1&limit=2".into(), "limit"),
        ("/phone-number", "foo=bar".into(), "foo"),
        ("/phone-number", "page=1".into(), "page"),
        ("/phone-number", "sortOrder=ASC".into(), "sortOrder"),
        ("/phone-number", "search=x".into(), "search"),
        (
            "/phone-number",
            "createdAtGt=yesterday".into(),
            "createdAtGt",
        ),
        (
            "/phone-number",
            "createdAtLt=2026-13-01T00:00:00Z".into(),
            "createdAtLt",
        ),
        (
            "/phone-number",
            "createdAtGe=2026-01-01".into(),
            "createdAtGe",
        ),
        (
            "/phone-number",
            "createdAtLe=1767225600".into(),
            "createdAtLe",
        ),
        (
            "/phone-number",
            "updatedAtGt=2026-02-30T00:00:00Z".into(),
            "updatedAtGt",
        ),
        (
            "/phone-number",
            "updatedAtLt=2026-01-01T00:00:00".into(),
            "updatedAtLt",
        ),
        // A bare "+" in a query string is a space, so this offset is malformed.
        (
            "/phone-number",
            "updatedAtLe=2026-01-01T00:00:00+02:00".into(),
            "updatedAtLe",
        ),
        ("/phone-number", "updatedAtGe=".into(), "updatedAtGe"),
        ("/v2/phone-number", "page=0".into(), "page"),
        ("/v2/phone-number", "page=4294967296".into(), "page"),
        ("/v2/phone-number", "page=1.5".into(), "page"),
        ("/v2/phone-number", "limit=5000".into(), "limit"),
        ("/v2/phone-number", "sortOrder=asc".into(), "sortOrder"),
        ("/v2/phone-number", "sortBy=name".into(), "sortBy"),
        ("/v2/phone-number", "sortBy=".into(), "sortBy"),
        ("/v2/phone-number", long_search, "search"),
        ("/v2/phone-number", "search=%00".into(), "search"),
        ("/v2/phone-number", "cursor=abc".into(), "cursor"),
        (
            "/v2/phone-number",
            "createdAtGt=not-a-date".into(),
            "createdAtGt",
        ),
    ];
    for (route, query, param) in &cases {
        let what = format!("{route}?{query}");
        let resp = get(&proxy, &what, Some(TOKEN_A)).await;
        let message = assert_json_error(&resp, 400, &what);
        assert!(
            message.contains(param),
            "{what}: the message should name {param}: {message}"
        );
        assert_eq!(resp.header("content-type"), Some("application/json"));
        resp.assert_no_cache(format_args!("{what}: never reached the cache"));
    }
    assert_eq!(mock.hits(), 0, "the upstream never heard of them");
}

#[tokio::test]
async fn equivalent_list_queries_share_one_entry_per_credential() {
    let (mock, proxy) = setup("").await;

    let first = get(&proxy, "/v2/phone-number?page=1&limit=5", Some(TOKEN_A)).await;
    assert_eq!(first.status, StatusCode::OK);
    first.assert_cache("miss");
    for same in [
        "/v2/phone-number?limit=5&page=1",
        "/v2/phone-number?limit=05&page=1&",
        "/v2/phone-number?&page=001&limit=5",
    ] {
        let resp = get(&proxy, same, Some(TOKEN_A)).await;
        assert_eq!(resp.status, StatusCode::OK, "{same}");
        resp.assert_cache_because("hit", same);
        assert_eq!(resp.body, first.body, "{same}");
        assert!(resp.header("age").is_some(), "{same}");
    }
    assert_eq!(mock.hits(), 1);
    assert_eq!(
        mock.last_request().unwrap().path_and_query,
        "/v2/phone-number?limit=5&page=1"
    );

    // Another query is another entry.
    let other = get(&proxy, "/v2/phone-number?limit=5&page=2", Some(TOKEN_A)).await;
    other.assert_cache("miss");
    assert_eq!(mock.hits(), 2);

    // The same query on the other list route is another entry too.
    let v1 = get(&proxy, "/phone-number?limit=5", Some(TOKEN_A)).await;
    v1.assert_cache("miss");
    assert!(v1.json().is_array());
    assert_eq!(mock.hits(), 3);

    // Another credential never gets A's list.
    let b = get(&proxy, "/v2/phone-number?limit=5&page=1", Some(TOKEN_B)).await;
    assert_eq!(b.status, StatusCode::OK);
    b.assert_cache("miss");
    assert_eq!(mock.hits(), 4);
    let seen = mock.last_request().unwrap();
    assert_eq!(
        seen.headers.get("authorization").unwrap(),
        &format!("Bearer {TOKEN_B}")
    );
    let b_again = get(&proxy, "/v2/phone-number?page=1&limit=5", Some(TOKEN_B)).await;
    b_again.assert_cache("hit");

    // A credential the upstream refuses gets its own 401, not a cached list.
    let bad = get(
        &proxy,
        "/v2/phone-number?limit=5&page=1",
        Some("someone-else"),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(mock.hits(), 5);

    // An empty query and no query are one entry.
    let bare = get(&proxy, "/phone-number", Some(TOKEN_A)).await;
    bare.assert_cache("miss");
    let empty = get(&proxy, "/phone-number?", Some(TOKEN_A)).await;
    empty.assert_cache("hit");
    assert_eq!(mock.hits(), 6);
}

#[tokio::test]
async fn concurrent_identical_list_requests_make_one_upstream_call() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Delay(Duration::from_millis(300)))
        .start()
        .await;
    let proxy = Proxy::start(&mock.url(), "").await;
    // Two spellings of one canonical query: they coalesce too.
    let spellings = [
        "/v2/phone-number?page=1&limit=3",
        "/v2/phone-number?limit=3&page=1",
    ];
    let lookups = (0..20).map(|i| get_request(&proxy, spellings[i % 2], Some(TOKEN_A)));
    let mut bodies = Vec::new();
    for resp in send_concurrently(lookups).await {
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        assert_no_planted(&resp, "coalesced list");
        bodies.push(resp.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "one shared answer");
    assert_eq!(mock.hits_for("/v2/phone-number"), 1);
    assert_eq!(mock.hits(), 1);

    // The v1 route coalesces the same way.
    for resp in get_concurrently(&proxy, "/phone-number?limit=2", Some(TOKEN_A), 20).await {
        assert_eq!(resp.status, StatusCode::OK);
    }
    assert_eq!(mock.hits_for("/phone-number"), 1);
}

#[tokio::test]
async fn lists_expire_after_list_ttl_secs_independently_of_single_lookups() {
    let (mock, proxy) = setup(
        "[cache]\nlist_ttl_secs = 1\nstale_while_revalidate_secs = 0\nstale_if_error_secs = 0\n",
    )
    .await;
    let list = "/v2/phone-number?limit=2";
    get_and_assert_cache(&proxy, list, Some(TOKEN_A), "miss").await;
    get_and_assert_cache(&proxy, &path(TWILIO_ID), Some(TOKEN_A), "miss").await;
    get_and_assert_cache(&proxy, list, Some(TOKEN_A), "hit").await;
    assert_eq!(mock.hits(), 2);

    proxy.state.clock.advance(Duration::from_millis(1100));
    let after = get(&proxy, list, Some(TOKEN_A)).await;
    assert_eq!(after.status, StatusCode::OK);
    after.assert_cache_because("miss", "the list expired");
    assert_eq!(mock.hits_for("/v2/phone-number"), 2);
    // The single lookup lives by cache.ttl_secs (60 s by default), not by the list TTL.
    get_and_assert_cache(&proxy, &path(TWILIO_ID), Some(TOKEN_A), "hit").await;
    assert_eq!(mock.hits(), 3);
}

#[tokio::test]
async fn a_zero_list_ttl_disables_list_caching_only() {
    let (mock, proxy) = setup("[cache]\nlist_ttl_secs = 0\n").await;
    for _ in 0..3 {
        let resp = get(&proxy, "/phone-number", Some(TOKEN_A)).await;
        assert_eq!(resp.status, StatusCode::OK);
        resp.assert_cache("miss");
    }
    assert_eq!(mock.hits_for("/phone-number"), 3);
    get(&proxy, &path(VAPI_ID), Some(TOKEN_A)).await;
    get_and_assert_cache(&proxy, &path(VAPI_ID), Some(TOKEN_A), "hit").await;
}

// ---- the writes ----

#[tokio::test]
async fn post_forwards_the_body_byte_for_byte_and_redacts_the_echo() {
    let (mock, proxy) = setup("").await;
    // Odd spacing, key order and escapes: anything re-serialised would differ.
    let body = "{ \"provider\":\"twilio\" ,\n  \"number\": \"+14155550999\",\n  \"name\": \"New \\u006cine\",\n  \"twilioAccountSid\": \"AC00000000000000000000000000000001\",\n  \"twilioAuthToken\": \"PLANTED-new\",\n  \"server\": {\"url\": \"https://hooks.example.com/x?token=PLANTED-new-url\", \"headers\": {\"Authorization\": \"Bearer PLANTED-new-header\"}}\t}";
    let resp = write(&proxy, Method::POST, "/phone-number", TOKEN_A, body).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    resp.assert_cache("bypass");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.header("cache-control"), Some("private"));
    assert!(
        resp.header("etag").is_none(),
        "only 200 lookups carry an etag"
    );
    assert_no_planted(&resp, "POST answer");
    let created = resp.json();
    assert_eq!(created["twilioAuthToken"], REDACTED);
    assert_eq!(created["server"]["headers"]["Authorization"], REDACTED);
    assert_eq!(
        created["server"]["url"],
        "https://hooks.example.com/x?token=[REDACTED]"
    );
    assert_eq!(created["name"], "New line");
    assert_eq!(created["number"], "+14155550999");
    for pointer in provider_secret_pointers("twilio") {
        assert_eq!(
            created.pointer(pointer),
            Some(&Value::String(REDACTED.into())),
            "POST answer: {pointer} is not masked"
        );
    }
    let new_id = created["id"].as_str().expect("new id");
    assert!(!FIXTURE_IDS.iter().any(|(_, id)| *id == new_id));

    let seen = mock.last_request().expect("forwarded");
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.path_and_query, "/phone-number");
    assert_eq!(
        seen.body,
        Bytes::from(body),
        "the body is forwarded unchanged"
    );
    assert_eq!(
        seen.headers.get("authorization").unwrap(),
        &format!("Bearer {TOKEN_A}")
    );
    assert!(
        seen.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"))
    );
    assert_eq!(mock.hits(), 1);

    // Writes are never cached: the same POST goes upstream again.
    let again = write(&proxy, Method::POST, "/phone-number", TOKEN_A, body).await;
    assert_eq!(again.status, StatusCode::CREATED);
    again.assert_cache("bypass");
    assert_eq!(mock.hits(), 2);
    assert_ne!(again.json()["id"], created["id"]);

    // The created number is then readable through the proxy, redacted.
    let fetched = get(&proxy, &path(new_id), Some(TOKEN_A)).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_no_planted(&fetched, "GET of the created number");
}

#[tokio::test]
async fn patch_forwards_the_body_unchanged_and_invalidates_every_credentials_entry() {
    let (mock, proxy) = setup("").await;
    let one = path(TWILIO_ID);
    let a = get(&proxy, &one, Some(TOKEN_A)).await;
    let b = get(&proxy, &one, Some(TOKEN_B)).await;
    a.assert_cache("miss");
    b.assert_cache("miss");
    get_and_assert_cache(&proxy, &one, Some(TOKEN_A), "hit").await;
    get_and_assert_cache(&proxy, &one, Some(TOKEN_B), "hit").await;
    assert_eq!(a.json()["name"], "Support line (US)");
    assert_eq!(upstream_count(&mock, Method::GET, &one), 2);

    let body = "{\"name\" :  \"Renamed line\", \"smsEnabled\":false}";
    let patched = write(&proxy, Method::PATCH, &one, TOKEN_A, body).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text());
    patched.assert_cache("bypass");
    assert_no_planted(&patched, "PATCH answer");
    let answer = patched.json();
    assert_eq!(answer["name"], "Renamed line");
    assert_eq!(answer["smsEnabled"], false);
    assert_element_redacted(&answer, "PATCH answer", false);
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(seen.path_and_query, one);
    assert_eq!(
        seen.body,
        Bytes::from(body),
        "the body is forwarded unchanged"
    );

    // A's next lookup fetches the new data once, then hits it.
    let after = get(&proxy, &one, Some(TOKEN_A)).await;
    assert_eq!(after.status, StatusCode::OK);
    after.assert_cache("miss");
    assert_eq!(after.json()["name"], "Renamed line");
    assert_eq!(
        upstream_count(&mock, Method::GET, &one),
        3,
        "exactly one refetch"
    );
    let again = get(&proxy, &one, Some(TOKEN_A)).await;
    again.assert_cache("hit");
    assert_eq!(again.json()["name"], "Renamed line");
    assert_eq!(upstream_count(&mock, Method::GET, &one), 3);

    // B's entry went too, though B did not write.
    let b_after = get(&proxy, &one, Some(TOKEN_B)).await;
    b_after.assert_cache("miss");
    assert_eq!(b_after.json()["name"], "Renamed line");
    assert_eq!(upstream_count(&mock, Method::GET, &one), 4);

    // Other numbers' entries are untouched.
    get(&proxy, &path(VAPI_ID), Some(TOKEN_A)).await;
    write(&proxy, Method::PATCH, &one, TOKEN_A, "{\"name\":\"x\"}").await;
    get_and_assert_cache(&proxy, &path(VAPI_ID), Some(TOKEN_A), "hit").await;
}

#[tokio::test]
async fn writes_invalidate_the_callers_cached_lists() {
    let (mock, proxy) = setup("").await;
    let v1 = "/phone-number";
    let v2 = "/v2/phone-number?limit=100";
    for list in [v1, v2] {
        get_and_assert_cache(&proxy, list, Some(TOKEN_A), "miss").await;
        get_and_assert_cache(&proxy, list, Some(TOKEN_A), "hit").await;
    }
    assert_eq!(mock.hits(), 2);

    // POST: both lists are refetched and show the new number.
    let created = write(
        &proxy,
        Method::POST,
        "/phone-number",
        TOKEN_A,
        r#"{"provider":"vapi","name":"Fresh number"}"#,
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let new_id = created.json()["id"].as_str().unwrap().to_owned();
    let list = get(&proxy, v1, Some(TOKEN_A)).await;
    list.assert_cache_because("miss", "refetched after POST");
    let items = list.json();
    assert_eq!(items.as_array().map(Vec::len), Some(6));
    assert!(items.as_array().unwrap().iter().any(|i| i["id"] == new_id));
    assert_no_planted(&list, "list after POST");
    let page = get(&proxy, v2, Some(TOKEN_A)).await;
    page.assert_cache("miss");
    assert_eq!(page.json()["metadata"]["totalItems"], 6);
    assert_eq!(upstream_count(&mock, Method::GET, "/phone-number"), 2);
    assert_eq!(upstream_count(&mock, Method::GET, "/v2/phone-number"), 2);
    get_and_assert_cache(&proxy, v1, Some(TOKEN_A), "hit").await;

    // PATCH: the list shows the change.
    let patched = write(
        &proxy,
        Method::PATCH,
        &path(VAPI_ID),
        TOKEN_A,
        r#"{"name":"Patched name"}"#,
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK);
    let list = get(&proxy, v1, Some(TOKEN_A)).await;
    list.assert_cache_because("miss", "refetched after PATCH");
    assert!(
        list.json()
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == VAPI_ID && i["name"] == "Patched name")
    );

    // DELETE: the number leaves the list.
    let deleted = get_with(&proxy, Method::DELETE, &path(VAPI_ID), Some(TOKEN_A), &[]).await;
    assert_eq!(deleted.status, StatusCode::OK);
    let page = get(&proxy, v2, Some(TOKEN_A)).await;
    page.assert_cache_because("miss", "refetched after DELETE");
    let body = page.json();
    assert_eq!(body["metadata"]["totalItems"], 5);
    assert!(
        !body["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == VAPI_ID)
    );
}

#[tokio::test]
async fn delete_returns_the_redacted_object_and_the_next_get_is_a_404() {
    let (mock, proxy) = setup("").await;
    let one = path(TWILIO_ID);
    assert_eq!(
        get(&proxy, &one, Some(TOKEN_A)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&proxy, &one, Some(TOKEN_B)).await.status,
        StatusCode::OK
    );

    let deleted = get_with(&proxy, Method::DELETE, &one, Some(TOKEN_A), &[]).await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text());
    deleted.assert_cache("bypass");
    assert_no_planted(&deleted, "DELETE answer");
    let body = deleted.json();
    assert_eq!(body["id"], TWILIO_ID);
    assert_element_redacted(&body, "DELETE answer", true);
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.method, Method::DELETE);
    assert_eq!(seen.path_and_query, one);
    assert!(seen.body.is_empty());
    assert!(mock.object(TWILIO_ID).is_none(), "deleted upstream");

    for token in [TOKEN_A, TOKEN_B] {
        let gone = get(&proxy, &one, Some(token)).await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.text());
        gone.assert_cache("miss");
        assert_eq!(
            gone.json(),
            serde_json::from_str::<Value>(NOT_FOUND_BODY).unwrap()
        );
    }
    assert_eq!(upstream_count(&mock, Method::GET, &one), 4);

    // Deleting again relays the upstream's 404.
    let twice = get_with(&proxy, Method::DELETE, &one, Some(TOKEN_A), &[]).await;
    assert_eq!(twice.status, StatusCode::NOT_FOUND);
    twice.assert_cache("bypass");
    assert_eq!(
        twice.json(),
        serde_json::from_str::<Value>(NOT_FOUND_BODY).unwrap()
    );
}

#[tokio::test]
async fn patching_an_unknown_id_relays_the_upstream_404() {
    let (mock, proxy) = setup("").await;
    let resp = write(
        &proxy,
        Method::PATCH,
        &path(UNKNOWN_ID),
        TOKEN_A,
        r#"{"name":"nobody"}"#,
    )
    .await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    resp.assert_cache("bypass");
    assert_eq!(
        resp.json(),
        serde_json::from_str::<Value>(NOT_FOUND_BODY).unwrap()
    );
    assert_eq!(mock.hits(), 1);
    assert_eq!(mock.last_request().unwrap().method, Method::PATCH);

    // Never cached: a second PATCH goes upstream again.
    let again = write(
        &proxy,
        Method::PATCH,
        &path(UNKNOWN_ID),
        TOKEN_A,
        r#"{"name":"nobody"}"#,
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn write_bodies_must_be_json_objects_sent_as_application_json() {
    let (mock, proxy) = setup("").await;
    let targets = [
        (Method::POST, "/phone-number".to_owned()),
        (Method::PATCH, path(TWILIO_ID)),
    ];
    for (method, target) in &targets {
        // Content types other than application/json.
        for ct in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("application/jsonp"),
            Some("multipart/form-data; boundary=x"),
        ] {
            let what = format!("{method} {target} content-type {ct:?}");
            let resp = send_body(
                &proxy,
                method.clone(),
                target,
                TOKEN_A,
                ct,
                r#"{"name":"x"}"#,
            )
            .await;
            let message = assert_json_error(&resp, 400, &what);
            assert!(
                message.to_ascii_lowercase().contains("content-type"),
                "{what}: {message}"
            );
        }
        // Bodies that are not one JSON object.
        for body in [
            "", "not json", "[1, 2]", "\"name\"", "null", "42", "{\"a\":1", "{} {}",
        ] {
            let what = format!("{method} {target} body {body:?}");
            let resp = write(&proxy, method.clone(), target, TOKEN_A, body).await;
            assert_json_error(&resp, 400, &what);
        }
    }
    assert_eq!(mock.hits(), 0, "the upstream never heard of them");

    // The content type may carry parameters and any case.
    for ct in ["application/json; charset=utf-8", "Application/JSON"] {
        let resp = send_body(
            &proxy,
            Method::PATCH,
            &path(TWILIO_ID),
            TOKEN_A,
            Some(ct),
            r#"{"name":"ok"}"#,
        )
        .await;
        assert_eq!(resp.status, StatusCode::OK, "{ct}: {}", resp.text());
    }
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn delete_with_a_body_is_refused() {
    let (mock, proxy) = setup("").await;
    let resp = send_body(
        &proxy,
        Method::DELETE,
        &path(TWILIO_ID),
        TOKEN_A,
        Some("application/json"),
        r#"{"force":true}"#,
    )
    .await;
    assert_json_error(&resp, 400, "DELETE with a body");
    assert_eq!(mock.hits(), 0);
    assert!(mock.object(TWILIO_ID).is_some(), "nothing was deleted");
}

#[tokio::test]
async fn write_bodies_over_max_request_body_bytes_get_413() {
    let (mock, proxy) = setup("[server]\nmax_request_body_bytes = 1024\n").await;
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(2000));
    for (method, target) in [
        (Method::POST, "/phone-number".to_owned()),
        (Method::PATCH, path(TWILIO_ID)),
    ] {
        let resp = write(&proxy, method.clone(), &target, TOKEN_A, &big).await;
        assert_json_error(&resp, 413, &format!("{method} {target}"));
    }
    assert_eq!(mock.hits(), 0);

    // Just under the cap is fine.
    let fits = format!(r#"{{"name":"{}"}}"#, "y".repeat(1000));
    assert!(fits.len() <= 1024);
    let resp = write(&proxy, Method::PATCH, &path(TWILIO_ID), TOKEN_A, &fits).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(mock.last_request().unwrap().body, Bytes::from(fits));
}

#[tokio::test]
async fn bodies_repeating_a_key_are_refused_naming_it() {
    let (mock, proxy) = setup("").await;
    for (body, key) in [
        (
            r#"{"twilioAuthToken":"[REDACTED]","twilioAuthToken":"real-secret"}"#,
            "twilioAuthToken",
        ),
        (
            r#"{"server":{"url":"https://a.example","url":"https://b.example"}}"#,
            "url",
        ),
        (r#"{"hooks":[{"on":"x","on":"y"}]}"#, "on"),
    ] {
        for (method, target) in [
            (Method::POST, "/phone-number".to_owned()),
            (Method::PATCH, path(TWILIO_ID)),
        ] {
            let what = format!("{method} {body}");
            let resp = write(&proxy, method, &target, TOKEN_A, body).await;
            let message = assert_json_error(&resp, 400, &what);
            assert!(message.contains(&format!("\"{key}\"")), "{what}: {message}");
        }
    }
    assert_eq!(mock.hits(), 0, "nothing was forwarded");
}

#[tokio::test]
async fn bodies_carrying_the_placeholder_are_refused_with_an_explanation() {
    let (mock, proxy) = setup("").await;
    let bodies = [
        r#"{"twilioAuthToken":"[REDACTED]"}"#,
        r#"{"name":"ok","server":{"headers":{"Authorization":"[REDACTED]"}}}"#,
        r#"{"server":{"url":"https://u:[REDACTED]@h.example/x"}}"#,
        r#"{"serverUrl":"https://hooks.example.com/x?token=[REDACTED]&region=us"}"#,
        r#"{"statusWebhookUrl":"https://hooks.example.com/x?token=%5BREDACTED%5D"}"#,
        r#"{"fallbackDestination":{"sipUri":"sip:bob:[REDACTED]@pbx.example.com"}}"#,
        r#"{"hooks":[{"do":[{"destination":{"sipHeaders":{"X-Token":"[REDACTED]"}}}]}]}"#,
        r#"{"provider":"twilio","authentication":{"password":"[REDACTED]"}}"#,
    ];
    for body in bodies {
        for (method, target) in [
            (Method::POST, "/phone-number".to_owned()),
            (Method::PATCH, path(TWILIO_ID)),
        ] {
            let what = format!("{method} {body}");
            let resp = write(&proxy, method, &target, TOKEN_A, body).await;
            let message = assert_json_error(&resp, 400, &what);
            assert!(
                message.contains("REDACTED") && message.contains("placeholder"),
                "{what}: the message should explain the placeholder: {message}"
            );
        }
    }
    assert_eq!(mock.hits(), 0, "the upstream never heard of them");

    // Round trip: a redacted lookup PATCHed back as is (Vonage: private key, secrets and
    // signed URLs masked) is refused too.
    let fetched = get(&proxy, &path(VONAGE_ID), Some(TOKEN_A)).await;
    assert_eq!(fetched.status, StatusCode::OK);
    let resp = write(
        &proxy,
        Method::PATCH,
        &path(VONAGE_ID),
        TOKEN_A,
        &fetched.text(),
    )
    .await;
    assert_json_error(&resp, 400, "PATCH of a redacted object");
    assert_eq!(mock.hits(), 1, "only the GET");

    // Text that merely resembles the placeholder is not refused.
    let resp = write(
        &proxy,
        Method::PATCH,
        &path(TWILIO_ID),
        TOKEN_A,
        r#"{"name":"[redacted] line"}"#,
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
}

// ---- a write racing a lookup already in flight ----

#[tokio::test]
async fn a_lookup_issued_after_a_patch_succeeded_sees_the_patch() {
    let upstream = crate::support::slow_read::start(Duration::from_millis(700)).await;
    let proxy = Proxy::start(&format!("http://{}", upstream.addr), "").await;
    let lookup = || send(get_request(&proxy, &path(TWILIO_ID), Some(TOKEN_A)));

    // A lookup is in flight (the upstream has read the old name and is still answering)...
    let before = tokio::spawn(lookup());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.gets.load(Ordering::SeqCst), 1);

    // ...when a PATCH succeeds.
    let patched = write(
        &proxy,
        Method::PATCH,
        &path(TWILIO_ID),
        TOKEN_A,
        r#"{"name":"New name"}"#,
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text());
    assert_eq!(patched.json()["name"], "New name");

    // A lookup issued after the PATCH's success must see it: it may not be answered by the
    // fetch that began before the write.
    let after = lookup().await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(
        after.json()["name"],
        "New name",
        "read-your-writes: a GET sent after the PATCH returned 200 got the pre-PATCH object \
         (x-cache: {:?})",
        after.cache()
    );

    // The old answer may reach the lookup that began before the write, but is never cached.
    let old = before.await.unwrap();
    assert_eq!(old.status, StatusCode::OK);
    let later = lookup().await;
    assert_eq!(later.json()["name"], "New name");
}

#[tokio::test]
async fn a_write_whose_answer_cannot_be_relayed_still_invalidates() {
    // The PATCH may have landed even though its 2xx body is unusable: the cached entry must go.
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;
    get_and_assert_cache(&proxy, &path(TWILIO_ID), Some(TOKEN_A), "miss").await;
    get_and_assert_cache(&proxy, &path(TWILIO_ID), Some(TOKEN_A), "hit").await;
    mock.set_behavior(Behavior::Garbage);
    let body = r#"{"name":"Renamed"}"#;
    let patch = write(&proxy, Method::PATCH, &path(TWILIO_ID), TOKEN_A, body).await;
    assert_eq!(patch.status, StatusCode::BAD_GATEWAY);
    mock.set_behavior(Behavior::Normal);
    let after = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    after.assert_cache_because("miss", "the old entry was dropped");
}

#[tokio::test]
async fn a_reload_that_shortens_the_ttl_applies_to_entries_already_cached() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "[cache]\nttl_secs = 3600\n").await;
    get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    get_and_assert_cache(&proxy, &path(TWILIO_ID), Some(TOKEN_A), "hit").await;
    let mut config = proxy.state.running_config();
    config.live.freshness.ttl = std::time::Duration::ZERO;
    phonegate::reload::apply(&proxy.state, config).expect("reload");
    let after = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_ne!(
        after.cache(),
        Some("hit"),
        "ttl 0 now, the 3600 s entry is not fresh"
    );
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn a_declared_body_over_the_cap_is_refused_at_once_without_100_continue() {
    let (mock, proxy) = setup("[server]\nmax_request_body_bytes = 1024\n").await;
    for expect in ["Expect: 100-continue\r\n", ""] {
        let head = format!(
            "PATCH {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\n\
             Content-Type: application/json\r\nContent-Length: 10000000\r\n{expect}\r\n",
            path(TWILIO_ID)
        );
        // No body follows: the answer must not wait for one.
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut got = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut got))
            .await
            .expect("answered without waiting for the body")
            .unwrap();
        let text = String::from_utf8_lossy(&got[..n]);
        assert!(text.starts_with("HTTP/1.1 413"), "{expect:?}: {text}");
        assert!(!text.contains("100 Continue"), "{text}");
    }
    assert_eq!(mock.hits(), 0);
}

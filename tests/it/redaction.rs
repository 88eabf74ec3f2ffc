//! Redaction end to end: no planted secret of any fixture reaches a client (GET miss, GET hit,
//! HEAD, both redaction modes, relayed error bodies), configured extra/allowed names apply, and
//! the cache only ever holds redacted bytes.

use std::time::Instant;

use crate::support::mock_vapi::{
    BYO_ID, FIXTURE_IDS, KEPT_POINTERS, PLANTED, SECRET_POINTERS, SECRET_URL_POINTERS, TWILIO_ID,
    provider_kept_pointers, provider_secret_pointers,
};
use crate::support::{
    Behavior, MockVapi, Proxy, Resp, TOKEN_A, assert_headers_clean, assert_no_planted,
    contains_planted, get, get_with, path,
};
use http::{Method, StatusCode};
use serde_json::Value;

const REDACTED: &str = "[REDACTED]";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Mask,
    Remove,
}

/// `(scheme, host[:port], path)` of an absolute URL, userinfo, query and fragment dropped.
fn url_parts(url: &str) -> (String, String, String) {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("not an absolute URL: {url}"));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let after = &rest[end..];
    let path_end = after.find(['?', '#']).unwrap_or(after.len());
    (
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase(),
        after[..path_end].to_owned(),
    )
}

/// Checks one proxied answer for `provider` against its fixture.
fn assert_redacted(resp: &Resp, provider: &str, mode: Mode, what: &str) {
    assert_eq!(resp.status, StatusCode::OK, "{what}: {}", resp.text());
    assert_no_planted(resp, what);
    resp.assert_json_headers(what);

    let fixture = MockVapi::fixture(provider);
    let body = resp.json();
    let secrets = SECRET_POINTERS
        .iter()
        .chain(provider_secret_pointers(provider));
    for pointer in secrets {
        let original = fixture.pointer(pointer);
        assert!(
            original
                .and_then(Value::as_str)
                .is_some_and(|s| s.contains(PLANTED)),
            "fixture {provider} has no planted secret at {pointer}"
        );
        match mode {
            Mode::Mask => assert_eq!(
                body.pointer(pointer),
                Some(&Value::String(REDACTED.into())),
                "{what}: {pointer} is not masked"
            ),
            Mode::Remove => assert!(
                body.pointer(pointer).is_none_or(Value::is_null),
                "{what}: {pointer} was not removed: {:?}",
                body.pointer(pointer)
            ),
        }
    }
    for pointer in SECRET_URL_POINTERS {
        let original = fixture
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("fixture {provider} has no URL at {pointer}"));
        assert!(
            original.contains(PLANTED),
            "fixture URL {pointer} has no secret"
        );
        let got = body
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{what}: URL {pointer} is missing"));
        assert!(!got.contains(PLANTED), "{what}: {pointer} leaks: {got}");
        assert_eq!(
            url_parts(got),
            url_parts(original),
            "{what}: {pointer} lost its scheme/host/path: {got}"
        );
        if mode == Mode::Mask {
            assert!(
                got.contains(REDACTED),
                "{what}: {pointer} not masked: {got}"
            );
        }
    }
    let kept = KEPT_POINTERS.iter().chain(provider_kept_pointers(provider));
    for pointer in kept {
        let original = fixture
            .pointer(pointer)
            .unwrap_or_else(|| panic!("fixture {provider} has nothing at {pointer}"));
        assert_eq!(
            body.pointer(pointer),
            Some(original),
            "{what}: kept value {pointer} changed"
        );
    }
}

/// A miss and then a hit for every fixture, both checked.
async fn check_every_fixture(extra: &str, mode: Mode) {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), extra).await;
    for (provider, id) in FIXTURE_IDS {
        let miss = get(&proxy, &path(id), Some(TOKEN_A)).await;
        miss.assert_cache_because("miss", provider);
        assert_redacted(&miss, provider, mode, &format!("{provider} miss"));

        let hit = get(&proxy, &path(id), Some(TOKEN_A)).await;
        hit.assert_cache_because("hit", provider);
        assert_redacted(&hit, provider, mode, &format!("{provider} hit"));
        assert_eq!(
            hit.body, miss.body,
            "{provider}: the hit serves the miss's bytes"
        );
        assert_eq!(mock.hits_for(&path(id)), 1, "{provider}");
    }
}

#[tokio::test]
async fn every_fixture_is_masked_on_miss_and_hit() {
    check_every_fixture("", Mode::Mask).await;
}

#[tokio::test]
async fn every_fixture_is_masked_with_mode_set_explicitly() {
    check_every_fixture("[redact]\nmode = \"mask\"\n", Mode::Mask).await;
}

#[tokio::test]
async fn remove_mode_drops_every_secret_key() {
    check_every_fixture("[redact]\nmode = \"remove\"\n", Mode::Remove).await;
}

#[tokio::test]
async fn remove_mode_leaves_no_placeholder_behind() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "[redact]\nmode = \"remove\"\n").await;
    for (provider, id) in FIXTURE_IDS {
        let resp = get(&proxy, &path(id), Some(TOKEN_A)).await;
        assert_eq!(resp.status, StatusCode::OK);
        assert!(
            !resp.text().contains(REDACTED),
            "{provider}: remove mode must not mask: {}",
            resp.text()
        );
        let body = resp.json();
        // Header objects stay (their names say nothing), emptied of every value.
        assert_eq!(
            body["server"]["headers"],
            serde_json::json!({}),
            "{provider}"
        );
    }
}

#[tokio::test]
async fn head_answers_leak_nothing() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;
    for (provider, id) in FIXTURE_IDS {
        // HEAD first (a miss), then again (a hit), then GET to compare lengths.
        for expect in ["miss", "hit"] {
            let head = get_with(&proxy, Method::HEAD, &path(id), Some(TOKEN_A), &[]).await;
            assert_eq!(head.status, StatusCode::OK, "{provider}");
            head.assert_cache_because(expect, provider);
            assert!(head.body.is_empty(), "{provider}: HEAD has a body");
            assert_headers_clean(&head, &format!("{provider} HEAD {expect}"));
        }
        let head = get_with(&proxy, Method::HEAD, &path(id), Some(TOKEN_A), &[]).await;
        let full = get(&proxy, &path(id), Some(TOKEN_A)).await;
        assert_redacted(
            &full,
            provider,
            Mode::Mask,
            &format!("{provider} GET after HEAD"),
        );
        let len: usize = head
            .header("content-length")
            .expect("HEAD carries content-length")
            .parse()
            .unwrap();
        assert_eq!(
            len,
            full.body.len(),
            "{provider}: HEAD length is the redacted length"
        );
        assert_eq!(mock.hits_for(&path(id)), 1, "{provider}");
    }
}

#[tokio::test]
async fn extra_fields_redact_a_harmless_field() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "[redact]\nextra_fields = [\"number\"]\n").await;
    for (provider, id) in FIXTURE_IDS {
        let resp = get(&proxy, &path(id), Some(TOKEN_A)).await;
        assert_eq!(resp.status, StatusCode::OK, "{provider}");
        assert!(!contains_planted(&resp.body), "{provider}: {}", resp.text());
        let body = resp.json();
        let fixture = MockVapi::fixture(provider);
        assert!(
            fixture["number"].is_string(),
            "{provider} fixture has a number"
        );
        assert_eq!(body["number"], REDACTED, "{provider}: number not redacted");
        // Exact names only: neighbours are untouched.
        assert_eq!(body["name"], fixture["name"], "{provider}");
        assert_eq!(body["id"], fixture["id"], "{provider}");
        // The built-in rules still apply.
        for pointer in SECRET_POINTERS {
            assert_eq!(
                body.pointer(pointer),
                Some(&Value::from(REDACTED)),
                "{provider} {pointer}"
            );
        }
    }
}

#[tokio::test]
async fn allow_fields_exempt_name_rule_matches_but_never_built_in_secrets() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        "[redact]\nallow_fields = [\"carrierPassword\", \"webhookPrivateKey\", \"twilioAuthToken\", \"secret\"]\n",
    )
    .await;

    // byo's `carrierPassword` is caught by the "password" substring rule unless allowed.
    let byo = get(&proxy, &path(BYO_ID), Some(TOKEN_A)).await;
    assert_eq!(byo.status, StatusCode::OK);
    let body = byo.json();
    let fixture = MockVapi::fixture("byo-phone-number");
    assert_eq!(
        body["carrierPassword"], fixture["carrierPassword"],
        "allow-listed name kept"
    );
    // Allowing one name does not allow similar ones.
    assert_eq!(body["someNewApiKey"], REDACTED);
    // The always-secret `secret` cannot be allow-listed.
    assert_eq!(body["server"]["secret"], REDACTED);

    // twilio's `webhookPrivateKey` is a name-rule match; `twilioAuthToken` is built in.
    let twilio = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(twilio.status, StatusCode::OK);
    let body = twilio.json();
    let fixture = MockVapi::fixture("twilio");
    assert_eq!(body["webhookPrivateKey"], fixture["webhookPrivateKey"]);
    assert_eq!(
        body["twilioAuthToken"], REDACTED,
        "built-in secrets ignore allow_fields"
    );
    assert_eq!(body["twilioApiKey"], REDACTED);
    assert_eq!(body["twilioApiSecret"], REDACTED);
    assert_eq!(body["serverUrlSecret"], REDACTED);
    for pointer in SECRET_POINTERS {
        assert_eq!(
            body.pointer(pointer),
            Some(&Value::from(REDACTED)),
            "{pointer}"
        );
    }
    for pointer in SECRET_URL_POINTERS {
        let url = body.pointer(pointer).and_then(Value::as_str).unwrap();
        assert!(!url.contains(PLANTED), "{pointer}: {url}");
    }

    // Without the allow-list, the same two fields are redacted.
    let plain = Proxy::start(&mock.url(), "").await;
    let byo = get(&plain, &path(BYO_ID), Some(TOKEN_A)).await.json();
    assert_eq!(byo["carrierPassword"], REDACTED);
    let twilio = get(&plain, &path(TWILIO_ID), Some(TOKEN_A)).await.json();
    assert_eq!(twilio["webhookPrivateKey"], REDACTED);
}

#[tokio::test]
async fn an_upstream_error_body_echoing_a_secret_is_redacted() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Raw {
            status: 400,
            headers: vec![("content-type".into(), "application/json".into())],
            body: r#"{"message":["twilioAuthToken PLANTED-echo is invalid"],"error":"Bad Request","statusCode":400,"twilioAuthToken":"PLANTED-x"}"#.into(),
        })
        .start()
        .await;
    let proxy = Proxy::start(&mock.url(), "").await;
    for round in 1..=2 {
        let resp = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
        assert_eq!(resp.header("content-type"), Some("application/json"));
        resp.assert_cache_because("miss", "a 400 is never cached");
        assert_headers_clean(&resp, "400");
        let body = resp.json();
        assert_eq!(body["twilioAuthToken"], REDACTED);
        assert_eq!(body["statusCode"], 400);
        assert_eq!(body["error"], "Bad Request");
        assert!(!resp.text().contains("PLANTED-x"), "{}", resp.text());
        // NB: the secret echoed inside the free-text `message` is not redacted by the current
        // policy (names and URLs only), so the message is deliberately not asserted on.
        assert_eq!(mock.hits(), round);
    }
}

#[tokio::test]
async fn the_cache_holds_only_redacted_bytes() {
    for (extra, mode) in [
        ("", Mode::Mask),
        ("[redact]\nmode = \"remove\"\n", Mode::Remove),
    ] {
        let mock = MockVapi::start().await;
        let proxy = Proxy::start(&mock.url(), extra).await;
        let state = &proxy.state;
        for (provider, id) in FIXTURE_IDS {
            let key = proxy.cache_key(id, TOKEN_A);
            assert!(
                state
                    .store
                    .lookup(&key, state.live().policy_generation)
                    .is_none(),
                "{provider}: empty at start"
            );
            let resp = get(&proxy, &path(id), Some(TOKEN_A)).await;
            assert_redacted(&resp, provider, mode, &format!("{provider} {mode:?}"));
            let entry = state
                .store
                .lookup(&key, state.live().policy_generation)
                .filter(|e| e.is_fresh(Instant::now()))
                .unwrap_or_else(|| panic!("{provider}: the 200 was cached"));
            assert_eq!(entry.status, StatusCode::OK);
            assert!(
                !contains_planted(&entry.body),
                "{provider}: the cache holds a secret: {}",
                String::from_utf8_lossy(&entry.body)
            );
            assert_eq!(
                entry.body, resp.body,
                "{provider}: cached bytes are the sent bytes"
            );
            if let Some(etag) = &entry.etag {
                assert!(!contains_planted(etag.as_bytes()));
            }
        }
    }
}

#[tokio::test]
async fn the_callers_own_key_never_comes_back_in_a_relayed_body() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        "[cache]\nstale_while_revalidate_secs = 0\nstale_if_error_secs = 0\n\
         auth_failure_ttl_secs = 0\n",
    )
    .await;
    let json = || vec![("content-type".to_owned(), "application/json".to_owned())];
    let plus_key = "abc+def/ghi-0123==";
    let cases = [
        (
            TOKEN_A,
            400,
            r#"{"message":"bad Authorization: Bearer test-key-alice-0001","statusCode":400}"#,
        ),
        // A JSON-escaped spelling of the same key.
        (
            TOKEN_A,
            401,
            r#"{"message":["Invalid Key test\u002dkey\u002dalice\u002d0001"],"statusCode":401}"#,
        ),
        (
            TOKEN_A,
            404,
            r#"{"message":"nothing for test-key-alice-0001","test-key-alice-0001":true}"#,
        ),
        // Percent-encoded, as inside a URL an upstream built from the request.
        (
            plus_key,
            400,
            r#"{"message":"see https://x.example/debug?k=abc%2Bdef%2Fghi%2D0123%3D%3D","statusCode":400}"#,
        ),
    ];
    for (i, (token, status, body)) in cases.into_iter().enumerate() {
        mock.set_behavior(Behavior::Raw {
            status,
            headers: json(),
            body: body.into(),
        });
        let id = format!("20000000-0000-4000-8000-00000000000{i}");
        let resp = get(&proxy, &path(&id), Some(token)).await;
        assert_eq!(resp.status.as_u16(), status, "{}", resp.text());
        let text = resp.text();
        assert!(!text.contains(token), "case {i}: the key came back: {text}");
        assert!(
            !text.contains("alice"),
            "case {i}: part of the key came back: {text}"
        );
        assert!(
            !text.contains("ghi"),
            "case {i}: part of the key came back: {text}"
        );
        assert!(text.contains("[REDACTED]"), "case {i}: {text}");
    }
}

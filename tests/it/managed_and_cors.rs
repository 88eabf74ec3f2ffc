//! Managed-credentials mode (phonegate's own upstream key, hashed client tokens, read/write
//! scopes, one shared cache, per-client limits, the key never relayed) and CORS for browsers.

use crate::support::mock_vapi::{TWILIO_ID, VAPI_ID, VONAGE_ID};
use crate::support::{
    Behavior, ManagedClient, MockVapi, Proxy, Resp, TOKEN_A, assert_json_error, cors_toml, get,
    get_with, managed_toml, path, request, send, write,
};
use bytes::Bytes;
use http::{Method, StatusCode};
use phonegate::auth::token_sha256_hex;
use phonegate::config::{Config, ConfigError};

/// phonegate's own upstream key in managed mode.
const UPSTREAM_KEY: &str = "sk-upstream-SECRET-123";
/// A client with the `read` scope.
const READER: &str = "reader-token-0001";
/// A client with the `read` and `write` scopes.
const WRITER: &str = "writer-token-0002";

const ORIGIN: &str = "https://app.example.com";

/// A mock that only accepts phonegate's upstream key (a leaked client token would get a 401),
/// and a managed proxy in front of it with a reader and a writer client and `extra` settings.
async fn managed(extra: &str) -> (MockVapi, Proxy) {
    let mock = MockVapi::builder()
        .valid_tokens([UPSTREAM_KEY])
        .start()
        .await;
    let clients = [
        ManagedClient {
            name: "reader",
            token: READER,
            scopes: &["read"],
        },
        ManagedClient {
            name: "writer",
            token: WRITER,
            scopes: &["read", "write"],
        },
    ];
    let settings = managed_toml(UPSTREAM_KEY, &clients) + extra;
    let proxy = Proxy::start(&mock.url(), &settings).await;
    (mock, proxy)
}

/// Asserts the upstream key appears nowhere in the answer, body or headers.
fn assert_no_upstream_key(resp: &Resp, what: &str) {
    assert!(
        !resp.text().contains(UPSTREAM_KEY),
        "{what}: the body leaks the upstream key: {}",
        resp.text()
    );
    for (name, value) in &resp.headers {
        assert!(
            !String::from_utf8_lossy(value.as_bytes()).contains(UPSTREAM_KEY),
            "{what}: header {name} leaks the upstream key: {value:?}"
        );
    }
}

/// The `Authorization` the upstream saw last, asserting no client token came along anywhere.
fn upstream_authorization(mock: &MockVapi) -> String {
    let seen = mock.last_request().expect("the upstream saw a request");
    for (name, value) in &seen.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        assert!(
            !value.contains(READER) && !value.contains(WRITER),
            "a client token reached the upstream in {name}: {value}"
        );
    }
    seen.headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .expect("an Authorization header upstream")
        .to_owned()
}

/// A CORS preflight of `method` on `target` from `origin`, asking to send `Authorization`.
async fn preflight(
    proxy: &Proxy,
    target: &str,
    token: Option<&str>,
    origin: &str,
    method: &str,
) -> Resp {
    let headers = [
        ("origin", origin),
        ("access-control-request-method", method),
        ("access-control-request-headers", "authorization"),
    ];
    get_with(proxy, Method::OPTIONS, target, token, &headers).await
}

/// Every value of header `name`, joined, lowercased.
fn all_values(resp: &Resp, name: &str) -> String {
    resp.headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ")
        .to_ascii_lowercase()
}

fn assert_no_cors_headers(resp: &Resp, what: &str) {
    for (name, _) in &resp.headers {
        assert!(
            !name.as_str().starts_with("access-control-"),
            "{what}: unexpected CORS header {name}"
        );
    }
}

// ---- managed mode ----

#[tokio::test]
async fn managed_mode_sends_its_own_key_upstream_never_the_clients_token() {
    let (mock, proxy) = managed("").await;
    let expected = format!("Bearer {UPSTREAM_KEY}");

    let read = get(&proxy, &path(TWILIO_ID), Some(READER)).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text());
    assert_eq!(read.json()["id"], TWILIO_ID);
    assert_eq!(upstream_authorization(&mock), expected);
    assert_no_upstream_key(&read, "GET");

    let list = get(&proxy, "/v2/phone-number?limit=2", Some(READER)).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text());
    assert_eq!(upstream_authorization(&mock), expected);
    assert_no_upstream_key(&list, "list");

    let patch = write(
        &proxy,
        Method::PATCH,
        &path(VAPI_ID),
        WRITER,
        r#"{"name":"Managed rename"}"#,
    )
    .await;
    assert_eq!(patch.status, StatusCode::OK, "{}", patch.text());
    assert_eq!(upstream_authorization(&mock), expected);
    assert_no_upstream_key(&patch, "PATCH");
    assert_eq!(mock.hits(), 3);
}

#[tokio::test]
async fn unknown_and_missing_tokens_get_401_without_an_upstream_call() {
    let (mock, proxy) = managed("").await;
    // A passthrough-style Vapi key, a near miss, and even the upstream key itself: none of them
    // is a client token.
    for token in [TOKEN_A, "reader-token-0002", UPSTREAM_KEY, "invalid-key"] {
        let resp = get(&proxy, &path(TWILIO_ID), Some(token)).await;
        assert_json_error(&resp, 401, token);
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
        assert_no_upstream_key(&resp, token);
        let resp = write(&proxy, Method::PATCH, &path(TWILIO_ID), token, "{}").await;
        assert_json_error(&resp, 401, token);
    }
    let none = get(&proxy, &path(TWILIO_ID), None).await;
    assert_json_error(&none, 401, "no Authorization");
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let basic = get_with(
        &proxy,
        Method::GET,
        &path(TWILIO_ID),
        None,
        &[("authorization", "Basic cmVhZGVyOnRva2Vu")],
    )
    .await;
    assert_json_error(&basic, 401, "Basic");
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn read_clients_cannot_write_and_write_clients_can() {
    let (mock, proxy) = managed("").await;
    let before = mock.object(TWILIO_ID).unwrap();
    let attempts = [
        (
            Method::POST,
            "/phone-number".to_owned(),
            r#"{"provider":"vapi"}"#,
        ),
        (Method::PATCH, path(TWILIO_ID), r#"{"name":"nope"}"#),
        (Method::DELETE, path(TWILIO_ID), ""),
    ];
    for (method, target, body) in &attempts {
        let what = format!("reader {method} {target}");
        let resp = if body.is_empty() {
            get_with(&proxy, method.clone(), target, Some(READER), &[]).await
        } else {
            write(&proxy, method.clone(), target, READER, body).await
        };
        assert_json_error(&resp, 403, &what);
        assert!(
            resp.json()["message"]
                .as_str()
                .unwrap()
                .to_ascii_lowercase()
                .contains("write"),
            "{what}: the message names the missing scope: {}",
            resp.text()
        );
    }
    assert_eq!(mock.hits(), 0, "no refused write reached the upstream");
    assert_eq!(mock.object(TWILIO_ID).unwrap(), before);

    let body = "{\"name\":  \"Written by the writer\"}";
    let patched = write(&proxy, Method::PATCH, &path(TWILIO_ID), WRITER, body).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text());
    patched.assert_cache("bypass");
    assert_eq!(patched.json()["name"], "Written by the writer");
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(seen.body, Bytes::from(body));
    assert_eq!(
        mock.object(TWILIO_ID).unwrap()["name"],
        "Written by the writer"
    );

    let created = write(
        &proxy,
        Method::POST,
        "/phone-number",
        WRITER,
        r#"{"provider":"vapi","name":"New"}"#,
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let deleted = get_with(&proxy, Method::DELETE, &path(VONAGE_ID), Some(WRITER), &[]).await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text());
    assert!(!deleted.text().contains("PLANTED"));
}

#[tokio::test]
async fn managed_clients_share_cache_entries() {
    let (mock, proxy) = managed("").await;
    let r = get(&proxy, &path(TWILIO_ID), Some(READER)).await;
    r.assert_cache("miss");
    let w = get(&proxy, &path(TWILIO_ID), Some(WRITER)).await;
    assert_eq!(w.status, StatusCode::OK);
    w.assert_cache_because("hit", "one org, one cache");
    assert_eq!(w.body, r.body);

    let list_r = get(&proxy, "/phone-number?limit=3", Some(READER)).await;
    list_r.assert_cache("miss");
    let list_w = get(&proxy, "/phone-number?limit=3", Some(WRITER)).await;
    list_w.assert_cache("hit");
    assert_eq!(mock.hits(), 2);

    // The writer's PATCH drops the shared entries: the reader sees the change at once.
    let patched = write(
        &proxy,
        Method::PATCH,
        &path(TWILIO_ID),
        WRITER,
        r#"{"name":"Shared rename"}"#,
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK);
    let r = get(&proxy, &path(TWILIO_ID), Some(READER)).await;
    r.assert_cache("miss");
    assert_eq!(r.json()["name"], "Shared rename");
    let list_r = get(&proxy, "/phone-number?limit=3", Some(READER)).await;
    list_r.assert_cache("miss");
    assert!(
        list_r
            .json()
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "Shared rename")
    );
}

#[tokio::test]
async fn rate_limits_stay_per_client() {
    let (mock, proxy) = managed(
        "[limits]\nmisses_per_sec_per_key = 1\nmiss_burst = 1\n\
         [cache]\nstale_while_revalidate_secs = 0\nstale_if_error_secs = 0\n",
    )
    .await;
    let first = get(&proxy, &path(TWILIO_ID), Some(READER)).await;
    assert_eq!(first.status, StatusCode::OK);
    first.assert_cache("miss");

    // The reader's budget is spent: its next miss is refused before the upstream.
    let refused = get(&proxy, &path(VAPI_ID), Some(READER)).await;
    assert_json_error(&refused, 429, "reader over budget");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(mock.hits(), 1);

    // The writer has a budget of its own.
    let other = get(&proxy, &path(VAPI_ID), Some(WRITER)).await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.text());
    other.assert_cache("miss");
    assert_eq!(mock.hits(), 2);

    // Hits cost no budget: the reader can read what the writer fetched.
    let hit = get(&proxy, &path(VAPI_ID), Some(READER)).await;
    assert_eq!(hit.status, StatusCode::OK);
    hit.assert_cache("hit");
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn the_upstream_key_never_reaches_a_client_even_when_the_upstream_echoes_it() {
    // Each case must reach the upstream, so a 401 is not answered from memory afterwards.
    let (mock, proxy) = managed(
        "[limits]\nmisses_per_sec_per_key = 0\n\
         [cache]\nstale_while_revalidate_secs = 0\nstale_if_error_secs = 0\n\
         auth_failure_ttl_secs = 0\n\
         [upstream.breaker]\nfailures = 100\n",
    )
    .await;
    let json = || vec![("content-type".to_owned(), "application/json".to_owned())];
    let cases: Vec<(u16, Behavior)> = vec![
        (
            400,
            Behavior::Raw {
                status: 400,
                headers: json(),
                body: r#"{"message":"bad request from Bearer sk-upstream-SECRET-123","statusCode":400,"error":"Bad Request"}"#.into(),
            },
        ),
        (
            401,
            Behavior::Raw {
                status: 401,
                headers: json(),
                body: r#"{"message":["Invalid Key sk-upstream-SECRET-123"],"statusCode":401,"error":"Unauthorized"}"#.into(),
            },
        ),
        (
            404,
            Behavior::Raw {
                status: 404,
                headers: json(),
                body: r#"{"message":"not found for sk-upstream-SECRET-123","statusCode":404,"error":"Not Found"}"#.into(),
            },
        ),
        (
            500,
            Behavior::Raw {
                status: 500,
                headers: json(),
                body: r#"{"statusCode":500,"debug":{"request":{"auth":"sk-upstream-SECRET-123","note":"key=sk-upstream-SECRET-123;"},"sk-upstream-SECRET-123":true}}"#.into(),
            },
        ),
        (
            502,
            Behavior::Raw {
                status: 502,
                headers: vec![("content-type".into(), "text/html".into())],
                body: "<html>upstream got Authorization: Bearer sk-upstream-SECRET-123</html>"
                    .into(),
            },
        ),
        (
            200,
            Behavior::Raw {
                status: 200,
                headers: json(),
                body: format!(
                    r#"{{"id":"{TWILIO_ID}","provider":"twilio","description":"called with sk-upstream-SECRET-123"}}"#
                )
                .into(),
            },
        ),
    ];
    let ids = [
        "10000000-0000-4000-8000-000000000001",
        "10000000-0000-4000-8000-000000000002",
        "10000000-0000-4000-8000-000000000003",
        "10000000-0000-4000-8000-000000000004",
        "10000000-0000-4000-8000-000000000005",
        "10000000-0000-4000-8000-000000000006",
    ];
    for ((status, behavior), id) in cases.into_iter().zip(ids) {
        mock.set_behavior(behavior);
        let what = format!("GET answered {status}");
        let resp = get(&proxy, &path(id), Some(READER)).await;
        assert_eq!(resp.status.as_u16(), status, "{what}: {}", resp.text());
        assert_no_upstream_key(&resp, &what);
        // A second look (a hit for the cacheable 200 and 404) is just as clean.
        let again = get(&proxy, &path(id), Some(READER)).await;
        assert_no_upstream_key(&again, &format!("{what}, again"));
        // Writes relay the same way.
        let written = write(&proxy, Method::PATCH, &path(id), WRITER, r#"{"name":"x"}"#).await;
        assert_eq!(written.status.as_u16(), status, "PATCH: {}", written.text());
        assert_no_upstream_key(&written, &format!("PATCH answered {status}"));
    }
    // The echoed message keeps everything but the key.
    mock.set_behavior(Behavior::Raw {
        status: 400,
        headers: json(),
        body: r#"{"message":"bad request from Bearer sk-upstream-SECRET-123","statusCode":400,"error":"Bad Request"}"#.into(),
    });
    let resp = get(&proxy, &path(VAPI_ID), Some(READER)).await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    let message = resp.json()["message"].as_str().unwrap().to_owned();
    assert!(message.starts_with("bad request from Bearer "), "{message}");
    assert_no_upstream_key(&resp, "400 echo");
}

#[tokio::test]
async fn the_upstream_key_never_reaches_a_client_through_retry_after() {
    // 429 and 503 are the answers whose Retry-After phonegate relays; an upstream (or a proxy in
    // front of it) that echoes request data there must not carry the key through.
    let mut leaks = Vec::new();
    for status in [429u16, 503] {
        let (mock, proxy) =
            managed("[cache]\nstale_while_revalidate_secs = 0\nstale_if_error_secs = 0\n").await;
        mock.set_behavior(Behavior::Raw {
            status,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("retry-after".into(), UPSTREAM_KEY.into()),
            ],
            body: format!(r#"{{"message":"slow down","statusCode":{status}}}"#).into(),
        });
        for method in [Method::GET, Method::PATCH] {
            let resp = if method == Method::GET {
                get(&proxy, &path(TWILIO_ID), Some(READER)).await
            } else {
                write(&proxy, Method::PATCH, &path(VAPI_ID), WRITER, "{}").await
            };
            assert_eq!(resp.status.as_u16(), status, "{}", resp.text());
            assert!(!resp.text().contains(UPSTREAM_KEY));
            for (name, value) in &resp.headers {
                if String::from_utf8_lossy(value.as_bytes()).contains(UPSTREAM_KEY) {
                    leaks.push(format!(
                        "{method} answered {status}: header {name}: {value:?}"
                    ));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "the upstream key leaked: {leaks:#?}");
}

#[test]
fn managed_mode_needs_an_upstream_key() {
    let base = |upstream_extra: &str| {
        format!(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n{upstream_extra}\n\
             [auth]\nmode = \"managed\"\n\
             [[auth.clients]]\nname = \"reader\"\ntoken_sha256 = \"{}\"\nscopes = [\"read\"]\n",
            token_sha256_hex(READER)
        )
    };
    for upstream_extra in ["", "api_key = \"\""] {
        let err = Config::from_toml(&base(upstream_extra))
            .expect_err("managed mode without a key must not start");
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if *key == "upstream.api_key"),
            "{err:?}"
        );
        assert!(err.to_string().contains("upstream.api_key"), "{err}");
    }
    // Both a key and a key file: refused, naming the key without showing it.
    let err = Config::from_toml(&base(
        "api_key = \"sk-upstream-SECRET-123\"\napi_key_file = \"/nonexistent\"",
    ))
    .expect_err("both key sources");
    assert!(err.to_string().contains("upstream.api_key"), "{err}");
    assert!(!err.to_string().contains(UPSTREAM_KEY), "{err}");
    // With a key it is fine.
    assert!(Config::from_toml(&base("api_key = \"sk-upstream-SECRET-123\"")).is_ok());
}

// ---- CORS ----

#[tokio::test]
async fn an_allowed_preflight_is_answered_without_credentials_or_upstream() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), &cors_toml(&[ORIGIN])).await;
    for (target, method) in [
        (path(TWILIO_ID), "GET"),
        (path(TWILIO_ID), "PATCH"),
        (path(TWILIO_ID), "DELETE"),
        ("/phone-number".to_owned(), "POST"),
        ("/v2/phone-number".to_owned(), "GET"),
    ] {
        let what = format!("preflight {method} {target}");
        let resp = preflight(&proxy, &target, None, ORIGIN, method).await;
        assert!(resp.status.is_success(), "{what}: {}", resp.status);
        assert_eq!(
            resp.header("access-control-allow-origin"),
            Some(ORIGIN),
            "{what}"
        );
        let methods = all_values(&resp, "access-control-allow-methods");
        assert!(methods.contains("get"), "{what}: {methods}");
        assert!(
            methods.contains(&method.to_ascii_lowercase()),
            "{what}: {methods}"
        );
        let headers = all_values(&resp, "access-control-allow-headers");
        assert!(headers.contains("authorization"), "{what}: {headers}");
        assert!(all_values(&resp, "vary").contains("origin"), "{what}");
        assert!(
            resp.header("access-control-allow-credentials").is_none(),
            "{what}"
        );
    }
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn preflights_need_no_token_in_managed_mode_either() {
    let (mock, proxy) = managed(&cors_toml(&[ORIGIN])).await;
    let resp = preflight(&proxy, &path(TWILIO_ID), None, ORIGIN, "GET").await;
    assert!(resp.status.is_success(), "{}", resp.status);
    assert_eq!(resp.header("access-control-allow-origin"), Some(ORIGIN));
    let get = get_with(
        &proxy,
        Method::GET,
        &path(TWILIO_ID),
        Some(READER),
        &[("origin", ORIGIN)],
    )
    .await;
    assert_eq!(get.status, StatusCode::OK);
    assert_eq!(get.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(mock.hits(), 1);
}

#[tokio::test]
async fn a_preflight_from_an_unlisted_origin_is_refused() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), &cors_toml(&[ORIGIN])).await;
    for origin in [
        "https://evil.example",
        "http://app.example.com",
        "https://app.example.com.evil.example",
        "https://app.example.com:8443",
        "https://sub.app.example.com",
        "null",
    ] {
        let resp = preflight(&proxy, &path(TWILIO_ID), Some(TOKEN_A), origin, "GET").await;
        assert_json_error(&resp, 403, origin);
        assert!(
            resp.header("access-control-allow-origin").is_none(),
            "{origin}"
        );
        assert!(
            resp.header("access-control-allow-credentials").is_none(),
            "{origin}"
        );
        assert!(
            resp.header("access-control-allow-methods").is_none(),
            "{origin}"
        );
    }
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn answers_to_the_allowed_origin_are_readable() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), &cors_toml(&[ORIGIN])).await;
    for expect in ["miss", "hit"] {
        let resp = get_with(
            &proxy,
            Method::GET,
            &path(TWILIO_ID),
            Some(TOKEN_A),
            &[("origin", ORIGIN)],
        )
        .await;
        assert_eq!(resp.status, StatusCode::OK);
        resp.assert_cache(expect);
        assert_eq!(resp.header("access-control-allow-origin"), Some(ORIGIN));
        assert!(all_values(&resp, "vary").contains("origin"), "{expect}");
        let exposed = all_values(&resp, "access-control-expose-headers");
        assert!(exposed.contains("x-cache"), "{exposed}");
        assert!(resp.header("access-control-allow-credentials").is_none());
    }
    // Lists and writes too.
    let list = get_with(
        &proxy,
        Method::GET,
        "/v2/phone-number",
        Some(TOKEN_A),
        &[("origin", ORIGIN)],
    )
    .await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.header("access-control-allow-origin"), Some(ORIGIN));
    let patched = send(request(
        Method::PATCH,
        &proxy.url(&path(TWILIO_ID)),
        Some(TOKEN_A),
        &[("content-type", "application/json"), ("origin", ORIGIN)],
        Bytes::from_static(b"{\"name\":\"cors\"}"),
    ))
    .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text());
    assert_eq!(patched.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(mock.hits(), 3);
}

#[tokio::test]
async fn answers_to_other_origins_carry_no_allow_origin() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), &cors_toml(&[ORIGIN])).await;
    for origin in ["https://evil.example", "http://app.example.com", "null"] {
        let resp = get_with(
            &proxy,
            Method::GET,
            &path(TWILIO_ID),
            Some(TOKEN_A),
            &[("origin", origin)],
        )
        .await;
        assert_eq!(resp.status, StatusCode::OK, "{origin}: still answered");
        assert_eq!(resp.json()["id"], TWILIO_ID);
        assert!(
            resp.header("access-control-allow-origin").is_none(),
            "{origin}"
        );
        assert!(
            resp.header("access-control-allow-credentials").is_none(),
            "{origin}"
        );
        assert!(
            resp.header("access-control-expose-headers").is_none(),
            "{origin}"
        );
    }
    // No Origin at all (a server-side caller): answered, no allow-origin either.
    let plain = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert!(plain.header("access-control-allow-origin").is_none());
    assert_eq!(mock.hits(), 1);
}

#[tokio::test]
async fn without_cors_settings_there_are_no_cors_headers_and_options_is_405() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;
    let preflight = preflight(&proxy, &path(TWILIO_ID), None, ORIGIN, "GET").await;
    assert_json_error(&preflight, 405, "OPTIONS with CORS off");
    assert!(preflight.header("allow").is_some());
    assert_no_cors_headers(&preflight, "OPTIONS with CORS off");

    let resp = get_with(
        &proxy,
        Method::GET,
        &path(TWILIO_ID),
        Some(TOKEN_A),
        &[("origin", ORIGIN)],
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_no_cors_headers(&resp, "GET with CORS off");
    assert!(
        !all_values(&resp, "vary").contains("origin"),
        "no CORS, no Vary: origin"
    );
    assert_eq!(mock.hits(), 1);
}

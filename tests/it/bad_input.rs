//! Bad input: every malformed request gets a 4xx JSON error and the upstream never hears of it.

use crate::support::mock_vapi::TWILIO_ID;
use crate::support::{
    MockVapi, Proxy, Resp, TOKEN_A, assert_json_error, get, get_with, path, raw, raw_body,
    raw_status,
};
use http::Method;

async fn setup() -> (MockVapi, Proxy) {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;
    (mock, proxy)
}

/// phonegate's own JSON error with `status` (see [`assert_json_error`]), its message one string.
fn assert_own_error(resp: &Resp, status: u16, what: &str) {
    assert_json_error(resp, status, what);
    assert!(
        resp.json()["message"].is_string(),
        "{what}: {}",
        resp.text()
    );
}

#[tokio::test]
async fn missing_or_malformed_credentials_get_401_without_an_upstream_call() {
    let (mock, proxy) = setup().await;
    let none = get(&proxy, &path(TWILIO_ID), None).await;
    assert_own_error(&none, 401, "no Authorization");
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    for auth in [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer ",
        "bearer two words",
        "Token abc",
        "abc",
    ] {
        let resp = get_with(
            &proxy,
            Method::GET,
            &path(TWILIO_ID),
            None,
            &[("authorization", auth)],
        )
        .await;
        assert_own_error(&resp, 401, auth);
        assert!(
            !resp.text().contains("dXNlcjpwYXNz"),
            "the header is not echoed"
        );
        assert!(resp.header("x-request-id").is_some());
        assert_eq!(resp.header("cache-control"), Some("private"));
    }
    // Two Authorization headers: ambiguous, refused.
    let resp = raw(
        proxy.addr,
        format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\nConnection: close\r\n\r\n",
            path(TWILIO_ID)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&resp), 401);
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn other_paths_ids_and_methods_are_refused() {
    let (mock, proxy) = setup().await;
    let cases: &[(Method, String, u16, Option<&str>)] = &[
        (Method::GET, "/".into(), 404, None),
        (Method::GET, "/phone-numbers".into(), 404, None),
        (
            Method::GET,
            "/assistant/8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44".into(),
            404,
            None,
        ),
        (Method::GET, format!("{}/extra", path(TWILIO_ID)), 404, None),
        (Method::GET, format!("{}/", path(TWILIO_ID)), 404, None),
        (Method::GET, "/phone-number/not-a-uuid".into(), 400, None),
        (
            Method::GET,
            "/phone-number/3b1f6a528c7e4d19a2f46e0b9c3d7a15".into(),
            400,
            None,
        ),
        (
            Method::GET,
            "/phone-number/{3b1f6a52-8c7e-4d19-a2f4-6e0b9c3d7a15}".into(),
            400,
            None,
        ),
        (Method::GET, "/phone-number?limit=5000".into(), 400, None),
        (Method::GET, "/phone-number?page=2".into(), 400, None),
        (
            Method::GET,
            "/v2/phone-number?sortBy=name".into(),
            400,
            None,
        ),
        (
            Method::POST,
            path(TWILIO_ID),
            405,
            Some("GET, HEAD, PATCH, DELETE"),
        ),
        (
            Method::PUT,
            path(TWILIO_ID),
            405,
            Some("GET, HEAD, PATCH, DELETE"),
        ),
        (
            Method::OPTIONS,
            path(TWILIO_ID),
            405,
            Some("GET, HEAD, PATCH, DELETE"),
        ),
        (
            Method::PUT,
            "/phone-number".into(),
            405,
            Some("GET, HEAD, POST"),
        ),
        (
            Method::DELETE,
            "/v2/phone-number".into(),
            405,
            Some("GET, HEAD"),
        ),
    ];
    for (method, p, expect, allow) in cases {
        let resp = get_with(&proxy, method.clone(), p, Some(TOKEN_A), &[]).await;
        assert_own_error(&resp, *expect, &format!("{method} {p}"));
        assert_eq!(resp.header("allow"), *allow, "{method} {p}");
    }
    assert_eq!(mock.hits(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn encoded_slashes_dots_nuls_and_long_paths_are_refused() {
    let (mock, proxy) = setup().await;
    let cases: &[(String, u16)] = &[
        (
            "/phone-number%2F3b1f6a52-8c7e-4d19-a2f4-6e0b9c3d7a15".into(),
            400,
        ),
        ("/phone-number/%2e%2e/assistant".into(), 400),
        ("/phone-number/..%2Fassistant".into(), 400),
        (format!("{}%00", path(TWILIO_ID)), 400),
        (format!("/phone-number/../phone-number/{TWILIO_ID}"), 400),
        (format!("/phone-number/./{TWILIO_ID}"), 400),
        (format!("/phone-number/{}", "a".repeat(5000)), 414),
    ];
    for (p, expect) in cases {
        let resp = raw(
            proxy.addr,
            format!(
                "GET {p} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&resp), *expect, "{p}: {resp}");
        let body: serde_json::Value = serde_json::from_str(raw_body(&resp))
            .unwrap_or_else(|e| panic!("{p}: not JSON ({e}): {resp}"));
        assert_eq!(body["statusCode"], *expect);
    }
    // A raw NUL byte is not valid HTTP at all: hyper refuses it before phonegate sees it.
    let resp = raw(
        proxy.addr,
        format!("GET /phone-number/{TWILIO_ID}\0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&resp), 400, "{resp}");
    assert_eq!(mock.hits(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn a_get_with_a_body_is_refused() {
    let (mock, proxy) = setup().await;
    for framing in [
        "Content-Length: 5\r\n\r\nhello".to_owned(),
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_owned(),
    ] {
        let resp = raw(
            proxy.addr,
            format!(
                "GET {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\nConnection: close\r\n{framing}",
                path(TWILIO_ID)
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&resp), 400, "{resp}");
        let body: serde_json::Value = serde_json::from_str(raw_body(&resp)).unwrap();
        assert!(body["message"].as_str().unwrap().contains("body"), "{body}");
    }
    // An explicit empty body is fine.
    let resp = raw(
        proxy.addr,
        format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            path(TWILIO_ID)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(mock.hits(), 1, "only the well-formed request went upstream");
}

#[tokio::test]
async fn absolute_form_targets_cannot_redirect_the_upstream() {
    let (mock, proxy) = setup().await;
    let resp = raw(
        proxy.addr,
        format!(
            "GET http://evil.example/phone-number/{TWILIO_ID} HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer {TOKEN_A}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    // The authority is ignored: the request goes to the configured upstream or nowhere.
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert_eq!(mock.hits_for(&path(TWILIO_ID)), 1);
}

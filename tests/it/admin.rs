//! The admin API: cache purges (by id, by key_id, all; with and without `admin.token`, on
//! loopback and not), `/config` masking, and request-id handling end to end.

use std::sync::Arc;

use crate::support::mock_vapi::{TWILIO_ID, VAPI_ID};
use crate::support::{
    MockVapi, Proxy, TOKEN_A, TOKEN_B, admin, admin_get, get, get_and_assert_cache, get_with, path,
    purge, request,
};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use phonegate::config::Config;
use phonegate::state::AppState;

const ADMIN_TOKEN: &str = "admin-token-0123456789";

async fn warm(proxy: &Proxy) {
    for token in [TOKEN_A, TOKEN_B] {
        for id in [TWILIO_ID, VAPI_ID] {
            assert_eq!(
                get(proxy, &path(id), Some(token)).await.status,
                StatusCode::OK
            );
        }
    }
}

#[tokio::test]
async fn purge_by_id_key_and_all_says_how_many_went() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;
    warm(&proxy).await;
    assert_eq!(mock.hits(), 4);

    let by_id = purge(&proxy, &format!(r#"{{"id":"{TWILIO_ID}"}}"#)).await;
    assert_eq!(by_id.status, StatusCode::OK, "{}", by_id.text());
    assert_eq!(
        by_id.json()["purged"],
        2,
        "both credentials' entries of that id"
    );
    get_and_assert_cache(&proxy, &path(TWILIO_ID), Some(TOKEN_A), "miss").await;
    get_and_assert_cache(&proxy, &path(VAPI_ID), Some(TOKEN_A), "hit").await;

    // key_id as the access log shows it.
    let key_id = proxy
        .state
        .fingerprinter
        .fingerprint(TOKEN_B.as_bytes())
        .key_id()
        .to_string();
    let by_key = purge(&proxy, &format!(r#"{{"key_id":"{key_id}"}}"#)).await;
    assert_eq!(by_key.json()["purged"], 1, "B had only VAPI_ID left");
    get_and_assert_cache(&proxy, &path(VAPI_ID), Some(TOKEN_B), "miss").await;
    get_and_assert_cache(&proxy, &path(VAPI_ID), Some(TOKEN_A), "hit").await;

    let all = purge(&proxy, r#"{"all":true}"#).await;
    assert_eq!(all.json()["purged"], 3);
    get_and_assert_cache(&proxy, &path(VAPI_ID), Some(TOKEN_A), "miss").await;

    for bad in [
        "",
        "{}",
        r#"{"id":"nope"}"#,
        r#"{"key_id":"zz"}"#,
        r#"{"key_id":"0123456789abcdef00"}"#,
        r#"{"key_id":7}"#,
        r#"{"all":false}"#,
        r#"{"id":"x","all":true}"#,
        "[1]",
    ] {
        let resp = purge(&proxy, bad).await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(resp.json()["statusCode"], 400);
    }
    assert_eq!(
        admin_get(proxy.admin_addr, "/cache/purge").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn purge_needs_the_admin_token_when_one_is_set() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        &format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n"),
    )
    .await;
    warm(&proxy).await;
    for token in [None, Some("wrong-token-0123456789"), Some("admin-token")] {
        let resp = admin(
            proxy.admin_addr,
            Method::POST,
            "/cache/purge",
            token,
            r#"{"all":true}"#,
        )
        .await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    }
    get(&proxy, &path(TWILIO_ID), Some(TOKEN_A))
        .await
        .assert_cache_because("hit", "nothing purged");
    let ok = admin(
        proxy.admin_addr,
        Method::POST,
        "/cache/purge",
        Some(ADMIN_TOKEN),
        r#"{"all":true}"#,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json()["purged"], 4);
}

async fn call(
    state: &Arc<AppState>,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> StatusCode {
    let req = request(method, path, token, &[], body.to_owned());
    let resp = phonegate::admin::handle(Arc::clone(state), req)
        .await
        .unwrap();
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    status
}

#[tokio::test]
async fn without_a_token_only_a_loopback_admin_listener_may_purge() {
    // Built, not bound: the admin address only decides the policy here.
    let exposed =
        AppState::new(Config::from_toml("[admin]\nlisten = \"0.0.0.0:9090\"\n").unwrap()).unwrap();
    assert_eq!(
        call(
            &exposed,
            Method::POST,
            "/cache/purge",
            None,
            r#"{"all":true}"#
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&exposed, Method::GET, "/healthz", None, "").await,
        StatusCode::OK,
        "reads stay open"
    );
    let loopback =
        AppState::new(Config::from_toml("[admin]\nlisten = \"[::1]:9090\"\n").unwrap()).unwrap();
    assert_eq!(
        call(
            &loopback,
            Method::POST,
            "/cache/purge",
            None,
            r#"{"all":true}"#
        )
        .await,
        StatusCode::OK
    );
    let tokened = AppState::new(
        Config::from_toml(&format!(
            "[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"{ADMIN_TOKEN}\"\n"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        call(
            &tokened,
            Method::POST,
            "/cache/purge",
            Some(ADMIN_TOKEN),
            r#"{"all":true}"#
        )
        .await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn config_shows_the_effective_settings_with_secrets_masked() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        &format!(
            "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n[cache]\nttl_secs = 42\nkey_secret = \"cache-key-secret-0123456789\"\n"
        ),
    )
    .await;
    let resp = admin_get(proxy.admin_addr, "/config").await;
    assert_eq!(resp.status, StatusCode::OK);
    let text = resp.text();
    let v = resp.json();
    assert_eq!(v["cache"]["ttl_secs"], 42);
    assert_eq!(v["upstream"]["url"], mock.url());
    assert_eq!(v["cache"]["key_secret"], "(set)");
    assert_eq!(v["admin"]["token"], "(set)");
    assert!(!text.contains("cache-key-secret-0123456789"), "{text}");
    assert!(!text.contains(ADMIN_TOKEN), "{text}");
}

#[tokio::test]
async fn request_ids_are_kept_when_sane_replaced_otherwise_and_sent_upstream() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;
    let kept = get_with(
        &proxy,
        Method::GET,
        &path(TWILIO_ID),
        Some(TOKEN_A),
        &[("x-request-id", "abc-123.x:y_z")],
    )
    .await;
    assert_eq!(kept.header("x-request-id"), Some("abc-123.x:y_z"));
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.headers.get("x-request-id").unwrap(), "abc-123.x:y_z");

    let long = "a".repeat(200);
    for odd in ["has space", "<script>", long.as_str()] {
        let resp = get_with(
            &proxy,
            Method::GET,
            &path(VAPI_ID),
            Some(TOKEN_B),
            &[("x-request-id", odd)],
        )
        .await;
        let id = resp.header("x-request-id").unwrap();
        assert_ne!(id, odd);
        assert!(uuid::Uuid::parse_str(id).is_ok(), "a fresh UUID: {id}");
    }
    let none = get(&proxy, &path(TWILIO_ID), None).await;
    assert!(
        uuid::Uuid::parse_str(none.header("x-request-id").unwrap()).is_ok(),
        "even on refusals"
    );
}

//! Proves the Vapi mock behaves as documented over real connections, so that phonegate's tests
//! can trust it. The fixture data itself is checked by the unit tests in `src/fixtures.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mock_vapi::{Behavior, MockVapi, PLANTED};
use serde_json::{Value, json};

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn send(
    client: &TestClient,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(v) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Full::new(Bytes::from(v.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    let resp = client
        .request(builder.body(body).expect("request"))
        .await
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn get(client: &TestClient, url: &str) -> Answer {
    send(client, Method::GET, url, Some("test-key"), None).await
}

// ---------------------------------------------------------------- normal API

#[tokio::test]
async fn get_each_fixture_unredacted() {
    let mock = MockVapi::start().await;
    assert!(mock.url().starts_with("http://127.0.0.1:"));
    let c = client();
    for &(provider, id) in MockVapi::ids() {
        let a = get(&c, &format!("{}/phone-number/{id}", mock.url())).await;
        assert_eq!(a.status, StatusCode::OK, "{provider}");
        assert_eq!(a.content_type(), "application/json; charset=utf-8");
        assert_eq!(a.json(), MockVapi::fixture(provider));
        assert!(String::from_utf8_lossy(&a.body).contains(PLANTED));
        // Ids are compared case-insensitively; the answer keeps the fixture's id.
        let upper = get(
            &c,
            &format!("{}/phone-number/{}", mock.url(), id.to_uppercase()),
        )
        .await;
        assert_eq!(upper.status, StatusCode::OK);
        assert_eq!(upper.json()["id"], id);
    }
    assert_eq!(mock.hits(), 10);
    mock.shutdown().await;
}

#[tokio::test]
async fn unknown_id_is_vapi_404() {
    let mock = MockVapi::start().await;
    let a = get(
        &client(),
        &format!(
            "{}/phone-number/00000000-0000-4000-8000-000000000000",
            mock.url()
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.json(),
        json!({"message":"Phone number not found","error":"Not Found","statusCode":404})
    );
    assert_eq!(a.content_type(), mock_vapi::JSON_CONTENT_TYPE);
    let a = get(&client(), &format!("{}/nope", mock.url())).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json()["message"], "Cannot GET /nope");
}

#[tokio::test]
async fn bad_or_missing_token_is_real_401() {
    let mock = MockVapi::start().await;
    let c = client();
    let url = format!("{}/phone-number/{}", mock.url(), mock_vapi::TWILIO_ID);
    let expected = json!({"message":"Invalid Key. Hot tip, you may be using the private key instead of the public key, or vice versa.","error":"Unauthorized","statusCode":401});
    let a = send(&c, Method::GET, &url, Some("invalid-key"), None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json(), expected);
    assert_eq!(a.body, mock_vapi::UNAUTHORIZED_BODY.as_bytes());
    let a = send(&c, Method::GET, &url, None, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json(), expected);
    assert_eq!(mock.hits(), 2);

    // An explicit allow-list.
    let strict = MockVapi::builder().valid_tokens(["good"]).start().await;
    let url = format!("{}/phone-number/{}", strict.url(), mock_vapi::VAPI_ID);
    assert_eq!(
        send(&c, Method::GET, &url, Some("good"), None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&c, Method::GET, &url, Some("other"), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn hits_count_exactly_and_requests_are_recorded() {
    let mock = MockVapi::start().await;
    let c = client();
    let path = format!("/phone-number/{}", mock_vapi::TELNYX_ID);
    for _ in 0..3 {
        get(&c, &format!("{}{path}", mock.url())).await;
    }
    get(&c, &format!("{}{path}?x=1", mock.url())).await;
    get(&c, &format!("{}/phone-number?limit=1", mock.url())).await;
    assert_eq!(mock.hits(), 5);
    assert_eq!(mock.hits_for(&path), 4);
    assert_eq!(mock.hits_for("/phone-number"), 1);
    assert_eq!(mock.hits_for("/phone-number/other"), 0);
    let last = mock.last_request().expect("recorded");
    assert_eq!(last.method, Method::GET);
    assert_eq!(last.path_and_query, "/phone-number?limit=1");
    assert_eq!(last.path, "/phone-number");
    assert_eq!(
        last.headers.get(header::AUTHORIZATION).unwrap(),
        "Bearer test-key"
    );
    let all = mock.requests();
    assert_eq!(all.len(), 5);
    assert_eq!(all[3].path_and_query, format!("{path}?x=1"));
    mock.reset_hits();
    assert_eq!(mock.hits(), 0);
    assert_eq!(mock.hits_for(&path), 0);
    assert!(mock.last_request().is_none());
    get(&c, &format!("{}{path}", mock.url())).await;
    assert_eq!(mock.hits(), 1);
}

#[tokio::test]
async fn http2_is_served() {
    let mock = MockVapi::start().await;
    let a = get(
        &h2_client(),
        &format!("{}/phone-number/{}", mock.url(), mock_vapi::VONAGE_ID),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), MockVapi::fixture("vonage"));
    assert_eq!(mock.last_request().unwrap().version, http::Version::HTTP_2);
}

#[tokio::test]
async fn list_and_v2_list() {
    let mock = MockVapi::start().await;
    let c = client();
    let a = get(&c, &format!("{}/phone-number", mock.url())).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), Value::Array(MockVapi::fixtures()));
    let a = get(&c, &format!("{}/phone-number?limit=2", mock.url())).await;
    assert_eq!(a.json().as_array().unwrap().len(), 2);
    let a = get(&c, &format!("{}/phone-number?limit=5000", mock.url())).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["statusCode"], 400);
    assert!(a.json()["message"].is_array());

    let a = get(
        &c,
        &format!("{}/v2/phone-number?limit=2&page=3", mock.url()),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    assert_eq!(v["results"][0]["id"], mock_vapi::BYO_ID);
    assert_eq!(v["metadata"]["itemsPerPage"], 2);
    assert_eq!(v["metadata"]["totalItems"], 5);
    assert_eq!(v["metadata"]["currentPage"], 3);
}

#[tokio::test]
async fn create_patch_delete_keep_state() {
    let mock = MockVapi::start().await;
    let c = client();
    let base = mock.url();

    let posted = json!({"provider": "twilio", "number": "+14155550999", "twilioAccountSid": "AC11111111111111111111111111111111", "twilioAuthToken": "PLANTED-posted-token"});
    let a = send(
        &c,
        Method::POST,
        &format!("{base}/phone-number"),
        Some("k"),
        Some(posted),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let created = a.json();
    let new_id = created["id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, mock_vapi::TWILIO_ID);
    assert_eq!(created["twilioAuthToken"], "PLANTED-posted-token");
    assert_eq!(created["number"], "+14155550999");
    assert_eq!(created["server"]["secret"], "PLANTED-twilio-server-secret");
    assert!(created["createdAt"].as_str().unwrap().ends_with('Z'));
    assert!(mock.last_request().unwrap().body.len() > 10);
    let a = get(&c, &format!("{base}/phone-number/{new_id}")).await;
    assert_eq!(a.json(), created);

    let bad = send(
        &c,
        Method::POST,
        &format!("{base}/phone-number"),
        Some("k"),
        Some(json!({"provider": "plivo"})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let patch = json!({"name": "Renamed", "server": {"headers": {"X-New": "PLANTED-new-header"}}});
    let url = format!("{base}/phone-number/{}", mock_vapi::TWILIO_ID);
    let a = send(&c, Method::PATCH, &url, Some("k"), Some(patch)).await;
    assert_eq!(a.status, StatusCode::OK);
    let patched = a.json();
    assert_eq!(patched["name"], "Renamed");
    assert_eq!(
        patched["server"]["headers"],
        json!({"X-New": "PLANTED-new-header"})
    );
    assert_eq!(patched["server"]["secret"], "PLANTED-twilio-server-secret");
    assert_eq!(get(&c, &url).await.json(), patched);
    assert_eq!(mock.object(mock_vapi::TWILIO_ID), Some(patched.clone()));

    let a = send(&c, Method::DELETE, &url, Some("k"), None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), patched);
    assert_eq!(get(&c, &url).await.status, StatusCode::NOT_FOUND);

    mock.reset_objects();
    assert_eq!(get(&c, &url).await.json(), MockVapi::fixture("twilio"));
}

// ---------------------------------------------------------------- failure behaviors

#[tokio::test]
async fn status_503_is_nest_json() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Status(503))
        .start()
        .await;
    let a = get(
        &client(),
        &format!("{}/phone-number/{}", mock.url(), mock_vapi::TWILIO_ID),
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.content_type(), mock_vapi::JSON_CONTENT_TYPE);
    let v = a.json();
    assert_eq!(v["statusCode"], 503);
    assert_eq!(v["error"], "Service Unavailable");
    assert!(v["message"].is_string());
}

#[tokio::test]
async fn garbage_is_not_json() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Garbage)
        .start()
        .await;
    let a = get(
        &client(),
        &format!("{}/phone-number/{}", mock.url(), mock_vapi::TWILIO_ID),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.content_type().starts_with("application/json"));
    assert!(serde_json::from_slice::<Value>(&a.body).is_err());
}

#[tokio::test]
async fn html_error_403() {
    let mock = MockVapi::start().await;
    mock.set_behavior(Behavior::HtmlError(403));
    let a = get(
        &client(),
        &format!("{}/phone-number/{}", mock.url(), mock_vapi::TWILIO_ID),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.content_type().starts_with("text/html"));
    let text = String::from_utf8_lossy(&a.body);
    assert!(text.contains("<html") && text.contains("Cloudflare"));
    assert_eq!(a.headers.get(header::SERVER).unwrap(), "cloudflare");
}

#[tokio::test]
async fn rate_limited_with_and_without_retry_after() {
    let mock = MockVapi::builder()
        .behavior(Behavior::RateLimited {
            retry_after: Some("7".into()),
        })
        .start()
        .await;
    let c = client();
    let url = format!("{}/phone-number/{}", mock.url(), mock_vapi::TWILIO_ID);
    let a = get(&c, &url).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.headers.get(header::RETRY_AFTER).unwrap(), "7");
    assert_eq!(a.json()["statusCode"], 429);
    mock.set_behavior(Behavior::RateLimited { retry_after: None });
    let a = get(&c, &url).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(a.headers.get(header::RETRY_AFTER).is_none());
    // Back to normal at run time.
    mock.set_behavior(Behavior::Normal);
    assert_eq!(get(&c, &url).await.status, StatusCode::OK);
    assert_eq!(mock.hits(), 3);
}

#[tokio::test]
async fn delay_delays() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Delay(Duration::from_millis(300)))
        .start()
        .await;
    let started = Instant::now();
    let a = get(
        &client(),
        &format!("{}/phone-number/{}", mock.url(), mock_vapi::TWILIO_ID),
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), MockVapi::fixture("twilio"));
}

#[tokio::test]
async fn oversized_has_exact_size() {
    let mock = MockVapi::start().await;
    let c = client();
    let url = format!("{}/phone-number/{}", mock.url(), mock_vapi::VAPI_ID);
    for n in [3 * 1024 * 1024, 10_000, 100, 5] {
        mock.set_behavior(Behavior::Oversized(n));
        let a = get(&c, &url).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body.len(), n);
        assert!(a.json().is_object());
        if n >= 10_000 {
            assert_eq!(a.json()["id"], mock_vapi::VAPI_ID);
        }
    }
}

#[tokio::test]
async fn deep_is_nested() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Deep(5))
        .start()
        .await;
    let c = client();
    let url = format!("{}/phone-number/{}", mock.url(), mock_vapi::TWILIO_ID);
    let a = get(&c, &url).await;
    assert_eq!(a.body, &br#"{"d":{"d":{"d":{"d":{}}}}}"#[..]);
    mock.set_behavior(Behavior::Deep(10_000));
    let a = get(&c, &url).await;
    assert_eq!(a.status, StatusCode::OK);
    // Deeper than serde_json's default recursion limit.
    assert!(serde_json::from_slice::<Value>(&a.body).is_err());
}

#[tokio::test]
async fn close_mid_body_fails_the_body() {
    let mock = MockVapi::builder()
        .behavior(Behavior::CloseMidBody)
        .start()
        .await;
    let url = format!("{}/phone-number/{}", mock.url(), mock_vapi::TWILIO_ID);
    for c in [client(), h2_client()] {
        let req = Request::get(&url)
            .header(header::AUTHORIZATION, "Bearer k")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = c.request(req).await.expect("headers arrive");
        assert_eq!(resp.status(), StatusCode::OK);
        let result = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
            .await
            .expect("no hang");
        assert!(result.is_err(), "body should fail");
    }

    // On the wire: a content-length larger than what is written, then EOF.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    let path = format!("/phone-number/{}", mock_vapi::TWILIO_ID);
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut raw))
        .await
        .expect("closed, no hang");
    // EOF or a reset are both fine; what arrived is what matters.
    let _ = read;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("head was sent");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .expect("content-length")
        .trim()
        .parse()
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"));
    assert_eq!(length, MockVapi::fixture("twilio").to_string().len());
    assert!(
        !body.is_empty() && body.len() < length,
        "{} of {length}",
        body.len()
    );
}

#[tokio::test]
async fn sequence_then_normal() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Sequence(vec![
            Behavior::Status(502),
            Behavior::HtmlError(504),
            Behavior::Normal,
        ]))
        .start()
        .await;
    let c = client();
    let url = format!("{}/phone-number/{}", mock.url(), mock_vapi::TWILIO_ID);
    assert_eq!(get(&c, &url).await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(get(&c, &url).await.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(get(&c, &url).await.status, StatusCode::OK);
    assert_eq!(get(&c, &url).await.status, StatusCode::OK);
}

#[tokio::test]
async fn dropping_the_handle_frees_the_port() {
    let mock = MockVapi::start().await;
    let addr = mock.addr();
    let clone = mock.clone();
    drop(mock);
    // A clone keeps it alive.
    assert_eq!(
        get(
            &client(),
            &format!("http://{addr}/phone-number/{}", mock_vapi::TWILIO_ID)
        )
        .await
        .status,
        StatusCode::OK
    );
    clone.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // The same port can be bound again.
    let again = MockVapi::builder().addr(addr).start().await;
    assert_eq!(again.addr(), addr);
}

// ---------------------------------------------------------------- TLS

#[tokio::test]
async fn tls_mock_with_self_signed_cert() {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    let mock = MockVapi::builder()
        .tls(cert.pem(), signing_key.serialize_pem())
        .start()
        .await;
    assert!(mock.url().starts_with("https://127.0.0.1:"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    for (alpn, expect_version) in [
        (&b"h2"[..], http::Version::HTTP_2),
        (&b"http/1.1"[..], http::Version::HTTP_11),
    ] {
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        let io = TokioIo::new(tls);

        let uri = format!("https://localhost/phone-number/{}", mock_vapi::BYO_ID);
        let req = Request::get(&uri)
            .header(header::AUTHORIZATION, "Bearer k")
            .header(header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = if expect_version == http::Version::HTTP_2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        };
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), expect_version);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, MockVapi::fixture("byo-phone-number"));
    }
    assert_eq!(mock.hits(), 2);

    // Bad TLS material is an error, not a panic.
    let err = MockVapi::builder().tls("nope", "nope").try_start().await;
    assert!(err.is_err());
}

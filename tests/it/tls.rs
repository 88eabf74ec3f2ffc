//! TLS on both sides: the listener with a certificate (ALPN h2 and HTTP/1.1), the upstream over
//! HTTPS with an extra trusted CA, and start-up errors for unusable TLS files.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::support::mock_vapi::{PLANTED, TELNYX_ID, TWILIO_ID};
use crate::support::{
    MockVapi, Proxy, Resp, TOKEN_A, TempDir, TestCert, get, get_request, path, request,
    tls_client_config, toml_path,
};
use bytes::Bytes;
use http::{Method, StatusCode, Version};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use phonegate::config::Config;
use phonegate::server::{Server, StartError};
use rustls_pki_types::CertificateDer;

fn tls_config_toml(upstream_url: &str, cert: &Path, key: &Path) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurl = \"{upstream_url}\"\ntimeout_ms = 2000\n\
         [tls]\ncert_path = {}\nkey_path = {}\n",
        toml_path(cert),
        toml_path(key)
    )
}

/// A proxy whose listener serves TLS with `cert`, in front of `mock`, with `extra` settings.
async fn tls_proxy(mock: &MockVapi, cert: &TestCert, extra: &str) -> Proxy {
    let toml = format!(
        "{}{extra}",
        tls_config_toml(&mock.url(), &cert.cert_path, &cert.key_path)
    );
    Proxy::start_with(Config::from_toml(&toml).expect("valid TLS config")).await
}

/// A client that trusts exactly `cert`, offering h2 only (ALPN) or HTTP/1.1 only (no ALPN).
fn tls_client(
    cert: &CertificateDer<'static>,
    h2: bool,
) -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_client_config(cert))
        .https_only();
    let connector = if h2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn tls_get(
    client: &Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: &str,
) -> (Version, Resp) {
    let req = request(Method::GET, url, Some(TOKEN_A), &[], Bytes::new());
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("answer in time")
        .expect("TLS request");
    (response.version(), Resp::read(response).await)
}

#[tokio::test]
async fn the_tls_listener_serves_h2_by_alpn_and_http1_without() {
    let cert = TestCert::new("tls-listener");
    let mock = MockVapi::start().await;
    let config = Config::from_toml(&tls_config_toml(
        &mock.url(),
        &cert.cert_path,
        &cert.key_path,
    ))
    .expect("valid TLS config");
    assert!(config.startup.tls.is_some());
    let proxy = Proxy::start_with(config).await;
    let port = proxy.addr.port();
    let url = format!("https://localhost:{port}{}", path(TWILIO_ID));

    let h2 = tls_client(&cert.der, true);
    let (version, first) = tls_get(&h2, &url).await;
    assert_eq!(version, Version::HTTP_2, "ALPN h2 gives HTTP/2");
    assert_eq!(first.status, StatusCode::OK);
    first.assert_cache("miss");
    assert_eq!(first.json()["id"], TWILIO_ID);
    assert!(!first.text().contains(PLANTED));
    let (version, second) = tls_get(&h2, &url).await;
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(second.status, StatusCode::OK);
    second.assert_cache("hit");
    assert_eq!(second.body, first.body);

    let h1 = tls_client(&cert.der, false);
    let (version, third) = tls_get(&h1, &url).await;
    assert_eq!(version, Version::HTTP_11, "no ALPN gives HTTP/1.1");
    assert_eq!(third.status, StatusCode::OK);
    third.assert_cache("hit");
    assert_eq!(third.body, first.body);

    // By IP address too (the certificate names 127.0.0.1).
    let by_ip = format!("https://127.0.0.1:{port}{}", path(TELNYX_ID));
    let (version, fourth) = tls_get(&h1, &by_ip).await;
    assert_eq!(version, Version::HTTP_11);
    assert_eq!(fourth.status, StatusCode::OK);
    fourth.assert_cache("miss");

    assert_eq!(mock.hits(), 2, "one upstream call per (id, key)");
    proxy.stop().await;
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_answer() {
    let cert = TestCert::new("tls-plain");
    let mock = MockVapi::start().await;
    let proxy = tls_proxy(&mock, &cert, "").await;

    let request = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN_A}\r\n\
         Connection: close\r\n\r\n",
        path(TWILIO_ID)
    );
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        crate::support::raw(proxy.addr, request.as_bytes()),
    )
    .await
    .expect("the server closes the connection");
    assert!(
        !answer.starts_with("HTTP/1.1 200") && !answer.contains(TWILIO_ID),
        "plain HTTP on the TLS port must not be served: {answer:?}"
    );

    // Through a regular HTTP client as well: an error or anything but 200.
    let req = get_request(&proxy, &path(TWILIO_ID), Some(TOKEN_A));
    let outcome = tokio::time::timeout(
        Duration::from_secs(5),
        crate::support::client().request(req),
    )
    .await
    .expect("the server answers or closes in time");
    if let Ok(resp) = outcome {
        assert_ne!(resp.status(), StatusCode::OK);
    }
    assert_eq!(mock.hits(), 0, "nothing reached the upstream");
    proxy.stop().await;
}

#[tokio::test]
async fn a_tls_client_that_never_handshakes_is_disconnected() {
    use tokio::io::AsyncReadExt;
    let cert = TestCert::new("tls-silent");
    let mock = MockVapi::start().await;
    let proxy = tls_proxy(&mock, &cert, "[server]\nheader_timeout_ms = 300\n").await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
    match read {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("unexpected {n} bytes from a TLS server before any ClientHello"),
        Err(_) => panic!("a silent client was still connected after 2 s"),
    }
    proxy.stop().await;
}

/// Completes a TLS handshake offering `alpn`, then stays silent; returns how long until the
/// server closed, or `None` if it was still open after 2 s.
async fn silent_after_handshake(
    addr: std::net::SocketAddr,
    cert: &CertificateDer<'static>,
    alpn: &[u8],
) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let mut config = tls_client_config(cert);
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
    let mut tls = tokio::time::timeout(Duration::from_secs(2), connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        let left = Duration::from_secs(2).saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tls.read(&mut buf)).await {
            // Anything the server says first (HTTP/2 SETTINGS) is fine; a close ends the wait.
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn a_tls_http1_client_that_sends_no_request_is_disconnected() {
    let cert = TestCert::new("tls-silent-h1");
    let mock = MockVapi::start().await;
    let proxy = tls_proxy(&mock, &cert, "[server]\nheader_timeout_ms = 300\n").await;
    let closed = silent_after_handshake(proxy.addr, &cert.der, b"http/1.1").await;
    assert!(
        closed.is_some(),
        "an HTTP/1.1-over-TLS client silent after the handshake was still connected after 2 s"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_tls_h2_client_that_sends_no_request_is_disconnected() {
    let cert = TestCert::new("tls-silent-h2");
    let mock = MockVapi::start().await;
    let server = "[server]\nheader_timeout_ms = 300\ndrain_timeout_ms = 500\n";
    let proxy = tls_proxy(&mock, &cert, server).await;
    let closed = silent_after_handshake(proxy.addr, &cert.der, b"h2").await;
    assert!(
        closed.is_some(),
        "an h2 (ALPN) client silent after the handshake was still connected after 2 s"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn the_upstream_over_https_is_trusted_through_ca_path() {
    let cert = TestCert::new("tls-upstream");
    let mock = MockVapi::builder()
        .tls(&cert.cert_pem, &cert.key_pem)
        .start()
        .await;
    let upstream = format!("https://localhost:{}", mock.addr().port());

    let trusting = Proxy::start(
        &upstream,
        &format!("[upstream]\nca_path = {}\n", toml_path(&cert.cert_path)),
    )
    .await;
    let ok = get(&trusting, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(ok.json()["id"], TWILIO_ID);
    assert!(!ok.text().contains(PLANTED));
    assert_eq!(mock.hits(), 1);
    let seen = mock.last_request().expect("the mock saw the request");
    assert_eq!(
        seen.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {TOKEN_A}").as_str())
    );
    trusting.stop().await;

    // Without the CA the self-signed upstream is not trusted: 502, our own JSON error.
    let untrusting = Proxy::start(&upstream, "").await;
    let bad = get(&untrusting, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(bad.status, StatusCode::BAD_GATEWAY, "{}", bad.text());
    let body = bad.json();
    assert_eq!(body["statusCode"], 502, "{body}");
    assert!(body["message"].is_string(), "{body}");
    assert!(
        bad.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "{:?}",
        bad.header("content-type")
    );
    assert!(!bad.text().contains(PLANTED));
    assert_eq!(
        mock.hits(),
        1,
        "no request crossed the untrusted connection"
    );
    untrusting.stop().await;
}

/// `Server::bind` must refuse with a configuration error whose message contains `key`.
async fn bind_error_naming(toml: &str, key: &str) {
    let config = Config::from_toml(toml).expect("the settings parse; the files are the problem");
    match Server::bind(config).await {
        Ok(_) => panic!("bind accepted unusable TLS material ({key})"),
        Err(StartError::Config(msg)) => {
            assert!(msg.contains(key), "the error should name {key}: {msg}");
        }
        Err(other) => panic!("expected a configuration error naming {key}, got: {other}"),
    }
}

#[tokio::test]
async fn unusable_tls_files_are_configuration_errors_naming_the_key() {
    let cert = TestCert::new("tls-bad-files");
    let other = TestCert::new("tls-bad-files-other");
    let dir = TempDir::new("tls-bad-files-extra");
    let garbage = dir.write("garbage.pem", b"this is not PEM\n");
    let missing = dir.path().join("does-not-exist.pem");
    let upstream = "http://127.0.0.1:9";

    // A missing certificate file.
    bind_error_naming(
        &tls_config_toml(upstream, &missing, &cert.key_path),
        "tls.cert_path",
    )
    .await;
    // A certificate file without a certificate.
    bind_error_naming(
        &tls_config_toml(upstream, &garbage, &cert.key_path),
        "tls.cert_path",
    )
    .await;
    // A missing key file.
    bind_error_naming(
        &tls_config_toml(upstream, &cert.cert_path, &missing),
        "tls.key_path",
    )
    .await;
    // A key file without a key.
    bind_error_naming(
        &tls_config_toml(upstream, &cert.cert_path, &garbage),
        "tls.key_path",
    )
    .await;
    // A key that does not belong to the certificate.
    bind_error_naming(
        &tls_config_toml(upstream, &cert.cert_path, &other.key_path),
        "tls.",
    )
    .await;
    // A missing upstream CA file.
    bind_error_naming(
        &format!(
            "listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"https://localhost:9\"\nca_path = {}\n",
            toml_path(&missing)
        ),
        "upstream.ca_path",
    )
    .await;
}

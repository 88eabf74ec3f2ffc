//! Certificate rotation and mutual TLS to the upstream: a reload (what SIGHUP runs) reads
//! `tls.cert_path`/`tls.key_path`, `upstream.ca_path` and the upstream client certificate again;
//! new handshakes use the new files, established connections go on, and a bad file changes
//! nothing. Certificates are made in the test with rcgen, under a test CA.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use phonegate::config::Config;
use phonegate::reload::reload_certificates;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SerialNumber,
};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::support::mock_vapi::TWILIO_ID;
use crate::support::{MockVapi, Proxy, TOKEN_A, TempDir, get, path, tls_client_config, toml_path};

/// A test certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and key it issued, as PEM.
struct Leaf {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for localhost and 127.0.0.1 with this serial.
    fn server(&self, serial: u64) -> Leaf {
        self.leaf(serial, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with this serial.
    fn client(&self, serial: u64) -> Leaf {
        self.leaf(serial, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, serial: u64, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("leaf params");
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Opens a TLS connection to `addr` trusting `ca`, and an HTTP/1.1 connection over it. Returns
/// the certificate the server presented and a sender for requests on that connection.
async fn connect(
    addr: std::net::SocketAddr,
    ca: &Ca,
) -> (
    CertificateDer<'static>,
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
) {
    let config = tls_client_config(ca.issuer.der());
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls: TlsStream<TcpStream> = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first().cloned())
        .expect("a server certificate")
        .into_owned();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 over TLS");
    tokio::spawn(connection);
    (presented, sender)
}

async fn get_on(sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) -> StatusCode {
    sender.ready().await.expect("connection still open");
    let req = Request::get(path(TWILIO_ID))
        .header("host", "localhost")
        .header("authorization", format!("Bearer {TOKEN_A}"))
        .body(Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("answer");
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    status
}

#[tokio::test]
async fn the_listener_certificate_rotates_without_dropping_connections() {
    let ca = Ca::new("rotation CA");
    let (first, second) = (ca.server(1001), ca.server(1002));
    let dir = TempDir::new("cert-rotation");
    let cert_path = dir.write("tls.crt", &first.cert_pem);
    let key_path = dir.write("tls.key", &first.key_pem);
    let mock = MockVapi::start().await;
    let proxy = Proxy::start_with(
        Config::from_toml(&format!(
            "listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"{}\"\n[tls]\ncert_path = {}\nkey_path = {}\n",
            mock.url(),
            toml_path(&cert_path),
            toml_path(&key_path)
        ))
        .expect("config"),
    )
    .await;

    let (presented, mut established) = connect(proxy.addr, &ca).await;
    assert_eq!(presented, first.der, "serial 1001 before the rotation");
    assert_eq!(get_on(&mut established).await, StatusCode::OK);

    // cert-manager writes the renewed pair; SIGHUP runs this.
    dir.write("tls.crt", &second.cert_pem);
    dir.write("tls.key", &second.key_pem);
    let reloaded = proxy
        .state
        .certificates
        .reload()
        .expect("the new pair loads");
    assert_eq!(reloaded, ["tls.cert_path"]);
    let (presented, mut fresh) = connect(proxy.addr, &ca).await;
    assert_eq!(presented, second.der, "serial 1002 on a new handshake");
    assert_eq!(get_on(&mut fresh).await, StatusCode::OK);
    assert_eq!(
        get_on(&mut established).await,
        StatusCode::OK,
        "the connection made before the rotation goes on"
    );

    // A bad file is refused and the running certificate stays.
    dir.write("tls.crt", "not a certificate\n");
    assert!(proxy.state.certificates.reload().is_err());
    reload_certificates(&proxy.state); // logs the refusal, changes nothing
    let (presented, _) = connect(proxy.addr, &ca).await;
    assert_eq!(presented, second.der, "unreadable file: serial 1002 stays");
    // So is a certificate whose key does not match.
    dir.write("tls.crt", &first.cert_pem);
    dir.write("tls.key", &second.key_pem);
    let error = proxy
        .state
        .certificates
        .reload()
        .expect_err("mismatched pair");
    assert!(error.to_string().contains("tls.cert_path"), "{error}");
    let (presented, _) = connect(proxy.addr, &ca).await;
    assert_eq!(presented, second.der, "mismatched pair: serial 1002 stays");
}

#[tokio::test]
async fn the_upstream_ca_file_is_read_again_on_reload() {
    let upstream_ca = Ca::new("upstream CA");
    let other_ca = Ca::new("some other CA");
    let leaf = upstream_ca.server(7);
    let mock = MockVapi::builder()
        .tls(&leaf.cert_pem, &leaf.key_pem)
        .start()
        .await;
    let dir = TempDir::new("upstream-ca-rotation");
    let ca_path = dir.write("ca.pem", other_ca.pem());
    let proxy = Proxy::start(
        &format!("https://localhost:{}", mock.addr().port()),
        &format!(
            "[upstream]\nca_path = {}\n[cache]\nttl_secs = 0\n",
            toml_path(&ca_path)
        ),
    )
    .await;
    let untrusted = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(untrusted.status, StatusCode::BAD_GATEWAY);
    assert_eq!(mock.hits(), 0);

    dir.write("ca.pem", upstream_ca.pem());
    reload_certificates(&proxy.state);
    let trusted = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(trusted.status, StatusCode::OK, "{}", trusted.text());
    assert_eq!(mock.hits(), 1);
}

#[tokio::test]
async fn a_client_certificate_goes_to_an_upstream_that_demands_one() {
    let ca = Ca::new("internal CA");
    let stranger = Ca::new("stranger CA");
    let server = ca.server(1);
    let mock = MockVapi::builder()
        .tls(&server.cert_pem, &server.key_pem)
        .client_ca(ca.pem())
        .start()
        .await;
    let upstream = format!("https://localhost:{}", mock.addr().port());
    let dir = TempDir::new("upstream-mtls");
    let ca_path = dir.write("ca.pem", ca.pem());

    // Without a client certificate the upstream refuses the handshake: a 502, nothing crossed.
    let anonymous = Proxy::start(
        &upstream,
        &format!("[upstream]\nca_path = {}\n", toml_path(&ca_path)),
    )
    .await;
    let refused = get(&anonymous, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    assert_eq!(mock.hits(), 0);

    // With one the upstream does not trust, likewise; rotated to a trusted one, it works.
    let untrusted = stranger.client(2);
    let cert_path = dir.write("client.crt", &untrusted.cert_pem);
    let key_path = dir.write("client.key", &untrusted.key_pem);
    let proxy = Proxy::start(
        &upstream,
        &format!(
            "[upstream]\nca_path = {}\nclient_cert_path = {}\nclient_key_path = {}\n\
             [cache]\nttl_secs = 0\n",
            toml_path(&ca_path),
            toml_path(&cert_path),
            toml_path(&key_path)
        ),
    )
    .await;
    let refused = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    assert_eq!(mock.hits(), 0);

    let trusted = ca.client(3);
    dir.write("client.crt", &trusted.cert_pem);
    dir.write("client.key", &trusted.key_pem);
    let reloaded = proxy
        .state
        .certificates
        .reload()
        .expect("the new pair loads");
    assert!(
        reloaded.contains(&"upstream.client_cert_path"),
        "{reloaded:?}"
    );
    let ok = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(mock.hits(), 1);
}

#[tokio::test]
async fn a_client_certificate_needs_its_key_and_a_usable_pair() {
    let err = Config::from_toml("[upstream]\nclient_cert_path = \"/c.pem\"\n")
        .expect_err("a certificate without a key")
        .to_string();
    assert!(err.contains("upstream.client_key_path"), "{err}");
    let ca = Ca::new("pair CA");
    let (a, b) = (ca.client(1), ca.client(2));
    let dir = TempDir::new("upstream-mtls-pair");
    let config = Config::from_toml(&format!(
        "listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nclient_cert_path = {}\nclient_key_path = {}\n",
        toml_path(&dir.write("a.crt", &a.cert_pem)),
        toml_path(&dir.write("b.key", &b.key_pem)),
    ))
    .expect("the settings parse");
    match phonegate::server::Server::bind(config).await {
        Ok(_) => panic!("a mismatched client pair was accepted"),
        Err(error) => assert!(
            error.to_string().contains("upstream.client_cert_path"),
            "{error}"
        ),
    }
}

//! rustls set-up for both sides, from files that a reload reads again: the listener's certificate
//! (with ALPN for HTTP/2), and for the upstream the trust store and an optional client
//! certificate.
//!
//! Each is held behind an `ArcSwap` that rustls consults per handshake (a certificate resolver, a
//! verifier delegating to the current trust store, a client-certificate resolver), so
//! [`Certificates::reload`] changes what new handshakes use while established connections go on
//! with what they negotiated. A reload reads and checks every file before it swaps anything: a
//! bad file leaves all of them as they were.
//!
//! The ring provider is passed explicitly instead of relying on a process-wide default, so the
//! library works the same whichever other rustls users share the process.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::ResolvesClientCert;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::StartupConfig;

/// A TLS file or setting that could not be used; start-up treats it as bad configuration.
#[derive(Debug)]
pub struct TlsError {
    /// The setting the problem belongs to (`tls.cert_path`, `upstream.ca_path`, ...).
    pub key: &'static str,
    /// What went wrong; names the file, never its contents.
    pub message: String,
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid setting {}: {}", self.key, self.message)
    }
}

impl std::error::Error for TlsError {}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError {
            key,
            message: format!("cannot read certificates from {}: {e}", path.display()),
        })?;
    if certs.is_empty() {
        return Err(TlsError {
            key,
            message: format!("{} holds no PEM certificate", path.display()),
        });
    }
    Ok(certs)
}

/// Where a certificate and its key are read from, and the settings that name them.
#[derive(Debug, Clone)]
struct KeyPair {
    cert_path: PathBuf,
    key_path: PathBuf,
    cert_key: &'static str,
    key_key: &'static str,
}

impl KeyPair {
    fn load(&self, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
        let certs = read_certs(self.cert_key, &self.cert_path)?;
        let key = PrivateKeyDer::from_pem_file(&self.key_path).map_err(|e| TlsError {
            key: self.key_key,
            message: format!(
                "cannot read a private key from {}: {e}",
                self.key_path.display()
            ),
        })?;
        let certified = CertifiedKey::from_der(certs, key, provider).map_err(|e| TlsError {
            key: self.cert_key,
            message: format!("certificate and key do not form a usable pair: {e}"),
        })?;
        Ok(Arc::new(certified))
    }
}

/// The certificates phonegate serves and presents, and the CAs it trusts upstream, as loaded
/// from their files; one per process, in the shared state.
#[derive(Debug)]
pub struct Certificates {
    provider: Arc<CryptoProvider>,
    listener: Option<(KeyPair, Arc<ListenerCert>)>,
    ca_path: Option<PathBuf>,
    trust: Arc<UpstreamTrust>,
    client: Option<(KeyPair, Arc<ClientCert>)>,
}

impl Certificates {
    /// Reads every file the settings name (`tls.*`, `upstream.ca_path`,
    /// `upstream.client_cert_path`/`client_key_path`).
    pub fn load(startup: &StartupConfig) -> Result<Self, TlsError> {
        let provider = provider();
        let listener = match &startup.tls {
            Some(tls) => {
                let pair = KeyPair {
                    cert_path: tls.cert_path.clone(),
                    key_path: tls.key_path.clone(),
                    cert_key: "tls.cert_path",
                    key_key: "tls.key_path",
                };
                let current = pair.load(&provider)?;
                Some((pair, Arc::new(ListenerCert(ArcSwap::new(current)))))
            }
            None => None,
        };
        let upstream = &startup.upstream;
        let ca_path = upstream.ca_path.clone();
        let trust = Arc::new(UpstreamTrust(ArcSwap::new(verifier(
            ca_path.as_deref(),
            &provider,
        )?)));
        let client = match &upstream.client_cert {
            Some(files) => {
                let pair = KeyPair {
                    cert_path: files.cert_path.clone(),
                    key_path: files.key_path.clone(),
                    cert_key: "upstream.client_cert_path",
                    key_key: "upstream.client_key_path",
                };
                let current = pair.load(&provider)?;
                Some((
                    pair,
                    Arc::new(ClientCert(ArcSwapOption::new(Some(current)))),
                ))
            }
            None => None,
        };
        Ok(Certificates {
            provider,
            listener,
            ca_path,
            trust,
            client,
        })
    }

    /// Reads every file again and, if all of them are usable, makes new handshakes use them;
    /// returns the settings whose files were read. On error nothing changed.
    pub fn reload(&self) -> Result<Vec<&'static str>, TlsError> {
        let listener = match &self.listener {
            Some((pair, _)) => Some(pair.load(&self.provider)?),
            None => None,
        };
        let trust = verifier(self.ca_path.as_deref(), &self.provider)?;
        let client = match &self.client {
            Some((pair, _)) => Some(pair.load(&self.provider)?),
            None => None,
        };
        let mut reloaded = Vec::new();
        if let (Some((_, current)), Some(new)) = (&self.listener, listener) {
            current.0.store(new);
            reloaded.push("tls.cert_path");
        }
        self.trust.0.store(trust);
        if self.ca_path.is_some() {
            reloaded.push("upstream.ca_path");
        }
        if let (Some((_, current)), Some(new)) = (&self.client, client) {
            current.0.store(Some(new));
            reloaded.push("upstream.client_cert_path");
        }
        Ok(reloaded)
    }

    /// The listener's rustls config (ALPN `h2` then `http/1.1`); `None` without `tls.*`.
    pub(crate) fn server_config(&self) -> Result<Option<rustls::ServerConfig>, TlsError> {
        let Some((_, resolver)) = self.listener.as_ref() else {
            return Ok(None);
        };
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError {
                key: "tls.cert_path",
                message: format!("no usable TLS protocol versions: {e}"),
            })?;
        let mut config = builder
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(config))
    }

    /// The upstream client's rustls config: the bundled web roots plus `upstream.ca_path`, and
    /// the client certificate when one is set.
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError {
                key: "upstream.url",
                message: format!("no usable TLS protocol versions: {e}"),
            })?
            .dangerous()
            .with_custom_certificate_verifier(
                Arc::clone(&self.trust) as Arc<dyn ServerCertVerifier>
            );
        Ok(match &self.client {
            Some((_, resolver)) => builder
                .with_client_cert_resolver(Arc::clone(resolver) as Arc<dyn ResolvesClientCert>),
            None => builder.with_no_client_auth(),
        })
    }
}

/// The listener's current certificate.
#[derive(Debug)]
struct ListenerCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for ListenerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The certificate presented to the upstream.
#[derive(Debug)]
struct ClientCert(ArcSwapOption<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.load_full()
    }

    fn has_certs(&self) -> bool {
        self.0.load().is_some()
    }
}

/// webpki verification of the upstream against the current trust store. Only the store is
/// swapped; the checks are webpki's own.
#[derive(Debug)]
struct UpstreamTrust(ArcSwap<WebPkiServerVerifier>);

impl ServerCertVerifier for UpstreamTrust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .load()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.load().supported_verify_schemes()
    }
}

/// The bundled web roots plus, optionally, extra CAs (an internal CA in front of a sidecar, or a
/// test CA).
fn verifier(
    extra_ca: Option<&Path>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        for cert in read_certs("upstream.ca_path", path)? {
            roots.add(cert).map_err(|e| TlsError {
                key: "upstream.ca_path",
                message: format!("{} holds an unusable CA certificate: {e}", path.display()),
            })?;
        }
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| TlsError {
            key: "upstream.ca_path",
            message: format!("cannot verify the upstream with these roots: {e}"),
        })
}

//! rustls set-up for both sides: the listener's certificate (with ALPN for HTTP/2) and the trust
//! store for the upstream.
//!
//! The ring provider is passed explicitly instead of relying on a process-wide default, so the
//! library works the same whichever other rustls users share the process.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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

/// The listener's rustls config: certificate chain and key from PEM files, ALPN `h2` then
/// `http/1.1`.
pub(crate) fn server_config(
    cert_path: &Path,
    key_path: &Path,
) -> Result<rustls::ServerConfig, TlsError> {
    let certs = read_certs("tls.cert_path", cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError {
        key: "tls.key_path",
        message: format!("cannot read a private key from {}: {e}", key_path.display()),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| TlsError {
            key: "tls.cert_path",
            message: format!("certificate and key do not form a usable pair: {e}"),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The upstream client's rustls config: the bundled web roots plus, optionally, extra CAs (an
/// internal CA in front of a sidecar, or a test CA).
pub(crate) fn client_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
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
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            key: "upstream.url",
            message: format!("no usable TLS protocol versions: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

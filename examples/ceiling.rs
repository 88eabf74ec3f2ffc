//! The ceiling for any hyper-based service on this machine: a bare hyper server that answers every
//! request with the same fixed JSON body, doing nothing else. `benches/compare.sh` runs it beside
//! phonegate so their throughput can be compared as a ratio on the same machine, in the same run.
//!
//! HTTP/1.1 and h2c (prior knowledge) on a plain port; with `--tls-cert` and `--tls-key`, TLS with
//! ALPN `h2` then `http/1.1`, as phonegate's listener (rustls, ring provider).
//!
//! ```text
//! cargo run --release --example ceiling -- --listen 127.0.0.1:8099 --bytes 2931 [--workers N]
//!     [--tls-cert cert.pem --tls-key key.pem]
//! ```
//!
//! `--workers` is the number of tokio worker threads (default: one per core the process may use).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let mut listen: SocketAddr = "127.0.0.1:8099".parse()?;
    let mut size = 2931usize;
    let mut workers = 0usize;
    let mut cert: Option<PathBuf> = None;
    let mut key: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?.parse()?,
            "--bytes" => size = args.next().ok_or("--bytes needs a number")?.parse()?,
            "--workers" => workers = args.next().ok_or("--workers needs a number")?.parse()?,
            "--tls-cert" => cert = Some(args.next().ok_or("--tls-cert needs a path")?.into()),
            "--tls-key" => key = Some(args.next().ok_or("--tls-key needs a path")?.into()),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(acceptor(&cert, &key)?),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        runtime.worker_threads(workers);
    }
    runtime
        .enable_all()
        .build()?
        .block_on(serve(listen, size, tls))
}

fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, Error> {
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn serve(listen: SocketAddr, size: usize, tls: Option<TlsAcceptor>) -> Result<(), Error> {
    // A JSON string padded to the requested size.
    let body = Bytes::from(format!("\"{}\"", "x".repeat(size.saturating_sub(2))));
    let listener = TcpListener::bind(listen).await?;
    eprintln!(
        "ceiling listening on {}://{} ({} byte body)",
        if tls.is_some() { "https" } else { "http" },
        listener.local_addr()?,
        body.len()
    );
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req| {
                let mut response = Response::new(Full::new(body.clone()));
                response
                    .headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/json"));
                async move { Ok::<_, Infallible>(response) }
            });
            match tls {
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(tls) => {
                    let Ok(stream) = tls.accept(stream).await else {
                        return;
                    };
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

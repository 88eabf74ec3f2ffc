//! [`MockVapi`]: binding (plain or TLS), the accept loop and connections, counting and recording
//! every request, and handing it to the current [`Behavior`] or the API.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::behaviours::{Answer, Behavior};
use crate::fixtures::{self, FIXTURE_IDS};
use crate::lock;
use crate::routes::{Api, MockBody, nest_error};

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    /// Path and query exactly as received, e.g. `/phone-number?limit=2`.
    pub path_and_query: String,
    /// Path only, e.g. `/phone-number`.
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
    /// The request body (empty for GET; truncated bodies over 8 MiB are not recorded).
    pub body: Bytes,
}

/// Builder for [`MockVapi`].
#[derive(Debug, Clone)]
pub struct MockBuilder {
    addr: SocketAddr,
    behavior: Behavior,
    valid_tokens: Option<Vec<String>>,
    tls: Option<(Vec<u8>, Vec<u8>)>,
    client_ca: Option<Vec<u8>>,
    record_limit: usize,
}

impl Default for MockBuilder {
    fn default() -> Self {
        MockBuilder {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            behavior: Behavior::Normal,
            valid_tokens: None,
            tls: None,
            client_ca: None,
            record_limit: 10_000,
        }
    }
}

impl MockBuilder {
    /// Listen address (default `127.0.0.1:0`, an ephemeral port).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Initial behavior (default [`Behavior::Normal`]).
    pub fn behavior(mut self, behavior: Behavior) -> Self {
        self.behavior = behavior;
        self
    }

    /// Accept only these bearer tokens (default: any token except `invalid-key`).
    pub fn valid_tokens<I, S>(mut self, tokens: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.valid_tokens = Some(tokens.into_iter().map(Into::into).collect());
        self
    }

    /// Serve HTTPS with this PEM certificate chain and PEM private key
    /// (ALPN `h2` and `http/1.1`).
    pub fn tls(mut self, cert_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) -> Self {
        self.tls = Some((cert_pem.as_ref().to_vec(), key_pem.as_ref().to_vec()));
        self
    }

    /// With [`MockBuilder::tls`]: demand a client certificate issued by this PEM CA (mutual TLS);
    /// a handshake without one fails.
    pub fn client_ca(mut self, ca_pem: impl AsRef<[u8]>) -> Self {
        self.client_ca = Some(ca_pem.as_ref().to_vec());
        self
    }

    /// How many recent requests [`MockVapi::requests`] keeps (default 10 000; counters are
    /// not limited).
    pub fn record_limit(mut self, limit: usize) -> Self {
        self.record_limit = limit;
        self
    }

    /// Binds and starts serving. Panics if the address cannot be bound or the TLS material
    /// is invalid; see [`MockBuilder::try_start`].
    pub async fn start(self) -> MockVapi {
        match self.try_start().await {
            Ok(mock) => mock,
            Err(e) => panic!("mock Vapi failed to start: {e}"),
        }
    }

    /// Binds and starts serving.
    pub async fn try_start(self) -> io::Result<MockVapi> {
        let acceptor = match &self.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key, self.client_ca.as_deref())?),
            None => None,
        };
        let listener = TcpListener::bind(self.addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            behavior: Mutex::new((self.behavior, 0)),
            hits: AtomicUsize::new(0),
            hits_by_path: Mutex::new(HashMap::new()),
            requests: Mutex::new(VecDeque::new()),
            record_limit: self.record_limit,
            api: Api::new(self.valid_tokens),
        });
        let tls = acceptor.is_some();
        let task = tokio::spawn(accept_loop(listener, acceptor, state.clone()));
        Ok(MockVapi {
            inner: Arc::new(Inner {
                state,
                addr,
                tls,
                task: Mutex::new(Some(task)),
            }),
        })
    }
}

fn tls_acceptor(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca: Option<&[u8]>,
) -> io::Result<tokio_rustls::TlsAcceptor> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"))
    };
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("bad certificate PEM", &e))?;
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no certificate in PEM",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid("bad key PEM", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", &e))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(pem) {
                let ca = ca.map_err(|e| invalid("bad client CA PEM", &e))?;
                roots.add(ca).map_err(|e| invalid("client CA", &e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| invalid("client CA", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid("certificate/key", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Handle to a running mock. Cheap to clone; the server stops when the last handle is dropped.
#[derive(Clone)]
pub struct MockVapi {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<State>,
    addr: SocketAddr,
    tls: bool,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for MockVapi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockVapi")
            .field("url", &self.url())
            .field("hits", &self.hits())
            .finish()
    }
}

impl MockVapi {
    pub fn builder() -> MockBuilder {
        MockBuilder::default()
    }

    /// Plain HTTP on `127.0.0.1:0`, [`Behavior::Normal`].
    pub async fn start() -> MockVapi {
        MockBuilder::default().start().await
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT` (or `https://` for a TLS mock), no trailing slash.
    pub fn url(&self) -> String {
        let scheme = if self.inner.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.inner.addr)
    }

    /// Total requests received (any path, any answer).
    pub fn hits(&self) -> usize {
        self.inner.state.hits.load(Ordering::SeqCst)
    }

    /// Requests received for exactly this path (query ignored), e.g. `/phone-number/<id>`.
    pub fn hits_for(&self, path: &str) -> usize {
        lock(&self.inner.state.hits_by_path)
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Zeroes the counters and forgets the recorded requests.
    pub fn reset_hits(&self) {
        let state = &self.inner.state;
        // Hold the path map while zeroing so counters stay consistent with each other.
        let mut by_path = lock(&state.hits_by_path);
        state.hits.store(0, Ordering::SeqCst);
        by_path.clear();
        lock(&state.requests).clear();
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.inner.state.requests).back().cloned()
    }

    /// Recorded requests, oldest first (the most recent `record_limit` ones).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.state.requests).iter().cloned().collect()
    }

    /// Switches the behavior for the following requests (restarts a [`Behavior::Sequence`]).
    pub fn set_behavior(&self, behavior: Behavior) {
        *lock(&self.inner.state.behavior) = (behavior, 0);
    }

    pub fn behavior(&self) -> Behavior {
        lock(&self.inner.state.behavior).0.clone()
    }

    /// The current stored object with that id (reflects POST/PATCH/DELETE).
    pub fn object(&self, id: &str) -> Option<Value> {
        self.inner.state.api.object(id)
    }

    /// Restores the five fixtures as the stored objects (undoes POST/PATCH/DELETE).
    pub fn reset_objects(&self) {
        self.inner.state.api.reset_objects();
    }

    /// `(provider, id)` of the five fixtures.
    pub fn ids() -> &'static [(&'static str, &'static str)] {
        FIXTURE_IDS
    }

    /// The fixture of that provider (`twilio`, `vonage`, `vapi`, `telnyx`, `byo-phone-number`
    /// or `byo`). Panics on another name; see [`MockVapi::try_fixture`].
    pub fn fixture(provider: &str) -> Value {
        fixtures::fixture(provider)
    }

    pub fn try_fixture(provider: &str) -> Option<Value> {
        fixtures::try_fixture(provider)
    }

    /// The fixture with that id (case-insensitive).
    pub fn fixture_by_id(id: &str) -> Option<Value> {
        fixtures::fixture_by_id(id)
    }

    /// All five fixtures, in [`FIXTURE_IDS`] order.
    pub fn fixtures() -> Vec<Value> {
        fixtures::all()
    }

    /// Stops the server, closes the listener and all open connections, and waits for it.
    pub async fn shutdown(self) {
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

struct State {
    /// Current behavior and how many requests it has answered.
    behavior: Mutex<(Behavior, usize)>,
    hits: AtomicUsize,
    hits_by_path: Mutex<HashMap<String, usize>>,
    requests: Mutex<VecDeque<RecordedRequest>>,
    record_limit: usize,
    api: Api,
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
) {
    // Connection tasks live in this set: aborting the accept task drops the set, which aborts
    // every connection, so no task keeps a socket open after shutdown.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, acceptor.clone(), state.clone()));
                }
                Err(_) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    match acceptor {
        None => {
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
            if let Ok(Ok(tls)) = handshake {
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            }
        }
    }
}

const MAX_REQUEST_BODY: usize = 8 * 1024 * 1024;

async fn handle(state: &State, req: Request<Incoming>) -> Response<MockBody> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| path.clone());
    let query = parts.uri.query().unwrap_or("").to_owned();

    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(e),
    };

    // Count and record before answering, whatever the answer.
    {
        let mut by_path = lock(&state.hits_by_path);
        *by_path.entry(path.clone()).or_insert(0) += 1;
        state.hits.fetch_add(1, Ordering::SeqCst);
    }
    if state.record_limit > 0 {
        let mut requests = lock(&state.requests);
        while requests.len() >= state.record_limit {
            requests.pop_front();
        }
        requests.push_back(RecordedRequest {
            method: parts.method.clone(),
            path_and_query,
            path: path.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body: body.as_ref().map(Bytes::clone).unwrap_or_default(),
        });
    }

    let behavior = {
        let mut guard = lock(&state.behavior);
        let served = guard.1;
        guard.1 = served.saturating_add(1);
        guard.0.resolve(served)
    };

    let Ok(body) = body else {
        return nest_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!("request entity too large"),
        );
    };

    match behavior.answer(&path) {
        Answer::Fault(resp) => resp,
        Answer::Api { delay } => {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            state
                .api
                .route(&parts.method, &parts.headers, &path, &query, &body)
        }
    }
}

//! A mock of Vapi's phone-number REST API, shared by tests, benchmarks and the README demo.
//!
//! The mock is a real HTTP server (hyper 1, HTTP/1.1 and HTTP/2, optionally HTTPS through
//! rustls with ALPN `h2` + `http/1.1`) bound to a local port. It answers like
//! `https://api.vapi.ai` would:
//!
//! * `GET /phone-number/{id}`: one phone-number object (ids compared case-insensitively),
//!   else the NestJS-shaped 404 `{"message":"Phone number not found",...}`.
//! * `GET /phone-number?limit=`: a bare JSON array (limit 0..=1000, default 100).
//! * `GET /v2/phone-number?page=&limit=`: `{"results": [...], "metadata": {...}}`.
//! * `POST /phone-number`: 201, a fixture of the posted `provider` with the posted fields merged
//!   over it and a fresh id (so secrets the client sent come back).
//! * `PATCH /phone-number/{id}`: 200, the object with the patch merged in (top-level fields and
//!   `server` fields are replaced whole, like the real API). The change is kept.
//! * `DELETE /phone-number/{id}`: 200, the whole deleted object, secrets included.
//! * A missing bearer token, or the literal token `invalid-key` (or, with
//!   [`MockBuilder::valid_tokens`], any token not in that list) gets Vapi's real 401 body.
//!
//! The data comes from five fixtures in `tests/fixtures/phone-numbers/`, one per provider
//! variant, compiled in with `include_str!`. The mock never redacts anything: every secret in
//! the fixtures is a string containing [`PLANTED`], and no non-secret value contains it, so a
//! test can assert that the marker never appears in what a proxy returns or logs.
//! [`SECRET_POINTERS`], [`provider_secret_pointers`], [`SECRET_URL_POINTERS`] and
//! [`KEPT_POINTERS`] list where the secrets (and the values that must survive) are.
//!
//! Failure modes are switched with [`Behavior`] (at build time or at run time with
//! [`MockVapi::set_behavior`]): NestJS error statuses, Cloudflare-like HTML pages, garbage,
//! oversized or deeply nested JSON, delays, a connection closed mid-body, 429 with
//! `Retry-After`, and sequences of those.
//!
//! Every request is counted ([`MockVapi::hits`], [`MockVapi::hits_for`]) and recorded
//! ([`MockVapi::requests`]). The server task is aborted when the last [`MockVapi`] handle is
//! dropped, or by [`MockVapi::shutdown`].
//!
//! This file does not depend on the `phonegate` crate; include it with
//! `#[path = "support/mock_vapi.rs"] mod mock_vapi;`.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Map, Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Marker contained in every planted secret value of the fixtures, and in no other value.
pub const PLANTED: &str = "PLANTED";

/// The token the mock rejects by default (any other bearer token is accepted).
pub const INVALID_TOKEN: &str = "invalid-key";

/// Vapi's real 401 body.
pub const UNAUTHORIZED_BODY: &str = r#"{"message":"Invalid Key. Hot tip, you may be using the private key instead of the public key, or vice versa.","error":"Unauthorized","statusCode":401}"#;

/// Vapi's 404 body for an unknown phone-number id.
pub const NOT_FOUND_BODY: &str =
    r#"{"message":"Phone number not found","error":"Not Found","statusCode":404}"#;

/// Content type of every JSON answer.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// Content type of the Cloudflare-like HTML error pages.
pub const HTML_CONTENT_TYPE: &str = "text/html; charset=UTF-8";

pub const TWILIO_ID: &str = "3b1f6a52-8c7e-4d19-a2f4-6e0b9c3d7a15";
pub const VONAGE_ID: &str = "7c4e2d90-1a5b-4f3c-8e67-2d9a0b4f6c38";
pub const VAPI_ID: &str = "a9d3e1f4-6b2c-4a87-b5d0-9e1c3f7a2b64";
pub const TELNYX_ID: &str = "d2f8b4a6-3e9c-4b1d-9a75-4c6e8f0a1d93";
pub const BYO_ID: &str = "e5a7c3b9-0d4f-4e62-8b1a-7f3d5c9e2a06";

/// `(provider, id)` of the five fixtures, in a fixed order.
pub const FIXTURE_IDS: &[(&str, &str)] = &[
    ("twilio", TWILIO_ID),
    ("vonage", VONAGE_ID),
    ("vapi", VAPI_ID),
    ("telnyx", TELNYX_ID),
    ("byo-phone-number", BYO_ID),
];

const FIXTURE_SOURCES: &[(&str, &str)] = &[
    (
        "twilio",
        include_str!("../fixtures/phone-numbers/twilio.json"),
    ),
    (
        "vonage",
        include_str!("../fixtures/phone-numbers/vonage.json"),
    ),
    ("vapi", include_str!("../fixtures/phone-numbers/vapi.json")),
    (
        "telnyx",
        include_str!("../fixtures/phone-numbers/telnyx.json"),
    ),
    (
        "byo-phone-number",
        include_str!("../fixtures/phone-numbers/byo.json"),
    ),
];

/// JSON pointers (RFC 6901) of values that are wholly secret, present in every fixture.
pub const SECRET_POINTERS: &[&str] = &[
    "/server/headers/Authorization",
    "/server/headers/X-Api-Key",
    "/server/headers/X-Vapi-Secret",
    "/server/secret",
    "/serverUrlSecret",
    "/fallbackDestination/sipHeaders/X-Auth-Token",
    "/fallbackDestination/sipHeaders/X-Customer-Key",
    "/hooks/0/do/0/destination/sipHeaders/X-Screening-Token",
    "/hooks/1/do/destination/sipHeaders/X-Trunk-Password",
    "/hooks/1/do/destination/sipHeaders/X-Routing-Key",
];

/// JSON pointers of URL strings, present in every fixture, that embed a secret (userinfo
/// password and/or `token`, `sig`, `X-Amz-Signature`, `X-Amz-Credential` query parameters).
/// Their scheme, host and path are not secret.
pub const SECRET_URL_POINTERS: &[&str] = &[
    "/server/url",
    "/serverUrl",
    "/statusWebhookUrl",
    "/fallbackDestination/transferPlan/holdAudioUrl",
    "/fallbackDestination/transferPlan/transferCompleteAudioUrl",
];

/// JSON pointers of non-secret values, present in every fixture, that must survive redaction.
pub const KEPT_POINTERS: &[&str] = &[
    "/id",
    "/orgId",
    "/provider",
    "/createdAt",
    "/updatedAt",
    "/status",
    "/name",
    "/number",
    "/assistantId",
    "/isServerUrlSecretSet",
    "/server/credentialId",
    "/server/timeoutSeconds",
    "/server/encryptedPaths/0",
    "/server/backoffPlan/maxRetries",
    "/fallbackDestination/type",
    "/fallbackDestination/sipUri",
    "/fallbackDestination/message",
    "/fallbackDestination/transferPlan/mode",
    "/hooks/0/on",
    "/hooks/0/do/0/destination/sipUri",
    "/hooks/0/do/1/exact",
    "/hooks/1/on",
    "/hooks/1/do/destination/sipUri",
    "/hooks/1/do/destination/callerId",
    "/hooks/1/do/destination/message",
];

/// Provider-specific wholly-secret JSON pointers (in addition to [`SECRET_POINTERS`]).
/// Accepts `byo` as an alias of `byo-phone-number`; unknown providers give an empty list.
pub fn provider_secret_pointers(provider: &str) -> &'static [&'static str] {
    match canonical_provider(provider) {
        Some("twilio") => &[
            "/twilioAuthToken",
            "/twilioApiKey",
            "/twilioApiSecret",
            "/webhookPrivateKey",
        ],
        Some("vonage") => &["/vonageApiSecret", "/vonageApplicationPrivateKey"],
        Some("vapi") => &[
            "/authentication/username",
            "/authentication/password",
            "/webhookSigningSecret",
        ],
        Some("telnyx") => &["/telnyxApiToken"],
        Some("byo-phone-number") => &["/someNewApiKey", "/carrierPassword"],
        _ => &[],
    }
}

/// Provider-specific non-secret JSON pointers (in addition to [`KEPT_POINTERS`]).
pub fn provider_kept_pointers(provider: &str) -> &'static [&'static str] {
    match canonical_provider(provider) {
        Some("twilio") => &[
            "/twilioAccountSid",
            "/credentialId",
            "/smsEnabled",
            "/stripeSubscriptionId",
            "/stripeSubscriptionStatus",
        ],
        Some("vonage") => &["/credentialId"],
        Some("vapi") => &["/sipUri", "/authentication/realm", "/numberDesiredAreaCode"],
        Some("telnyx") => &["/credentialId"],
        Some("byo-phone-number") => &["/credentialId", "/numberE164CheckEnabled"],
        _ => &[],
    }
}

fn canonical_provider(provider: &str) -> Option<&'static str> {
    let p = if provider == "byo" {
        "byo-phone-number"
    } else {
        provider
    };
    FIXTURE_IDS
        .iter()
        .find(|(name, _)| *name == p)
        .map(|(name, _)| *name)
}

fn parsed_fixtures() -> &'static [(&'static str, Value)] {
    static FIXTURES: OnceLock<Vec<(&'static str, Value)>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        FIXTURE_SOURCES
            .iter()
            .map(|(provider, src)| {
                // The sources are compiled in and checked by the self-test: a parse failure
                // here is a broken checkout, not a runtime condition.
                let value: Value = serde_json::from_str(src)
                    .unwrap_or_else(|e| panic!("fixture {provider}.json is not valid JSON: {e}"));
                (*provider, value)
            })
            .collect()
    })
}

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

/// How the mock answers. Failure behaviors answer every request (any path, any token);
/// `Normal` and `Delay` check the token and route like the real API.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Behavior {
    /// Like the real API.
    #[default]
    Normal,
    /// That status with a Vapi-like NestJS JSON error body
    /// (`{"message":..,"error":..,"statusCode":..}`). Codes outside 100..=999 become 500.
    Status(u16),
    /// A Cloudflare-like HTML error page with that status, `content-type: text/html`.
    HtmlError(u16),
    /// 200 with a body that is not JSON (and not UTF-8), `content-type: application/json`.
    Garbage,
    /// 200 with a valid JSON object of exactly N bytes: the requested fixture (twilio for
    /// unknown ids/paths) with a `padding` field, or a bare padded object when N is smaller.
    Oversized(usize),
    /// 200 with valid JSON nested N levels deep (`{"d":{"d":...{}}}`).
    Deep(usize),
    /// The normal answer, after a delay.
    Delay(Duration),
    /// 200 with a `content-length` of the full normal body, writes only half of it, then
    /// aborts the connection (HTTP/2: resets the stream).
    CloseMidBody,
    /// 429 with a NestJS body and, if `Some`, that `Retry-After` header value.
    RateLimited { retry_after: Option<String> },
    /// An arbitrary answer (invalid header names/values are skipped).
    Raw {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// The k-th request since this behavior was set uses element k; the last one repeats.
    /// An empty sequence is `Normal`.
    Sequence(Vec<Behavior>),
}

/// Builder for [`MockVapi`].
#[derive(Debug, Clone)]
pub struct MockBuilder {
    addr: SocketAddr,
    behavior: Behavior,
    valid_tokens: Option<Vec<String>>,
    tls: Option<(Vec<u8>, Vec<u8>)>,
    record_limit: usize,
}

impl Default for MockBuilder {
    fn default() -> Self {
        MockBuilder {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            behavior: Behavior::Normal,
            valid_tokens: None,
            tls: None,
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
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        let listener = TcpListener::bind(self.addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            behavior: Mutex::new((self.behavior, 0)),
            valid_tokens: self.valid_tokens,
            hits: AtomicUsize::new(0),
            hits_by_path: Mutex::new(HashMap::new()),
            requests: Mutex::new(VecDeque::new()),
            record_limit: self.record_limit,
            objects: Mutex::new(parsed_fixtures().iter().map(|(_, v)| v.clone()).collect()),
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

fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> io::Result<tokio_rustls::TlsAcceptor> {
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
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| invalid("TLS versions", &e))?
    .with_no_client_auth()
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
        lock(&self.inner.state.objects)
            .iter()
            .find(|o| id_matches(o, id))
            .cloned()
    }

    /// Restores the five fixtures as the stored objects (undoes POST/PATCH/DELETE).
    pub fn reset_objects(&self) {
        *lock(&self.inner.state.objects) =
            parsed_fixtures().iter().map(|(_, v)| v.clone()).collect();
    }

    /// `(provider, id)` of the five fixtures.
    pub fn ids() -> &'static [(&'static str, &'static str)] {
        FIXTURE_IDS
    }

    /// The fixture of that provider (`twilio`, `vonage`, `vapi`, `telnyx`, `byo-phone-number`
    /// or `byo`). Panics on another name; see [`MockVapi::try_fixture`].
    pub fn fixture(provider: &str) -> Value {
        match Self::try_fixture(provider) {
            Some(v) => v,
            None => panic!(
                "no fixture for provider {provider:?}; known: twilio, vonage, vapi, telnyx, byo-phone-number"
            ),
        }
    }

    pub fn try_fixture(provider: &str) -> Option<Value> {
        let provider = canonical_provider(provider)?;
        parsed_fixtures()
            .iter()
            .find(|(p, _)| *p == provider)
            .map(|(_, v)| v.clone())
    }

    /// The fixture with that id (case-insensitive).
    pub fn fixture_by_id(id: &str) -> Option<Value> {
        parsed_fixtures()
            .iter()
            .find(|(_, v)| id_matches(v, id))
            .map(|(_, v)| v.clone())
    }

    /// All five fixtures, in [`FIXTURE_IDS`] order.
    pub fn fixtures() -> Vec<Value> {
        parsed_fixtures().iter().map(|(_, v)| v.clone()).collect()
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
    valid_tokens: Option<Vec<String>>,
    hits: AtomicUsize,
    hits_by_path: Mutex<HashMap<String, usize>>,
    requests: Mutex<VecDeque<RecordedRequest>>,
    record_limit: usize,
    objects: Mutex<Vec<Value>>,
}

/// Locks, ignoring poisoning (a panicking test thread must not cascade into the server).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

type MockBody = UnsyncBoxBody<Bytes, io::Error>;

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
        resolve(&guard.0, served)
    };

    let body = match body {
        Ok(b) => b,
        Err(_) => {
            return nest_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!("request entity too large"),
            );
        }
    };

    match behavior {
        Behavior::Normal => route(state, &parts.method, &parts.headers, &path, &query, &body),
        Behavior::Delay(delay) => {
            tokio::time::sleep(delay).await;
            route(state, &parts.method, &parts.headers, &path, &query, &body)
        }
        Behavior::Status(code) => nest_error(status_or_500(code), default_message(code)),
        Behavior::HtmlError(code) => html_error(status_or_500(code)),
        Behavior::Garbage => {
            let garbage: &'static [u8] =
                b"<<mock-vapi garbage>> {\"id\": \"3b1f6a52\", \"number\": +1415\xff\xfe, oops";
            respond(
                StatusCode::OK,
                JSON_CONTENT_TYPE,
                Bytes::from_static(garbage),
            )
        }
        Behavior::Oversized(n) => {
            let base = fixture_for_path(&path).unwrap_or_else(|| MockVapi::fixture("twilio"));
            respond(
                StatusCode::OK,
                JSON_CONTENT_TYPE,
                Bytes::from(oversized(base, n)),
            )
        }
        Behavior::Deep(n) => respond(StatusCode::OK, JSON_CONTENT_TYPE, Bytes::from(deep(n))),
        Behavior::CloseMidBody => {
            let full = fixture_for_path(&path)
                .unwrap_or_else(|| MockVapi::fixture("twilio"))
                .to_string()
                .into_bytes();
            let half = Bytes::from(full[..full.len() / 2].to_vec());
            // Half the body, a pause (so hyper flushes the head and that half), then a body
            // error, which makes hyper abort the connection (HTTP/2: reset the stream).
            let first = futures_util::stream::iter([Ok::<_, io::Error>(Frame::data(half))]);
            let abort = futures_util::stream::once(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err::<Frame<Bytes>, _>(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "mock Vapi: closing mid-body",
                ))
            });
            let body = StreamBody::new(first.chain(abort)).boxed_unsync();
            let mut resp = Response::new(body);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(JSON_CONTENT_TYPE),
            );
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(full.len()));
            resp
        }
        Behavior::RateLimited { retry_after } => {
            let mut resp = nest_error(
                StatusCode::TOO_MANY_REQUESTS,
                json!("ThrottlerException: Too Many Requests"),
            );
            if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                resp.headers_mut().insert(header::RETRY_AFTER, value);
            }
            resp
        }
        Behavior::Raw {
            status,
            headers,
            body,
        } => {
            let mut resp = Response::new(full_body(body));
            *resp.status_mut() = status_or_500(status);
            for (name, value) in headers {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    resp.headers_mut().append(name, value);
                }
            }
            resp
        }
        // `resolve` never returns a sequence.
        Behavior::Sequence(_) => route(state, &parts.method, &parts.headers, &path, &query, &body),
    }
}

fn resolve(behavior: &Behavior, index: usize) -> Behavior {
    match behavior {
        Behavior::Sequence(items) => match items.get(index).or_else(|| items.last()) {
            Some(item) => resolve(item, index),
            None => Behavior::Normal,
        },
        other => other.clone(),
    }
}

fn route(
    state: &State,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    query: &str,
    body: &Bytes,
) -> Response<MockBody> {
    if !authorized(state, headers) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            Bytes::from_static(UNAUTHORIZED_BODY.as_bytes()),
        );
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let is_get = method == Method::GET || method == Method::HEAD;
    match segments.as_slice() {
        ["phone-number"] if is_get => list(state, query),
        ["phone-number"] if method == Method::POST => create(state, body),
        ["v2", "phone-number"] if is_get => list_v2(state, query),
        ["phone-number", id] if !id.is_empty() => {
            if is_get {
                match find_object(state, id) {
                    Some(obj) => json_value(StatusCode::OK, &obj),
                    None => not_found(),
                }
            } else if method == Method::PATCH {
                update(state, id, body)
            } else if method == Method::DELETE {
                let mut objects = lock(&state.objects);
                match objects.iter().position(|o| id_matches(o, id)) {
                    Some(i) => {
                        let obj = objects.remove(i);
                        drop(objects);
                        json_value(StatusCode::OK, &obj)
                    }
                    None => not_found(),
                }
            } else {
                cannot(method, path)
            }
        }
        _ => cannot(method, path),
    }
}

fn authorized(state: &State, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let value = value.trim();
    let Some((scheme, token)) = value.split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let token = token.trim();
    if token.is_empty() {
        return false;
    }
    match &state.valid_tokens {
        Some(valid) => valid.iter().any(|t| t == token),
        None => token != INVALID_TOKEN,
    }
}

fn id_matches(obj: &Value, id: &str) -> bool {
    obj.get("id")
        .and_then(Value::as_str)
        .is_some_and(|own| own.eq_ignore_ascii_case(id))
}

fn find_object(state: &State, id: &str) -> Option<Value> {
    lock(&state.objects)
        .iter()
        .find(|o| id_matches(o, id))
        .cloned()
}

fn fixture_for_path(path: &str) -> Option<Value> {
    let id = path.strip_prefix("/phone-number/")?;
    MockVapi::fixture_by_id(id)
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Parses a numeric query parameter in `min..=max`; `Err` is the 400 message.
fn numeric_param(
    query: &str,
    name: &str,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, String> {
    let Some(raw) = query_param(query, name) else {
        return Ok(default);
    };
    match raw.parse::<usize>() {
        Ok(n) if n < min => Err(format!("{name} must not be less than {min}")),
        Ok(n) if n > max => Err(format!("{name} must not be greater than {max}")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "{name} must be a number conforming to the specified constraints"
        )),
    }
}

fn list(state: &State, query: &str) -> Response<MockBody> {
    let limit = match numeric_param(query, "limit", 100, 0, 1000) {
        Ok(n) => n,
        Err(msg) => return bad_request(&msg),
    };
    let items: Vec<Value> = lock(&state.objects).iter().take(limit).cloned().collect();
    json_value(StatusCode::OK, &Value::Array(items))
}

fn list_v2(state: &State, query: &str) -> Response<MockBody> {
    let limit = match numeric_param(query, "limit", 100, 0, 1000) {
        Ok(n) => n,
        Err(msg) => return bad_request(&msg),
    };
    let page = match numeric_param(query, "page", 1, 1, usize::MAX) {
        Ok(n) => n,
        Err(msg) => return bad_request(&msg),
    };
    let sort_order = match query_param(query, "sortOrder") {
        Some("ASC") => "ASC",
        _ => "DESC",
    };
    let objects = lock(&state.objects);
    let total = objects.len();
    let results: Vec<Value> = objects
        .iter()
        .skip((page - 1).saturating_mul(limit))
        .take(limit)
        .cloned()
        .collect();
    drop(objects);
    let total_pages = if limit == 0 { 0 } else { total.div_ceil(limit) };
    let body = json!({
        "results": results,
        "metadata": {
            "itemsPerPage": limit,
            "totalItems": total,
            "currentPage": page,
            "totalPages": total_pages,
            "hasNextPage": page < total_pages,
            "sortOrder": sort_order,
        }
    });
    json_value(StatusCode::OK, &body)
}

/// The body as a JSON object; `Err` is the 400 message.
fn parse_object(body: &Bytes) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("body must be a JSON object".to_owned()),
        Err(e) => Err(format!("Unexpected token in JSON: {e}")),
    }
}

fn create(state: &State, body: &Bytes) -> Response<MockBody> {
    let posted = match parse_object(body) {
        Ok(map) => map,
        Err(msg) => return bad_request(&msg),
    };
    let provider = posted.get("provider").and_then(Value::as_str).unwrap_or("");
    let Some(mut obj) = (match canonical_provider(provider) {
        Some(p) if p == provider => MockVapi::try_fixture(p),
        _ => None,
    }) else {
        return bad_request(
            "provider must be one of the following values: twilio, vonage, vapi, telnyx, byo-phone-number",
        );
    };
    if let Value::Object(target) = &mut obj {
        for (key, value) in posted {
            if !matches!(key.as_str(), "id" | "orgId" | "createdAt" | "updatedAt") {
                target.insert(key, value);
            }
        }
        let now = now_iso8601();
        target.insert("id".into(), Value::String(uuid::Uuid::new_v4().to_string()));
        target.insert("createdAt".into(), Value::String(now.clone()));
        target.insert("updatedAt".into(), Value::String(now));
    }
    lock(&state.objects).push(obj.clone());
    json_value(StatusCode::CREATED, &obj)
}

fn update(state: &State, id: &str, body: &Bytes) -> Response<MockBody> {
    let patch = match parse_object(body) {
        Ok(map) => map,
        Err(msg) => return bad_request(&msg),
    };
    let mut objects = lock(&state.objects);
    let Some(obj) = objects.iter_mut().find(|o| id_matches(o, id)) else {
        return not_found();
    };
    if let Value::Object(target) = obj {
        for (key, value) in patch {
            match key.as_str() {
                "id" | "orgId" | "createdAt" | "updatedAt" => {}
                // `server` is merged field by field; its `headers` (like `hooks`) are
                // replaced whole.
                "server" => match (target.get_mut("server"), value) {
                    (Some(Value::Object(server)), Value::Object(fields)) => {
                        for (k, v) in fields {
                            server.insert(k, v);
                        }
                    }
                    (_, value) => {
                        target.insert(key, value);
                    }
                },
                _ => {
                    target.insert(key, value);
                }
            }
        }
        target.insert("updatedAt".into(), Value::String(now_iso8601()));
    }
    let updated = obj.clone();
    drop(objects);
    json_value(StatusCode::OK, &updated)
}

fn status_or_500(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn default_message(code: u16) -> Value {
    let status = status_or_500(code);
    match status.as_u16() {
        400 => json!(["id must be a UUID"]),
        401 => json!(
            "Invalid Key. Hot tip, you may be using the private key instead of the public key, or vice versa."
        ),
        403 => json!("Forbidden resource"),
        404 => json!("Phone number not found"),
        429 => json!("ThrottlerException: Too Many Requests"),
        500 => json!("Internal server error"),
        _ => json!(status.canonical_reason().unwrap_or("Error")),
    }
}

fn nest_error(status: StatusCode, message: Value) -> Response<MockBody> {
    let body = json!({
        "message": message,
        "error": status.canonical_reason().unwrap_or("Error"),
        "statusCode": status.as_u16(),
    });
    json_value(status, &body)
}

fn bad_request(message: &str) -> Response<MockBody> {
    nest_error(StatusCode::BAD_REQUEST, json!([message]))
}

fn not_found() -> Response<MockBody> {
    json_response(
        StatusCode::NOT_FOUND,
        Bytes::from_static(NOT_FOUND_BODY.as_bytes()),
    )
}

/// NestJS's answer for an unknown route.
fn cannot(method: &Method, path: &str) -> Response<MockBody> {
    nest_error(
        StatusCode::NOT_FOUND,
        json!(format!("Cannot {method} {path}")),
    )
}

fn html_error(status: StatusCode) -> Response<MockBody> {
    let code = status.as_u16();
    let reason = status.canonical_reason().unwrap_or("Error");
    let (title, detail) = match code {
        403 => (
            "Attention Required! | Cloudflare".to_owned(),
            "Sorry, you have been blocked. You are unable to access api.vapi.ai".to_owned(),
        ),
        429 => (
            "Access denied | api.vapi.ai used Cloudflare to restrict access".to_owned(),
            "The owner of this website (api.vapi.ai) has banned you temporarily from accessing this website.".to_owned(),
        ),
        _ => (
            format!("api.vapi.ai | {code}: {reason}"),
            format!("Error code {code}. The web server reported an error."),
        ),
    };
    let page = format!(
        r#"<!DOCTYPE html>
<!--[if lt IE 7]> <html class="no-js ie6 oldie" lang="en-US"> <![endif]-->
<!--[if gt IE 8]><!--> <html class="no-js" lang="en-US"> <!--<![endif]-->
<head>
<title>{title}</title>
<meta charset="UTF-8" />
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
<meta http-equiv="X-UA-Compatible" content="IE=Edge" />
<meta name="robots" content="noindex, nofollow" />
<meta name="viewport" content="width=device-width,initial-scale=1" />
<link rel="stylesheet" id="cf_styles-css" href="/cdn-cgi/styles/cf.errors.css" />
</head>
<body>
  <div id="cf-wrapper">
    <div id="cf-error-details" class="cf-error-details-wrapper">
      <div class="cf-wrapper cf-header cf-error-overview">
        <h1>
          <span class="cf-error-type" data-translate="error">Error</span>
          <span class="cf-error-code">{code}</span>
        </h1>
        <h2 class="cf-subheadline">{reason}</h2>
      </div>
      <div class="cf-section cf-wrapper">
        <p>{detail}</p>
      </div>
      <div class="cf-error-footer cf-wrapper w-240 lg:w-full py-10 sm:py-4 sm:px-8 mx-auto text-center sm:text-left border-solid border-0 border-t border-gray-300">
        <p class="text-13">
          <span class="cf-footer-item sm:block sm:mb-1">Cloudflare Ray ID: <strong class="font-semibold">8c1f4a2b9d3e7f60</strong></span>
          <span class="cf-footer-separator sm:hidden">&bull;</span>
          <span id="cf-footer-item-ip" class="cf-footer-item sm:block sm:mb-1">Performance &amp; security by <a rel="noopener noreferrer" href="https://www.cloudflare.com" target="_blank">Cloudflare</a></span>
        </p>
      </div>
    </div>
  </div>
</body>
</html>
"#
    );
    let mut resp = respond(status, HTML_CONTENT_TYPE, Bytes::from(page));
    resp.headers_mut()
        .insert(header::SERVER, HeaderValue::from_static("cloudflare"));
    resp.headers_mut().insert(
        HeaderName::from_static("cf-ray"),
        HeaderValue::from_static("8c1f4a2b9d3e7f60-SJC"),
    );
    resp
}

/// The fixture with a `padding` field so that the compact JSON is exactly `n` bytes, or a
/// bare padded object when the fixture alone is already bigger.
fn oversized(mut base: Value, n: usize) -> Vec<u8> {
    if let Value::Object(map) = &mut base {
        map.insert("padding".into(), Value::String(String::new()));
        let len = base.to_string().len();
        if n >= len {
            if let Value::Object(map) = &mut base {
                map.insert("padding".into(), Value::String("x".repeat(n - len)));
            }
            return base.to_string().into_bytes();
        }
    }
    const BARE: &str = r#"{"padding":""}"#;
    if n >= BARE.len() {
        return format!(r#"{{"padding":"{}"}}"#, "x".repeat(n - BARE.len())).into_bytes();
    }
    let mut out = b"{}".to_vec();
    out.resize(n.max(2), b' ');
    out
}

/// `n` nested objects: `{"d":{"d":{}}}` for n = 3 (n = 0 gives `{}`).
fn deep(n: usize) -> Vec<u8> {
    let n = n.max(1);
    let mut out = Vec::with_capacity(n * 6);
    for _ in 1..n {
        out.extend_from_slice(br#"{"d":"#);
    }
    out.extend_from_slice(b"{}");
    out.resize(out.len() + (n - 1), b'}');
    out
}

fn full_body(bytes: Bytes) -> MockBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<MockBody> {
    let mut resp = Response::new(full_body(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json_response(status: StatusCode, body: Bytes) -> Response<MockBody> {
    respond(status, JSON_CONTENT_TYPE, body)
}

fn json_value(status: StatusCode, value: &Value) -> Response<MockBody> {
    json_response(status, Bytes::from(value.to_string()))
}

/// Current time as `2026-08-18T09:41:26.459Z`.
fn now_iso8601() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

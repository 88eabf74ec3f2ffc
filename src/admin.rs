//! The admin listener: `GET /healthz` (the process is alive), `GET /readyz` (it takes traffic; 503
//! once draining), `GET /metrics` (Prometheus), `GET /config` (the effective configuration,
//! secrets masked) and `POST /cache/purge`. A separate listener so probes and operators never
//! compete with, or get exposed alongside, proxy traffic.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;
use uuid::Uuid;

use crate::cache::Scope;
use crate::credential::{self, KeyId};
use crate::error::Synthetic;
use crate::response::{self, Body};
use crate::shield::breaker::BreakerState;
use crate::state::AppState;

/// Serves the admin listener until `stop` turns true.
pub async fn serve(state: Arc<AppState>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.startup.server.header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let state = Arc::clone(&state);
                    let service = service_fn(move |req| handle(Arc::clone(&state), req));
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(1), graceful.shutdown()).await;
}

/// Answers one admin request.
pub async fn handle<B>(state: Arc<AppState>, req: Request<B>) -> Result<Response<Body>, Infallible>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let read_only = parts.method == Method::GET || parts.method == Method::HEAD;
    let response = match (parts.uri.path(), read_only) {
        ("/healthz", true) => json(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}")),
        ("/readyz", true) if state.is_draining() => json(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(b"{\"status\":\"draining\"}"),
        ),
        ("/readyz", true) => json(
            StatusCode::OK,
            Bytes::from_static(b"{\"status\":\"ready\"}"),
        ),
        ("/metrics", true) => metrics(&state, &parts.headers),
        ("/config", true) => {
            let text =
                serde_json::to_vec(&state.running_config().to_masked_json()).unwrap_or_default();
            json(StatusCode::OK, Bytes::from(text))
        }
        ("/cache/purge", _) if parts.method == Method::POST => {
            match authorize(&state, &parts.headers) {
                Ok(()) => purge(&state, body).await,
                Err(refused) => refused.response(),
            }
        }
        ("/healthz" | "/readyz" | "/metrics" | "/config", false) => not_allowed("GET, HEAD"),
        ("/cache/purge", _) => not_allowed("POST"),
        _ => error(
            StatusCode::NOT_FOUND,
            "no such admin endpoint; see /healthz, /readyz, /metrics, /config, /cache/purge",
        ),
    };
    Ok(response)
}

/// Mutating calls need `Authorization: Bearer <admin.token>`, compared in constant time; with no
/// token configured, only a loopback admin listener accepts them (nobody else can reach it).
fn authorize(state: &AppState, headers: &http::HeaderMap) -> Result<(), Refused> {
    let live = state.live();
    let Some(token) = &live.config.admin_token else {
        if state.startup.admin_listen.ip().is_loopback() {
            return Ok(());
        }
        return Err(Refused::NoTokenConfigured);
    };
    let presented = credential::bearer_token(headers.get_all(AUTHORIZATION).iter()).ok();
    let expected = token.expose().as_bytes();
    // ct_eq on slices of different lengths is false without comparing contents.
    if presented.is_some_and(|p| bool::from(p.ct_eq(expected))) {
        Ok(())
    } else {
        Err(Refused::BadToken)
    }
}

/// Why a mutating admin call was refused.
enum Refused {
    NoTokenConfigured,
    BadToken,
}

impl Refused {
    fn response(self) -> Response<Body> {
        answer(match self {
            Refused::NoTokenConfigured => Synthetic::new(
                StatusCode::FORBIDDEN,
                "admin_token_not_configured",
                "set admin.token to allow admin changes on a non-loopback admin listener",
            ),
            Refused::BadToken => Synthetic::new(
                StatusCode::UNAUTHORIZED,
                "admin_token_refused",
                "admin token missing or wrong",
            )
            .header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")),
        })
    }
}

/// `{"id": "<uuid>"}`, `{"key_id": "<16 hex>"}` or `{"all": true}` → `{"purged": n}`.
async fn purge<B>(state: &AppState, body: B) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    const USAGE: &str =
        "expected {\"id\": \"<uuid>\"}, {\"key_id\": \"<key_id>\"} or {\"all\": true}";
    let Ok(collected) = Limited::new(body, 4096).collect().await else {
        return error(StatusCode::BAD_REQUEST, USAGE);
    };
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(&collected.to_bytes()) else {
        return error(StatusCode::BAD_REQUEST, USAGE);
    };
    let Some(fields) = request.as_object().filter(|o| o.len() == 1) else {
        return error(StatusCode::BAD_REQUEST, USAGE);
    };
    let scope = match (fields.get("id"), fields.get("key_id"), fields.get("all")) {
        (Some(id), None, None) => match id.as_str().and_then(|s| Uuid::try_parse(s).ok()) {
            Some(id) => Scope::Number(id),
            None => return error(StatusCode::BAD_REQUEST, "id must be a UUID"),
        },
        (None, Some(key_id), None) => match key_id.as_str().and_then(KeyId::from_hex) {
            Some(key_id) => Scope::Credential(key_id),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "key_id must be 16 hex digits, as logged in the access log",
                );
            }
        },
        (None, None, Some(serde_json::Value::Bool(true))) => Scope::All,
        _ => return error(StatusCode::BAD_REQUEST, USAGE),
    };
    // Every replica drops its copies (through the shared tier, when there is one); a fetch in
    // flight stores nothing it fetched before the purge. The count is of this replica's memory.
    let removed = state.store.purge(scope).await;
    tracing::info!(purged = removed, "cache purge");
    json(
        StatusCode::OK,
        Bytes::from(serde_json::json!({ "purged": removed }).to_string()),
    )
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    answer(
        Synthetic::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed here",
        )
        .header(ALLOW, HeaderValue::from_static(allow)),
    )
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    answer(Synthetic::new(status, "admin_bad_request", message))
}

/// The admin listener's own answers: the proxy's synthetic shape, never cached.
fn answer(synthetic: Synthetic<'_>) -> Response<Body> {
    let mut response = response::synthetic(&synthetic, false);
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `/metrics` in OpenMetrics for scrapers that ask for it (Prometheus does), else in the
/// Prometheus text format 0.0.4.
fn metrics(state: &AppState, request: &http::HeaderMap) -> Response<Body> {
    state.store.run_pending_tasks();
    let gauge = |state: BreakerState| match state {
        BreakerState::Closed => 0,
        BreakerState::Open => 1,
        BreakerState::HalfOpen => 2,
    };
    if let Some(tier) = state.store.tier() {
        state
            .metrics
            .tier
            .redis_breaker(gauge(tier.breaker_state()));
    }
    let text = state.metrics.render(
        state.store.entry_count(),
        state.store.weighted_size(),
        gauge(state.shield.breaker_state()),
    );
    let openmetrics = request.get_all(http::header::ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.contains("application/openmetrics-text"))
    });
    let (text, content_type) = if openmetrics {
        (
            text,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            crate::metrics::to_prometheus_text(&text),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

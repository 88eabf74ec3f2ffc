//! The request path, as named phases in a fixed order:
//!
//! 1. request filter: CORS preflight, route (path, method, list query), credential and scope,
//!    per-credential request budget ([`crate::cors`], [`crate::route`], [`crate::auth`],
//!    [`crate::shield`]);
//! 2. cache key: (resource, fingerprint of the upstream credential) ([`CacheKey`]);
//! 3. cache lookup: fresh is a hit; within stale-while-revalidate the stale entry is the answer
//!    and one background refresh starts; within stale-if-error it is kept as a stand-in;
//! 4. upstream fetch, coalesced per key ([`crate::cache::coalesce`]) and gated by the shield
//!    (miss budget, 429 cool-down, breaker, concurrency slot);
//! 5. response filter: parse, redact, classify ([`crate::response_filter`]);
//! 6. cache store (inside the fetch, so waiters and later callers agree);
//! 7. response (the stand-in if the upstream failed), CORS headers and access log.
//!
//! Writes (POST, PATCH, DELETE) skip 2, 3 and 6: their body is checked, they are forwarded
//! unchanged, their answer is redacted, and on success the cached entries they made stale are
//! dropped.
//!
//! Shared state lives in [`AppState`]; per-request state in [`RequestContext`]. The handler never
//! fails: every error becomes a JSON answer in [`crate::response::from_error`].
//!
//! Files: this one holds the entry point and the request filter; `read.rs` the GET routes
//! (phases 2-7), `write.rs` the write routes, `exchange.rs` the one gated upstream exchange both
//! use.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use hyper::body::Body as _;
use uuid::Uuid;

mod exchange;
mod read;
mod write;

use read::read;
use write::{Write, write};

use crate::access_log::{self, AccessRecord};
use crate::cache::Resource;
use crate::cors::Preflight;
use crate::credential::KeyId;
use crate::error::ProxyError;
use crate::metrics::RequestLabels;
use crate::response::{self, Body, CACHE_STATUS, CacheReport, CacheStatus, X_REQUEST_ID};
use crate::route::{self, Route};
use crate::shield::headers::{BudgetReport, RATELIMIT, RATELIMIT_POLICY};
use crate::state::{AppState, Live};

/// How much longer than its own deadlines (queue wait plus upstream exchange) a caller waits for
/// a shared fetch: the fetch is bounded by those, so this only matters if its task is starved.
const COALESCE_MARGIN: Duration = Duration::from_secs(1);

/// Longest caller-supplied request id that is reused as is.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Per-request state that the phases fill in and the access log reads.
#[derive(Debug)]
pub struct RequestContext {
    request_id: HeaderValue,
    route: Option<&'static str>,
    key_id: Option<KeyId>,
    client: Option<Arc<str>>,
    cache: CacheStatus,
    upstream: Option<Duration>,
    /// What `Cache-Status` reports (the access log's `coalesced` and `stale_reason` too).
    report: CacheReport,
    /// What the `RateLimit` header reports.
    budgets: BudgetReport,
    /// Which cache tier answered (`l1`, `l2`), for the access log.
    tier: Option<&'static str>,
    /// The request's server span, when tracing is on.
    trace: Option<opentelemetry::Context>,
}

/// Serves one request. Never fails and never panics on input: every refusal is a JSON answer.
pub async fn handle<B>(state: Arc<AppState>, req: Request<B>) -> Result<Response<Body>, Infallible>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let mut ctx = RequestContext {
        request_id: request_id(&parts.headers),
        route: None,
        key_id: None,
        client: None,
        cache: CacheStatus::None,
        upstream: None,
        report: CacheReport::default(),
        budgets: BudgetReport::default(),
        trace: None,
        tier: None,
    };
    let trace = state
        .telemetry
        .as_ref()
        .map(|t| t.start_request(&parts.method, &parts.headers));
    ctx.trace = trace.as_ref().map(|t| t.context().clone());
    let head = parts.method == Method::HEAD;
    let live = state.live();
    let outcome = match live.cors.preflight(&parts.method, &parts.headers) {
        Preflight::Allowed => Ok(live.cors.preflight_response(&parts.headers)),
        Preflight::Refused => Err(ProxyError::OriginNotAllowed),
        Preflight::Absent => {
            let deadline = tokio::time::Instant::from_std(started) + live.config.requests.timeout;
            serve(&state, &live, &parts, body, deadline, &mut ctx).await
        }
    };
    let metrics = &state.metrics;
    let (mut response, reason) = match outcome {
        Ok(response) => {
            if let Some(why) = ctx.report.stale_reason {
                metrics.stale(why);
            }
            (response, ctx.report.stale_reason)
        }
        Err(error) => {
            if let ProxyError::Refused(refusal) = &error {
                ctx.budgets.refused(refusal);
            }
            match error {
                ProxyError::FetcherVanished => tracing::error!(
                    request_id = ?ctx.request_id,
                    "upstream fetch ended without an answer"
                ),
                ProxyError::Refused(_)
                | ProxyError::RequestTimeout
                | ProxyError::CoalesceTimeout => metrics.refusal(error.reason()),
                _ => {}
            }
            (response::from_error(&error, head), Some(error.reason()))
        }
    };
    if ctx.report.collapsed {
        metrics.coalesced_wait();
    }
    let bytes = response.body().size_hint().exact().unwrap_or(0);
    response::finish(&mut response, ctx.request_id.clone());
    let headers = response.headers_mut();
    if let Some(value) = ctx.report.header(ctx.cache) {
        headers.insert(CACHE_STATUS, value);
    }
    if let (Some(policy), Some(_)) = (&live.rate_policy, ctx.key_id) {
        headers.insert(RATELIMIT_POLICY, policy.clone());
        if let Some(value) = ctx.budgets.header() {
            headers.insert(RATELIMIT, value);
        }
    }
    live.cors.decorate(&parts.headers, &mut response);
    if let Some(trace) = trace {
        trace.finish(
            &parts.method,
            ctx.route,
            response.status(),
            ctx.cache.as_str(),
            ctx.key_id,
        );
    }
    let duration = started.elapsed();
    let route = ctx.route.unwrap_or("none");
    metrics.request(
        RequestLabels {
            route,
            status: response.status().as_u16(),
            cache: ctx.cache.as_str(),
        },
        duration.as_secs_f64(),
    );
    access_log::emit(&AccessRecord {
        request_id: ctx.request_id.to_str().unwrap_or("-"),
        method: parts.method.as_str(),
        path: parts.uri.path(),
        route: ctx.route,
        client: ctx.client.as_deref(),
        status: response.status().as_u16(),
        cache: ctx.cache.as_str(),
        duration,
        upstream: ctx.upstream,
        key_id: ctx.key_id,
        reason,
        coalesced: ctx.report.collapsed,
        tier: ctx.tier,
        bytes,
    });
    Ok(response)
}

/// Everything that can wait (an upstream fetch, a write and its body) runs under the request
/// deadline `deadline`; a cache hit never waits, so it pays for no timer.
async fn serve<B>(
    state: &Arc<AppState>,
    live: &Arc<Live>,
    parts: &Parts,
    body: B,
    deadline: tokio::time::Instant,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, ProxyError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // 1. Request filter.
    let route = route::route(&parts.method, parts.uri.path(), parts.uri.query())
        .map_err(ProxyError::Route)?;
    ctx.route = Some(route.name());
    let caller = live
        .auth
        .authenticate(&parts.headers, &state.fingerprinter)
        .map_err(ProxyError::Auth)?;
    ctx.key_id = Some(caller.key_id);
    ctx.client = caller.client.clone();
    if route.is_write() && !caller.can_write {
        return Err(ProxyError::Forbidden(
            "this client may only read; creating, changing and deleting need the write scope",
        ));
    }
    if !route.is_write() && !caller.can_read {
        return Err(ProxyError::Forbidden(
            "this client may only write; reading needs the read scope",
        ));
    }
    ctx.budgets.requests = state
        .shield
        .check_request(&live.budgets, &caller.limit_key)
        .await
        .map_err(ProxyError::Refused)?;

    let resource = match route {
        Route::Get(id) => Resource::PhoneNumber(id),
        Route::List(kind, query) => Resource::List(kind, Arc::from(query)),
        Route::Create => {
            return within(
                deadline,
                write(state, live, parts, body, &caller, Write::Create, ctx),
            )
            .await;
        }
        Route::Update(id) => {
            return within(
                deadline,
                write(state, live, parts, body, &caller, Write::Update(id), ctx),
            )
            .await;
        }
        Route::Delete(id) => {
            return within(
                deadline,
                write(state, live, parts, body, &caller, Write::Delete(id), ctx),
            )
            .await;
        }
    };
    // A GET announced without a body (HTTP/2: END_STREAM on its HEADERS) keeps a known length of
    // zero even if the client resets the stream meanwhile, which `is_end_stream` alone would
    // report as a body still to come.
    if !body.is_end_stream() && body.size_hint().exact() != Some(0) {
        return Err(ProxyError::BodyNotAllowed);
    }
    read(state, live, parts, resource, caller, deadline, ctx).await
}

/// Runs `work` under the request deadline (`server.request_timeout_ms`).
async fn within<T>(
    deadline: tokio::time::Instant,
    work: impl Future<Output = Result<T, ProxyError>>,
) -> Result<T, ProxyError> {
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or(Err(ProxyError::RequestTimeout))
}

/// The caller's `x-request-id` if it is sane (short, token characters only), else a new UUID.
/// An id is echoed in headers and logs, so anything odd in it is replaced, not escaped.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    let sane = headers.get(X_REQUEST_ID).filter(|v| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= MAX_REQUEST_ID_LEN
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
    });
    match sane {
        Some(v) => v.clone(),
        None => {
            let mut buf = Uuid::encode_buffer();
            let id = Uuid::new_v4().hyphenated().encode_lower(&mut buf);
            HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("-"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_request_ids_are_kept_and_others_replaced() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123_x.y:z"));
        assert_eq!(request_id(&h), "abc-123_x.y:z");
        for bad in ["has space", "quote\"", "{json}", ""] {
            h.insert(X_REQUEST_ID, HeaderValue::from_static(bad));
            let id = request_id(&h);
            assert_ne!(id, bad);
            assert_eq!(id.len(), 36, "a fresh UUID replaces {bad:?}");
        }
        h.insert(
            X_REQUEST_ID,
            HeaderValue::from_str(&"a".repeat(200)).unwrap(),
        );
        assert_eq!(request_id(&h).len(), 36);
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }
}

//! The request path, as named phases in a fixed order:
//!
//! 1. request filter: route, body check, credential ([`crate::route`], [`crate::credential`]);
//! 2. cache key: (id, credential fingerprint) ([`CacheKey`]);
//! 3. cache lookup: a fresh entry is the answer;
//! 4. upstream fetch, coalesced per key ([`crate::cache::coalesce`]);
//! 5. response filter: parse, redact, classify ([`crate::response_filter`]);
//! 6. cache store (inside the fetch, so waiters and later callers agree);
//! 7. response and access log.
//!
//! Shared state lives in [`AppState`]; per-request state in [`RequestContext`]. The handler never
//! fails: every error becomes a JSON answer in [`crate::response::from_error`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use hyper::body::Body as _;
use uuid::Uuid;

use crate::access_log::{self, AccessRecord};
use crate::cache::coalesce::Role;
use crate::cache::{CacheKey, Entry};
use crate::credential::{self, KeyId};
use crate::error::ProxyError;
use crate::response::{self, Body, CacheStatus, X_REQUEST_ID};
use crate::response_filter;
use crate::route::{self, Route};
use crate::state::AppState;

/// How much longer than the upstream deadline a waiter waits for a shared fetch: the fetch itself
/// is bounded by the deadline, so this only matters if the fetch task is starved.
const COALESCE_MARGIN: Duration = Duration::from_secs(1);

/// Longest caller-supplied request id that is reused as is.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The outcome of one upstream fetch, shared by every request that waited for it.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The answer to send, or why there is none.
    pub result: Result<Arc<Entry>, ProxyError>,
    /// How long the upstream exchange took.
    pub upstream: Duration,
}

/// Per-request state that the phases fill in and the access log reads.
#[derive(Debug)]
pub struct RequestContext {
    request_id: HeaderValue,
    route: Option<Route>,
    key_id: Option<KeyId>,
    cache: CacheStatus,
    upstream: Option<Duration>,
    coalesced: bool,
}

/// Serves one request. Never fails and never panics on input: every refusal is a JSON answer.
pub async fn handle<B>(state: Arc<AppState>, req: Request<B>) -> Result<Response<Body>, Infallible>
where
    B: hyper::body::Body,
{
    let started = Instant::now();
    let mut ctx = RequestContext {
        request_id: request_id(req.headers()),
        route: None,
        key_id: None,
        cache: CacheStatus::None,
        upstream: None,
        coalesced: false,
    };
    let head = req.method() == Method::HEAD;
    let (mut response, reason) = match serve(&state, &req, &mut ctx).await {
        Ok(response) => (response, None),
        Err(error) => {
            if error == ProxyError::FetcherVanished {
                tracing::error!(request_id = ?ctx.request_id, "upstream fetch task ended without an answer");
            }
            (response::from_error(&error, head), Some(error.reason()))
        }
    };
    let bytes = response.body().size_hint().exact().unwrap_or(0);
    response::finish(&mut response, ctx.request_id.clone());
    access_log::emit(&AccessRecord {
        request_id: ctx.request_id.to_str().unwrap_or("-"),
        method: req.method().as_str(),
        path: req.uri().path(),
        route: ctx.route.map(|r| r.name()),
        status: response.status().as_u16(),
        cache: ctx.cache.as_str(),
        duration: started.elapsed(),
        upstream: ctx.upstream,
        key_id: ctx.key_id,
        reason,
        coalesced: ctx.coalesced,
        bytes,
    });
    Ok(response)
}

async fn serve<B>(
    state: &Arc<AppState>,
    req: &Request<B>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, ProxyError>
where
    B: hyper::body::Body,
{
    // 1. Request filter.
    let route = route::route(req.method(), req.uri().path()).map_err(ProxyError::Route)?;
    ctx.route = Some(route);
    if !req.body().is_end_stream() {
        return Err(ProxyError::BodyNotAllowed);
    }
    let token = credential::bearer_token(req.headers().get_all(AUTHORIZATION).iter())
        .map_err(ProxyError::Auth)?;
    let fingerprint = state.fingerprinter.fingerprint(token);
    ctx.key_id = Some(fingerprint.key_id());
    let Route::GetPhoneNumber(id) = route;
    let head = req.method() == Method::HEAD;

    // 2. Cache key.
    let key = CacheKey {
        id,
        credential: fingerprint,
    };

    // 3. Cache lookup.
    let now = Instant::now();
    if let Some(entry) = state.cache.get(&key, now) {
        ctx.cache = CacheStatus::Hit;
        return Ok(response::from_entry(
            &entry,
            head,
            ctx.cache,
            req.headers(),
            now,
        ));
    }

    // 4-6. Upstream fetch (coalesced), response filter, cache store.
    ctx.cache = CacheStatus::Miss;
    // bearer_token accepted exactly one Authorization header, so this is that header.
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .cloned()
        .ok_or(ProxyError::FetcherVanished)?;
    let entry = fetch(state, key, id, authorization, ctx).await?;

    // 7. Response.
    Ok(response::from_entry(
        &entry,
        head,
        ctx.cache,
        req.headers(),
        Instant::now(),
    ))
}

/// Joins or starts the one upstream fetch for `key` and waits for it, boundedly.
async fn fetch(
    state: &Arc<AppState>,
    key: CacheKey,
    id: Uuid,
    authorization: HeaderValue,
    ctx: &mut RequestContext,
) -> Result<Arc<Entry>, ProxyError> {
    let task_state = Arc::clone(state);
    let request_id = ctx.request_id.clone();
    let (inflight, role) = state.inflight.join_or_start(key, async move {
        let state = task_state;
        let started = Instant::now();
        let result = match state
            .upstream
            .get_phone_number(id, &authorization, &request_id)
            .await
        {
            Ok(answer) => {
                response_filter::filter(answer, &state.policy, state.freshness, Instant::now())
                    .map(Arc::new)
            }
            Err(e) => Err(e.into()),
        };
        if let Ok(entry) = &result {
            state.cache.insert(key, Arc::clone(entry));
        }
        Fetched {
            result,
            upstream: started.elapsed(),
        }
    });
    ctx.coalesced = role == Role::Follower;
    let wait = state.config.upstream.timeout + COALESCE_MARGIN;
    match tokio::time::timeout(wait, inflight).await {
        Ok(Some(fetched)) => {
            ctx.upstream = Some(fetched.upstream);
            fetched.result
        }
        Ok(None) => Err(ProxyError::FetcherVanished),
        Err(_) => Err(ProxyError::CoalesceTimeout),
    }
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

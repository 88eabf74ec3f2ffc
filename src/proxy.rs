//! The request path, as named phases in a fixed order:
//!
//! 1. request filter: route, body check, credential, per-credential request budget
//!    ([`crate::route`], [`crate::credential`], [`crate::shield`]);
//! 2. cache key: (id, credential fingerprint) ([`CacheKey`]);
//! 3. cache lookup: fresh is a hit; within stale-while-revalidate the stale entry is the answer
//!    and one background refresh starts; within stale-if-error it is kept as a stand-in;
//! 4. upstream fetch, coalesced per key ([`crate::cache::coalesce`]) and gated by the shield
//!    (miss budget, 429 cool-down, breaker, concurrency slot);
//! 5. response filter: parse, redact, classify ([`crate::response_filter`]);
//! 6. cache store (inside the fetch, so waiters and later callers agree);
//! 7. response (the stand-in if the upstream failed) and access log.
//!
//! Shared state lives in [`AppState`]; per-request state in [`RequestContext`]. The handler never
//! fails: every error becomes a JSON answer in [`crate::response::from_error`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Body as _;
use uuid::Uuid;

use crate::access_log::{self, AccessRecord};
use crate::cache::coalesce::Role;
use crate::cache::{CacheKey, Entry, Staleness};
use crate::credential::{self, KeyId};
use crate::error::ProxyError;
use crate::metrics::RequestLabels;
use crate::response::{self, Body, CacheStatus, X_REQUEST_ID};
use crate::response_filter;
use crate::route::{self, Route};
use crate::shield::{Health, Pass};
use crate::state::AppState;

/// How much longer than its own deadlines (queue wait plus upstream exchange) a caller waits for
/// a shared fetch: the fetch is bounded by those, so this only matters if its task is starved.
const COALESCE_MARGIN: Duration = Duration::from_secs(1);

/// Longest caller-supplied request id that is reused as is.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The outcome of one upstream fetch, shared by every request that waited for it.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The answer to send, or why there is none.
    pub result: Result<Arc<Entry>, ProxyError>,
    /// How long the upstream exchange took; `None` when no upstream call was made.
    pub upstream: Option<Duration>,
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
    /// Why a stale answer was served, for the access log.
    stale_reason: Option<&'static str>,
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
        stale_reason: None,
    };
    let head = req.method() == Method::HEAD;
    let deadline = state.config.server.request_timeout;
    let outcome = match tokio::time::timeout(deadline, serve(&state, &req, &mut ctx)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(ProxyError::RequestTimeout),
    };
    let metrics = &state.metrics;
    let (mut response, reason) = match outcome {
        Ok(response) => {
            if let Some(why) = ctx.stale_reason {
                metrics.stale(why);
            }
            (response, ctx.stale_reason)
        }
        Err(error) => {
            match error {
                ProxyError::FetcherVanished => tracing::error!(
                    request_id = ?ctx.request_id,
                    "upstream fetch task ended without an answer"
                ),
                ProxyError::Refused(_)
                | ProxyError::RequestTimeout
                | ProxyError::CoalesceTimeout => metrics.refusal(error.reason()),
                _ => {}
            }
            (response::from_error(&error, head), Some(error.reason()))
        }
    };
    if ctx.coalesced {
        metrics.coalesced_wait();
    }
    let bytes = response.body().size_hint().exact().unwrap_or(0);
    response::finish(&mut response, ctx.request_id.clone());
    let duration = started.elapsed();
    let route = ctx.route.map_or("none", |r| r.name());
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
        method: req.method().as_str(),
        path: req.uri().path(),
        route: ctx.route.map(|r| r.name()),
        status: response.status().as_u16(),
        cache: ctx.cache.as_str(),
        duration,
        upstream: ctx.upstream,
        key_id: ctx.key_id,
        reason,
        coalesced: ctx.coalesced,
        bytes,
    });
    Ok(response)
}

/// What a lookup needs to reach the upstream on behalf of one caller.
#[derive(Clone)]
struct Lookup {
    key: CacheKey,
    id: Uuid,
    authorization: HeaderValue,
    request_id: HeaderValue,
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
    state
        .shield
        .check_request(&fingerprint)
        .map_err(ProxyError::Refused)?;
    let Route::GetPhoneNumber(id) = route;
    let head = req.method() == Method::HEAD;
    let respond = |entry: &Entry, cache: CacheStatus| {
        response::from_entry(entry, head, cache, req.headers(), Instant::now())
    };

    // 2. Cache key.
    let key = CacheKey {
        id,
        credential: fingerprint,
    };
    // bearer_token accepted exactly one Authorization header, so this is that header.
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .cloned()
        .ok_or(ProxyError::FetcherVanished)?;
    let lookup = Lookup {
        key,
        id,
        authorization,
        request_id: ctx.request_id.clone(),
    };

    // 3. Cache lookup: fresh is a hit; within stale-while-revalidate, the old answer now and one
    // refresh in the background; within stale-if-error, a stand-in should the upstream fail.
    let mut stand_in = None;
    if let Some(entry) = state.cache.get(&key) {
        match entry.staleness(Instant::now(), &state.lifetimes) {
            Staleness::Fresh => {
                ctx.cache = CacheStatus::Hit;
                return Ok(respond(&entry, ctx.cache));
            }
            Staleness::Revalidate => {
                refresh_in_background(state, lookup);
                ctx.cache = CacheStatus::Stale;
                ctx.stale_reason = Some("revalidating");
                return Ok(respond(&entry, ctx.cache));
            }
            Staleness::IfError => stand_in = Some(entry),
            Staleness::Expired => {}
        }
    }

    // 4-6. Upstream fetch (gated, coalesced), response filter, cache store.
    ctx.cache = CacheStatus::Miss;
    let result = fetch(state, lookup, ctx).await;

    // 7. Response: the upstream's answer, or the stale stand-in if the upstream failed.
    if let Some(stale) = stand_in {
        if let Some(why) = upstream_failure(&result) {
            ctx.cache = CacheStatus::Stale;
            ctx.stale_reason = Some(why);
            return Ok(respond(&stale, ctx.cache));
        }
    }
    let entry = result?;
    Ok(respond(&entry, ctx.cache))
}

/// Why `result` counts as the upstream failing (so a stale answer may stand in), or `None` when
/// it is a real answer to relay (200, 404, 401, ...).
fn upstream_failure(result: &Result<Arc<Entry>, ProxyError>) -> Option<&'static str> {
    match result {
        Ok(entry) if entry.status == StatusCode::TOO_MANY_REQUESTS => Some("upstream_429"),
        Ok(entry) if entry.status.is_server_error() => Some("upstream_5xx"),
        Ok(_) => None,
        Err(error) => Some(error.reason()),
    }
}

/// Joins the fetch in flight for the key, or passes the shield's gates and starts one; then waits
/// for it, boundedly.
async fn fetch(
    state: &Arc<AppState>,
    lookup: Lookup,
    ctx: &mut RequestContext,
) -> Result<Arc<Entry>, ProxyError> {
    let key = lookup.key;
    let inflight = match state.inflight.get(&key) {
        // Joining a fetch costs the upstream nothing, so it passes no gate and uses no budget.
        Some(inflight) => {
            ctx.coalesced = true;
            inflight
        }
        None => {
            let pass = state
                .shield
                .admit(&key.credential, Instant::now(), true)
                .map_err(ProxyError::Refused)?;
            let task = fetch_task(Arc::clone(state), lookup, pass);
            let (inflight, role) = state.inflight.join_or_start(key, task);
            if role == Role::Follower {
                // Someone started the same fetch between our check and now.
                state.shield.release(&key.credential, pass);
                ctx.coalesced = true;
            }
            inflight
        }
    };
    let wait = state.config.shield.queue_timeout + state.config.upstream.timeout + COALESCE_MARGIN;
    match tokio::time::timeout(wait, inflight).await {
        Ok(Some(fetched)) => {
            ctx.upstream = fetched.upstream;
            fetched.result
        }
        Ok(None) => Err(ProxyError::FetcherVanished),
        Err(_) => Err(ProxyError::CoalesceTimeout),
    }
}

/// Starts one background refresh of a stale entry, unless one is already in flight or the
/// shield says no (cool-down, open breaker): then the stale entry simply keeps serving.
fn refresh_in_background(state: &Arc<AppState>, lookup: Lookup) {
    let key = lookup.key;
    if state.inflight.get(&key).is_some() {
        return;
    }
    let Ok(pass) = state.shield.admit(&key.credential, Instant::now(), false) else {
        return;
    };
    let task = fetch_task(Arc::clone(state), lookup, pass);
    let (_inflight, role) = state.inflight.join_or_start(key, task);
    if role == Role::Follower {
        state.shield.release(&key.credential, pass);
    }
}

/// The one upstream call for a key: waits for a slot, calls, filters, reports to the shield, and
/// stores the answer before any waiter sees it.
async fn fetch_task(state: Arc<AppState>, lookup: Lookup, pass: Pass) -> Fetched {
    let credential = lookup.key.credential;
    let slot = match state.shield.slot().await {
        Ok(slot) => slot,
        Err(refusal) => {
            state.shield.release(&credential, pass);
            return Fetched {
                result: Err(ProxyError::Refused(refusal)),
                upstream: None,
            };
        }
    };
    let started = Instant::now();
    let result = match state
        .upstream
        .get_phone_number(lookup.id, &lookup.authorization, &lookup.request_id)
        .await
    {
        Ok(answer) => {
            response_filter::filter(answer, &state.policy, &state.lifetimes, Instant::now())
                .map(Arc::new)
        }
        Err(e) => Err(e.into()),
    };
    let elapsed = started.elapsed();
    drop(slot);
    let metrics = &state.metrics;
    metrics.upstream_exchange(elapsed.as_secs_f64());
    match &result {
        Ok(entry) => metrics.upstream_response(entry.status.as_u16()),
        Err(ProxyError::UpstreamUnreachable) => metrics.upstream_failure("unreachable"),
        Err(ProxyError::UpstreamTimeout) => metrics.upstream_failure("timeout"),
        Err(ProxyError::UpstreamFailed) => metrics.upstream_failure("broken"),
        Err(ProxyError::BadUpstreamBody(_)) => metrics.upstream_failure("bad_body"),
        Err(_) => {}
    }
    state
        .shield
        .record(credential, pass, Health::of(&result), Instant::now());
    match &result {
        Ok(entry) if entry.is_cacheable() => state.cache.insert(lookup.key, Arc::clone(entry)),
        // The credential lost access: whatever it could read before must not be served stale.
        Ok(entry)
            if entry.status == StatusCode::UNAUTHORIZED
                || entry.status == StatusCode::FORBIDDEN =>
        {
            state.cache.invalidate(&lookup.key)
        }
        _ => {}
    }
    Fetched {
        result,
        upstream: Some(elapsed),
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

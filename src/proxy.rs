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

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Body as _;
use uuid::Uuid;

use crate::access_log::{self, AccessRecord};
use crate::auth::Caller;
use crate::cache::coalesce::{InFlight, Role};
use crate::cache::{CacheKey, Entry, Fetched, Fill, Resource, Scope, Staleness};
use crate::cors::Preflight;
use crate::credential::{self, Fingerprint, KeyId};
use crate::error::ProxyError;
use crate::metrics::RequestLabels;
use crate::response::{self, Body, CacheStatus, X_REQUEST_ID};
use crate::response_filter::{self, Ttls};
use crate::route::{self, Route};
use crate::shield::{Health, Pass, Refusal};
use crate::state::{AppState, Live};
use crate::write_body::{self, BodyError};

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
    coalesced: bool,
    /// Why a stale answer was served, for the access log.
    stale_reason: Option<&'static str>,
    /// Which cache tier answered (`l1`, `l2`), for the access log.
    tier: Option<&'static str>,
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
        coalesced: false,
        stale_reason: None,
        tier: None,
    };
    let head = parts.method == Method::HEAD;
    let live = state.live();
    let outcome = match live.cors.preflight(&parts.method, &parts.headers) {
        Preflight::Allowed => Ok(live.cors.preflight_response(&parts.headers)),
        Preflight::Refused => Err(ProxyError::OriginNotAllowed),
        Preflight::Absent => {
            let deadline =
                tokio::time::Instant::from_std(started) + live.config.server.request_timeout;
            serve(&state, &live, &parts, body, deadline, &mut ctx).await
        }
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
    live.cors.decorate(&parts.headers, &mut response);
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
        coalesced: ctx.coalesced,
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
    state
        .shield
        .check_request(&caller.limit_key)
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
    if !body.is_end_stream() {
        return Err(ProxyError::BodyNotAllowed);
    }
    read(state, live, parts, resource, caller, deadline, ctx).await
}

/// What a cacheable read needs to reach the upstream on behalf of one caller.
#[derive(Clone)]
struct Lookup {
    key: CacheKey,
    limit_key: crate::credential::Fingerprint,
    authorization: HeaderValue,
    request_id: HeaderValue,
}

/// Phases 2-7 for the GET routes.
async fn read(
    state: &Arc<AppState>,
    live: &Arc<Live>,
    parts: &Parts,
    resource: Resource,
    caller: Caller,
    deadline: tokio::time::Instant,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, ProxyError> {
    let head = parts.method == Method::HEAD;
    let respond = |entry: &Entry, cache: CacheStatus| {
        response::from_entry(entry, head, cache, &parts.headers, Instant::now())
    };

    // 2. Cache key.
    let key = CacheKey {
        resource,
        credential: caller.upstream_key,
    };
    let lookup = Lookup {
        key,
        limit_key: caller.limit_key,
        authorization: caller.upstream_authorization,
        request_id: ctx.request_id.clone(),
    };

    // 3. Cache lookup, in memory (L1) then in the shared tier (L2): fresh is a hit; within
    // stale-while-revalidate, the old answer now and one refresh in the background; within
    // stale-if-error, a stand-in should the upstream fail.
    let mut stand_in = None;
    let mut found = state
        .store
        .lookup(&lookup.key, live.policy_generation)
        .map(|entry| (entry, "l1"));
    if found.is_none() && state.store.is_shared() {
        found = state
            .store
            .lookup_shared(&lookup.key, &live.view())
            .await
            .map(|entry| (entry, "l2"));
    }
    if let Some((entry, tier)) = found {
        match entry.staleness(Instant::now(), &live.lifetimes, &lookup.key.resource) {
            Staleness::Fresh => {
                ctx.cache = CacheStatus::Hit;
                ctx.tier = Some(tier);
                return Ok(respond(&entry, ctx.cache));
            }
            Staleness::Revalidate => {
                refresh_in_background(state, live, lookup);
                ctx.cache = CacheStatus::Stale;
                ctx.tier = Some(tier);
                ctx.stale_reason = Some("revalidating");
                return Ok(respond(&entry, ctx.cache));
            }
            Staleness::IfError => stand_in = Some((entry, tier)),
            Staleness::Expired => {}
        }
    }

    // 4-6. Upstream fetch (gated, coalesced), response filter, cache store.
    ctx.cache = CacheStatus::Miss;
    let result = within(deadline, fetch(state, live, lookup, ctx)).await;

    // 7. Response: the upstream's answer, or the stale stand-in if the upstream failed.
    if let Some((stale, tier)) = stand_in {
        if let Some(why) = upstream_failure(&result) {
            ctx.cache = CacheStatus::Stale;
            ctx.tier = Some(tier);
            ctx.stale_reason = Some(why);
            return Ok(respond(&stale, ctx.cache));
        }
    }
    if matches!(result, Err(ProxyError::Refused(_))) {
        // Refused before any upstream call: the cache had nothing to give.
        ctx.cache = CacheStatus::None;
    }
    let entry = result?;
    Ok(respond(&entry, ctx.cache))
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

/// Why `result` counts as the upstream failing (so a stale answer may stand in), or `None` when
/// it is a real answer to relay (200, 404, 401, ...).
fn upstream_failure(result: &Result<Arc<Entry>, ProxyError>) -> Option<&'static str> {
    match result {
        Ok(entry) if entry.status == StatusCode::TOO_MANY_REQUESTS => Some("upstream_429"),
        Ok(entry) if entry.status.is_server_error() => Some("upstream_5xx"),
        Ok(_) => None,
        // A key the upstream just refused gets no stale data either.
        Err(ProxyError::Refused(Refusal::RecentAuthFailure { .. })) => None,
        Err(error) => Some(error.reason()),
    }
}

/// Joins the fetch in flight for the key, or starts one (which passes the shield's gates for this
/// caller); then waits for it, boundedly.
async fn fetch(
    state: &Arc<AppState>,
    live: &Arc<Live>,
    lookup: Lookup,
    ctx: &mut RequestContext,
) -> Result<Arc<Entry>, ProxyError> {
    let limit_key = lookup.limit_key;
    let mut retried = false;
    loop {
        let (inflight, role) = match state.store.flight(&lookup.key) {
            // Joining a fetch costs the upstream nothing, so it passes no gate and uses no budget.
            Some(inflight) => (inflight, Role::Follower),
            None => start_fetch(state, live, lookup.clone(), Some(limit_key)),
        };
        if role == Role::Follower {
            ctx.coalesced = true;
        }
        let wait = live.config.shield.queue_timeout
            + live.config.upstream.timeout
            + fill_wait(live)
            + COALESCE_MARGIN;
        let fetched = match tokio::time::timeout(wait, inflight).await {
            Ok(Some(fetched)) => fetched,
            Ok(None) => return Err(ProxyError::FetcherVanished),
            Err(_) => return Err(ProxyError::CoalesceTimeout),
        };
        // Managed mode: clients share entries but not budgets. A fetch refused by another
        // client's budget says nothing of this one's: try once with a fetch of its own.
        if let Err(ProxyError::Refused(Refusal::MissLimit(_))) = &fetched.result {
            if fetched.charged != Some(limit_key) && !retried {
                retried = true;
                ctx.coalesced = false;
                continue;
            }
        }
        ctx.upstream = fetched.upstream;
        if fetched.shared {
            // Another replica fetched it for everyone; this request waited for that fetch.
            ctx.coalesced = true;
        }
        return fetched.result;
    }
}

/// Starts the fetch for `lookup` (or joins one started a moment ago), charging `charge`'s miss
/// budget if it calls the upstream.
fn start_fetch(
    state: &Arc<AppState>,
    live: &Arc<Live>,
    lookup: Lookup,
    charge: Option<Fingerprint>,
) -> (InFlight<Fetched>, Role) {
    let key = lookup.key.clone();
    let task_state = Arc::clone(state);
    let task_live = Arc::clone(live);
    state.store.join_or_start(&key, &live.view(), |fill| {
        fetch_task(task_state, task_live, lookup, charge, fill)
    })
}

/// How long a fetch may wait for another replica's fill before fetching itself.
fn fill_wait(live: &Live) -> Duration {
    live.config
        .redis
        .as_ref()
        .map_or(Duration::ZERO, |redis| redis.fill_wait)
}

/// Starts one background refresh of a stale entry, unless one is already in flight; if the
/// shield says no (cool-down, open breaker), the stale entry simply keeps serving. Refreshes
/// serve no caller, so they charge no caller's budget.
fn refresh_in_background(state: &Arc<AppState>, live: &Arc<Live>, lookup: Lookup) {
    if state.store.flight(&lookup.key).is_none() {
        let _ = start_fetch(state, live, lookup, None);
    }
}

/// The one upstream call for a key: with the shared tier, first the chance to use another
/// replica's fetch; then the shield's gates (`charge`'s miss budget, cool-down, breaker), a
/// slot, the call, the response filter, and the store (if nothing invalidated the entry
/// meanwhile) before any waiter sees the answer.
async fn fetch_task(
    state: Arc<AppState>,
    live: Arc<Live>,
    lookup: Lookup,
    charge: Option<Fingerprint>,
    mut fill: Fill,
) -> Fetched {
    if let Some(entry) = fill.coordinate(live.policy_generation).await {
        return Fetched {
            result: Ok(entry),
            upstream: None,
            shared: true,
            charged: None,
        };
    }
    let pass = match state
        .shield
        .admit(charge.as_ref(), &lookup.key.credential, Instant::now())
        .await
    {
        Ok(pass) => pass,
        Err(refusal) => {
            let result = Err(ProxyError::Refused(refusal));
            fill.finish(&result).await;
            return Fetched {
                result,
                upstream: None,
                shared: false,
                charged: charge,
            };
        }
    };
    let ttls = Ttls {
        ok: live.lifetimes.ok_for(&lookup.key.resource),
        not_found: live.lifetimes.not_found,
    };
    let path = lookup.key.resource.upstream_path();
    let (result, upstream) = call_upstream(
        &state,
        &live,
        Method::GET,
        &path,
        &lookup.authorization,
        &lookup.request_id,
        None,
        &lookup.key.credential,
        pass,
        ttls,
    )
    .await;
    fill.finish(&result).await;
    Fetched {
        result,
        upstream,
        shared: false,
        charged: charge,
    }
}

/// One gated upstream exchange: slot, call, response filter, shield and metrics bookkeeping.
#[allow(clippy::too_many_arguments)]
async fn call_upstream(
    state: &AppState,
    live: &Live,
    method: Method,
    path: &str,
    authorization: &HeaderValue,
    request_id: &HeaderValue,
    body: Option<Bytes>,
    upstream_key: &crate::credential::Fingerprint,
    pass: Pass,
    ttls: Ttls,
) -> (Result<Arc<Entry>, ProxyError>, Option<Duration>) {
    let slot = match state.shield.slot().await {
        Ok(slot) => slot,
        Err(refusal) => {
            state.shield.release(upstream_key, pass).await;
            return (Err(ProxyError::Refused(refusal)), None);
        }
    };
    let started = Instant::now();
    let result = match state
        .upstream
        .call(method, path, authorization, request_id, body)
        .await
    {
        // The credential this exchange sent (the caller's key, or managed mode's own) never
        // comes back in an answer, should an error body echo the request.
        Ok(answer) => response_filter::filter(
            answer,
            &live.policy,
            ttls,
            credential::bearer_token(std::iter::once(authorization))
                .ok()
                .and_then(|token| std::str::from_utf8(token).ok()),
            Instant::now(),
        )
        .map(|mut entry| {
            entry.policy_generation = live.policy_generation;
            Arc::new(entry)
        }),
        Err(e) => Err(e.into()),
    };
    let elapsed = started.elapsed();
    drop(slot);
    if let Ok(entry) = &result {
        if entry.status == StatusCode::UNAUTHORIZED || entry.status == StatusCode::FORBIDDEN {
            state.shield.note_auth_failure(
                *upstream_key,
                entry.status,
                live.config.cache.auth_failure_ttl,
                Instant::now(),
            );
        }
    }
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
        .record(*upstream_key, pass, Health::of(&result), Instant::now())
        .await;
    (result, Some(elapsed))
}

/// A write route.
#[derive(Debug, Clone, Copy)]
enum Write {
    Create,
    Update(Uuid),
    Delete(Uuid),
}

/// POST, PATCH and DELETE: check the body, forward it unchanged, redact the answer, and on
/// success drop what the write made stale.
async fn write<B>(
    state: &Arc<AppState>,
    live: &Arc<Live>,
    parts: &Parts,
    body: B,
    caller: &Caller,
    op: Write,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, ProxyError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    ctx.cache = CacheStatus::Bypass;
    let (method, path, body) = match op {
        Write::Create => (
            Method::POST,
            "/phone-number".to_owned(),
            Some(json_body(live, parts, body).await?),
        ),
        Write::Update(id) => (
            Method::PATCH,
            format!("/phone-number/{}", id.hyphenated()),
            Some(json_body(live, parts, body).await?),
        ),
        Write::Delete(id) => {
            if !body.is_end_stream() {
                return Err(ProxyError::BadBody("DELETE requests must not carry a body"));
            }
            (
                Method::DELETE,
                format!("/phone-number/{}", id.hyphenated()),
                None,
            )
        }
    };
    let pass = state
        .shield
        .admit(
            Some(&caller.limit_key),
            &caller.upstream_key,
            Instant::now(),
        )
        .await
        .map_err(ProxyError::Refused)?;
    // The exchange runs as its own task: if the caller hangs up mid-write, the write still
    // completes upstream, so the invalidation below must still happen.
    let task_state = Arc::clone(state);
    let task_live = Arc::clone(live);
    let caller = caller.clone();
    let request_id = ctx.request_id.clone();
    let task = tokio::spawn(async move {
        let state = task_state;
        let (result, upstream) = call_upstream(
            &state,
            &task_live,
            method,
            &path,
            &caller.upstream_authorization,
            &request_id,
            body,
            &caller.upstream_key,
            pass,
            Ttls::default(),
        )
        .await;
        // Invalidate whenever the write may have landed: a 2xx (even one whose body could not be
        // relayed) or an exchange that broke or timed out after the request was sent.
        let may_have_landed = match &result {
            Ok(entry) => entry.status.is_success(),
            Err(
                ProxyError::BadUpstreamBody(_)
                | ProxyError::UpstreamTimeout
                | ProxyError::UpstreamFailed,
            ) => true,
            Err(_) => false,
        };
        if may_have_landed {
            invalidate_after_write(&state, op, &caller).await;
        }
        (result, upstream)
    });
    let (result, upstream) = task.await.map_err(|_| ProxyError::FetcherVanished)?;
    ctx.upstream = upstream;
    let entry = result?;
    Ok(response::from_entry(
        &entry,
        false,
        ctx.cache,
        &HeaderMap::new(),
        Instant::now(),
    ))
}

/// After a successful write: every cached entry of that phone number, whichever credential
/// fetched it, and the caller's cached lists; on this replica, in the shared tier and on every
/// other replica.
async fn invalidate_after_write(state: &AppState, op: Write, caller: &Caller) {
    if let Write::Update(id) | Write::Delete(id) = op {
        state.store.invalidate(Scope::Number(id)).await;
    }
    state
        .store
        .invalidate(Scope::Lists(caller.upstream_key))
        .await;
}

/// Reads and checks a write's body: JSON by content type and by content, within the size cap,
/// and free of the redaction placeholder (which would overwrite a real secret upstream).
async fn json_body<B>(live: &Live, parts: &Parts, body: B) -> Result<Bytes, ProxyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let is_json = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ProxyError::BadBody(
            "the content-type must be application/json",
        ));
    }
    let limit = live.config.server.max_request_body_bytes;
    // A declared length over the cap is refused before the body is touched: hyper sends
    // `100 Continue` only once the body is polled, so a client that asked first gets the 413 at
    // once instead of being invited to upload what will be refused.
    if body.size_hint().lower() > limit as u64 {
        return Err(ProxyError::BodyTooLarge);
    }
    let bytes = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                ProxyError::BodyTooLarge
            } else {
                ProxyError::BadBody("the request body could not be read")
            }
        })?
        .to_bytes();
    write_body::check(&bytes).map_err(|e| match e {
        BodyError::NotJson => ProxyError::BadBody("the request body must be valid JSON"),
        BodyError::NotObject => ProxyError::BadBody("the request body must be a JSON object"),
        BodyError::Placeholder => ProxyError::PlaceholderInBody,
        BodyError::DuplicateKey(key) => ProxyError::DuplicateKey(
            format!(
                "the request body repeats the key {}; upstreams disagree on which one wins, so \
                 send each key once",
                serde_json::Value::String(key)
            )
            .into(),
        ),
    })?;
    Ok(bytes)
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

//! The GET routes: phases 2-7 (cache key, lookup in memory then in the shared tier, the
//! coalesced and gated upstream fetch, the response or a stale stand-in).

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode};

use super::exchange::Exchange;
use super::{COALESCE_MARGIN, RequestContext, within};
use crate::auth::Caller;
use crate::cache::coalesce::{Flight, Role};
use crate::cache::{CacheKey, Entry, Fetched, Fill, Resource, Staleness};
use crate::config::StartupConfig;
use crate::credential::Fingerprint;
use crate::error::ProxyError;
use crate::response::{self, Body, CacheStatus};
use crate::response_filter::Ttls;
use crate::shield::Refusal;
use crate::state::{AppState, Live};
use crate::telemetry;
use opentelemetry::trace::SpanKind;

/// What a cacheable read needs to reach the upstream on behalf of one caller.
#[derive(Clone)]
pub(super) struct Lookup {
    key: CacheKey,
    limit_key: crate::credential::Fingerprint,
    authorization: HeaderValue,
    request_id: HeaderValue,
    /// The requesting span, parent of the upstream exchange's, when tracing is on.
    trace: Option<opentelemetry::Context>,
}

/// Phases 2-7 for the GET routes.
pub(super) async fn read(
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
        response::from_entry(entry, head, cache, &parts.headers, state.clock.now())
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
        trace: ctx.trace.clone(),
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
        match entry.staleness(state.clock.now(), &live.lifetimes, &lookup.key.resource) {
            Staleness::Fresh(left) => {
                ctx.cache = CacheStatus::Hit;
                ctx.report.fresh_for = Some(left);
                ctx.tier = Some(tier);
                return Ok(respond(&entry, ctx.cache));
            }
            Staleness::Revalidate => {
                refresh_in_background(state, live, lookup);
                ctx.cache = CacheStatus::Stale;
                ctx.tier = Some(tier);
                ctx.report.stale_reason = Some("revalidating");
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
            ctx.report.stale_reason = Some(why);
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
        let inflight = match state.store.flight(&lookup.key, live.policy_generation) {
            // Joining a fetch costs the upstream nothing, so it passes no gate and uses no budget.
            Some(inflight) => Flight::Follow(inflight),
            None => start_fetch(state, live, lookup.clone(), Some(limit_key)),
        };
        let role = inflight.role();
        if role == Role::Follower {
            ctx.report.collapsed = true;
        }
        let startup = &state.startup;
        let wait = startup.shield.queue_timeout
            + startup.upstream.timeout
            + fill_wait(startup)
            + COALESCE_MARGIN;
        // A follower's wait for the leader's fetch is a span of its own.
        let waiting = match (role, &state.telemetry, &ctx.trace) {
            (Role::Follower, Some(telemetry), Some(parent)) => {
                Some(telemetry.child(parent, "coalesced wait", SpanKind::Internal))
            }
            _ => None,
        };
        let outcome = tokio::time::timeout(wait, inflight).await;
        if let Some(cx) = &waiting {
            telemetry::end(cx);
        }
        let fetched = match outcome {
            Ok(Some(fetched)) => fetched,
            Ok(None) => return Err(ProxyError::FetcherVanished),
            Err(_) => return Err(ProxyError::CoalesceTimeout),
        };
        // Managed mode: clients share entries but not budgets. A fetch refused by another
        // client's budget says nothing of this one's: try once with a fetch of its own.
        if let Err(ProxyError::Refused(Refusal::MissLimit(_))) = &fetched.result {
            if fetched.charged != Some(limit_key) && !retried {
                retried = true;
                ctx.report.collapsed = false;
                continue;
            }
        }
        ctx.upstream = fetched.upstream;
        if fetched.charged == Some(limit_key) {
            ctx.budgets.misses = fetched.misses;
        }
        ctx.report.stored = fetched.stored;
        if fetched.shared {
            // Another replica fetched it for everyone; this request waited for that fetch.
            ctx.report.collapsed = true;
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
) -> Flight<Fetched> {
    let key = lookup.key.clone();
    let task_state = Arc::clone(state);
    let task_live = Arc::clone(live);
    state.store.join_or_start(&key, &live.view(), |fill| {
        fetch_task(task_state, task_live, lookup, charge, fill)
    })
}

/// How long a fetch may wait for another replica's fill before fetching itself.
fn fill_wait(startup: &StartupConfig) -> Duration {
    startup
        .redis
        .as_ref()
        .map_or(Duration::ZERO, |redis| redis.fill_wait)
}

/// Starts one background refresh of a stale entry, unless one is already in flight; if the
/// shield says no (cool-down, open breaker), the stale entry simply keeps serving. Refreshes
/// serve no caller, so they charge no caller's budget.
fn refresh_in_background(state: &Arc<AppState>, live: &Arc<Live>, lookup: Lookup) {
    if state
        .store
        .flight(&lookup.key, live.policy_generation)
        .is_none()
    {
        // Nobody waits for it here: dropped unpolled, the fetch runs in a task of its own.
        drop(start_fetch(state, live, lookup, None));
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
            stored: true,
            misses: None,
        };
    }
    let pass = match state
        .shield
        .admit(
            &live.budgets,
            charge.as_ref(),
            &lookup.key.credential,
            state.clock.now(),
        )
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
                stored: false,
                misses: None,
            };
        }
    };
    let ttls = Ttls {
        ok: live.lifetimes.ok_for(&lookup.key.resource),
        not_found: live.lifetimes.not_found,
    };
    let path = lookup.key.resource.upstream_path();
    let misses = pass.misses();
    let (result, upstream) = Exchange {
        method: Method::GET,
        path: &path,
        authorization: &lookup.authorization,
        request_id: &lookup.request_id,
        body: None,
        upstream_key: lookup.key.credential,
        pass,
        ttls,
        trace: lookup.trace.as_ref(),
    }
    .run(&state, &live)
    .await;
    let stored = fill.finish(&result).await;
    Fetched {
        result,
        upstream,
        shared: false,
        charged: charge,
        stored,
        misses,
    }
}

//! The write routes (POST, PATCH, DELETE): the body checked, forwarded unchanged, the answer
//! redacted, and what the write made stale invalidated everywhere.

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{HeaderMap, Method, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use uuid::Uuid;

use super::RequestContext;
use super::exchange::Exchange;
use crate::auth::Caller;
use crate::cache::Scope;
use crate::error::ProxyError;
use crate::response::{self, Body, CacheStatus};
use crate::response_filter::Ttls;
use crate::state::{AppState, Live};
use crate::write_body::{self, BodyError};

/// A write route.
#[derive(Debug, Clone, Copy)]
pub(super) enum Write {
    Create,
    Update(Uuid),
    Delete(Uuid),
}

/// POST, PATCH and DELETE: check the body, forward it unchanged, redact the answer, and on
/// success drop what the write made stale.
pub(super) async fn write<B>(
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
            &live.budgets,
            Some(&caller.limit_key),
            &caller.upstream_key,
            state.clock.now(),
        )
        .await
        .map_err(ProxyError::Refused)?;
    ctx.budgets.misses = pass.misses();
    // The exchange runs as its own task: if the caller hangs up mid-write, the write still
    // completes upstream, so the invalidation below must still happen.
    let task_state = Arc::clone(state);
    let task_live = Arc::clone(live);
    let caller = caller.clone();
    let request_id = ctx.request_id.clone();
    let trace = ctx.trace.clone();
    let task = tokio::spawn(async move {
        let state = task_state;
        let (result, upstream) = Exchange {
            method,
            path: &path,
            authorization: &caller.upstream_authorization,
            request_id: &request_id,
            body,
            upstream_key: caller.upstream_key,
            pass,
            ttls: Ttls::default(),
            trace: trace.as_ref(),
        }
        .run(&state, &task_live)
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
        state.clock.now(),
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
    let limit = live.config.requests.max_body_bytes;
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

//! One gated upstream exchange, for reads and writes alike: a concurrency slot, the call, the
//! response filter, and the shield's and metrics' bookkeeping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use opentelemetry::Context;
use opentelemetry::trace::SpanKind;

use crate::cache::Entry;
use crate::credential::{self, Fingerprint};
use crate::error::ProxyError;
use crate::response_filter::{self, Ttls};
use crate::shield::{Health, Pass};
use crate::state::{AppState, Live};
use crate::telemetry;

/// What one upstream exchange sends, and on whose behalf.
pub(super) struct Exchange<'a> {
    /// The method.
    pub(super) method: Method,
    /// Path and query, from a parsed route.
    pub(super) path: &'a str,
    /// The `Authorization` sent upstream.
    pub(super) authorization: &'a HeaderValue,
    /// The `x-request-id` forwarded.
    pub(super) request_id: &'a HeaderValue,
    /// A write's checked JSON body.
    pub(super) body: Option<Bytes>,
    /// Fingerprint of the credential sent upstream (cool-downs, refused-key memory).
    pub(super) upstream_key: Fingerprint,
    /// The shield's permission for this call.
    pub(super) pass: Pass,
    /// How long the answer may be cached.
    pub(super) ttls: Ttls,
    /// The span this exchange's span is a child of, when tracing is on.
    pub(super) trace: Option<&'a Context>,
}

impl Exchange<'_> {
    /// Waits for a slot, calls, filters, and reports to the shield and the metrics. Returns the
    /// answer and how long the upstream took (`None` when no call was made).
    pub(super) async fn run(
        self,
        state: &AppState,
        live: &Live,
    ) -> (Result<Arc<Entry>, ProxyError>, Option<Duration>) {
        let Exchange {
            method,
            path,
            authorization,
            request_id,
            body,
            upstream_key,
            pass,
            ttls,
            trace,
        } = self;
        let slot = match state.shield.slot().await {
            Ok(slot) => slot,
            Err(refusal) => {
                state.shield.release(&upstream_key, pass).await;
                return (Err(ProxyError::Refused(refusal)), None);
            }
        };
        let span = trace
            .zip(state.telemetry.as_ref())
            .map(|(parent, telemetry)| {
                let cx = telemetry.child(parent, "upstream", SpanKind::Client);
                let mut headers = HeaderMap::new();
                telemetry.inject(&cx, &mut headers);
                (cx, headers)
            });
        let (span, propagate) = match span {
            Some((cx, headers)) => (Some(cx), headers),
            None => (None, HeaderMap::new()),
        };
        let started = Instant::now();
        let answer = state
            .upstream
            .call(
                method.clone(),
                path,
                authorization,
                request_id,
                body,
                propagate,
            )
            .await;
        if let Some(cx) = &span {
            telemetry::finish_upstream(cx, &method, answer.as_ref().ok().map(|a| a.status));
        }
        let result = match answer {
            // The credential this exchange sent (the caller's key, or managed mode's own) never
            // comes back in an answer, should an error body echo the request.
            Ok(answer) => response_filter::filter(
                answer,
                &live.policy,
                ttls,
                credential::bearer_token(std::iter::once(authorization))
                    .ok()
                    .and_then(|token| std::str::from_utf8(token).ok()),
                state.clock.now(),
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
                    upstream_key,
                    entry.status,
                    live.config.freshness.auth_failure_ttl,
                    state.clock.now(),
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
            .record(upstream_key, pass, Health::of(&result), state.clock.now())
            .await;
        (result, Some(elapsed))
    }
}

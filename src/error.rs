//! Every answer phonegate makes up itself, in one place: the error type, its status, its message,
//! and the reason logged for it.
//!
//! Bodies use the upstream's own NestJS shape (`{"statusCode", "error", "message"}`) so a client
//! handles one error format whether the refusal came from Vapi or from phonegate. Messages are
//! fixed strings: nothing a caller or the upstream sent is ever echoed back.

use std::time::Duration;

use http::header::{ALLOW, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, StatusCode};

use crate::credential::AuthError;
use crate::route::RouteError;
use crate::shield::Refusal;

/// A request phonegate answers itself instead of relaying an upstream answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// The path, method or list query is not served.
    Route(RouteError),
    /// The `Authorization` header is missing, malformed, or names no known client.
    Auth(AuthError),
    /// The caller's client lacks the scope this route needs.
    Forbidden(&'static str),
    /// A `GET`/`HEAD` arrived with a body.
    BodyNotAllowed,
    /// A write's body is unusable (not JSON, wrong content type); the message says why.
    BadBody(&'static str),
    /// A write's body is larger than `server.max_request_body_bytes`.
    BodyTooLarge,
    /// A write's body carries the redaction placeholder.
    PlaceholderInBody,
    /// A write's body repeats an object key; the message (which names the key) is kept whole.
    DuplicateKey(Box<str>),
    /// A CORS preflight from an origin not in `cors.allowed_origins`.
    OriginNotAllowed,
    /// The upstream could not be connected to.
    UpstreamUnreachable,
    /// The upstream did not answer, body included, within `upstream.timeout_ms`.
    UpstreamTimeout,
    /// The upstream connection broke after it was made (reset, closed mid-body, protocol error).
    UpstreamFailed,
    /// A 2xx upstream body that cannot be relayed safely; the message says why.
    BadUpstreamBody(&'static str),
    /// Waiting for another request's fetch of the same entry took too long.
    CoalesceTimeout,
    /// The task fetching an entry ended without an answer (a bug; logged).
    FetcherVanished,
    /// The upstream shield refused the call (limits, cool-down, breaker, queue).
    Refused(Refusal),
    /// The whole request took longer than `server.request_timeout_ms`.
    RequestTimeout,
}

/// One answer phonegate makes itself, described whole: status, logged reason, message, and the
/// headers that go with it. Every listener (proxy and admin) builds its own answers from this one
/// shape ([`crate::response::synthetic`]), as linkerd2-proxy does with its synthetic responses.
#[derive(Debug, Clone)]
pub struct Synthetic<'a> {
    /// The status.
    pub status: StatusCode,
    /// The access log's `reason`.
    pub reason: &'static str,
    /// The body's `message`: fixed text, never anything a caller or the upstream sent.
    pub message: &'a str,
    /// How long the caller should wait before retrying (`Retry-After`, rounded up to seconds).
    pub retry_after: Option<Duration>,
    /// A header the answer needs (`Allow`, `WWW-Authenticate`).
    pub header: Option<(HeaderName, HeaderValue)>,
}

impl<'a> Synthetic<'a> {
    /// An answer with `status`, logged as `reason`, saying `message`.
    pub fn new(status: StatusCode, reason: &'static str, message: &'a str) -> Self {
        Synthetic {
            status,
            reason,
            message,
            retry_after: None,
            header: None,
        }
    }

    /// Adds a `Retry-After`.
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.header = Some((name, value));
        self
    }

    /// Seconds for `Retry-After`: rounded up, at least 1.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(|wait| {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            secs.max(1)
        })
    }

    /// The JSON body.
    pub fn body(&self) -> bytes::Bytes {
        json_error_body(self.status, self.message)
    }
}

impl ProxyError {
    /// The whole answer for this error: the one table of phonegate's own answers.
    pub fn synthetic(&self) -> Synthetic<'_> {
        use StatusCode as S;
        let new = Synthetic::new;
        match self {
            ProxyError::Route(RouteError::NotFound) => new(
                S::NOT_FOUND,
                "no_route",
                "no such route; phonegate serves /phone-number, /phone-number/{id} and /v2/phone-number",
            ),
            ProxyError::Route(RouteError::MethodNotAllowed(allow)) => new(
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route; see the Allow header",
            )
            .header(ALLOW, HeaderValue::from_static(allow)),
            ProxyError::Route(RouteError::BadId) => new(
                S::BAD_REQUEST,
                "bad_id",
                "the phone number id must be a UUID",
            ),
            ProxyError::Route(RouteError::BadPath(why)) => new(S::BAD_REQUEST, "bad_path", why),
            ProxyError::Route(RouteError::BadQuery(why)) => new(S::BAD_REQUEST, "bad_query", why),
            ProxyError::Route(RouteError::TooLong) => new(
                S::URI_TOO_LONG,
                "path_too_long",
                "the request path is too long",
            ),
            ProxyError::Auth(e) => {
                let reason = match e {
                    AuthError::Missing => "missing_credential",
                    AuthError::Malformed => "malformed_credential",
                    AuthError::UnknownClient => "unknown_client",
                };
                new(S::UNAUTHORIZED, reason, e.message())
                    .header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
            }
            ProxyError::Forbidden(why) => new(S::FORBIDDEN, "forbidden", why),
            ProxyError::BodyNotAllowed => new(
                S::BAD_REQUEST,
                "body_not_allowed",
                "GET and HEAD requests must not carry a body",
            ),
            ProxyError::BadBody(why) => new(S::BAD_REQUEST, "bad_body", why),
            ProxyError::BodyTooLarge => new(
                S::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is too large",
            ),
            ProxyError::PlaceholderInBody => new(
                S::BAD_REQUEST,
                "placeholder_in_body",
                "the body carries \"[REDACTED]\", the placeholder phonegate shows where a secret \
                 was; sending it back would overwrite the real secret. Send the real value, or \
                 leave the field out to keep it unchanged",
            ),
            ProxyError::DuplicateKey(message) => new(S::BAD_REQUEST, "duplicate_key", message),
            ProxyError::OriginNotAllowed => new(
                S::FORBIDDEN,
                "origin_not_allowed",
                "this origin is not allowed (cors.allowed_origins)",
            ),
            ProxyError::UpstreamUnreachable => new(
                S::BAD_GATEWAY,
                "upstream_unreachable",
                "the upstream API could not be reached",
            ),
            ProxyError::UpstreamTimeout => new(
                S::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream API did not answer in time",
            ),
            ProxyError::UpstreamFailed => new(
                S::BAD_GATEWAY,
                "upstream_failed",
                "the upstream API connection failed mid-answer",
            ),
            ProxyError::BadUpstreamBody(why) => new(S::BAD_GATEWAY, "bad_upstream_body", why),
            ProxyError::CoalesceTimeout => new(
                S::GATEWAY_TIMEOUT,
                "coalesce_timeout",
                "timed out waiting for the upstream answer",
            ),
            ProxyError::FetcherVanished => new(
                S::INTERNAL_SERVER_ERROR,
                "fetcher_vanished",
                "internal error while fetching from the upstream API",
            ),
            ProxyError::Refused(refusal) => refusal_answer(refusal),
            ProxyError::RequestTimeout => new(
                S::GATEWAY_TIMEOUT,
                "request_timeout",
                "the request took too long",
            ),
        }
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        self.synthetic().status
    }

    /// The human-readable `message` of the body.
    pub fn message(&self) -> &str {
        self.synthetic().message
    }

    /// A stable, machine-readable reason for the access log's `reason` field.
    pub fn reason(&self) -> &'static str {
        self.synthetic().reason
    }

    /// Seconds for `Retry-After` on refusals: rounded up, at least 1.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.synthetic().retry_after_secs()
    }

    /// The JSON body of the answer.
    pub fn body(&self) -> bytes::Bytes {
        self.synthetic().body()
    }
}

/// The answers to the shield's refusals.
fn refusal_answer(refusal: &Refusal) -> Synthetic<'static> {
    use StatusCode as S;
    let new = Synthetic::new;
    match refusal {
        Refusal::RequestLimit(wait) => new(
            S::TOO_MANY_REQUESTS,
            "request_limit",
            "too many requests for this API key; slow down",
        )
        .retry_after(*wait),
        Refusal::MissLimit(wait) => new(
            S::TOO_MANY_REQUESTS,
            "miss_limit",
            "too many uncached lookups for this API key; slow down",
        )
        .retry_after(*wait),
        Refusal::CoolingDown(wait) => new(
            S::TOO_MANY_REQUESTS,
            "cooling_down",
            "the upstream API is rate-limiting this API key; retry after the given delay",
        )
        .retry_after(*wait),
        Refusal::BreakerOpen(wait) => new(
            S::SERVICE_UNAVAILABLE,
            "breaker_open",
            "the upstream API is failing; requests are paused briefly",
        )
        .retry_after(*wait),
        Refusal::QueueFull => new(
            S::SERVICE_UNAVAILABLE,
            "queue_full",
            "too many requests are waiting for the upstream API",
        )
        .retry_after(Duration::from_secs(1)),
        Refusal::UpstreamLimit(wait) => new(
            S::SERVICE_UNAVAILABLE,
            "upstream_limit",
            "phonegate's budget of upstream requests is spent for now; retry after the given delay",
        )
        .retry_after(*wait),
        Refusal::RecentAuthFailure { status, left } => new(
            *status,
            "recent_auth_failure",
            "the upstream API refused this key moments ago; it is not asked again until the \
             given delay has passed",
        )
        .retry_after(*left),
    }
}

/// `{"statusCode":N,"error":"<reason phrase>","message":"..."}`.
pub fn json_error_body(status: StatusCode, message: &str) -> bytes::Bytes {
    let body = serde_json::json!({
        "statusCode": status.as_u16(),
        "error": status.canonical_reason().unwrap_or("Error"),
        "message": message,
    });
    bytes::Bytes::from(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_nestjs_shape() {
        let body = ProxyError::Auth(AuthError::Missing).body();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["statusCode"], 401);
        assert_eq!(v["error"], "Unauthorized");
        assert!(v["message"].as_str().unwrap().contains("Authorization"));
    }

    #[test]
    fn upstream_failures_map_to_gateway_statuses() {
        assert_eq!(ProxyError::UpstreamUnreachable.status(), 502);
        assert_eq!(ProxyError::UpstreamTimeout.status(), 504);
        assert_eq!(ProxyError::BadUpstreamBody("x").status(), 502);
    }

    #[test]
    fn refusals_say_when_to_retry() {
        let e = ProxyError::Refused(Refusal::CoolingDown(Duration::from_millis(1500)));
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after_secs(), Some(2), "rounded up");
        let e = ProxyError::Refused(Refusal::MissLimit(Duration::from_millis(10)));
        assert_eq!(e.retry_after_secs(), Some(1), "never zero");
        let e = ProxyError::Refused(Refusal::BreakerOpen(Duration::from_secs(9)));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.reason(), "breaker_open");
        assert_eq!(ProxyError::Refused(Refusal::QueueFull).status(), 503);
        assert_eq!(ProxyError::UpstreamTimeout.retry_after_secs(), None);
    }
}

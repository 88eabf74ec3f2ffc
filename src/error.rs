//! Every answer phonegate makes up itself, in one place: the error type, its status, its message,
//! and the reason logged for it.
//!
//! Bodies use the upstream's own NestJS shape (`{"statusCode", "error", "message"}`) so a client
//! handles one error format whether the refusal came from Vapi or from phonegate. Messages are
//! fixed strings: nothing a caller or the upstream sent is ever echoed back.

use http::StatusCode;

use std::time::Duration;

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

impl ProxyError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Route(RouteError::NotFound) => StatusCode::NOT_FOUND,
            ProxyError::Route(RouteError::MethodNotAllowed(_)) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Route(
                RouteError::BadId | RouteError::BadPath(_) | RouteError::BadQuery(_),
            ) => StatusCode::BAD_REQUEST,
            ProxyError::Route(RouteError::TooLong) => StatusCode::URI_TOO_LONG,
            ProxyError::Auth(_) => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden(_) | ProxyError::OriginNotAllowed => StatusCode::FORBIDDEN,
            ProxyError::BodyNotAllowed
            | ProxyError::PlaceholderInBody
            | ProxyError::DuplicateKey(_) => StatusCode::BAD_REQUEST,
            ProxyError::BadBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UpstreamUnreachable
            | ProxyError::UpstreamFailed
            | ProxyError::BadUpstreamBody(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout | ProxyError::CoalesceTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::FetcherVanished => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Refused(
                Refusal::RequestLimit(_) | Refusal::MissLimit(_) | Refusal::CoolingDown(_),
            ) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Refused(
                Refusal::BreakerOpen(_) | Refusal::QueueFull | Refusal::UpstreamLimit(_),
            ) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Refused(Refusal::RecentAuthFailure { status, .. }) => *status,
            ProxyError::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The human-readable `message` of the body.
    pub fn message(&self) -> &str {
        match self {
            ProxyError::Route(RouteError::NotFound) => {
                "no such route; phonegate serves /phone-number, /phone-number/{id} and /v2/phone-number"
            }
            ProxyError::Route(RouteError::MethodNotAllowed(_)) => {
                "method not allowed on this route; see the Allow header"
            }
            ProxyError::Route(RouteError::BadId) => "the phone number id must be a UUID",
            ProxyError::Route(RouteError::BadPath(why)) => why,
            ProxyError::Route(RouteError::BadQuery(why)) => why,
            ProxyError::Route(RouteError::TooLong) => "the request path is too long",
            ProxyError::Auth(e) => e.message(),
            ProxyError::Forbidden(why) => why,
            ProxyError::BodyNotAllowed => "GET and HEAD requests must not carry a body",
            ProxyError::BadBody(why) => why,
            ProxyError::DuplicateKey(message) => message,
            ProxyError::BodyTooLarge => "the request body is too large",
            ProxyError::PlaceholderInBody => {
                "the body carries \"[REDACTED]\", the placeholder phonegate shows where a secret \
                 was; sending it back would overwrite the real secret. Send the real value, or \
                 leave the field out to keep it unchanged"
            }
            ProxyError::OriginNotAllowed => "this origin is not allowed (cors.allowed_origins)",
            ProxyError::UpstreamUnreachable => "the upstream API could not be reached",
            ProxyError::UpstreamTimeout => "the upstream API did not answer in time",
            ProxyError::UpstreamFailed => "the upstream API connection failed mid-answer",
            ProxyError::BadUpstreamBody(why) => why,
            ProxyError::CoalesceTimeout => "timed out waiting for the upstream answer",
            ProxyError::FetcherVanished => "internal error while fetching from the upstream API",
            ProxyError::Refused(Refusal::RequestLimit(_)) => {
                "too many requests for this API key; slow down"
            }
            ProxyError::Refused(Refusal::MissLimit(_)) => {
                "too many uncached lookups for this API key; slow down"
            }
            ProxyError::Refused(Refusal::CoolingDown(_)) => {
                "the upstream API is rate-limiting this API key; retry after the given delay"
            }
            ProxyError::Refused(Refusal::BreakerOpen(_)) => {
                "the upstream API is failing; requests are paused briefly"
            }
            ProxyError::Refused(Refusal::QueueFull) => {
                "too many requests are waiting for the upstream API"
            }
            ProxyError::Refused(Refusal::UpstreamLimit(_)) => {
                "phonegate's budget of upstream requests is spent for now; retry after the given \
                 delay"
            }
            ProxyError::Refused(Refusal::RecentAuthFailure { .. }) => {
                "the upstream API refused this key moments ago; it is not asked again until the \
                 given delay has passed"
            }
            ProxyError::RequestTimeout => "the request took too long",
        }
    }

    /// A stable, machine-readable reason for the access log's `reason` field.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Route(RouteError::NotFound) => "no_route",
            ProxyError::Route(RouteError::MethodNotAllowed(_)) => "method_not_allowed",
            ProxyError::Route(RouteError::BadId) => "bad_id",
            ProxyError::Route(RouteError::BadPath(_)) => "bad_path",
            ProxyError::Route(RouteError::BadQuery(_)) => "bad_query",
            ProxyError::Route(RouteError::TooLong) => "path_too_long",
            ProxyError::Auth(AuthError::Missing) => "missing_credential",
            ProxyError::Auth(AuthError::Malformed) => "malformed_credential",
            ProxyError::Auth(AuthError::UnknownClient) => "unknown_client",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::BodyNotAllowed => "body_not_allowed",
            ProxyError::BadBody(_) => "bad_body",
            ProxyError::BodyTooLarge => "body_too_large",
            ProxyError::PlaceholderInBody => "placeholder_in_body",
            ProxyError::DuplicateKey(_) => "duplicate_key",
            ProxyError::OriginNotAllowed => "origin_not_allowed",
            ProxyError::UpstreamUnreachable => "upstream_unreachable",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::UpstreamFailed => "upstream_failed",
            ProxyError::BadUpstreamBody(_) => "bad_upstream_body",
            ProxyError::CoalesceTimeout => "coalesce_timeout",
            ProxyError::FetcherVanished => "fetcher_vanished",
            ProxyError::Refused(Refusal::RequestLimit(_)) => "request_limit",
            ProxyError::Refused(Refusal::MissLimit(_)) => "miss_limit",
            ProxyError::Refused(Refusal::CoolingDown(_)) => "cooling_down",
            ProxyError::Refused(Refusal::BreakerOpen(_)) => "breaker_open",
            ProxyError::Refused(Refusal::QueueFull) => "queue_full",
            ProxyError::Refused(Refusal::UpstreamLimit(_)) => "upstream_limit",
            ProxyError::Refused(Refusal::RecentAuthFailure { .. }) => "recent_auth_failure",
            ProxyError::RequestTimeout => "request_timeout",
        }
    }

    /// Seconds for `Retry-After` on refusals: rounded up, at least 1.
    pub fn retry_after_secs(&self) -> Option<u64> {
        let wait = match self {
            ProxyError::Refused(
                Refusal::RequestLimit(d)
                | Refusal::MissLimit(d)
                | Refusal::CoolingDown(d)
                | Refusal::BreakerOpen(d)
                | Refusal::UpstreamLimit(d)
                | Refusal::RecentAuthFailure { left: d, .. },
            ) => *d,
            ProxyError::Refused(Refusal::QueueFull) => Duration::from_secs(1),
            _ => return None,
        };
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Some(secs.max(1))
    }

    /// The JSON body of the answer.
    pub fn body(&self) -> bytes::Bytes {
        json_error_body(self.status(), self.message())
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
